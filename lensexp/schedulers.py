"""Learning-rate schedules that torch does not offer as one class, for the `scheduler` group."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR

from lensexp.checks import check_int
from lensexp.errors import LensexpError


def warmup_cosine(
    optimizer: Optimizer,
    max_epochs: int,
    warmup_epochs: int = 2,
    start_factor: float = 0.1,
    eta_min: float = 0.0,
) -> LRScheduler:
    """Linear warm-up from `start_factor` x lr to lr over `warmup_epochs`, then cosine
    annealing to `eta_min` at `max_epochs` (stepped once per epoch)."""
    check_int("scheduler.scheduler.warmup_epochs", warmup_epochs, 1)
    if max_epochs <= warmup_epochs:
        raise LensexpError(
            f"scheduler.scheduler.warmup_epochs={warmup_epochs}: must be fewer than "
            f"trainer.max_epochs={max_epochs}."
        )
    if not 0.0 < float(start_factor) <= 1.0:
        raise LensexpError(f"scheduler.scheduler.start_factor={start_factor}: must be in (0, 1].")
    warmup = LinearLR(optimizer, start_factor=start_factor, total_iters=warmup_epochs)
    cosine = CosineAnnealingLR(optimizer, T_max=max_epochs - warmup_epochs, eta_min=eta_min)
    return SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_epochs])
