"""`postergenre train`: a thin wrapper over `train.fit.fit`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from postergenre.errors import PosterGenreError
from postergenre.pipeline import PIPELINES
from postergenre.train.recipes import (
    DECODE_WORKERS,
    FEATURES_HEAD,
    LOSSES,
    MODES,
    OPTIMIZERS,
    PRECISIONS,
    RECIPES,
    SCHEDULES,
    TrainConfig,
    describe_default,
)


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


def _freeze_alias(value: str) -> tuple[str | None, int | None]:
    """The deprecated --freeze: 'all' -> features mode, 'none' -> every block, N -> N blocks."""
    print("warning: --freeze is deprecated: use --mode features instead of 'all', and "
          "--trainable-blocks N (-1 for every block)", file=sys.stderr)
    if value == "all":
        return "features", None
    if value == "none":
        return None, -1
    try:
        return None, int(value)
    except ValueError:
        raise PosterGenreError(f"--freeze must be all, none or a number of blocks, "
                               f"not {value!r}") from None


def train(
    data: Path = typer.Option(None, "--data", help="Dataset folder made by `data prepare`."),
    model: str = typer.Option(None, "--model", help="Model name: custom-cnn, vgg16, "
                              "efficientnet-lite0/1/2. Default: the recipe's, else the --init "
                              f"run's, else {TrainConfig.model}."),
    out: Path = typer.Option(..., "--out", help="Run folder to create (or to continue with "
                             "--resume)."),
    mode: str | None = typer.Option(None, "--mode", help=f"{' | '.join(MODES)}. end-to-end: every "
                             "poster through the whole network (augmentation, DDP, CUDA); "
                             "features: a head on cached frozen-backbone features (fast on a "
                             "CPU); finetune: the last blocks of a features run (--init) on a "
                             "cached trunk (vgg16: block 5 and the head on blocks 1-4's cached "
                             "output). Default: finetune with --init, else the model's own "
                             "default mode on the device (its registry entry)."),
    recipe: str = typer.Option(None, "--recipe", help=f"Named settings: {', '.join(RECIPES)} "
                               "(the original project's). Options given override it. "
                               "shipped: every stage of the shipped model's card into --out "
                               "(OUT/final is the model; rerun the same command to resume; "
                               "takes only --data, --out, --time-limit). "
                               "seed-vgg16 on a CPU trains finetune (no augmentation on a "
                               "cached trunk); end to end (--mode end-to-end), augmented, it "
                               "is meant for a GPU."),
    epochs: int = typer.Option(None, help=f"Epochs ({describe_default('epochs')})."),
    batch_size: int = typer.Option(None, help="Global batch size, split across processes "
                                   f"({describe_default('batch_size')})."),
    optimizer: str = typer.Option(None, help=f"{' | '.join(OPTIMIZERS)} "
                                  f"({describe_default('optimizer')})."),
    lr: float = typer.Option(None, help=f"Learning rate ({describe_default('lr')})."),
    weight_decay: float = typer.Option(None, help="Weight decay "
                                       f"({describe_default('weight_decay')})."),
    schedule: str = typer.Option(None, help=f"{' | '.join(SCHEDULES)} "
                                 f"({describe_default('schedule')})."),
    loss: str = typer.Option(None, help=f"{' | '.join(LOSSES)}; asl: Asymmetric Loss "
                             f"({describe_default('loss')})."),
    pos_weight: bool = typer.Option(None, "--pos-weight/--no-pos-weight",
                                    help="Weight each genre's positives by neg/pos (at most "
                                    f"{TrainConfig.pos_weight_max:g}; "
                                    f"{describe_default('pos_weight')})."),
    resample: float = typer.Option(None, help="Rare-genre resampling power, in every mode "
                                   "(0 off, 0.5 mild, 1 balanced; "
                                   f"{describe_default('resample')})."),
    augment: bool = typer.Option(None, "--augment/--no-augment", help="end-to-end: the "
                                 "original augmentation (rotate, zoom, shift, shear, flip; "
                                 f"{describe_default('augment')})."),
    precision: str = typer.Option(None, help=f"end-to-end: {' | '.join(PRECISIONS)} for the "
                                  "forward pass (auto: bfloat16 where the CPU or GPU runs it "
                                  "natively, else fp32; weights stay fp32; "
                                  f"{describe_default('precision')})."),
    flip: bool = typer.Option(None, "--flip/--no-flip", help="features: train on mirrored "
                              "posters too and average both at prediction "
                              f"({describe_default('flip')})."),
    patience: int = typer.Option(None, help="Early stopping: epochs without a better val macro "
                                 f"AP, 0 never ({describe_default('patience')})."),
    seed: int = typer.Option(None, help="Random seed: same seed, same run "
                             f"({describe_default('seed')})."),
    model_arg: list[str] = typer.Option([], "--model-arg", help="Model setting KEY=VALUE "
                                        "(JSON value), repeatable, e.g. input_size=[100,75]."),
    backbone_weights: Path = typer.Option(None, "--backbone-weights", help="vgg16: a local "
                                          "ImageNet VGG16 weights file: a torchvision .pth / "
                                          ".safetensors, the Keras application's notop .h5, "
                                          "or an ONNX graph holding the conv stack (format "
                                          "detected; the input normalisation that fits it is "
                                          "used and recorded)."),
    init: Path = typer.Option(None, "--init", help="finetune: the features run to start "
                              "from (implies --mode finetune)."),
    trainable_blocks: int = typer.Option(None, "--trainable-blocks", help="How many of the "
                                         "last blocks train: finetune "
                                         f"({describe_default('trainable_blocks')}, or as many "
                                         "as the model can), or efficientnet end-to-end (-1: "
                                         "all)."),
    freeze: str = typer.Option(None, "--freeze", hidden=True,
                               help="Deprecated: --mode features / --trainable-blocks N."),
    drop_connect: float = typer.Option(None, help="finetune: drop-connect rate at the last "
                                       f"block ({describe_default('drop_connect')}; a model "
                                       "without drop-connect refuses it)."),
    head: str = typer.Option(None, help="efficientnet head: linear | mlp (features: "
                             f"{FEATURES_HEAD['head']})."),
    pool: str = typer.Option(None, help="efficientnet pooling: mean | meanmax | multi "
                             f"(features: {FEATURES_HEAD['pool']})."),
    hidden: int = typer.Option(None, help="efficientnet MLP head width (features: "
                               f"{FEATURES_HEAD['hidden']})."),
    dropout: float = typer.Option(None, help="efficientnet head dropout (features: "
                                  f"{FEATURES_HEAD['dropout']})."),
    titles: bool = typer.Option(None, "--titles/--no-titles", help="After the poster model, "
                                "fit the title model and its fusion on the dataset's titles "
                                "(default: on when the dataset has titles)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its "
                                "last checkpoint, with its own settings and dataset."),
    device: str = typer.Option(None, help="cpu or cuda[:N] (default: cuda when available)."),
    time_limit: float = typer.Option(None, "--time-limit", min=0, help="Minutes: stop before "
                                     "an epoch that would end later (continue with --resume)."),
    tensorboard: bool = typer.Option(False, "--tensorboard", help="Also log to OUT/tensorboard."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Keep decoded posters in the "
                               "on-disk cache for later runs."),
    workers: int = typer.Option(DECODE_WORKERS, min=1, help="Threads decoding posters."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Train a model on a prepared dataset into a run folder (`train.fit.fit` with
    `train.recipes.make_config`: the same run as from Python).

    The run folder gets config.json, weights.safetensors (best val macro AP), thresholds.json
    (per-genre, tuned on val), history.jsonl and checkpoint/ (for --resume). An option that
    the chosen mode or model does not use is an error. Runs as is under `torchrun
    --nproc_per_node N` for DDP (end-to-end).
    """
    from postergenre.cli.progress import RichProgress
    from postergenre.train.fit import fit
    from postergenre.train.recipes import make_config

    if recipe in PIPELINES:
        _pipeline(locals())
        return
    kwargs = _model_kwargs(model_arg)
    kwargs.update({k: v for k, v in {"head": head, "pool": pool, "hidden": hidden,
                                     "dropout": dropout}.items() if v is not None})
    if freeze is not None:
        alias_mode, blocks = _freeze_alias(freeze)
        mode, trainable_blocks = mode or alias_mode, blocks if blocks is not None \
            else trainable_blocks
    options = dict(epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
                   weight_decay=weight_decay, schedule=schedule, loss=loss,
                   pos_weight=pos_weight, resample=resample, augment=augment, flip=flip,
                   precision=precision,
                   patience=patience, seed=seed, drop_connect=drop_connect, titles=titles,
                   trainable_blocks=trainable_blocks, init=str(init) if init else None,
                   backbone_weights=str(backbone_weights) if backbone_weights else None)
    config = None
    if resume:
        given = [k for k, v in {**options, "model": model, "recipe": recipe, "mode": mode,
                                "data": data, "model_arg": kwargs or None}.items()
                 if v is not None]
        if given:
            raise PosterGenreError(f"--{given[0].replace('_', '-')} does not apply with "
                                   "--resume: the run's own settings and dataset are used")
    else:
        if data is None:
            raise PosterGenreError("--data is required (a dataset folder from `data prepare`)")
        config = make_config(recipe, mode, device=device, model=model,
                             model_kwargs=kwargs or None, **options)
    with RichProgress(progress) as bars:
        summary = fit(data, out, config, resume=resume, device=device, progress=bars,
                      tensorboard=tensorboard, cache=cache, workers=workers,
                      time_limit=time_limit * 60 if time_limit else None)
    if summary["stopped"]:
        print(summary["stopped"], file=sys.stderr)
    typer.echo(f"run written to {out}: {summary['mode']}, {summary['epochs']} epochs, best val "
               f"macro AP {summary['best_val_macro_ap']:.4f} (epoch {summary['best_epoch']}), "
               f"{summary['seconds']:.0f} s")
    if summary["text"]:
        typer.echo(f"title model and its fusion written to {summary['text']} "
                   f"({summary['text_seconds']:.0f} s)")


