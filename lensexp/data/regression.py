"""`AxionMassDataModule`: the images of the axion (vortex) class with their axion masses, for
the axion-mass regression (`python train.py model=axion_regression`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lensexp.data.classification import LensClassificationDataModule
from lensexp.data.datasets import PackedDataset
from lensexp.errors import LensexpError


class AxionMassDataModule(LensClassificationDataModule):
    """The images of `ROOT/{train,val,test}/<class>/*.npy` for the classes in `classes` (the
    axion folder: `[vort]` for simulated sets, `[axion]` for the public Model I-IV sets), each
    labelled with log10 of its axion mass in eV (float32).

    The mass is the one a Model I-IV `[image, mass]` file holds, else the `axion_mass` of its
    row in `ROOT/manifest.csv` (the simulator's); an image with neither stops the run naming
    the file. Splits, cache, shapes and augmentation are those of the classification data.
    """

    task = "regression"
    pool_name = "train/"
    # split=all: the other classes' folders hold no masses to regress; they are left out.
    skip_other_folders = True

    def layout_help(self) -> str:
        return (
            "Expected ROOT/train/<class>/*.npy (optional val/, test/) for the axion class only "
            "(data.classes=[vort] for simulated sets, [axion] for the public Model I-IV sets), "
            "each image with a mass ([image, mass] files, or ROOT/manifest.csv's axion_mass)."
        )

    def _pack(self, name: str, files: list[Path]) -> Path:
        # Its own pack name, so classification runs on the same root keep theirs.
        return super()._pack(f"{name}_{'_'.join(self.classes)}", files)

    def build_split(self, split: str) -> tuple[PackedDataset, list[Path]] | None:
        built = super().build_split(split)
        if built is None:
            return None
        dataset, files = built
        masses = self.file_metadata(dataset, files).axion_mass
        missing = np.flatnonzero(~(masses > 0))
        if missing.size:
            raise LensexpError(
                f"{files[missing[0]]}: no axion mass ({missing.size} of {len(files)} {split} "
                f"images lack one); the regression reads it from Model I-IV [image, mass] files "
                f"or ROOT/manifest.csv's axion_mass column: give data.classes the axion folder "
                f"only (now {self.classes}; [vort] simulated, [axion] Model I-IV)."
            )
        # Targets are indexed by packed row, as PackedDataset reads them.
        n_rows = np.load(dataset.arrays[0], mmap_mode="r").shape[0]
        targets = np.full(n_rows, np.nan, dtype=np.float32)
        targets[dataset.indices] = np.log10(masses)
        return PackedDataset(dataset.arrays, dataset.indices, targets), files

    def state_for_model(self) -> dict[str, Any]:
        """What the model needs to know about the data: the images' bands."""
        return {"in_channels": self.channels}
