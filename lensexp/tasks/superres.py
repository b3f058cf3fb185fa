"""Super-resolution LightningModules: an SR generator (SRResNet) trained with pixel/perceptual
losses (`SuperResolutionModule`, automatic optimisation), and with a GAN term against a
discriminator it owns (`AdversarialSRModule`, manual optimisation: per batch one generator step,
then one discriminator step on the detached SR images, BasicSR's order).

Metric convention (shared with `evaluate.py` through `lensexp.metrics.superres`): SR outputs are
clamped to [0, 1] before scoring, since the images are min-max normalised to [0, 1]; the loss
sees the raw output. The SR images that `predict_step` returns are clamped the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchmetrics import MaxMetric, MeanMetric

from lensexp.checks import check_choice, check_int
from lensexp.errors import LensexpError
from lensexp.metrics.superres import (
    ARC_THRESHOLD,
    METRICS,
    SRMetrics,
    bicubic_upsample,
    per_image_metrics,
)
from lensexp.models.srresnet import load_generator_weights
from lensexp.reporting.figures import sr_comparison_figure
from lensexp.tasks.base import OptimizerFactory, TaskModule

Batch = tuple[Tensor, Tensor]
CLIP_ALGORITHMS = ("norm", "value")


def check_arguments(
    task: str, generator: nn.Module, loss: nn.Module, scale: int, ema_decay: Any, n_samples: int
) -> None:
    """One LensexpError line for arguments that cannot work together."""
    if getattr(loss, "task", None) != task:
        raise LensexpError(
            f"loss: {type(loss).__name__} is not a super-resolution loss; use loss=mse|l1|vgg|"
            f"adversarial|srgan|esrgan."
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


def exponential_moving_average(generator: nn.Module, decay: float) -> AveragedModel:
    """An EMA of `generator`'s parameters (torch's AveragedModel), starting at its weights.

    Buffers (batch-norm statistics, not trained by gradient) are copied from the generator at
    each update rather than averaged (`use_buffers=False`): the current statistics fit the
    averaged weights best, and this is what lensexp always did. AveragedModel copies the weights
    on its first update; that update is made here, so every training step then averages,
    ema = decay * ema + (1 - decay) * w, as BasicSR's EMA does.
    """
    ema = AveragedModel(generator, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)
    ema.requires_grad_(False)
    ema.update_parameters(generator)
    return ema


class SuperResolutionModule(TaskModule):
    """Trains `generator` (LR -> SR) against HR targets with a `SuperResolutionLoss`.

    Logs `train/loss` and `train/loss_<term>`; each validation epoch `val/loss`,
    `val/loss_<term>`, `val/{mse,psnr,ssim}`, the bicubic baseline `val/<metric>_bicubic`,
    `val/<metric>_gain` (model minus bicubic) and `val/psnr_best`; with TensorBoard the
    comparison figure (`val/samples`) of the first `n_samples` validation pairs.

    `pretrained`: None/`none` (random init) or a generator state-dict file (see
    `load_generator_weights`). `ema_decay` (e.g. 0.999): keep an exponential moving average of
    the generator (see `exponential_moving_average`), stored in checkpoints as
    `generator_ema.*`; validation, prediction and `forward` then use it. `arc_threshold`: the
    HR level above which a pixel belongs to the arc mask of the evaluation report's `psnr_arc`
    and `ssim_arc` (see `lensexp.metrics.superres`; a fraction of the [0, 1] range).
    """

    task = "superres"
    # Constructor arguments that are objects, not settings: left out of the hyperparameters.
    not_hyperparameters: tuple[str, ...] = ("generator", "loss", "optimizer", "scheduler")

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
        arc_threshold: float = ARC_THRESHOLD,
    ) -> None:
        super().__init__(optimizer, scheduler)
        check_arguments(self.task, generator, loss, scale, ema_decay, n_samples)
        if not 0.0 <= float(arc_threshold) < 1.0:
            raise LensexpError(
                f"model.arc_threshold={arc_threshold}: must lie in [0, 1) (a fraction of the "
                f"images' [0, 1] range, e.g. 0.1)."
            )
        self.check_loss(loss)
        # Every constructor's arguments, a subclass's too (Lightning reads the call frames).
        self.save_hyperparameters(ignore=list(self.not_hyperparameters))
        self.scale = int(scale)
        self.n_samples = int(n_samples)
        self.arc_threshold = float(arc_threshold)

        self.generator = generator
        self.pretrained_loaded = load_generator_weights(
            generator, pretrained, option="model.pretrained"
        )
        # Registered (so checkpointed) only when on; made after loading, so it starts at them.
        self.generator_ema: AveragedModel | None = None
        if ema_decay is not None:
            self.generator_ema = exponential_moving_average(generator, float(ema_decay))
        self.loss = loss
        # Completed generator optimizer steps (saved in checkpoints).
        self.generator_steps = 0
        self.record_hyperparameters(
            pretrained_loaded=self.pretrained_loaded,
            generator=type(generator).__name__,
            generator_parameters=sum(p.numel() for p in generator.parameters()),
            loss=loss.describe() if hasattr(loss, "describe") else {},
        )

        self.val_metrics = SRMetrics()
        self.val_bicubic = SRMetrics()
        # A metric, not a logged tensor: under DDP the mean over all images of all processes.
        self.val_loss = MeanMetric()
        # In checkpoints, so a resumed run keeps its best-so-far value.
        self.psnr_best = MaxMetric()
        self.psnr_best.persistent(True)
        self._samples: list[Tensor] = []  # (lr, bicubic, sr, hr) chunks for the image grid
        self._n_predicted = 0

    def check_loss(self, loss: nn.Module) -> None:
        """Refuse a loss this module cannot train: here, one with a GAN term."""
        if getattr(loss, "adversarial", None) is not None:
            raise LensexpError(
                f"loss.adversarial: a GAN term needs the module that owns the discriminator, "
                f"{AdversarialSRModule.__module__}.AdversarialSRModule, which loss=adversarial|"
                f"srgan|esrgan selects (conf/model/gan/); model._target_ is {type(self).__qualname__}."
            )

    def record_hyperparameters(self, **found: Any) -> None:
        """Add what building found out to the hyperparameters (loggers record them as they are
        when training starts)."""
        self.save_hyperparameters({**self.hparams, **found})

    # -- the network --------------------------------------------------------------------------
    @property
    def inference_generator(self) -> nn.Module:
        """The generator validation and prediction use: the EMA when there is one."""
        return self.generator_ema if self.generator_ema is not None else self.generator

    def forward(self, lr: Tensor) -> Tensor:
        """SR images (raw, unclamped) of LR images (N, C, H, W), by `inference_generator`."""
        return self.inference_generator(lr)

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        """The generator's parameters: never a discriminator's, the EMA's or the VGG's."""
        return [p for p in self.generator.parameters() if p.requires_grad]

    def update_ema(self) -> None:
        """One EMA step towards the generator's current weights (after each generator step)."""
        if self.generator_ema is not None:
            self.generator_ema.update_parameters(self.generator)

    def generator_loss(self, sr: Tensor, hr: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The generator's loss of `sr` against `hr` and its terms."""
        return self.loss(sr, hr)

    # -- training -----------------------------------------------------------------------------
    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        # Automatic optimisation: called once per real step, so accumulation is respected.
        super().optimizer_step(*args, **kwargs)
        self.generator_steps += 1
        self.update_ema()

    def _log_terms(self, prefix: str, terms: dict[str, Tensor], n: int, **kwargs: Any) -> None:
        for name, value in terms.items():
            self.log(f"{prefix}{name}", value, batch_size=n, **kwargs)

    def log_train_loss(self, loss: Tensor, terms: dict[str, Tensor], n: int) -> None:
        values = {"train/loss": loss, **{f"train/loss_{k}": v for k, v in terms.items()}}
        self.log_training(values, n, stepwise=["train/loss"], prog_bar=["train/loss"])

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        lr, hr = batch
        loss, terms = self.generator_loss(self.generator(lr), hr)
        self.log_train_loss(loss, terms, lr.shape[0])
        return loss

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["generator_steps"] = self.generator_steps

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.generator_steps = int(checkpoint.get("generator_steps", 0))

    # -- validation ---------------------------------------------------------------------------
    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        lr, hr = batch
        n = lr.shape[0]
        sr = self(lr)
        loss, terms = self.generator_loss(sr, hr)
        bicubic = bicubic_upsample(lr, self.scale)
        self.val_metrics.update(sr, hr)
        self.val_bicubic.update(bicubic, hr)
        self.val_loss.update(loss, weight=n)
        self.log("val/loss", self.val_loss, on_epoch=True, prog_bar=True)
        self._log_terms("val/loss_", terms, n, on_epoch=True, sync_dist=True)
        have = sum(chunk.shape[1] for chunk in self._samples)
        if have < self.n_samples and self.tensorboard() is not None:
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

    def _log_image_grid(self) -> None:
        """The first validation samples of this process as the report's labelled comparison
        figure (a row per sample: LR | bicubic | SR | HR | |SR - HR|, PSNRs in the titles), at
        the step of the scalars logged with it."""
        writer = self.tensorboard()
        if writer is None or not self._samples or not self.trainer.is_global_zero:
            return
        lr, bicubic, sr, hr = torch.cat(self._samples, dim=1).cpu()
        figure = sr_comparison_figure(
            lr, bicubic, sr, hr, max_samples=self.n_samples, title=f"epoch {self.current_epoch}"
        )
        writer.add_figure("val/samples", figure, global_step=self.logging_step)

    # -- prediction (evaluate.py) -------------------------------------------------------------
    def on_predict_epoch_start(self) -> None:
        self._n_predicted = 0

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        """Per-image metrics of SR and bicubic vs HR, and images, as CPU tensors.

        Keys: `mse`, `psnr`, `ssim`, the science metrics `psnr_arc`, `ssim_arc`, `flux_ratio`
        (arc mask: HR above `arc_threshold`) and the same for bicubic as `bicubic_<metric>`, all
        (N,) float64; `lr_samples`, `sr_samples`, `hr_samples` for the items among the first
        `n_samples` overall; `sr` (N, C, H, W) float32 clamped to [0, 1] only when
        `keep_outputs` is set.
        """
        lr, hr = batch
        sr = self(lr).float().clamp(0.0, 1.0)
        scores = per_image_metrics(sr, hr, arc_threshold=self.arc_threshold)
        out = {k: v.cpu() for k, v in scores.items()}
        baseline = per_image_metrics(
            bicubic_upsample(lr, self.scale), hr, arc_threshold=self.arc_threshold
        )
        out |= {f"bicubic_{k}": v.cpu() for k, v in baseline.items()}
        k = max(0, min(lr.shape[0], self.n_samples - self._n_predicted))
        if k:
            out["lr_samples"] = lr[:k].float().cpu()
            out["sr_samples"] = sr[:k].cpu()
            out["hr_samples"] = hr[:k].float().cpu()
        if self.keep_outputs:
            out["sr"] = sr.cpu()
        self._n_predicted += lr.shape[0]
        return out

    def write_report(
        self,
        outputs: list[dict[str, Any]],
        files: list[Path],
        out_dir: Path,
        metadata: Any = None,
    ) -> dict[str, Any]:
        """The super-resolution report of `predict_step` outputs (SR images too with
        `keep_outputs`); see `write_superres_report`. SR data has no per-file `metadata`."""
        from lensexp.reporting.superres import write_superres_report

        # A limited run (debug=fdr, limit_val_batches) predicts only the first batches.
        files = list(files)[: sum(len(o["psnr"]) for o in outputs)]
        return write_superres_report(
            out_dir,
            outputs,
            files,
            save_outputs=self.keep_outputs,
            arc_threshold=self.arc_threshold,
        )


class AdversarialSRModule(SuperResolutionModule):
    """`SuperResolutionModule` trained against a `discriminator` (N, C, H, W) -> (N, 1) logits
    that it owns, with its own optimizer; manual optimisation.

    Per batch: one generator step with the loss's adversarial term on the discriminator's logits
    of the SR images (only the generator's optimizer's parameters require gradients then, so
    gradients reach the SR images through the discriminator while its parameters get none),
    then one discriminator step on the HR and the detached SR images. The first
    `discriminator_warmup_steps` generator steps leave the adversarial term out (pixel and
    perceptual terms only); the discriminator trains throughout. Validation's `val/loss`
    includes the adversarial term once the warm-up is over.

    Both optimizers come from the `optimizer` config and each gets its own scheduler, stepped as
    Lightning would in automatic optimisation (at `interval`/`frequency`; ReduceLROnPlateau on
    its monitored metric, e.g. val/loss). `gradient_clip_val` (with `gradient_clip_algorithm`,
    norm | value) clips each network's gradients before its optimizer steps, after mixed
    precision unscaling; Lightning's `trainer.gradient_clip_val` and
    `trainer.accumulate_grad_batches` do not apply to manual optimisation and are refused.

    Logs, besides the base class's metrics, `train/d_loss`, `train/d_loss_real|fake` and
    `train/d_real_logit|d_fake_logit` (mean logits). Checkpoints hold the discriminator
    (`discriminator.*`), both optimizers and schedulers, and the generator-step count.

    Under DDP each backward pass leaves one of the two networks without gradients, so DDP must
    look for unused parameters: `ddp_find_unused_parameters`, which `trainer=ddp` reads.
    """

    ddp_find_unused_parameters = True

    not_hyperparameters = (*SuperResolutionModule.not_hyperparameters, "discriminator")

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        loss: nn.Module,
        optimizer: OptimizerFactory,
        scale: int,
        scheduler: dict[str, Any] | None = None,
        pretrained: str | None = None,
        ema_decay: float | None = None,
        n_samples: int = 8,
        discriminator_warmup_steps: int = 0,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str = "norm",
        arc_threshold: float = ARC_THRESHOLD,
    ) -> None:
        super().__init__(
            generator,
            loss,
            optimizer,
            scale,
            scheduler,
            pretrained,
            ema_decay,
            n_samples,
            arc_threshold,
        )
        check_int("model.discriminator_warmup_steps", discriminator_warmup_steps, 0)
        if discriminator_warmup_steps and not loss.has_content_term:
            raise LensexpError(
                f"model.discriminator_warmup_steps={discriminator_warmup_steps} needs a pixel or "
                f"perceptual term to train the generator during the warm-up; add loss.pixel or "
                f"set it to 0."
            )
        if gradient_clip_val is not None and not float(gradient_clip_val) > 0:
            raise LensexpError(
                f"model.gradient_clip_val={gradient_clip_val}: must be > 0, or null for no "
                f"clipping."
            )
        check_choice("model.gradient_clip_algorithm", gradient_clip_algorithm, CLIP_ALGORITHMS)
        self.discriminator = discriminator
        self.discriminator_warmup_steps = int(discriminator_warmup_steps)
        self.gradient_clip_val = None if gradient_clip_val is None else float(gradient_clip_val)
        self.gradient_clip_algorithm = gradient_clip_algorithm
        self.automatic_optimization = False
        self.record_hyperparameters(
            discriminator=type(discriminator).__name__,
            discriminator_parameters=sum(p.numel() for p in discriminator.parameters()),
        )

    def check_loss(self, loss: nn.Module) -> None:
        """Refuse a loss without a GAN term: there would be nothing to train adversarially."""
        if getattr(loss, "adversarial", None) is None:
            raise LensexpError(
                f"model._target_={type(self).__qualname__} trains a discriminator, but the loss "
                f"has no adversarial term; use loss=adversarial|srgan|esrgan."
            )

    @property
    def adversarial_active(self) -> bool:
        """Whether the next generator step (and validation now) includes the adversarial term."""
        return self.generator_steps >= self.discriminator_warmup_steps

    def generator_loss(self, sr: Tensor, hr: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        fake_logits = self.discriminator(sr) if self.adversarial_active else None
        return self.loss(sr, hr, fake_logits=fake_logits)

    # -- optimisers ---------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        opt_g = self.optimizer_factory(self.trainable_parameters())
        opt_d = self.optimizer_factory(self.discriminator.parameters())
        schedulers = [self.make_scheduler(o) for o in (opt_g, opt_d)]
        if schedulers[0] is None:
            return [opt_g, opt_d]
        # Lightning only stores (and checkpoints) the schedulers; `_step_schedulers` steps them.
        return [opt_g, opt_d], [s["scheduler"] for s in schedulers]

    def configure_callbacks(self) -> list:
        # The one hook before Lightning's own check rejects clipping and accumulation under
        # manual optimisation (with Trainer argument names): refuse them here with the lensexp
        # keys. The trainer's settings are only read.
        trainer = self._trainer
        if trainer is None or trainer.state.fn != TrainerFn.FITTING:
            return []
        if trainer.accumulate_grad_batches != 1:
            raise LensexpError(
                f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches}: not "
                f"supported with an adversarial loss (generator and discriminator steps "
                f"alternate per batch); set trainer.accumulate_grad_batches=1 and raise "
                f"data.batch_size instead."
            )
        for key in ("gradient_clip_val", "gradient_clip_algorithm"):
            value = getattr(trainer, key)
            if value is not None:
                value = getattr(value, "value", value)
                raise LensexpError(
                    f"trainer.{key}={value}: the adversarial module clips its own gradients "
                    f"(manual optimisation); set model.{key}={value} instead."
                )
        return []

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        # Runs after mixed-precision unscaling, so the threshold applies to the true gradients.
        if self.gradient_clip_val is not None:
            self.clip_gradients(
                optimizer,
                gradient_clip_val=self.gradient_clip_val,
                gradient_clip_algorithm=self.gradient_clip_algorithm,
            )

    def _schedulers(self) -> list[Any]:
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return []
        return schedulers if isinstance(schedulers, list) else [schedulers]

    def _step_schedulers(self, interval: str, count: int) -> None:
        """Step the schedulers as Lightning would in automatic optimisation."""
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
    def training_step(self, batch: Batch, batch_idx: int) -> None:
        lr, hr = batch
        n = lr.shape[0]
        opt_g, opt_d = self.optimizers()
        # While toggled, only the generator's parameters require gradients: the adversarial
        # term's gradients pass through the discriminator to sr, its parameters get none.
        with self.toggled_optimizer(opt_g):
            sr = self.generator(lr)
            loss, terms = self.generator_loss(sr, hr)
            opt_g.zero_grad()
            self.manual_backward(loss)
            opt_g.step()
        self.generator_steps += 1
        self.update_ema()
        self.log_train_loss(loss, terms, n)

        with self.toggled_optimizer(opt_d):
            real_logits = self.discriminator(hr)
            fake_logits = self.discriminator(sr.detach())
            d_loss, d_terms = self.loss.discriminator_loss(real_logits, fake_logits)
            opt_d.zero_grad()
            self.manual_backward(d_loss)
            opt_d.step()
        d_values = {"train/d_loss": d_loss, "train/d_loss_real": d_terms["real"],
                    "train/d_loss_fake": d_terms["fake"], "train/d_real_logit":
                    d_terms["real_logit"], "train/d_fake_logit": d_terms["fake_logit"]}  # fmt: skip
        self.log_training(d_values, n, stepwise=d_values)
        self._step_schedulers("step", self.generator_steps)

    def on_train_epoch_end(self) -> None:
        # Lightning runs the epoch's validation before this hook, so a plateau scheduler sees
        # this epoch's val/loss, as in automatic optimisation.
        self._step_schedulers("epoch", self.current_epoch + 1)
