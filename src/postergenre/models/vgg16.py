"""`vgg16`: the original transfer model.

The VGG16 convolutional base (torchvision's layout), frozen except block 5 (three 3x3 convs
and the pool: the original's "last 4 layers"), then Flatten -> Dense 1024 + ReLU ->
Dropout 0.5 -> Dense G (logits). Input 200 x 150 as the original, [0, 1] RGB like every model.

ImageNet weights come from a local file (`backbone_weights`): a torchvision `vgg16` state dict
(.pth or .safetensors), the Keras application's `..._notop.h5`, or an ONNX graph holding the
conv stack (see `vgg16_weights`). Nothing is downloaded: without the file the base starts
from random weights and `pretrained` is False.

The input normalisation (`normalization`) fits the weights' source unless given:
"torchvision" (ImageNet mean/std on [0, 1] RGB) or "caffe" (what the Keras/Oxford weights
expect: RGB -> BGR, x 255, minus 103.939, 116.779, 123.68); "none" feeds [0, 1] RGB as is,
which is what the original `5. Train-2.py` did with the Keras weights (it never called
`preprocess_input`). It lives in the model as
persistent buffers, so a run's weights file carries it, and `model.normalization` reads it
back.

On a CPU it trains in "finetune" mode: blocks 1-4 never change, so their output (after block
4's pool, 512 x 12 x 9 at 200 x 150) is cached once per poster, and block 5 and the head train
on it (`cut_for`, `trunk_features`, `tail_logits`; train/sources.py). `trunk_id` names the
frozen weights and the normalisation in the cache key. A run stores every tensor.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from postergenre.errors import PosterGenreError
from postergenre.models.registry import register_model, tensor_digest
from postergenre.models.vgg16_weights import load_vgg16_features

INPUT_SIZE = (200, 150)  # (height, width)
# torchvision's "D" configuration: numbers are conv widths, "M" a 2x2 max pool.
CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
BLOCK5_START = 24  # index in `features` of block 5's first conv
# Per normalisation: channel order taken from the RGB input, mean and std on the [0, 1] scale.
NORMALIZATION = {
    "torchvision": ((0, 1, 2), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "caffe": ((2, 1, 0), (103.939 / 255, 116.779 / 255, 123.68 / 255), (1 / 255,) * 3),
    "none": ((0, 1, 2), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # the original notebook's input
}
MEAN, STD = NORMALIZATION["torchvision"][1:]


def make_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for v in CONFIG:
        if isinstance(v, str):  # "M"
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, v, 3, padding=1), nn.ReLU(inplace=True)]
            channels = v
    return nn.Sequential(*layers)


class VGG16(nn.Module):
    norm_order: torch.Tensor
    norm_mean: torch.Tensor
    norm_std: torch.Tensor

    def __init__(self, num_genres: int, input_size: tuple[int, int] = INPUT_SIZE,
                 backbone_weights: str | Path | None = None, hidden: int = 1024,
                 dropout: float = 0.5, normalization: str | None = None) -> None:
        super().__init__()
        if normalization is not None and normalization not in NORMALIZATION:
            raise PosterGenreError(f"vgg16: normalization must be one of "
                                   f"{', '.join(NORMALIZATION)}, not {normalization!r}")
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.register_buffer("norm_order", torch.zeros(3, dtype=torch.long))
        self.register_buffer("norm_mean", torch.zeros(1, 3, 1, 1))
        self.register_buffer("norm_std", torch.ones(1, 3, 1, 1))
        self.set_normalization(normalization or "torchvision")
        self.features = make_features()
        h, w = self.input_size
        for _ in range(5):
            h, w = h // 2, w // 2
        if h < 1 or w < 1:
            raise ValueError(f"input size {self.input_size} is too small for vgg16 (at least 32)")
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(512 * h * w, hidden), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(hidden, num_genres),
        )
        self.pretrained = False
        self.weights_source: str | None = None
        if backbone_weights is not None:
            fitting = self.load_backbone(backbone_weights)
            self.set_normalization(normalization or fitting)
        for p in self.features[:BLOCK5_START].parameters():
            p.requires_grad_(False)

    def load_backbone(self, path: str | Path) -> str:
        """Load ImageNet conv weights from a file in any supported format (converted once and
        cached); return the normalisation that fits them."""
        state, normalization, source = load_vgg16_features(path)
        self.features.load_state_dict(state)
        self.pretrained, self.weights_source = True, source
        return normalization

    def set_normalization(self, name: str) -> None:
        order, mean, std = NORMALIZATION[name]
        self.norm_order.copy_(torch.tensor(order))
        self.norm_mean.copy_(torch.tensor(mean).view(1, 3, 1, 1))
        self.norm_std.copy_(torch.tensor(std).view(1, 3, 1, 1))

    @property
    def normalization(self) -> str:
        """The normalisation in use, read from the buffers (so also after loading a run)."""
        for name, (order, mean, std) in NORMALIZATION.items():
            if (self.norm_order.tolist() == list(order)
                    and torch.allclose(self.norm_mean.flatten().cpu(), torch.tensor(mean))
                    and torch.allclose(self.norm_std.flatten().cpu(), torch.tensor(std))):
                return name
        return "custom"

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x.index_select(1, self.norm_order) - self.norm_mean) / self.norm_std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalize(x)))

    def cut_for(self, blocks: int) -> int:
        """The cached trunk ends after block 4's pool: block 5 trains, as in the original."""
        if blocks != 1:
            raise PosterGenreError(f"vgg16 trains block 5 on its cached trunk: --trainable-blocks "
                                   f"must be 1, not {blocks}")
        return BLOCK5_START

    def trunk_features(self, x: torch.Tensor, cut: int) -> torch.Tensor:
        """The normalised input through blocks 1-4, flattened: one row per poster."""
        return self.features[:cut](self.normalize(x)).flatten(1)

    def tail_logits(self, rows: torch.Tensor, cut: int, drop_connect: float = 0.0
                    ) -> torch.Tensor:
        """Logits from `trunk_features` rows: block 5 and the head (no drop-connect here: the
        registry says so, and a nonzero `drop_connect` is refused before training)."""
        h, w = self.input_size
        return self.classifier(self.features[cut:](rows.unflatten(1, (512, h // 16, w // 16))))

    def trunk_id(self, cut: int) -> str:
        """What the cached trunk depends on: the normalisation and the frozen weights' digest."""
        tensors = [self.norm_order, self.norm_mean, self.norm_std,
                   *self.features[:cut].state_dict().values()]
        return f"{self.normalization}-{tensor_digest(tensors)}"

    def trained_keys(self) -> list[str]:
        """State-dict keys a run stores: all (the frozen blocks' file is not part of the run)."""
        return list(self.state_dict())

    def explain_layer(self) -> nn.Module:
        """conv5_3's ReLU (before the last pool): the map Grad-CAM explains (explain.py)."""
        return self.features[-2]


register_model("vgg16", input_size=INPUT_SIZE, min_input_size=(32, 32),
               normalization="ImageNet mean and std", modes=("end-to-end", "finetune"),
               cpu_mode="finetune", finetune_blocks=1, finetune_needs_init=False,
               finetune_mirrors=False, finetune_drop_connect=False)(VGG16)
