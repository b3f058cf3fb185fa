"""The axion mass of Model I-IV `[image, mass]` files (and of the simulator's manifest) is kept:
read, cached, given to the report's predictions.csv, and the target of the axion-mass
regression (`model=axion_regression`)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from lensexp.data import cache
from lensexp.data.classification import LensClassificationDataModule
from lensexp.data.npy import read_image_and_mass
from lensexp.data.regression import AxionMassDataModule
from lensexp.errors import LensexpError
from lensexp.metrics.regression import regression_summary
from lensexp.training import train
from tests.helpers import compose_cfg

MANIFEST_HEADER = ["file", "split", "class", "seed", "index", "theta_E", "axion_mass"]


def save_object_array(path: Path, image: np.ndarray, mass: float) -> None:
    """The public Model I-IV axion file: np.save of a 2-element object array [image, mass]."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.array([image, mass], dtype=object), allow_pickle=True)


def axion_folder(root: Path, n: int, size: int = 16) -> dict[str, float]:
    """ROOT/{train,val}/{no,vort}: plain `no` images, `[image, mass]` vort files with masses
    10**(-24 + k / n); returns {relative path: mass} of the vort files."""
    rng = np.random.default_rng(0)
    masses = {}
    for split in ("train", "val"):
        (root / split / "no").mkdir(parents=True, exist_ok=True)
        for k in range(n):
            image = rng.random((1, size, size)).astype(np.float32)
            np.save(root / split / "no" / f"no_{k}.npy", image)
            mass = 10.0 ** (-24.0 + 2.0 * k / n)
            rel = f"{split}/vort/vort_{k}.npy"
            save_object_array(root / rel, rng.random((size, size)), mass)
            masses[rel] = mass
    return masses


def test_object_array_keeps_its_mass(tmp_path: Path):
    image = np.arange(16.0).reshape(4, 4)
    save_object_array(tmp_path / "a.npy", image, 1e-23)
    read, mass = read_image_and_mass(tmp_path / "a.npy")
    assert mass == 1e-23
    np.testing.assert_array_equal(read[0], image.astype(np.float32))
    np.save(tmp_path / "b.npy", image[None].astype(np.float32))
    assert math.isnan(read_image_and_mass(tmp_path / "b.npy")[1])


def test_pack_stores_masses_and_its_key_follows_the_format(tmp_path: Path, monkeypatch):
    files = []
    for k, mass in enumerate((1e-23, None, 3e-24)):
        path = tmp_path / f"{k}.npy"
        if mass is None:
            np.save(path, np.ones((1, 4, 4), np.float32))
        else:
            save_object_array(path, np.ones((4, 4)), mass)
        files.append(path)
    pack = cache.packed_array(files, tmp_path / "cache", "train", (1, 4, 4))
    masses = cache.pack_masses(pack)
    assert masses[0] == 1e-23 and math.isnan(masses[1]) and masses[2] == 3e-24
    # The packed content changed with the masses: a pack of the previous format has another key.
    key = cache.fingerprint(files, (1, 4, 4), "none")
    monkeypatch.setattr(cache, "PACK_FORMAT", 2)
    assert cache.fingerprint(files, (1, 4, 4), "none") != key
    monkeypatch.undo()
    # A pack whose masses are gone is rebuilt, not read without them.
    cache.mass_path(pack).unlink()
    assert cache.packed_array(files, tmp_path / "cache", "train", (1, 4, 4)) == pack
    assert cache.pack_masses(pack)[2] == 3e-24


