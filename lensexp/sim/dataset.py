"""Dataset generation: the plan of files, sharding, the process pool, resume, and the manifest.

The public entry points are `make_classification_dataset` and `make_superres_dataset`; the
command line (`python -m lensexp.sim`) calls the same functions.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from lensexp.checks import check_int
from lensexp.errors import LensexpError
from lensexp.sim import writer
from lensexp.sim.config import load_preset
from lensexp.sim.physics import CLASSES
from lensexp.sim.simulate import Simulator

log = logging.getLogger(__name__)

STATE_FORMAT = 1


@dataclass(frozen=True)
class Item:
    """One unit of work: an image (classification) or an HR/LR pair (super-resolution)."""

    cls: str
    index: int
    files: tuple[str, ...]
    split: str | None = None


def _every(index: int, f: Fraction) -> bool:
    """Whether `index` is one of the floor(n f) indices chosen among range(n), for every n:
    those where floor((i+1) f) > floor(i f), every (1/f)-th one."""
    return (index + 1) * f // 1 > index * f // 1


def split_of(index: int, val_fraction: float, test_fraction: float) -> str:
    """Where image `index` of a class goes: `train`, `val` or `test`.

    Every (1/h)-th index is held out, h = val_fraction + test_fraction; of the held-out ones,
    every (h/test_fraction)-th goes to test/ and the others to val/. The choice depends on the
    index alone, so asking for more images later keeps every earlier file where it was. A class
    of n images has floor(n h) held out, floor(floor(n h) test_fraction / h) of them in test/.
    With test_fraction 0 this is the two-split layout (every (1/val_fraction)-th in val/).
    """
    val = Fraction(val_fraction).limit_denominator(1_000_000)
    test = Fraction(test_fraction).limit_denominator(1_000_000)
    held = val + test
    if held == 0 or not _every(index, held):
        return "train"
    # h < 1, so floor(i h) grows by at most one per index: it counts the held-out ones before.
    return "test" if _every(index * held // 1, test / held) else "val"


def classification_plan(n_per_class: int, val_fraction: float, test_fraction: float) -> list[Item]:
    """All images of a classification dataset, classes interleaved so work chunks mix them."""
    items = []
    for i in range(n_per_class):
        split = split_of(i, val_fraction, test_fraction)
        for cls in CLASSES:
            items.append(Item(cls, i, (f"{split}/{cls}/{cls}_{i:06d}.npy",), split))
    return items


def superres_plan(n_pairs: int, classes: list[str]) -> list[Item]:
    """All HR/LR pairs of a super-resolution dataset (classes taken in turn)."""
    return [
        Item(classes[i % len(classes)], i, (f"HR/{i:06d}.npy", f"LR/{i:06d}.npy"))
        for i in range(n_pairs)
    ]


# ----------------------------------------------------------------------------- workers

_WORKER: dict = {}


def _init_worker(cfg: dict, task: str, seed: int, out: str, classes: tuple[str, ...]) -> None:
    sim = Simulator(cfg, task)
    sim.warm_up(classes)
    _WORKER.update(sim=sim, seed=seed, out=Path(out))


def _limit_threads() -> None:
    if "torch" in sys.modules:  # one thread per process: the pool is the parallelism
        sys.modules["torch"].set_num_threads(1)


def _init_spawned(*args) -> None:
    # A failing Pool initializer makes the pool respawn workers forever; keep the error and
    # raise it from the first task instead, which ends the run with that message.
    try:
        _init_worker(*args)
        _limit_threads()
    except Exception as err:
        _WORKER["error"] = err


def _render(item: Item) -> int:
    """Render one item and write its file(s) atomically (runs in a worker or inline)."""
    if "error" in _WORKER:
        raise _WORKER["error"]
    sim: Simulator = _WORKER["sim"]
    out: Path = _WORKER["out"]
    seed: int = _WORKER["seed"]
    if sim.task == "classification":
        image, _ = sim.image(item.cls, seed, item.index)
        writer.atomic_save(out / item.files[0], image)
    else:
        hr, lr, _ = sim.pair(item.cls, seed, item.index)
        writer.atomic_save(out / item.files[0], hr)
        writer.atomic_save(out / item.files[1], lr)
    return item.index


def resolve_workers(num_workers: int) -> int:
    """`num_workers`, with 0 meaning every core this process may use."""
    if num_workers > 0:
        return num_workers
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _mp_context():
    # fork starts workers instantly with lenstronomy already imported; it is unsafe only once
    # CUDA is initialised in this process (e.g. a Lightning run), where spawn is used.
    torch = sys.modules.get("torch")
    cuda_live = torch is not None and torch.cuda.is_initialized()
    if "fork" in mp.get_all_start_methods() and not cuda_live:
        return mp.get_context("fork")
    return mp.get_context("spawn")


@contextlib.contextmanager
def _progress_bar(total: int, description: str, enabled: bool) -> Iterator[Callable[[], None]]:
    if not enabled or total == 0:
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


def _render_all(
    pending: list[Item], cfg: dict, task: str, seed: int, out: Path, processes: int, progress: bool
) -> None:
    description = f"simulating {task} ({cfg['name']})"
    classes = tuple(sorted({it.cls for it in pending}))
    # Built here once; forked workers inherit it ready to render (spawned ones rebuild it).
    _init_worker(cfg, task, seed, str(out), classes)
    if processes <= 1:
        with _progress_bar(len(pending), description, progress) as advance:
            for item in pending:
                _render(item)
                advance()
        return
    chunk = max(1, min(8, len(pending) // (processes * 8)))
    # The pool is created before the progress bar starts its refresh thread (fork safety).
    ctx = _mp_context()
    if ctx.get_start_method() == "fork":
        init, args = _limit_threads, ()
    else:
        init, args = _init_spawned, (cfg, task, seed, str(out), classes)
    with (
        ctx.Pool(processes, initializer=init, initargs=args) as pool,
        _progress_bar(len(pending), description, progress) as advance,
    ):
        for _ in pool.imap_unordered(_render, pending, chunksize=chunk):
            advance()


# ----------------------------------------------------------------------------- the runs


def _run(
    task: str,
    out,
    count: int,
    count_name: str,
    *,
    preset: str,
    seed: int,
    val_fraction: float | None,
    test_fraction: float,
    num_workers: int,
    overwrite: bool,
    progress: bool,
    overrides: Mapping | None,
    shard: int,
    num_shards: int,
) -> Path:
    """Make this shard of a dataset in `out`: check the inputs, plan every file, prepare the
    folder, render the missing files and write the manifest. Returns the absolute `out`."""
    _check_counts(count_name, count, seed, num_workers, shard, num_shards)
    if out is None or str(out) in ("", "???"):
        raise LensexpError("out is required: the folder to write the dataset into (out=DIR).")
    out = Path(out).expanduser().absolute()
    cfg = load_preset(preset, overrides)
    sim = Simulator(cfg, task)
    plan, sizes = _plan(sim, count, val_fraction, test_fraction)
    # By image index, so each shard gets every class in equal measure (vort is the slowest).
    mine = [it for it in plan if it.index % num_shards == shard]
    state = {"format": STATE_FORMAT, "task": task, "seed": seed, "preset": cfg}
    if val_fraction is not None:
        state["val_fraction"] = val_fraction
    # Only when there is a test split: a folder simulated before test/ existed holds exactly
    # the files of test_fraction=0, and must resume as it is.
    if test_fraction:
        state["test_fraction"] = test_fraction
    writer.prepare_output(
        out,
        state,
        planned={f for it in plan for f in it.files},
        mine={f for it in mine for f in it.files},
        overwrite=overwrite,
    )
    for folder in sorted({str(Path(f).parent) for it in mine for f in it.files}):
        (out / folder).mkdir(parents=True, exist_ok=True)

    pending = [
        it
        for it in mine
        if not all(writer.is_complete(out / f, s) for f, s in zip(it.files, sizes, strict=True))
    ]
    processes = min(resolve_workers(num_workers), max(1, len(pending)))
    _log_start(out, task, shard, num_shards, len(mine), len(pending), processes)
    manifest_ok = writer.manifest_rows(out / writer.MANIFEST) == len(plan)
    if pending:
        # No manifest while files are missing: its presence means "dataset complete".
        (out / writer.MANIFEST).unlink(missing_ok=True)
        writer.remove_manifest_part(out, shard, num_shards)
        _render_all(pending, cfg, task, seed, out, processes, progress)
    if pending or not manifest_ok:
        tag = f"{writer.state_hash(state)}-n{count}"
        _write_manifest(out, sim, plan, mine, seed, shard, num_shards, tag)
    return out


def _check_counts(
    count_name: str, count: int, seed: int, num_workers: int, shard: int, num_shards: int
) -> None:
    check_int(count_name, count, 1)
    check_int("seed", seed, 0)
    check_int("num_workers", num_workers, 0)
    check_int("num_shards", num_shards, 1)
    check_int("shard", shard, 0)
    if shard >= num_shards:
        raise LensexpError(
            f"shard={shard} must be below num_shards={num_shards} (shards count from 0)."
        )


def _plan(
    sim: Simulator, count: int, val_fraction: float | None, test_fraction: float
) -> tuple[list[Item], tuple[int, ...]]:
    """Every item of the dataset, and the byte size of a complete file for each of an item's."""
    hr_size = writer.npy_size(sim.hr_shape)
    if sim.task == "classification":
        return classification_plan(count, val_fraction, test_fraction), (hr_size,)
    plan = superres_plan(count, sim.cfg["superres"]["classes"])
    return plan, (hr_size, writer.npy_size(sim.lr_shape))


