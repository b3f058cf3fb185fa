"""Training throughput: the Lightning path that `train.py` runs against a plain PyTorch loop with
the same network, loss, optimizer, batches and batch transform, measured in one process.

Run from the repository root:  python benchmarks/bench_train.py [--repeats 2] [--quick]
(or all benchmarks: python -m benchmarks). Writes the "training" section of docs/benchmarks.md.

The Lightning side is built from the real configs (hydra compose + lensexp.builders)
and trained by a Trainer with the default callbacks (checkpointing off: it would write files the
plain loop doesn't) and a CSV logger, so logging and metric updates count against it. Each side
times the same window of batches after a warm-up, in wall time and in process CPU time (all
threads): on a shared machine the CPU time per image is the steadier of the two.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import lightning as L  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from lightning.pytorch.callbacks import Callback, ModelCheckpoint  # noqa: E402

from benchmarks._common import describe_machine  # noqa: E402
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


# --quick: a few batches (and SR batches of 4) to check that the benchmark runs, not to measure.
QUICK = {"batches": 3, "warmup": 1, "sr_batch": 4}


class Window:
    """Wall and process CPU time between `start()` and `stop()`."""

    def start(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


class WindowTimer(Callback):
    """Wall and CPU time from the start of batch `warmup` to the end of the last batch."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.window = Window()
        self.wall = self.cpu = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.fit_loop.epoch_loop.batch_idx == self.warmup:
            self.window.start()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.fit_loop.epoch_loop.batch_idx >= self.warmup:
            self.wall, self.cpu = self.window.stop()


def compose_cfg(overrides: list[str], data_dir: Path, out: Path, batches: int) -> Any:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                *overrides,
                f"paths.data_dir={data_dir}",
                f"paths.output_dir={out}",
                "trainer=cpu",
                "trainer.max_epochs=1",
                f"++trainer.limit_train_batches={batches}",
                "++trainer.limit_val_batches=0",
                "++trainer.num_sanity_val_steps=0",
                "logger=csv",
                "scheduler=none",  # no validation here for a plateau scheduler to read
            ],
        )
    return cfg


def lightning_rate(cfg: Any, batches: int, warmup: int) -> tuple[float, float]:
    """Images/s (wall) and CPU seconds per image of the Lightning path."""
    L.seed_everything(0)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule)
    timer = WindowTimer(warmup)
    callbacks = [c for c in build_callbacks(cfg) if not isinstance(c, ModelCheckpoint)]
    loggers = [instantiate(n) for n in cfg.logger.values()]
    trainer = instantiate(
        cfg.trainer, callbacks=[*callbacks, timer], logger=loggers, enable_checkpointing=False
    )
    trainer.fit(module, datamodule=datamodule)
    images = (batches - warmup) * datamodule.batch_size
    return images / timer.wall, timer.cpu / images


def plain_rate(cfg: Any, batches: int, warmup: int) -> tuple[float, float]:
    """The same objects driven by a hand-written loop (what a script without Lightning does):
    images/s (wall) and CPU seconds per image."""
    L.seed_everything(0)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    step = plain_step(module)
    module.train()
    window = Window()
    for i, batch in enumerate(loader):
        if i == warmup:
            window.start()
        if i == batches:
            break
        batch = datamodule.batch_transform(batch, train=True)
        step(batch, i)
    wall, cpu = window.stop()
    images = (batches - warmup) * datamodule.batch_size
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


def main(repeats: int = 2, quick: bool = False, cases: list[str] | None = None,
         write: bool = True) -> str:  # fmt: skip
    """Measure each case, Lightning against the plain loop; the section's markdown."""
    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in cases or list(CASES):
            overrides, batches, warmup = CASES[name]
            if quick:
                batches, warmup = QUICK["batches"], QUICK["warmup"]
                small = ["data.simulate.n_per_class=40", "data.simulate.n_pairs=40"]
                is_sr = "srresnet" in name
                overrides = [*overrides, small[is_sr]]
                overrides += [f"data.batch_size={QUICK['sr_batch']}"] if is_sr else []
            cfg = compose_cfg(overrides, Path(tmp) / "data", Path(tmp) / "out", batches)
            build_datamodule(cfg)  # simulate once, outside the timings
            light, plain = [], []
            for _ in range(repeats):  # interleaved, so drift hits both sides alike
                plain.append(plain_rate(cfg, batches, warmup))
                light.append(lightning_rate(cfg, batches, warmup))
            best_p, best_l = max(r for r, _ in plain), max(r for r, _ in light)
            cpu_p, cpu_l = min(c for _, c in plain), min(c for _, c in light)
            cost = 100.0 * (best_p - best_l) / best_p
            cpu_cost = 100.0 * (cpu_l - cpu_p) / cpu_p
            window = f"{warmup + 1}-{batches}"
            rows.append((name, cfg.data.batch_size, window, best_p, best_l, cost, cpu_cost))
            print(f"{name}: plain {best_p:.2f}/s, lightning {best_l:.2f}/s, cost {cost:+.1f}% "
                  f"(CPU time {cpu_cost:+.1f}%)")  # fmt: skip

    table = "\n".join(
        f"| {n} | {b} | {w} | {p:.2f} | {lt:.2f} | {c:+.1f}% | {cc:+.1f}% |"
        for n, b, w, p, lt, c, cc in rows
    )
    command = "python -m benchmarks" + (" --quick" if quick else "")
    markdown = f"""## Training throughput: Lightning against a plain loop

Command: `{command}` (or `python benchmarks/bench_train.py --repeats {repeats}`). Machine:
{describe_machine()}. Images (or LR/HR pairs) per second over the timed batches of one epoch
(after warm-up), best of {repeats} interleaved repeats, and the framework's cost in wall time and
in process CPU time per image (all threads; steadier than wall time when other work shares the
machine). Same network, loss, optimizer, data loader and batch transform on both sides; the
Lightning side adds its default callbacks (minus checkpointing), metric updates and a CSV
logger. Goal: framework cost at most 2%.

| case | batch | timed batches | plain loop (img/s) | Lightning (img/s) | framework cost (wall) | (CPU time) |
| --- | --- | --- | --- | --- | --- | --- |
{table}
"""
    if write:
        write_section("training", markdown)
    return markdown


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    print(main(args.repeats, args.quick, args.cases, not args.no_write))
