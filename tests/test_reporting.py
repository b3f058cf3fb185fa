"""Reporting: metrics files, Markdown, rich table, figures, the classification and SR reports."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from rich.console import Console

from lensexp.reporting.classification import write_classification_report, write_predictions_csv
from lensexp.reporting.figures import (
    confusion_matrix_figure,
    roc_figure,
    save_figure,
    sr_comparison_figure,
)
from lensexp.reporting.files import (
    metrics_markdown,
    print_metrics_table,
    write_json,
    write_metrics,
)
from lensexp.reporting.superres import write_superres_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NAMES = ["no_sub", "sphere", "vort"]
# The example of test_classification_metrics: accuracy 0.5, macro AUC 0.8125, micro 59/72.
PROBS = torch.tensor(
    [
        [0.7, 0.2, 0.1],
        [0.4, 0.5, 0.1],
        [0.2, 0.6, 0.2],
        [0.1, 0.2, 0.7],
        [0.1, 0.2, 0.7],
        [0.5, 0.1, 0.4],
    ]
)
TARGET = torch.tensor([0, 0, 1, 1, 2, 2])
FILES = [f"data/test/img_{i}.npy" for i in range(6)]


def _is_png(path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


def test_write_json_nan_becomes_null(tmp_path):
    path = write_json(
        tmp_path / "sub" / "m.json",
        {"a": float("nan"), "b": [1.5, float("inf")], "c": torch.tensor(0.25), "d": np.int64(3)},
    )
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [1.5, None], "c": 0.25, "d": 3}


def test_metrics_markdown_flattens_and_formats():
    metrics = {
        "psnr": 31.234567,
        "n": 12,
        "mse": 0.00012345,
        "bicubic": {"psnr": 28.5, "ssim": 0.81234},
        "confusion_matrix": [[3, 1], [0, 4]],
    }
    md = metrics_markdown(metrics, "SR run", class_names=["a", "b"])
    lines = md.splitlines()
    assert lines[0] == "# SR run"
    assert "| metric | value |" in lines
    assert "| psnr | 31.2346 |" in lines
    assert "| n | 12 |" in lines
    assert "| mse | 1.234e-04 |" in lines
    assert "| bicubic/psnr | 28.5000 |" in lines
    assert "| bicubic/ssim | 0.8123 |" in lines
    # The matrix is its own table after the scalars, labelled by class.
    assert lines.index("| **a** | 3 | 1 |") > lines.index("| bicubic/ssim | 0.8123 |")
    assert "| **b** | 0 | 4 |" in lines
    assert not any(line.startswith("| confusion_matrix") for line in lines)
    # Without class names: indices.
    assert "| **1** | 0 | 4 |" in metrics_markdown(metrics, "t").splitlines()


def test_metrics_markdown_shows_intervals_beside_their_values():
    metrics = {
        "psnr": 31.234567,
        "n": 12,
        "bicubic": {"psnr": 28.5},
        "per_class": {"a": 0.75},
        "ci95": {"psnr": [30.5, 32.0], "per_class": {"a": [0.5, float("nan")]}, "other": [1, 2]},
    }
    lines = metrics_markdown(metrics, "t").splitlines()
    assert "| psnr | 31.2346 [30.5000, 32.0000] |" in lines
    assert "| per_class/a | 0.7500 [0.5000, nan] |" in lines
    assert "| bicubic/psnr | 28.5000 |" in lines and "| n | 12 |" in lines
    # An interval without a value of its name is listed on its own; the others are not.
    assert "| ci95/other | [1, 2] |" in lines
    assert not any(line.startswith("| ci95/psnr") for line in lines)
    console = Console(record=True, width=120)
    print_metrics_table(metrics, title="eval", console=console)
    assert "31.2346 [30.5000, 32.0000]" in console.export_text()


def test_print_metrics_table_skips_lists():
    console = Console(record=True, width=120)
    print_metrics_table(
        {"accuracy": 0.5, "auc_per_class": {"sphere": 0.75}, "confusion_matrix": [[1, 0], [0, 1]]},
        title="eval",
        console=console,
    )
    text = console.export_text()
    assert "eval" in text and "auc_per_class/sphere" in text and "0.7500" in text
    assert "0.5000" in text and "confusion_matrix" not in text


def test_confusion_and_roc_figures():
    cm = confusion_matrix_figure(np.array([[5, 1, 0], [0, 6, 2], [1, 0, 7]]), NAMES)
    assert isinstance(cm, Figure)
    cells = {t.get_text() for t in cm.axes[0].texts}
    assert {"5", "6", "7", "2"} <= cells
    assert cm.axes[0].get_ylabel() == "True class"

    roc = roc_figure(PROBS, TARGET, NAMES)
    labels = [t.get_text() for t in roc.axes[0].get_legend().get_texts()]
    assert "sphere (AUC = 0.750)" in labels
    assert "vort (AUC = 0.812)" in labels
    assert f"micro-average (AUC = {59 / 72:.3f})" in labels
    assert "chance" in labels

    # An absent class stays in the legend, marked undefined.
    roc = roc_figure(PROBS[:4], TARGET[:4], NAMES)
    labels = [t.get_text() for t in roc.axes[0].get_legend().get_texts()]
    assert "vort (AUC undefined)" in labels


def test_sr_comparison_figure_layout_and_psnr(tmp_path):
    hr = torch.full((10, 1, 8, 8), 0.5)
    sr = hr + 0.1  # MSE 0.01 -> 20 dB
    bicubic = hr + 0.01  # MSE 1e-4 -> 40 dB
    lr = torch.full((10, 1, 4, 4), 0.5)
    fig = sr_comparison_figure(lr, bicubic, sr, hr.numpy()[:, 0], max_samples=3, title="cmp")
    image_axes = [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]
    assert len(image_axes) == 3 * 5
    titles = [ax.get_title() for ax in image_axes]
    assert titles[:5] == ["LR", "Bicubic\n40.00 dB", "SR\n20.00 dB", "HR", "|SR - HR|"]
    assert titles[5:10] == ["", "40.00 dB", "20.00 dB", "", ""]
    assert fig._suptitle.get_text() == "cmp"
    path = save_figure(fig, tmp_path / "deep" / "cmp.png")
    assert path == tmp_path / "deep" / "cmp.png" and _is_png(path)

    with pytest.raises(ValueError, match="equal shapes"):
        sr_comparison_figure(lr, bicubic[:, :, :4], sr, hr)


def test_sr_comparison_figure_shows_several_bands_as_their_mean():
    hr = torch.stack([torch.full((2, 8, 8), v) for v in (0.2, 0.5, 0.8)], dim=1)  # 3 bands
    sr = hr + torch.tensor([0.3, 0.0, -0.3]).view(1, 3, 1, 1)  # errors cancel in the band mean
    fig = sr_comparison_figure(hr[:, :, ::2, ::2], hr, sr, hr, max_samples=1)
    image_axes = [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]
    assert image_axes[2].get_title() == "SR\n100.00 dB"
    assert image_axes[3].images[0].get_array().mean() == pytest.approx(0.5)


def test_write_metrics_files(tmp_path):
    metrics = {"psnr": 30.0, "n": 2, "bicubic": {"psnr": float("nan")}}
    json_path, md_path = write_metrics(tmp_path / "out", metrics, title="t")
    assert json_path.name == "metrics.json" and md_path.name == "metrics.md"
    assert json.loads(json_path.read_text()) == {"psnr": 30.0, "n": 2, "bicubic": {"psnr": None}}
    assert "| psnr | 30.0000 |" in md_path.read_text()


def test_write_predictions_csv(tmp_path):
    path = write_predictions_csv(tmp_path / "p.csv", FILES, TARGET, PROBS, NAMES)
    lines = path.read_text().splitlines()
    assert lines[0] == "path,label,prediction,p_no_sub,p_sphere,p_vort,axion_mass"
    assert lines[2] == "data/test/img_1.npy,no_sub,sphere,0.400000,0.500000,0.100000,"
    assert lines[6] == "data/test/img_5.npy,vort,no_sub,0.500000,0.100000,0.400000,"
    assert len(lines) == 7
    with pytest.raises(ValueError, match="files"):
        write_predictions_csv(tmp_path / "q.csv", FILES[:5], TARGET, PROBS, NAMES)


def test_write_classification_report(tmp_path):
    out = tmp_path / "report"
    summary = write_classification_report(out, PROBS, TARGET, FILES, NAMES)
    for name in ("confusion_matrix.png", "roc_curve.png"):
        assert _is_png(out / name), name
    stored = json.loads((out / "metrics.json").read_text())
    assert set(stored) == {
        "accuracy",
        "auc_micro",
        "auc_macro",
        "auc_per_class",
        "confusion_matrix",
        "n",
        "ci95",
    }
    assert stored == summary
    ci95 = stored["ci95"]
    assert set(ci95) == {"accuracy", "auc_micro", "auc_macro", "auc_per_class"}
    assert set(ci95["auc_per_class"]) == set(NAMES)
    for name in ("accuracy", "auc_micro", "auc_macro"):
        lo, hi = ci95[name]
        assert 0 <= lo <= stored[name] <= hi <= 1, name
    lo, hi = ci95["auc_per_class"]["sphere"]
    assert 0 <= lo <= 0.75 <= hi <= 1
    # Seeded: the same report again gives the same intervals; another seed, others.
    again = write_classification_report(tmp_path / "again", PROBS, TARGET, FILES, NAMES)
    assert again["ci95"] == ci95
    other = write_classification_report(tmp_path / "other", PROBS, TARGET, FILES, NAMES, seed=1)
    assert other["ci95"] != ci95
    assert stored["accuracy"] == 0.5 and stored["n"] == 6
    assert stored["auc_macro"] == pytest.approx(0.8125, abs=1e-6)
    assert stored["auc_per_class"]["sphere"] == pytest.approx(0.75, abs=1e-6)
    assert stored["confusion_matrix"] == [[1, 1, 0], [0, 1, 1], [1, 0, 1]]
    md = (out / "metrics.md").read_text()
    assert f"| accuracy | 0.5000 [{ci95['accuracy'][0]:.4f}, {ci95['accuracy'][1]:.4f}] |" in md
    assert "| auc_macro | 0.8125 [" in md
    assert "| auc_per_class/vort | 0.8125 [" in md
    assert "ci95" not in md
    assert "| **sphere** | 0 | 1 | 1 |" in md
    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6
    assert rows[3] == {
        "path": "data/test/img_3.npy",
        "label": "sphere",
        "prediction": "vort",
        "p_no_sub": "0.100000",
        "p_sphere": "0.200000",
        "p_vort": "0.700000",
        "axion_mass": "",
    }


def test_classification_report_absent_class_writes_null(tmp_path):
    summary = write_classification_report(tmp_path, PROBS[:4], TARGET[:4], FILES[:4], NAMES)
    assert math.isnan(summary["auc_per_class"]["vort"])
    stored = json.loads((tmp_path / "metrics.json").read_text())
    assert stored["auc_per_class"]["vort"] is None
    assert stored["auc_macro"] == pytest.approx((1.0 + 0.625) / 2)
    # No image of vort: no interval for its AUC either.
    assert stored["ci95"]["auc_per_class"]["vort"] == [None, None]
    assert stored["ci95"]["auc_macro"][0] is not None
    assert "| auc_per_class/vort | nan [nan, nan] |" in (tmp_path / "metrics.md").read_text()


def sr_outputs(n: int = 40) -> list[dict[str, torch.Tensor]]:
    """`predict_step`-like outputs in two batches: the model 2 dB and 0.02 SSIM above bicubic
    on every image; images 0 and 1 with an empty arc mask; model flux ratio 1.1 or 0.9."""
    gen = torch.Generator().manual_seed(0)
    psnr = 30 + torch.rand(n, generator=gen, dtype=torch.float64)
    ssim = 0.8 + 0.1 * torch.rand(n, generator=gen, dtype=torch.float64)
    arc = torch.arange(n, dtype=torch.float64)
    arc[:2] = math.nan
    flux = torch.where(torch.arange(n) % 2 == 0, 1.1, 0.9).double()
    model = {"mse": 10 ** (-psnr / 10), "psnr": psnr, "ssim": ssim}
    model |= {"psnr_arc": arc, "ssim_arc": arc / n, "flux_ratio": flux}
    bicubic = {"mse": 10 ** (-(psnr - 2) / 10), "psnr": psnr - 2, "ssim": ssim - 0.02}
    bicubic |= {"psnr_arc": arc - 1, "ssim_arc": arc / n - 0.1, "flux_ratio": flux - 0.05}
    one = model | {f"bicubic_{k}": v for k, v in bicubic.items()}
    half = n // 2
    return [{k: v[:half] for k, v in one.items()}, {k: v[half:] for k, v in one.items()}]


def test_superres_report_science_metrics_and_intervals(tmp_path):
    outputs = sr_outputs()
    report = write_superres_report(tmp_path, outputs, [], arc_threshold=0.2)
    stored = json.loads((tmp_path / "metrics.json").read_text())
    assert stored == report
    science = {"psnr_arc", "ssim_arc", "flux_ratio", "flux_rel_error"}
    assert set(report) == {
        "mse", "psnr", "ssim", "n", "bicubic", "psnr_gain", "ssim_gain", "arc_empty",
        "arc_threshold", "ci95", *science,
    }  # fmt: skip
    assert set(report["bicubic"]) == {"mse", "psnr", "ssim", *science}
    assert report["n"] == 40 and report["arc_empty"] == 2 and report["arc_threshold"] == 0.2
    # Means skip the empty masks: images 2..39.
    assert report["psnr_arc"] == pytest.approx(sum(range(2, 40)) / 38)
    assert report["bicubic"]["psnr_arc"] == pytest.approx(sum(range(2, 40)) / 38 - 1)
    assert report["flux_ratio"] == pytest.approx(1.0)
    assert report["flux_rel_error"] == pytest.approx(0.1)
    assert report["bicubic"]["flux_ratio"] == pytest.approx(0.95)
    assert report["bicubic"]["flux_rel_error"] == pytest.approx(0.1)  # 0.05 and 0.15
    assert report["psnr_gain"] == pytest.approx(2.0)
    assert report["ssim_gain"] == pytest.approx(0.02)

    ci95 = report["ci95"]
    assert set(ci95) == {"psnr", "ssim", "psnr_gain", "ssim_gain"}
    for name in ("psnr", "ssim"):
        lo, hi = ci95[name]
        assert lo < report[name] < hi
    # The same gain on every image: paired resamples leave no spread at all.
    assert ci95["psnr_gain"] == pytest.approx([2.0, 2.0])
    assert ci95["ssim_gain"] == pytest.approx([0.02, 0.02])
    md = (tmp_path / "metrics.md").read_text()
    assert f"| psnr | {report['psnr']:.4f} [{ci95['psnr'][0]:.4f}, {ci95['psnr'][1]:.4f}] |" in md
    assert "| arc_empty | 2 |" in md and "| bicubic/flux_ratio | 0.9500 |" in md

    with open(tmp_path / "per_image.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 40
    assert list(rows[0])[:7] == [
        "file", "mse", "psnr", "ssim", "bicubic_mse", "bicubic_psnr", "bicubic_ssim"
    ]  # fmt: skip
    assert rows[0]["psnr_arc"] == "nan" and rows[5]["psnr_arc"] == "5"
    assert rows[0]["flux_ratio"] == "1.1" and rows[1]["bicubic_flux_ratio"] == "0.85"


def test_print_metrics_table_keeps_a_long_title_on_one_line():
    # As in a log file: Rich's console is 80 columns wide when stdout is not a terminal.
    console = Console(record=True, width=80)
    title = "classification: test metrics of the best checkpoint, " + "/data/" * 10 + "test"
    print_metrics_table({"accuracy": 0.5}, title=title, console=console)
    lines = console.export_text().splitlines()
    assert lines[0] == title and "0.5000" in lines[4]
