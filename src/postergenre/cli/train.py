"""`postergenre train`: a thin wrapper over `train.loop.train` and `train.head.train_head`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from postergenre.errors import PosterGenreError
from postergenre.train.recipes import OPTIMIZERS, RECIPES, SCHEDULES


def _model_kwargs(items: list[str]) -> dict:
    """KEY=VALUE pairs; VALUE is JSON when it parses ([76, 76], 0.1, true), else a string."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise PosterGenreError(f"--model-arg {item!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _freeze(value: str | None) -> str | int:
    """'all', 'none' (as -1) or the number of last blocks to fine-tune."""
    if value is None:
        import torch

        return "all" if not torch.cuda.is_available() else -1
    if value in ("all", "none"):
        return "all" if value == "all" else -1
    try:
        return int(value)
    except ValueError:
        raise PosterGenreError(f"--freeze must be all, none or a number of blocks, "
                               f"not {value!r}") from None


def _is_finetune(out: Path) -> bool:
    from postergenre.run import CONFIG, load_run

    return (out / CONFIG).is_file() and \
        load_run(out).config.get("training", {}).get("mode") == "finetune"


def _finetune(data, out, init, freeze, epochs, batch_size, lr, weight_decay, seed, resume,
              progress) -> None:
    """The cached-trunk fine-tuning path (train/finetune.py)."""
    from postergenre.run import read_history
    from postergenre.train.finetune import finetune

    if not resume and data is None:
        raise PosterGenreError("--data is required (a dataset folder from `data prepare`)")
    blocks = _freeze(freeze) if freeze is not None else 2
    if not isinstance(blocks, int) or blocks < 1:
        raise PosterGenreError("--init fine-tunes the last N blocks: give --freeze N (N >= 1)")
    options = {"epochs": epochs, "batch_size": batch_size, "lr": lr,
               "weight_decay": weight_decay, "seed": seed}
    finetune(data, out, init, blocks=blocks, resume=resume, progress=progress,
             **{k: v for k, v in options.items() if v is not None})
    history = read_history(out)
    best = max((r["val_macro_ap"] for r in history), default=float("nan"))
    typer.echo(f"run written to {out}: {len(history)} epochs, best val macro AP {best:.4f}")


def train(
    data: Path = typer.Option(None, "--data", help="Dataset folder made by `data prepare`."),
    model: str = typer.Option(None, "--model", help="Model name: custom-cnn, vgg16, "
                              "efficientnet-lite0/1/2. Default: the recipe's, else custom-cnn."),
    out: Path = typer.Option(..., "--out", help="Run folder to create (or to continue with "
                             "--resume)."),
    recipe: str = typer.Option(None, "--recipe", help=f"Named settings: {', '.join(RECIPES)} "
                               "(the original project's). Options given too override it."),
    epochs: int = typer.Option(None, help="Epochs (default 30; seed-vgg16: 50)."),
    batch_size: int = typer.Option(None, help="Global batch size, split across processes "
                                   "(default 64)."),
    optimizer: str = typer.Option(None, help=f"{' | '.join(OPTIMIZERS)} (default adamw)."),
    lr: float = typer.Option(None, help="Learning rate (default 1e-3)."),
    weight_decay: float = typer.Option(None, help="Weight decay (default 0.01)."),
    schedule: str = typer.Option(None, help=f"{' | '.join(SCHEDULES)} (default cosine)."),
    loss: str = typer.Option(None, help="bce (default) | asl (Asymmetric Loss)."),
    pos_weight: bool = typer.Option(None, "--pos-weight/--no-pos-weight",
                                    help="Weight each genre's positives by neg/pos (max 10)."),
    resample: float = typer.Option(None, help="Rare-genre resampling power (0 off, 0.5 "
                                   "mild, 1 balanced)."),
    augment: bool = typer.Option(None, "--augment/--no-augment", help="The original "
                                 "augmentation (rotate, zoom, shift, shear, flip); on for the "
                                 "seed recipes."),
    patience: int = typer.Option(None, help="Early stopping: epochs without a better val macro "
                                 "AP (0 never; default 5, seed recipes 0)."),
    seed: int = typer.Option(None, help="Random seed: same seed, same run (default 0)."),
    model_arg: list[str] = typer.Option([], "--model-arg", help="Extra model setting KEY=VALUE "
                                        "(JSON value), repeatable, e.g. input_size=[100,75]."),
    backbone_weights: Path = typer.Option(None, "--backbone-weights", help="vgg16: a "
                                          "torchvision ImageNet state dict (.pth/.safetensors)."),
    freeze: str = typer.Option(None, "--freeze", help="efficientnet: 'all' trains only a head "
                               "on cached features (the fast path; default on CPU), 'none' "
                               "trains everything (default on CUDA), N fine-tunes the last N "
                               "blocks."),
    init: Path = typer.Option(None, "--init", help="efficientnet with --freeze N: start from "
                              "this frozen-feature run and fine-tune its last N blocks on a "
                              "cached trunk (fast on a CPU; default N 2)."),
    head: str = typer.Option(None, help="efficientnet head: linear | mlp (default mlp)."),
    pool: str = typer.Option(None, help="efficientnet pooling: mean | meanmax | multi "
                             "(default multi)."),
    hidden: int = typer.Option(None, help="efficientnet MLP head width (default 256)."),
    dropout: float = typer.Option(None, help="efficientnet head dropout (default 0.6)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its "
                                "last checkpoint (its own settings are used)."),
    device: str = typer.Option(None, help="cpu or cuda[:N] (default: cuda when available)."),
    time_limit: float = typer.Option(None, "--time-limit", help="Minutes: stop before an "
                                     "epoch that would end later (continue with --resume)."),
    tensorboard: bool = typer.Option(False, "--tensorboard", help="Also log to OUT/tensorboard."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Keep decoded posters in the "
                               "on-disk cache for later runs."),
    workers: int = typer.Option(2, help="Threads decoding posters."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Train a model on a prepared dataset into a run folder.

    The run folder gets config.json, weights.safetensors (best val macro AP), thresholds.json
    (per-genre, tuned on val), history.jsonl and checkpoint/ (for --resume). Runs as is under
    `torchrun --nproc_per_node N` for DDP.
    """
    from postergenre.train.loop import train as train_loop
    from postergenre.train.recipes import make_config

    kwargs = _model_kwargs(model_arg)
    if init is not None or (resume and _is_finetune(out)):
        _finetune(data, out, init, freeze, epochs, batch_size, lr, weight_decay, seed, resume,
                  progress)
        return
    name = model or (RECIPES[recipe]["model"] if recipe in RECIPES else "custom-cnn")
    if name.startswith("efficientnet-") and not resume:
        mode = _freeze(freeze)
        head_options = {k: v for k, v in {"head": head, "pool": pool, "hidden": hidden,
                                                "dropout": dropout}.items()
                        if v is not None}
        if mode == "all":
            from postergenre.train.head import train_head

            options = dict(epochs=epochs, batch_size=batch_size, lr=lr,
                           weight_decay=weight_decay, loss=loss, pos_weight=pos_weight,
                           resample=resample, patience=patience, seed=seed,
                           input_size=kwargs.get("input_size"))
            options.update(head_options)
            train_head(data, out, name, progress=progress,
                       **{k: v for k, v in options.items() if v is not None})
            typer.echo(f"run written to {out}")
            return
        kwargs = {"trainable_blocks": mode, **head_options, **kwargs}
    elif freeze is not None:
        raise PosterGenreError("--freeze applies to efficientnet models only")
    config = None
    if not resume:
        if data is None:
            raise PosterGenreError("--data is required (a dataset folder from `data prepare`)")
        config = make_config(recipe, model=name, model_kwargs=kwargs or None, epochs=epochs,
                             batch_size=batch_size, optimizer=optimizer, lr=lr,
                             weight_decay=weight_decay, schedule=schedule, loss=loss,
                             pos_weight=pos_weight, resample=resample, augment=augment,
                             patience=patience, seed=seed)
    summary = train_loop(data, out, config, resume=resume, device=device,
                         backbone_weights=backbone_weights, progress=progress,
                         tensorboard=tensorboard, cache=cache, workers=workers,
                         time_limit=time_limit * 60 if time_limit else None)
    typer.echo(f"run written to {out}: {summary['epochs']} epochs, best val macro AP "
               f"{summary['best_val_macro_ap']:.4f} (epoch {summary['best_epoch']}), "
               f"{summary['seconds']:.0f} s")
