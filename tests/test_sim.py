"""Tests of the lensing simulator (lensexp.sim): physics sanity, layout, determinism, resume, errors."""

from __future__ import annotations

import csv
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lensexp.errors import LensexpError
from lensexp.sim import (
    Simulator,
    einstein_radius,
    load_preset,
    make_classification_dataset,
    make_superres_dataset,
)
from lensexp.sim.dataset import classification_plan
from lensexp.sim.physics import sample_system
from lensexp.sim.render import Camera

REPO = Path(__file__).resolve().parent.parent
SMALL = {"instrument.num_pix": 40, "instrument.pixel_scale": 0.125}  # same field, 14x fewer pixels


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.npy"))}


def _manifest(root: Path) -> list[dict]:
    with open(root / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _radial_profile(image: np.ndarray, pixel_scale: float) -> tuple[np.ndarray, np.ndarray]:
    n = image.shape[0]
    c = (np.arange(n) - (n - 1) / 2) * pixel_scale
    r = np.hypot(*np.meshgrid(c, c))
    edges = np.arange(0.0, 3.5, 0.05)
    which = np.digitize(r.ravel(), edges)
    prof = np.array([image.ravel()[which == k].mean() for k in range(1, len(edges))])
    return edges[:-1] + 0.025, prof


# ----------------------------------------------------------------------------- physics


def test_einstein_radius_matches_independent_formula():
    from astropy import units as u
    from astropy.constants import G, M_sun, c
    from astropy.cosmology import FlatLambdaCDM

    cosmo = FlatLambdaCDM(H0=70, Om0=0.3, Ob0=0.05)
    d_l = cosmo.angular_diameter_distance(0.5)
    d_s = cosmo.angular_diameter_distance(1.0)
    d_ls = cosmo.angular_diameter_distance_z1z2(0.5, 1.0)
    theta = np.sqrt(4 * G * 1e12 * M_sun / c**2 * d_ls / (d_l * d_s)).decompose().value
    expected = theta * u.rad.to(u.arcsec)
    got = float(einstein_radius(1e12, load_preset("model_i")))
    assert got == pytest.approx(expected, rel=1e-3)
    assert got == pytest.approx(1.66, abs=0.01)


def test_ring_peaks_at_einstein_radius():
    # A centred source makes a full Einstein ring; its brightest radius is theta_E.
    cfg = load_preset("model_i", {"source.center_x": 0.0, "source.center_y": 0.0})
    sim = Simulator(cfg, "classification")
    image, row = sim.image("no", seed=0, index=0)
    radius, prof = _radial_profile(image[0], 0.05)
    assert abs(radius[prof.argmax()] - row["theta_E"]) < 0.1
    # With the recipe's random source positions the mean profile still peaks there.
    total = sum(
        _radial_profile(sim_img[0], 0.05)[1]
        for sim_img in (
            Simulator(load_preset("model_i"), "classification").image("no", 0, i)[0]
            for i in range(6)
        )
    )
    assert abs(radius[total.argmax()] - row["theta_E"]) < 0.2


@pytest.mark.parametrize("cls", ["sphere", "vort"])
def test_substructure_changes_the_image_near_the_ring(cls):
    cfg = load_preset("model_i", {"instrument.noise": "none"})
    camera = Camera(cfg["instrument"])

    def model(kind):  # the same generator states for every class
        system = sample_system(kind, cfg, np.random.default_rng(7), np.random.default_rng(8))
        return camera.model_image(system), system

    smooth, base = model("no")
    lumpy, system = model(cls)
    assert system.kwargs_source == base.kwargs_source and system.kwargs_halo == base.kwargs_halo
    diff = (lumpy - smooth) / smooth.max()
    assert np.abs(diff).max() > 1e-3  # the subhalos are visible
    n = diff.shape[0]
    c = (np.arange(n) - (n - 1) / 2) * 0.05
    r = np.hypot(*np.meshgrid(c, c))
    near_ring = np.abs(r - base.kwargs_halo["theta_E"]) < 0.6
    assert (diff[near_ring] ** 2).sum() / (diff**2).sum() > 0.95


def test_subhalo_and_vortex_draws_follow_the_settings():
    cfg = load_preset("model_i", {"vort.log10_axion_mass": [-23.5, -23.0]})
    sim = Simulator(cfg, "classification")
    for index in range(5):
        vort = sim.system("vort", 0, index)[0].sub
        assert 10**-23.5 <= vort.axion_mass <= 10**-23.0
        assert vort.count == 100 and vort.mass.sum() == pytest.approx(3e10)
        assert vort.half_length == pytest.approx(0.06e-22 / (2 * vort.axion_mass))
        sphere = sim.system("sphere", 0, index)[0].sub
        assert sphere.count == 25
        assert sphere.mass.min() >= 1e6 and sphere.mass.max() <= 1e10
        assert np.all(
            (np.hypot(sphere.x, sphere.y) >= 0.25) & (np.hypot(sphere.x, sphere.y) <= 2.0)
        )
    default = Simulator(load_preset("model_i"), "classification")
    axion = [default.describe("vort", 0, i)["axion_mass"] for i in range(20)]
    assert all(1e-24 <= m <= 1e-22 for m in axion) and max(axion) / min(axion) > 3


def test_randomised_ranges_and_observation_presets():
    cfg = load_preset(
        "model_i",
        {"halo.e1": [-0.2, 0.2], "shear.gamma2": [-0.05, 0.05], "source.R_sersic": [0.1, 0.4]},
    )
    rows = [Simulator(cfg, "classification").describe("no", 0, i) for i in range(4)]
    assert len({r["lens_e1"] for r in rows}) == 4
    assert all(-0.2 <= r["lens_e1"] <= 0.2 and 0.1 <= r["source_R_sersic"] <= 0.4 for r in rows)
    for name, scale in (("model_ii", 0.101), ("model_iii", 0.08)):
        sim = Simulator(load_preset(name), "classification")
        assert sim.camera.pixel_scale == pytest.approx(scale)
        image, row = sim.image("vort", 0, 0)
        assert image.shape == (1, 64, 64) and image.dtype == np.float32
        assert image.min() == 0.0 and image.max() == 1.0
        assert row["source_magnitude"] == 20.0


# ----------------------------------------------------------------------------- layout


def test_classification_layout_and_manifest(tmp_path):
    out = make_classification_dataset(tmp_path / "cls", 5, num_workers=1, progress=False)
    for cls in ("no", "sphere", "vort"):
        train = sorted((out / "train" / cls).glob("*.npy"))
        val = sorted((out / "val" / cls).glob("*.npy"))
        test = sorted((out / "test" / cls).glob("*.npy"))
        assert (len(train), len(val), len(test)) == (3, 1, 1)  # 60/20/20 (the defaults)
        assert [p.name for p in val + test] == [f"{cls}_000002.npy", f"{cls}_000004.npy"]
        for path in train + val + test:
            arr = np.load(path)
            assert arr.shape == (1, 150, 150) and arr.dtype == np.float32
            assert arr.min() == 0.0 and arr.max() == 1.0
    rows = _manifest(out)
    assert len(rows) == 15
    assert {(r["split"], r["class"]) for r in rows} >= {("val", "vort"), ("train", "no"),
                                                        ("test", "sphere")}  # fmt: skip
    for r in rows:
        assert (out / r["file"]).is_file()
        assert r["seed"] == "0" and float(r["theta_E"]) == pytest.approx(1.66, abs=0.01)
        assert int(r["n_subhalos"]) == {"no": 0, "sphere": 25, "vort": 100}[r["class"]]
        assert (r["axion_mass"] != "") == (r["class"] == "vort")
    # Nothing but the dataset, the manifest and the hidden state folder.
    assert {p.name for p in out.iterdir()} == {"train", "val", "test", "manifest.csv", ".sim"}


def _splits(n: int, val_fraction: float, test_fraction: float) -> dict[str, set[tuple]]:
    """The (class, index) pairs the plan puts in each split, checking each file's folder."""
    splits: dict[str, set[tuple]] = {"train": set(), "val": set(), "test": set()}
    for item in classification_plan(n, val_fraction, test_fraction):
        assert item.files == (f"{item.split}/{item.cls}/{item.cls}_{item.index:06d}.npy",)
        splits[item.split].add((item.cls, item.index))
    return splits


@pytest.mark.parametrize(
    ("n", "val_fraction", "test_fraction", "sizes"),
    [
        (600, 0.2, 0.2, (360, 120, 120)),  # the default dataset
        (10, 0.2, 0.2, (6, 2, 2)),
        (7, 0.1, 0.1, (6, 1, 0)),  # floor(7 * 0.2) = 1 held out, in val/
        (1000, 0.15, 0.1, (750, 150, 100)),
        (100, 0.0, 0.3, (70, 0, 30)),
        (12500, 0.2, 0.0, (10000, 2500, 0)),  # the public Model I sizes, no test/
    ],
)
def test_three_disjoint_splits_of_the_right_sizes(n, val_fraction, test_fraction, sizes):
    splits = _splits(n, val_fraction, test_fraction)
    assert tuple(len(splits[s]) // 3 for s in ("train", "val", "test")) == sizes
    assert sum(len(v) for v in splits.values()) == 3 * n  # each image in exactly one split
    # Asking for more images never moves an earlier one to another split.
    grown = _splits(2 * n + 3, val_fraction, test_fraction)
    assert all(splits[s] <= grown[s] for s in splits)


def test_test_fraction_0_is_the_two_split_layout_and_a_changed_one_is_named(tmp_path):
    # Every 5th image in val/, as the simulator wrote before test/ existed.
    splits = _splits(20, 0.2, 0.0)
    assert {i for _, i in splits["val"]} == {4, 9, 14, 19} and not splits["test"]
    kw = dict(overrides=SMALL, progress=False, num_workers=1)
    out = make_classification_dataset(tmp_path / "two", 2, test_fraction=0, **kw)
    assert not (out / "test").exists()
    _one_line_error(
        make_classification_dataset, out, 2, match="test_fraction: None then, 0.2 now", **kw
    )


def test_superres_layout_and_degradation(tmp_path):
    out = make_superres_dataset(
        tmp_path / "sr", 3, num_workers=1, progress=False, overrides={"superres.blur_sigma": 0.0}
    )
    hr_names = sorted(p.name for p in (out / "HR").glob("*.npy"))
    assert hr_names == sorted(p.name for p in (out / "LR").glob("*.npy")) and len(hr_names) == 3
    for name in hr_names:
        hr, lr = np.load(out / "HR" / name), np.load(out / "LR" / name)
        assert hr.shape == (1, 150, 150) and lr.shape == (1, 75, 75)
        assert hr.dtype == lr.dtype == np.float32
        # downsample/area with no blur or noise: LR is the 2x2 mean of HR
        np.testing.assert_allclose(lr[0], hr[0].reshape(75, 2, 75, 2).mean(axis=(1, 3)), atol=1e-6)
    assert [r["file"] for r in _manifest(out)] == hr_names
    out2 = make_superres_dataset(
        tmp_path / "sr2", 2, preset="superres_render", num_workers=1, progress=False
    )
    lr = np.load(out2 / "LR" / "000000.npy")
    assert lr.shape == (1, 75, 75) and lr.max() == 1.0
    assert float(_manifest(out2)[0]["lr_exposure_time"]) > 0


# ----------------------------------------------------------------------------- determinism


def test_bytes_identical_across_workers_and_shards(tmp_path):
    kw = dict(overrides=SMALL, progress=False, seed=3)
    one = make_classification_dataset(tmp_path / "one", 5, num_workers=1, **kw)
    two = make_classification_dataset(tmp_path / "two", 5, num_workers=2, **kw)
    shards = tmp_path / "shards"
    for shard in (2, 0, 1):
        make_classification_dataset(shards, 5, num_workers=1, shard=shard, num_shards=3, **kw)
        assert (shards / "manifest.csv").exists() == (shard == 1)  # only once all shards are done
    reference = _files(one)
    assert len(reference) == 15 and "test/vort/vort_000004.npy" in reference
    assert _files(two) == reference and _files(shards) == reference
    manifest = (one / "manifest.csv").read_bytes()
    assert (two / "manifest.csv").read_bytes() == manifest
    assert (shards / "manifest.csv").read_bytes() == manifest
    # Another seed gives other images.
    other = make_classification_dataset(
        tmp_path / "other", 1, num_workers=1, overrides=SMALL, progress=False, seed=4
    )
    assert _files(other)["train/no/no_000000.npy"] != reference["train/no/no_000000.npy"]


def test_resume_after_damage_and_growth(tmp_path):
    kw = dict(overrides=SMALL, progress=False, num_workers=1)
    out = make_classification_dataset(tmp_path / "d", 3, **kw)
    reference = _files(out)
    (out / "train/sphere/sphere_000001.npy").unlink()
    victim = out / "train/vort/vort_000000.npy"
    victim.write_bytes(victim.read_bytes()[:1000])  # truncated
    stale = out / "train/no/.no_000001.npy.1234abcd.tmp"  # what a killed run leaves behind
    stale.write_bytes(b"partial")
    (out / "manifest.csv").unlink()
    before = (out / "train/no/no_000000.npy").stat().st_mtime_ns
    make_classification_dataset(out, 3, **kw)
    assert _files(out) == reference
    assert not stale.exists() and len(_manifest(out)) == 9
    assert (out / "train/no/no_000000.npy").stat().st_mtime_ns == before  # complete: skipped
    # Asking for more keeps every earlier file and adds the rest.
    make_classification_dataset(out, 5, **kw)
    grown = _files(out)
    assert len(grown) == 15 and all(grown[k] == v for k, v in reference.items())
    assert len(_manifest(out)) == 15


@pytest.mark.slow
def test_killed_run_leaves_no_partial_files_and_resumes(tmp_path):
    out = tmp_path / "killed"
    code = (
        "from lensexp.sim import make_classification_dataset as m; "
        f"m({str(out)!r}, 40, num_workers=2, progress=False)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=_env(), start_new_session=True)
    try:
        deadline = time.monotonic() + 40
        while len(list(out.rglob("*.npy"))) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the run and its worker processes
        proc.wait()
    written = list(out.rglob("*.npy"))
    assert 6 <= len(written) < 120 and not (out / "manifest.csv").exists()
    for path in written:
        assert np.load(path).shape == (1, 150, 150)  # every final name is a complete file
    make_classification_dataset(out, 40, num_workers=2, progress=False)
    assert len(list(out.rglob("*.npy"))) == 120 and len(_manifest(out)) == 120
    assert not [p for p in out.rglob("*.tmp")]
    sim = Simulator(load_preset("model_i"), "classification")
    for name in ("train/no/no_000000.npy", "val/sphere/sphere_000037.npy",
                 "test/vort/vort_000039.npy"):  # fmt: skip
        cls, index = Path(name).stem.split("_")
        assert np.array_equal(np.load(out / name), sim.image(cls, 0, int(index))[0])


# ----------------------------------------------------------------------------- bad input


def _one_line_error(fn, *args, match: str, **kwargs) -> str:
    with pytest.raises(LensexpError, match=match) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_bad_counts_presets_and_settings(tmp_path):
    out = tmp_path / "x"
    mk = make_classification_dataset
    _one_line_error(mk, out, 2, preset="model_iv", match="unknown simulator preset 'model_iv'")
    _one_line_error(mk, out, 0, match="n_per_class=0: must be an integer >= 1")
    _one_line_error(mk, out, -3, match="n_per_class")
    _one_line_error(make_superres_dataset, out, 0, match="n_pairs=0: must be an integer >= 1")
    _one_line_error(mk, out, 2, overrides={"halo.ellipticity": 0.1}, match="halo.ellipticity")
    _one_line_error(mk, out, 2, overrides={"halo.e1": [0.3, 0.1]}, match="halo.e1")
    _one_line_error(mk, out, 2, overrides={"instrument.noise": "loud"}, match="instrument.noise")
    _one_line_error(mk, out, 2, val_fraction=1.0, match="val_fraction")
    _one_line_error(mk, out, 2, test_fraction=-0.1, match=r"test_fraction must be a number")
    _one_line_error(mk, out, 2, val_fraction=0.5, test_fraction=0.5, match="must stay below 1")
    _one_line_error(mk, out, 2, shard=2, num_shards=2, match="shard=2")
    _one_line_error(mk, out, 2, preset="superres_mild", match="super-resolution preset")
    _one_line_error(make_superres_dataset, out, 2, preset="model_i", match="no 'superres' section")
    assert not out.exists()  # nothing was written for any of these


@pytest.mark.parametrize(
    "overrides",
    [
        {"halo.e1": 0.3, "source": {"R_sersic": 0.2}, "vort": {}},  # dotted and nested keys mix
        {"halo": {"e1": 0.3}, "source.R_sersic": 0.2},
        {"halo.e1": np.float64(0.3), "source.R_sersic": 0.2},  # numpy floats become floats
    ],
)
def test_overrides_dotted_or_nested(overrides):
    cfg = load_preset("model_i", overrides)
    assert cfg["halo"]["e1"] == 0.3 and type(cfg["halo"]["e1"]) is float
    assert cfg["source"]["R_sersic"] == 0.2
    assert cfg["halo"]["e2"] == load_preset("model_i")["halo"]["e2"]  # the rest is kept


def test_preset_bases_and_free_form_instrument_settings():
    base, euclid = load_preset("model_i"), load_preset("model_ii")
    assert euclid["name"] == "model_ii" and euclid["cosmology"] == base["cosmology"]
    # An instrument with its own `type` replaces the base's instead of merging into it.
    assert "pixel_scale" not in euclid["instrument"] and euclid["instrument"]["num_pix"] == 64
    # Keys under instrument.settings go to lenstronomy as they are, even where the preset has
    # none yet; ranges stay lists, and a tuple becomes one.
    cfg = load_preset("model_i", {"instrument.settings.seeing": 0.2, "halo.e1": (-0.1, 0.1)})
    assert cfg["instrument"]["settings"] == {"seeing": 0.2} and cfg["halo"]["e1"] == [-0.1, 0.1]
    assert "settings" not in base["instrument"]


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"halo.ellipticity": 0.1}, "halo.ellipticity"),
        ({"halo": {"foo": 1}}, "halo.foo"),
        ({"halo.e1.x": 1}, "halo.e1.x"),  # below a number
        ({"halo.e1": {"x": 1}}, "halo.e1.x"),
        ({"superres.factor": 2}, "superres.factor"),  # a key of super-resolution presets only
        ({"instrument.settings": 0.2}, "instrument.settings"),
        ({"source.center_x.0": 0.1}, "source.center_x.0"),  # a range is one setting
        ({"source.center_x.a": 0.1}, "source.center_x.a"),
        ({"": 1}, ""),
        ({"halo..e1": 1}, "halo..e1"),
    ],
)
def test_unknown_override_keys_are_one_line_errors(overrides, key):
    msg = _one_line_error(load_preset, "model_i", overrides, match="unknown simulator setting")
    assert f"'{key}'" in msg and "conf/sim/presets/model_i.yaml" in msg


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"halo.mass": -1}, r"'halo\.mass' = -1: must be > 0"),
        ({"halo.mass": "heavy"}, r"'halo\.mass' = 'heavy': expected a finite number"),
        ({"halo.e1": {}}, r"'halo\.e1' = \{\}: expected a finite number"),
        ({"halo.e1": [0.1, 0.2, 0.3]}, r"'halo\.e1' = .*a number or a \[low, high\] pair"),
        ({"instrument.pixel_scale": [0.1, 0.2]}, r"'instrument\.pixel_scale' .*single number"),
        ({"instrument.num_pix": 2}, r"'instrument\.num_pix' = 2: expected an integer >= 4"),
        ({"z_source": 0.4}, r"z_source=0\.4 must be above z_lens=0\.5"),
        ({"source.magnitude": 20}, "exactly one of source.amp and source.magnitude"),
        ({"halo": 5}, "lacks the 'halo' section"),
        ({"halo.e1": object()}, "numbers, strings and lists only"),
    ],
)
def test_bad_override_values_are_one_line_errors(overrides, message):
    _one_line_error(load_preset, "model_i", overrides, match=message)


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    _one_line_error(
        make_classification_dataset, blocker / "data", 1, progress=False, match="not writable"
    )
    _one_line_error(make_classification_dataset, blocker, 1, progress=False, match="is a file")
    if os.geteuid() != 0:  # root ignores permission bits
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        _one_line_error(
            make_classification_dataset, locked, 1, progress=False, match="not writable"
        )


