"""Model registry: names -> builders, so `create_model("custom-cnn", 28)` replaces if-chains.

A builder is registered with `@register_model("name")` and called as
`builder(num_genres, **kwargs) -> nn.Module`. Every model takes a float tensor
(N, 3, H, W) in [0, 1] (the poster loader's output), normalises it itself, and returns
logits (N, num_genres). Each model has an `input_size` attribute, (height, width), and an
`explain_layer()` method: the module whose output map Grad-CAM explains (explain.py).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from torch import nn

from postergenre.errors import PosterGenreError

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
# Modules that register models when imported; imported lazily on first use.
_MODULES = ("custom_cnn", "vgg16", "efficientnet")


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _BUILDERS[name] = builder
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
    return sorted(_BUILDERS)


def create_model(name: str, num_genres: int, **kwargs) -> nn.Module:
    """Build the model registered as `name` with `num_genres` outputs."""
    _load_all()
    if name not in _BUILDERS:
        choices = ", ".join(sorted(_BUILDERS))
        raise PosterGenreError(f"unknown model {name!r}; choose one of: {choices}")
    return _BUILDERS[name](num_genres, **kwargs)
