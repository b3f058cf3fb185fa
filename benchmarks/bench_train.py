"""Training throughput: the Lightning path that `train.py` runs against a plain PyTorch loop with
the same network, loss, optimizer, batches and batch transform.

Run from the repository root:  python benchmarks/bench_train.py [--repeats 4] [--quick]
(or all benchmarks: python -m benchmarks). Writes the "training" section of docs/benchmarks.md;
with --overhead, the framework's work per step (null networks), its "overhead" section.

The Lightning side is built from the real configs (hydra compose + lensexp.builders)
and trained by a Trainer with the default callbacks (checkpointing off: it would write files the
plain loop doesn't; the progress bar drawn, as in a terminal) and a CSV logger, so logging,
drawing and metric updates count against it. Each side
times the same window of batches after a warm-up, in wall time and in process CPU time (all
threads). Each measurement is a fresh process, the two sides alternating, and the table gives
the medians and ranges over processes: the same side's speed differs by several percent from
one process to the next, more than the 2% goal, so one process per side says little
(docs/benchmarks.md says how much the medians can).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import lightning as L  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from lightning.pytorch.callbacks import Callback, ModelCheckpoint  # noqa: E402

from benchmarks._common import compose_cfg, describe_machine  # noqa: E402
from benchmarks._report import write_section  # noqa: E402
from lensexp.builders import build_callbacks, build_datamodule, build_module  # noqa: E402

# name -> (overrides, batches, warm-up batches). Pretrained weights can't change the speed, so
# the benchmark never tries the network. srgan runs VGG19 to conv5_4 on 150 px images: on a CPU
# under 1 pair/s, hence fewer batches.
CASES: dict[str, tuple[list[str], int, int]] = {
    "classifier, small_resnet (default), 150 px": (["model=small_resnet"], 25, 5),
    "classifier, mobilenet_v3_large, 150 px": (
        ["model=mobilenet_v3_large", "model.pretrained=none"],
        25,
        5,
    ),
    "srresnet 16 blocks, mse": (["model=srresnet", "loss=mse"], 25, 5),
    "srresnet 16 blocks, srgan": (
        ["model=srresnet", "loss=srgan", "loss.weights=random"],
        6,
        2,
    ),
}


# The framework's own work per step, large enough to measure: each case's data, batch transform,
# loss, metrics, optimizer, callbacks and logger around networks that cost next to nothing
# (NULL_NETWORKS), so the sides differ by the framework's work alone, in milliseconds, where a
# real network's step differs by a few percent of a noisy whole. name -> (overrides, epochs,
# warm-up batches): whole epochs of datasets larger than the defaults (about 70 batches an
# epoch), so that each process times a few seconds rather than a fraction of one.
OVERHEAD_CASES: dict[str, tuple[list[str], int, int]] = {
    "classifier, small_resnet (default)": (
        ["model=small_resnet", "data.simulate.n_per_class=1200"],
        4,
        5,
    ),
    "srresnet 16 blocks, mse": (
        ["model=srresnet", "loss=mse", "data.simulate.n_pairs=1400"],
        4,
        5,
    ),
    "srresnet 16 blocks, adversarial (two optimizers)": (
        ["model=srresnet", "loss=adversarial", "data.simulate.n_pairs=1400"],
        4,
        5,
    ),
}
# The real networks' plain-loop step, the overhead's denominator: batches, warm-up batches.
REAL_STEP_BATCHES = {"classification": (12, 2), "superres": (5, 1)}


class NullClassifier(nn.Module):
    """Logits from each image's mean pixel: a classifier with next to no cost."""

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n_classes))
        self.bias = nn.Parameter(torch.zeros(n_classes))

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(1, 2, 3))[:, None] * self.weight + self.bias


class NullGenerator(nn.Module):
    """Nearest-neighbour upsampling with one weight: a generator with next to no cost."""

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = scale
        self.weight = nn.Parameter(torch.ones(1))

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=self.scale, mode="nearest") * self.weight


