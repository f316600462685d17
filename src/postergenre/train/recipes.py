"""Training settings (`TrainConfig`), the three training modes' defaults, and named recipes.

A model trains in one of three modes (the model's registry entry says which it supports):

  end-to-end  every poster through the whole network each epoch (augmentation, DDP, CUDA);
  features    a head on cached frozen-backbone features: the fast CPU path;
  finetune    the last blocks and the head of a `features` run (`init`), on a cached trunk
              (vgg16: block 5 and its head, from its backbone weights, no `init`).

`make_config(recipe, mode, **options)` starts from the mode's defaults, applies the recipe
(`--recipe seed-custom` / `seed-vgg16`: the original project's), then every option given.
An option that the mode does not use is an error naming both, never silently ignored.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from postergenre.errors import PosterGenreError
from postergenre.models import model_info

if TYPE_CHECKING:
    import torch
    from torch import nn

MODES = ("end-to-end", "features", "finetune")
SCHEDULES = ("cosine", "constant", "onecycle")
LOSSES = ("bce", "asl")
PRECISIONS = ("auto", "fp32", "bf16")



@dataclass
class TrainConfig:
    model: str = "custom-cnn"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    mode: str = "end-to-end"
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
    augment: bool = False  # end-to-end: the original affine augmentation + flips
    precision: str = "auto"  # end-to-end forward pass: bf16 where the CPU/GPU runs it natively
    flip: bool = False  # features: train on mirrored posters too, average both at prediction
    patience: int = 5  # stop after this many epochs without a better val macro AP; 0 = never
    seed: int = 0
    init: str | None = None  # finetune: the `features` run to start from
    trainable_blocks: int = 2  # finetune: how many of the last blocks train
    drop_connect: float = 0.2  # finetune: drop-connect rate at the last block
    backbone_weights: str | None = None  # a local file of ImageNet weights (vgg16)
    recipe: str | None = None

    def __post_init__(self) -> None:
        for name, value, choices in (("mode", self.mode, MODES),
                                     ("optimizer", self.optimizer, OPTIMIZERS),
                                     ("schedule", self.schedule, SCHEDULES),
                                     ("loss", self.loss, LOSSES),
                                     ("precision", self.precision, PRECISIONS)):
            if value not in choices:
                raise PosterGenreError(f"--{name} must be one of {', '.join(choices)}, "
                                       f"not {value!r}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise PosterGenreError(f"--{name.replace('_', '-')} must be at least 1, "
                                       f"not {getattr(self, name)}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise PosterGenreError("--lr must be positive and --weight-decay not negative")
        if not 0 <= self.seed < 2**32:
            raise PosterGenreError(f"--seed must be between 0 and 2**32 - 1, not {self.seed}")
        if self.patience < 0 or self.resample < 0 or not 0 <= self.drop_connect < 1:
            raise PosterGenreError("--patience and --resample must not be negative, "
                                   "--drop-connect in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# What each mode starts from; a recipe or an option replaces any of these.
MODE_DEFAULTS: dict[str, dict[str, Any]] = {
    "end-to-end": {},
    "features": dict(epochs=100, batch_size=256, lr=3e-4, weight_decay=0.1,
                     schedule="constant", patience=8),
    "finetune": dict(epochs=8, batch_size=64, lr=1e-4, weight_decay=0.05,
                     schedule="onecycle", patience=0),
}
_COMMON = {"model", "model_kwargs", "mode", "epochs", "batch_size", "optimizer", "lr",
           "weight_decay", "schedule", "loss", "pos_weight", "pos_weight_max", "resample",
           "patience", "seed", "recipe"}
# The settings each mode reads: giving another one is an error.
MODE_OPTIONS: dict[str, set[str]] = {
    "end-to-end": _COMMON | {"augment", "backbone_weights", "precision"},
    "features": _COMMON | {"flip"},
    "finetune": _COMMON | {"init", "trainable_blocks", "drop_connect", "backbone_weights"},
}

# Each optimizer by name: its torch.optim class and settings; Keras's epsilon (and RMSprop's
# rho) where the originals used Keras.
OPTIMIZERS: dict[str, tuple[str, dict[str, Any]]] = {
    "adamw": ("AdamW", dict(fused=True)),
    "adam": ("Adam", dict(eps=1e-7, fused=True)),
    "rmsprop": ("RMSprop", dict(alpha=0.9, eps=1e-7)),
    "sgd": ("SGD", dict(momentum=0.9, nesterov=True)),
}


def make_optimizer(params: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    import torch

    name, settings = OPTIMIZERS[config.optimizer]
    return getattr(torch.optim, name)(params, lr=config.lr, weight_decay=config.weight_decay,
                                      **settings)


def make_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig, total: int
                  ) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step learning-rate factors: cosine decay, constant, or one-cycle (10% warm-up)."""
    import torch

    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, pct_start=0.1,
                                                   total_steps=max(total, 1))
    if config.schedule == "cosine":
        def factor(step: int) -> float:
            return 0.5 * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))
    else:
        def factor(step: int) -> float:
            return 1.0
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# Keras defaults the originals ran with: Adam(lr=1e-3), RMSprop(lr=1e-4, rho=0.9); no decay,
# no early stopping. The custom CNN's notebook fits plain arrays (no augmentation); the VGG16
# script uses an ImageDataGenerator (augmentation on), which only end-to-end training can do:
# in finetune mode (vgg16's default on a CPU) block 5 trains on the cached trunk, unaugmented.
# A recipe gives a mode only the settings it reads.
RECIPES: dict[str, dict[str, Any]] = {
    "seed-custom": dict(model="custom-cnn", optimizer="adam", lr=1e-3, weight_decay=0.0,
                        schedule="constant", epochs=30, batch_size=64, augment=False,
                        patience=0),
    "seed-vgg16": dict(model="vgg16", optimizer="rmsprop", lr=1e-4, weight_decay=0.0,
                       schedule="constant", epochs=50, batch_size=64, augment=True,
                       patience=0, drop_connect=0.0),
}


def make_config(recipe: str | None = None, mode: str = "end-to-end",
                **options: Any) -> TrainConfig:
    """The mode's defaults, then the recipe's settings, then every option that is not None."""
    if mode not in MODES:
        raise PosterGenreError(f"--mode must be one of {', '.join(MODES)}, not {mode!r}")
    given = {k: v for k, v in options.items() if v is not None}
    unused = sorted(set(given) - MODE_OPTIONS[mode])
    if unused:
        flag = "--" + unused[0].replace("_", "-")
        raise PosterGenreError(f"{flag} does not apply to {mode} training")
    base: dict[str, Any] = dict(MODE_DEFAULTS[mode], mode=mode)
    if recipe is not None:
        if recipe not in RECIPES:
            raise PosterGenreError(f"unknown recipe {recipe!r}; choose one of: "
                                   f"{', '.join(RECIPES)}")
        if mode not in model_info(RECIPES[recipe]["model"]).modes:
            raise PosterGenreError(f"--recipe {recipe} trains end to end (or in another mode "
                                   f"its model supports), not in {mode} mode")
        base.update({k: v for k, v in RECIPES[recipe].items() if k in MODE_OPTIONS[mode]},
                    recipe=recipe)  # what the mode reads (no augmentation on a cached trunk)
    if mode == "finetune":  # the last 2 blocks, or as many as the model can train
        model = given.get("model", base.get("model", TrainConfig.model))
        base["trainable_blocks"] = min(TrainConfig.trainable_blocks,
                                       model_info(model).finetune_blocks)
    base.update(given)
    return TrainConfig.from_dict(base)
