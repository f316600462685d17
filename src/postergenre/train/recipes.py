"""Training settings (`TrainConfig`), the three training modes' defaults, and named recipes.

A model trains in one of three modes (the model's registry entry says which it supports):

  end-to-end  every poster through the whole network each epoch (augmentation, DDP, CUDA);
  features    a head on cached frozen-backbone features: the fast CPU path;
  finetune    the last blocks and the head of a `features` run (`init`), on a cached trunk
              (vgg16: block 5 and its head, from its backbone weights, no `init`).

`make_config(recipe, mode, **options)` starts from the mode's defaults (the model's default
mode when none is given), applies the recipe (`--recipe seed-custom` / `seed-vgg16`: the
original project's), then every option given. This module holds every training default; the
CLI reads them (`describe_default` writes its help). An option that the mode or the model
does not use is an error naming both, never silently ignored: `make_config`, `TrainConfig`
and `check_config` (run by `fit`) refuse alike. It imports no torch until an optimizer is made.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from postergenre.errors import PosterGenreError

if TYPE_CHECKING:
    import torch
    from torch import nn

if TYPE_CHECKING:
    import torch
    from torch import nn

MODES = ("end-to-end", "features", "finetune")
OPTIMIZERS = ("adamw", "adam", "rmsprop", "sgd")
SCHEDULES = ("cosine", "constant", "onecycle")
LOSSES = ("bce", "asl")
PRECISIONS = ("auto", "fp32", "bf16")
DECODE_WORKERS = 2  # threads decoding posters for end-to-end training (`fit(workers=)`)


@dataclass
class TrainConfig:
    """A run's training settings. A setting that `mode` does not read (`MODE_OPTIONS`) must
    keep its default here, and `check_config` refuses one the model cannot honour."""

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
    drop_connect: float = 0.0  # finetune: drop-connect rate at the last block
    backbone_weights: str | None = None  # a local file of ImageNet weights (vgg16)
    recipe: str | None = None
    titles: bool = True  # then the title model and its fusion (when the dataset has titles)

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
        for f in fields(self):
            if f.name not in MODE_OPTIONS[self.mode] and getattr(self, f.name) != _default(f):
                raise PosterGenreError(f"--{f.name.replace('_', '-')} does not apply to "
                                       f"{self.mode} training; drop the option")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """A stored run's settings; those its mode does not read are not part of it."""
        mode = d.get("mode", cls.mode)
        read = MODE_OPTIONS.get(mode, set(d))
        return cls(**{k: v for k, v in d.items() if k in read})


def _default(f: Any) -> Any:
    return f.default_factory() if f.default is MISSING else f.default


# What each mode starts from (beyond TrainConfig's defaults, end-to-end's); a recipe or an
# option replaces any of these.
MODE_DEFAULTS: dict[str, dict[str, Any]] = {
    "end-to-end": {},
    "features": dict(epochs=100, batch_size=256, lr=3e-4, weight_decay=0.1,
                     schedule="constant", patience=8),
    "finetune": dict(epochs=8, batch_size=64, lr=1e-4, weight_decay=0.05,
                     schedule="onecycle", patience=0, drop_connect=0.2),
}
# The model settings (model_kwargs) a features run gets unless told otherwise: the shipped
# model's first stage.
FEATURES_HEAD: dict[str, Any] = {"pool": "multi", "head": "mlp", "hidden": 256, "dropout": 0.6}
_COMMON = {"model", "model_kwargs", "mode", "epochs", "batch_size", "optimizer", "lr",
           "weight_decay", "schedule", "loss", "pos_weight", "pos_weight_max", "resample",
           "patience", "seed", "recipe", "titles"}
# The settings each mode reads: giving another one is an error.
MODE_OPTIONS: dict[str, set[str]] = {
    "end-to-end": _COMMON | {"augment", "backbone_weights", "precision"},
    "features": _COMMON | {"flip"},
    "finetune": _COMMON | {"init", "trainable_blocks", "drop_connect", "backbone_weights"},
}


def mode_default(mode: str, name: str) -> Any:
    """The default of setting `name` in `mode` (before a recipe or the model adjusts it)."""
    if name in MODE_DEFAULTS[mode]:
        return MODE_DEFAULTS[mode][name]
    return _default(next(f for f in fields(TrainConfig) if f.name == name))


