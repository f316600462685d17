"""Model registry: names -> builders with their metadata, so no caller tests a model's name.

    create_model("custom-cnn", 28)          # an nn.Module
    model_info("efficientnet-lite0").modes   # ("end-to-end", "features", "finetune")

A builder is registered with `register_model(name, **metadata)` and called as
`builder(num_genres, **settings) -> nn.Module`. Every model takes a float tensor
(N, 3, H, W) in [0, 1] (the poster loader's output), normalises it itself, and returns
logits (N, num_genres). Each model has an `input_size` attribute, (height, width), and an
`explain_layer()` method: the module whose output map Grad-CAM explains (explain.py).

The metadata (timm's `pretrained_cfg` idea) says what the CLI and the trainer may do with a
model: its default input size and the smallest it takes, its input normalisation, which
training modes it supports (train/recipes.py) and which it uses by default on a CPU and on
CUDA, and how many of its last blocks can be fine-tuned on a cached trunk. Models that
support "features" have `features(x)`, `feature_dim`, `head`, `fit_head_statistics(x)` and
`trained_keys()`; models that support "finetune" also `cut_for(blocks)`,
`trunk_features(x, cut)`, `tail_logits(rows, cut, drop_connect)` and `trunk_id(cut)` (what
the trunk depends on beyond the name and input size, in its cache key: '' for bundled weights).
`PosterModel`, `FeatureModel` and `TrunkModel` spell these out for the type checker.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from postergenre.errors import PosterGenreError

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class ModelInfo:
    name: str
    builder: Callable[..., nn.Module]
    input_size: tuple[int, int]  # (height, width) by default
    min_input_size: tuple[int, int]
    normalization: str  # what the model does to its [0, 1] input
    modes: tuple[str, ...] = ("end-to-end",)
    cpu_mode: str = "end-to-end"  # the mode `train` uses when none is given, on a CPU
    cuda_mode: str = "end-to-end"  # ... and on CUDA
    finetune_blocks: int = 0  # the most last blocks "finetune" may train (0: not cuttable)
    finetune_needs_init: bool = True  # "finetune" starts from a features run; False: from
    # the model's own (backbone) weights, no --init
    finetune_mirrors: bool = True  # "finetune" also caches the mirrored posters' trunks
    finetune_drop_connect: bool = True  # `tail_logits` applies its drop_connect rate

    @property
    def settings(self) -> tuple[str, ...]:
        """The keyword settings the builder accepts (`--model-arg KEY=VALUE`)."""
        bound = self.builder.keywords if isinstance(self.builder, functools.partial) else {}
        params = inspect.signature(self.builder).parameters
        return tuple(k for k in params if k not in bound and k != "num_genres")

    def default_mode(self, cuda: bool) -> str:
        return self.cuda_mode if cuda else self.cpu_mode


class PosterModel(Protocol):
    """The attributes every registered model has beside nn.Module's (its type for a checker:
    `cast(PosterModel, model)`)."""

    input_size: tuple[int, int]

    def explain_layer(self) -> nn.Module: ...


class FeatureModel(PosterModel, Protocol):
    """A model that supports the "features" mode."""

    feature_dim: int
    head: nn.Module

    def features(self, x: torch.Tensor) -> torch.Tensor: ...
    def fit_head_statistics(self, features: torch.Tensor) -> None: ...
    def trained_keys(self) -> list[str]: ...


class TrunkModel(PosterModel, Protocol):
    """A model that supports the "finetune" mode."""

    def cut_for(self, blocks: int) -> int: ...
    def trunk_features(self, x: torch.Tensor, cut: int) -> torch.Tensor: ...
    def tail_logits(self, rows: torch.Tensor, cut: int, drop_connect: float = 0.0
                    ) -> torch.Tensor: ...
    def trunk_id(self, cut: int) -> str: ...
    def trained_keys(self) -> list[str]: ...


def tensor_digest(tensors) -> str:
    """A short sha1 of tensors' values (a model's `trunk_id`)."""
    h = hashlib.sha1()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


_MODELS: dict[str, ModelInfo] = {}
# Modules that register models when imported; imported lazily on first use.
_MODULES = ("custom_cnn", "vgg16", "efficientnet")


def register_model(name: str, **metadata) -> Callable[[Callable[..., nn.Module]],
                                                    Callable[..., nn.Module]]:
    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _MODELS[name] = ModelInfo(name, builder, **metadata)
        return builder

    return decorator


def _load_all() -> None:
    for module in _MODULES:
        try:
            importlib.import_module(f"postergenre.models.{module}")
        except ModuleNotFoundError as e:
            if e.name != f"postergenre.models.{module}":
                raise


def list_models() -> list[str]:
    _load_all()
    return sorted(_MODELS)


def model_info(name: str) -> ModelInfo:
    """The registry entry of `name` (a one-line error naming the choices if unknown)."""
    _load_all()
    if name not in _MODELS:
        raise PosterGenreError(f"unknown model {name!r}; choose one of: "
                               f"{', '.join(sorted(_MODELS))}")
    return _MODELS[name]


def create_model(name: str, num_genres: int, **settings) -> nn.Module:
    """Build the model registered as `name` with `num_genres` outputs."""
    info = model_info(name)
    unknown = sorted(set(settings) - set(info.settings))
    if unknown:
        raise PosterGenreError(f"{name} has no setting {unknown[0]!r}; its settings: "
                               f"{', '.join(info.settings)}")
    size = settings.get("input_size")
    if size is not None:
        try:
            h, w = (int(v) for v in size)
        except (TypeError, ValueError):
            raise PosterGenreError(f"input_size must be [height, width], not {size!r}") from None
        low_h, low_w = info.min_input_size
        if h < low_h or w < low_w:
            raise PosterGenreError(f"input size {h} x {w} is too small for {name} (at least "
                                   f"{low_h} x {low_w})")
    return info.builder(num_genres, **settings)