# The options a pipeline recipe takes; every other one is an error.
PIPELINE_OPTIONS = {"recipe", "data", "out", "time_limit", "progress", "model_arg"}
PASSIVE = {"cache": True, "workers": 2, "tensorboard": False, "resume": False}


def _pipeline(given: dict) -> None:
    """`--recipe shipped`: every stage of the shipped model's card (pipeline.py)."""
    import inspect

    from postergenre.cli.progress import RichProgress
    from postergenre.pipeline import FINAL, run_pipeline

    options = inspect.signature(train).parameters
    extra = [k for k, v in given.items() if k in options and k not in PIPELINE_OPTIONS
             and v is not None and PASSIVE.get(k) != v]
    if extra or given["model_arg"]:
        flag = "--" + (extra[0] if extra else "model_arg").replace("_", "-")
        raise PosterGenreError(f"{flag} does not apply to --recipe {given['recipe']}: it runs "
                               "its own settings (rerun the same command to resume)")
    if given["data"] is None:
        raise PosterGenreError("--data is required (a dataset folder from `data prepare`)")
    limit = given["time_limit"] * 60 if given["time_limit"] is not None else None
    with RichProgress(given["progress"]) as bars:
        state = run_pipeline(given["data"], given["out"], time_limit=limit, progress=bars,
                             log=lambda line: print(line, file=sys.stderr, flush=True))
    if "stopped" in state:
        typer.echo(f"stopped ({state['stopped']}); state saved in {given['out']}: rerun the "
                   "same command to resume")
        return
    typer.echo(f"model written to {given['out'] / FINAL} (card: {given['out'] / FINAL}/card.md)")
