"""`AxionMassRegressor`: log10 axion mass from an image, with a classifier backbone."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lensexp.metrics.regression import RegressionMetrics
from lensexp.models.backbones import ImageClassifier
from lensexp.reporting.regression import write_regression_report
from lensexp.tasks.base import OptimizerFactory, TaskModule, check_tta


class AxionMassRegressor(TaskModule):
    """Predicts log10(axion mass / eV) of an image with a torchvision backbone and one output.

    The output is `target_center` + the network's output, so a fresh network starts at the
    middle of the mass range (log10 m in [-24, -22] for Model I-IV and the simulator) rather
    than 23 units away. Logs `train/loss`, `val/loss`, `val/mae`, `val/rmse`, `val/r2` (in
    log10 mass; see `lensexp.metrics.regression`). The backbone options are the classifier's
    (`lensexp.models.backbones.ImageClassifier`); `in_channels` comes from the data.
    `tta="dihedral"` averages the prediction over the eight flips and rotations of the square
    outside `fit` (`TaskModule.evaluation_views`).
    """

    task = "regression"

    def __init__(
        self,
        loss: nn.Module,
        optimizer: OptimizerFactory,
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
        target_center: float = -23.0,
        tta: str = "none",
    ) -> None:
        super().__init__(optimizer, scheduler)
        self.tta = check_tta(tta)
        self.save_hyperparameters(ignore=["loss", "optimizer", "scheduler"])
        self.net = ImageClassifier(
            backbone=backbone,
            num_classes=1,
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
        self.target_center = float(target_center)
        self.loss = loss
        self.val_metrics = RegressionMetrics()

    def forward(self, x: Tensor) -> Tensor:
        """log10(axion mass / eV) (N,) of images (N, in_channels, H, W)."""
        return self.target_center + self.net(x).float().squeeze(1)

    def evaluation_prediction(self, x: Tensor) -> Tensor:
        """The prediction for evaluation: averaged over the views (test-time averaging)."""
        return torch.stack([self(v) for v in self.evaluation_views(x)]).mean(dim=0)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = self.loss(self(x), y.float())
        self.log_training(
            {"train/loss": loss}, y.shape[0], stepwise=["train/loss"], prog_bar=["train/loss"]
        )
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        prediction = self.evaluation_prediction(x)
        self.val_metrics.update(prediction, y)
        self.log("val/loss", self.loss(prediction, y.float()), on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        for key, value in self.val_metrics.compute().items():
            self.log(f"val/{key}", value.float(), prog_bar=key == "mae")
        self.val_metrics.reset()

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        x, y = batch
        return {"prediction": self.evaluation_prediction(x).cpu(), "target": y.float().cpu()}

    def metrics_of_outputs(self, outputs: list[dict[str, Any]]) -> dict[str, float]:
        """What a validation logs (`val/loss`, `val/mae`, `val/rmse`, `val/r2`), from
        `predict_step`'s predictions."""
        prediction = torch.cat([o["prediction"] for o in outputs])
        target = torch.cat([o["target"] for o in outputs])
        metrics = RegressionMetrics()
        metrics.update(prediction, target)
        values = dict(metrics.compute())
        values["loss"] = self.loss(prediction, target)
        return {f"val/{k}": float(v) for k, v in values.items()}

    def write_report(
        self,
        outputs: list[dict[str, Any]],
        files: list[Path],
        out_dir: Path,
        metadata: Any = None,
    ) -> dict[str, Any]:
        """Metrics, `predictions.csv` and the predicted-vs-true scatter (see
        `lensexp.reporting.regression`); the masses are the targets, so `metadata` adds none."""
        prediction = torch.cat([o["prediction"] for o in outputs])
        target = torch.cat([o["target"] for o in outputs])
        # A limited run predicts only the first batches of the split.
        files = list(files)[: len(target)]
        return write_regression_report(out_dir, prediction, target, files)
