"""Data: one epoch through lensexp's data module (memory-mapped cache, resize on batches)
against the reference notebook's per-file loading (torchvision `DatasetFolder` + `np.load` +
resize to 224 per image) on the same folder, with the page cache warm and cold; the share of a
training step spent waiting for data; memory against data workers at two dataset sizes; epoch
time and memory against dataset size.

Run:  python benchmarks/bench_data.py [--quick]   (writes the "data" section)
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._common import compose_cfg, describe_machine, run_probe  # noqa: E402
from benchmarks._report import write_section  # noqa: E402
from lensexp.builders import build_datamodule, build_module  # noqa: E402

# The reference notebook's data settings (conf/experiment/reference_classifier.yaml).
REFERENCE = ["experiment=reference_classifier", "model.pretrained=none", "trainer=cpu"]


def evict(paths: list[Path]) -> None:
    """Drop `paths` from the page cache (posix_fadvise DONTNEED), so the next read comes from
    the disk as on a first epoch or a shared file system."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def notebook_epoch(train_dir: Path, batch_size: int, resize: bool, cold: bool) -> float:
    """Seconds for one shuffled epoch as the notebook loads it: a file per item, np.load, a
    tensor, (with `resize`) torchvision's Resize to 224 per image, collated by a DataLoader
    without workers."""
    from torch.utils.data import DataLoader
    from torchvision import transforms
    from torchvision.datasets import DatasetFolder

    steps = [lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32))]
    transform = transforms.Compose([*steps, transforms.Resize(224)] if resize else steps)
    dataset = DatasetFolder(str(train_dir), loader=np.load, extensions=(".npy",),
                            transform=transform)  # fmt: skip
    if cold:
        evict([Path(path) for path, _ in dataset.samples])
    start = time.perf_counter()
    for _ in DataLoader(dataset, batch_size=batch_size, shuffle=True):
        pass
    return time.perf_counter() - start


def lensexp_epoch(datamodule: Any, transform: str, cold: bool) -> float:
    """Seconds for one training epoch of the data module's batches: as read ("none"), resized
    as for evaluation ("resize": the recipe's resize to 224 on whole batches) or as training
    sees them ("train": augmentation too)."""
    if cold:
        dataset = datamodule.datasets["train"]
        dataset.close()  # pages still mapped into this process would stay cached
        gc.collect()
        evict(dataset.arrays)
    start = time.perf_counter()
    for batch in datamodule.train_dataloader():
        if transform != "none":
            datamodule.batch_transform(batch, train=transform == "train")
    return time.perf_counter() - start


def wait_fraction(cfg: Any, datamodule: Any, batches: int) -> tuple[float, float, int]:
    """Of the time of `batches` training steps (plain loop, the default classifier): the share
    spent waiting for the loader's next batch, and the share of the batch transform."""
    from benchmarks.bench_train import plain_step

    module = build_module(cfg, datamodule)
    step = plain_step(module)
    module.train()
    waiting = transforming = 0.0
    loader = datamodule.train_dataloader()
    batches = min(batches, len(loader))
    loader = iter(loader)
    start = time.perf_counter()
    for i in range(batches):
        t0 = time.perf_counter()
        batch = next(loader)
        t1 = time.perf_counter()
        batch = datamodule.batch_transform(batch, train=True)
        t2 = time.perf_counter()
        step(batch, i)
        waiting, transforming = waiting + t1 - t0, transforming + t2 - t1
    total = time.perf_counter() - start
    return waiting / total, transforming / total, batches


