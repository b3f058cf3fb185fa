"""What the classification and super-resolution data modules share: where the data is, the
simulated default dataset, the packed cache, seeded splits and the dataloaders."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

from lensexp.checks import check_choice, check_int
from lensexp.data.cache import cache_folder
from lensexp.data.datasets import PackedDataset, collate_batch
from lensexp.data.npy import NORMALIZE
from lensexp.errors import LensexpError
from lensexp.provenance import usable_cpus

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test", "all")


def _held_out(n: int, fraction: float) -> int:
    """How many of `n` images `fraction` holds out: round(n * fraction), at least one; none for 0."""
    return 0 if fraction == 0 else max(1, round(n * fraction))


def seeded_split(
    n: int, seed: int, val_fraction: float = 0.0, test_fraction: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted train, val and test indices of `range(n)`, the same on every run and machine for
    a given seed: one permutation drawn from `seed`, whose first `_held_out(n, val_fraction)`
    entries are val, the next `_held_out(n, test_fraction)` test, the rest train.

    Val comes first so that it is the same with or without a test split (the val split of runs
    made before lensexp held out a test split).
    """
    perm = np.random.default_rng(seed).permutation(n)
    n_val, n_test = _held_out(n, val_fraction), _held_out(n, test_fraction)
    if n_val + n_test >= n:
        fractions = {"val_fraction": val_fraction, "test_fraction": test_fraction}
        given = " and ".join(f"data.{k}={v}" for k, v in fractions.items() if v)
        raise LensexpError(
            f"cannot split {n} images with {given}: none would be left to train on; lower "
            f"the fractions, or give val/ and test/ folders (data.test_fraction=0: no test split)."
        )
    end = n_val + n_test
    return np.sort(perm[end:]), np.sort(perm[:n_val]), np.sort(perm[n_val:end])