def test_masses_from_files_and_from_the_manifest(tmp_path: Path):
    root = tmp_path / "data"
    masses = axion_folder(root, 3)
    # A simulated-style set: the manifest gives a plain-array vort image its mass, and does not
    # override an [image, mass] file's own.
    np.save(root / "val" / "vort" / "plain.npy", np.zeros((1, 16, 16), np.float32))
    with open(root / "manifest.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(MANIFEST_HEADER)
        writer.writerow(["val/vort/plain.npy", "val", "vort", 0, 9, 1.5, 5e-23])
        writer.writerow(["val/vort/vort_0.npy", "val", "vort", 0, 0, 1.2, 7e-22])
        writer.writerow(["val/no/no_0.npy", "val", "no", 0, 0, 1.1, ""])
    dm = LensClassificationDataModule(root=str(root), cache_dir=str(tmp_path / "c"),
                                      test_fraction=0)  # fmt: skip
    dm.setup("validate")
    meta = dm.metadata("val")
    rel_paths = [f.relative_to(root).as_posix() for f in dm.files["val"]]
    got = dict(zip(rel_paths, meta.axion_mass, strict=True))
    assert got["val/vort/plain.npy"] == 5e-23
    for rel, mass in masses.items():
        if rel.startswith("val/"):
            assert got[rel] == mass
    assert all(math.isnan(got[f"val/no/no_{k}.npy"]) for k in range(3))
    theta = dict(zip(got, meta.manifest["theta_E"], strict=True))
    assert theta["val/no/no_0.npy"] == 1.1 and math.isnan(theta["val/no/no_1.npy"])
    assert "class" not in meta.manifest  # not numeric


def test_regression_targets_and_missing_mass(tmp_path: Path):
    root = tmp_path / "data"
    masses = axion_folder(root, 4)
    dm = AxionMassDataModule(root=str(root), classes=["vort"], cache_dir=str(tmp_path / "c"),
                             test_fraction=0)  # fmt: skip
    dm.setup("fit")
    for split in ("train", "val"):
        ds = dm.datasets[split]
        for i, path in enumerate(dm.files[split]):
            target = ds[i][-1]
            assert target.dtype == np.float32
            expected = math.log10(masses[path.relative_to(root).as_posix()])
            assert float(target) == pytest.approx(expected, abs=1e-5)
    # split=all: every vort image under the root; the `no` folders are left out.
    every = AxionMassDataModule(root=str(root), classes=["vort"], cache_dir=str(tmp_path / "c"),
                                predict_split="all")  # fmt: skip
    every.setup("predict")
    assert sorted(f.relative_to(root).as_posix() for f in every.files["all"]) == sorted(masses)
    # The `no` folder has no masses: one line naming a file and the remedy.
    dm = AxionMassDataModule(root=str(root), classes=["no", "vort"],
                             cache_dir=str(tmp_path / "c"), test_fraction=0)  # fmt: skip
    with pytest.raises(LensexpError, match=r"no_0\.npy: no axion mass .*data\.classes"):
        dm.setup("fit")


def test_regression_summary_by_hand():
    s = regression_summary([1.0, 2.0, 3.0], [1.0, 2.0, 4.0], n_resamples=50)
    assert s["mae"] == pytest.approx(1 / 3)
    assert s["rmse"] == pytest.approx(math.sqrt(1 / 3))
    # 1 - SSE / SST: SST = (16 + 1 + 25) / 9 about the mean 7/3
    assert s["r2"] == pytest.approx(1 - 1 / (42 / 9))
    assert s["n"] == 3 and len(s["ci95"]["mae"]) == 2
    assert math.isnan(regression_summary([1.0, 2.0], [3.0, 3.0], n_resamples=5)["r2"])


def test_axion_regression_trains_through_train(tmp_path: Path):
    root = tmp_path / "data"
    masses = axion_folder(root, 6, size=32)
    cfg = compose_cfg(tmp_path, [
        "model=axion_regression", f"data.root={root}", "debug=fdr", "model.backbone=resnet18",
        "model.pretrained=none", "trainer=cpu", "logger=csv", "data.test_fraction=0",
        f"paths.cache_dir={tmp_path / 'cache'}",
    ])  # fmt: skip
    results = train(cfg)
    assert results["task"] == "regression" and results["monitor"] == "val/mae"
    out = Path(cfg.paths.output_dir) / "best_val"
    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6  # every val vort image, no `no` image
    for row in rows:
        rel = Path(row["path"]).relative_to(root).as_posix()
        assert float(row["axion_mass"]) == pytest.approx(masses[rel], rel=1e-5)
        assert float(row["log10_mass"]) == pytest.approx(math.log10(masses[rel]), abs=1e-5)
        error = float(row["log10_mass_pred"]) - float(row["log10_mass"])
        assert float(row["error"]) == pytest.approx(error, abs=1e-5)
    metrics = json.loads((out / "metrics.json").read_text())
    errors = [abs(float(r["error"])) for r in rows]
    assert metrics["mae"] == pytest.approx(np.mean(errors), abs=1e-5)
    assert (out / "predicted_vs_true.png").stat().st_size > 0
