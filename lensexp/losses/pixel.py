"""Pixel loss (MSE or L1) that carries its own weight, BasicSR style."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from lensexp.checks import check_choice

CRITERIA = ("mse", "l1")


def check_criterion(criterion: str, option: str) -> str:
    """Return `criterion` if it is mse|l1, else raise a LensexpError naming `option`."""
    return check_choice(option, criterion, CRITERIA)


def distance(a: Tensor, b: Tensor, criterion: str) -> Tensor:
    """Mean squared (`mse`) or absolute (`l1`) difference over all elements."""
    return F.mse_loss(a, b) if criterion == "mse" else F.l1_loss(a, b)


class PixelLoss(nn.Module):
    """`weight` x mean MSE or L1 between the SR output and the HR target."""

    def __init__(self, criterion: str = "mse", weight: float = 1.0) -> None:
        super().__init__()
        self.criterion = check_criterion(criterion, "loss.pixel.criterion")
        self.weight = float(weight)

    def forward(self, sr: Tensor, hr: Tensor) -> Tensor:
        return self.weight * distance(sr, hr, self.criterion)

    def extra_repr(self) -> str:
        return f"criterion={self.criterion}, weight={self.weight}"
