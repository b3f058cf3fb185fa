"""LensClassificationDataModule: formats, class order, splits, bad input, cache, loaders, transforms."""

from __future__ import annotations

import csv
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lensexp.data.base import seed_generators
from lensexp.data.classification import LensClassificationDataModule
from lensexp.data.superres import SuperResolutionDataModule
from lensexp.data.transforms import random_dihedral
from lensexp.errors import LensexpError
from tests.helpers import (
    PUBLIC_CLASSES,
    ROOT,
    Payload,
    compose_cfg,
    load_bands,
    load_image,
    make_classification_folder,
    make_public_model_i_folder,
    make_superres_folder,
    save_image,
    tree,
)

CLASSES = ["no", "sphere", "vort"]


def module(root: Path, cache_dir: Path, **kw) -> LensClassificationDataModule:
    kw.setdefault("image_size", 32)
    return LensClassificationDataModule(root=str(root), cache_dir=str(cache_dir), **kw)


def split_of(root: Path, cache_dir: Path, split: str, **kw) -> tuple:
    dm = module(root, cache_dir, **kw)
    dataset, files = dm.build_split(split)
    return dm, dataset, files


def assert_items_match_files(dm, dataset, files) -> None:
    """Every item is its file's image, labelled by the index of its folder in dm.classes."""
    assert len(dataset) == len(files)
    for i, f in enumerate(files):
        image, label = dataset[i]
        assert image.shape == (1, *load_image(f).shape) and image.dtype == torch.float32
        np.testing.assert_allclose(image[0].numpy(), load_image(f), rtol=1e-6)
        assert label == dm.classes.index(f.parent.name)


# -- formats ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["chw", "hw", "float64"])
def test_array_formats(tmp_path, cache_dir, fmt):
    root = make_classification_folder(tmp_path / "cls", 3, size=32, fmt=fmt)
    dm, ds, files = split_of(root, cache_dir, "train")
    assert len(files) == 6  # one of each class's three is the seeded test split
    assert_items_match_files(dm, ds, files)


@pytest.mark.parametrize("allow_pickle", [False, True])
def test_axion_object_arrays_load_without_the_option(tmp_path, cache_dir, allow_pickle):
    root = make_classification_folder(tmp_path / "cls", 2, size=32, fmt="object")
    dm, ds, files = split_of(root, cache_dir, "train", allow_pickle=allow_pickle)
    assert_items_match_files(dm, ds, files)


@pytest.mark.parametrize("allow_pickle", [False, True])
def test_a_crafted_pickle_in_a_data_file_never_runs(tmp_path, cache_dir, allow_pickle):
    root = make_classification_folder(tmp_path / "cls", 2, size=32)
    marker = tmp_path / "payload-ran"
    crafted = np.empty(2, dtype=object)
    crafted[0], crafted[1] = Payload(marker), 1e-23
    np.save(root / "train" / "no" / "no_0001.npy", crafted, allow_pickle=True)
    with pytest.raises(LensexpError, match=r"no_0001\.npy: refused: its pickled content calls "
                                           r"builtins\.exec"):  # fmt: skip
        split_of(root, cache_dir, "train", allow_pickle=allow_pickle)
    assert not marker.exists()


def test_other_object_arrays_need_the_option(tmp_path, cache_dir):
    root = make_classification_folder(tmp_path / "cls", 2, size=32)
    odd = np.empty(3, dtype=object)
    odd[0], odd[1], odd[2] = "label", np.random.default_rng(0).random((32, 32)), 2.0
    np.save(root / "train" / "no" / "no_0001.npy", odd, allow_pickle=True)
    with pytest.raises(LensexpError, match=r"no_0001\.npy: object array holding \[str, "
                                           r"ndarray, float\].*data\.allow_pickle=true"):  # fmt: skip
        split_of(root, cache_dir, "train")
    _, ds, files = split_of(root, cache_dir, "train", allow_pickle=True)
    i = [f.name for f in files].index("no_0001.npy")
    np.testing.assert_allclose(ds[i][0][0].numpy(), odd[1].astype(np.float32), rtol=1e-6)


def test_image_size_null_takes_the_size_of_the_files(tmp_path, cache_dir):
    root = make_classification_folder(tmp_path / "cls", 1, size=40, with_test=True)
    dm = LensClassificationDataModule(root=str(root), cache_dir=str(cache_dir))  # the default
    dm.setup("fit")
    assert dm.image_shape == (1, 40, 40)
    assert dm.datasets["train"][0][0].shape == dm.datasets["val"][0][0].shape == (1, 40, 40)
    # One image of another size: one line naming it and the image that set the size.
    save_image(root / "val" / "vort" / "vort_0000.npy", np.zeros((32, 32)))
    dm = LensClassificationDataModule(root=str(root), cache_dir=str(cache_dir))
    with pytest.raises(
        LensexpError,
        match=r"val/vort/vort_0000\.npy: image is 32x32, expected 40x40 \(data\.image_size=null: "
        r"every image has the size and bands of the first image, .*train/no/no_0000\.npy\)",
    ):
        dm.setup("fit")
    # A size given: files of another size are refused.
    dm = LensClassificationDataModule(root=str(root), cache_dir=str(cache_dir), image_size=150)
    with pytest.raises(
        LensexpError, match=r"train/no/no_0000\.npy: image is 40x40, expected 150x150 \(set data"
    ):
        dm.setup("fit")
    with pytest.raises(LensexpError, match=r"data\.image_size=0: must be an integer >= 1"):
        LensClassificationDataModule(root=str(root), image_size=0)


