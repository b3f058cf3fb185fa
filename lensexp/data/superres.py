"""`SuperResolutionDataModule`: DeepLense super-resolution pairs (`HR/*.npy` + `LR/*.npy`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lensexp.checks import check_int
from lensexp.data.base import NpyDataModule
from lensexp.data.cache import packed_array
from lensexp.data.datasets import PackedDataset
from lensexp.data.npy import header_image_shape, list_npy, read_image, shape_mismatch
from lensexp.data.transforms import random_dihedral, random_patches
from lensexp.errors import LensexpError

AUGMENT_KEYS = ("flips", "rot90")


class SuperResolutionDataModule(NpyDataModule):
    """Pairs `ROOT/LR/<name>.npy` -> `ROOT/HR/<name>.npy`, matched by file name.

    HR images are `hr_size` pixels square (None: the first HR file's size) and LR images
    `hr_size // scale`; LR and HR have the bands of the first HR file (1, or 3 for Model IV).
    Optional `ROOT/val/{HR,LR}` validates and `ROOT/test/{HR,LR}` tests; without them a seeded
    `val_fraction` and `test_fraction` of the root pairs do (see `NpyDataModule.partition`), so
    the simulated default dataset (root pairs only) trains on 80%. Items are `(lr, hr)`; training
    batches get the same random flip/rot90 on LR and HR on the device.
    """

    task = "superres"
    pool_name = "the root's HR/LR pairs"

    def __init__(
        self,
        scale: int = 2,
        hr_size: int | None = 150,
        allow_pickle: bool = False,
        augment: dict[str, Any] | None = None,
        val_fraction: float = 0.1,
        patch_size: int | None = None,
        **base: Any,
    ) -> None:
        super().__init__(val_fraction=val_fraction, **base)
        self.scale = check_int("data.scale", scale, 1)
        self.patch_size = (
            None if patch_size is None else check_int("data.patch_size", patch_size, 1)
        )
        if hr_size is not None:
            if int(hr_size) < self.scale or int(hr_size) % self.scale:
                raise LensexpError(
                    f"data.hr_size={hr_size} is not a multiple of data.scale={self.scale}."
                )
            hr_size = int(hr_size)
        self.hr_size = hr_size
        self.allow_pickle = bool(allow_pickle)
        augment = dict(augment or {})
        unknown = sorted(set(augment) - set(AUGMENT_KEYS))
        if unknown:
            raise LensexpError(
                f"data.augment: unknown key(s) {unknown}; super-resolution knows "
                f"{list(AUGMENT_KEYS)} (anything else would break the LR/HR correspondence)."
            )
        self.flips = bool(augment.get("flips", True))
        self.rot90 = bool(augment.get("rot90", True))
        self._shapes: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None
        self._listed: dict[Path, tuple[list[Path], list[Path]]] = {}

    # -- layout -------------------------------------------------------------------------------
    def layout_help(self) -> str:
        return (
            "Expected ROOT/HR/*.npy and ROOT/LR/*.npy with the same file names (HR = data.scale "
            "x LR pixels), optional ROOT/val/{HR,LR} and ROOT/test/{HR,LR}."
        )

    def make_default_dataset(self) -> None:
        from lensexp.sim import make_superres_dataset

        make_superres_dataset(self.root, **self.simulate)

    def state_for_model(self) -> dict[str, Any]:
        """What the model needs to know about the data: the upscaling factor, and the bands
        its networks take (a nested dict reaches the model's network of that name, when the
        model has one; see `lensexp.builders.data_facts`)."""
        bands = self.channels
        return {
            "scale": self.scale,
            "generator": {"in_channels": bands, "out_channels": bands},
            "discriminator": {"in_channels": bands},
        }

    def pairs(self, folder: Path) -> tuple[list[Path], list[Path]]:
        """LR and HR files of `folder` (the root, val/ or test/), paired by name, sorted; listed
        once per data module (the root's first HR file also sets the image shapes, and one
        listing warns once about stray files)."""
        if folder not in self._listed:
            self._listed[folder] = self._list_pairs(folder)
        return self._listed[folder]

    def _list_pairs(self, folder: Path) -> tuple[list[Path], list[Path]]:
        hr_dir, lr_dir = folder / "HR", folder / "LR"
        for sub in (hr_dir, lr_dir):
            if not sub.is_dir():
                raise LensexpError(f"{sub}: missing {sub.name}/ folder. {self.layout_help()}")
        hr = {p.name: p for p in list_npy(hr_dir, self.root, "HR images")}
        lr = {p.name: p for p in list_npy(lr_dir, self.root, "LR images")}
        if not hr and not lr:
            raise LensexpError(f"{folder}: HR/ and LR/ hold no .npy files. {self.layout_help()}")
        if hr.keys() != lr.keys():
            only_hr, only_lr = sorted(hr.keys() - lr.keys()), sorted(lr.keys() - hr.keys())
            example = (
                f"{hr[only_hr[0]]} has no LR/{only_hr[0]}"
                if only_hr
                else f"{lr[only_lr[0]]} has no HR/{only_lr[0]}"
            )
            raise LensexpError(
                f"{example}: HR/ has {len(hr)} .npy files and LR/ has {len(lr)}, "
                f"{len(only_hr)} unpaired in HR/ and {len(only_lr)} in LR/; pairs are matched "
                f"by file name, so give each image the same name in both folders."
            )
        names = sorted(hr)
        return [lr[n] for n in names], [hr[n] for n in names]

    # -- shapes -------------------------------------------------------------------------------
    def shapes(self) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """Expected (LR, HR) image shapes (C, H, W), fixed on first use: the bands of the first
        HR file of the root pairs, and its size unless `hr_size` is set."""
        if self._shapes is None:
            first_hr = self.pairs(self.root)[1][0]
            c, h, w = read_image(first_hr, self.allow_pickle).shape
            if self.hr_size is not None:
                h = w = self.hr_size
            elif h % self.scale or w % self.scale:
                raise LensexpError(
                    f"{first_hr}: HR image is {h}x{w}, not divisible by data.scale={self.scale}."
                )
            self._shapes = ((c, h // self.scale, w // self.scale), (c, h, w))
        return self._shapes

    @property
    def channels(self) -> int:
        """The number of bands of every LR and HR image (1, or 3 for Model IV)."""
        return self.shapes()[1][0]

    def _check_shapes(self, files: list[Path], expected: tuple[int, ...], kind: str) -> None:
        """Fail on the first file of the wrong shape, naming the settings that fix it."""
        (_, lh, lw), (c, hh, hw) = self.shapes()
        for path in files:
            shape = header_image_shape(path)
            if shape is None:
                continue  # pickled or unreadable: packing reads it and reports it
            problem = shape_mismatch(path, shape, expected, f"{kind} image")
            if problem is not None:
                raise LensexpError(
                    f"{problem} (HR {hh}x{hw} = data.scale={self.scale} x LR {lh}x{lw}, "
                    f"data.hr_size={self.hr_size}; {c} band(s), as the first HR file). Set "
                    f"data.scale and data.hr_size to match your data (data.hr_size=null reads it "
                    f"from the files); LR and HR need the bands of the first HR file."
                )

    def _pack(self, name: str, lr_files: list[Path], hr_files: list[Path]) -> list[Path]:
        lr_shape, hr_shape = self.shapes()
        self._check_shapes(hr_files, hr_shape, "HR")
        self._check_shapes(lr_files, lr_shape, "LR")
        hint = f"data.hr_size={self.hr_size}, data.scale={self.scale}"
        return [
            packed_array(
                files,
                self.packed_dir,
                f"{name}-{kind}",
                shape,
                allow_pickle=self.allow_pickle,
                normalize=self.normalize,
                hint=hint,
            )
            for files, kind, shape in ((lr_files, "lr", lr_shape), (hr_files, "hr", hr_shape))
        ]

    # -- splits -------------------------------------------------------------------------------
    def build_split(self, split: str) -> tuple[PackedDataset, list[Path]] | None:
        if not self.root.is_dir():
            raise LensexpError(f"data.root={self.root}: no such folder. {self.layout_help()}")
        if split in ("val", "test") and (self.root / split).is_dir():
            lr, hr = self.pairs(self.root / split)
            return PackedDataset(self._pack(split, lr, hr), np.arange(len(lr))), lr
        if split == "test" and "test" not in self.carved_splits():
            return None
        lr, hr = self.pairs(self.root)
        val_dir = self.root / "val"
        if split == "all" and val_dir.is_dir():
            val_lr, val_hr = self.pairs(val_dir)
            lr, hr = lr + val_lr, hr + val_hr
            return PackedDataset(self._pack("all", lr, hr), np.arange(len(lr))), lr
        # all (no val/), train and the carved splits share one pack of the root pairs.
        arrays = self._pack("pairs", lr, hr)
        if split == "all":
            return PackedDataset(arrays, np.arange(len(lr))), lr
        idx = self.partition(len(lr), self.split_seed)[split]
        return PackedDataset(arrays, idx), [lr[i] for i in idx]

    def batch_transform(self, batch: Any, train: bool) -> Any:
        """Training: a random `patch_size` LR patch per sample and the HR patch it covers (when
        set), then the same random flip/rot90 on both; otherwise identity."""
        if not train:
            return batch
        lr, hr = batch
        if self.patch_size is not None:
            lr, hr = random_patches(lr, hr, self.patch_size, self.scale)
        if self.flips or self.rot90:
            lr, hr = random_dihedral(lr, hr, flips=self.flips, rot90=self.rot90)
        return type(batch)((lr, hr)) if isinstance(batch, (list, tuple)) else (lr, hr)
