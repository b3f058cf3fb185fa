"""Multiruns end in a report: one row per configuration, seeds pooled, failures recorded."""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT


def multirun(tmp_path: Path, root: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "train.py", "-m", f"data.root={root}", "data.image_size=32",
         "data.batch_size=8", "model=mobilenet_v3_small", "model.pretrained=none", "trainer=cpu",
         "logger=csv", f"paths.data_dir={tmp_path / 'data'}",
         f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def read_report(sweep: Path) -> dict[str, dict[str, str]]:
    with open(sweep / "report.csv") as fh:
        return {row["configuration"]: row for row in csv.DictReader(fh)}


@pytest.mark.slow
def test_sweep_report_pools_seeds(classification_root: Path, tmp_path: Path) -> None:
    proc = multirun(
        tmp_path, classification_root, "debug=limit", "trainer.max_epochs=1",
        "optimizer.lr=0.001,0.01", "seed=1,2",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = tmp_path / "sweep"
    results = {job: json.loads((sweep / job / "results.json").read_text()) for job in "0123"}
    for job, saved in results.items():
        assert Path(saved["config"]).parent == sweep / job  # each job its own folder
    rows = read_report(sweep)
    assert set(rows) == {"optimizer.lr=0.001", "optimizer.lr=0.01"}
    for lr, jobs in (("0.001", "01"), ("0.01", "23")):
        row = rows[f"optimizer.lr={lr}"]
        values = [results[j]["best_value"] for j in jobs]
        assert int(row["seeds"]) == 2 and row["status"] == "2 ok"
        assert float(row["best_mean"]) == pytest.approx(statistics.fmean(values))
        assert float(row["best_std"]) == pytest.approx(statistics.stdev(values))
    report = (sweep / "report.md").read_text()
    assert "| `optimizer.lr=0.01` | 2 |" in report and (sweep / "report.png").is_file()


@pytest.mark.slow
def test_a_failing_job_is_reported_and_the_others_run(
    classification_root: Path, tmp_path: Path
) -> None:
    proc = multirun(
        tmp_path, classification_root, "debug=fdr", "model.input_adapter=sideways,repeat"
    )
    assert proc.returncode == 1  # the sweep says something failed...
    sweep = tmp_path / "sweep"
    assert (sweep / "1" / "results.json").is_file()  # ...after running the other job
    assert "LensexpError: model.input_adapter=sideways" in (sweep / "0" / "error.txt").read_text()
    rows = read_report(sweep)
    assert rows["model.input_adapter=sideways"]["status"] == "1 failed"
    assert (
        "model.input_adapter=sideways: not a valid value"
        in rows["model.input_adapter=sideways"]["errors"]
    )  # noqa: E501
    assert rows["model.input_adapter=repeat"]["status"] == "1 ok"

    # The same report from the folder alone, e.g. after an interrupted sweep.
    (sweep / "report.csv").unlink()
    redo = subprocess.run(
        [sys.executable, "-m", "lensexp.report", str(sweep)], capture_output=True, text=True
    )
    assert redo.returncode == 0, redo.stderr
    assert read_report(sweep) == rows


def test_report_of_a_folder_without_jobs_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lensexp.report", str(tmp_path)], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"lensexp: error: {tmp_path}: no job folders (none holds .hydra/overrides.yaml); give the "
        f"folder of a `python train.py -m ...` sweep, e.g. outputs/train/multiruns/<stamp>."
    ]
