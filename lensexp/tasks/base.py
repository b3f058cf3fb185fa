"""What every lensexp LightningModule shares: the optimizer and scheduler from config."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn
from torch.optim import Optimizer
from torchmetrics import Metric

from lensexp.data.transforms import dihedral_views
from lensexp.errors import LensexpError
from lensexp.metrics.means import WeightedMean

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], Optimizer]
TTA_CHOICES = ("none", "dihedral")


def check_tta(tta: str) -> str:
    """`tta` if it is a known test-time averaging, else one clear error naming `model.tta`."""
    if tta not in TTA_CHOICES:
        raise LensexpError(f"model.tta={tta!r}: choose one of {', '.join(TTA_CHOICES)}.")
    return tta


class TaskModule(L.LightningModule):
    """Base LightningModule: builds its optimizer(s) and LR scheduler from config partials.

    `optimizer` is a callable taking parameters (the `optimizer` group, `_partial_: true`).
    `scheduler` is the `scheduler` group: a mapping with `scheduler` (a callable taking the
    optimizer), `monitor` and `interval`, or None/empty for a constant learning rate.
    Subclasses set `task` to the task name their data module and loss must share.
    """

    task: str = ""
    # Set by evaluation before predicting: also return (and report) the full outputs, e.g. the
    # SR images to save; otherwise predict_step keeps only what the report needs.
    keep_outputs: bool = False
    # Whether pretrained weights were loaded (recorded in results.json and checkpoints, so a
    # run trained from scratch because no weights were reachable can't pass for a pretrained one).
    pretrained_loaded: bool | None = None
    # Test-time averaging, for tasks that offer it (`model.tta`): "none" or "dihedral".
    tta: str = "none"
    # Whether its networks were compiled (`runtime.compile`, set by `apply_run_options`).
    compiled: bool = False

    def __init__(
        self, optimizer: OptimizerFactory, scheduler: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__()
        if not callable(optimizer):
            raise LensexpError(
                "optimizer: expected a partial optimizer (`_partial_: true` in conf/optimizer)."
            )
        self.optimizer_factory = optimizer
        self.scheduler_spec = dict(scheduler) if scheduler else {}
        # The epoch metrics handed to self.log this epoch (cleared as each epoch starts); the
        # running means of log_training (`training_means`, by name) are made on first use.
        self._logged_this_epoch: set[str] = set()

    # -- logging the training steps -------------------------------------------------------
    # Lightning's self.log costs about 0.3-0.4 ms a call on a CPU (docs/benchmarks.md, the
    # framework's work per step), and a training step called it for every scalar, on every step,
    # although the loggers write step values only every trainer.log_every_n_steps steps and
    # epoch values once. Here the epoch means are running metrics updated each step and handed
    # to self.log once an epoch (Lightning computes and resets a logged Metric at the epoch's
    # end), and step values go to self.log on the steps the loggers write.
    def log_epoch_metric(
        self, name: str, metric: Metric, prog_bar: bool = False, logger: bool = True
    ) -> None:
        """Log `metric`, which the caller updates on every training step, as the epoch's
        value `name`: one `self.log` an epoch."""
        if name in self._logged_this_epoch:
            return
        self._logged_this_epoch.add(name)
        attribute = next(k for k, m in self.named_modules() if m is metric)
        self.log(name, metric, on_step=False, on_epoch=True, prog_bar=prog_bar, logger=logger,
                 metric_attribute=attribute)  # fmt: skip

    def log_training(
        self,
        values: Mapping[str, Tensor],
        batch_size: int,
        stepwise: Collection[str] = (),
        prog_bar: Collection[str] = (),
    ) -> None:
        """Log a training step's scalars: each one's epoch mean, weighted by batch size, as
        `name`; for the names in `stepwise`, the epoch mean as `name_epoch` and the step's
        value as `name_step` on the steps the loggers write (every
        `trainer.log_every_n_steps`; 1 writes all), and for callbacks that monitor it, the
        epoch mean as `name` too, not written. The same keys as Lightning's
        `self.log(name, on_step=True, on_epoch=True)` for stepwise names and
        `self.log(name, on_epoch=True)` for the others, at a fraction of the cost."""
        writes_step = self._loggers_write_this_step()
        for name, value in values.items():
            stepwise_name = name in stepwise
            key = f"{name}_epoch" if stepwise_name else name
            mean = self._running_mean(key, value.device)
            mean.update(value, batch_size)
            self.log_epoch_metric(key, mean, prog_bar=name in prog_bar)
            if stepwise_name:
                self.log_epoch_metric(name, mean, logger=False)
            if stepwise_name and writes_step:
                self.log(f"{name}_step", value, on_step=True, on_epoch=False,
                         prog_bar=name in prog_bar, batch_size=batch_size)  # fmt: skip

    def on_train_epoch_start(self) -> None:
        # (A subclass that overrides this hook calls it too.)
        self._logged_this_epoch.clear()

    def _running_mean(self, key: str, device: torch.device) -> WeightedMean:
        means = getattr(self, "training_means", None)
        if means is None:
            # Made here, after the model summary (which need not list it), not in __init__.
            self.training_means = means = nn.ModuleDict()
        if key not in means:
            means[key] = WeightedMean().to(device)
        return means[key]

    def _loggers_write_this_step(self) -> bool:
        """Whether Lightning writes this training step's logged values to the loggers: its
        own test, as `update_train_step_metrics` applies it at the step's end."""
        trainer = self.trainer
        return bool(trainer._logger_connector.should_update_logs or trainer.fast_dev_run)

    def make_scheduler(self, optimizer: Optimizer) -> dict[str, Any] | None:
        """Lightning's lr_scheduler dict for `optimizer`, or None without a scheduler."""
        spec = self.scheduler_spec
        if not spec or spec.get("scheduler") is None:
            return None
        config = {
            "scheduler": spec["scheduler"](optimizer),
            "interval": spec.get("interval", "epoch"),
            "frequency": int(spec.get("frequency", 1)),
        }
        if spec.get("monitor"):
            config["monitor"] = spec["monitor"]
        return config

    @property
    def example_input_array(self) -> Tensor | None:
        """One input of the data being fitted (`example_input` of the trainer's data module),
        from which Lightning's model summary shows each part's input and output sizes and
        FLOPs. None without such a data module, or with compiled networks: the summary's
        forward would compile them for a batch of one."""
        datamodule = self._trainer.datamodule if self._trainer is not None else None
        if self.compiled or not hasattr(datamodule, "example_input"):
            return None
        return datamodule.example_input()

    @property
    def evaluates_as_in_fit(self) -> bool:
        """Whether evaluation outside `fit` scores as fit's validation does (false with
        test-time averaging), so fit's last validation numbers may stand for the final weights."""
        return self.tta == "none"

    def metrics_of_outputs(self, outputs: list[dict[str, Any]]) -> dict[str, float] | None:
        """The `val/*` metrics a validation of these weights would log, computed from their
        `predict_step` outputs over the validation split; None where the task does not (then
        train.py validates afresh). Lets the best checkpoint's validation share the report's
        pass over the split."""
        return None

    def evaluation_views(self, x: Tensor) -> list[Tensor]:
        """The views of a batch to average predictions over: with `tta="dihedral"` outside
        `fit`, the eight flips and rotations of the square (which leave a lensing image equally
        likely); otherwise the batch alone. The validation of each training epoch, which picks
        the best checkpoint, stays one pass: eight would cost most of an epoch on a CPU."""
        fitting = self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING
        return [x] if self.tta == "none" or fitting else dihedral_views(x)

    def trainable_parameters(self) -> Iterable[torch.nn.Parameter]:
        """Parameters the (first) optimizer updates."""
        return [p for p in self.parameters() if p.requires_grad]

    def tensorboard(self) -> Any:
        """The TensorBoard `SummaryWriter` of this run, or None (no such logger, or the sanity
        check, whose couple of batches are not worth a figure)."""
        if self._trainer is None or self.trainer.sanity_checking:
            return None
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                return logger.experiment
        return None

    @property
    def logging_step(self) -> int:
        """The step at which Lightning logs scalars now (training batches that stepped: under
        manual optimisation `global_step` counts each optimizer's steps), so that figures sit
        on the scalars' step axis."""
        return self.trainer.fit_loop.epoch_loop._batches_that_stepped

    def write_report(
        self,
        outputs: list[dict[str, Any]],
        files: list[Path],
        out_dir: Path,
        metadata: Any = None,
    ) -> dict[str, Any]:
        """Write this task's evaluation report of `predict_step` outputs (one per batch) for
        `files` into `out_dir`; return its metrics. `metadata` is what the data module knows of
        each file (`lensexp.data.manifest.FileMetadata`: axion mass, manifest physics), or None."""
        raise NotImplementedError(f"{type(self).__name__} has no evaluation report")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["pretrained_loaded"] = self.pretrained_loaded

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.trainable_parameters())
        scheduler = self.make_scheduler(optimizer)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
