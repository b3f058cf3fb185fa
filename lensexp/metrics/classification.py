"""Classification metrics: lensexp's one stated definition of accuracy, ROC AUC and confusion.

Definition (every classification number lensexp reports, in training logs and in `evaluate.py`):

- Inputs are softmax probabilities (N, C) and integer targets (N,). Logits are rejected rather
  than normalised, because torchmetrics would apply a softmax to the per-class AUROC input but a
  sigmoid to the flattened micro-average input, and the two would silently disagree.
- `acc`: fraction of samples whose argmax class is the target (micro accuracy), read off the
  confusion matrix so the two can never disagree.
- `confusion_matrix`: C x C int64, rows = true class, columns = predicted (argmax) class.
- `auc_<class>`: exact (thresholds=None) one-vs-rest ROC AUC of the class' probability, ties
  counted as half a correctly ordered pair (the Mann-Whitney statistic).
- `auc_micro`: binary ROC AUC of the flattened one-hot targets against the flattened probabilities,
  as sklearn's `roc_auc_score(..., average="micro")`.
- `auc_macro`: unweighted mean of the per-class AUCs that are defined.
- A class with no positive (or no negative) sample among the targets has no ROC curve: its AUC is
  NaN (torchmetrics would silently report 0) and it is left out of the macro mean. The macro
  mean is NaN only when no class AUC is defined.

`ClassificationMetrics` is an `nn.Module` of torchmetrics metrics, so its states move with
`.to(device)` and are synchronised across processes (DDP) when computed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics.classification import BinaryAUROC, MulticlassAUROC, MulticlassConfusionMatrix
from torchmetrics.functional.classification import binary_roc
from torchmetrics.utilities import dim_zero_cat

# Key prefixes produced by `compute()`; a class name must not collide with the averages.
RESERVED_NAMES = ("micro", "macro")
# torchmetrics' warnings for a class without positives or negatives: handled here (NaN).
_DEGENERATE_ROC = r"No (positive|negative) samples in targets"


def _check_class_names(class_names: Sequence[str]) -> list[str]:
    names = [str(c) for c in class_names]
    if len(names) < 2:
        raise ValueError(f"classification metrics need at least two classes, got {names}")
    if len(set(names)) != len(names):
        raise ValueError(f"class names must be unique, got {names}")
    reserved = [n for n in names if n in RESERVED_NAMES]
    if reserved:
        raise ValueError(f"class names {reserved} collide with the auc_micro/auc_macro keys")
    return names


def _as_inputs(probs: Any, target: Any, num_classes: int) -> tuple[Tensor, Tensor]:
    """Validated (N, C) float probabilities and (N,) int64 targets, detached."""
    probs = torch.as_tensor(probs).detach()
    target = torch.as_tensor(target).detach()
    if probs.ndim != 2 or probs.shape[1] != num_classes:
        raise ValueError(
            f"probs must be (N, {num_classes}) class probabilities, got shape {tuple(probs.shape)}"
        )
    if target.shape != probs.shape[:1]:
        raise ValueError(
            f"target must be (N,) = ({probs.shape[0]},) class indices, got {tuple(target.shape)}"
        )
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"target must hold integer class indices, got dtype {target.dtype}")
    if probs.dtype not in (torch.float32, torch.float64):
        probs = probs.float()  # half precision: too coarse for tied-score ranking, not on all CPUs
    # One device sync per batch; NaN fails this check too.
    if probs.numel() and not bool(((probs >= 0) & (probs <= 1)).all()):
        raise ValueError("probs must be probabilities in [0, 1] (apply softmax to logits first)")
    return probs, target.long()


class ClassificationMetrics(nn.Module):
    """Accuracy, micro/macro/per-class one-vs-rest ROC AUC and the confusion matrix.

    `update(probs, target)` with softmax probabilities (N, C) and class indices (N,);
    `compute()` returns `{"acc", "auc_micro", "auc_macro", "auc_<class>"..., "confusion_matrix"}`
    as tensors (see the module docstring for the definitions); `reset()` starts over.
    """

    def __init__(self, class_names: Sequence[str]) -> None:
        super().__init__()
        self.class_names = _check_class_names(class_names)
        n = len(self.class_names)
        # thresholds=None keeps every score: exact AUCs, memory O(N * C).
        self.per_class_auroc = MulticlassAUROC(num_classes=n, average=None, thresholds=None)
        self.micro_auroc = BinaryAUROC(thresholds=None)
        self.confusion = MulticlassConfusionMatrix(num_classes=n)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def update(self, probs: Tensor, target: Tensor) -> None:
        """Add a batch: softmax probabilities (N, C) and int64 class indices (N,)."""
        probs, target = _as_inputs(probs, target, self.num_classes)
        self.per_class_auroc.update(probs, target)
        one_hot = nn.functional.one_hot(target, self.num_classes)
        self.micro_auroc.update(probs.reshape(-1), one_hot.reshape(-1))
        self.confusion.update(probs, target)

    def compute(self) -> dict[str, Tensor]:
        """All metrics over every sample seen (on every process), as tensors."""
        confusion = self.confusion.compute().long()
        total = confusion.sum()
        positives = confusion.sum(dim=1)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_DEGENERATE_ROC, category=UserWarning)
            per_class = self.per_class_auroc.compute().float()
            micro = self.micro_auroc.compute().float()
        defined = (positives > 0) & (positives < total)
        per_class = torch.where(defined, per_class, torch.full_like(per_class, math.nan))
        values: dict[str, Tensor] = {
            "acc": (confusion.diagonal().sum().float() / total.float()),
            "auc_micro": micro,
            "auc_macro": per_class.nanmean(),
        }
        for name, auc in zip(self.class_names, per_class, strict=True):
            values[f"auc_{name}"] = auc
        values["confusion_matrix"] = confusion
        return values

    def samples(self) -> tuple[Tensor, Tensor]:
        """Every (probabilities (N, C), target (N,)) seen, from all processes: the exact AUROC
        keeps them anyway, so figures read them here rather than from a second copy."""
        auroc = self.per_class_auroc
        with auroc.sync_context(should_unsync=True):
            return dim_zero_cat(auroc.preds), dim_zero_cat(auroc.target)

    def reset(self) -> None:
        """Forget every sample seen."""
        self.per_class_auroc.reset()
        self.micro_auroc.reset()
        self.confusion.reset()


def roc_curves(
    probs: Tensor | np.ndarray, target: Tensor | np.ndarray, class_names: Sequence[str]
) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """(fpr, tpr, auc) of each class (one-vs-rest) and of `"micro"` (flattened one-hot).

    The AUCs come from `ClassificationMetrics`, so they are the logged values (NaN for a class
    without positive or negative samples; its curve is then meaningless).
    """
    names = _check_class_names(class_names)
    probs, target = _as_inputs(probs, target, len(names))
    metrics = ClassificationMetrics(names)
    metrics.update(probs, target)
    values = metrics.compute()
    one_hot = nn.functional.one_hot(target, len(names))

    def curve(scores: Tensor, labels: Tensor, auc: Tensor) -> tuple[np.ndarray, np.ndarray, float]:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_DEGENERATE_ROC, category=UserWarning)
            fpr, tpr, _ = binary_roc(scores, labels, thresholds=None)
        return fpr.cpu().double().numpy(), tpr.cpu().double().numpy(), float(auc)

    curves = {
        name: curve(probs[:, i], one_hot[:, i], values[f"auc_{name}"])
        for i, name in enumerate(names)
    }
    curves["micro"] = curve(probs.reshape(-1), one_hot.reshape(-1), values["auc_micro"])
    return curves


def classification_summary(
    probs: Tensor | np.ndarray, target: Tensor | np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """The `evaluate.py` metrics in plain Python types, computed by `ClassificationMetrics`.

    `{"accuracy", "auc_micro", "auc_macro", "auc_per_class": {name: auc}, "confusion_matrix":
    [[int]] (rows true, columns predicted), "n"}`; undefined AUCs are float NaN.
    """
    names = _check_class_names(class_names)
    probs, target = _as_inputs(probs, target, len(names))
    if target.numel() == 0:
        raise ValueError("classification_summary: no samples")
    metrics = ClassificationMetrics(names)
    metrics.update(probs.cpu(), target.cpu())
    values = metrics.compute()
    return {
        "accuracy": float(values["acc"]),
        "auc_micro": float(values["auc_micro"]),
        "auc_macro": float(values["auc_macro"]),
        "auc_per_class": {name: float(values[f"auc_{name}"]) for name in names},
        "confusion_matrix": values["confusion_matrix"].tolist(),
        "n": int(target.numel()),
    }
