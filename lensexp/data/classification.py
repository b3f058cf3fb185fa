"""`LensClassificationDataModule`: DeepLense classification folders (`train/<class>/*.npy`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from lensexp.checks import check_int
from lensexp.data.base import NpyDataModule
from lensexp.data.cache import pack_masses, packed_array
from lensexp.data.datasets import PackedDataset
from lensexp.data.manifest import FileMetadata, manifest_columns, read_manifest
from lensexp.data.npy import inside, list_npy, read_image
from lensexp.data.transforms import ClassificationTransform
from lensexp.errors import LensexpError

log = logging.getLogger(__name__)


class LensClassificationDataModule(NpyDataModule):
    """Images of `ROOT/{train,val,test}/<class>/*.npy`; class index = position in `classes`.

    `classes=None` takes the sorted folder names of `train/`. Without `val/`, a seeded
    stratified `val_fraction` of `train/` validates; without `test/`, a seeded stratified
    `test_fraction` of it is the test split (see `NpyDataModule.partition`). Every image has the
    bands of the first one (see `image_shape`) and is `image_size` pixels square, or, with
    `image_size=None`, the first image's size. Augmentation, centre crop and resize run per
    batch on the training device (see `lensexp.data.transforms`).
    """

    task = "classification"
    pool_name = "train/"
    # split=all: images in folders that are not classes are refused (False) or left out (True).
    skip_other_folders = False

    def __init__(
        self,
        classes: list[str] | None = None,
        image_size: int | None = None,
        allow_pickle: bool = False,
        augment: dict[str, Any] | None = None,
        center_crop: int | None = None,
        resize: int | None = None,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        self.requested_classes = [str(c) for c in classes] if classes else None
        if image_size is not None:
            image_size = check_int("data.image_size", image_size, 1)
        self.image_size = image_size
        self.allow_pickle = bool(allow_pickle)
        self.transform = ClassificationTransform(
            center_crop=center_crop, resize=resize, **(augment or {})
        )
        self._classes: list[str] | None = None
        self._shape: tuple[int, int, int] | None = None
        self._listed: dict[Path, tuple[list[Path], np.ndarray]] = {}
        self._first: Path | None = None
        self._manifest: dict[str, dict[str, float]] | None = None
        self._manifest_read = False

    def layout_help(self) -> str:
        return (
            "Expected ROOT/train/<class>/*.npy and ROOT/val/<class>/*.npy (optional test/), "
            "one folder per class (no, sphere, vort; for the public Model I-IV folders "
            "no_sub, cdm, axion give data.classes=[no_sub,cdm,axion])."
        )

    def make_default_dataset(self) -> None:
        from lensexp.sim import make_classification_dataset

        make_classification_dataset(self.root, **self.simulate)

    @property
    def classes(self) -> list[str]:
        """Class names in index order."""
        if self._classes is None:
            if self.requested_classes:
                self._classes = self.requested_classes
            else:
                train = self.root / "train"
                if not train.is_dir():
                    raise LensexpError(f"{self.root}: no train/ folder. {self.layout_help()}")
                self._classes = sorted(p.name for p in train.iterdir() if p.is_dir())
                if not self._classes:
                    raise LensexpError(f"{train}: no class folders. {self.layout_help()}")
        return self._classes

    def _class_files(self, split_dir: Path) -> tuple[list[Path], np.ndarray]:
        """The images of `split_dir` and their labels, listed once per data module (the first
        image also sets the image shape; one listing warns once about stray files)."""
        if split_dir not in self._listed:
            self._listed[split_dir] = self._list_class_files(split_dir)
        return self._listed[split_dir]

    def _list_class_files(self, split_dir: Path) -> tuple[list[Path], np.ndarray]:
        files, labels = [], []
        for index, name in enumerate(self.classes):
            folder = split_dir / name
            if not folder.is_dir():
                raise LensexpError(
                    f"{folder}: missing class folder (data.classes={self.classes}). "
                    f"{self.layout_help()}"
                )
            found = list_npy(folder, self.root, "class folder")
            if not found:
                raise LensexpError(
                    f"{folder}: empty class folder; add .npy images, or leave the class out of "
                    f"data.classes (now {self.classes})."
                )
            files += found
            labels += [index] * len(found)
        return files, np.asarray(labels, dtype=np.int64)

    def _all_files(self) -> tuple[list[Path], np.ndarray]:
        """Every `.npy` under the root, labelled by its parent folder's name."""
        index = {name: i for i, name in enumerate(self.classes)}
        files = sorted(self.root.rglob("*.npy"))
        # Hidden folders hold caches (.lensexp_cache, also one left by an earlier run that had
        # no cache_dir) and simulator state, never images.
        files = [
            f
            for f in files
            if self.packed_dir not in f.parents
            and not any(part.startswith(".") for part in f.relative_to(self.root).parts[:-1])
        ]
        outside = [f for f in files if not inside(f, self.root)]
        if outside:
            log.warning(
                "%s: skipped %d symlink(s) leading outside data.root", self.root, len(outside)
            )
            files = [f for f in files if f not in outside]
        unknown = [f for f in files if f.parent.name not in index]
        if unknown and self.skip_other_folders:
            files = [f for f in files if f.parent.name in index]
        elif unknown:
            raise LensexpError(
                f"{unknown[0]}: its folder {unknown[0].parent.name!r} is not a class "
                f"({', '.join(self.classes)}); set data.classes or move the file."
            )
        if not files:
            raise LensexpError(f"{self.root}: no .npy files. {self.layout_help()}")
        return files, np.asarray([index[f.parent.name] for f in files], dtype=np.int64)

    # -- image shape ----------------------------------------------------------------------------
    def _first_file(self) -> Path:
        """The image that sets the bands (and without `image_size` the size): the first of
        train/, else of val/ or test/, else of the whole root."""
        for split in ("train", "val", "test"):
            if (self.root / split).is_dir():
                return self._class_files(self.root / split)[0][0]
        return self._all_files()[0][0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image: C bands as the first image has (`_first_file`), H = W =
        `image_size`, or the first image's size when `image_size` is None. Fixed on first use,
        so every split of one run has the same shape."""
        if self._shape is None:
            self._first = self._first_file()
            c, h, w = read_image(self._first, self.allow_pickle).shape
            size = (h, w) if self.image_size is None else (self.image_size, self.image_size)
            self._shape = (c, *size)
        return self._shape

    @property
    def channels(self) -> int:
        """The number of bands of every image (1 for Model I-III, 3 for Model IV)."""
        return self.image_shape[0]

    def _shape_hint(self) -> str:
        """The end of a wrong-shape error: where the expected shape came from."""
        source = f"the first image, {self._first}"
        if self.image_size is None:
            return f"data.image_size=null: every image has the size and bands of {source}"
        return f"set data.image_size to change the size; the bands are those of {source}"

    def _pack(self, name: str, files: list[Path]) -> Path:
        shape = self.image_shape
        return packed_array(
            files,
            self.packed_dir,
            name,
            shape,
            allow_pickle=self.allow_pickle,
            normalize=self.normalize,
            hint=self._shape_hint(),
        )

    def build_split(self, split: str) -> tuple[PackedDataset, list[Path]] | None:
        if not self.root.is_dir():
            raise LensexpError(f"data.root={self.root}: no such folder. {self.layout_help()}")
        if split == "all":
            files, labels = self._all_files()
            return PackedDataset([self._pack("all", files)], np.arange(len(files)), labels), files
        folder = self.root / split
        if split != "train" and folder.is_dir():
            files, labels = self._class_files(folder)
            return PackedDataset([self._pack(split, files)], np.arange(len(files)), labels), files
        if split == "test" and "test" not in self.carved_splits():
            return None
        # train/ less the splits carved from it by seeded permutations; they all index the
        # one packed train/ array (all of it for train when nothing is carved).
        files, labels = self._class_files(self.root / "train")
        idx = self._stratified_split(labels)[split]
        dataset = PackedDataset([self._pack("train", files)], idx, labels)
        return dataset, [files[i] for i in idx]

    def _stratified_split(self, labels: np.ndarray) -> dict[str, np.ndarray]:
        """Train, val and test indices of train/, each class split on its own (with seed
        split_seed + class index), so every split keeps the class proportions."""
        parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
        for c in np.unique(labels):
            members = np.flatnonzero(labels == c)
            for split, idx in self.partition(len(members), self.split_seed + int(c)).items():
                parts[split].append(members[idx])
        return {split: np.sort(np.concatenate(idx)) for split, idx in parts.items()}

    def batch_transform(self, batch: Any, train: bool) -> Any:
        images, labels = batch
        return self.transform(images, train=train), labels

    def labels_of(self, split: str) -> np.ndarray:
        """Labels of `split` in item order."""
        ds = self.datasets[split]
        return ds.labels[ds.indices]

    def manifest(self) -> dict[str, dict[str, float]] | None:
        """The root's `manifest.csv` rows by file (see `lensexp.data.manifest`), read once."""
        if not self._manifest_read:
            self._manifest, self._manifest_read = read_manifest(self.root), True
        return self._manifest

    def metadata(self, split: str) -> FileMetadata:
        """The axion mass and manifest physics of `split`'s items (after `setup`), in order."""
        return self.file_metadata(self.datasets[split], self.files[split])

    def file_metadata(self, dataset: PackedDataset, files: list[Path]) -> FileMetadata:
        """The axion mass and manifest physics of `dataset`'s items (`files`, in order).

        The mass is the one an `[image, mass]` file holds, else the manifest's `axion_mass`.
        """
        masses = pack_masses(dataset.arrays[0])[dataset.indices]
        manifest = self.manifest()
        columns = None if manifest is None else manifest_columns(manifest, self.root, files)
        if columns is not None and "axion_mass" in columns:
            masses = np.where(np.isnan(masses), columns["axion_mass"], masses)
        return FileMetadata(masses, columns)

    def state_for_model(self) -> dict[str, Any]:
        """What the model needs to know about the data: the class names and the bands."""
        return {"class_names": self.classes, "in_channels": self.channels}