class NullDiscriminator(nn.Module):
    """One logit from each image's mean pixel: a discriminator with next to no cost."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(1, 2, 3))[:, None] * self.weight + self.bias


def use_null_networks(module: Any) -> None:
    """Swap the module's networks for NULL ones, before any optimizer is made."""
    if module.task == "classification":
        module.net = NullClassifier(len(module.class_names))
        return
    module.generator = NullGenerator(module.scale)
    if getattr(module, "discriminator", None) is not None:
        module.discriminator = NullDiscriminator()


# --quick: a few batches (and SR batches of 4) to check that the benchmark runs, not to measure.
QUICK = {"batches": 3, "warmup": 1, "sr_batch": 4}


class Window:
    """Wall and process CPU time between `start()` and `stop()`."""

    def start(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


class WindowTimer(Callback):
    """Wall and CPU time, and images, from the start of batch `warmup` (counted over epochs) to
    the end of the last batch."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.window = Window()
        self.wall = self.cpu = 0.0
        self.seen = self.images = 0

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if self.seen == self.warmup:
            self.window.start()

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        self.seen += 1
        if self.seen > self.warmup:
            self.images += len(batch[0])
            self.wall, self.cpu = self.window.stop()


def case_cfg(
    overrides: list[str], data_dir: Path, out: Path, batches: int | None, epochs: int = 1
) -> Any:
    """The case's config: `epochs` epochs of `batches` batches each (None: all), no validation."""
    limits = [
        "trainer=cpu",
        f"trainer.max_epochs={epochs}",
        f"++trainer.limit_train_batches={'null' if batches is None else batches}",
        "++trainer.limit_val_batches=0",
        "++trainer.num_sanity_val_steps=0",
        "logger=csv",
        "scheduler=none",  # no validation here for a plateau scheduler to read
        # The bar as in a terminal: this worker's stdout is a pipe, where it draws none.
        "callbacks.progress_bar.terminal_only=false",
    ]
    return compose_cfg([*overrides, *limits], data_dir, out)


def build(cfg: Any, null: bool) -> tuple[Any, Any]:
    """The data module and task module of `cfg`, with NULL networks if `null`."""
    L.seed_everything(0)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule)
    if null:
        use_null_networks(module)
    return datamodule, module


def lightning_rate(cfg: Any, warmup: int, null: bool = False) -> tuple[float, float]:
    """Images/s (wall) and CPU seconds per image of the Lightning path, fitting as `cfg` says
    (its epochs and batches) and timing from batch `warmup` on."""
    datamodule, module = build(cfg, null)
    timer = WindowTimer(warmup)
    callbacks = [c for c in build_callbacks(cfg) if not isinstance(c, ModelCheckpoint)]
    loggers = [instantiate(n) for n in cfg.logger.values()]
    trainer = instantiate(
        cfg.trainer,
        callbacks=[*callbacks, timer],
        logger=loggers,
        enable_checkpointing=False,
        enable_model_summary=False,  # the summary is one of `callbacks`, as in build_trainer
    )
    trainer.fit(module, datamodule=datamodule)
    return timer.images / timer.wall, timer.cpu / timer.images


def plain_rate(cfg: Any, warmup: int, null: bool = False) -> tuple[float, float]:
    """The same objects driven by a hand-written loop (what a script without Lightning does),
    the same epochs and batches: images/s (wall) and CPU seconds per image."""
    datamodule, module = build(cfg, null)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    batches = cfg.trainer.limit_train_batches or len(loader)
    step = plain_step(module)
    module.train()
    window = Window()
    seen = images = 0
    for epoch in range(cfg.trainer.max_epochs):
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        for i, batch in enumerate(loader):
            if i == batches:
                break
            if seen == warmup:
                window.start()
            step(datamodule.batch_transform(batch, train=True), i)
            seen += 1
            if seen > warmup:
                images += len(batch[0])
    wall, cpu = window.stop()
    return images / wall, cpu / images


