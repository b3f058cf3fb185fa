"""The classification report `evaluate.py` writes: metrics, confusion matrix, ROC, predictions.

Every number follows `lensexp.metrics.classification` (the same code the training logs use).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lensexp.metrics.classification import classification_summary
from lensexp.reporting.figures import confusion_matrix_figure, roc_figure, save_figure
from lensexp.reporting.files import write_metrics


def _tensor(x: Any) -> torch.Tensor:
    return torch.as_tensor(x).detach().cpu()


def write_predictions_csv(
    path: Path | str,
    files: Sequence[Path | str],
    labels: Any,
    probs: Any,
    class_names: Sequence[str],
) -> Path:
    """Write `path,label,prediction,p_<class>...`, one row per file in order; returns the path.

    `label` and `prediction` (the argmax class) are class names; probabilities have 6 decimals.
    """
    names = [str(c) for c in class_names]
    labels = _tensor(labels).long().reshape(-1)
    probs = _tensor(probs).double()
    if probs.ndim != 2 or probs.shape[1] != len(names):
        raise ValueError(f"probs must be (N, {len(names)}), got shape {tuple(probs.shape)}")
    n = probs.shape[0]
    if labels.numel() != n or len(files) != n:
        raise ValueError(
            f"write_predictions_csv: {n} predictions, {labels.numel()} labels, {len(files)} files"
        )
    predictions = probs.argmax(dim=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "prediction", *(f"p_{c}" for c in names)])
        for file, label, prediction, row in zip(
            files, labels.tolist(), predictions.tolist(), probs.tolist(), strict=True
        ):
            writer.writerow(
                [str(file), names[label], names[prediction], *(f"{p:.6f}" for p in row)]
            )
    return path


def write_classification_report(
    out_dir: Path | str,
    probs: Any,
    target: Any,
    files: Sequence[Path | str],
    class_names: Sequence[str],
) -> dict[str, Any]:
    """Write `metrics.json`, `metrics.md`, `confusion_matrix.png`, `roc_curve.png` and
    `predictions.csv` into `out_dir`; returns the `classification_summary` dict.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    probs = _tensor(probs).float()
    target = _tensor(target).long()
    if target.numel() == 0:
        raise ValueError("write_classification_report: no predictions (empty split?)")
    names = [str(c) for c in class_names]
    summary = classification_summary(probs, target, names)
    write_metrics(
        out_dir,
        summary,
        title=f"Classification: {summary['n']} images, {len(names)} classes",
        class_names=names,
    )
    save_figure(
        confusion_matrix_figure(np.asarray(summary["confusion_matrix"]), names),
        out_dir / "confusion_matrix.png",
    )
    save_figure(roc_figure(probs, target, names), out_dir / "roc_curve.png")
    write_predictions_csv(out_dir / "predictions.csv", files, target, probs, names)
    return summary