def main(quick: bool = False, write: bool = True) -> str:
    n_per_class = 20 if quick else 300
    memory_sizes = (20, 40) if quick else (300, 1200)
    sizes = (8, 16, 32) if quick else (100, 200, 400)
    steps = 3 if quick else 20
    repeats = 1 if quick else 3
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data_dir = tmp / "data"
        sim = [f"data.simulate.n_per_class={n_per_class}"]
        cfg = compose_cfg([*REFERENCE, *sim], data_dir, tmp / "out")
        datamodule = build_datamodule(cfg)
        datamodule.setup("fit")  # builds the memory-mapped cache, outside the timings
        train_dir = Path(datamodule.root) / "train"
        batch = int(cfg.data.batch_size)
        n = len(datamodule.datasets["train"])
        cases = {  # name: (notebook resizes, lensexp transform, cold page cache)
            "read": (False, "none", False),
            "read + resize": (True, "resize", False),
            "cold read": (False, "none", True),
            "cold read + resize": (True, "resize", True),
        }
        lensexp_epoch(datamodule, "train", False)  # warm up both sides alike
        notebook_epoch(train_dir, batch, True, False)
        timings: dict[str, tuple[list[float], list[float]]] = {c: ([], []) for c in cases}
        augmented = []
        for _ in range(repeats):  # interleaved: drift hits both sides alike
            for case, (resize, transform, cold) in cases.items():
                timings[case][0].append(notebook_epoch(train_dir, batch, resize, cold))
                timings[case][1].append(lensexp_epoch(datamodule, transform, cold))
            augmented.append(lensexp_epoch(datamodule, "train", False))

        default = compose_cfg(["model.pretrained=none", "trainer=cpu", *sim], data_dir, tmp / "o")
        default_dm = build_datamodule(default)
        default_dm.setup("fit")
        waiting, transforming, steps = wait_fraction(default, default_dm, steps)

        memory = {}
        for size in memory_sizes:
            over = [f"data.simulate.n_per_class={size}"]
            build_datamodule(compose_cfg(over, data_dir, tmp / "m")).setup("fit")
            for w in (0, 1, 2):
                memory[size, w] = run_probe("loader_memory", overrides=over,
                                            data_dir=str(data_dir), out=str(tmp / "m"), workers=w)  # fmt: skip
        scaling = {}
        for size in sizes:
            over = [
                "model.pretrained=none", "trainer=cpu", "scheduler=none",
                f"data.simulate.n_per_class={size}",
                "data.simulate.val_fraction=0.2", "data.simulate.test_fraction=0.2",
            ]  # fmt: skip
            build_datamodule(compose_cfg(over, data_dir, tmp / "s"))  # simulate outside timing
            scaling[size] = run_probe("epoch", overrides=over, data_dir=str(data_dir),
                                      out=str(tmp / "s"))  # fmt: skip

    labels = {
        "read": "reading (page cache warm)",
        "read + resize": "reading + resize to 224 on the CPU (warm)",
        "cold read": "reading, files dropped from the page cache first",
        "cold read + resize": "reading + resize to 224 (cold)",
    }
    load_rows = "\n".join(
        f"| {labels[c]} | {min(theirs):.3f} | {min(ours):.3f} | {min(theirs) / min(ours):.1f}x |"
        for c, (theirs, ours) in timings.items()
    )
    mem_rows = "\n".join(
        f"| {size} | {m['images']} | {w} | {m['seconds']:.2f} | {m['total_pss_mib']:.0f} | "
        f"{m['total_pss_mib'] - memory[size, 0]['total_pss_mib']:+.0f} | "
        f"{m['workers_private_mib']:.0f} |"
        for (size, w), m in memory.items()
    )
    size_rows = "\n".join(
        f"| {s} | {r['images']} | {r['seconds']:.1f} | {r['images'] / r['seconds']:.1f} | "
        f"{r['peak_rss_mib']:.0f} |"
        for s, r in scaling.items()
    )
    command = "python -m benchmarks" + (" --quick" if quick else "")
    markdown = f"""## Data loading

Command: `{command}`. Machine: {describe_machine()}.

One shuffled training epoch of the same simulated folder ({n} images of 150 px, train/ of
`data.simulate.n_per_class={n_per_class}`), batch {batch}, no workers, best of {repeats}
interleaved: the reference notebook's loading (a `DatasetFolder` with `np.load` per file, and
torchvision `Resize(224)` per image where the row says so) against lensexp's data module with
the reference recipe (`experiment=reference_classifier`: the packed memory-mapped cache, built
once before timing; its resize to 224 runs on whole batches after the loader, on the training
device). "Cold": every file of the side being timed (the .npy files; the packed cache) dropped
from the page cache with `posix_fadvise(DONTNEED)` just before the epoch.

| one epoch | notebook recipe (s) | lensexp (s) | lensexp faster by |
| --- | --- | --- | --- |
{load_rows}

Goal: at least 10x. With the reference augmentation as well (rotation, flips, random centre
crop, resize; on whole batches), lensexp's epoch takes {min(augmented):.3f} s.

Waiting for data in training (the default classifier, plain loop, {steps} steps): the loader's
next batch takes **{100 * waiting:.2f}%** of the step time (goal under 2%); the batch transform
(augmentation on the batch) {100 * transforming:.2f}%.

Memory against data workers: two epochs of the training loader of the default recipe with
`data.num_workers` worker processes, at two dataset sizes. Total memory is the sum of all the
processes' proportional set sizes (PSS: a page shared by k processes counts 1/k in each, so
the memory-mapped cache and the libraries count once) at one instant, its peak over the
epochs; the workers' private pages are what they hold that no other process shares.

| n_per_class | training images | workers | epoch (s) | total PSS (MiB) | vs no workers (MiB) | workers' private (MiB) |
| --- | --- | --- | --- | --- | --- | --- |
{mem_rows}

Epoch time and peak memory against dataset size (one Lightning training epoch, no validation,
default classifier, a process per size; peak RSS includes the model, optimizer and Python):

| n_per_class | training images | epoch (s) | images/s | peak RSS (MiB) |
| --- | --- | --- | --- | --- |
{size_rows}
"""
    if write:
        write_section("data", markdown)
    return markdown


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    print(main(parser.parse_args().quick))
