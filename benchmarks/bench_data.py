"""Data: one epoch through lensexp's data module (memory-mapped cache, augmentation and resize
on batches) against the reference notebook's per-file loading (torchvision `DatasetFolder` +
`np.load` + resize to 224 per image) on the same folder; the share of a training step spent
waiting for data; memory against data workers; epoch time and memory against dataset size.

Run:  python benchmarks/bench_data.py [--quick]   (writes the "data" section)
"""

from __future__ import annotations

import argparse
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


def notebook_epoch(train_dir: Path, batch_size: int) -> tuple[float, int]:
    """Seconds for one shuffled epoch as the notebook loads it: a file per item, np.load, a
    tensor, torchvision's Resize to 224, collated by a DataLoader without workers."""
    from torch.utils.data import DataLoader
    from torchvision import transforms
    from torchvision.datasets import DatasetFolder

    transform = transforms.Compose(
        [lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32)), transforms.Resize(224)]
    )
    dataset = DatasetFolder(str(train_dir), loader=np.load, extensions=(".npy",),
                            transform=transform)  # fmt: skip
    start = time.perf_counter()
    for _ in DataLoader(dataset, batch_size=batch_size, shuffle=True):
        pass
    return time.perf_counter() - start, len(dataset)


def lensexp_epoch(datamodule: Any) -> float:
    """Seconds for one training epoch of batches as training sees them (augmented, resized)."""
    start = time.perf_counter()
    for batch in datamodule.train_dataloader():
        datamodule.batch_transform(batch, train=True)
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
    sizes = (8, 16, 32) if quick else (100, 200, 400)
    steps = 3 if quick else 20
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data_dir = tmp / "data"
        sim = [f"data.simulate.n_per_class={n_per_class}"]
        cfg = compose_cfg([*REFERENCE, *sim], data_dir, tmp / "out")
        datamodule = build_datamodule(cfg)
        datamodule.setup("fit")  # builds the memory-mapped cache, outside the timings
        lensexp_epoch(datamodule)  # warm the page cache for both sides alike
        ours, theirs, n = [], [], 0
        for _ in range(1 if quick else 3):
            seconds, n = notebook_epoch(Path(datamodule.root) / "train", cfg.data.batch_size)
            theirs.append(seconds)
            ours.append(lensexp_epoch(datamodule))
        ratio = min(theirs) / min(ours)

        default = compose_cfg(["model.pretrained=none", "trainer=cpu", *sim], data_dir, tmp / "o")
        default_dm = build_datamodule(default)
        default_dm.setup("fit")
        waiting, transforming, steps = wait_fraction(default, default_dm, steps)

        memory = {
            w: run_probe(
                "loader_memory", overrides=sim, data_dir=str(data_dir), out=str(tmp / "m"),
                workers=w,
            )
            for w in (0, 2)
        }  # fmt: skip
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

    mem_rows = "\n".join(
        f"| {w} | {m['seconds']:.2f} | {m['main_peak_rss_mib']:.0f} | {m['main_pss_mib']:.0f} | "
        f"{m['workers_pss_mib']:.0f} | {m['main_pss_mib'] + m['workers_pss_mib']:.0f} |"
        for w, m in memory.items()
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
`data.simulate.n_per_class={n_per_class}`), batch {cfg.data.batch_size}, no workers, best of
{1 if quick else 3} interleaved: the reference notebook's loading (a `DatasetFolder` with `np.load`
and torchvision `Resize(224)` per image) against lensexp's data module with the reference recipe
(`experiment=reference_classifier`: the packed memory-mapped cache, built once before timing,
then augmentation and the resize to 224 on whole batches).

| notebook recipe (s) | lensexp (s) | lensexp faster by | goal |
| --- | --- | --- | --- |
| {min(theirs):.2f} | {min(ours):.3f} | {ratio:.1f}x | at least 10x |

Waiting for data in training (the default classifier, plain loop, {steps} steps): the loader's
next batch takes **{100 * waiting:.2f}%** of the step time (goal under 2%); the batch transform
(augmentation on the batch) {100 * transforming:.2f}%.

Memory against data workers (one epoch of the training loader, `data.num_workers`; PSS counts
pages shared with other processes, such as the memory-mapped cache, once in all):

| workers | epoch (s) | main process peak RSS (MiB) | main PSS (MiB) | workers' PSS, peak sum (MiB) | total PSS (MiB) |
| --- | --- | --- | --- | --- | --- |
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
