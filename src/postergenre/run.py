"""The run folder: what `train` writes and `evaluate`, `predict`, `explain`, `serve` and `export`
read. This module is its one owner: every file name below is defined here, `write_config` is
the one writer of config.json (a `RunConfig`) and `load_run` the one reader.

    RUN/config.json          RunConfig: format_version, model, model_kwargs, genres, input_size,
                             dataset, partial_weights, train (train/recipes.TrainConfig), text
        weights.safetensors  the best weights (only the trained tensors when partial_weights:
                             the rest, a pretrained backbone, comes from the model's builder)
        thresholds.json      per-genre decision thresholds (tuned on val)
        history.jsonl        one line per epoch
        checkpoint/          latest.json -> epoch-N/ {model.safetensors, trainer.pt}
        int8.json            the int8 check's record (evaluate/int8.py writes, export.py reads)
        text/                the title side (TitleSide), when config.json has "text":
            text.json, text.safetensors   the TitleModel (models/text.py)
            fusion.json                   the Fusion weights
            thresholds.json               thresholds for the fused scores

The shipped model is such a folder inside the package. A folder with a config.json but no
weights and no checkpoint is a failed start (`holds_run`), not a run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from postergenre.errors import RunError
from postergenre.io import atomic_open, atomic_write_json, load_weights

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from postergenre.models.text import Fusion, TitleModel

FORMAT_VERSION = 2  # 1: the unversioned layout before RunConfig (no longer read)

# Every file of the run folder, named once.
CONFIG = "config.json"
WEIGHTS = "weights.safetensors"
THRESHOLDS = "thresholds.json"
HISTORY = "history.jsonl"
CHECKPOINT = "checkpoint"  # a folder
CHECKPOINT_LATEST = "latest.json"  # inside CHECKPOINT: the last epoch's state and folder
CHECKPOINT_MODEL = "model.safetensors"  # inside CHECKPOINT/epoch-N/
CHECKPOINT_TRAINER = "trainer.pt"  # inside CHECKPOINT/epoch-N/: optimizer and schedule
INT8_CARD = "int8.json"
TENSORBOARD = "tensorboard"  # a folder (train --tensorboard)
TEXT_DIR = "text"  # a folder: the title side
TEXT_CONFIG = "text.json"  # inside TEXT_DIR
TEXT_WEIGHTS = "text.safetensors"  # inside TEXT_DIR
FUSION = "fusion.json"  # inside TEXT_DIR
TEXT_THRESHOLDS = "thresholds.json"  # inside TEXT_DIR


def default_run_dir() -> Path:
    """The model shipped inside the package."""
    return Path(str(resources.files("postergenre") / "assets" / "default"))


# --- config.json ------------------------------------------------------------------------------


def _need(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str,
          source: str) -> Any:
    """obj[key], or a one-line RunError naming `source` when it is missing or of another type."""
    if key not in obj:
        raise RunError(f"{source}: missing {key!r}")
    value, kinds = obj[key], kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise RunError(f"{source}: {key!r} must be {what}, not {type(value).__name__}")
    return value


def _strings(value: Any, key: str, source: str) -> tuple[str, ...]:
    if not all(isinstance(v, str) for v in value):
        raise RunError(f"{source}: {key!r} must be a list of strings")
    return tuple(value)


@dataclass(frozen=True)
class TextSettings:
    """config.json's "text": what the title side in RUN/text/ is and what it was fitted on.
    `title_model` holds the TitleModel's settings (also in text/text.json), for the record."""

    fusion: str  # the Fusion form (models/text.FUSION_FORMS)
    title_model: dict[str, Any] = field(default_factory=dict)
    text_fitted_on: tuple[str, ...] = ("train",)
    fusion_fitted_on: str = "val"
    dataset: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"fusion": self.fusion, "title_model": dict(self.title_model),
                "text_fitted_on": list(self.text_fitted_on),
                "fusion_fitted_on": self.fusion_fitted_on, "dataset": self.dataset}

    @classmethod
    def from_json(cls, obj: Any, source: str) -> TextSettings:
        where = f"{source}: 'text'"
        if not isinstance(obj, dict):
            raise RunError(f"{where} must be an object, not {type(obj).__name__}")
        return cls(fusion=_need(obj, "fusion", str, "a string", where),
                   title_model=dict(_need(obj, "title_model", dict, "an object", where)),
                   text_fitted_on=_strings(_need(obj, "text_fitted_on", list, "a list", where),
                                           "text_fitted_on", where),
                   fusion_fitted_on=_need(obj, "fusion_fitted_on", str, "a string", where),
                   dataset=_need(obj, "dataset", (str, type(None)), "a string or null", where))


