"""Bootstrap confidence intervals (lensexp.metrics.bootstrap) and the weighted ROC AUC."""

from __future__ import annotations

import math

import pytest
import torch

from lensexp.metrics.bootstrap import bootstrap_ci, resampled_auc, resampled_mean
from lensexp.metrics.classification import classification_summary


def normal(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def mean_interval(values: torch.Tensor, **kwargs) -> list[float]:
    found = bootstrap_ci(lambda w: {"mean": resampled_mean(values, w)}, len(values), **kwargs)
    return found["mean"]


def test_interval_contains_the_estimate_and_shrinks_with_more_data():
    small, large = normal(100) + 5.0, normal(2000, seed=1) + 5.0
    lo, hi = mean_interval(small)
    assert lo < float(small.mean()) < hi
    lo_large, hi_large = mean_interval(large)
    assert lo_large < float(large.mean()) < hi_large
    # The width of a mean's interval goes as 1/sqrt(n): sqrt(2000/100) = 4.5 times narrower.
    assert 3.0 < (hi - lo) / (hi_large - lo_large) < 6.5
    # About 2 x 1.96 standard errors of the mean (std 1).
    assert hi_large - lo_large == pytest.approx(2 * 1.96 / math.sqrt(2000), rel=0.15)


def test_same_seed_same_interval():
    values = normal(300)
    assert mean_interval(values, seed=3) == mean_interval(values, seed=3)
    assert mean_interval(values, seed=3) != mean_interval(values, seed=4)
    assert mean_interval(values) == mean_interval(values, seed=0, n_resamples=1000)


def test_paired_statistics_share_resamples():
    model, baseline = normal(200) + 1.0, normal(200, seed=1)

    def statistic(w: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "model": resampled_mean(model, w),
            "gain": resampled_mean(model - baseline, w),
            "difference": resampled_mean(model, w) - resampled_mean(baseline, w),
        }

    found = bootstrap_ci(statistic, 200)
    assert found["gain"] == pytest.approx(found["difference"], abs=1e-12)


def test_undefined_resamples_are_skipped():
    # One positive among 20: about (19/20)^20 = 36% of resamples hold none; AUC undefined there.
    scores = torch.linspace(0, 1, 20, dtype=torch.float64)
    positive = torch.zeros(20, dtype=torch.bool)
    positive[-1] = True
    auc = resampled_auc(scores, positive)
    seen: list[torch.Tensor] = []

    def statistic(w: torch.Tensor) -> dict[str, torch.Tensor]:
        seen.append(auc(w))
        return {"auc": seen[-1], "never": torch.full((len(w),), math.nan)}

    found = bootstrap_ci(statistic, 20, n_resamples=500)
    undefined = torch.cat(seen).isnan().float().mean()
    assert 0.2 < undefined < 0.5
    assert found["auc"] == [1.0, 1.0]  # the one positive outranks every negative
    assert all(math.isnan(v) for v in found["never"])


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_resamples >= 1"):
        bootstrap_ci(lambda w: {}, 0)
    with pytest.raises(ValueError, match="0 < level < 1"):
        bootstrap_ci(lambda w: {}, 5, level=95)


def test_resampled_auc_with_unit_weights_is_the_reported_auc():
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (200,), generator=gen)
    probs = (torch.randn(200, 3, generator=gen) + torch.eye(3)[target]).softmax(dim=1)
    probs = (probs * 10).round() / 10  # many tied scores
    probs = probs / probs.sum(dim=1, keepdim=True)
    summary = classification_summary(probs, target, ["a", "b", "c"])
    one_hot = torch.eye(3, dtype=torch.bool)[target]
    ones = torch.ones(1, 200, dtype=torch.float64)
    for k, name in enumerate("abc"):
        auc = resampled_auc(probs[:, k].double(), one_hot[:, k])(ones)
        assert auc.item() == pytest.approx(summary["auc_per_class"][name], abs=1e-6)
    pair_images = torch.arange(200).repeat_interleave(3)
    micro = resampled_auc(probs.reshape(-1).double(), one_hot.reshape(-1), pair_images)(ones)
    assert micro.item() == pytest.approx(summary["auc_micro"], abs=1e-6)


def test_resampled_auc_weights_count_repeated_images():
    # Weight 2 on an image is the same as listing it twice.
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.4, 0.2], dtype=torch.float64)
    positive = torch.tensor([False, True, False, True, False, True])
    weights = torch.tensor([[2.0, 1.0, 0.0, 3.0, 1.0, 1.0]], dtype=torch.float64)
    drawn = torch.tensor([0, 0, 1, 3, 3, 3, 4, 5])
    repeated = resampled_auc(scores[drawn], positive[drawn])(torch.ones(1, len(drawn)))
    assert resampled_auc(scores, positive)(weights).item() == pytest.approx(repeated.item())
    # By hand: positives 0.4, 0.8 (x3), 0.2 against negatives 0.1 (x2), 0.4 (tie, half).
    assert repeated.item() == pytest.approx((2.5 + 3 * 3 + 2) / (5 * 3))
