"""SuperResolutionDataModule: pairing, splits, paired augmentation, bad input, the cache."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lensexp.data.superres import SuperResolutionDataModule
from lensexp.errors import LensexpError
from tests.helpers import compose_cfg, load_bands, load_image, make_superres_folder, save_image

CONF = Path(__file__).resolve().parents[1] / "conf" / "data" / "superres.yaml"


def module(root: Path, cache_dir: Path, **kw) -> SuperResolutionDataModule:
    return SuperResolutionDataModule(root=str(root), cache_dir=str(cache_dir), **kw)


def built(root: Path, cache_dir: Path, split: str, **kw) -> tuple:
    dm = module(root, cache_dir, **kw)
    dataset, files = dm.build_split(split)
    return dm, dataset, files


def names(files: list[Path]) -> list[str]:
    return [f.name for f in files]


# -- pairing and contents ---------------------------------------------------------------------


def test_items_are_lr_hr_pairs_matching_the_files(superres_root, cache_dir):
    _, ds, files = built(superres_root, cache_dir, "all")
    assert len(ds) == 20 and len(files) == 20
    for i in (0, 7, 19):
        lr, hr = ds[i]
        assert lr.shape == (1, 75, 75) and hr.shape == (1, 150, 150)
        assert lr.dtype == hr.dtype == torch.float32
        assert files[i].parent.name == "LR"  # outputs are named after the LR inputs
        np.testing.assert_array_equal(lr[0].numpy(), load_image(files[i]))
        np.testing.assert_array_equal(
            hr[0].numpy(), load_image(superres_root / "HR" / files[i].name)
        )


def test_example_input_is_the_first_training_lr_image(superres_root, cache_dir):
    dm = module(superres_root, cache_dir, patch_size=16)
    dm.setup("fit")
    lr, _ = dm.datasets["train"][0]
    # The whole LR image, as evaluation passes it (training would crop a 16 px patch).
    torch.testing.assert_close(dm.example_input(), lr[None])


def test_pairs_by_name_not_by_position(tmp_path, cache_dir):
    # LR/ written in reverse order, names whose sorted order differs from their numbers.
    root = make_superres_folder(tmp_path / "sr", 12, lr_size=8)
    _, ds, files = built(root, cache_dir, "all", hr_size=16)
    assert names(files) == sorted(f"img{i}.npy" for i in range(12))
    for i, f in enumerate(files):
        lr, hr = ds[i]
        np.testing.assert_array_equal(lr[0].numpy(), load_image(f))
        # each LR is the 2x2 mean of its own HR, which no other HR matches
        torch.testing.assert_close(F.avg_pool2d(hr[None], 2)[0], lr)


def test_an_extra_or_renamed_file_is_an_error_naming_it(tmp_path, cache_dir):
    root = make_superres_folder(tmp_path / "sr", 6, lr_size=8)
    save_image(root / "LR" / "zzz_extra.npy", np.zeros((8, 8)))
    with pytest.raises(LensexpError, match=r"zzz_extra\.npy.*HR/ has 6 .*LR/ has 7"):
        module(root, cache_dir, hr_size=16).build_split("train")
    (root / "LR" / "zzz_extra.npy").unlink()
    # Same counts, different names: positional pairing would silently mismatch.
    (root / "HR" / "img3.npy").rename(root / "HR" / "other.npy")
    with pytest.raises(LensexpError, match=r"HR/other\.npy has no LR/other\.npy"):
        module(root, cache_dir, hr_size=16).build_split("train")


def test_hr_size_none_reads_sizes_from_the_files(tmp_path, cache_dir):
    root = make_superres_folder(tmp_path / "sr", 4, lr_size=10, scale=3)
    dm, ds, _ = built(root, cache_dir, "all", scale=3, hr_size=None)
    lr, hr = ds[0]
    assert lr.shape == (1, 10, 10) and hr.shape == (1, 30, 30)
    assert dm.state_for_model()["scale"] == 3


@pytest.mark.parametrize("fmt", ["hw", "float64"])
def test_other_array_formats(tmp_path, cache_dir, fmt):
    root = make_superres_folder(tmp_path / "sr", 3, lr_size=8, fmt=fmt)
    _, ds, files = built(root, cache_dir, "all", hr_size=16)
    np.testing.assert_allclose(ds[1][0][0].numpy(), load_image(files[1]), rtol=1e-6)


def test_object_arrays_load_without_the_option(tmp_path, cache_dir):
    root = make_superres_folder(tmp_path / "sr", 3, lr_size=8, fmt="object")
    _, ds, files = built(root, cache_dir, "all", hr_size=16)
    np.testing.assert_allclose(ds[2][0][0].numpy(), load_image(files[2]), rtol=1e-6)


# -- splits -----------------------------------------------------------------------------------


def test_seeded_split_is_deterministic_disjoint_and_complete(superres_root, cache_dir, caplog):
    with caplog.at_level(logging.INFO, logger="lensexp.data.base"):
        dm = module(superres_root, cache_dir)
        dm.setup("fit")
        dm.setup("test")
    train, val, test = (names(dm.files[split]) for split in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (16, 2, 2)  # default fractions 0.1 and 0.1
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
    assert set(train) | set(val) | set(test) == {f"img{i}.npy" for i in range(20)}
    said = [r.getMessage() for r in caplog.records if r.name == "lensexp.data.base"]
    assert said == [
        f"no {superres_root / 'test'}: a seeded 10% of the root's HR/LR pairs is the test split "
        f"(data.split_seed=0)"
    ]
    again = module(superres_root, cache_dir)
    again.setup("fit")
    again.setup("test")
    assert [names(again.files[s]) for s in ("train", "val", "test")] == [train, val, test]
    other = module(superres_root, cache_dir, split_seed=1, val_fraction=0.25)
    other.setup("fit")
    assert len(other.files["val"]) == 5 and names(other.files["val"]) != val
    # the val and test items are their files' pairs
    for split in ("val", "test"):
        lr, hr = dm.datasets[split][1]
        np.testing.assert_array_equal(lr[0].numpy(), load_image(dm.files[split][1]))
        hr_file = superres_root / "HR" / dm.files[split][1].name
        np.testing.assert_array_equal(hr[0].numpy(), load_image(hr_file))


def test_explicit_val_and_test_folders(tmp_path, cache_dir):
    root = make_superres_folder(tmp_path / "sr", 6, lr_size=8)
    make_superres_folder(root, 3, lr_size=8, subdir="val", names=["v0.npy", "v1.npy", "v2.npy"])
    dm = module(root, cache_dir, hr_size=16)
    dm.setup("fit")
    dm.setup("test")
    # val/ validates; no test/: one seeded pair of the root's six tests, the others train
    assert len(dm.files["train"]) == 5 and len(dm.files["test"]) == 1
    assert set(dm.files["train"]) | set(dm.files["test"]) == set((root / "LR").glob("*.npy"))
    assert names(dm.files["val"]) == ["v0.npy", "v1.npy", "v2.npy"]
    assert all(f.parent == root / "val" / "LR" for f in dm.files["val"])
    np.testing.assert_array_equal(
        dm.datasets["val"][2][0][0].numpy(), load_image(dm.files["val"][2])
    )
    # split=all: the root pairs plus the val/ pairs
    _, ds_all, all_files = built(root, cache_dir, "all", hr_size=16)
    assert len(ds_all) == 9 and set(all_files) == set((root / "LR").glob("*.npy")) | set(
        dm.files["val"]
    )
    # data.test_fraction=0: no test split, setup("test") says so; with test/ it loads, and
    # every root pair trains
    with pytest.raises(LensexpError, match="no test/ folder and data.test_fraction=0"):
        module(root, cache_dir, hr_size=16, test_fraction=0).setup("test")
    make_superres_folder(root, 2, lr_size=8, subdir="test", names=["t0.npy", "t1.npy"])
    dm = module(root, cache_dir, hr_size=16)
    dm.setup("fit")
    dm.setup("test")
    assert names(dm.files["test"]) == ["t0.npy", "t1.npy"]
    assert names(dm.files["train"]) == sorted(f"img{i}.npy" for i in range(6))
    assert len(next(iter(dm.test_dataloader()))[0]) == 2


def test_predict_split_all(superres_root, cache_dir):
    dm = module(superres_root, cache_dir, predict_split="all", batch_size=32)
    dm.setup("predict")
    lr, hr = next(iter(dm.predict_dataloader()))
    assert lr.shape == (20, 1, 75, 75) and hr.shape == (20, 1, 150, 150)


# -- augmentation -----------------------------------------------------------------------------


def test_paired_augmentation_keeps_lr_the_downsampled_hr(superres_root, cache_dir):
    torch.manual_seed(0)
    dm = module(superres_root, cache_dir, batch_size=20)
    dm.setup("fit")
    lr, hr = next(iter(dm.train_dataloader()))
    torch.testing.assert_close(F.avg_pool2d(hr, 2), lr)  # holds before augmenting
    aug_lr, aug_hr = dm.batch_transform((lr, hr), train=True)
    assert aug_lr.shape == lr.shape and aug_hr.shape == hr.shape
    torch.testing.assert_close(F.avg_pool2d(aug_hr, 2), aug_lr)
    changed = (aug_lr != lr).flatten(1).any(1)
    assert changed.sum() >= 10  # most of the 18 samples were flipped or rotated
    # evaluation: untouched; augmentation off: untouched even in training
    ev_lr, ev_hr = dm.batch_transform((lr, hr), train=False)
    assert ev_lr is lr and ev_hr is hr
    off = module(superres_root, cache_dir, augment={"flips": False, "rot90": False})
    same = off.batch_transform((lr, hr), train=True)
    assert same[0] is lr and same[1] is hr


def test_patches_cover_the_same_sky_and_differ_per_sample(superres_root, cache_dir):
    torch.manual_seed(0)
    # No flips or rotations here, so each patch can be found in its image as it is.
    dm = module(
        superres_root,
        cache_dir,
        batch_size=20,
        patch_size=12,
        augment={"flips": False, "rot90": False},
    )
    dm.setup("fit")
    lr, hr = next(iter(dm.train_dataloader()))
    p_lr, p_hr = dm.batch_transform((lr, hr), train=True)
    assert p_lr.shape == (lr.shape[0], 1, 12, 12) and p_hr.shape == (lr.shape[0], 1, 24, 24)
    torch.testing.assert_close(F.avg_pool2d(p_hr, 2), p_lr)  # LR is still HR's block mean
    # Each LR patch is a piece of its own image, taken at its own place.
    places = set()
    for patch, image in zip(p_lr, lr, strict=True):
        windows = image.unfold(-2, 12, 1).unfold(-2, 12, 1)  # (1, 64, 64, 12, 12)
        hits = (windows == patch[0]).flatten(-2).all(-1).nonzero().tolist()
        assert hits, "a patch that is not a window of its image"
        places.add(tuple(hits[0][1:]))
    assert len(places) > 1
    ev_lr, _ = dm.batch_transform((lr, hr), train=False)  # validation: whole images
    assert ev_lr is lr
    with pytest.raises(LensexpError, match=r"^data\.patch_size=80: larger than the 75x75 LR"):
        module(superres_root, cache_dir, patch_size=80).batch_transform((lr, hr), train=True)


def test_rot90_only_never_flips(superres_root, cache_dir):
    torch.manual_seed(1)
    dm = module(superres_root, cache_dir, augment={"flips": False})
    x = torch.arange(16.0).reshape(1, 1, 4, 4).repeat(64, 1, 1, 1)
    y = torch.arange(64.0).reshape(1, 1, 8, 8).repeat(64, 1, 1, 1)
    lr, _ = dm.batch_transform([x, y], train=True)
    rotations = [torch.rot90(x[0], k, dims=(-2, -1)) for k in range(4)]
    assert all(any(torch.equal(s, r) for r in rotations) for s in lr)
    assert not all(torch.equal(s, x[0]) for s in lr)


def test_unknown_augment_key_is_an_error(superres_root, cache_dir):
    with pytest.raises(LensexpError, match="rotation_degrees"):
        module(superres_root, cache_dir, augment={"rotation_degrees": 10})


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", ["HR", "LR"])
def test_missing_hr_or_lr_folder(tmp_path, cache_dir, folder):
    root = make_superres_folder(tmp_path / "sr", 3, lr_size=8)
    shutil.rmtree(root / folder)
    with pytest.raises(LensexpError, match=rf"sr/{folder}: missing {folder}/ folder"):
        module(root, cache_dir, hr_size=16).setup("fit")


def test_val_folder_without_lr(tmp_path, cache_dir):
    root = make_superres_folder(tmp_path / "sr", 3, lr_size=8)
    make_superres_folder(root, 2, lr_size=8, subdir="val")
    shutil.rmtree(root / "val" / "LR")
    with pytest.raises(LensexpError, match=r"val/LR: missing LR/"):
        module(root, cache_dir, hr_size=16).setup("fit")


def test_empty_folders(tmp_path, cache_dir):
    (tmp_path / "sr" / "HR").mkdir(parents=True)
    (tmp_path / "sr" / "LR").mkdir()
    with pytest.raises(LensexpError, match="no .npy files"):
        module(tmp_path / "sr", cache_dir).setup("fit")


@pytest.mark.parametrize(
    ("folder", "size", "kind"), [("HR", 14, "HR"), ("LR", 7, "LR"), ("LR", 16, "LR")]
)
def test_wrong_scale_ratio_names_file_and_settings(tmp_path, cache_dir, folder, size, kind):
    root = make_superres_folder(tmp_path / "sr", 4, lr_size=8)
    save_image(root / folder / "img2.npy", np.zeros((size, size)))
    expected = 16 if kind == "HR" else 8
    pattern = (
        rf"{folder}/img2\.npy: {kind} image is {size}x{size}, expected {expected}x{expected}"
        r".*data\.scale=2.*data\.hr_size=16"
    )
    with pytest.raises(LensexpError, match=pattern):
        module(root, cache_dir, hr_size=16).setup("fit")


def test_lr_of_the_wrong_scale_with_sizes_from_files(tmp_path, cache_dir):
    root = make_superres_folder(tmp_path / "sr", 3, lr_size=8)  # really x2
    with pytest.raises(LensexpError, match=r"LR/img0\.npy: LR image is 8x8, expected 4x4.*scale=4"):
        module(root, cache_dir, scale=4, hr_size=None).setup("fit")
    with pytest.raises(LensexpError, match=r"data\.hr_size=150 is not a multiple of data\.scale=4"):
        module(root, cache_dir, scale=4)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_names_the_file(tmp_path, cache_dir, bad):
    root = make_superres_folder(tmp_path / "sr", 4, lr_size=8)
    image = np.ones((16, 16))
    image[3, 4] = bad
    save_image(root / "HR" / "img1.npy", image)
    with pytest.raises(LensexpError, match=r"HR/img1\.npy: 1 NaN/Inf pixels"):
        module(root, cache_dir, hr_size=16).setup("fit")


def test_truncated_and_junk_files_name_the_file(tmp_path, cache_dir):
    root = make_superres_folder(tmp_path / "sr", 4, lr_size=8)
    path = root / "LR" / "img3.npy"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(LensexpError, match=r"LR/img3\.npy: .*(readable|truncated)"):
        module(root, cache_dir, hr_size=16).setup("fit")
    path.write_bytes(b"definitely not numpy")
    with pytest.raises(LensexpError, match=r"LR/img3\.npy: "):
        module(root, cache_dir, hr_size=16).setup("fit")


def test_bad_settings(superres_root, cache_dir):
    with pytest.raises(LensexpError, match="data.scale"):
        module(superres_root, cache_dir, scale=0)
    with pytest.raises(LensexpError, match="data.hr_size=151"):
        module(superres_root, cache_dir, hr_size=151)


# -- Trainer-free use ------------------------------------------------------------------------
# The cache, worker and missing-root tests shared with classification are parametrised over both
# data modules in tests/test_data_classification.py.


def test_trainer_free_use(superres_root, cache_dir):
    dm = module(superres_root, cache_dir, batch_size=4)
    dm.prepare_data()
    dm.setup("fit")
    lr, hr = next(iter(dm.train_dataloader()))
    assert lr.shape == (4, 1, 75, 75) and hr.shape == (4, 1, 150, 150)
    torch.testing.assert_close(F.avg_pool2d(hr, 2), lr)
    assert len(dm.val_dataloader().dataset) == 2


def test_config_instantiates(tmp_path, superres_root):
    cfg = OmegaConf.load(CONF)
    paths = {"data_dir": str(tmp_path / "data"), "cache_dir": str(tmp_path / "cache")}
    full = OmegaConf.create({"paths": paths, "seed": 7, "data": cfg})
    assert full.data.default_root == f"{tmp_path}/data/sim_superres_superres_mild_2000"
    full.data.root = str(superres_root)
    dm = instantiate(full.data)
    assert isinstance(dm, SuperResolutionDataModule)
    assert (dm.scale, dm.hr_size, dm.flips, dm.rot90) == (2, 150, True, True)
    assert (dm.val_fraction, dm.test_fraction) == (0.1, 0.1)
    assert not dm.simulated and dm.train_seed == 7
    assert dm.cache_dir == tmp_path / "cache" and dm.normalize == "none"
    assert dm.state_for_model() == {
        "scale": 2,
        "generator": {"in_channels": 1, "out_channels": 1},
        "discriminator": {"in_channels": 1},
    }


def test_default_dataset_is_simulated(tmp_path, cache_dir):
    dm = SuperResolutionDataModule(
        default_root=str(tmp_path / "sim"),
        simulate={"n_pairs": 4, "num_workers": 1, "progress": False},
        cache_dir=str(cache_dir),
        batch_size=2,
        val_fraction=0.25,
    )
    dm.prepare_data()
    dm.setup("fit")
    lr, hr = next(iter(dm.val_dataloader()))
    assert lr.shape == (1, 1, 75, 75) and hr.shape == (1, 1, 150, 150)
    dm.setup("test")  # the simulated pairs have no test/: one seeded pair of the four
    assert len(dm.files["train"]) == 2 and len(dm.files["test"]) == 1


# -- bands (Model IV: three) ------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["chw", "hwc"])
def test_three_band_pairs(tmp_path, cache_dir, fmt):
    root = make_superres_folder(tmp_path / "sr", 4, lr_size=8, bands=3, fmt=fmt)
    dm, ds, files = built(root, cache_dir, "all", hr_size=None)
    assert dm.channels == 3
    assert dm.state_for_model()["generator"] == {"in_channels": 3, "out_channels": 3}
    for i, path in enumerate(files):
        lr, hr = ds[i]
        assert lr.shape == (3, 8, 8) and hr.shape == (3, 16, 16)
        np.testing.assert_array_equal(lr.numpy(), load_bands(path, fmt))
        np.testing.assert_array_equal(hr.numpy(), load_bands(root / "HR" / path.name, fmt))
        torch.testing.assert_close(F.avg_pool2d(hr[None], 2)[0], lr)  # band by band
    save_image(root / "LR" / "img2.npy", np.zeros((8, 8)))
    with pytest.raises(LensexpError, match=r"LR/img2\.npy: LR image has 1 band\(s\), expected 3"):
        module(root, cache_dir, hr_size=None).setup("fit")


@pytest.mark.parametrize("loss", ["mse", "adversarial"])
def test_three_band_pairs_build_a_three_band_generator(tmp_path, cache_dir, loss):
    from lensexp.builders import build_datamodule, build_module

    root = make_superres_folder(tmp_path / "sr", 4, lr_size=8, bands=3)
    overrides = ["model=srresnet", f"loss={loss}", f"data.root={root}", "data.hr_size=null",
                 f"paths.cache_dir={cache_dir}", "model.generator.n_blocks=1",
                 "model.generator.channels=8"]  # fmt: skip
    if loss == "adversarial":
        overrides += ["model.discriminator.channels=8", "model.discriminator.hidden=16"]
    cfg = compose_cfg(tmp_path, overrides)
    module = build_module(cfg, build_datamodule(cfg))
    generator = module.generator
    assert generator.head.conv.in_channels == 3 and generator.tail.out_channels == 3
    assert generator(torch.rand(2, 3, 8, 8)).shape == (2, 3, 16, 16)
    if loss == "adversarial":
        assert module.discriminator.stages[0].same.conv.in_channels == 3
    else:
        assert not hasattr(module, "discriminator")
