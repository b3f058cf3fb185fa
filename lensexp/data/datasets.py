"""Datasets over packed caches: batches are read with one fancy index, not one file per image."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset


class PackedDataset(Dataset):
    """Rows `indices` of one or more aligned packed arrays (N, C, H, W), plus optional labels.

    An item is `(array_0[i], array_1[i], ..., label)` with each image as a (C, H, W) tensor and
    `labels` one per packed row: integer class indices (int64) or regression targets (float32);
    several arrays give aligned pairs (LR, HR). Arrays are memory-mapped lazily in each process,
    so a DataLoader worker never receives or copies the images themselves.
    """

    def __init__(
        self,
        arrays: Sequence[Path],
        indices: np.ndarray,
        labels: np.ndarray | None = None,
    ) -> None:
        self.arrays = [Path(a) for a in arrays]
        self.indices = np.asarray(indices, dtype=np.int64)
        if labels is not None:
            labels = np.asarray(labels)
            labels = labels.astype(np.float32 if labels.dtype.kind == "f" else np.int64)
        self.labels = labels
        self._maps: list[np.ndarray] | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_maps"] = None  # each worker maps the files itself
        return state

    def _mapped(self) -> list[np.ndarray]:
        if self._maps is None:
            self._maps = [np.load(a, mmap_mode="r") for a in self.arrays]
        return self._maps

    def close(self) -> None:
        """Unmap the arrays (they are mapped again on the next read)."""
        self._maps = None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple:
        """One item: a (C, H, W) tensor per array, then the label as a numpy scalar."""
        row = self.indices[i]
        item = tuple(torch.from_numpy(np.array(m[row])) for m in self._mapped())
        return item if self.labels is None else (*item, self.labels[row])

    def __getitems__(self, positions: Sequence[int]) -> list[torch.Tensor]:
        """The batch at `positions`, already stacked: one (N, C, H, W) tensor per array, then
        the (N,) labels, as torch's default collate stacks the items (`collate_batch` passes it
        on). Each image is copied once, straight out of the memory map into the batch: an
        epoch costs what one copy of its images costs (docs/benchmarks.md, data loading)."""
        rows = self.indices[np.asarray(positions, dtype=np.int64)]
        batch = [torch.from_numpy(np.take(m, rows, axis=0)) for m in self._mapped()]
        if self.labels is not None:
            batch.append(torch.from_numpy(self.labels[rows]))
        return batch


def collate_batch(batch: list[torch.Tensor]) -> list[torch.Tensor]:
    """A DataLoader's `collate_fn` for PackedDataset, whose `__getitems__` stacks the batch."""
    return batch
