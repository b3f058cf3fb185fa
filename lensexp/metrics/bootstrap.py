"""Percentile bootstrap confidence intervals over images, shared by the evaluation reports.

A resample draws n images with replacement from the n evaluated ones. Rather than copying the
data, each resample is a row of weights: how many times each image was drawn. Every statistic
is written as a function of those weights (a weighted mean, a weighted ROC AUC), so a batch of
resamples is a handful of tensor operations and 1,000 resamples of a few thousand images take
a fraction of a second.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

N_RESAMPLES = 1000
SEED = 0
LEVEL = 0.95
# Resamples per batch: bounds memory (CHUNK x n float64 weights, more for the micro AUC's
# n x classes pairs) on large splits. Fixed, so the intervals depend only on (seed, n_resamples).
CHUNK = 200

# (B, n) resample weights -> {name: (B,) values}; NaN marks a resample where a value is undefined.
Statistic = Callable[[Tensor], Mapping[str, Tensor]]


def bootstrap_ci(
    statistic: Statistic,
    n: int,
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> dict[str, list[float]]:
    """Percentile bootstrap intervals `{name: [lo, hi]}` of the values `statistic` returns.

    Each of `n_resamples` resamples draws `n` indices uniformly with replacement (a torch
    generator seeded with `seed`, so the same call gives the same intervals) and hands
    `statistic` their counts as a (B, n) float64 weight tensor. Every named value is computed
    on the same resamples, so differences (model minus baseline) are paired. A NaN value means
    the statistic is undefined on that resample (e.g. the ROC AUC of a class none of whose
    images was drawn): that resample is skipped for that statistic only, and its interval is
    taken over the remaining resamples ([nan, nan] when none remain). `lo` and `hi` are the
    (1 - level) / 2 and (1 + level) / 2 quantiles (linear interpolation) of the kept values.
    """
    if n < 1 or n_resamples < 1 or not 0.0 < level < 1.0:
        raise ValueError(
            f"bootstrap_ci: need n >= 1, n_resamples >= 1, 0 < level < 1; got {n}, "
            f"{n_resamples}, {level}"
        )
    generator = torch.Generator().manual_seed(int(seed))
    chunks: dict[str, list[Tensor]] = {}
    for start in range(0, n_resamples, CHUNK):
        b = min(CHUNK, n_resamples - start)
        drawn = torch.randint(n, (b, n), generator=generator)
        weights = torch.zeros(b, n, dtype=torch.float64).scatter_add_(
            1, drawn, torch.ones(b, n, dtype=torch.float64)
        )
        for name, values in statistic(weights).items():
            chunks.setdefault(name, []).append(values.detach().double().reshape(b))
    quantiles = [(1.0 - level) / 2.0, (1.0 + level) / 2.0]
    intervals: dict[str, list[float]] = {}
    for name, parts in chunks.items():
        values = torch.cat(parts).numpy()
        kept = values[~np.isnan(values)]
        intervals[name] = (
            [float(q) for q in np.quantile(kept, quantiles)] if kept.size else [math.nan] * 2
        )
    return intervals


def resampled_mean(values: Tensor, weights: Tensor) -> Tensor:
    """The mean of per-image `values` (n,) in each resample of (B, n) `weights`: (B,)."""
    return weights @ values.double() / weights.sum(dim=1)


def resampled_auc(
    scores: Tensor, positive: Tensor, images: Tensor | None = None
) -> Callable[[Tensor], Tensor]:
    """The ROC AUC of `scores` (m,) against boolean labels `positive` (m,), as a function of
    (B, n) resample weights returning (B,) values, NaN where a resample holds no positive or no
    negative. Item k belongs to image `images[k]` (default: item k is image k), so the pooled
    (image, class) pairs of a micro AUC are drawn with their image.

    The AUC is the Mann-Whitney statistic, ties counted as half a correctly ordered pair, as
    `lensexp.metrics.classification` defines it (equal to its value for unit weights); each pair
    (positive i, negative j) counts w_i * w_j. Sorting happens once, here: a resample then costs a
    cumulative sum of the negatives' weights in score order, read at each positive's score.
    """
    scores = scores.reshape(-1)
    positive = positive.reshape(-1).bool()
    images = torch.arange(scores.numel()) if images is None else images.reshape(-1)
    neg_scores, order = scores[~positive].sort()
    neg_images = images[~positive][order]
    pos_images = images[positive]
    pos_scores = scores[positive].contiguous()
    # Negatives strictly below, and at or below, each positive's score: ties between the two.
    below = torch.searchsorted(neg_scores, pos_scores, right=False)
    at_most = torch.searchsorted(neg_scores, pos_scores, right=True)

    def auc(weights: Tensor) -> Tensor:
        weights = weights.double()
        # cumulative[:, k]: the resample's weight of the k lowest-scored negatives.
        cumulative = F.pad(weights.index_select(1, neg_images).cumsum(dim=1), (1, 0))
        pos_weights = weights.index_select(1, pos_images)
        rank = cumulative.index_select(1, below) + cumulative.index_select(1, at_most)
        ordered = 0.5 * (pos_weights * rank).sum(dim=1)
        pairs = pos_weights.sum(dim=1) * cumulative[:, -1]
        return torch.where(pairs > 0, ordered / pairs, math.nan)

    return auc