@dataclass(frozen=True)
class RunConfig:
    """RUN/config.json. `train` is the training settings as train/recipes.TrainConfig writes
    and reads them (`TrainConfig.to_dict` / `from_dict`); `text` is None without a title side."""

    model: str
    model_kwargs: dict[str, Any]
    genres: tuple[str, ...]
    input_size: tuple[int, int]
    dataset: str | None = None
    partial_weights: bool = False
    train: dict[str, Any] = field(default_factory=dict)
    text: TextSettings | None = None
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format_version": self.format_version, "model": self.model,
            "model_kwargs": dict(self.model_kwargs), "genres": list(self.genres),
            "input_size": list(self.input_size), "dataset": self.dataset,
            "partial_weights": self.partial_weights, "train": dict(self.train)}
        if self.text is not None:
            out["text"] = self.text.to_json()
        return out

    @classmethod
    def from_json(cls, obj: Any, source: str | Path) -> RunConfig:
        """Check and type a parsed config.json; `source` (its path) names it in every error."""
        source = str(source)
        if not isinstance(obj, dict):
            raise RunError(f"{source}: expected a JSON object")
        if "format_version" not in obj:
            raise RunError(f"{source}: no 'format_version': a run from an older postergenre "
                           "(train it again)")
        version = _need(obj, "format_version", int, "an integer", source)
        if version > FORMAT_VERSION:
            raise RunError(f"{source}: format_version {version} is newer than this postergenre "
                           f"reads ({FORMAT_VERSION}); upgrade postergenre")
        if version < FORMAT_VERSION:
            raise RunError(f"{source}: format_version {version} is older than this postergenre "
                           f"reads ({FORMAT_VERSION}); train the run again")
        size = _need(obj, "input_size", list, "a list of two integers", source)
        if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                     for v in size):
            raise RunError(f"{source}: 'input_size' must be two positive integers, not {size}")
        genres = _strings(_need(obj, "genres", list, "a list of genre names", source),
                          "genres", source)
        if not genres:
            raise RunError(f"{source}: 'genres' is empty")
        text = obj.get("text")
        return cls(model=_need(obj, "model", str, "a string", source),
                   model_kwargs=dict(_need(obj, "model_kwargs", dict, "an object", source)),
                   genres=genres, input_size=(size[0], size[1]),
                   dataset=_need(obj, "dataset", (str, type(None)), "a string or null", source),
                   partial_weights=_need(obj, "partial_weights", bool, "true or false", source),
                   train=dict(_need(obj, "train", dict, "an object", source)),
                   text=None if text is None else TextSettings.from_json(text, source),
                   format_version=version)


def write_config(run_dir: str | Path, config: RunConfig) -> None:
    """The one writer of RUN/config.json (atomic)."""
    atomic_write_json(Path(run_dir) / CONFIG, config.to_json())


def read_config(path: Path) -> RunConfig:
    return RunConfig.from_json(_read_json(path), path)


# --- the title side ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TitleSide:
    """A run's title model, its fusion with the poster model, and the per-genre thresholds
    tuned for the fused scores (RUN/text/)."""

    model: TitleModel
    fusion: Fusion
    thresholds: np.ndarray  # (G,) float32, in the run's genre order


def load_title_side(run_dir: Path, genres: tuple[str, ...] | list[str]) -> TitleSide:
    """Read RUN/text/ (the run's config says it has one); genres must match the run's."""
    import numpy as np

    from postergenre.models.text import Fusion, TitleModel

    folder = run_dir / TEXT_DIR
    model = TitleModel.load(folder / TEXT_CONFIG, folder / TEXT_WEIGHTS)
    fusion = Fusion.load(folder / FUSION)
    if model.genres != list(genres) or fusion.genres != list(genres):
        raise RunError(f"{folder}: the title model's genres differ from the run's")
    path = folder / TEXT_THRESHOLDS
    saved = _read_thresholds(path) if path.is_file() else {}
    return TitleSide(model, fusion, np.array([saved.get(g, 0.5) for g in genres], np.float32))


