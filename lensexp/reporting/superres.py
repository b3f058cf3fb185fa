"""The super-resolution report `evaluate.py` writes: metrics, a comparison figure, SR images.

Input is the list of `SuperResolutionModule.predict_step` outputs; every number follows
`lensexp.metrics.superres` (SR clamped to [0, 1], per-image values averaged over images).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lensexp.metrics.superres import METRICS, bicubic_upsample
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
) -> dict[str, Any]:
    """Write `metrics.json`, `metrics.md`, `per_image.csv`, `comparison.png` (and with
    `save_outputs` the SR images as `sr/<input name>.npy`, (C, H, W) float32) into `out_dir`.

    Returns `{"mse", "psnr", "ssim", "n", "bicubic": {"mse", "psnr", "ssim"}}`: means of the
    per-image values of the model and of the bicubic baseline.
    """
    out_dir = Path(out_dir)
    if not outputs:
        raise ValueError("write_superres_report: no predictions (empty split?)")
    values = {k: _cat(outputs, k) for k in METRICS}
    baseline = {k: _cat(outputs, f"bicubic_{k}") for k in METRICS}
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
    metrics: dict[str, Any] = {k: float(values[k].double().mean()) for k in METRICS}
    metrics["n"] = n
    metrics["bicubic"] = {k: float(baseline[k].double().mean()) for k in METRICS}
    write_metrics(
        out_dir, metrics, title=f"Super-resolution, {n} image(s): model and bicubic baseline"
    )
    names = [str(f) for f in files] if files else [str(i) for i in range(n)]
    _write_per_image_csv(out_dir / "per_image.csv", names, values, baseline)
    _write_comparison(out_dir / "comparison.png", outputs, metrics)
    if save_outputs:
        _save_sr_images(out_dir / "sr", images, files)
    return metrics


def _write_per_image_csv(
    path: Path,
    names: list[str],
    values: dict[str, torch.Tensor],
    baseline: dict[str, torch.Tensor],
) -> None:
    """One row per image: its name, the model's metrics, then the bicubic baseline's."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", *METRICS, *(f"bicubic_{k}" for k in METRICS)])
        columns = [values[k].tolist() for k in METRICS] + [baseline[k].tolist() for k in METRICS]
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
