"""Multi-label losses on logits: BCE (optionally with per-genre positive weights) and the
Asymmetric Loss of Ridnik et al. 2021 (https://arxiv.org/abs/2009.14119).

    loss = make_loss("asl", pos_weight=positive_weights(train_labels))
    loss(logits, targets)  # a scalar: the mean over samples and genres
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from postergenre.errors import PosterGenreError
from postergenre.train.recipes import LOSSES, TrainConfig


def positive_weights(labels: np.ndarray, power: float = 1.0,
                     max_weight: float = TrainConfig.pos_weight_max) -> torch.Tensor:
    """Per-genre weight of positive terms: (negatives / positives) ** power, clipped to
    [1, max_weight]. A genre without positives gets max_weight (it never counts anyway)."""
    labels = np.asarray(labels, dtype=np.float64)
    pos = labels.sum(axis=0)
    neg = len(labels) - pos
    ratio = np.where(pos > 0, neg / np.maximum(pos, 1.0), np.inf) ** power
    return torch.tensor(np.clip(ratio, 1.0, max_weight), dtype=torch.float32)


class AsymmetricLoss(nn.Module):
    """ASL: focusing exponents gamma_neg > gamma_pos down-weight easy negatives, and negatives
    whose probability is below `clip` are ignored (probability shifting)."""

    pos_weight: torch.Tensor | None

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05,
                 pos_weight: torch.Tensor | None = None, eps: float = 1e-8) -> None:
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = gamma_neg, gamma_pos, clip, eps
        self.register_buffer("pos_weight", pos_weight, persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(logits.float())
        p_neg = (p - self.clip).clamp(min=0) if self.clip > 0 else p  # shifted probability
        loss_pos = targets * (1 - p).pow(self.gamma_pos) * torch.log(p.clamp(min=self.eps))
        if self.pos_weight is not None:
            loss_pos = loss_pos * self.pos_weight
        loss_neg = (1 - targets) * p_neg.pow(self.gamma_neg) * torch.log(
            (1 - p_neg).clamp(min=self.eps))
        return -(loss_pos + loss_neg).mean()


class BCELoss(nn.Module):
    """BCE with logits, positive terms weighted per genre when `pos_weight` is given."""

    pos_weight: torch.Tensor | None

    def __init__(self, pos_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("pos_weight", pos_weight, persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), targets.float(),
                                                  pos_weight=self.pos_weight)


def make_loss(name: str = "bce", pos_weight: torch.Tensor | None = None, **kwargs) -> nn.Module:
    """`name` is "bce" or "asl"; kwargs go to the loss (ASL: gamma_neg, gamma_pos, clip)."""
    if name == "bce":
        return BCELoss(pos_weight, **kwargs)
    if name == "asl":
        return AsymmetricLoss(pos_weight=pos_weight, **kwargs)
    raise PosterGenreError(f"loss must be one of {', '.join(LOSSES)}, not {name!r}")
