"""`SuperResolutionModule`: trains an SR generator (SRResNet) with pixel/perceptual/GAN losses.

Without a discriminator, training is Lightning's automatic optimisation of the generator alone.
With one (`loss=adversarial|srgan`) it is manual: per batch one generator step, then one
discriminator step on the detached SR images (BasicSR's order, see `lensexp.losses.superres`).

Metric convention (shared with `evaluate.py` through `lensexp.metrics.superres`): SR outputs are
clamped to [0, 1] before scoring, since the images are min-max normalised to [0, 1]; the loss
sees the raw output. The SR images that `predict_step` returns are clamped the same way.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torchmetrics import MaxMetric
from torchvision.utils import make_grid

from lensexp.errors import LensexpError
from lensexp.metrics.superres import METRICS, SRMetrics, bicubic_upsample, per_image_metrics
from lensexp.models.srresnet import load_generator_weights
from lensexp.tasks.base import OptimizerFactory, TaskModule

Batch = tuple[Tensor, Tensor]


class SuperResolutionModule(TaskModule):
    """Trains `generator` (LR -> SR) against HR targets with a `SuperResolutionLoss`.

    Logs `train/loss` and `train/loss_<term>` (plus `train/d_loss`, `train/d_loss_real|fake`,
    `train/d_real_logit|d_fake_logit` with a discriminator); each validation epoch `val/loss`,
    `val/loss_<term>`, `val/{mse,psnr,ssim}`, the bicubic baseline `val/<metric>_bicubic`,
    `val/<metric>_gain` (model minus bicubic) and `val/psnr_best`; with TensorBoard an image
    grid of the first `n_samples` validation pairs.

    `pretrained`: None/`none` (random init) or a generator state-dict file (see
    `load_generator_weights`). `ema_decay` (e.g. 0.999): keep an exponential moving average of
    the generator's parameters (buffers are copied), stored in checkpoints as `generator_ema.*`;
    validation, prediction and `forward` then use it.

    Multi-GPU adversarial training needs `trainer.strategy=ddp_find_unused_parameters_true`:
    each backward pass leaves one of the two networks without gradients.
    """

    task = "superres"

    def __init__(
        self,
        generator: nn.Module,
        loss: nn.Module,
        optimizer: OptimizerFactory,
        scale: int,
        scheduler: dict[str, Any] | None = None,
        pretrained: str | None = None,
        ema_decay: float | None = None,
        n_samples: int = 8,
    ) -> None:
        super().__init__(optimizer, scheduler)
        if getattr(loss, "task", None) != self.task:
            raise LensexpError(
                f"loss: {type(loss).__name__} is not a super-resolution loss; use loss=mse|l1|vgg|"
                f"adversarial|srgan."
            )
        generator_scale = getattr(generator, "scale", None)
        if generator_scale is not None and int(generator_scale) != int(scale):
            raise LensexpError(
                f"data.scale={scale} but model.generator.scale={generator_scale}: the generator "
                f"must upscale by the data's factor; set model.generator.scale=${{data.scale}} "
                f"(the default) or make them equal."
            )
        if ema_decay is not None and not 0.0 < float(ema_decay) < 1.0:
            raise LensexpError(
                f"model.ema_decay={ema_decay}: must lie strictly between 0 and 1 (e.g. 0.999), "
                f"or be null for no EMA."
            )
        if int(n_samples) < 0:
            raise LensexpError(f"model.n_samples={n_samples}: must be >= 0.")
        self.save_hyperparameters(ignore=["generator", "loss", "optimizer", "scheduler"])
        self.scale = int(scale)
        self.n_samples = int(n_samples)
        self.ema_decay = None if ema_decay is None else float(ema_decay)

        self.generator = generator
        self.pretrained_loaded = load_generator_weights(
            generator, pretrained, option="model.pretrained"
        )
        # Registered (so checkpointed) only when on; a copy after loading weights starts at them.
        self.generator_ema: nn.Module | None = None
        if self.ema_decay is not None:
            self.generator_ema = copy.deepcopy(generator).requires_grad_(False)
        self.loss = loss
        # Saved again with what building found out: loggers record the hparams as of the call.
        self.save_hyperparameters(
            {
                **self.hparams,
                "pretrained_loaded": self.pretrained_loaded,
                "generator": type(generator).__name__,
                "generator_parameters": sum(p.numel() for p in generator.parameters()),
                "loss": loss.describe() if hasattr(loss, "describe") else {},
            }
        )

        self.adversarial = bool(getattr(loss, "uses_discriminator", False))
        self.automatic_optimization = not self.adversarial
        # Completed generator optimizer steps: the loss's warm-up clock (saved in checkpoints).
        self.generator_steps = 0
        self._clip: tuple[float, str] | None = None

        self.val_metrics = SRMetrics()
        self.val_bicubic = SRMetrics()
        # In checkpoints, so a resumed run keeps its best-so-far value.
        self.psnr_best = MaxMetric()
        self.psnr_best.persistent(True)
        self._samples: list[Tensor] = []  # (lr, bicubic, sr, hr) chunks for the image grid
        self._n_predicted = 0
        # Set by evaluate.py when SR images are to be saved; otherwise predict_step returns SR
        # images only for the first `n_samples` items, so memory stays bounded on big splits.
        self.keep_sr_images = False

    # -- the network --------------------------------------------------------------------------
    @property
    def inference_generator(self) -> nn.Module:
        """The generator validation and prediction use: the EMA copy when there is one."""
        return self.generator_ema if self.generator_ema is not None else self.generator

    def forward(self, lr: Tensor) -> Tensor:
        """SR images (raw, unclamped) of LR images (N, C, H, W), by `inference_generator`."""
        return self.inference_generator(lr)

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        """The generator's parameters: never the discriminator's, the EMA copy or the VGG."""
        return [p for p in self.generator.parameters() if p.requires_grad]

    @torch.no_grad()
    def update_ema(self) -> None:
        """One EMA step towards the generator's current weights (after each generator step)."""
        if self.generator_ema is None:
            return
        ema = list(self.generator_ema.parameters())
        torch._foreach_lerp_(
            ema, [p.detach() for p in self.generator.parameters()], 1.0 - self.ema_decay
        )
        # Batch-norm statistics are not trained by gradient; the current ones fit the EMA best.
        for target, source in zip(
            self.generator_ema.buffers(), self.generator.buffers(), strict=True
        ):
            target.copy_(source)

    # -- optimisers ---------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        if not self.adversarial:
            return super().configure_optimizers()
        opt_g = self.optimizer_factory(self.trainable_parameters())
        opt_d = self.optimizer_factory(self.loss.discriminator.parameters())
        schedulers = [self.make_scheduler(o) for o in (opt_g, opt_d)]
        if schedulers[0] is None:
            return [opt_g, opt_d]
        # Manual optimisation: Lightning only stores (and checkpoints) the schedulers; they are
        # stepped in `_step_schedulers` at the configured interval and frequency.
        return [opt_g, opt_d], [s["scheduler"] for s in schedulers]

    def configure_callbacks(self) -> list:
        # Called when a trainer attaches the model, before Lightning rejects gradient clipping
        # and accumulation under manual optimisation: clipping is taken over here (done in
        # `on_before_optimizer_step`), accumulation is refused with the lensexp option names.
        trainer = self._trainer
        if self.adversarial and trainer is not None and trainer.state.fn == TrainerFn.FITTING:
            if trainer.accumulate_grad_batches != 1:
                raise LensexpError(
                    f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches}: not "
                    f"supported with an adversarial loss (generator and discriminator steps "
                    f"alternate per batch); set trainer.accumulate_grad_batches=1 and raise "
                    f"data.batch_size instead."
                )
            if trainer.gradient_clip_val:
                algorithm = trainer.gradient_clip_algorithm or "norm"
                self._clip = (
                    float(trainer.gradient_clip_val),
                    str(getattr(algorithm, "value", algorithm)),
                )
                trainer.gradient_clip_val = None
        return []

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        # Runs after AMP unscaling, so the threshold applies to the true gradients.
        if self._clip is not None:
            value, algorithm = self._clip
            self.clip_gradients(
                optimizer, gradient_clip_val=value, gradient_clip_algorithm=algorithm
            )

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        # Automatic optimisation only; called once per real step, so accumulation is respected.
        super().optimizer_step(*args, **kwargs)
        self.generator_steps += 1
        self.update_ema()

    def _schedulers(self) -> list[Any]:
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return []
        return schedulers if isinstance(schedulers, list) else [schedulers]

    def _step_schedulers(self, interval: str, count: int) -> None:
        """Manual optimisation: step the schedulers as Lightning would in automatic mode."""
        spec = self.scheduler_spec
        if spec.get("interval", "epoch") != interval or count % int(spec.get("frequency", 1)):
            return
        for scheduler in self._schedulers():
            if isinstance(scheduler, ReduceLROnPlateau):
                monitor = spec.get("monitor")
                value = self.trainer.callback_metrics.get(monitor) if monitor else None
                if value is None:
                    raise LensexpError(
                        f"scheduler.monitor={monitor}: ReduceLROnPlateau needs a metric that is "
                        f"logged (e.g. val/loss); have {sorted(self.trainer.callback_metrics)}."
                    )
                scheduler.step(value)
            else:
                scheduler.step()

    # -- training -----------------------------------------------------------------------------
    def _log_terms(self, prefix: str, terms: dict[str, Tensor], n: int, **kwargs: Any) -> None:
        for name, value in terms.items():
            self.log(f"{prefix}{name}", value, batch_size=n, **kwargs)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        lr, hr = batch
        n = lr.shape[0]
        sr = self.generator(lr)
        loss, terms = self.loss(sr, hr, self.generator_steps)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        self._log_terms("train/loss_", terms, n, on_step=False, on_epoch=True)
        if not self.adversarial:
            return loss

        opt_g, opt_d = self.optimizers()
        opt_g.zero_grad()
        self.manual_backward(loss)
        opt_g.step()
        self.generator_steps += 1
        self.update_ema()

        d_loss, d_terms = self.loss.discriminator_loss(sr, hr)
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        self.log("train/d_loss", d_loss, on_step=True, on_epoch=True, batch_size=n)
        self.log("train/d_loss_real", d_terms["real"], on_epoch=True, batch_size=n)
        self.log("train/d_loss_fake", d_terms["fake"], on_epoch=True, batch_size=n)
        self.log("train/d_real_logit", d_terms["real_logit"], on_epoch=True, batch_size=n)
        self.log("train/d_fake_logit", d_terms["fake_logit"], on_epoch=True, batch_size=n)
        self._step_schedulers("step", self.generator_steps)
        return None

    def on_train_epoch_end(self) -> None:
        # Lightning runs the epoch's validation before this hook, so a plateau scheduler sees
        # this epoch's val/loss, as in automatic optimisation.
        if self.adversarial:
            self._step_schedulers("epoch", self.current_epoch + 1)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["generator_steps"] = self.generator_steps

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.generator_steps = int(checkpoint.get("generator_steps", 0))

    # -- validation ---------------------------------------------------------------------------
    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        lr, hr = batch
        n = lr.shape[0]
        sr = self(lr)
        loss, terms = self.loss(sr, hr, self.generator_steps)
        bicubic = bicubic_upsample(lr, self.scale)
        self.val_metrics.update(sr, hr)
        self.val_bicubic.update(bicubic, hr)
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        self._log_terms("val/loss_", terms, n, on_epoch=True, sync_dist=True)
        have = sum(chunk.shape[1] for chunk in self._samples)
        if have < self.n_samples and self._tensorboard() is not None:
            k = self.n_samples - have
            images = (self._upsample_nearest(lr[:k]), bicubic[:k], sr[:k].clamp(0, 1), hr[:k])
            # float32 first: under mixed precision SR may be half while the others are not.
            self._samples.append(torch.stack([x.detach().float() for x in images]))

    def on_validation_epoch_end(self) -> None:
        model = self.val_metrics.compute()
        bicubic = self.val_bicubic.compute()
        self.val_metrics.reset()
        self.val_bicubic.reset()
        for name in METRICS:
            self.log(f"val/{name}", model[name], prog_bar=name == "psnr")
            self.log(f"val/{name}_bicubic", bicubic[name])
            self.log(f"val/{name}_gain", model[name] - bicubic[name])
        # The sanity check sees a batch or two; it must not set the best-so-far value.
        if not self.trainer.sanity_checking:
            if torch.isfinite(model["psnr"]):
                self.psnr_best.update(model["psnr"])
            self.log("val/psnr_best", self.psnr_best.compute())
            self._log_image_grid()
        self._samples.clear()

    def _upsample_nearest(self, lr: Tensor) -> Tensor:
        return F.interpolate(lr, scale_factor=self.scale, mode="nearest").clamp(0, 1)

    def _tensorboard(self) -> Any:
        if self._trainer is None or self.trainer.sanity_checking:
            return None
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                return logger.experiment
        return None

    def _log_image_grid(self) -> None:
        """Rows LR (nearest) | bicubic | SR | HR | |SR-HR| (scaled to its maximum), a column per
        sample; the samples are the first validation items of this process."""
        writer = self._tensorboard()
        if writer is None or not self._samples or not self.trainer.is_global_zero:
            return
        lr, bicubic, sr, hr = torch.cat(self._samples, dim=1)
        error = (sr - hr).abs()
        error = error / error.max().clamp_min(1e-8)
        rows = torch.cat([lr, bicubic, sr, hr, error]).cpu()
        grid = make_grid(rows, nrow=lr.shape[0], padding=2, pad_value=1.0)
        writer.add_image("val/samples", grid, global_step=self.current_epoch)

    # -- prediction (evaluate.py) -------------------------------------------------------------
    def on_predict_epoch_start(self) -> None:
        self._n_predicted = 0

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        """Per-image metrics of SR and bicubic vs HR, and images, as CPU tensors.

        Keys: `mse`, `psnr`, `ssim` and `bicubic_mse|psnr|ssim` (N,) float64; `lr_samples`,
        `sr_samples`, `hr_samples` for the items among the first `n_samples` overall; `sr`
        (N, C, H, W) float32 clamped to [0, 1] only when `keep_sr_images` is set.
        """
        lr, hr = batch
        sr = self(lr).float().clamp(0.0, 1.0)
        out = {k: v.cpu() for k, v in per_image_metrics(sr, hr).items()}
        baseline = per_image_metrics(bicubic_upsample(lr, self.scale), hr)
        out |= {f"bicubic_{k}": v.cpu() for k, v in baseline.items()}
        k = max(0, min(lr.shape[0], self.n_samples - self._n_predicted))
        if k:
            out["lr_samples"] = lr[:k].float().cpu()
            out["sr_samples"] = sr[:k].cpu()
            out["hr_samples"] = hr[:k].float().cpu()
        if self.keep_sr_images:
            out["sr"] = sr.cpu()
        self._n_predicted += lr.shape[0]
        return out
