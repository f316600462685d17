"""Training settings (`TrainConfig`) and named recipes.

`--recipe seed-custom` and `--recipe seed-vgg16` reproduce the original project's recipes;
options given next to a recipe override it. Without a recipe the defaults are a modern,
working choice: AdamW, cosine decay, early stopping on val macro AP.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from postergenre.errors import PosterGenreError

OPTIMIZERS = ("adamw", "adam", "rmsprop", "sgd")
SCHEDULES = ("cosine", "constant")


@dataclass
class TrainConfig:
    model: str = "custom-cnn"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int = 30
    batch_size: int = 64  # the global batch: split across DDP ranks
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-2
    schedule: str = "cosine"  # per step, over all epochs
    loss: str = "bce"  # "bce" | "asl"
    pos_weight: bool = False  # weight positives per genre by neg/pos (clipped)
    pos_weight_max: float = 10.0
    resample: float = 0.0  # rare-genre resampling power; 0 = plain shuffling
    augment: bool = False  # the original affine augmentation + flips
    patience: int = 5  # stop after this many epochs without a better val macro AP; 0 = never
    seed: int = 0
    recipe: str | None = None

    def __post_init__(self) -> None:
        for name, value, choices in (("optimizer", self.optimizer, OPTIMIZERS),
                                     ("schedule", self.schedule, SCHEDULES)):
            if value not in choices:
                raise PosterGenreError(f"{name} must be one of {', '.join(choices)}, "
                                       f"not {value!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise PosterGenreError("epochs and batch size must be at least 1 and lr positive")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# Keras defaults the originals ran with: Adam(lr=1e-3), RMSprop(lr=1e-4, rho=0.9); no decay,
# no early stopping, augmentation on.
RECIPES: dict[str, dict[str, Any]] = {
    "seed-custom": dict(model="custom-cnn", optimizer="adam", lr=1e-3, weight_decay=0.0,
                        schedule="constant", epochs=30, batch_size=64, augment=True,
                        patience=0),
    "seed-vgg16": dict(model="vgg16", optimizer="rmsprop", lr=1e-4, weight_decay=0.0,
                       schedule="constant", epochs=50, batch_size=64, augment=True,
                       patience=0),
}


def make_config(recipe: str | None = None, **overrides: Any) -> TrainConfig:
    """A recipe's settings (or the defaults), then every override that is not None."""
    base: dict[str, Any] = {}
    if recipe is not None:
        if recipe not in RECIPES:
            raise PosterGenreError(f"unknown recipe {recipe!r}; choose one of: "
                                   f"{', '.join(RECIPES)}")
        base = dict(RECIPES[recipe], recipe=recipe)
    base.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(base)