def _log_start(
    out: Path, task: str, shard: int, num_shards: int, n_mine: int, n_pending: int, processes: int
) -> None:
    where = f" (shard {shard} of {num_shards})" if num_shards > 1 else ""
    unit = "images" if task == "classification" else "pairs"
    if n_pending:
        log.info(
            "%s%s: %d of %d %s present, rendering %d with %d process(es)",
            out,
            where,
            n_mine - n_pending,
            n_mine,
            unit,
            n_pending,
            processes,
        )
    else:
        log.info("%s%s: all %d %s present", out, where, n_mine, unit)


def _write_manifest(
    out: Path,
    sim: Simulator,
    plan: list[Item],
    mine: list[Item],
    seed: int,
    shard: int,
    num_shards: int,
    tag: str,
) -> None:
    """This shard's manifest rows; `manifest.csv` itself once every shard's rows are there."""
    rows = [_manifest_row(sim, it, seed) for it in mine]
    columns = list(_manifest_row(sim, plan[0], seed))  # this shard may own no image
    if writer.write_manifest(out, rows, columns, shard, num_shards, tag):
        log.info("%s: wrote %s (%d rows)", out, writer.MANIFEST, len(plan))
    else:
        log.info("%s: shard %d done; manifest.csv follows when every shard is done", out, shard)