def loader_workers(num_workers: int | str) -> int:
    """`data.num_workers`: a number, or auto. A batch from the memory-mapped cache is one copy,
    so on the CPU worker processes would only take cores from training: auto = 0 there; with a
    GPU, auto = half the usable cores, at most 4, to prepare batches while the GPU computes."""
    if num_workers != "auto":
        return check_int("data.num_workers", num_workers, 0)
    return min(4, usable_cpus() // 2) if torch.cuda.is_available() else 0


def derived_seed(*parts: int) -> int:
    """One 32-bit seed from several integers (a run's seed, an epoch, a batch), distinct for
    distinct tuples in practice."""
    seed = 0
    for part in parts:
        seed = seed * 100_003 + int(part)
    return seed % 2**32


def seed_generators(seed: int) -> None:
    """Seed Python's, NumPy's and torch's random generators: the CPU's, and those of the
    accelerators in use (CUDA, MPS, XPU).

    Not `torch.manual_seed`, which is called once per training batch here: for every
    accelerator not yet initialised (on a CPU machine CUDA, everywhere XPU) it queues the
    seeding with a formatted traceback of its caller, about 0.2 ms a device from inside
    Lightning's loop (docs/benchmarks.md, framework cost).
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(seed)
    if torch.backends.mps.is_available():
        torch.mps.manual_seed(seed)
    xpu = getattr(torch, "xpu", None)  # not in every torch version of pyproject's range
    if xpu is not None and xpu.is_initialized():
        xpu.manual_seed_all(seed)


class EpochShuffle(Sampler[int]):
    """A permutation of the dataset drawn from (`seed`, epoch) alone; Lightning calls
    `set_epoch` before each epoch, so a resumed run sees the uninterrupted run's order."""

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(derived_seed(self.seed, self.epoch))
        return iter(torch.randperm(self.n, generator=generator).tolist())

    def __len__(self) -> int:
        return self.n


class NpyDataModule(L.LightningDataModule):
    """Base for lensexp's data modules: subclasses say how a split's files become a dataset.

    `root=None` means the simulated default dataset at `default_root`, made by `prepare_data`
    with the `simulate` settings when it is missing. `normalize`: `minmax` (each image to
    [0, 1] on its own) or `none` (pixel values as the files hold them); see
    `lensexp.data.npy.normalize_image`.

    Splits: `ROOT/val/` and `ROOT/test/` when they exist; otherwise each is cut out of the
    training pool (`pool_name`) by `seeded_split` with `split_seed`: val `val_fraction` of it,
    test `test_fraction` (0: no test split).
    """

    task: str = ""
    # What the seeded val and test splits are cut from, for messages.
    pool_name: str = ""

    def __init__(
        self,
        root: str | None = None,
        default_root: str | None = None,
        simulate: dict[str, Any] | None = None,
        batch_size: int = 64,
        num_workers: int | str = "auto",
        pin_memory: bool | None = None,
        cache_dir: str | None = None,
        val_fraction: float = 0.2,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        predict_split: str = "val",
        train_seed: int = 0,
        normalize: str = "none",
    ) -> None:
        super().__init__()
        if root is None and default_root is None:
            raise LensexpError("data.root is not set: give data.root=DIR.")
        self.root = Path(root if root is not None else default_root).expanduser()
        self.simulated = root is None
        self.simulate = dict(simulate or {})
        self.batch_size = check_int("data.batch_size", batch_size, 1)
        self.num_workers = loader_workers(num_workers)
        self.pin_memory = pin_memory
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        if not 0.0 <= self.test_fraction < 1.0:
            raise LensexpError(
                f"data.test_fraction={test_fraction}: must lie in [0, 1) (0: no test split)."
            )
        self._said_seeded_test = False
        self.split_seed = int(split_seed)
        self.train_seed = int(train_seed)
        self._seeded_epoch, self._batch_in_epoch = -1, 0
        self.predict_split = check_choice("split", predict_split, SPLITS)
        self.normalize = check_choice("data.normalize", normalize, NORMALIZE)
        self.datasets: dict[str, PackedDataset] = {}
        self.files: dict[str, list[Path]] = {}
        self._prepared = False

    # -- subclass hooks ---------------------------------------------------------------------
    def make_default_dataset(self) -> None:  # pragma: no cover - overridden
        """Simulate the default dataset into `self.root`."""
        raise NotImplementedError

    def build_split(self, split: str) -> tuple[PackedDataset, list[Path]] | None:
        """The dataset of `split` and its files in item order, or None if the split is absent."""
        raise NotImplementedError  # pragma: no cover

    def batch_transform(self, batch: Any, train: bool) -> Any:
        """Augment or resize a batch on its device; identity by default."""
        return batch

    def example_input(self) -> Tensor | None:
        """The model's input for the first item of the first split set up (training first), as
        evaluation transforms it: a batch of one, for the model summary's sizes and FLOPs. None
        before `setup`."""
        dataset = next((self.datasets[s] for s in SPLITS if s in self.datasets), None)
        if dataset is None or len(dataset) == 0:
            return None
        return self.batch_transform(dataset.__getitems__([0]), train=False)[0]

    def metadata(self, split: str) -> Any:
        """What is known of each file of `split` beyond its label, for the evaluation report
        (a `lensexp.data.manifest.FileMetadata`); None by default."""
        return None

    @property
    def channels(self) -> int:  # pragma: no cover - overridden
        """The number of bands of every image (read from the files, before `setup`)."""
        raise NotImplementedError

    # -- shared machinery ---------------------------------------------------------------------
    @property
    def packed_dir(self) -> Path:
        """Where this dataset's packed cache lives (never inside the data folder by default)."""
        base = self.cache_dir if self.cache_dir is not None else self.root / ".lensexp_cache"
        return cache_folder(base, self.root)

    def prepare_data(self) -> None:
        # Lightning calls this before fit and before each later evaluation; once is enough
        # (checking a simulated dataset costs about 0.15 s).
        if self._prepared:
            return
        if self.simulated:
            self.make_default_dataset()
            self._prepared = True
        elif not self.root.is_dir():
            raise LensexpError(f"data.root={self.root}: no such folder. {self.layout_help()}")

    def layout_help(self) -> str:
        """One sentence describing the expected folder layout."""
        return ""

    def carved_splits(self) -> tuple[str, ...]:
        """The splits cut out of the training pool: val without `ROOT/val/`, test without
        `ROOT/test/` (unless `test_fraction` is 0)."""
        carved = () if (self.root / "val").is_dir() else ("val",)
        if not (self.root / "test").is_dir() and self.test_fraction > 0:
            carved += ("test",)
        return carved

    def partition(self, n: int, seed: int) -> dict[str, np.ndarray]:
        """Indices of a training pool of `n` items for train and the carved splits (an empty
        array for a split with a folder of its own)."""
        carved = self.carved_splits()
        if "val" in carved and not 0.0 < self.val_fraction < 1.0:
            raise LensexpError(
                f"data.val_fraction={self.val_fraction}: must lie strictly between 0 and 1."
            )
        if "test" in carved and not self._said_seeded_test:
            self._said_seeded_test = True
            log.info(
                "no %s: %s is the test split (data.split_seed=%d)",
                self.root / "test",
                self._seeded_share(),
                self.split_seed,
            )
        val_fraction = self.val_fraction if "val" in carved else 0.0
        test_fraction = self.test_fraction if "test" in carved else 0.0
        train, val, test = seeded_split(n, seed, val_fraction, test_fraction)
        return {"train": train, "val": val, "test": test}

    @property
    def test_source(self) -> str | None:
        """Where the test split comes from, in words (the log, results.json); None: none."""
        if (self.root / "test").is_dir():
            return str(self.root / "test")
        if self.test_fraction == 0:
            return None
        return f"{self._seeded_share()} (data.split_seed={self.split_seed})"

    def _seeded_share(self) -> str:
        """The seeded test split in words, e.g. "a seeded 10% of train/"."""
        return f"a seeded {self.test_fraction * 100:g}% of {self.pool_name}"

    def setup(self, stage: str | None = None) -> None:
        wanted = {
            "fit": ("train", "val"),
            "validate": ("val",),
            "test": ("test",),
            "predict": (self.predict_split,),
        }.get(stage or "fit", ("train", "val"))
        for split in wanted:
            if split in self.datasets:
                continue
            built = self.build_split(split)
            if built is None:  # only test, with no test/ and test_fraction 0
                raise LensexpError(
                    f"{self.root}: no test split (no test/ folder and data.test_fraction=0); "
                    f"use split=val or all, or set data.test_fraction."
                )
            self.datasets[split], self.files[split] = built

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            raise LensexpError(f"{self.root}: no {split} split to load.")
        pin = torch.cuda.is_available() if self.pin_memory is None else self.pin_memory
        dataset = self.datasets[split]
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochShuffle(len(dataset), self.train_seed)
            if shuffle
            else self._share(dataset),
            num_workers=self.num_workers,
            pin_memory=pin,
            persistent_workers=self.num_workers > 0,
            # A training batch of one image cannot train batch norm (PyTorch refuses it); that
            # image, a different one each epoch, waits for the next epoch instead.
            drop_last=shuffle and len(dataset) % self.batch_size == 1,
            collate_fn=collate_batch,
        )

    def _share(self, dataset: Any) -> Sampler[int] | None:
        """Under DDP, this process's share of an evaluation split, each image in exactly one
        share: Lightning's own DistributedSampler pads the shares to equal length with repeated
        images, which synced metrics would then count twice."""
        trainer = self.trainer
        if trainer is None or trainer.world_size == 1 or not trainer.distributed_sampler_kwargs:
            return None
        return UnrepeatedDistributedSampler(
            dataset, shuffle=False, **trainer.distributed_sampler_kwargs
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_split, shuffle=False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, Tensor):
            # The model summary's `example_input`: already a model input, and not a training
            # batch (seeding for it would shift every batch's augmentation).
            return batch
        training = self.trainer is not None and self.trainer.training
        if training:
            self._seed_batch(self.trainer.current_epoch)
        return self.batch_transform(batch, train=training)

    def _seed_batch(self, epoch: int) -> None:
        """Seed the random generators from (train_seed, epoch, batch of the epoch), so this
        batch's augmentation and the training step's dropout depend on nothing before it: a run
        resumed from an epoch's checkpoint continues exactly as the uninterrupted run."""
        if epoch != self._seeded_epoch:
            self._seeded_epoch, self._batch_in_epoch = epoch, 0
        # Not seed_everything: that also rewrites PL_GLOBAL_SEED, which data workers read.
        seed_generators(derived_seed(self.train_seed, epoch, self._batch_in_epoch))
        self._batch_in_epoch += 1
