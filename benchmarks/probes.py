"""Measurements that need a process of their own (peak memory is per process):
`python -m benchmarks.probes NAME 'JSON_ARGS'` prints one JSON line."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback

from benchmarks._common import children, compose_cfg, peak_rss_mib, private_kib, pss_kib
from lensexp.builders import build_datamodule, build_module, use_native_precision


def _build(overrides: list[str], data_dir: str, out: str) -> tuple[Any, Any, Any]:
    cfg = compose_cfg(overrides, Path(data_dir), Path(out))
    use_native_precision(cfg)  # as train.py: bfloat16 only where the GPU has it
    torch.set_num_threads(os.cpu_count() or 1)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule)
    return cfg, datamodule, module


def _bare_trainer(cfg: Any, callbacks: list[Callback] | None = None, **kwargs: Any) -> Any:
    return instantiate(
        cfg.trainer,
        callbacks=callbacks or [],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def inference(overrides: list[str], data_dir: str, out: str, batches: int) -> dict[str, Any]:
    """Images/s of evaluate.py's batched prediction (Trainer.predict, inference_mode) over
    `batches` batches of the val split, after one warm-up batch; peak memory of the process."""
    cfg, datamodule, module = _build(overrides, data_dir, out)
    datamodule.predict_split = "val"
    datamodule.setup("predict")
    _bare_trainer(cfg, limit_predict_batches=1, inference_mode=True).predict(
        module, datamodule=datamodule, return_predictions=False
    )
    trainer = _bare_trainer(cfg, limit_predict_batches=batches, inference_mode=True)
    start = time.perf_counter()
    trainer.predict(module, datamodule=datamodule, return_predictions=False)
    seconds = time.perf_counter() - start
    n = min(batches * datamodule.batch_size, len(datamodule.datasets["val"]))
    return {
        "images_per_s": n / seconds,
        "peak_rss_mib": peak_rss_mib(),
        "images": n,
        "precision": str(cfg.trainer.precision),
    }


def loader_memory(overrides: list[str], data_dir: str, out: str, workers: int) -> dict[str, Any]:
    """Two epochs of the training loader with `workers` worker processes. The memory of all
    the processes together is the sum of their proportional set sizes (PSS: a page shared by
    k processes counts 1/k in each) taken at one instant; its peak over the epochs, and at that
    instant the workers' private pages (what they hold that no other process shares)."""
    _, datamodule, _ = _build([*overrides, f"data.num_workers={workers}"], data_dir, out)
    datamodule.setup("fit")
    me = os.getpid()
    peak = private = 0.0
    start = time.perf_counter()
    for _ in range(2):
        for _ in datamodule.train_dataloader():
            workers_now = children(me)
            total = sum(pss_kib(pid) for pid in [me, *workers_now]) / 1024
            if total > peak:
                peak = total
                private = sum(private_kib(pid) for pid in workers_now) / 1024
    return {
        "seconds": (time.perf_counter() - start) / 2,
        "images": len(datamodule.datasets["train"]),
        "main_peak_rss_mib": peak_rss_mib(),
        "total_pss_mib": peak,
        "workers_private_mib": private,
    }


def epoch(overrides: list[str], data_dir: str, out: str) -> dict[str, Any]:
    """One Lightning training epoch (no validation): seconds and the process's peak memory."""
    cfg, datamodule, module = _build(overrides, data_dir, out)
    trainer = _bare_trainer(cfg, max_epochs=1, limit_val_batches=0, num_sanity_val_steps=0)
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "images": len(datamodule.datasets["train"]),
        "peak_rss_mib": peak_rss_mib(),
    }


class _StepClock(Callback):
    """Wall-clock time at the end of each training batch (after the device finished it)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_end(self, *args: Any) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())


def train_throughput(
    overrides: list[str], data_dir: str, out: str, batches: int, warmup: int
) -> dict[str, Any]:
    """Images (or pairs) per second of Lightning training steps as `train.py` runs them with
    `overrides` (trainer, precision, runtime.channels_last, runtime.compile), over the batches
    after the first `warmup` (which include torch.compile's compilation); peak device memory."""
    cfg, datamodule, module = _build(overrides, data_dir, out)
    clock = _StepClock()
    trainer = _bare_trainer(
        cfg, callbacks=[clock], max_epochs=1, limit_train_batches=batches,
        limit_val_batches=0, num_sanity_val_steps=0,
    )  # fmt: skip
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, datamodule=datamodule)
    timed = len(clock.times) - warmup
    if warmup < 1 or timed < 1:
        raise ValueError(f"{len(clock.times)} batches ran; need warmup >= 1 and more batches")
    images = timed * datamodule.batch_size
    seconds = clock.times[-1] - clock.times[warmup - 1]
    return {
        "images_per_s": images / seconds,
        "batches": timed,
        "peak_device_mib": torch.cuda.max_memory_allocated() / 2**20
        if torch.cuda.is_available()
        else None,
        "precision": str(cfg.trainer.precision),
    }


def channels_last_step(
    overrides: list[str], data_dir: str, out: str, batches: int, channels_last: bool
) -> dict[str, Any]:
    """Training steps/s and predict images/s of the plain loop with NHWC weights or not."""
    from benchmarks.bench_train import plain_step

    layout = f"runtime.channels_last={str(channels_last).lower()}"
    _, datamodule, module = _build([*overrides, layout], data_dir, out)
    datamodule.setup("fit")
    step = plain_step(module)
    module.train()
    batch_list = []
    for i, batch in enumerate(datamodule.train_dataloader()):
        if i > batches:
            break
        batch_list.append(datamodule.batch_transform(batch, train=True))
    step(batch_list[0], 0)  # warm-up
    images = sum(len(batch[0]) for batch in batch_list[1:])  # the last batch may be short
    start = time.perf_counter()
    for i, batch in enumerate(batch_list[1:]):
        step(batch, i)
    train_rate = images / (time.perf_counter() - start)
    module.eval()
    with torch.inference_mode():
        module(batch_list[0][0])
        start = time.perf_counter()
        for batch in batch_list[1:]:
            module(batch[0])
    infer_rate = images / (time.perf_counter() - start)
    return {"train_per_s": train_rate, "infer_per_s": infer_rate}


class PhaseTimes(Callback):
    """Writes the wall-clock times (time.time()) of the first training batch's start and of the
    end of `fit` to `path` as JSON: `python train.py
    +callbacks.phases._target_=benchmarks.probes.PhaseTimes +callbacks.phases.path=FILE` (the
    start-up benchmark; what follows the end of fit is the best checkpoint's reports)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.times: dict[str, float] = {}

    def on_train_batch_start(self, *args: Any) -> None:
        self.times.setdefault("first_batch", time.time())

    def on_fit_end(self, *args: Any) -> None:
        self.times["fit_end"] = time.time()
        self.path.write_text(json.dumps(self.times))


if __name__ == "__main__":
    result = globals()[sys.argv[1]](**json.loads(sys.argv[2]))
    print(json.dumps(result))