def _manifest_row(sim: Simulator, item: Item, seed: int) -> dict:
    head = {"file": item.files[0] if item.split else Path(item.files[0]).name}
    if item.split:
        head["split"] = item.split
    row = sim.describe(item.cls, seed, item.index)
    return {**head, "class": row.pop("class"), "seed": seed, "index": item.index, **row}


def make_classification_dataset(
    out,
    n_per_class: int,
    *,
    preset: str = "model_i",
    seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    num_workers: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    overrides: dict | None = None,
    shard: int = 0,
    num_shards: int = 1,
) -> Path:
    """Simulate `OUT/{train,val,test}/{no,sphere,vort}/*.npy` (each (1, H, W) float32) +
    manifest.csv.

    `n_per_class` images per class: floor(n_per_class * (val_fraction + test_fraction)) held
    out, half of them in test/ for equal fractions (see `split_of`), the rest in train/;
    test_fraction=0 writes no test/. Image i of a class depends only on (seed, class, i), so
    reruns resume (complete files are skipped) and the bytes do not depend on `num_workers`
    (0 = all cores) or on sharding (`shard` of `num_shards` makes the images with
    index % num_shards == shard). `overrides` changes preset settings by key, e.g.
    `{"halo.e1": [-0.2, 0.2], "instrument.num_pix": 64}`.
    Returns the output folder; raises LensexpError on bad input.
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise LensexpError(f"{name} must be a number in [0, 1), got {value!r}.")
    if val_fraction + test_fraction >= 1:
        raise LensexpError(
            f"val_fraction={val_fraction} + test_fraction={test_fraction} must stay below 1, "
            f"or train/ would be empty."
        )
    return _run(
        "classification",
        out,
        n_per_class,
        "n_per_class",
        preset=preset,
        seed=seed,
        val_fraction=float(val_fraction),
        test_fraction=float(test_fraction),
        num_workers=num_workers,
        overwrite=overwrite,
        progress=progress,
        overrides=overrides,
        shard=shard,
        num_shards=num_shards,
    )


def make_superres_dataset(
    out,
    n_pairs: int,
    *,
    preset: str = "superres_mild",
    seed: int = 0,
    num_workers: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    overrides: dict | None = None,
    shard: int = 0,
    num_shards: int = 1,
) -> Path:
    """Simulate `OUT/HR/*.npy` and `OUT/LR/*.npy` pairs (same file names) + manifest.csv.

    HR and LR show the same lens and source; the preset's `superres.degradation` makes LR by
    rendering it again at its own pixel scale, PSF and noise (`render`) or from HR by
    downsampling (`downsample`). Same resume, determinism and sharding rules as
    `make_classification_dataset`. Returns the output folder.
    """
    return _run(
        "superres",
        out,
        n_pairs,
        "n_pairs",
        preset=preset,
        seed=seed,
        val_fraction=None,
        test_fraction=0.0,
        num_workers=num_workers,
        overwrite=overwrite,
        progress=progress,
        overrides=overrides,
        shard=shard,
        num_shards=num_shards,
    )
