"""The regression loss that the `loss` config group instantiates (`loss=regression`)."""

from __future__ import annotations

from torch import Tensor, nn

from lensexp.losses.pixel import check_criterion, distance


class RegressionLoss(nn.Module):
    """Mean squared (`mse`) or absolute (`l1`) error of predictions against targets."""

    task = "regression"

    def __init__(self, criterion: str = "mse") -> None:
        super().__init__()
        self.criterion = check_criterion(criterion, "loss.criterion")

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        return distance(prediction, target, self.criterion)

    def extra_repr(self) -> str:
        return f"criterion={self.criterion}"
