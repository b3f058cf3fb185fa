"""The classification report `evaluate.py` writes: metrics, confusion matrix, ROC, predictions.

Every number follows `lensexp.metrics.classification` (the same code the training logs use); the
95% confidence intervals are percentile bootstraps over images (`lensexp.metrics.bootstrap`).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lensexp.data.manifest import FileMetadata
from lensexp.metrics.bootstrap import (
    N_RESAMPLES,
    SEED,
    bootstrap_ci,
    resampled_auc,
    resampled_mean,
)
from lensexp.metrics.classification import classification_summary
from lensexp.metrics.physics import physics_table
from lensexp.reporting.figures import confusion_matrix_figure, roc_figure, save_figure
from lensexp.reporting.files import write_metrics
from lensexp.reporting.physics import write_physics_report


def _tensor(x: Any) -> torch.Tensor:
    return torch.as_tensor(x).detach().cpu()


def write_predictions_csv(
    path: Path | str,
    files: Sequence[Path | str],
    labels: Any,
    probs: Any,
    class_names: Sequence[str],
    axion_mass: Any = None,
) -> Path:
    """Write `path,label,prediction,p_<class>...,axion_mass`, one row per file in order;
    returns the path.

    `label` and `prediction` (the argmax class) are class names; probabilities have 6 decimals;
    `axion_mass` (eV, per file; None or NaN: unknown) is written with 6 significant digits,
    empty where unknown.
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
    masses = np.full(n, np.nan) if axion_mass is None else np.asarray(axion_mass, float)
    if masses.shape != (n,):
        raise ValueError(f"write_predictions_csv: {n} predictions, {masses.size} axion masses")
    predictions = probs.argmax(dim=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        header = ["path", "label", "prediction", *(f"p_{c}" for c in names), "axion_mass"]
        writer.writerow(header)
        for file, label, prediction, row, mass in zip(
            files, labels.tolist(), predictions.tolist(), probs.tolist(), masses, strict=True
        ):
            writer.writerow(
                [
                    str(file),
                    names[label],
                    names[prediction],
                    *(f"{p:.6f}" for p in row),
                    "" if math.isnan(mass) else f"{mass:.6g}",
                ]
            )
    return path


def classification_intervals(
    probs: torch.Tensor,
    target: torch.Tensor,
    class_names: Sequence[str],
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> dict[str, Any]:
    """95% percentile-bootstrap intervals over images of the summary's metrics:
    `{"accuracy", "auc_micro", "auc_macro": [lo, hi], "auc_per_class": {name: [lo, hi]}}`.

    A resample without an image of some class (or with only that class) leaves that class' AUC
    undefined and is skipped for it; for the macro AUC it is skipped when any class whose AUC
    is defined on all images is undefined in it, so every kept value averages the same classes.
    """
    n, n_classes = probs.shape
    probs = probs.double()
    correct = (probs.argmax(dim=1) == target).double()
    one_hot = torch.nn.functional.one_hot(target, n_classes).bool()
    counts = one_hot.sum(dim=0)
    defined = [k for k in range(n_classes) if 0 < counts[k] < n]

    # Each image's (image, class) pairs of the micro AUC are drawn together, with the image.
    pair_images = torch.arange(n).repeat_interleave(n_classes)
    aucs = {
        "auc_micro": resampled_auc(probs.reshape(-1), one_hot.reshape(-1), pair_images),
        **{f"auc_{k}": resampled_auc(probs[:, k], one_hot[:, k]) for k in range(n_classes)},
    }

    def statistic(weights: torch.Tensor) -> dict[str, torch.Tensor]:
        values = {name: auc(weights) for name, auc in aucs.items()}
        values["accuracy"] = resampled_mean(correct, weights)
        # NaN (skipped) as soon as one of the classes averaged is undefined.
        values["auc_macro"] = (
            torch.stack([values[f"auc_{k}"] for k in defined]).mean(dim=0)
            if defined
            else torch.full((len(weights),), math.nan, dtype=torch.float64)
        )
        return values

    found = bootstrap_ci(statistic, n, n_resamples=n_resamples, seed=seed)
    intervals: dict[str, Any] = {k: found[k] for k in ("accuracy", "auc_micro", "auc_macro")}
    intervals["auc_per_class"] = {
        str(name): found[f"auc_{k}"] for k, name in enumerate(class_names)
    }
    return intervals


def write_classification_report(
    out_dir: Path | str,
    probs: Any,
    target: Any,
    files: Sequence[Path | str],
    class_names: Sequence[str],
    *,
    metadata: FileMetadata | None = None,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> dict[str, Any]:
    """Write `metrics.json`, `metrics.md`, `confusion_matrix.png`, `roc_curve.png` and
    `predictions.csv` into `out_dir`; returns the `classification_summary` dict with `ci95`,
    its `classification_intervals` (`n_resamples` bootstrap resamples drawn from `seed`).

    `metadata` (per file): its axion masses go into `predictions.csv`; with a manifest, the
    metrics against the physics (`lensexp.metrics.physics`) are written as `physics.csv`,
    `physics.md` and `physics.png`, and their table is appended to `metrics.md`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    probs = _tensor(probs).float()
    target = _tensor(target).long()
    if target.numel() == 0:
        raise ValueError("write_classification_report: no predictions (empty split?)")
    names = [str(c) for c in class_names]
    summary = classification_summary(probs, target, names)
    summary["ci95"] = classification_intervals(
        probs, target, names, n_resamples=n_resamples, seed=seed
    )
    _, md_path = write_metrics(
        out_dir,
        summary,
        title=f"Classification: {summary['n']} images, {len(names)} classes",
        class_names=names,
    )
    if metadata is not None and metadata.manifest is not None:
        # The mass as the report knows it (an [image, mass] file's own, else the manifest's).
        columns = {**metadata.manifest, "axion_mass": metadata.axion_mass}
        rows = physics_table(columns, probs.numpy(), target.numpy(), names)
        table = write_physics_report(out_dir, rows)
        md_path.write_text(md_path.read_text() + "\n" + table)
    save_figure(
        confusion_matrix_figure(np.asarray(summary["confusion_matrix"]), names),
        out_dir / "confusion_matrix.png",
    )
    save_figure(roc_figure(probs, target, names), out_dir / "roc_curve.png")
    masses = None if metadata is None else metadata.axion_mass
    write_predictions_csv(out_dir / "predictions.csv", files, target, probs, names, masses)
    return summary
