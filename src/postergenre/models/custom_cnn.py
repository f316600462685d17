"""`custom-cnn`: the original project's small Keras CNN, layer for layer.

    input 200 x 150 x 3
    4 x [Conv 5x5 'valid' (16, 32, 64, 64 filters) + ReLU -> MaxPool 2 -> Dropout 0.25]
    Flatten -> Dense 128 + ReLU -> Dropout 0.5 -> Dense 64 + ReLU -> Dropout 0.5 -> Dense G

Outputs are logits (sigmoid at inference). The original fed pixels scaled to [0, 1], which is
already this model's input, so there is no further normalisation. Weights start as Keras's
do (Glorot-uniform kernels, zero biases).
"""

from __future__ import annotations

import torch
from torch import nn

from postergenre.models.registry import register_model

INPUT_SIZE = (200, 150)  # (height, width)
FILTERS = (16, 32, 64, 64)


class Dropout(nn.Dropout):
    """`nn.Dropout` whose mask is made of random bytes, eight from each 64-bit draw: the same
    distribution when 256 p is a whole number (the 0.25 and 0.5 here), and several times
    cheaper on a CPU than `bernoulli_` (docs/benchmarks.md). Any other p, a tensor off
    the CPU or `inplace` goes through `nn.Dropout`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cut = self.p * 256
        dense = x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)
        if not self.training or self.inplace or x.device.type != "cpu" or cut != int(cut) \
                or not dense:
            return super().forward(x)
        n = x.numel()
        words = torch.empty((n + 7) // 8, dtype=torch.int64).random_(-(2**63), None)
        noise = torch.as_strided(words.view(torch.uint8), x.shape, x.stride())  # x's layout
        scale = (noise >= int(cut)).to(x.dtype).mul_(1.0 / (1.0 - self.p))
        return x * scale


class CustomCNN(nn.Module):
    def __init__(self, num_genres: int, input_size: tuple[int, int] = INPUT_SIZE,
                 conv_dropout: float = 0.25, dense_dropout: float = 0.5) -> None:
        super().__init__()
        self.input_size = (int(input_size[0]), int(input_size[1]))
        layers: list[nn.Module] = []
        channels, (h, w) = 3, self.input_size
        for filters in FILTERS:
            # ReLU after the pool: the same function as before it, on a quarter of the values
            layers += [nn.Conv2d(channels, filters, 5), nn.MaxPool2d(2), nn.ReLU(inplace=True),
                       Dropout(conv_dropout)]
            channels, h, w = filters, (h - 4) // 2, (w - 4) // 2
        if h < 1 or w < 1:
            raise ValueError(f"input size {self.input_size} is too small for custom-cnn "
                             "(at least 76 x 76)")
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * h * w, 128), nn.ReLU(inplace=True), Dropout(dense_dropout),
            nn.Linear(128, 64), nn.ReLU(inplace=True), Dropout(dense_dropout),
            nn.Linear(64, num_genres),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def explain_layer(self) -> nn.Module:
        """The last conv (17 x 11 at 200 x 150): the map Grad-CAM explains (explain.py)."""
        return self.features[-4]


register_model("custom-cnn", input_size=INPUT_SIZE, min_input_size=(76, 76),
               normalization="none: pixels in [0, 1], as the original")(CustomCNN)
