"""Callbacks that lensexp adds to every run (the `callbacks` group holds the optional ones)."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, RichModelSummary, RichProgressBar
from lightning.pytorch.callbacks import ModelSummary as PlainModelSummary
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)

CONFIG_KEY = "lensexp_config"
PROVENANCE_KEY = "lensexp_provenance"


def stdout_is_terminal() -> bool:
    """Whether a person watches stdout live (not a log file, a pipe or a SLURM output)."""
    return sys.stdout.isatty()


class StoreConfig(Callback):
    """Put the run's resolved config (plain data) and its provenance (package versions, git
    commit) into every checkpoint, so `evaluate.py ckpt_path=...` can rebuild the data module
    and model with nothing else, and a checkpoint says what made it."""

    def __init__(self, config: dict[str, Any], provenance: dict[str, Any]) -> None:
        self.config = config
        self.provenance = provenance

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[CONFIG_KEY] = self.config
        checkpoint[PROVENANCE_KEY] = self.provenance


class LogHparams(Callback):
    """At the end of training, TensorBoard's HPARAMS entry of the run: the resolved config
    (flattened: `model/backbone`, `optimizer/lr`, ...) and the final epoch's scalar metrics as
    `final/<metric>` at the last validation's step. Once, at the end, so the table shows results (a
    run stopped early keeps only its scalars)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.step = 0

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The step of this validation's scalars and figures (TaskModule.logging_step): the
        # final metrics go there too.
        self.step = pl_module.logging_step

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {
            f"final/{name}": float(value)
            for name, value in sorted(trainer.callback_metrics.items())
            if name.startswith(("val/", "train/")) and value.numel() == 1
        }
        if not metrics:
            return
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.log_hyperparams(self.config, metrics=metrics, step=self.step)


class InterruptCheckpoint(Callback):
    """Save `dirpath/interrupted.ckpt` when training is interrupted (SIGTERM, as SLURM sends
    before a time limit, or Ctrl-C) after it has begun. A configuration error or a crash saves
    nothing: its checkpoint would be an untrained or broken model that passes for a resumable
    run. (Not Lightning's OnExceptionCheckpoint, which also makes every later `fit` look for a
    checkpoint to resume.)"""

    def __init__(self, dirpath: str, filename: str = "interrupted") -> None:
        self.path = Path(dirpath) / f"{filename}.ckpt"

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, SIGTERMException | KeyboardInterrupt) and trainer.global_step:
            trainer.save_checkpoint(self.path)


class EpochLog(Callback):
    """One log line per training epoch (epoch, step, the validation and epoch-level training
    metrics, seconds) when stdout is not a terminal: in a log file or a SLURM output a progress
    bar shows nothing useful. `always=True` logs in a terminal too."""

    def __init__(self, always: bool = False) -> None:
        self.always = always
        self._started = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not (self.always or not stdout_is_terminal()) or not trainer.is_global_zero:
            return
        values = trainer.callback_metrics
        # A value logged on_step and on_epoch is there three times: `name` and `name_epoch` (the
        # epoch's mean) and `name_step` (the last step's); the line shows `name`.
        metrics = ", ".join(
            f"{name} {float(value):.4g}"
            for name, value in sorted(values.items())
            if name.startswith(("val/", "train/"))
            and value.numel() == 1
            and not (name.endswith(("_epoch", "_step")) and name.rpartition("_")[0] in values)
        )
        log.info(
            "epoch %d/%d (step %d): %s [%.1f s]",
            trainer.current_epoch + 1,
            trainer.max_epochs,
            trainer.global_step,
            metrics or "no metrics yet",
            time.perf_counter() - self._started,
        )


class ModelSummary(RichModelSummary):
    """The model summary at the start of fit: Rich's table in a terminal; elsewhere (a log file,
    a SLURM output) Lightning's plain-text table, whole, where Rich would fit its table to 80
    columns and cut the type names. `max_depth`: the levels of submodules shown (0: none, -1:
    all)."""

    @staticmethod
    def summarize(*args: Any, **kwargs: Any) -> None:
        if stdout_is_terminal():
            RichModelSummary.summarize(*args, **kwargs)
        else:
            PlainModelSummary.summarize(*args, **kwargs)


class ProgressBar(RichProgressBar):
    """Lightning's RichProgressBar, drawn only in a terminal and without the wait when it stops.

    `terminal_only`: draw nothing when stdout is not a terminal (a log file, a SLURM output),
    where Rich would print the bar's last frame, wrapped to 80 columns, at the end of each stage;
    `EpochLog` writes a line per epoch there instead.

    Lightning's drawing thread sleeps a whole refresh period (1 / `refresh_rate` seconds)
    between looks at its stop flag, and stopping the bar joins it: every `fit` ended up to a
    second later at `refresh_rate: 1` (docs/benchmarks.md, start-up and whole-process time).
    Here stopping sets the flag and lets the thread (a daemon) end on its own: after the flag it
    draws nothing more.

    Lightning reads the bar's metrics after every training batch, each turned into a Python
    number: on a GPU a wait for the device on every step. Here they are read after a batch at
    most as often as the bar is drawn (`refresh_rate` times a second), and as always at the end
    of each epoch and validation."""

    def __init__(self, *args: Any, terminal_only: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.terminal_only = terminal_only
        self._in_train_batch_end = False
        self._next_metrics_read = 0.0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.terminal_only and not stdout_is_terminal():
            self.disable()

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self._in_train_batch_end = True
        try:
            super().on_train_batch_end(*args, **kwargs)
        finally:
            self._in_train_batch_end = False

    def _update_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = time.monotonic()
        if self._in_train_batch_end and now < self._next_metrics_read:
            return
        if self.refresh_rate > 0:
            self._next_metrics_read = now + 1.0 / self.refresh_rate
        super()._update_metrics(trainer, pl_module)

    def _stop_progress(self) -> None:
        live = getattr(self.progress, "live", None)
        thread = getattr(live, "_refresh_thread", None)
        if thread is not None and hasattr(thread, "done"):
            thread.done.set()
            # Lightning's CustomProgress.stop joins the thread it finds here.
            live._refresh_thread = None
        super()._stop_progress()
