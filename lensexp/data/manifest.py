"""The simulator's `manifest.csv` (one row per image, keyed by its path under the dataset root)
and the per-file metadata that reaches the evaluation report: the axion mass, and the physics
the manifest records for each image."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lensexp.errors import LensexpError

MANIFEST = "manifest.csv"
# The manifest column that keys its rows: the image's path relative to the dataset root.
FILE_COLUMN = "file"


@dataclass
class FileMetadata:
    """What is known about each evaluated file beyond its label, in file order.

    `axion_mass`: eV, NaN where unknown (from the `[image, mass]` files, else the manifest).
    `manifest`: every numeric manifest column (NaN where a cell is empty), or None when the
    dataset root has no `manifest.csv`.
    """

    axion_mass: np.ndarray
    manifest: dict[str, np.ndarray] | None = field(default=None)

    def head(self, n: int) -> FileMetadata:
        """The metadata of the first `n` files (a limited run predicts only those)."""
        manifest = None if self.manifest is None else {k: v[:n] for k, v in self.manifest.items()}
        return FileMetadata(self.axion_mass[:n], manifest)


def _number(text: str) -> float | None:
    """A cell as a float (NaN for an empty one); None when it is not a number."""
    if text.strip() == "":
        return math.nan
    try:
        return float(text)
    except ValueError:
        return None


def read_manifest(root: Path) -> dict[str, dict[str, float]] | None:
    """`ROOT/manifest.csv` as {file path relative to ROOT: {column: value}}, numeric columns
    only (a column with any non-numeric cell, such as `class`, is left out); None without one."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            columns = list(reader.fieldnames or [])
    except (OSError, csv.Error, UnicodeDecodeError) as err:
        raise LensexpError(f"{path}: unreadable manifest ({err}); fix or remove it.") from err
    if FILE_COLUMN not in columns:
        raise LensexpError(
            f"{path}: no `{FILE_COLUMN}` column (the image path under the dataset root); "
            f"fix or remove the manifest."
        )
    parsed = {c: [_number(row.get(c) or "") for row in rows] for c in columns if c != FILE_COLUMN}
    numeric = [c for c, values in parsed.items() if all(v is not None for v in values)]
    return {
        Path(row[FILE_COLUMN]).as_posix(): {c: parsed[c][i] for c in numeric}
        for i, row in enumerate(rows)
    }


def manifest_columns(
    manifest: dict[str, dict[str, float]], root: Path, files: Sequence[Path]
) -> dict[str, np.ndarray]:
    """The manifest's numeric columns for `files` (under `root`), in order; NaN for a file the
    manifest does not list."""
    columns = sorted({c for row in manifest.values() for c in row})
    out = {c: np.full(len(files), np.nan) for c in columns}
    root = Path(root)
    for i, f in enumerate(files):
        row = manifest.get(Path(f).relative_to(root).as_posix())
        if row is None:
            continue
        for c, value in row.items():
            out[c][i] = value
    return out
