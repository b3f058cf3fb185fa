"""The super-resolution report `evaluate.py` writes: metrics, a comparison figure, SR images.

Input is the list of `SuperResolutionModule.predict_step` outputs; every number follows
`lensexp.metrics.superres` (SR clamped to [0, 1], per-image values averaged over images); the
95% confidence intervals are percentile bootstraps over images (`lensexp.metrics.bootstrap`).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lensexp.metrics.bootstrap import N_RESAMPLES, SEED, bootstrap_ci, resampled_mean
from lensexp.metrics.superres import ARC_THRESHOLD, METRICS, SCIENCE_METRICS, bicubic_upsample
from lensexp.reporting.figures import save_figure, sr_comparison_figure
from lensexp.reporting.files import write_metrics

MAX_COMPARISON = 8  # images in comparison.png


def _cat(outputs: list[dict[str, Any]], key: str) -> torch.Tensor | None:
    parts = [o[key] for o in outputs if key in o]
    return torch.cat(parts) if parts else None


def output_names(files: Sequence[Path]) -> list[Path]:
    """Where each input's SR image goes, relative to `sr/`: its file name, or (when names repeat,
    e.g. `split=all` with a `val/` folder) its path below the inputs' common folder."""
    paths = [Path(f) for f in files]
    names = [Path(p.name) for p in paths]
    if len(set(names)) == len(names):
        return names
    common = Path(os.path.commonpath([p.resolve() for p in paths]))
    return [p.resolve().relative_to(common) for p in paths]