def test_foreign_files_and_changed_settings(tmp_path):
    kw = dict(overrides=SMALL, progress=False, num_workers=1)
    out = tmp_path / "shared"
    (out / "train" / "no").mkdir(parents=True)
    foreign = out / "train" / "no" / "public_1234.npy"
    np.save(foreign, np.zeros((1, 150, 150), np.float32))
    msg = _one_line_error(make_classification_dataset, out, 2, match="did not write", **kw)
    assert "overwrite=true" in msg
    make_classification_dataset(out, 2, overwrite=True, **kw)
    assert foreign.exists() and len(_manifest(out)) == 6  # written next to it, never deleted
    clean = make_classification_dataset(tmp_path / "clean", 3, **kw)
    _one_line_error(
        make_classification_dataset, clean, 3, seed=1, match="seed: 0 then, 1 now", **kw
    )
    _one_line_error(make_classification_dataset, clean, 2, match="beyond the requested count", **kw)
    _one_line_error(
        make_superres_dataset,
        clean,
        2,
        match="other settings",
        overrides={"instrument.num_pix": 40, "instrument.pixel_scale": 0.125},
        progress=False,
    )
    make_classification_dataset(clean, 2, seed=1, overwrite=True, **kw)
    assert len(_files(clean)) == 6 and _manifest(clean)[0]["seed"] == "1"


