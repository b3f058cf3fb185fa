"""Regression metrics (the axion-mass regression, in log10(mass / eV)).

Definitions, over N images with prediction p_i and target t_i:

- `mae` = mean |p_i - t_i|; `rmse` = sqrt(mean (p_i - t_i)^2);
- `r2` = 1 - sum (p_i - t_i)^2 / sum (t_i - mean t)^2, the coefficient of determination
  (NaN when the targets do not vary).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from lensexp.metrics.bootstrap import N_RESAMPLES, SEED, bootstrap_ci, resampled_mean

STATES = ("n", "abs_error", "sq_error", "sum_target", "sum_target_sq")


class RegressionMetrics(Metric):
    """MAE, RMSE and R^2 from running sums (synced across devices); `update(pred, target)`."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in STATES:
            self.add_state(name, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, prediction: Tensor, target: Tensor) -> None:
        """Add a batch of predictions and targets (any shape, the same number of elements)."""
        p, t = prediction.detach().double().reshape(-1), target.detach().double().reshape(-1)
        error = p - t
        self.n += t.numel()
        self.abs_error += error.abs().sum()
        self.sq_error += (error**2).sum()
        self.sum_target += t.sum()
        self.sum_target_sq += (t**2).sum()

    def compute(self) -> dict[str, Tensor]:
        n = self.n.clamp(min=1.0)
        mean = self.sum_target / n
        # Sum of squares about the mean; float64 keeps it exact enough for log10 masses (~-23).
        spread = self.sum_target_sq - n * mean**2
        nan = torch.tensor(math.nan, dtype=torch.float64, device=n.device)
        r2 = torch.where(spread > 1e-12 * n, 1.0 - self.sq_error / spread, nan)
        return {
            "mae": self.abs_error / n,
            "rmse": torch.sqrt(self.sq_error / n),
            "r2": r2,
        }


def regression_summary(
    prediction: Any,
    target: Any,
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> dict[str, Any]:
    """`{"mae", "rmse", "r2", "n", "ci95": {"mae", "rmse": [lo, hi]}}` in plain Python types:
    the `RegressionMetrics` values, with 95% percentile-bootstrap intervals over images."""
    p = torch.as_tensor(prediction).double().reshape(-1)
    t = torch.as_tensor(target).double().reshape(-1)
    if p.numel() != t.numel() or t.numel() == 0:
        raise ValueError(f"regression_summary: {p.numel()} predictions, {t.numel()} targets")
    metrics = RegressionMetrics()
    metrics.update(p, t)
    values = {k: float(v) for k, v in metrics.compute().items()}
    error = p - t

    def statistic(weights: Tensor) -> dict[str, Tensor]:
        return {
            "mae": resampled_mean(error.abs(), weights),
            "rmse": torch.sqrt(resampled_mean(error**2, weights)),
        }

    values["n"] = int(t.numel())
    values["ci95"] = bootstrap_ci(statistic, t.numel(), n_resamples=n_resamples, seed=seed)
    return values