# -- classes ----------------------------------------------------------------------------------


def test_class_index_is_sorted_folder_order(tmp_path, cache_dir):
    root = make_classification_folder(
        tmp_path / "cls", 2, size=32, classes=["vort", "cdm", "axion"]
    )
    dm, ds, files = split_of(root, cache_dir, "train")
    assert dm.classes == ["axion", "cdm", "vort"]
    assert dm.state_for_model() == {"class_names": ["axion", "cdm", "vort"], "in_channels": 1}
    assert_items_match_files(dm, ds, files)
    assert dm.build_split("train")[0].labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_explicit_classes_set_the_order(tmp_path, cache_dir):
    root = make_classification_folder(tmp_path / "cls", 2, size=32)
    dm, ds, files = split_of(root, cache_dir, "val", classes=["vort", "no", "sphere"])
    assert [f.parent.name for f in files] == ["vort", "vort", "no", "no", "sphere", "sphere"]
    assert [ds[i][1] for i in range(len(ds))] == [0, 0, 1, 1, 2, 2]
    assert_items_match_files(dm, ds, files)


def test_explicit_classes_missing_a_folder(tmp_path, cache_dir):
    root = make_classification_folder(tmp_path / "cls", 2, size=32)
    with pytest.raises(LensexpError, match=r"train/axion: missing class folder"):
        split_of(root, cache_dir, "train", classes=["no", "axion"])


# -- splits -----------------------------------------------------------------------------------


def test_seeded_stratified_split_without_val(tmp_path, cache_dir):
    root = make_classification_folder(tmp_path / "cls", 10, size=32, with_val=False)
    dm = module(root, cache_dir, val_fraction=0.2)  # test_fraction 0.1 (the default)
    dm.setup("fit")
    dm.setup("test")
    train, val, test = dm.files["train"], dm.files["val"], dm.files["test"]
    assert (len(train), len(val), len(test)) == (21, 6, 3)
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
    assert set(train) | set(val) | set(test) == set(root.rglob("*.npy"))
    # stratified: every class in every split, in proportion
    assert np.bincount(dm.labels_of("val")).tolist() == [2, 2, 2]
    assert np.bincount(dm.labels_of("test")).tolist() == [1, 1, 1]
    assert np.bincount(dm.labels_of("train")).tolist() == [7, 7, 7]
    for split in ("train", "val", "test"):
        assert_items_match_files(dm, dm.datasets[split], dm.files[split])
    again = module(root, cache_dir, val_fraction=0.2)
    again.setup("fit")
    again.setup("test")
    assert [again.files[s] for s in ("train", "val", "test")] == [train, val, test]
    other = module(root, cache_dir, val_fraction=0.2, split_seed=5)
    other.setup("fit")
    assert other.files["val"] != val and len(other.files["val"]) == 6
    # Val is drawn first: the same images with or without a test split.
    untested = module(root, cache_dir, val_fraction=0.2, test_fraction=0)
    untested.setup("fit")
    assert untested.files["val"] == val and sorted(untested.files["train"]) == sorted(train + test)


def test_val_folder_is_used(classification_root, cache_dir):
    dm = module(classification_root, cache_dir)
    dm.setup("fit")
    # 8 per class in train/, one of which is the seeded test split (no test/ folder)
    assert len(dm.files["train"]) == 21 and len(dm.files["val"]) == 12
    assert all(f.parts[-3] == "val" for f in dm.files["val"])
    assert all(f.parts[-3] == "train" for f in dm.files["train"])
    assert_items_match_files(dm, dm.datasets["val"], dm.files["val"])
    labels = torch.cat([y for _, y in dm.val_dataloader()])
    assert labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4  # in order, not shuffled


def test_split_all_labels_by_folder_name(tmp_path, cache_dir):
    root = make_classification_folder(tmp_path / "cls", 3, size=32, n_val=2, with_test=True)
    dm, ds, files = split_of(root, cache_dir, "all")
    assert len(files) == 3 * (3 + 2 + 2)
    assert {f.parts[-3] for f in files} == {"train", "val", "test"}
    assert_items_match_files(dm, ds, files)


def test_split_all_ignores_a_cache_left_in_the_data_folder(classification_root, cache_dir):
    # A first run without cache_dir packs into ROOT/.lensexp_cache; a later one must skip it.
    LensClassificationDataModule(root=str(classification_root), image_size=32).build_split("all")
    assert list((classification_root / ".lensexp_cache").rglob("*.npy"))
    dm, ds, files = split_of(classification_root, cache_dir, "all")
    assert len(files) == 36
    assert_items_match_files(dm, ds, files)


