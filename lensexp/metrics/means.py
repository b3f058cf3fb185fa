"""A running mean for training scalars, cheap enough to update on every step."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class WeightedMean(Metric):
    """The mean of a scalar over the updates since the last reset, each weighted (by its batch
    size); summed over processes under DDP.

    Two in-place additions an update. Unlike torchmetrics' `MeanMetric` it does not check the
    value for NaN, a check that waits for the GPU on every step; a NaN value makes the mean NaN,
    which train.py reports as a diverged run at the epoch's end.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        # float32, not float64: Apple's MPS has no float64.
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("weight", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, value: Tensor, weight: float = 1.0) -> None:
        self.total += value.detach().to(self.total.dtype) * weight
        self.weight += weight

    def compute(self) -> Tensor:
        return self.total / self.weight
