"""`ClassifierModule`: substructure classification with a torchvision backbone."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from lensexp.data.manifest import FileMetadata
from lensexp.errors import LensexpError
from lensexp.metrics.classification import ClassificationMetrics
from lensexp.models.backbones import ImageClassifier
from lensexp.reporting.classification import write_classification_report
from lensexp.reporting.figures import confusion_matrix_figure, roc_figure
from lensexp.tasks.base import OptimizerFactory, TaskModule, check_tta

# Metrics whose best-so-far value is logged as `<name>_best` (all of them: higher is better).
TRACKED_BEST = ("acc", "auc_micro", "auc_macro")


class ClassifierModule(TaskModule):
    """Trains an `ImageClassifier` with a classification loss.

    Logs `train/loss`, `train/acc`, `val/loss`, `val/acc`, `val/auc_micro`, `val/auc_macro`,
    `val/auc_<class>` and best-so-far `val/<metric>_best`; with TensorBoard, also the confusion
    matrix and ROC curves of each validation epoch. `predict_step` returns probabilities and
    labels, which `write_report` turns into the evaluation report. `class_names` and
    `in_channels` (the images' bands) come from the data module (`state_for_model`).

    `tta="dihedral"`: evaluation outside `fit` (the best checkpoint's reports, `evaluate.py`)
    averages the class probabilities over the eight flips and rotations of the square
    (`TaskModule.evaluation_views`).
    """

    task = "classification"

    def __init__(
        self,
        loss: nn.Module,
        optimizer: OptimizerFactory,
        class_names: Sequence[str],
        scheduler: dict[str, Any] | None = None,
        in_channels: int = 1,
        backbone: str = "mobilenet_v3_large",
        pretrained: str | None = "auto",
        input_adapter: str = "repeat",
        normalize: str = "auto",
        dropout: float | None = None,
        bn_momentum: float | None = None,
        imagenet_weights: str = "DEFAULT",
        head: str = "last_linear",
        architecture: Mapping[str, Any] | None = None,
        tta: str = "none",
    ) -> None:
        super().__init__(optimizer, scheduler)
        self.class_names = [str(c) for c in class_names]
        if len(self.class_names) < 2:
            raise LensexpError(f"data.classes={self.class_names}: need at least two classes.")
        self.tta = check_tta(tta)
        self.save_hyperparameters(ignore=["loss", "optimizer", "scheduler"])
        self.net = ImageClassifier(
            backbone=backbone,
            num_classes=len(self.class_names),
            in_channels=in_channels,
            input_adapter=input_adapter,
            pretrained=pretrained,
            normalize=normalize,
            dropout=dropout,
            bn_momentum=bn_momentum,
            imagenet_weights=imagenet_weights,
            head=head,
            architecture=architecture,
        )
        self.pretrained_loaded = bool(self.net.pretrained_loaded)
        self.loss = loss
        n = len(self.class_names)
        # Without torchmetrics' input checks: the predictions are an argmax and the labels class
        # indices the data module assigns; the checks (torch.unique of both) cost 0.1 ms a step
        # on a CPU, and on a GPU a wait for the device.
        self.train_acc = MulticlassAccuracy(num_classes=n, average="micro", validate_args=False)
        self.val_metrics = ClassificationMetrics(self.class_names)
        # A metric, not a logged tensor: under DDP it is the mean over all images of all
        # processes (each process's mean, averaged, would weigh an uneven last share wrongly).
        self.val_loss = MeanMetric()
        self.best = nn.ModuleDict({name: MaxMetric() for name in TRACKED_BEST})
        for tracker in self.best.values():
            tracker.persistent(True)  # in checkpoints: a resumed run keeps its best-so-far

    def forward(self, x: Tensor) -> Tensor:
        """Logits (N, n_classes) of images (N, in_channels, H, W)."""
        return self.net(x)

    def evaluation_logits(self, x: Tensor) -> Tensor:
        """Logits for evaluation; over several views (test-time averaging), the log of the
        averaged class probabilities: its softmax is that average, so the loss and the metrics
        read it like any logits."""
        views = self.evaluation_views(x)
        if len(views) == 1:
            return self(x)
        # One view at a time: on a CPU a batch 8 times larger runs slower per image.
        probs = torch.stack([self(v).float().softmax(dim=1) for v in views]).mean(dim=0)
        return probs.clamp_min(torch.finfo(torch.float32).tiny).log()

    # -- training -------------------------------------------------------------------------
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = self.loss(logits, y)
        # update, not the metric's call: that also computes a per-step accuracy nobody logs.
        self.train_acc.update(logits.argmax(dim=1), y)
        n = y.shape[0]
        self.log_training({"train/loss": loss}, n, stepwise=["train/loss"], prog_bar=["train/loss"])
        self.log_epoch_metric("train/acc", self.train_acc)
        return loss

    # -- validation -----------------------------------------------------------------------
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.evaluation_logits(x)
        self.val_metrics.update(logits.float().softmax(dim=1), y)
        self.val_loss.update(self.loss(logits, y), weight=y.shape[0])
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()
        for key, value in values.items():
            if key != "confusion_matrix":
                self.log(f"val/{key}", value, prog_bar=key in ("acc", "auc_micro"))
        # The sanity check runs on two batches only; it must not set a best-so-far value.
        if not self.trainer.sanity_checking:
            for name, best in self._best_so_far(values).items():
                self.best[name].update(best)
                self.log(f"val/{name}_best", best)
            self._log_figures(values["confusion_matrix"])
        self.val_metrics.reset()

    def _best_so_far(self, values: dict[str, Tensor]) -> dict[str, Tensor]:
        """Each tracked metric's best value so far, this validation's `values` included; a NaN
        value (an AUC of a validation that lacked a class) doesn't count, and a metric with no
        finite value yet has no best."""
        best = {}
        for name, tracker in self.best.items():
            # Its state, not compute(): that warns while nothing was updated.
            value = tracker.max_value
            if torch.isfinite(values[name]):
                value = torch.maximum(value, values[name].to(value))
            if torch.isfinite(value):
                best[name] = value
        return best

    def _log_figures(self, confusion: Tensor) -> None:
        writer = self.tensorboard()
        if writer is None:
            return
        # Every process gathers (a collective call); only rank 0 draws.
        probs, labels = self.val_metrics.samples()
        if not self.trainer.is_global_zero:
            return
        step = self.logging_step
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

    # -- evaluation -----------------------------------------------------------------------
    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        x, y = batch
        probs = self.evaluation_logits(x).float().softmax(dim=1)
        return {"probs": probs.cpu(), "labels": y.cpu()}

    def metrics_of_outputs(self, outputs: list[dict[str, Any]]) -> dict[str, float]:
        """What `validation_step` and `on_validation_epoch_end` log, from `predict_step`'s
        probabilities; the best-so-far values as they would stand after this validation."""
        probs = torch.cat([o["probs"] for o in outputs])
        labels = torch.cat([o["labels"] for o in outputs])
        metrics = ClassificationMetrics(self.class_names)
        metrics.update(probs, labels)
        values = {k: v for k, v in metrics.compute().items() if k != "confusion_matrix"}
        # The loss of the logits whose softmax these are (`evaluation_logits`' log-probabilities).
        values["loss"] = self.loss(probs.clamp_min(torch.finfo(torch.float32).tiny).log(), labels)
        values.update({f"{name}_best": best for name, best in self._best_so_far(values).items()})
        return {f"val/{k}": float(v) for k, v in values.items()}

    def write_report(
        self,
        outputs: list[dict[str, Any]],
        files: list[Path],
        out_dir: Path,
        metadata: FileMetadata | None = None,
    ) -> dict[str, Any]:
        """Metrics, confusion matrix, ROC curves, `predictions.csv` and, with a manifest in
        `metadata`, the metrics against the physics (see `lensexp.reporting.classification`)."""
        probs = torch.cat([o["probs"] for o in outputs])
        labels = torch.cat([o["labels"] for o in outputs])
        # A limited run predicts only the first batches of the split.
        files = list(files)[: len(labels)]
        metadata = None if metadata is None else metadata.head(len(labels))
        return write_classification_report(
            out_dir, probs, labels, files, self.class_names, metadata=metadata
        )
