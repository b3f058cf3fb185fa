"""ClassificationMetrics, roc_curves and classification_summary against hand-computed values."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from lensexp.metrics.classification import (
    ClassificationMetrics,
    classification_summary,
    roc_curves,
)

NAMES = ["no_sub", "sphere", "vort"]

# Six samples, three classes, with tied scores on purpose (ties count half a pair).
PROBS = torch.tensor(
    [
        [0.7, 0.2, 0.1],  # true 0, predicted 0
        [0.4, 0.5, 0.1],  # true 0, predicted 1
        [0.2, 0.6, 0.2],  # true 1, predicted 1
        [0.1, 0.2, 0.7],  # true 1, predicted 2
        [0.1, 0.2, 0.7],  # true 2, predicted 2
        [0.5, 0.1, 0.4],  # true 2, predicted 0
    ]
)
TARGET = torch.tensor([0, 0, 1, 1, 2, 2])

# Per-class AUC = (pairs positive > negative + 0.5 * ties) / (n_pos * n_neg), 2 x 4 pairs each.
# no_sub: pos {.7, .4} vs neg {.2, .1, .1, .5}: .7 beats 4, .4 beats 3 -> 7/8
AUC_NO_SUB = 7 / 8
# sphere: pos {.6, .2} vs neg {.2, .5, .2, .1}: .6 beats 4; .2 ties 2, beats 1 -> 4 + 2 = 6/8
AUC_SPHERE = 6 / 8
# vort: pos {.7, .4} vs neg {.1, .1, .2, .7}: .7 beats 3 ties 1 -> 3.5; .4 beats 3 -> 6.5/8
AUC_VORT = 6.5 / 8
AUC_MACRO = (AUC_NO_SUB + AUC_SPHERE + AUC_VORT) / 3  # 0.8125
# Micro: 6 positives {.7, .4, .6, .2, .7, .4} vs 12 negatives
# {.1 x5, .2 x4, .5 x2, .7 x1}:
#   .7 (x2): beats 11, ties 1 -> 11.5 each = 23;  .4 (x2): beats 9 each = 18
#   .6: beats 11 = 11;                              .2: beats 5, ties 4 -> 7
# (23 + 18 + 11 + 7) / 72 = 59/72
AUC_MICRO = 59 / 72
ACCURACY = 3 / 6
CONFUSION = [[1, 1, 0], [0, 1, 1], [1, 0, 1]]


def _compute(probs: torch.Tensor, target: torch.Tensor, names=NAMES) -> dict[str, torch.Tensor]:
    metrics = ClassificationMetrics(names)
    metrics.update(probs, target)
    return metrics.compute()


def test_values_match_hand_computation():
    values = _compute(PROBS, TARGET)
    assert set(values) == {
        "acc",
        "auc_micro",
        "auc_macro",
        "auc_no_sub",
        "auc_sphere",
        "auc_vort",
        "confusion_matrix",
    }
    assert values["acc"].item() == pytest.approx(ACCURACY)
    assert values["auc_no_sub"].item() == pytest.approx(AUC_NO_SUB, abs=1e-6)
    assert values["auc_sphere"].item() == pytest.approx(AUC_SPHERE, abs=1e-6)
    assert values["auc_vort"].item() == pytest.approx(AUC_VORT, abs=1e-6)
    assert values["auc_macro"].item() == pytest.approx(AUC_MACRO, abs=1e-6)
    assert values["auc_micro"].item() == pytest.approx(AUC_MICRO, abs=1e-6)
    assert values["confusion_matrix"].dtype == torch.int64
    assert values["confusion_matrix"].tolist() == CONFUSION


def test_batched_updates_equal_one_update_and_reset_forgets():
    metrics = ClassificationMetrics(NAMES)
    for start in (0, 2, 3):  # uneven batches
        stop = {0: 2, 2: 3, 3: 6}[start]
        metrics.update(PROBS[start:stop], TARGET[start:stop])
    batched = metrics.compute()
    whole = _compute(PROBS, TARGET)
    for key, value in whole.items():
        assert torch.equal(batched[key], value), key

    metrics.reset()
    metrics.update(PROBS[:2], TARGET[:2])
    assert metrics.compute()["confusion_matrix"].sum().item() == 2


def test_perfect_and_inverted_predictions():
    target = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    one_hot = nn.functional.one_hot(target, 3).float()
    perfect = _compute(0.8 * one_hot + 0.1, target)
    for key in ("acc", "auc_micro", "auc_macro", "auc_no_sub", "auc_sphere", "auc_vort"):
        assert perfect[key].item() == pytest.approx(1.0), key
    assert perfect["confusion_matrix"].tolist() == [[2, 0, 0], [0, 2, 0], [0, 0, 3]]

    # The true class always gets the lowest score: every pair is ordered the wrong way.
    inverted = _compute((1.0 - one_hot) / 2, target)
    for key in ("acc", "auc_micro", "auc_macro", "auc_no_sub", "auc_sphere", "auc_vort"):
        assert inverted[key].item() == pytest.approx(0.0), key


def test_absent_class_is_nan_and_left_out_of_macro():
    probs, target = PROBS[:4], TARGET[:4]  # no "vort" sample
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torchmetrics' "no positive samples" warning is handled
        values = _compute(probs, target)
    assert math.isnan(values["auc_vort"].item())
    # no_sub: pos {.7, .4} vs neg {.2, .1}: all 4 pairs right -> 1
    assert values["auc_no_sub"].item() == pytest.approx(1.0)
    # sphere: pos {.6, .2} vs neg {.2, .5}: .6 beats 2; .2 ties 1 -> 2.5/4
    assert values["auc_sphere"].item() == pytest.approx(0.625)
    assert values["auc_macro"].item() == pytest.approx((1.0 + 0.625) / 2)
    assert math.isfinite(values["auc_micro"].item())


def test_rejects_logits_and_bad_shapes():
    metrics = ClassificationMetrics(NAMES)
    with pytest.raises(ValueError, match="softmax"):
        metrics.update(torch.tensor([[2.0, -1.0, 0.5]]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        metrics.update(torch.rand(4, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="target"):
        metrics.update(PROBS, TARGET.float())
    with pytest.raises(ValueError, match="collide"):
        ClassificationMetrics(["micro", "b"])


def test_is_a_module_holding_metric_states_outside_checkpoints():
    parent = nn.Module()
    parent.metrics = ClassificationMetrics(NAMES)
    assert isinstance(parent.metrics, nn.Module)
    # torchmetrics states are not persistent: checkpoints don't depend on the metric's content.
    parent.metrics.update(PROBS, TARGET)
    assert parent.state_dict() == {}
    moved = parent.to(torch.device("cpu"))
    assert moved.metrics.compute()["acc"].device.type == "cpu"


def test_roc_curves_agree_with_metrics():
    curves = roc_curves(PROBS, TARGET, NAMES)
    values = _compute(PROBS, TARGET)
    assert set(curves) == {*NAMES, "micro"}
    for name in NAMES:
        assert curves[name][2] == pytest.approx(values[f"auc_{name}"].item(), abs=1e-7)
    assert curves["micro"][2] == pytest.approx(AUC_MICRO, abs=1e-6)
    for name, (fpr, tpr, auc) in curves.items():
        assert isinstance(fpr, np.ndarray) and isinstance(tpr, np.ndarray)
        assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0), name
        assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0), name
        # The curve's own area (trapezoids) is the AUC.
        area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
        assert area == pytest.approx(auc, abs=1e-6), name


def test_roc_curves_accept_numpy_and_mark_absent_class():
    curves = roc_curves(PROBS[:4].numpy(), TARGET[:4].numpy(), NAMES)
    assert math.isnan(curves["vort"][2])
    assert curves["sphere"][2] == pytest.approx(0.625)


def test_classification_summary_plain_types():
    summary = classification_summary(PROBS, TARGET, NAMES)
    assert summary == {
        "accuracy": pytest.approx(ACCURACY),
        "auc_micro": pytest.approx(AUC_MICRO, abs=1e-6),
        "auc_macro": pytest.approx(AUC_MACRO, abs=1e-6),
        "auc_per_class": {
            "no_sub": pytest.approx(AUC_NO_SUB, abs=1e-6),
            "sphere": pytest.approx(AUC_SPHERE, abs=1e-6),
            "vort": pytest.approx(AUC_VORT, abs=1e-6),
        },
        "confusion_matrix": CONFUSION,
        "n": 6,
    }
    assert type(summary["accuracy"]) is float and type(summary["n"]) is int
    assert all(type(v) is int for row in summary["confusion_matrix"] for v in row)
    json.dumps(summary, allow_nan=False)  # plain, finite JSON types