def save_title_side(run_dir: str | Path, side: TitleSide, settings: TextSettings) -> Path:
    """Write RUN/text/ and record `settings` as config.json's "text" (the poster model's files
    are untouched: without a title the run predicts exactly as before)."""
    from dataclasses import replace

    run = load_run(run_dir)
    if list(side.model.genres) != run.genres or list(side.fusion.genres) != run.genres:
        raise RunError(f"{run_dir}: the title model's genres differ from the run's")
    folder = run.path / TEXT_DIR
    side.model.save(folder / TEXT_CONFIG, folder / TEXT_WEIGHTS)
    side.fusion.save(folder / FUSION)
    atomic_write_json(folder / TEXT_THRESHOLDS, {
        g: float(t) for g, t in zip(run.genres, side.thresholds, strict=True)})
    write_config(run.path, replace(run.config, text=settings))
    return folder


# --- the run ----------------------------------------------------------------------------------


@dataclass
class Run:
    path: Path
    config: RunConfig
    thresholds: dict[str, float] = field(default_factory=dict)

    @property
    def genres(self) -> list[str]:
        return list(self.config.genres)

    @property
    def model_name(self) -> str:
        return self.config.model

    @property
    def input_size(self) -> tuple[int, int]:
        return self.config.input_size

    @property
    def dataset(self) -> str | None:
        """The dataset folder the run was trained on, as recorded (it may have moved since)."""
        return self.config.dataset

    @property
    def train_settings(self) -> dict[str, Any]:
        """The training settings, for `TrainConfig.from_dict`."""
        return dict(self.config.train)

    @cached_property
    def title_side(self) -> TitleSide | None:
        """The title model, fusion and fused thresholds (read once), or None without one."""
        return None if self.config.text is None else load_title_side(self.path, self.genres)

    def build_model(self, device: str | torch.device = "cpu") -> nn.Module:
        """The model with its weights, in eval mode."""
        from postergenre.models import create_model

        model = create_model(self.model_name, len(self.genres), **self.config.model_kwargs)
        load_weights(model, self.path / WEIGHTS, partial=self.config.partial_weights)
        return model.to(device).eval()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        why = e.reason if isinstance(e, UnicodeDecodeError) else e.msg
        raise RunError(f"{path}: not valid JSON ({why})") from None
    except OSError as e:
        raise RunError(f"{path}: cannot be read ({e.strerror})") from None


def _read_thresholds(path: Path) -> dict[str, float]:
    thresholds = _read_json(path)
    if not isinstance(thresholds, dict) or not all(
            isinstance(v, int | float) for v in thresholds.values()):
        raise RunError(f"{path}: expected an object of genre: number")
    return thresholds


def load_run(path: str | Path | None = None) -> Run:
    """Read a run directory; None means the shipped model."""
    run_dir = Path(path) if path is not None else default_run_dir()
    config_path = run_dir / CONFIG
    if not config_path.is_file():
        what = "shipped model is missing" if path is None else "not a run folder (no config.json)"
        raise RunError(f"{run_dir}: {what}")
    thresholds = _read_thresholds(run_dir / THRESHOLDS) if (run_dir / THRESHOLDS).is_file() \
        else {}
    return Run(run_dir, read_config(config_path), thresholds)


def model_fingerprint(run_dir: str | Path) -> str:
    """The identity of what a run scores with: sha256 over the files that decide its scores
    (config, thresholds, weights, and the title side), names included; history, checkpoints,
    the int8 record and evaluation outputs are left out."""
    import hashlib

    root = Path(run_dir)
    names = [CONFIG, THRESHOLDS, WEIGHTS,
             *(f"{TEXT_DIR}/{n}" for n in (TEXT_CONFIG, TEXT_WEIGHTS, FUSION, TEXT_THRESHOLDS))]
    h = hashlib.sha256()
    for name in names:
        path = root / name
        if path.is_file():
            h.update(f"{name}\n".encode())
            with path.open("rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
    return f"sha256:{h.hexdigest()}"


def holds_run(run_dir: Path) -> bool:
    """True when the folder holds a run (trained weights or a checkpoint), not only the
    config.json of a start that failed."""
    return (run_dir / CONFIG).is_file() and (
        (run_dir / WEIGHTS).is_file() or (run_dir / CHECKPOINT / CHECKPOINT_LATEST).is_file())


def save_thresholds(run_dir: Path, thresholds: dict[str, float]) -> None:
    atomic_write_json(run_dir / THRESHOLDS, {g: float(t) for g, t in thresholds.items()})


def append_history(run_dir: Path, record: dict[str, Any]) -> None:
    """Append one epoch's record; the file is rewritten atomically so it is never half a line."""
    path = run_dir / HISTORY
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(old + json.dumps(record) + "\n")


def write_history(run_dir: Path, records: list[dict[str, Any]]) -> None:
    """Replace the history with `records` (a resumed run's, matching its checkpoint)."""
    with atomic_open(run_dir / HISTORY, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / HISTORY
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
