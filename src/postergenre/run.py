"""The run directory: what `train` writes and `evaluate`, `predict`, `serve` and `export` read.

    RUN/config.json          "model", "model_kwargs", "genres", "input_size", "dataset",
                             "partial_weights", "train" (the TrainConfig), optional "text"
        weights.safetensors  the best weights (only the trained tensors when "partial_weights":
                             the rest, a pretrained backbone, comes from the model's builder)
        thresholds.json, history.jsonl, checkpoint/ (for `train --resume`), text/ (title model)

The shipped model is such a folder inside the package. `write_config` is the one writer of
config.json and `load_run` the one reader (older layouts are read into the same keys). A folder
with a config.json but no weights and no checkpoint is a failed start (`holds_run`), not a run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from postergenre.errors import RunError
from postergenre.io import atomic_open, atomic_write_bytes, atomic_write_json

if TYPE_CHECKING:  # torch is imported where it is used: reading a run's files needs none
    import torch
    from torch import nn

CONFIG = "config.json"
WEIGHTS = "weights.safetensors"
THRESHOLDS = "thresholds.json"
HISTORY = "history.jsonl"


def default_run_dir() -> Path:
    """The model shipped inside the package."""
    return Path(str(resources.files("postergenre") / "assets" / "default"))


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    thresholds: dict[str, float] = field(default_factory=dict)

    @property
    def genres(self) -> list[str]:
        return list(self.config["genres"])

    @property
    def model_name(self) -> str:
        return self.config["model"]

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.config["input_size"])  # type: ignore[return-value]

    @property
    def dataset(self) -> str | None:
        """The dataset folder the run was trained on, as recorded (it may have moved since)."""
        return self.config.get("dataset")

    @property
    def train_settings(self) -> dict[str, Any]:
        return dict(self.config.get("train", {}))

    def build_model(self, device: str | torch.device = "cpu") -> nn.Module:
        """The model with its weights, in eval mode."""
        from postergenre.models import create_model

        kwargs = dict(self.config.get("model_kwargs", {}))
        model = create_model(self.model_name, len(self.genres), **kwargs)
        load_weights(model, self.path / WEIGHTS, partial=self.config.get("partial_weights", False))
        return model.to(device).eval()


def load_weights(model: nn.Module, path: Path, partial: bool = False) -> None:
    from safetensors.torch import load_file

    if not path.is_file():
        raise RunError(f"{path}: weights file is missing")
    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises several types for a bad file
        raise RunError(f"{path}: not a readable safetensors file ({e})") from None
    expected = model.state_dict()
    wrong = [k for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    if wrong:
        raise RunError(f"{path}: weights do not fit the model in config.json ({wrong[0]} is "
                       f"{tuple(state[wrong[0]].shape)}, the model needs "
                       f"{tuple(expected[wrong[0]].shape)})")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or (missing and not partial):
        bad = (unexpected or missing)[:3]
        raise RunError(f"{path}: weights do not match the model (e.g. {', '.join(bad)})")


def save_weights(model: nn.Module | dict[str, torch.Tensor], path: Path,
                 keys: list[str] | None = None, dtype: torch.dtype | None = None) -> None:
    """Save (a subset of) a state dict as safetensors, atomically; `dtype` (torch.float16 for
    the shipped model) converts floating-point tensors, and loading converts them back."""
    from safetensors.torch import save
    from torch import nn

    state = model.state_dict() if isinstance(model, nn.Module) else model
    if keys is not None:
        state = {k: state[k] for k in keys}
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    atomic_write_bytes(path, save(state))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path}: not valid JSON ({getattr(e, 'msg', None) or e.reason})") from None
    except OSError as e:
        raise RunError(f"{path}: cannot be read ({e.strerror})") from None


def normalise_config(config: dict[str, Any]) -> dict[str, Any]:
    """Older layouts into the fixed keys: "training" -> "train", its "dataset" -> top level."""
    config = dict(config)
    if "training" in config and "train" not in config:
        config["train"] = config.pop("training")
    train = dict(config.get("train") or {})
    if "mode" not in train:
        train["mode"] = "end-to-end"
    elif train["mode"] == "frozen-features":
        train["mode"] = "features"
    config["train"] = train
    config.setdefault("dataset", train.get("dataset"))
    config.setdefault("model_kwargs", {})
    config.setdefault("partial_weights", False)
    return config


def load_run(path: str | Path | None = None) -> Run:
    """Read a run directory; None means the shipped model."""
    run_dir = Path(path) if path is not None else default_run_dir()
    config_path = run_dir / CONFIG
    if not config_path.is_file():
        what = "shipped model is missing" if path is None else "not a run folder (no config.json)"
        raise RunError(f"{run_dir}: {what}")
    config = _read_json(config_path)
    if not isinstance(config, dict):
        raise RunError(f"{config_path}: expected a JSON object")
    for key in ("model", "genres", "input_size"):
        if key not in config:
            raise RunError(f"{config_path}: missing {key!r}")
    thresholds: dict[str, float] = {}
    if (run_dir / THRESHOLDS).is_file():
        thresholds = _read_json(run_dir / THRESHOLDS)
        if not isinstance(thresholds, dict) or not all(
                isinstance(v, int | float) for v in thresholds.values()):
            raise RunError(f"{run_dir / THRESHOLDS}: expected an object of genre: number")
    return Run(run_dir, normalise_config(config), thresholds)


def write_config(run_dir: Path, *, model: str, model_kwargs: dict[str, Any], genres: list[str],
                 input_size: tuple[int, int], dataset: str | Path | None,
                 train: dict[str, Any], partial_weights: bool = False,
                 text: dict[str, Any] | None = None) -> None:
    """The one writer of RUN/config.json (atomic). `text` describes a title model in RUN/text/
    (train/text.py)."""
    atomic_write_json(run_dir / CONFIG, {
        "model": model, "model_kwargs": model_kwargs, "genres": list(genres),
        "input_size": list(input_size), "dataset": str(dataset) if dataset else None,
        "partial_weights": partial_weights, "train": train, **({"text": text} if text else {})})


def holds_run(run_dir: Path) -> bool:
    """True when the folder holds a run (trained weights or a checkpoint), not only the
    config.json of a start that failed."""
    return (run_dir / CONFIG).is_file() and (
        (run_dir / WEIGHTS).is_file() or (run_dir / "checkpoint" / "latest.json").is_file())


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