def test_seeded_test_split_without_a_test_folder(classification_root, cache_dir, caplog):
    with caplog.at_level(logging.INFO, logger="lensexp.data.base"):
        dm = module(classification_root, cache_dir, test_fraction=0.25)
        dm.setup("fit")
        dm.setup("test")
    train, val, test = (set(dm.files[split]) for split in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (18, 12, 6)
    assert not train & test and not val & test
    assert train | test == set((classification_root / "train").rglob("*.npy"))
    assert np.bincount(dm.labels_of("test")).tolist() == [2, 2, 2]
    assert_items_match_files(dm, dm.datasets["test"], dm.files["test"])
    said = [r.getMessage() for r in caplog.records if r.name == "lensexp.data.base"]
    test_dir = classification_root / "test"
    assert said == [f"no {test_dir}: a seeded 25% of train/ is the test split (data.split_seed=0)"]
    assert dm.test_source == "a seeded 25% of train/ (data.split_seed=0)"
    # Deterministic: the same images on every run; another split_seed draws others.
    again = module(classification_root, cache_dir, test_fraction=0.25)
    again.setup("test")
    assert again.files["test"] == dm.files["test"]
    other = module(classification_root, cache_dir, test_fraction=0.25, split_seed=3)
    other.setup("test")
    assert other.files["test"] != dm.files["test"] and len(other.files["test"]) == 6


def test_test_folder_is_used_and_test_fraction_0_means_none(classification_root, cache_dir):
    dm = module(classification_root, cache_dir, test_fraction=0)
    assert dm.build_split("test") is None and dm.test_source is None
    untested = module(classification_root, cache_dir, test_fraction=0, predict_split="test")
    for stage in ("test", "predict"):
        with pytest.raises(LensexpError, match=r"no test split \(no test/ folder and data\.test"):
            untested.setup(stage)
    dm.setup("fit")
    assert len(dm.files["train"]) == 24  # all of train/
    shutil.copytree(classification_root / "val", classification_root / "test")
    dm = module(classification_root, cache_dir)  # test_fraction 0.1 applies only without test/
    dm.setup("fit")
    dm.setup("test")
    assert [f.parts[-3] for f in dm.files["test"]] == ["test"] * 12
    assert len(dm.files["train"]) == 24 and dm.test_source == str(classification_root / "test")
    images, labels = next(iter(dm.test_dataloader()))
    assert images.shape == (12, 1, 32, 32) and labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4


# -- bad input --------------------------------------------------------------------------------


def test_no_root_at_all():
    with pytest.raises(LensexpError, match="data.root"):
        LensClassificationDataModule()


def test_empty_class_folder(classification_root, cache_dir):
    for f in (classification_root / "val" / "sphere").iterdir():
        f.unlink()
    with pytest.raises(LensexpError, match=r"val/sphere: empty class folder; add \.npy images, "
                                           r"or leave the class out of data\.classes"):  # fmt: skip
        module(classification_root, cache_dir).setup("fit")


def test_truncated_file(classification_root, cache_dir):
    path = classification_root / "train" / "vort" / "vort_0003.npy"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(LensexpError, match=r"train/vort/vort_0003\.npy: not a readable \.npy"):
        module(classification_root, cache_dir).setup("fit")
    path.write_bytes(path.read_bytes()[:20])  # cut inside the header
    with pytest.raises(LensexpError, match=r"vort_0003\.npy: not a readable \.npy"):
        module(classification_root, cache_dir).setup("fit")


@pytest.mark.parametrize("allow_pickle", [False, True])
def test_not_a_npy_file(classification_root, cache_dir, allow_pickle):
    path = classification_root / "train" / "no" / "no_0002.npy"
    path.write_text("x,y\n1,2\n")
    # Not taken for a pickle: no advice to set allow_pickle, no raw UnpicklingError.
    with pytest.raises(LensexpError, match=r"no_0002\.npy: not a \.npy file"):
        module(classification_root, cache_dir, allow_pickle=allow_pickle).setup("fit")


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((3, 32, 32)), r"image has 3 band\(s\), expected 1 \(set data\.image_size"),
        (np.zeros((32, 32, 2)), r"image has 2 band\(s\), expected 1"),
        (np.zeros((3, 3, 3)), r"array of shape \(3, 3, 3\); its band axis is ambiguous"),
        (np.zeros((32, 3, 32)), r"array of shape \(32, 3, 32\); its band axis is ambiguous"),
        (np.zeros((1, 1, 32, 32)), r"array of shape \(1, 1, 32, 32\); expected \(H, W\), "),
        (np.zeros(32), r"array of shape \(32,\)"),
        (np.zeros((30, 32)), r"image is 30x32, expected 32x32 \(set data\.image_size"),
        (np.array([["a"] * 32] * 32), "dtype <U1; lensexp reads integer or floating-point"),
    ],
)
def test_wrong_shape_or_size(classification_root, cache_dir, array, message):
    path = classification_root / "val" / "no" / "no_0001.npy"
    np.save(path, array)
    with pytest.raises(LensexpError, match=rf"val/no/no_0001\.npy: .*{message}"):
        module(classification_root, cache_dir).setup("fit")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf(classification_root, cache_dir, bad):
    image = np.ones((32, 32))
    image[5, 5] = image[6, 6] = bad
    save_image(classification_root / "train" / "sphere" / "sphere_0004.npy", image)
    with pytest.raises(LensexpError, match=r"train/sphere/sphere_0004\.npy: 2 NaN/Inf pixels"):
        module(classification_root, cache_dir).setup("fit")


