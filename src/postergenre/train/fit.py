"""`fit`: the one entry point that trains a run, whatever the mode.

    fit("datasets/shared", "runs/lite0", make_config(mode="features", model="efficientnet-lite0"))

Everything is checked before anything is written, so a failed start leaves nothing that blocks
the retry. Then the run folder gets its config.json, the mode builds its data source
(sources.py), and the engine (engine.py) trains it; `resume=True` continues a run.

When the dataset has titles (and `config.titles`), the poster model is followed by the title
step: the title model fitted on the train titles, its per-genre fusion fitted on val with this
run's own val probabilities (the poster model never trained on val, so they are honest), and
fused thresholds tuned on val, stored in RUN/text/ (train/text.py). A run killed at any point,
before or after the poster model finished, ends complete with `resume=True`.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from postergenre.data.dataset import Split, load_split
from postergenre.errors import PosterGenreError, RunError
from postergenre.io import ensure_writable_dir, load_weights
from postergenre.models import create_model, model_info
from postergenre.models.registry import FeatureModel, PosterModel, TrunkModel
from postergenre.progress import SILENT, Progress
from postergenre.run import TENSORBOARD, WEIGHTS, RunConfig, holds_run, load_run, write_config
from postergenre.train import distributed
from postergenre.train.engine import run_epochs
from postergenre.train.recipes import DECODE_WORKERS, FEATURES_HEAD, TrainConfig, check_config
from postergenre.train.sources import SOURCES
from postergenre.train.text import fit_and_save

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

# The title model's settings (train/text.py, models/text.py): the shipped model's.
TITLE_SETTINGS: dict[str, Any] = {"C": 1.0}


def _check_out(out: Path, resume: bool, inputs: list[Path]) -> None:
    if resume:
        if not holds_run(out):
            raise RunError(f"{out}: no run to resume (no weights or checkpoint)")
        return
    for source in inputs:
        if source.resolve() == out.resolve():
            raise RunError(f"{out}: is an input of this run; choose another --out")
    if holds_run(out):
        raise RunError(f"{out}: already holds a run; pass --resume to continue it, "
                       "or choose another --out")


def _build(config: TrainConfig, genres: list[str], dataset: str | Path
           ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model to train and the settings that rebuild it (the run's "model_kwargs"): a new
    one, or (finetune) the `init` run's with its last blocks made trainable, or (finetune of a
    model that starts from its own backbone weights, e.g. vgg16) a new one."""
    kwargs = dict(config.model_kwargs)
    extra = {"backbone_weights": config.backbone_weights} if config.backbone_weights else {}
    from_init = config.mode == "finetune" and model_info(config.model).finetune_needs_init
    if config.mode == "features":
        if "trainable_blocks" in kwargs:
            raise PosterGenreError("--trainable-blocks: features training trains the head "
                                   "only; drop the option")
        kwargs = {**FEATURES_HEAD, **kwargs, "flip_average": config.flip, "trainable_blocks": 0}
    elif config.mode == "finetune" and config.init and not from_init:
        raise PosterGenreError(f"{config.model} fine-tunes from its --backbone-weights, not "
                               "from a run: drop --init")
    elif from_init:
        if config.init is None:
            raise PosterGenreError("finetune training starts from a features run: give --init")
        if kwargs:
            raise PosterGenreError("finetune takes its model settings from the --init run; "
                                   "drop --model-arg, --head, --pool, --hidden, --dropout")
        start = load_run(config.init)
        if start.train_settings.get("mode") != "features" or start.model_name != config.model:
            raise PosterGenreError(f"{config.init}: fine-tuning starts from a {config.model} "
                                   "run trained in features mode")
        if start.genres != genres:
            raise PosterGenreError(f"{config.init}: its genres differ from {dataset}'s")
        kwargs = dict(start.config.model_kwargs, trainable_blocks=config.trainable_blocks)
        if kwargs.get("pool") != "multi" or kwargs.get("flip_average"):
            raise PosterGenreError(f"{config.init}: start from a features run with 'multi' "
                                   "pooling and no flip averaging")
    model = create_model(config.model, len(genres), **kwargs, **extra)
    if extra and getattr(model, "normalization", None) and "normalization" not in kwargs:
        kwargs["normalization"] = model.normalization  # what fits the weights: on record
    if config.mode == "finetune":
        # a one-line error for an impossible number
        cast(TrunkModel, model).cut_for(config.trainable_blocks)
    if from_init:
        load_weights(model, start.path / WEIGHTS, partial=True)
    return model, kwargs


