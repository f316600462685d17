"""`vgg16`: the original transfer model.

The VGG16 convolutional base (torchvision's layout, so its ImageNet state dict loads as is),
frozen except block 5 (three 3x3 convs and the pool: the original's "last 4 layers"), then
Flatten -> Dense 1024 + ReLU -> Dropout 0.5 -> Dense G (logits). Input 200 x 150 as the
original; ImageNet mean/std normalisation happens inside the model.

ImageNet weights come from a local file (`backbone_weights`: a torchvision `vgg16` state dict,
.pth or .safetensors; keys `features.*` are used, the rest ignored). Nothing is downloaded:
without the file the base starts from random weights and `pretrained` is False.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from postergenre.errors import PosterGenreError
from postergenre.models.registry import register_model

INPUT_SIZE = (200, 150)  # (height, width)
# torchvision's "D" configuration: numbers are conv widths, "M" a 2x2 max pool.
CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
BLOCK5_START = 24  # index in `features` of block 5's first conv
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def make_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for v in CONFIG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, v, 3, padding=1), nn.ReLU(inplace=True)]
            channels = v
    return nn.Sequential(*layers)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a .pth/.pt file (loaded with weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise PosterGenreError(f"{path}: backbone weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch and safetensors raise many types for a bad file
        raise PosterGenreError(f"{path}: not a readable state dict ({e})") from None
    if not isinstance(state, dict):
        raise PosterGenreError(f"{path}: does not hold a state dict")
    return state


class VGG16(nn.Module):
    def __init__(self, num_genres: int, input_size: tuple[int, int] = INPUT_SIZE,
                 backbone_weights: str | Path | None = None, hidden: int = 1024,
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)
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
        if backbone_weights is not None:
            self.load_backbone(backbone_weights)
        for p in self.features[:BLOCK5_START].parameters():
            p.requires_grad_(False)

    def load_backbone(self, path: str | Path) -> None:
        """Load ImageNet conv weights from a torchvision-layout state dict file."""
        state = read_state_dict(path)
        features = {k.removeprefix("features."): v for k, v in state.items()
                    if k.startswith("features.")}
        expected = self.features.state_dict()
        bad = sorted(set(expected) ^ set(features)) or [
            k for k, v in features.items() if v.shape != expected[k].shape]
        if bad:
            raise PosterGenreError(
                f"{path}: not a torchvision vgg16 state dict (features.{bad[0]} does not match)")
        self.features.load_state_dict(features)
        self.pretrained = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features((x - self.mean) / self.std))

    def explain_layer(self) -> nn.Module:
        """conv5_3's ReLU (before the last pool): the map Grad-CAM explains (explain.py)."""
        return self.features[-2]


register_model("vgg16", input_size=INPUT_SIZE, min_input_size=(32, 32),
               normalization="ImageNet mean and std")(VGG16)
