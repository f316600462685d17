"""The original project's augmentation, on batched tensors (CPU or GPU, no torchvision).

Keras `ImageDataGenerator(rotation_range=20, width_shift_range=0.2, height_shift_range=0.2,
shear_range=0.15, zoom_range=0.15, horizontal_flip=True, fill_mode="nearest")`: each poster
gets its own random affine map, applied with `affine_grid` + `grid_sample` (border pixels
repeat outside the image, as "nearest" fill does). The shear is an angle in radians, as in
the Keras versions of the time.

Parameters are drawn per position of the epoch's sample order from a seeded generator, so a
run is reproducible and DDP ranks augment exactly what one process would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    rotation: float = 20.0  # degrees, uniform in [-rotation, rotation]
    shift: float = 0.2  # fraction of width / height
    shear: float = 0.15  # radians
    zoom: float = 0.15  # each axis scaled by a factor in [1 - zoom, 1 + zoom]
    flip: bool = True  # horizontal flip with probability 1/2


ORIGINAL = AugmentConfig()


def random_affine(n: int, size: tuple[int, int], generator: torch.Generator | None = None,
                  config: AugmentConfig = ORIGINAL) -> torch.Tensor:
    """(n, 2, 3) `affine_grid` matrices (output -> input coordinates) for images of `size`."""
    def uniform(limit: float) -> torch.Tensor:
        return (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * limit

    angle = uniform(math.radians(config.rotation))
    shear = uniform(config.shear)
    zx, zy = 1 + uniform(config.zoom), 1 + uniform(config.zoom)
    tx, ty = uniform(config.shift) * 2, uniform(config.shift) * 2  # in [-1, 1] coordinates
    flip = torch.ones(n, dtype=torch.float64)
    if config.flip:
        flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0).double()
    cos, sin = torch.cos(angle), torch.sin(angle)
    # In pixel units (x right, y down): M = rotation @ shear @ zoom @ flip.
    a = torch.zeros(n, 2, 2, dtype=torch.float64)
    a[:, 0, 0] = cos * zx * flip
    a[:, 0, 1] = (-sin - cos * torch.tan(shear)) * zy
    a[:, 1, 0] = sin * zx * flip
    a[:, 1, 1] = (cos - sin * torch.tan(shear)) * zy
    h, w = size
    # affine_grid works in [-1, 1] per axis: conjugate by the aspect so rotations stay rigid.
    d = torch.tensor([w / 2, h / 2], dtype=torch.float64)
    a = a / d.view(1, 2, 1) * d.view(1, 1, 2)
    theta = torch.cat([a, torch.stack([tx, ty], dim=1).unsqueeze(2)], dim=2)
    return theta.float()


def apply_affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Warp a batch (N, C, H, W) with per-image matrices (N, 2, 3)."""
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