def test_dataset_made_before_new_settings_still_matches_when_they_keep_old_behaviour(tmp_path):
    """A folder whose recorded preset predates cosmology.distances, substructure, sphere.profile
    and z_max, and lens_light (as datasets made before issue #11) is the same dataset for a
    preset that keeps those settings at what older datasets were made with."""
    import json

    kw = dict(overrides=SMALL, progress=False, num_workers=1)
    out = make_classification_dataset(tmp_path / "old", 2, **kw)
    state_path = out / ".sim" / "state.json"
    state = json.loads(state_path.read_text())
    preset = state["preset"]
    del preset["cosmology"]["distances"], preset["substructure"], preset["lens_light"]
    del preset["sphere"]["profile"], preset["sphere"]["z_max"]
    state_path.write_text(json.dumps(state))
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.npy")}

    make_classification_dataset(out, 2, **kw)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.npy")} == mtimes  # none rendered again
    assert "distances" in json.loads(state_path.read_text())["preset"]["cosmology"]

    state_path.write_text(json.dumps(state))
    for key, value, shown in [
        ("substructure.compensate", True, "substructure.compensate: None then, True now"),
        ("sphere.profile", "tnfw", "sphere.profile: None then, 'tnfw' now"),
        ("cosmology.distances", "luminosity", "cosmology.distances: None then"),
        ("lens_light.enabled", True, "lens_light"),
    ]:
        _one_line_error(
            make_classification_dataset,
            out,
            2,
            match=re.escape(shown),
            overrides={**SMALL, key: value},
            progress=False,
            num_workers=1,
        )


