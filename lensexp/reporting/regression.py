"""The axion-mass regression report: `metrics.json`, `metrics.md`, `predictions.csv` and the
predicted-vs-true scatter `predicted_vs_true.png` (metrics: `lensexp.metrics.regression`)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lensexp.metrics.regression import regression_summary
from lensexp.reporting.figures import regression_figure, save_figure
from lensexp.reporting.files import write_metrics

TARGET = "log10(axion mass / eV)"


def write_regression_report(
    out_dir: Path | str, prediction: Any, target: Any, files: Sequence[Path | str]
) -> dict[str, Any]:
    """Write the report of log10 axion-mass predictions for `files` into `out_dir`; returns
    the `regression_summary` (MAE, RMSE, R^2 in log10 mass, with bootstrap intervals).

    `predictions.csv`: `path, axion_mass` (eV), `log10_mass`, `log10_mass_pred`, `error`
    (predicted minus true, in log10), one row per file in order.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    p = torch.as_tensor(prediction).double().reshape(-1)
    t = torch.as_tensor(target).double().reshape(-1)
    if not (p.numel() == t.numel() == len(files)):
        raise ValueError(
            f"write_regression_report: {p.numel()} predictions, {t.numel()} targets, "
            f"{len(files)} files"
        )
    summary = regression_summary(p, t)
    summary["target"] = TARGET
    write_metrics(out_dir, summary, title=f"Axion-mass regression: {summary['n']} images")
    with open(out_dir / "predictions.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "axion_mass", "log10_mass", "log10_mass_pred", "error"])
        for file, true, pred in zip(files, t.tolist(), p.tolist(), strict=True):
            row = [f"{10.0**true:.6g}", f"{true:.6f}", f"{pred:.6f}", f"{pred - true:.6f}"]
            writer.writerow([str(file), *row])
    figure = regression_figure(t, p, TARGET, title=f"Axion mass: MAE {summary['mae']:.3f} dex")
    save_figure(figure, out_dir / "predicted_vs_true.png")
    return summary