def test_file_in_an_unknown_folder_for_split_all(classification_root, cache_dir):
    save_image(classification_root / "train" / "misc" / "x.npy", np.ones((32, 32)))
    with pytest.raises(LensexpError, match=r"misc/x\.npy: its folder 'misc' is not a class"):
        split_of(classification_root, cache_dir, "all", classes=CLASSES)


def test_bad_settings(classification_root, cache_dir):
    with pytest.raises(LensexpError, match="batch_size"):
        module(classification_root, cache_dir, batch_size=0)
    with pytest.raises(LensexpError, match="split=nope"):
        module(classification_root, cache_dir, predict_split="nope")
    with pytest.raises(LensexpError, match=r"data\.test_fraction=1\.0: must lie in \[0, 1\)"):
        module(classification_root, cache_dir, test_fraction=1.0)
    dm = module(classification_root, cache_dir, val_fraction=1.5)
    shutil.rmtree(classification_root / "val")
    with pytest.raises(LensexpError, match=r"data\.val_fraction=1\.5"):
        dm.setup("fit")
    dm = module(classification_root, cache_dir, val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(
        LensexpError, match=r"cannot split 8 images with data\.val_fraction=0\.5 and data\.test"
    ):
        dm.setup("fit")


# -- the cache --------------------------------------------------------------------------------


def test_default_cache_stays_in_a_hidden_folder(classification_root):
    before = tree(classification_root)
    dm = LensClassificationDataModule(root=str(classification_root), image_size=32)
    dm.setup("fit")
    added = set(tree(classification_root)) - set(before)
    assert added and all(p.startswith(".lensexp_cache/") for p in added)


# -- loaders and transforms -------------------------------------------------------------------


def test_trainer_free_use(classification_root, cache_dir):
    dm = module(classification_root, cache_dir, batch_size=7)
    dm.prepare_data()
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (7, 1, 32, 32) and labels.dtype == torch.int64
    # without a Trainer the device hook evaluates: no augmentation
    out, out_labels = dm.on_after_batch_transfer((images, labels), 0)
    assert torch.equal(out, images) and out_labels is labels


def test_batch_seeding_is_torch_manual_seed_without_tracebacks(monkeypatch):
    """Each training batch's seeding gives the streams `torch.manual_seed` (with Python's and
    NumPy's seeds) gives, and formats no traceback: `torch.manual_seed` queues one for every
    accelerator not initialised, on every batch."""
    formatted = []
    format_stack = traceback.format_stack
    monkeypatch.setattr(
        traceback, "format_stack", lambda *a, **k: formatted.append(1) or format_stack(*a, **k)
    )
    seed_generators(11)
    ours = (random.random(), np.random.rand(), torch.rand(3))
    assert not formatted
    random.seed(11)
    np.random.seed(11)
    torch.manual_seed(11)
    theirs = (random.random(), np.random.rand(), torch.rand(3))
    assert ours[:2] == theirs[:2] and torch.equal(ours[2], theirs[2])


def test_shuffled_batches_hold_each_file_once_with_its_label(classification_root, cache_dir):
    dm = module(classification_root, cache_dir, batch_size=6)
    dm.setup("fit")
    files = dm.files["train"]
    assert len(files) % 6 > 1  # several batches, the last one short, none dropped
    expected = {load_image(f).tobytes(): dm.classes.index(f.parent.name) for f in files}
    seen = []
    for images, labels in dm.train_dataloader():
        assert images.dtype == torch.float32 and labels.dtype == torch.int64
        for image, label in zip(images, labels, strict=True):
            key = image[0].numpy().tobytes()
            assert expected[key] == int(label)  # this file's image, with its own label
            seen.append(key)
    assert sorted(seen) == sorted(expected)  # every file once
    order = [f.parent.name for f in files]
    assert [dm.classes[int(y)] for _, ys in dm.train_dataloader() for y in ys] != order


def test_batch_transform_resize_and_eval(classification_root, cache_dir):
    dm = module(classification_root, cache_dir, batch_size=12, resize=224)
    dm.setup("fit")
    images, labels = next(iter(dm.val_dataloader()))
    for train in (False, True):
        out, out_labels = dm.batch_transform((images, labels), train=train)
        assert out.shape == (12, 1, 224, 224) and out_labels is labels
    # eval: a deterministic resize only, no augmentation
    a, _ = dm.batch_transform((images, labels), train=False)
    b, _ = dm.batch_transform((images, labels), train=False)
    assert torch.equal(a, b)
    expected = F.interpolate(images, size=(224, 224), mode="bilinear", antialias=True)
    torch.testing.assert_close(a, expected)


def test_example_input_is_the_first_training_image_as_evaluation_sees_it(
    classification_root, cache_dir
):
    dm = module(classification_root, cache_dir, resize=224)
    assert dm.example_input() is None  # nothing set up yet
    dm.setup("fit")
    example = dm.example_input()
    first, _ = dm.datasets["train"][0]
    expected = F.interpolate(first[None], size=(224, 224), mode="bilinear", antialias=True)
    assert example.shape == (1, 1, 224, 224)
    torch.testing.assert_close(example, expected)
    # The data module's batch hook passes it through as it is: no seeding, no transform.
    assert dm.on_after_batch_transfer(example, 0) is example


def test_batch_transform_augments_only_in_training(classification_root, cache_dir):
    torch.manual_seed(0)
    dm = module(classification_root, cache_dir, batch_size=12)
    dm.setup("fit")
    images, labels = next(iter(dm.val_dataloader()))
    same, _ = dm.batch_transform((images, labels), train=False)
    assert torch.equal(same, images)
    aug, aug_labels = dm.batch_transform((images, labels), train=True)
    assert torch.equal(aug_labels, labels)
    changed = (aug != images).flatten(1).any(1)
    assert changed.sum() >= 6
    # flips and rot90 only move pixels
    for x, y in zip(images, aug, strict=True):
        assert torch.equal(x.flatten().sort().values, y.flatten().sort().values)
    off = module(classification_root, cache_dir, augment={"flips": False, "rot90": False})
    assert torch.equal(off.batch_transform((images, labels), train=True)[0], images)


@pytest.mark.parametrize("flips,rot90", [(True, True), (True, False), (False, True)])
def test_random_dihedral_is_a_mirror_then_quarter_turns_per_sample(flips, rot90):
    # The augmentation as documented, sample by sample: a mirror bit per sample (rand < 0.5),
    # then quarter turns (randint 0-3), drawn in that order from torch's generator, applied to
    # every tensor of the call (3 channels; an image and one twice its size). Seeded runs and
    # resumed runs depend on these draws and their meaning.
    small = torch.rand(64, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    large = torch.rand(64, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(7)
    out_small, out_large = random_dihedral(small, large, flips=flips, rot90=rot90)
    torch.manual_seed(7)
    mirror = (torch.rand(64) < 0.5).tolist() if flips else [False] * 64
    turns = torch.randint(0, 4, (64,)).tolist() if rot90 else [0] * 64
    for batch, out in ((small, out_small), (large, out_large)):
        for x, y, m, k in zip(batch, out, mirror, turns, strict=True):
            expected = torch.rot90(x.flip(-1) if m else x, k, dims=(-2, -1))
            assert torch.equal(y, expected)
    # every symmetry allowed was drawn (so each was checked)
    assert len(set(zip(mirror, turns, strict=True))) == (1 + flips) * (4 if rot90 else 1)
    with pytest.raises(ValueError, match="square"):
        random_dihedral(torch.zeros(2, 1, 4, 6))


# -- what both data modules share (super-resolution too), parametrised over the task ---------


def data_module(task: str, root: Path, cache_dir: Path, **kw):
    """The task's data module over `root` with small images (32 px, or HR 16 / LR 8 px)."""
    if task == "classification":
        return module(root, cache_dir, **kw)
    return SuperResolutionDataModule(root=str(root), cache_dir=str(cache_dir), hr_size=16, **kw)


def make_folder(task: str, tmp_path: Path, with_val: bool = True, with_test: bool = False) -> Path:
    """A small dataset of `task`: 4 images per class (and as many in val/, test/), or 8 pairs
    (4 in val/, 2 in test/)."""
    if task == "classification":
        return make_classification_folder(
            tmp_path / "cls", 4, size=32, with_val=with_val, with_test=with_test
        )
    root = make_superres_folder(tmp_path / "sr", 8, lr_size=8)
    if with_val:
        make_superres_folder(root, 4, lr_size=8, subdir="val")
    if with_test:
        make_superres_folder(root, 2, lr_size=8, subdir="test")
    return root


TASKS = ["classification", "superres"]


@pytest.mark.parametrize(
    ("task", "layout"),
    [("classification", r"ROOT/train/<class>/\*\.npy"), ("superres", r"HR/\*\.npy.*LR/\*\.npy")],
)
def test_missing_root_describes_the_layout(tmp_path, cache_dir, task, layout):
    dm = data_module(task, tmp_path / "nowhere", cache_dir)
    with pytest.raises(LensexpError, match=rf"nowhere: no such folder.*{layout}"):
        dm.prepare_data()
    with pytest.raises(LensexpError, match=rf"nowhere.*{layout}"):
        dm.setup("fit")


@pytest.mark.parametrize("task", TASKS)
def test_cache_is_rebuilt_when_a_file_changes(tmp_path, cache_dir, task):
    root = make_folder(task, tmp_path)
    ds, files = data_module(task, root, cache_dir).build_split("train")
    before = ds[1][0][0].numpy().copy()  # the first image of an item is its file's
    new = np.full(before.shape, 0.25)
    save_image(files[1], new)
    st = files[1].stat()
    os.utime(files[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    ds2, _ = data_module(task, root, cache_dir).build_split("train")
    np.testing.assert_array_equal(ds2[1][0][0].numpy(), new)
    assert not np.array_equal(before, new)
    name = ds2.arrays[0].name.rsplit("-", 1)[0]
    assert len(list(cache_dir.rglob(f"{name}-*.npy"))) == 1  # the stale pack was removed
    # unchanged files: the same pack is reused, not rebuilt
    pack = ds2.arrays[0]
    mtime = pack.stat().st_mtime_ns
    ds3, _ = data_module(task, root, cache_dir).build_split("train")
    assert ds3.arrays[0] == pack and pack.stat().st_mtime_ns == mtime


@pytest.mark.parametrize(
    ("task", "packs"),
    [
        ("classification", ["all", "test", "train", "val"]),
        # LR and HR packs per split, none shared: names never collide
        (
            "superres",
            ["all-hr", "all-lr", "pairs-hr", "pairs-lr", "test-hr", "test-lr", "val-hr", "val-lr"],
        ),
    ],
)
def test_cache_dir_elsewhere_writes_nothing_into_the_data(tmp_path, cache_dir, task, packs):
    root = make_folder(task, tmp_path, with_test=True)
    before = tree(root)
    dm = data_module(task, root, cache_dir, predict_split="all")
    for stage in ("fit", "test", "predict"):
        dm.setup(stage)
    next(iter(dm.train_dataloader()))
    assert tree(root) == before
    assert sorted(p.name.rsplit("-", 1)[0] for p in cache_dir.rglob("*.npy")) == packs


@pytest.mark.parametrize("task", TASKS)
def test_worker_loaders_give_the_same_batches(tmp_path, cache_dir, task):
    # A seeded val split: its items are a subset of the packed array, not all of it.
    root = make_folder(task, tmp_path, with_val=False)
    batches = {}
    for workers in (0, 2):
        dm = data_module(task, root, cache_dir, batch_size=3, num_workers=workers, val_fraction=0.5)
        dm.setup("fit")
        batches[workers] = list(dm.val_dataloader())
    assert len(batches[0]) == 2  # 6 images or 4 pairs
    for batch0, batch2 in zip(batches[0], batches[2], strict=True):
        for x0, x2 in zip(batch0, batch2, strict=True):
            assert torch.equal(x0, x2)


def test_resize_antialiases_when_it_shrinks() -> None:
    from lensexp.data.transforms import ClassificationTransform

    x = torch.rand(4, 1, 64, 64)

    def bilinear(size: int, antialias: bool) -> torch.Tensor:
        return F.interpolate(x, size=(size, size), mode="bilinear", antialias=antialias)

    shrunk = ClassificationTransform(flips=False, rot90=False, resize=24)(x, train=False)
    torch.testing.assert_close(shrunk, bilinear(24, True))
    assert not torch.allclose(shrunk, bilinear(24, False), atol=1e-3)  # the filter mattered
    grown = ClassificationTransform(flips=False, rot90=False, resize=96)(x, train=False)
    torch.testing.assert_close(grown, bilinear(96, True))  # same result, the faster kernel


def test_random_center_crop_is_training_only_and_per_sample() -> None:
    from lensexp.data.transforms import ClassificationTransform

    x = torch.rand(64, 1, 20, 20)
    crop = ClassificationTransform(flips=False, rot90=False, random_center_crop=10,
                                   random_center_crop_p=0.4)  # fmt: skip
    torch.testing.assert_close(crop(x, train=False), x)  # validation: untouched
    torch.manual_seed(0)
    out = crop(x, train=True)
    zoomed = F.interpolate(x[..., 5:15, 5:15], size=(20, 20), mode="bilinear",
                           align_corners=False, antialias=True)  # fmt: skip
    is_zoomed = [torch.allclose(o, z) for o, z in zip(out, zoomed, strict=True)]
    is_same = [torch.equal(o, i) for o, i in zip(out, x, strict=True)]
    assert all(a != b for a, b in zip(is_zoomed, is_same, strict=True))  # one or the other
    assert 10 <= sum(is_zoomed) <= 40  # about 0.4 of 64


def test_training_augmentation_never_reads_a_value_back_from_the_device() -> None:
    """On a GPU, reading a value back (`bool(t.any())`, `t.item()`, indexing by a mask) waits
    for every queued kernel once a batch. Meta tensors have no values, so any such read fails."""
    from lensexp.data.transforms import ClassificationTransform, random_patches

    reference = ClassificationTransform(flips=True, rot90=False, rotation_degrees=90.0,
                                        resize=224, random_center_crop=100,
                                        random_center_crop_p=0.4)  # fmt: skip
    x = torch.empty(8, 1, 150, 150, device="meta")
    assert reference(x, train=True).shape == (8, 1, 224, 224)
    assert ClassificationTransform()(x, train=True).shape == (8, 1, 150, 150)  # the default
    lr, hr = random_patches(torch.empty(4, 1, 75, 75, device="meta"),
                            torch.empty(4, 1, 150, 150, device="meta"), 24, 2)  # fmt: skip
    lr, hr = random_dihedral(lr, hr)
    assert lr.shape == (4, 1, 24, 24) and hr.shape == (4, 1, 48, 48)


def test_stray_files_and_links_out_of_the_root_are_skipped_with_one_warning(
    tmp_path, cache_dir, caplog
):
    root = make_classification_folder(tmp_path / "cls", 2, size=32)
    outside = make_classification_folder(tmp_path / "elsewhere", 1, size=32)
    (root / "train" / "no" / "notes.txt").write_text("not an image")
    (root / "train" / "no" / "far.npy").symlink_to(outside / "train" / "no" / "no_0000.npy")
    (root / "train" / "no" / "near.npy").symlink_to(root / "train" / "sphere" / "sphere_0000.npy")
    with caplog.at_level("WARNING", logger="lensexp.data.npy"):
        _, _, files = split_of(root, cache_dir, "train")
    names = [f.name for f in files]
    assert "far.npy" not in names and "notes.txt" not in names and "near.npy" in names
    (warning,) = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert (
        "train/no (class folder): skipped 1 file(s) that are not .npy and 1 symlink(s)" in warning
    )


@pytest.mark.parametrize(
    "dtype,accepted",
    [(np.uint16, True), (np.int32, True), (np.float16, True), (np.complex64, False), (bool, False)],
)
def test_pixel_dtypes(tmp_path, cache_dir, dtype, accepted):
    root = make_classification_folder(tmp_path / "cls", 2, size=32)
    image = (np.random.default_rng(0).random((32, 32)) * 100).astype(dtype)
    np.save(root / "train" / "no" / "no_0001.npy", image)
    if accepted:
        _, ds, files = split_of(root, cache_dir, "train")
        i = [f.name for f in files].index("no_0001.npy")
        np.testing.assert_allclose(ds[i][0][0].numpy(), image.astype(np.float32), rtol=1e-3)
    else:
        with pytest.raises(LensexpError, match=rf"no_0001\.npy: dtype {np.dtype(dtype)}; lensexp "
                                               r"reads integer or floating-point images"):  # fmt: skip
            split_of(root, cache_dir, "train")


# -- normalisation (both data modules) --------------------------------------------------------


def raw_flux(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Raw-flux-like pixels (as in the Model II files): far from [0, 1]."""
    return (50.0 + 900.0 * np.random.default_rng(seed).random(shape)).astype(np.float32)


@pytest.mark.parametrize("task", TASKS)
def test_normalize_none_keeps_the_files_values_and_minmax_maps_each_image_to_0_1(
    tmp_path, cache_dir, task
):
    root = make_folder(task, tmp_path)
    _, files = data_module(task, root, cache_dir).build_split("train")
    shape = load_image(files[1]).shape
    raw, constant = raw_flux(shape), np.full(shape, 7.0, dtype=np.float32)
    save_image(files[1], raw)
    save_image(files[2], constant)

    plain, _ = data_module(task, root, cache_dir).build_split("train")  # the default: none
    np.testing.assert_array_equal(plain[1][0][0].numpy(), raw)
    np.testing.assert_array_equal(plain[2][0][0].numpy(), constant)

    scaled, _ = data_module(task, root, cache_dir, normalize="minmax").build_split("train")
    assert scaled.arrays[0] != plain.arrays[0]  # another pack: the option is in the cache key
    image = scaled[1][0][0].numpy()
    assert image.min() == 0.0 and image.max() == 1.0
    np.testing.assert_allclose(image, (raw - raw.min()) / (raw.max() - raw.min()), atol=1e-6)
    # A constant image has no range to divide by: it is kept as it is (README, Data).
    np.testing.assert_array_equal(scaled[2][0][0].numpy(), constant)
    for i in range(len(scaled)):
        for x in scaled[i][:-1] if task == "classification" else scaled[i]:
            if i != 2:
                assert float(x.min()) == 0.0 and float(x.max()) == 1.0


@pytest.mark.parametrize("task", TASKS)
def test_a_bad_normalize_value_is_one_line_naming_the_key_and_choices(tmp_path, cache_dir, task):
    with pytest.raises(
        LensexpError,
        match=r"^data\.normalize=zscore: not a valid value; use one of minmax\|none\.$",
    ):
        data_module(task, tmp_path, cache_dir, normalize="zscore")


# -- bands (Model IV: three) ------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["chw", "hwc"])
def test_three_band_images_give_three_channel_batches(tmp_path, cache_dir, fmt):
    root = make_classification_folder(tmp_path / "cls", 3, size=64, bands=3, fmt=fmt)
    dm = module(root, cache_dir, image_size=None, batch_size=4)
    assert dm.channels == 3 and dm.state_for_model()["in_channels"] == 3
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 64, 64)
    assert dm.batch_transform((images, labels), train=True)[0].shape == (4, 3, 64, 64)
    dataset, files = dm.datasets["val"], dm.files["val"]
    for i, path in enumerate(files):
        bands = load_bands(path, fmt)
        assert bands.shape == (3, 64, 64) and not np.array_equal(bands[0], bands[1])
        np.testing.assert_array_equal(dataset[i][0].numpy(), bands)
    # A one-band image among them: one line naming it.
    save_image(root / "val" / "no" / "no_0001.npy", np.zeros((64, 64)))
    with pytest.raises(
        LensexpError, match=r"val/no/no_0001\.npy: image has 1 band\(s\), expected 3"
    ):
        module(root, cache_dir, image_size=None).setup("fit")


# -- the public Model I-IV layout and the simulated presets -----------------------------------


def test_public_model_i_layout_with_its_class_names(tmp_path, cache_dir):
    root = make_public_model_i_folder(tmp_path / "model_i", 2, size=32)
    dm = module(root, cache_dir, classes=list(PUBLIC_CLASSES), image_size=None)
    dm.setup("fit")
    dataset, files = dm.datasets["train"], dm.files["train"]
    # one image of each class (the other of its two is the seeded test split), in class order
    assert [f.parent.name for f in files] == ["no_sub", "cdm", "axion"]
    for i, path in enumerate(files):
        # raw[0]: the (H, W) image of an axion file's [image, mass], or the band of (1, H, W)
        raw = np.load(path, allow_pickle=True)
        image, label = dataset[i]
        # normalize=none (the default): the file's raw values
        np.testing.assert_array_equal(image[0].numpy(), np.asarray(raw[0], dtype=np.float32))
        assert label == PUBLIC_CLASSES.index(path.parent.name)
    scaled = module(root, cache_dir, classes=list(PUBLIC_CLASSES), image_size=None,
                    normalize="minmax").build_split("train")[0]  # fmt: skip
    assert all(float(scaled[i][0].min()) == 0.0 and float(scaled[i][0].max()) == 1.0
               for i in range(len(scaled)))  # fmt: skip


@pytest.mark.slow
def test_public_model_i_layout_trains_through_train_py(tmp_path):
    root = make_public_model_i_folder(tmp_path / "model_i", 4, size=32)
    run = tmp_path / "run"
    # debug=fdr: one batch of each split, so one batch holds all 12 val images
    proc = subprocess.run(
        [sys.executable, "train.py", f"data.root={root}", "data.classes=[no_sub,cdm,axion]",
         "debug=fdr", "data.batch_size=12", "model=mobilenet_v3_small", "model.pretrained=none",
         "trainer=cpu", "logger=csv", f"paths.data_dir={tmp_path / 'data'}",
         f"hydra.run.dir={run}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(run / "best_val" / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == [
        "path", "label", "prediction", "p_no_sub", "p_cdm", "p_axion", "axion_mass"
    ]  # fmt: skip
    assert {row["label"] for row in rows} == set(PUBLIC_CLASSES)
    # The helper's axion files hold 10**-(22 + i % 3) eV; the other classes have no mass.
    for row in rows:
        if row["label"] == "axion":
            i = int(Path(row["path"]).stem.rsplit("_", 1)[1])
            assert float(row["axion_mass"]) == pytest.approx(10.0 ** -(22.0 + i % 3), rel=1e-5)
        else:
            assert row["axion_mass"] == ""
    metrics = json.loads((run / "best_val" / "metrics.json").read_text())
    assert list(metrics["auc_per_class"]) == list(PUBLIC_CLASSES)


@pytest.mark.parametrize("preset", ["model_ii", "model_iii"])
def test_simulated_presets_compose_with_the_default_data_config(tmp_path, preset):
    cfg = compose_cfg(tmp_path, [f"data.simulate.preset={preset}", "data.simulate.n_per_class=4"])
    assert cfg.data.image_size is None  # the size of the simulated files (64 px for these)
    assert cfg.data.root is None and cfg.data.simulate.preset == preset
    assert cfg.data.default_root.endswith(f"sim_classification_{preset}_4_val0.2_test0.2")


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["model_ii", "model_iii"])
def test_simulated_64_pixel_presets_train_with_the_default_data_config(tmp_path, preset):
    from lensexp.training import train

    cfg = compose_cfg(tmp_path, [f"data.simulate.preset={preset}", "data.simulate.n_per_class=5",
                                 "data.batch_size=4", "model=mobilenet_v3_small",
                                 "model.pretrained=none", "trainer=cpu", "logger=csv",
                                 "debug=fdr"])  # fmt: skip
    train(cfg)
    packs = sorted((tmp_path / "data" / ".cache").rglob("train-*.npy"))
    assert len(packs) == 1 and np.load(packs[0], mmap_mode="r").shape[1:] == (1, 64, 64)
    # The simulator's manifest reaches the report: each vort image's axion mass, and the
    # metrics against the physics.
    root, report = Path(cfg.data.default_root), Path(cfg.paths.output_dir) / "best_val"
    with open(root / "manifest.csv", newline="") as fh:
        truth = {row["file"]: row["axion_mass"] for row in csv.DictReader(fh)}
    with open(report / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {row["label"] for row in rows} == {"no", "sphere", "vort"}
    for row in rows:
        expected = truth[Path(row["path"]).relative_to(root).as_posix()]
        if row["label"] == "vort":
            assert float(row["axion_mass"]) == pytest.approx(float(expected), rel=1e-5)
        else:
            assert row["axion_mass"] == expected == ""
    assert (report / "physics.csv").is_file() and (report / "physics.png").is_file()


def test_a_simulated_dataset_is_checked_once_per_data_module(tmp_path, cache_dir, monkeypatch):
    """Lightning calls prepare_data before fit and before every later evaluation; the dataset
    check (or simulation) runs once, not each time."""
    dm = LensClassificationDataModule(
        default_root=str(tmp_path / "sim"), simulate={"n_per_class": 2}, cache_dir=str(cache_dir)
    )
    calls = []
    monkeypatch.setattr(dm, "make_default_dataset", lambda: calls.append(1))
    for _ in range(3):
        dm.prepare_data()
    assert calls == [1]
