"""Metrics against the physics (lensexp.metrics.physics) on a fixture whose answer is known by
hand, and the files the classification report writes from a manifest."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from lensexp.data.manifest import FileMetadata
from lensexp.metrics.physics import binary_auc, physics_table
from lensexp.reporting.classification import write_classification_report

NAMES = ["no", "sphere", "vort"]


def fixture() -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """4 `no`, 8 `sphere` (subhalo mass 1..8 x 1e9 Msun), 2 `vort` images. The model is right
    on the sphere images exactly in the high-mass bin (the two heaviest), right on every `no`
    and `vort` image. theta_E: 1.0 for the `no` images, 2.0 for the rest."""
    no_sphere = [0.2, 0.05, 0.3, 0.1]
    probs = (
        [[0.6, s, 0.4 - s] for s in no_sphere]
        + [[0.8, 0.1, 0.1]] * 6  # light sphere images: predicted no
        + [[0.1, 0.8, 0.1]] * 2  # heavy ones: predicted sphere
        + [[0.1, 0.1, 0.8]] * 2
    )
    labels = np.array([0] * 4 + [1] * 8 + [2] * 2)
    nan = math.nan
    columns = {
        "subhalo_mass_total": np.array([0.0] * 4 + [k * 1e9 for k in range(1, 9)] + [nan] * 2),
        "n_subhalos": np.array([0] * 4 + [10] * 8 + [100] * 2, dtype=float),
        "axion_mass": np.array([nan] * 12 + [1e-23, 1e-23]),
        "theta_E": np.array([1.0] * 4 + [2.0] * 10),
        "source_magnitude": np.full(14, nan),  # not recorded: left out
    }
    return columns, np.array(probs), labels


def test_binary_auc_is_the_mann_whitney_statistic():
    # (0.9 > 0.1) + (0.9 > 0.8) + (0.8 > 0.1) + (0.8 = 0.8) / 2, over 4 pairs
    assert binary_auc([0.9, 0.8], [0.1, 0.8]) == 0.875
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 5, 30) / 4, rng.integers(0, 5, 20) / 4  # many ties
    expected = roc_auc_score([1] * 30 + [0] * 20, np.concatenate([pos, neg]))
    assert binary_auc(pos, neg) == pytest.approx(expected, abs=1e-12)
    assert math.isnan(binary_auc([], [0.5]))


def test_physics_table_matches_the_hand_computation():
    columns, probs, labels = fixture()
    rows = physics_table(columns, probs, labels, NAMES)
    by = {}
    for r in rows:
        by.setdefault(r["quantity"], []).append(r)
    assert list(by) == ["subhalo_mass_total", "n_subhalos", "axion_mass", "theta_E"]

    mass = by["subhalo_mass_total"]
    assert [r["bin"] for r in mass] == [0, 1, 2, 3]
    assert [r["n"] for r in mass] == [2, 2, 2, 2]
    assert all(r["population"] == "sphere" for r in mass)
    # Right exactly on the heaviest bin.
    assert [r["accuracy"] for r in mass] == [0.0, 0.0, 0.0, 1.0]
    # p_sphere 0.1 against the `no` images' 0.2, 0.05, 0.3, 0.1: (1 + 0.5) / 4; 0.8 beats all.
    assert [r["auc"] for r in mass] == [0.375, 0.375, 0.375, 1.0]
    # Edges: log10 quantiles of 1..8 (x 1e9) at positions 0, 1.75, 3.5, 5.25, 7.
    logs = np.log10(np.arange(1, 9) * 1e9)
    q = [logs[0], logs[1] + 0.75 * (logs[2] - logs[1]), (logs[3] + logs[4]) / 2,
         logs[5] + 0.25 * (logs[6] - logs[5]), logs[7]]  # fmt: skip
    assert [r["lo"] for r in mass] == pytest.approx([10**x for x in q[:-1]], rel=1e-12)
    assert [r["hi"] for r in mass] == pytest.approx([10**x for x in q[1:]], rel=1e-12)

    for quantity, note in (("n_subhalos", "does not vary (all 10)"),
                           ("axion_mass", "does not vary (all 1e-23)")):  # fmt: skip
        (row,) = by[quantity]
        assert row["bin"] is None and row["note"] == note

    # theta_E over all images: quantiles of four 1.0 and ten 2.0 are 1, 1.25, 2, 2, 2.
    low, high = by["theta_E"]
    assert (low["lo"], low["hi"], high["lo"], high["hi"]) == (1.0, 1.25, 1.25, 2.0)
    assert (low["n"], low["accuracy"]) == (4, 1.0)
    assert math.isnan(low["auc"]) and low["note"] == "one class only: no AUC"
    # 8 sphere + 2 vort: 2 + 2 right; macro AUC of sphere ((6*2*0.5 + 2*2) / 16 = 0.625) and
    # vort (1.0); `no` has no positive in the bin.
    assert (high["n"], high["accuracy"]) == (10, 0.4)
    assert high["auc"] == pytest.approx((0.625 + 1.0) / 2, abs=1e-12)


def test_a_class_missing_from_the_names_is_said():
    columns, probs, labels = fixture()
    rows = physics_table(columns, probs[:, 1:], labels - 1, ["cdm", "axion"])
    notes = {r["quantity"]: r["note"] for r in rows if r["bin"] is None}
    assert notes["subhalo_mass_total"] == "no `sphere` class in data.classes"
    assert notes["axion_mass"] == "no `vort` class in data.classes"


def test_report_writes_the_physics_files_with_a_manifest(tmp_path: Path):
    columns, probs, labels = fixture()
    files = [f"val/{NAMES[y]}/{i}.npy" for i, y in enumerate(labels)]
    masses = columns.pop("axion_mass")
    metadata = FileMetadata(masses, columns)
    write_classification_report(tmp_path, probs, labels, files, NAMES, metadata=metadata,
                                n_resamples=20)  # fmt: skip
    with open(tmp_path / "physics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    heavy = [r for r in rows if r["quantity"] == "subhalo_mass_total" and r["bin"] == "3"]
    assert heavy[0]["accuracy"] == "1" and heavy[0]["auc"] == "1" and heavy[0]["n"] == "2"
    # The axion mass of the metadata (not the manifest's) is the one binned.
    assert any(r["quantity"] == "axion_mass" for r in rows)
    assert (tmp_path / "physics.png").stat().st_size > 0
    assert "| subhalo_mass_total | sphere | 3 |" in (tmp_path / "physics.md").read_text()
    assert "## Metrics against the physics" in (tmp_path / "metrics.md").read_text()
    with open(tmp_path / "predictions.csv", newline="") as fh:
        written = [r["axion_mass"] for r in csv.DictReader(fh)]
    assert written == [""] * 12 + ["1e-23", "1e-23"]


def test_no_manifest_no_physics_files(tmp_path: Path):
    _, probs, labels = fixture()
    files = [f"{i}.npy" for i in range(len(labels))]
    metadata = FileMetadata(np.full(len(labels), math.nan), None)
    write_classification_report(tmp_path, probs, labels, files, NAMES, metadata=metadata,
                                n_resamples=20)  # fmt: skip
    assert not (tmp_path / "physics.csv").exists()
    assert "physics" not in (tmp_path / "metrics.md").read_text()
