"""Figures for reports and TensorBoard: confusion matrix, ROC curves, SR comparison, metrics
against the physics, predicted-vs-true regression scatter.

Every function builds a `matplotlib.figure.Figure` directly (never pyplot): no GUI backend, no
global figure registry to leak into, safe in worker processes, and the figures can be passed to
`SummaryWriter.add_figure` or `save_figure`. They are freed when no longer referenced.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from lensexp.metrics.classification import roc_curves
from lensexp.metrics.physics import QUANTITIES
from lensexp.metrics.superres import MSE_FLOOR

DPI = 120
SR_COLUMNS = ("LR", "Bicubic", "SR", "HR", "|SR - HR|")


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def confusion_matrix_figure(
    matrix: Any, class_names: Sequence[str], title: str = "Confusion matrix"
) -> Figure:
    """Counts per (true, predicted) class pair: true class on y, predicted on x, counts in cells."""
    counts = _numpy(matrix)
    n = len(class_names)
    if counts.shape != (n, n):
        raise ValueError(f"confusion matrix must be {n} x {n}, got shape {counts.shape}")
    size = max(4.0, 0.9 * n + 2.5)
    fig = Figure(figsize=(size, size * 0.85), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(counts, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ticks = np.arange(n)
    ax.set_xticks(ticks, labels=list(class_names), rotation=30, ha="right")
    ax.set_yticks(ticks, labels=list(class_names))
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_title(title)
    # White text on dark cells, black on light ones, so every count stays readable.
    threshold = counts.max() / 2 if counts.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                f"{int(round(counts[i, j]))}",
                ha="center",
                va="center",
                color="white" if counts[i, j] > threshold else "black",
            )
    return fig


def _auc_label(name: str, auc: float) -> str:
    return f"{name} (AUC undefined)" if math.isnan(auc) else f"{name} (AUC = {auc:.3f})"


def roc_figure(probs: Any, target: Any, class_names: Sequence[str], title: str = "ROC") -> Figure:
    """One-vs-rest ROC curve of each class and the micro-average, AUCs in the legend.

    A class absent from `target` has no curve; it stays in the legend as "AUC undefined".
    """
    curves = roc_curves(probs, target, class_names)
    fig = Figure(figsize=(6.0, 5.5), layout="constrained")
    ax = fig.add_subplot()
    for name in class_names:
        fpr, tpr, auc = curves[str(name)]
        if math.isnan(auc):
            ax.plot([], [], label=_auc_label(str(name), auc))
        else:
            ax.plot(fpr, tpr, lw=2, label=_auc_label(str(name), auc))
    fpr, tpr, auc = curves["micro"]
    ax.plot(fpr, tpr, color="deeppink", ls=":", lw=3, label=_auc_label("micro-average", auc))
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="chance")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.05)
    ax.set_xlabel("False positive rate")
    ax.set_ylabel("True positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right")
    return fig


def _images(x: Any, name: str) -> np.ndarray:
    """(N, H, W) float64 from (N, C, H, W) (the mean of the bands, e.g. Model IV's three) or
    (N, H, W)."""
    array = _numpy(x)
    if array.ndim == 4:
        array = array.mean(axis=1)
    if array.ndim != 3:
        raise ValueError(
            f"sr_comparison_figure: {name} must be (N, C, H, W) or (N, H, W), got {array.shape}"
        )
    return array


def _psnr(image: np.ndarray, reference: np.ndarray) -> float:
    # Data range 1, SR clamped to [0, 1] and MSE floored as in lensexp.metrics.superres.
    mse = float(np.mean((np.clip(image, 0.0, 1.0) - reference) ** 2))
    return 10.0 * math.log10(1.0 / max(mse, MSE_FLOOR))


def sr_comparison_figure(
    lr: Any, bicubic: Any, sr: Any, hr: Any, max_samples: int = 8, title: str | None = None
) -> Figure:
    """One row per sample: LR | bicubic | SR | HR | |SR - HR|, PSNR vs HR in the titles.

    Inputs are tensors or arrays, (N, C, H, W) or (N, H, W); several bands are shown (and their
    title PSNR computed) as their mean. Images are shown on [0, 1], the error column on a common
    scale with its own colour bar.
    """
    lr, bicubic, sr, hr = (
        _images(x, name) for x, name in ((lr, "lr"), (bicubic, "bicubic"), (sr, "sr"), (hr, "hr"))
    )
    if not (bicubic.shape == sr.shape == hr.shape):
        raise ValueError(
            "sr_comparison_figure: bicubic, sr and hr must have equal shapes, got "
            f"{bicubic.shape}, {sr.shape}, {hr.shape}"
        )
    if lr.shape[0] != hr.shape[0]:
        raise ValueError(f"sr_comparison_figure: {lr.shape[0]} LR but {hr.shape[0]} HR images")
    rows = min(hr.shape[0], max_samples)
    if rows < 1:
        raise ValueError("sr_comparison_figure: no images")
    error = np.abs(np.clip(sr[:rows], 0.0, 1.0) - hr[:rows])
    error_max = max(float(error.max()), 1e-6)

    fig = Figure(figsize=(2.3 * len(SR_COLUMNS) + 0.6, 2.3 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, len(SR_COLUMNS), squeeze=False)
    error_image = None
    for r in range(rows):
        panels = (lr[r], bicubic[r], sr[r], hr[r])
        captions = (
            "",
            f"{_psnr(bicubic[r], hr[r]):.2f} dB",
            f"{_psnr(sr[r], hr[r]):.2f} dB",
            "",
        )
        for c, (image, caption) in enumerate(zip(panels, captions, strict=True)):
            axes[r, c].imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            heading = SR_COLUMNS[c] if r == 0 else ""
            axes[r, c].set_title("\n".join(t for t in (heading, caption) if t), fontsize=9)
        error_image = axes[r, 4].imshow(
            error[r], cmap="magma", vmin=0.0, vmax=error_max, interpolation="nearest"
        )
        if r == 0:
            axes[r, 4].set_title(SR_COLUMNS[4], fontsize=9)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.colorbar(error_image, ax=axes[:, 4], shrink=0.8)
    if title:
        fig.suptitle(title)
    return fig


def physics_figure(rows: Sequence[dict[str, Any]]) -> Figure:
    """One panel per binned quantity of a `lensexp.metrics.physics.physics_table`: accuracy and
    AUC per bin against the bin's centre (geometric for log quantities, on a log axis), with
    each bin's range as a horizontal bar and its image count above the accuracy."""
    log = {q.column: q.log for q in QUANTITIES}
    labels = {q.column: q.label for q in QUANTITIES}
    binned = [r for r in rows if r["bin"] is not None]
    quantities = list(dict.fromkeys(r["quantity"] for r in binned))
    fig = Figure(figsize=(4.2 * max(1, len(quantities)), 3.6), layout="constrained")
    if not quantities:
        fig.add_subplot().text(0.5, 0.5, "no quantity varies", ha="center", va="center")
        return fig
    axes = fig.subplots(1, len(quantities), squeeze=False)[0]
    for ax, quantity in zip(axes, quantities, strict=True):
        mine = [r for r in binned if r["quantity"] == quantity]
        lo, hi = np.array([r["lo"] for r in mine]), np.array([r["hi"] for r in mine])
        centre = np.sqrt(lo * hi) if log[quantity] else (lo + hi) / 2
        for key, marker in (("accuracy", "o"), ("auc", "s")):
            values = np.array([r[key] for r in mine], dtype=float)
            ax.errorbar(
                centre, values, xerr=[centre - lo, hi - centre], marker=marker, capsize=3,
                label=key,
            )  # fmt: skip
        for x, r in zip(centre, mine, strict=True):
            ax.annotate(f"n={r['n']}", (x, r["accuracy"]), textcoords="offset points",
                        xytext=(0, 6), ha="center", fontsize=7)  # fmt: skip
        if log[quantity]:
            ax.set_xscale("log")
        ax.set_ylim(0.0, 1.05)
        ax.set_xlabel(labels[quantity])
        ax.set_title(f"{mine[0]['population']} images", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("per bin")
    axes[0].legend(loc="best", fontsize=8)
    return fig


def regression_figure(
    true: Any, predicted: Any, label: str, title: str = "Predicted vs true"
) -> Figure:
    """Scatter of predicted against true values, with the identity line."""
    true, predicted = _numpy(true).reshape(-1), _numpy(predicted).reshape(-1)
    fig = Figure(figsize=(4.6, 4.4), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(true, predicted, s=10, alpha=0.6)
    both = np.concatenate([true, predicted])
    low, high = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
    ax.plot([low, high], [low, high], color="black", lw=1, ls="--", label="predicted = true")
    ax.set_xlabel(f"true {label}")
    ax.set_ylabel(f"predicted {label}")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def save_figure(fig: Figure, path: Path | str) -> Path:
    """Write `fig` as PNG (dpi 120) to `path`, creating its folder; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path