def plain_step(module: Any) -> Callable[[Any, int], None]:
    """One optimisation step for the module's task, written out by hand."""
    if module.task == "classification":
        opt = module.optimizer_factory(module.trainable_parameters())

        def step(batch: Any, i: int) -> None:
            x, y = batch
            loss = module.loss(module.net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    gen_opt = module.optimizer_factory(module.generator.parameters())
    disc = getattr(module, "discriminator", None)
    disc_opt = module.optimizer_factory(disc.parameters()) if disc is not None else None

    def sr_step(batch: Any, i: int) -> None:
        lr, hr = batch
        sr = module.generator(lr)
        fake = None
        if disc is not None:
            # As the module does: gradients reach sr through the discriminator, not its weights.
            disc.requires_grad_(False)
            fake = disc(sr)
            disc.requires_grad_(True)
        g_loss, _ = module.loss(sr, hr, fake_logits=fake)
        gen_opt.zero_grad(set_to_none=True)
        g_loss.backward()
        gen_opt.step()
        if disc_opt is not None:
            d_loss, _ = module.loss.discriminator_loss(disc(hr), disc(sr.detach()))
            disc_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            disc_opt.step()

    return sr_step


def case(
    name: str, quick: bool, kind: str = "throughput"
) -> tuple[list[str], int | None, int, int]:
    """The case's overrides, batches an epoch (None: all), warm-up batches and epochs
    (--quick: few and small). `kind`: throughput (CASES), overhead (OVERHEAD_CASES, whose
    networks are swapped for NULL ones), or step (OVERHEAD_CASES with their real networks, a
    few batches: the overhead's denominator)."""
    epochs = 1
    if kind == "throughput":
        overrides, batches, warmup = CASES[name]
    else:
        overrides, epochs, warmup = OVERHEAD_CASES[name]
        batches = None
    is_sr = "srresnet" in name
    if kind == "step":
        (batches, warmup), epochs = REAL_STEP_BATCHES["superres" if is_sr else "classification"], 1
    if quick:
        batches, warmup, epochs = QUICK["batches"], QUICK["warmup"], 1
        small = ["data.simulate.n_per_class=40", "data.simulate.n_pairs=40"]
        overrides = [o for o in overrides if not o.startswith("data.simulate.")]
        overrides = [*overrides, small[is_sr]]
        overrides += [f"data.batch_size={QUICK['sr_batch']}"] if is_sr else []
    return overrides, batches, warmup, epochs


def measure(
    side: str, name: str, quick: bool, data_dir: Path, kind: str = "throughput"
) -> tuple[float, float]:
    """One side of one case in this process: images/s (wall) and CPU seconds per image."""
    torch.set_num_threads(os.cpu_count() or 1)
    overrides, batches, warmup, epochs = case(name, quick, kind)
    cfg = case_cfg(overrides, data_dir, data_dir.parent / f"out_{side}", batches, epochs)
    rate = lightning_rate if side == "lightning" else plain_rate
    return rate(cfg, warmup, null=kind == "overhead")


def measure_in_new_process(
    side: str, name: str, quick: bool, data_dir: Path, kind: str = "throughput"
) -> tuple[float, float]:
    """`measure` in a fresh interpreter (its result is the last line of its output)."""
    command = [sys.executable, __file__, "--measure", side, "--kind", kind, "--cases", name,
               "--data-dir", str(data_dir)] + (["--quick"] if quick else [])  # fmt: skip
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
    rate, cpu = json.loads(proc.stdout.strip().splitlines()[-1])
    return rate, cpu


def measure_sides(
    name: str, quick: bool, data_dir: Path, repeats: int, kind: str
) -> dict[str, list[tuple[float, float]]]:
    """`repeats` fresh processes per side, the sides alternating so drift hits both alike."""
    runs: dict[str, list[tuple[float, float]]] = {"plain": [], "lightning": []}
    for r in range(repeats):
        for side in ("plain", "lightning") if r % 2 == 0 else ("lightning", "plain"):
            runs[side].append(measure_in_new_process(side, name, quick, data_dir, kind))
    return runs


def main(repeats: int = 4, quick: bool = False, cases: list[str] | None = None,
         write: bool = True) -> str:  # fmt: skip
    """Measure each case, Lightning against the plain loop; the section's markdown."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in cases or list(CASES):
            data_dir = Path(tmp) / "data"
            overrides, batches, warmup, _ = case(name, quick)
            cfg = case_cfg(overrides, data_dir, Path(tmp) / "out", batches)
            build_datamodule(cfg)  # simulate once, outside the timings
            runs = measure_sides(name, quick, data_dir, repeats, "throughput")
            rate = {s: statistics.median(r for r, _ in v) for s, v in runs.items()}
            cpu = {s: statistics.median(c for _, c in v) for s, v in runs.items()}
            spread = {s: f"{min(r for r, _ in v):.2f}-{max(r for r, _ in v):.2f}"
                      for s, v in runs.items()}  # fmt: skip
            cost = 100.0 * (rate["plain"] - rate["lightning"]) / rate["plain"]
            cpu_cost = 100.0 * (cpu["lightning"] - cpu["plain"]) / cpu["plain"]
            rows.append((name, cfg.data.batch_size, f"{warmup + 1}-{batches}", rate, spread,
                         cost, cpu_cost))  # fmt: skip
            print(f"{name}: plain {rate['plain']:.2f}/s ({spread['plain']}), lightning "
                  f"{rate['lightning']:.2f}/s ({spread['lightning']}), cost {cost:+.1f}% "
                  f"(CPU time {cpu_cost:+.1f}%)", flush=True)  # fmt: skip

    table = "\n".join(
        f"| {n} | {b} | {w} | {r['plain']:.2f} ({s['plain']}) | {r['lightning']:.2f} "
        f"({s['lightning']}) | {c:+.1f}% | {cc:+.1f}% |"
        for n, b, w, r, s, c, cc in rows
    )
    command = "python -m benchmarks" + (" --quick" if quick else "")
    markdown = f"""## Training throughput: Lightning against a plain loop

Command: `{command}` (or `python benchmarks/bench_train.py --repeats {repeats}`). Machine:
{describe_machine()}. Images (or LR/HR pairs) per second over the timed batches of one epoch
(after warm-up): the median of {repeats} fresh processes per side, the sides alternating (the
range over processes in brackets), and the framework's cost from the medians, in wall time and
in process CPU time per image (all threads). Same network, loss, optimizer, data loader and
batch transform on both sides; the Lightning side adds its default callbacks (minus
checkpointing; the progress bar drawn, as in a terminal), metric updates and a CSV logger.
Goal: framework cost at most 2%.

| case | batch | timed batches | plain loop (img/s) | Lightning (img/s) | framework cost (wall) | (CPU time) |
| --- | --- | --- | --- | --- | --- | --- |
{table}
"""
    if write:
        write_section("training", markdown)
    return markdown


def overhead_main(repeats: int = 6, quick: bool = False, cases: list[str] | None = None,
                  write: bool = True) -> str:  # fmt: skip
    """The framework's work per step (OVERHEAD_CASES), against the real step; the markdown."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        for name in cases or list(OVERHEAD_CASES):
            overrides, batches, warmup, epochs = case(name, quick, "overhead")
            cfg = case_cfg(overrides, data_dir, Path(tmp) / "out", batches, epochs)
            datamodule = build_datamodule(cfg)  # simulate once, outside the timings
            datamodule.setup("fit")
            batches = epochs * (batches or len(datamodule.train_dataloader()))
            n = cfg.data.batch_size
            runs = measure_sides(name, quick, data_dir, repeats, "overhead")
            # ms per step: wall from images/s, CPU from CPU seconds per image
            wall = {s: [1000.0 * n / r for r, _ in v] for s, v in runs.items()}
            cpu = {s: [1000.0 * n * c for _, c in v] for s, v in runs.items()}
            med = {s: statistics.median(v) for s, v in wall.items()}
            work = med["lightning"] - med["plain"]
            cpu_work = statistics.median(cpu["lightning"]) - statistics.median(cpu["plain"])
            real_rate, _ = measure_in_new_process("plain", name, quick, data_dir, "step")
            real_ms = 1000.0 * n / real_rate
            spread = {s: f"{min(v):.2f}-{max(v):.2f}" for s, v in wall.items()}
            timed = f"{warmup + 1}-{batches}" + (f" of {epochs} epochs" if epochs > 1 else "")
            rows.append((name, n, timed, med, spread, work, cpu_work,
                         real_ms))  # fmt: skip
            print(f"{name}: null networks, plain {med['plain']:.2f} ms/step ({spread['plain']}), "
                  f"lightning {med['lightning']:.2f} ({spread['lightning']}): framework "
                  f"{work:+.2f} ms/step (CPU {cpu_work:+.2f}), real step {real_ms:.0f} ms, "
                  f"{100 * work / real_ms:+.2f}%", flush=True)  # fmt: skip
    step_batches = "; ".join(f"{task}: {b - w} batches after {w} of warm-up"
                             for task, (b, w) in REAL_STEP_BATCHES.items())  # fmt: skip
    table = "\n".join(
        f"| {name} | {n} | {timed} | {m['plain']:.2f} ({s['plain']}) | {m['lightning']:.2f} "
        f"({s['lightning']}) | {work:+.2f} | {cpu_work:+.2f} | {real:.0f} | "
        f"{100 * work / real:+.2f}% |"
        for name, n, timed, m, s, work, cpu_work, real in rows
    )
    command = "python -m benchmarks" + (" --quick" if quick else "")
    markdown = f"""### The framework's work per step

Command: `{command}` (or `python benchmarks/bench_train.py --overhead --repeats {repeats}`).
Machine: {describe_machine()}. Each case's data, batch transform, loss, metrics, optimizers,
callbacks and logger as above, around networks that cost next to nothing (a classifier and a
discriminator that read each image's mean, a generator that repeats each pixel), so that what
separates the sides is the framework's own work, about a millisecond a step, instead of a percent
or two of a step that itself varies by several percent from one process to the next. A
process's timings still vary (the ranges in brackets): the table gives the median of {repeats}
fresh processes per side, alternating, in wall time and in process CPU time (both threads). The
framework's share is its work per step over the real networks' step in the plain loop (one
process; {step_batches}). Goal: at most 2%.

| case | batch | timed batches | plain loop (ms/step) | Lightning (ms/step) | framework's work (ms/step) | (CPU ms/step) | real step, plain loop (ms) | framework's share |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
{table}
"""
    if write:
        write_section("overhead", markdown)
    return markdown


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=4, help="processes per side")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--cases", nargs="*", help="names of CASES (OVERHEAD_CASES with --overhead)"
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--overhead", action="store_true", help="the framework's work per step (null networks)"
    )
    # Internal: one measurement, run by main() in a fresh process.
    parser.add_argument("--measure", choices=["plain", "lightning"], help=argparse.SUPPRESS)
    parser.add_argument("--kind", default="throughput", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        result = measure(args.measure, args.cases[0], args.quick, args.data_dir, args.kind)
        print(json.dumps(result))
    elif args.overhead:
        print(overhead_main(args.repeats, args.quick, args.cases, not args.no_write))
    else:
        print(main(args.repeats, args.quick, args.cases, not args.no_write))