def fit(dataset: str | Path | None, out: str | Path, config: TrainConfig | None = None, *,
        resume: bool = False, device: str | None = None, progress: Progress = SILENT,
        cache: bool = True, workers: int = DECODE_WORKERS, time_limit: float | None = None,
        backend: str = "auto", cache_root: str | Path | None = None, tensorboard: bool = False,
        on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
        titles: bool | None = None) -> dict[str, Any]:
    """Train `config` on DATASET into the run folder `out`; return a summary dict.

    `time_limit` (seconds) stops before an epoch that would end past it (at least one epoch
    runs); `resume` continues later. `on_epoch_end(record)` is called on every rank after each
    epoch's checkpoint is written. `titles` (default: `config.titles`) decides whether the
    title step follows; `fit(None, run, resume=True, titles=True)` adds it to a finished run.
    """
    out = Path(out)
    if resume:
        _check_out(out, True, [])
        stored = load_run(out)
        config = TrainConfig.from_dict(stored.train_settings)
        dataset = stored.dataset
    else:
        config = config or TrainConfig()
        check_config(config)  # a stored run's settings were checked when it started
    _check_options(config.mode, cache=cache, workers=workers, backend=backend,
                   cache_root=cache_root)
    if dataset is None:
        raise PosterGenreError("no dataset given (--data)")
    if device is not None and device != "cpu" and not device.startswith("cuda"):
        raise PosterGenreError(f"--device must be cpu or cuda[:N], not {device!r}")
    if device and device.startswith("cuda") and not torch.cuda.is_available():
        raise PosterGenreError(f"--device {device}: CUDA is not available on this machine")
    if config.mode != "end-to-end" and device and device.startswith("cuda"):
        raise PosterGenreError(f"{config.mode} training runs on the CPU; drop --device")
    train, val = load_split(dataset, "train"), load_split(dataset, "val")
    for split in (train, val):
        if len(split) == 0:
            raise PosterGenreError(f"{dataset}: the {split.name} split is empty; training "
                                   "needs posters in train and val (val picks the best epoch "
                                   "and tunes the thresholds)")
    if not resume:
        _check_out(out, False, [Path(dataset)] + ([Path(config.init)] if config.init else []))

    rank, world, dev = distributed.setup(device)
    try:
        if config.batch_size % world:
            raise PosterGenreError(f"batch size {config.batch_size} must be a multiple of the "
                                   f"{world} processes")
        torch.manual_seed(config.seed)
        model, kwargs = _build(config, train.genres, dataset)
        if getattr(model, "pretrained", True) is False and distributed.is_main():
            print(f"warning: {config.model} starts from random weights (no --backbone-weights "
                  "file given): expect much lower scores than with ImageNet weights",
                  file=sys.stderr)
        if distributed.is_main() and not resume:
            ensure_writable_dir(out)
            partial = config.mode != "end-to-end" and len(
                cast("FeatureModel | TrunkModel", model).trained_keys()) < len(
                model.state_dict())  # vgg16's finetune run stores every tensor
            write_config(out, RunConfig(
                model=config.model, model_kwargs=kwargs, genres=tuple(train.genres),
                input_size=cast(PosterModel, model).input_size,
                dataset=str(dataset), partial_weights=partial, train=config.to_dict()))
        distributed.barrier()
        options: dict[str, Any] = {"progress": progress}
        if config.mode == "end-to-end":
            options = {"device": dev, "cache": cache, "workers": workers}
        else:
            options.update(backend=backend, cache_root=cache_root)
        source = SOURCES[config.mode](model, train, val, config, **options)
        writer = _tensorboard(out) if tensorboard and distributed.is_main() else None
        state = run_epochs(source, out, config, resume=resume, progress=progress,
                           time_limit=time_limit, on_epoch_end=on_epoch_end,
                           log=None if writer is None
                           else functools.partial(_log_scalars, writer))
        if writer is not None:
            writer.close()
        text, text_s = None, 0.0
        if (config.titles if titles is None else titles) and not state.get("stopped") \
                and distributed.is_main() and has_titles(train) and has_titles(val):
            t0 = time.perf_counter()
            text = fit_titles(out, dataset, state["val_probs"])
            text_s = round(time.perf_counter() - t0, 1)
        distributed.barrier()
    finally:
        distributed.cleanup()
    return {"epochs": state["epoch"], "best_epoch": state["best_epoch"],
            "best_val_macro_ap": state["best"], "seconds": state["seconds"], "world": world,
            "device": str(dev), "mode": config.mode, "stopped": state.get("stopped"),
            "text": str(text) if text else None, "text_seconds": text_s}


def has_titles(split: Split) -> bool:
    """True when the split has at least one non-empty title."""
    return any(t and t.strip() for t in split.titles)


def fit_titles(run_dir: str | Path, dataset: str | Path, val_probs: np.ndarray,
               text_splits: tuple[str, ...] = ("train",)) -> Path:
    """The title step of a trained run: RUN/text/ from `val_probs`, the run's poster model's
    probabilities on the val split (see train/text.py, `fit_and_save`)."""
    return fit_and_save(run_dir, dataset, val_probs, text_splits, "per-genre", **TITLE_SETTINGS)


def _check_options(mode: str, **given: Any) -> None:
    """fit's own options that `mode` would ignore: end-to-end decodes posters (`cache`,
    `workers`), the cached modes extract features (`backend`, `cache_root`)."""
    unused = ({"backend": "auto", "cache_root": None} if mode == "end-to-end" else
              {"cache": True, "workers": DECODE_WORKERS})
    for name, default in unused.items():
        if given[name] != default:
            flag = "--no-cache" if name == "cache" else f"--{name.replace('_', '-')}"
            raise PosterGenreError(f"{flag} does not apply to {mode} training; drop the option")


def _tensorboard(out: Path) -> SummaryWriter:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise PosterGenreError("--tensorboard needs TensorBoard: pip install "
                               "'postergenre[tensorboard]'") from None
    return SummaryWriter(str(out / TENSORBOARD))


def _log_scalars(writer: SummaryWriter, key: str, record: dict[str, Any]) -> None:
    """An epoch's record in TensorBoard."""
    for k in ("train_loss", "val_macro_ap", "lr"):
        writer.add_scalar(k, record[k], record["epoch"])