# ----------------------------------------------------------------------------- command line


@pytest.mark.slow
def test_cli_runs_and_reports_bad_input_in_one_line(tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out = tmp_path / "cli"
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "lensexp.sim",
            "task=superres",
            f"out={out}",
            "n_pairs=2",
            "num_workers=1",
            "progress=false",
            "+overrides.superres.noise_rms=0.01",
        ],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert len(list((out / "HR").glob("*.npy"))) == 2 and len(_manifest(out)) == 2
    assert float(_manifest(out)[0]["lr_noise_rms"]) == 0.01
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "lensexp.sim",
            "task=classification",
            f"out={out}",
            "preset=model_x",
        ],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1
    assert bad.stderr.strip().count("\n") == 0
    assert bad.stderr.startswith("lensexp: error: unknown simulator preset 'model_x'")
    assert list(cwd.iterdir()) == []  # Hydra left nothing in the working directory
    assert math.isfinite(float(_manifest(out)[1]["exposure_time"]))
    misspelt = subprocess.run(
        [sys.executable, "-m", "lensexp.sim", "task=classification", f"out={out}", "n_per_clas=2"],
        cwd=cwd, env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert misspelt.returncode == 1 and misspelt.stderr.strip().count("\n") == 0
    assert "unknown config key n_per_clas: did you mean n_per_class?" in misspelt.stderr