def describe_default(name: str) -> str:
    """The defaults of setting `name` in words, for the CLI's help: "default 0", or each
    mode's ("end-to-end 30, features 100, finetune 8"), then each recipe's that differs from
    end-to-end's (the originals trained end to end)."""
    def text(value: Any) -> str:
        return "on" if value is True else "off" if value is False else str(value)

    modes = {m: mode_default(m, name) for m in MODES if name in MODE_OPTIONS[m]}
    values = set(map(text, modes.values()))
    parts = ([f"default {next(iter(values))}"] if len(values) == 1 else
             ["default: " + ", ".join(f"{m} {text(v)}" for m, v in modes.items())])
    recipes = [f"{r} {text(settings[name])}" for r, settings in RECIPES.items()  # end to end
               if name in settings and settings[name] != mode_default("end-to-end", name)]
    if recipes:
        parts.append("recipes: " + ", ".join(recipes))
    return "; ".join(parts)


def make_optimizer(params: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """The named optimizer; Keras's epsilon (and RMSprop's rho) where the originals used Keras."""
    import torch

    lr, wd = config.lr, config.weight_decay
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, fused=True)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, eps=1e-7, weight_decay=wd, fused=True)
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=0.9, eps=1e-7, weight_decay=wd)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=wd)


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


def default_mode(model: str, device: str | None = None) -> str:
    """The mode `model` trains in when none is given: its registry's CPU or CUDA mode, CUDA
    when `device` names it, or (no device) when CUDA is available."""
    from postergenre.models import model_info

    if device is None:
        import torch

        cuda = torch.cuda.is_available()
    else:
        cuda = device.startswith("cuda")
    return model_info(model).default_mode(cuda)


def check_config(config: TrainConfig) -> None:
    """Refuse a setting the model cannot honour (one line naming both); `fit` runs it."""
    from postergenre.models import model_info

    info = model_info(config.model)
    if config.mode not in info.modes:
        raise PosterGenreError(f"--mode {config.mode}: {config.model} cannot train in "
                               f"{config.mode} mode; it supports: {', '.join(info.modes)}")
    if config.mode == "finetune" and config.drop_connect and not info.finetune_drop_connect:
        raise PosterGenreError(f"--drop-connect: {config.model} has no drop-connect; "
                               "drop the option")


def make_config(recipe: str | None = None, mode: str | None = None, *,
                device: str | None = None, **options: Any) -> TrainConfig:
    """The mode's defaults, then the recipe's settings, then every option that is not None.

    The model is `model`, else the recipe's, else the `init` run's, else TrainConfig's; the
    mode is `mode`, else finetune with `init`, else the model's default on `device`
    (`default_mode`). `trainable_blocks` is a finetune setting, and in end-to-end mode a
    model setting (efficientnet: how many of the last blocks train).
    """
    from postergenre.models import model_info

    if recipe is not None and recipe not in RECIPES:
        raise PosterGenreError(f"unknown recipe {recipe!r}; choose one of: "
                               f"{', '.join(RECIPES)}")
    given = {k: v for k, v in options.items() if v is not None}
    model = given.get("model") or (RECIPES[recipe]["model"] if recipe else None)
    if model is None and given.get("init") is not None:
        from postergenre.run import load_run

        model = load_run(given["init"]).model_name
    given["model"] = model = model or TrainConfig.model
    if mode is None:
        mode = "finetune" if given.get("init") is not None else default_mode(model, device)
    if mode not in MODES:
        raise PosterGenreError(f"--mode must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "end-to-end" and "trainable_blocks" in given:
        given["model_kwargs"] = {**given.get("model_kwargs", {}),
                                 "trainable_blocks": given.pop("trainable_blocks")}
    unused = sorted(set(given) - MODE_OPTIONS[mode])
    if unused:
        flag = "--" + unused[0].replace("_", "-")
        raise PosterGenreError(f"{flag} does not apply to {mode} training; drop the option")
    base: dict[str, Any] = dict(MODE_DEFAULTS[mode], mode=mode)
    info = model_info(model)
    if recipe is not None:
        if mode not in model_info(RECIPES[recipe]["model"]).modes:
            raise PosterGenreError(f"--recipe {recipe} trains end to end (or in another mode "
                                   f"its model supports), not in {mode} mode")
        base.update({k: v for k, v in RECIPES[recipe].items() if k in MODE_OPTIONS[mode]},
                    recipe=recipe)  # what the mode reads (no augmentation on a cached trunk)
    if mode == "finetune":  # the last 2 blocks, or as many as the model can train
        base["trainable_blocks"] = min(mode_default(mode, "trainable_blocks"),
                                       info.finetune_blocks)
        if not info.finetune_drop_connect:
            base["drop_connect"] = 0.0
    base.update(given)
    config = TrainConfig(**base)
    check_config(config)
    return config