def write_superres_report(
    out_dir: Path | str,
    outputs: list[dict[str, Any]],
    files: Sequence[Path],
    save_outputs: bool = False,
    *,
    arc_threshold: float = ARC_THRESHOLD,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> dict[str, Any]:
    """Write `metrics.json`, `metrics.md`, `per_image.csv`, `comparison.png` (and with
    `save_outputs` the SR images as `sr/<input name>.npy`, (C, H, W) float32) into `out_dir`.

    Returns the means over images of the model's per-image values, `{"mse", "psnr", "ssim",
    "n", "bicubic": {...}}` with the bicubic baseline's under `bicubic`, and besides:
    `psnr_gain`, `ssim_gain` (model minus bicubic); the science metrics `psnr_arc`, `ssim_arc`
    (means skipping the `arc_empty` images whose arc mask is empty), `flux_ratio` and
    `flux_rel_error` (mean |flux_ratio - 1|), for bicubic too; `arc_threshold`, the threshold
    `predict_step` used (recorded here, not applied); and `ci95`, `superres_intervals`.
    """
    out_dir = Path(out_dir)
    if not outputs:
        raise ValueError("write_superres_report: no predictions (empty split?)")
    names_all = (*METRICS, *SCIENCE_METRICS)
    values = {k: _cat(outputs, k) for k in names_all}
    baseline = {k: _cat(outputs, f"bicubic_{k}") for k in names_all}
    n = int(values["psnr"].numel())
    files = [Path(f) for f in files]
    if files and len(files) != n:
        raise ValueError(f"write_superres_report: {n} predictions but {len(files)} files")
    images = _cat(outputs, "sr") if save_outputs else None
    if save_outputs and (images is None or not files):
        raise ValueError(
            "write_superres_report(save_outputs=True): needs the input files and predictions "
            "holding SR images (set module.keep_outputs = True before trainer.predict)"
        )

    out_dir.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = _means(values)
    metrics["n"] = n
    metrics["bicubic"] = _means(baseline)
    for name in ("psnr", "ssim"):
        metrics[f"{name}_gain"] = metrics[name] - metrics["bicubic"][name]
    # The mask depends on the HR image only: the same images are empty for both.
    metrics["arc_empty"] = int(values["psnr_arc"].isnan().sum())
    metrics["arc_threshold"] = float(arc_threshold)
    metrics["ci95"] = superres_intervals(values, baseline, n_resamples=n_resamples, seed=seed)
    write_metrics(
        out_dir, metrics, title=f"Super-resolution, {n} image(s): model and bicubic baseline"
    )
    names = [str(f) for f in files] if files else [str(i) for i in range(n)]
    _write_per_image_csv(out_dir / "per_image.csv", names, values, baseline)
    _write_comparison(out_dir / "comparison.png", outputs, metrics)
    if save_outputs:
        _save_sr_images(out_dir / "sr", images, files)
    return metrics


def _means(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Means over images of the per-image metrics; the science metrics skip NaN (an empty arc
    mask, a zero-flux HR image), and `flux_rel_error` is the mean |flux_ratio - 1|."""
    means = {k: float(values[k].double().mean()) for k in METRICS}
    means |= {k: float(values[k].double().nanmean()) for k in SCIENCE_METRICS}
    means["flux_rel_error"] = float((values["flux_ratio"].double() - 1.0).abs().nanmean())
    return means


def superres_intervals(
    values: dict[str, torch.Tensor],
    baseline: dict[str, torch.Tensor],
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> dict[str, list[float]]:
    """95% percentile-bootstrap intervals over images of the model's mean PSNR and SSIM and of
    their gains over bicubic: `{"psnr", "ssim", "psnr_gain", "ssim_gain": [lo, hi]}`. The gains
    are paired: each resample's mean(model) - mean(bicubic) over the same images."""
    n = int(values["psnr"].numel())

    def statistic(weights: torch.Tensor) -> dict[str, torch.Tensor]:
        found = {}
        for name in ("psnr", "ssim"):
            model = values[name].double()
            found[name] = resampled_mean(model, weights)
            found[f"{name}_gain"] = resampled_mean(model - baseline[name].double(), weights)
        return found

    return bootstrap_ci(statistic, n, n_resamples=n_resamples, seed=seed)


def _write_per_image_csv(
    path: Path,
    names: list[str],
    values: dict[str, torch.Tensor],
    baseline: dict[str, torch.Tensor],
) -> None:
    """One row per image: its name, the model's metrics, the bicubic baseline's, then the
    science metrics of both (appended, so the first columns stay where they were)."""
    order = [(values, k, k) for k in METRICS] + [(baseline, k, f"bicubic_{k}") for k in METRICS]
    order += [(values, k, k) for k in SCIENCE_METRICS]
    order += [(baseline, k, f"bicubic_{k}") for k in SCIENCE_METRICS]
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", *(header for _, _, header in order)])
        columns = [source[k].tolist() for source, k, _ in order]
        for name, *row in zip(names, *columns, strict=True):
            writer.writerow([name, *(f"{v:.6g}" for v in row)])


def _write_comparison(path: Path, outputs: list[dict[str, Any]], metrics: dict[str, Any]) -> None:
    """The LR | bicubic | SR | HR | error figure of the first samples, if the outputs hold any."""
    lr, sr, hr = (_cat(outputs, f"{k}_samples") for k in ("lr", "sr", "hr"))
    if lr is None or sr is None or hr is None:
        return
    lr, sr, hr = lr[:MAX_COMPARISON], sr[:MAX_COMPARISON], hr[:MAX_COMPARISON]
    scale = hr.shape[-1] // lr.shape[-1]
    figure = sr_comparison_figure(
        lr,
        bicubic_upsample(lr, scale),
        sr,
        hr,
        max_samples=MAX_COMPARISON,
        title=(
            f"Mean PSNR over {metrics['n']} image(s): SR {metrics['psnr']:.2f} dB, "
            f"bicubic {metrics['bicubic']['psnr']:.2f} dB"
        ),
    )
    save_figure(figure, path)


def _save_sr_images(sr_dir: Path, images: torch.Tensor, files: list[Path]) -> None:
    """Each SR image as `sr_dir/<input name>.npy`, (C, H, W) float32."""
    for image, name in zip(images, output_names(files), strict=True):
        target = (sr_dir / name).with_suffix(".npy")
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, image.numpy().astype(np.float32, copy=False))
