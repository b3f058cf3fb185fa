"""`ClassifierModule`: substructure classification with a torchvision backbone."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy

from lensexp.errors import LensexpError
from lensexp.metrics.classification import ClassificationMetrics
from lensexp.models.backbones import ImageClassifier
from lensexp.reporting.figures import confusion_matrix_figure, roc_figure
from lensexp.tasks.base import OptimizerFactory, TaskModule

# Metrics whose best-so-far value is logged as `<name>_best` (all of them: higher is better).
TRACKED_BEST = ("acc", "auc_micro", "auc_macro")


class ClassifierModule(TaskModule):
    """Trains an `ImageClassifier` with a classification loss.

    Logs `train/loss`, `train/acc`, `val/loss`, `val/acc`, `val/auc_micro`, `val/auc_macro`,
    `val/auc_<class>` and best-so-far `val/<metric>_best`; with TensorBoard, also the confusion
    matrix and ROC curves of each validation epoch. `predict_step` returns probabilities and
    labels for `evaluate.py`.
    """

    task = "classification"

    def __init__(
        self,
        loss: nn.Module,
        optimizer: OptimizerFactory,
        class_names: Sequence[str],
        scheduler: dict[str, Any] | None = None,
        backbone: str = "mobilenet_v3_large",
        pretrained: str | None = "auto",
        input_adapter: str = "repeat",
        normalize: str = "auto",
        dropout: float | None = None,
        bn_momentum: float | None = None,
    ) -> None:
        super().__init__(optimizer, scheduler)
        self.class_names = [str(c) for c in class_names]
        if len(self.class_names) < 2:
            raise LensexpError(f"data.classes={self.class_names}: need at least two classes.")
        self.save_hyperparameters(ignore=["loss", "optimizer", "scheduler"])
        self.net = ImageClassifier(
            backbone=backbone,
            num_classes=len(self.class_names),
            in_channels=1,
            input_adapter=input_adapter,
            pretrained=pretrained,
            normalize=normalize,
            dropout=dropout,
            bn_momentum=bn_momentum,
        )
        # Recorded (in checkpoints and the logger's hparams) so a run trained from scratch
        # because no ImageNet weights were reachable can't pass for a pretrained one.
        self.save_hyperparameters(
            {**self.hparams, "pretrained_loaded": bool(self.net.pretrained_loaded)}
        )
        self.loss = loss
        n = len(self.class_names)
        self.train_acc = MulticlassAccuracy(num_classes=n, average="micro")
        self.val_metrics = ClassificationMetrics(self.class_names)
        self.test_metrics = ClassificationMetrics(self.class_names)
        self.best = nn.ModuleDict({name: MaxMetric() for name in TRACKED_BEST})
        self._epoch_outputs: list[tuple[Tensor, Tensor]] = []

    def forward(self, x: Tensor) -> Tensor:
        """Logits (N, n_classes) of images (N, 1, H, W)."""
        return self.net(x)

    # -- training -------------------------------------------------------------------------
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = self.loss(logits, y)
        self.train_acc(logits.argmax(dim=1), y)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    # -- validation and test ---------------------------------------------------------------
    def _eval_step(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        x, y = batch
        logits = self(x)
        loss = self.loss(logits, y)
        probs = logits.float().softmax(dim=1)
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        metrics.update(probs, y)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        if stage == "val" and self._wants_figures():
            self._epoch_outputs.append((probs.detach(), y.detach()))

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _log_epoch_metrics(self, stage: str) -> dict[str, Tensor]:
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        values = metrics.compute()
        metrics.reset()
        scalars = {k: v for k, v in values.items() if k != "confusion_matrix"}
        for key, value in scalars.items():
            self.log(f"{stage}/{key}", value, prog_bar=key in ("acc", "auc_micro"))
        return values

    def on_validation_epoch_end(self) -> None:
        values = self._log_epoch_metrics("val")
        # The sanity check runs on two batches only; it must not set a best-so-far value.
        if not self.trainer.sanity_checking:
            for name, tracker in self.best.items():
                if torch.isfinite(values[name]):
                    tracker.update(values[name])
                self.log(f"val/{name}_best", tracker.compute())
            self._log_figures(values["confusion_matrix"])
        self._epoch_outputs.clear()

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    # -- figures --------------------------------------------------------------------------
    def _tensorboard(self) -> Any:
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                return logger.experiment
        return None

    def _wants_figures(self) -> bool:
        return (
            self._trainer is not None
            and not self.trainer.sanity_checking
            and self._tensorboard() is not None
        )

    def _log_figures(self, confusion: Tensor) -> None:
        writer = self._tensorboard()
        if writer is None or not self._epoch_outputs:
            return
        probs = torch.cat([p for p, _ in self._epoch_outputs])
        labels = torch.cat([y for _, y in self._epoch_outputs])
        # Every process gathers (a collective call); only rank 0 draws.
        probs = self.all_gather(probs).reshape(-1, probs.shape[-1])
        labels = self.all_gather(labels).reshape(-1)
        if not self.trainer.is_global_zero:
            return
        step = self.current_epoch
        writer.add_figure(
            "val/confusion_matrix",
            confusion_matrix_figure(confusion.cpu().numpy(), self.class_names),
            global_step=step,
        )
        writer.add_figure(
            "val/roc_curve",
            roc_figure(probs.cpu(), labels.cpu(), self.class_names),
            global_step=step,
        )

    # -- prediction (evaluate.py) -----------------------------------------------------------
    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        x, y = batch
        probs = self(x).float().softmax(dim=1)
        return {"probs": probs.cpu(), "labels": y.cpu()}
