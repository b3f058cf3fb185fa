"""The classification loss that the `loss` config group instantiates."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from lensexp.errors import LensexpError


class CrossEntropyLoss(nn.Module):
    """Cross-entropy on logits, with optional label smoothing; `forward(logits, target)`."""

    task = "classification"

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise LensexpError(f"loss.label_smoothing={label_smoothing}: must lie in [0, 1).")
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)
