"""SuperResolutionModule and AdversarialSRModule: training with each loss kind, the generator and
discriminator steps, validation metrics, EMA, checkpoints, schedulers and gradient clipping
under manual optimisation, the super-resolution report, and the SR configs.

Images are 16 -> 32 px and networks tiny, so every Lightning run takes about a second.
"""

from __future__ import annotations

import copy
import csv
import json
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lensexp.errors import LensexpError
from lensexp.losses.adversarial import GANLoss
from lensexp.losses.perceptual import vgg19_layers
from lensexp.losses.pixel import PixelLoss
from lensexp.losses.superres import SuperResolutionLoss
from lensexp.metrics.superres import SRMetrics, bicubic_upsample, per_image_metrics
from lensexp.models.discriminator import Discriminator
from lensexp.models.srresnet import SRResNet
from lensexp.reporting.superres import output_names, write_superres_report
from lensexp.tasks.superres import AdversarialSRModule, SuperResolutionModule
from tests.helpers import (
    CONF,
    compose_cfg,
    make_superres_folder,
    reference_sr_forward,
    reference_sr_state_dict,
)

VAL_KEYS = [
    f"val/{m}{suffix}"
    for m in ("mse", "psnr", "ssim")
    for suffix in ("", "_bicubic", "_gain")
] + ["val/loss", "val/psnr_best"]  # fmt: skip


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# -- builders ---------------------------------------------------------------------------------
def compose(overrides: list[str]) -> DictConfig:
    return compose_cfg(Path("outputs/test"), overrides)


def tiny_generator(**kwargs) -> SRResNet:
    options = dict(scale=2, n_blocks=1, channels=8, batch_norm=False) | kwargs
    return SRResNet(**options)


def tiny_discriminator() -> Discriminator:
    return Discriminator(channels=8, n_stages=2, hidden=16)


def vgg_file(folder: Path, layer: str = "conv2_2") -> Path:
    """A VGG19 `features` state dict up to `layer`, random (conv5_4's would be 80 MB)."""
    path = folder / f"vgg19_{layer}.pth"
    if not path.exists():
        with torch.device("meta"):
            features = torchvision.models.vgg19().features[: vgg19_layers()[layer] + 1]
        state = {
            f"features.{k}": 0.05 * torch.randn(v.shape) for k, v in features.state_dict().items()
        }
        torch.save(state, path)
    return path


def make_loss(name: str, tmp_path: Path | None = None) -> SuperResolutionLoss:
    """`loss=<name>` as train.py composes it; a VGG from a local file, cut at conv2_2."""
    overrides = ["model=srresnet", f"loss={name}"]
    if name in ("vgg", "srgan"):
        overrides += [f"loss.weights={vgg_file(tmp_path)}", "loss.perceptual.layer=conv2_2"]
    return instantiate(compose(overrides).loss)


def make_module(
    loss: nn.Module | str = "mse", generator: nn.Module | None = None, **kwargs
) -> SuperResolutionModule:
    """The module the loss needs (with a GAN term: the adversarial one, a tiny discriminator)."""
    loss = make_loss(loss) if isinstance(loss, str) else loss
    options = dict(
        generator=generator if generator is not None else tiny_generator(),
        loss=loss,
        optimizer=partial(torch.optim.Adam, lr=1e-3),
        scale=2,
        scheduler=None,
    )
    if getattr(loss, "adversarial", None) is None:
        return SuperResolutionModule(**(options | kwargs))
    return AdversarialSRModule(**(options | {"discriminator": tiny_discriminator()} | kwargs))


def pairs(n: int = 8, lr_size: int = 16) -> TensorDataset:
    """HR noise smoothed a little (so SSIM is meaningful) and its 2x2 block mean as LR; the
    same every call."""
    noise = torch.rand(
        n, 1, 2 * lr_size + 2, 2 * lr_size + 2, generator=torch.Generator().manual_seed(0)
    )
    hr = F.avg_pool2d(noise, 3, stride=1)
    return TensorDataset(F.avg_pool2d(hr, 2), hr)


def loader(n: int = 8, batch_size: int = 4) -> DataLoader:
    return DataLoader(pairs(n), batch_size=batch_size)


def trainer(**kwargs) -> L.Trainer:
    options = dict(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    return L.Trainer(**(options | kwargs))


def fit(module: SuperResolutionModule, **kwargs) -> L.Trainer:
    """Fit on 2 batches of 4, validate on one."""
    data = loader()
    t = trainer(**kwargs)
    t.fit(module, train_dataloaders=data, val_dataloaders=data)
    return t


def snapshot(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def changed(before: list[torch.Tensor], module: nn.Module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


def optimized_ids(optimizer: torch.optim.Optimizer) -> set[int]:
    return {id(p) for g in optimizer.param_groups for p in g["params"]}


def gradients(module: nn.Module) -> dict[str, torch.Tensor | None]:
    return {
        name: None if p.grad is None else p.grad.detach().clone()
        for name, p in module.named_parameters()
    }


class Gradients(Callback):
    """Every parameter's gradient when an optimizer is about to step (before the module's own
    clipping, which runs after the callbacks' hook) and at the end of each batch."""

    def __init__(self) -> None:
        self.before_step: list[dict[str, torch.Tensor | None]] = []
        self.after_batch: list[dict[str, torch.Tensor | None]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.before_step.append(gradients(pl_module))

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.after_batch.append(gradients(pl_module))


class GeneratorWeights(Callback):
    """The generator's parameters after each training batch (after its optimizer step)."""

    def __init__(self) -> None:
        self.steps: list[list[torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.steps.append(snapshot(pl_module.generator))


def norm(grads: list[torch.Tensor]) -> float:
    return float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))


# -- training ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mse", "l1", "vgg", "adversarial", "srgan"])
def test_training_with_each_loss(tmp_path: Path, name: str) -> None:
    module = make_module(make_loss(name, tmp_path))
    adversarial = name in ("adversarial", "srgan")
    assert isinstance(module, AdversarialSRModule) == adversarial
    assert module.automatic_optimization == (not adversarial)
    gen_before = snapshot(module.generator)
    disc_before = snapshot(module.discriminator) if adversarial else None

    t = fit(module)

    metrics = t.callback_metrics
    assert changed(gen_before, module.generator)
    assert module.generator_steps == 2
    assert "train/loss" in metrics
    assert ("train/loss_pixel" in metrics) == (name != "srgan")  # SRGAN's loss has no pixel term
    assert set(VAL_KEYS) <= set(metrics)
    gen_ids = {id(p) for p in module.generator.parameters()}
    if name in ("vgg", "srgan"):
        assert "train/loss_perceptual" in metrics and module.hparams.loss["pretrained_loaded"]
        # The VGG is a registered submodule, yet frozen and in no optimizer.
        vgg = list(module.loss.perceptual.vgg.parameters())
        assert vgg and {id(p) for p in vgg} <= {id(p) for p in module.parameters()}
        assert not any(p.requires_grad for p in vgg)
        assert not any(id(p) in optimized_ids(o) for o in t.optimizers for p in vgg)
        # ... and not in checkpoints: a fresh module loads the state dict strictly.
        state = module.state_dict()
        assert not any(".vgg." in k for k in state)
        make_module(make_loss(name, tmp_path)).load_state_dict(state)
    if adversarial:
        assert changed(disc_before, module.discriminator)
        assert {"train/d_loss", "train/loss_adversarial", "train/d_real_logit"} <= set(metrics)
        assert {"train/d_loss_real", "train/d_loss_fake", "train/d_fake_logit"} <= set(metrics)
        # Two optimizers, over disjoint parameter sets.
        opt_g, opt_d = t.optimizers
        assert optimized_ids(opt_g) == gen_ids
        assert optimized_ids(opt_d) == {id(p) for p in module.discriminator.parameters()}
    else:
        (opt,) = t.optimizers
        assert optimized_ids(opt) == gen_ids


def test_generator_step_backpropagates_through_the_frozen_discriminator() -> None:
    # A heavy GAN term, so that its share of the generator's gradients is plain to see.
    loss = SuperResolutionLoss(pixel=PixelLoss("l1", 1.0), adversarial=GANLoss("vanilla", 1.0))
    module = make_module(loss)
    generator, discriminator = copy.deepcopy(module.generator), copy.deepcopy(module.discriminator)
    disc_before = snapshot(module.discriminator)
    record = Gradients()
    fit(module, limit_train_batches=1, callbacks=[record])

    g_step, d_step = record.before_step
    # The generator step: the discriminator's parameters got no gradient ...
    assert all(g is None for n, g in g_step.items() if n.startswith("discriminator."))
    # ... while gradients passed through it: the generator's are those of pixel + GAN term.
    lr, hr = next(iter(loader()))
    sr = generator(lr)
    pixel = loss.pixel(sr, hr)
    pixel_only = torch.autograd.grad(pixel, list(generator.parameters()), retain_graph=True)
    (pixel + loss.adversarial(discriminator(sr), True)).backward()
    for (name, p), without_gan in zip(generator.named_parameters(), pixel_only, strict=True):
        torch.testing.assert_close(g_step[f"generator.{name}"], p.grad, rtol=1e-5, atol=1e-7)
        assert not torch.allclose(p.grad, without_gan, rtol=1e-3, atol=1e-6)
    # The discriminator step: every discriminator parameter has a gradient, and moved.
    assert all(
        d_step[f"discriminator.{n}"] is not None for n, _ in discriminator.named_parameters()
    )
    assert changed(disc_before, module.discriminator)
    assert all(p.requires_grad for p in module.discriminator.parameters())
    assert all(p.requires_grad for p in module.generator.parameters())


class StepLosses(Callback):
    """Each training step's loss (the automatic step's output) and batch size."""

    def __init__(self) -> None:
        self.steps: list[tuple[float, int]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append((float(outputs["loss"]), batch[0].shape[0]))


@pytest.mark.parametrize("name", ["mse", "adversarial"])
def test_training_logs_epoch_means_every_step_and_step_values_when_written(
    tmp_path: Path, name: str
) -> None:
    # 18 pairs in batches of 4: five steps an epoch, the last of 2 (so the mean is weighted);
    # the loggers write every 5th step.
    module = make_module(name)
    calls: list[str] = []
    log = module.log

    def counted(key: str, *args, **kwargs) -> None:
        if module.trainer.training:
            calls.append(key)
        log(key, *args, **kwargs)

    module.log = counted
    losses = StepLosses()
    t = trainer(max_epochs=2, limit_train_batches=None, log_every_n_steps=5,
                logger=L.pytorch.loggers.CSVLogger(tmp_path, name="csv"),
                callbacks=[losses] if name == "mse" else [])  # fmt: skip
    t.fit(module, train_dataloaders=loader(18), val_dataloaders=loader())
    rows = list(csv.DictReader((Path(t.logger.log_dir) / "metrics.csv").read_text().splitlines()))
    stepwise = "train/loss" if name == "mse" else "train/d_loss"

    # Step values: written on steps 4 and 9 (every 5th of 10), so self.log'ged on those alone;
    # epoch values: one self.log an epoch each (the stepwise one twice: `_epoch`, and bare for
    # monitors), not one per step as before (2 x 10 calls for mse).
    written = {int(r["step"]): float(r[f"{stepwise}_step"]) for r in rows if r[f"{stepwise}_step"]}
    assert sorted(written) == [4, 9]
    # mse: loss (twice) and pixel; adversarial: those, the GAN term, and d_loss and its four
    # terms, each stepwise (twice, and a step value).
    epoch_keys, step_keys = {"mse": (3, 1), "adversarial": (4 + 2 * 5, 1 + 5)}[name]
    assert calls.count(f"{stepwise}_step") == 2
    assert len(calls) == 2 * epoch_keys + 2 * step_keys

    epochs = [r for r in rows if r.get(f"{stepwise}_epoch")]
    assert len(epochs) == 2 and "train/loss_pixel" in rows[0]
    if name == "mse":
        for step, value in written.items():
            assert value == pytest.approx(losses.steps[step][0], rel=1e-6)
        for epoch, row in enumerate(epochs):
            steps = losses.steps[5 * epoch : 5 * epoch + 5]
            mean = sum(v * n for v, n in steps) / sum(n for _, n in steps)
            assert float(row["train/loss_epoch"]) == pytest.approx(mean, rel=1e-5)
            assert float(row["train/loss_pixel"]) == pytest.approx(mean, rel=1e-5)
        assert float(t.callback_metrics["train/loss"]) == pytest.approx(mean, rel=1e-5)

    # A module fitted twice (a new Trainer, epochs counted from 0 again) logs both times.
    twice = make_module(name)
    for _ in range(2):
        again = trainer(max_epochs=1, limit_train_batches=None)
        again.fit(twice, train_dataloaders=loader(18), val_dataloaders=loader())
        assert {f"{stepwise}_epoch", stepwise, "train/loss_pixel"} <= set(again.callback_metrics)


def test_discriminator_warmup_leaves_out_the_gan_term() -> None:
    module = make_module("adversarial", discriminator_warmup_steps=100)
    assert module.hparams["discriminator_warmup_steps"] == 100
    disc_before = snapshot(module.discriminator)
    metrics = fit(module).callback_metrics
    assert not {"train/loss_adversarial", "val/loss_adversarial"} & set(metrics)
    assert "train/loss_pixel" in metrics
    # The discriminator trains during the generator's warm-up.
    assert "train/d_loss" in metrics and changed(disc_before, module.discriminator)
    torch.testing.assert_close(metrics["train/loss"], metrics["train/loss_pixel"])
    # After the warm-up, validation's loss includes the GAN term.
    module = make_module("adversarial", discriminator_warmup_steps=2)
    metrics = fit(module).callback_metrics
    assert "train/loss_adversarial" not in metrics and "val/loss_adversarial" in metrics


def test_hparams_record_choices_not_modules() -> None:
    module = make_module()
    hp = module.hparams
    assert not {"optimizer", "scheduler"} & set(hp)
    assert not any(isinstance(v, nn.Module) or callable(v) for v in hp.values())
    assert hp["scale"] == 2 and hp["pretrained"] is None and hp["ema_decay"] is None
    assert hp["pretrained_loaded"] is False and hp["generator"] == "SRResNet"
    assert hp["loss"] == {"task": "superres", "pixel_criterion": "mse", "pixel_weight": 1.0}

    hp = make_module("adversarial", gradient_clip_val=0.5).hparams
    assert not any(isinstance(v, nn.Module) or callable(v) for v in hp.values())
    assert hp["discriminator"] == "Discriminator" and hp["discriminator_parameters"] > 0
    assert (hp["discriminator_warmup_steps"], hp["gradient_clip_val"]) == (0, 0.5)
    assert hp["gradient_clip_algorithm"] == "norm"
    assert (hp["loss"]["gan_type"], hp["loss"]["gan_weight"]) == ("vanilla", 1e-3)


# -- validation -------------------------------------------------------------------------------
def test_validation_metrics_and_bicubic_identity() -> None:
    # A generator that outputs bicubic upsampling exactly: global residual, zero tail conv.
    generator = tiny_generator(global_residual=True)
    nn.init.zeros_(generator.tail.weight)
    nn.init.zeros_(generator.tail.bias)
    module = make_module(generator=generator)
    data = pairs()
    (metrics,) = trainer(limit_val_batches=None).validate(
        module, DataLoader(data, batch_size=3), verbose=False
    )
    assert set(VAL_KEYS) - {"val/psnr_best"} <= set(metrics)
    for name in ("mse", "psnr", "ssim"):
        assert metrics[f"val/{name}_gain"] == pytest.approx(0.0, abs=1e-5)
        assert metrics[f"val/{name}_gain"] == pytest.approx(
            metrics[f"val/{name}"] - metrics[f"val/{name}_bicubic"], abs=1e-5
        )
    # The same numbers as SRMetrics over the whole set (per-image means, not per-batch).
    lr, hr = data.tensors
    reference = SRMetrics()
    reference.update(bicubic_upsample(lr, 2), hr)
    expected = reference.compute()
    for name in ("mse", "psnr", "ssim"):
        assert metrics[f"val/{name}_bicubic"] == pytest.approx(float(expected[name]), rel=1e-5)


def test_validation_gain_and_best_after_training() -> None:
    module = make_module()
    metrics = fit(module, max_epochs=2).callback_metrics
    for name in ("mse", "psnr", "ssim"):
        gain = metrics[f"val/{name}"] - metrics[f"val/{name}_bicubic"]
        assert float(metrics[f"val/{name}_gain"]) == pytest.approx(float(gain), abs=1e-5)
    assert float(metrics["val/psnr_best"]) >= float(metrics["val/psnr"]) - 1e-6


def test_tensorboard_sample_figure_on_the_scalars_step(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="", version="")
    module = make_module(n_samples=6)  # more than one val batch (4): collected across batches
    fit(module, logger=logger, limit_val_batches=2)
    events = EventAccumulator(str(tmp_path)).Reload()
    (image,) = events.Images("val/samples")
    (psnr,) = events.Scalars("val/psnr")
    assert image.step == psnr.step > 0
    # The labelled comparison figure: a row per sample, taller than wide for 6 samples.
    assert image.height > image.width


# -- EMA --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mse", "adversarial"])
def test_ema_is_the_average_of_the_steps(name: str) -> None:
    decay = 0.6
    generator = tiny_generator(batch_norm=True)
    module = make_module(
        name, generator, ema_decay=decay, optimizer=partial(torch.optim.SGD, lr=0.1)
    )
    expected = snapshot(generator)
    weights = GeneratorWeights()
    fit(module, callbacks=[weights])

    assert len(weights.steps) == 2
    for step in weights.steps:
        expected = [decay * e + (1 - decay) * w for e, w in zip(expected, step, strict=True)]
    averaged = list(module.generator_ema.module.parameters())
    for a, e in zip(averaged, expected, strict=True):
        torch.testing.assert_close(a, e)
    assert changed(snapshot(module.generator), module.generator_ema.module)
    # Batch-norm statistics are the generator's current ones, not averaged.
    buffers = list(module.generator.buffers())
    assert len(buffers) > 0
    for a, b in zip(module.generator_ema.module.buffers(), buffers, strict=True):
        assert torch.equal(a, b)
    assert not any(p.requires_grad for p in averaged)


def test_ema_validates_with_averaged_weights_and_is_checkpointed(tmp_path: Path) -> None:
    module = make_module(ema_decay=0.5, optimizer=partial(torch.optim.Adam, lr=1e-2))
    assert module.inference_generator is module.generator_ema
    t = fit(module)
    raw, ema = module.generator, module.generator_ema
    assert changed(snapshot(raw), ema.module)

    val = loader()
    lr, hr = next(iter(val))
    with torch.no_grad():
        torch.testing.assert_close(module(lr), ema.module(lr))
        assert not torch.allclose(ema.module(lr), raw(lr))
    (metrics,) = t.validate(module, val, verbose=False)
    expected = SRMetrics()
    with torch.no_grad():
        expected.update(ema.module(lr), hr)
    assert metrics["val/psnr"] == pytest.approx(float(expected.compute()["psnr"]), rel=1e-5)

    path = tmp_path / "ema.ckpt"
    t.save_checkpoint(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert any(k.startswith("generator_ema.module.") for k in checkpoint["state_dict"])
    assert checkpoint["generator_steps"] == 2 and "psnr_best.max_value" in checkpoint["state_dict"]
    # As evaluate.py does: rebuild from config, then load the state dict.
    fresh = make_module(ema_decay=0.5)
    fresh.load_state_dict(checkpoint["state_dict"])
    for a, b in zip(fresh.generator_ema.parameters(), ema.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert int(fresh.generator_ema.n_averaged) == int(ema.n_averaged) == 3
    # The raw generator's weights are what `model.pretrained=<ckpt>` picks up.
    warm = make_module(pretrained=str(path))
    assert warm.hparams["pretrained_loaded"] is True
    for a, b in zip(warm.generator.parameters(), raw.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_adversarial_checkpoint_round_trip(tmp_path: Path) -> None:
    spec = {
        "scheduler": partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5),
        "interval": "step",
    }
    module = make_module("adversarial", ema_decay=0.9, scheduler=spec)
    t = fit(module)
    path = tmp_path / "gan.ckpt"
    t.save_checkpoint(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    keys = set(checkpoint["state_dict"])
    assert any(k.startswith("discriminator.") for k in keys)
    assert any(k.startswith("generator_ema.module.") for k in keys)
    assert not any(k.startswith("loss.") for k in keys)  # the loss trains nothing
    assert len(checkpoint["optimizer_states"]) == len(checkpoint["lr_schedulers"]) == 2
    assert checkpoint["generator_steps"] == 2

    torch.manual_seed(1)
    fresh = make_module("adversarial", ema_decay=0.9, scheduler=spec)
    assert changed(snapshot(module.discriminator), fresh.discriminator)
    # Resuming a finished run restores everything and trains no further.
    resumed = trainer()
    resumed.fit(fresh, loader(), loader(), ckpt_path=path)
    assert fresh.generator_steps == 2
    for original, restored in (
        (module.discriminator, fresh.discriminator),
        (module.generator_ema, fresh.generator_ema),
        (module.generator, fresh.generator),
    ):
        a, b = original.state_dict(), restored.state_dict()
        assert a.keys() == b.keys()
        for key, value in a.items():
            torch.testing.assert_close(b[key], value)
    for original, restored in zip(t.optimizers, resumed.optimizers, strict=True):
        a, b = original.state_dict(), restored.state_dict()
        assert a["param_groups"] == b["param_groups"] and a["param_groups"][0]["lr"] == 2.5e-4
        assert len(a["state"]) == len(b["state"]) > 0
        for i, state in a["state"].items():
            for name, value in state.items():
                torch.testing.assert_close(b["state"][i][name], value)
    assert [c.scheduler.last_epoch for c in resumed.lr_scheduler_configs] == [2, 2]


def test_bad_options() -> None:
    with pytest.raises(LensexpError, match=r"data\.scale=2 .*model\.generator\.scale=4"):
        make_module(generator=tiny_generator(scale=4))
    with pytest.raises(LensexpError, match=r"model\.ema_decay=1\.5"):
        make_module(ema_decay=1.5)
    with pytest.raises(LensexpError, match="not a super-resolution loss"):
        make_module(loss=nn.CrossEntropyLoss())
    gan = make_loss("adversarial")
    # The plain module cannot train a GAN term, the adversarial one needs it.
    with pytest.raises(
        LensexpError, match=r"AdversarialSRModule, which loss=adversarial\|srgan\|esrgan"
    ):
        SuperResolutionModule(tiny_generator(), gan, partial(torch.optim.Adam), scale=2)
    with pytest.raises(
        LensexpError, match=r"no adversarial term; use loss=adversarial\|srgan\|esrgan"
    ):
        AdversarialSRModule(
            tiny_generator(), tiny_discriminator(), make_loss("mse"), torch.optim.Adam, scale=2
        )
    with pytest.raises(LensexpError, match=r"model\.discriminator_warmup_steps=-1"):
        make_module(gan, discriminator_warmup_steps=-1)
    with pytest.raises(LensexpError, match=r"model\.discriminator_warmup_steps=5 needs a pixel"):
        make_module(SuperResolutionLoss(adversarial=GANLoss()), discriminator_warmup_steps=5)
    with pytest.raises(LensexpError, match=r"model\.gradient_clip_val=0"):
        make_module(gan, gradient_clip_val=0)
    with pytest.raises(
        LensexpError, match=r"model\.gradient_clip_algorithm=l2: not a valid value; use one of"
    ):
        make_module(gan, gradient_clip_algorithm="l2")


def test_pretrained_reference_generator_file(tmp_path: Path) -> None:
    state = reference_sr_state_dict(n_blocks=1, channels=8)
    path = tmp_path / "reference_generator.pth"
    torch.save(state, path)
    generator = tiny_generator(activation="prelu")
    module = make_module(generator=generator, pretrained=str(path), ema_decay=0.9)
    assert module.hparams["pretrained_loaded"] is True
    lr = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(
            module.generator(lr), reference_sr_forward(state, lr), rtol=1e-5, atol=1e-6
        )
        # The EMA starts from the loaded weights.
        torch.testing.assert_close(
            module(lr), reference_sr_forward(state, lr), rtol=1e-5, atol=1e-6
        )
    assert make_module(pretrained="none").hparams["pretrained_loaded"] is False
    with pytest.raises(LensexpError, match=r"model\.pretrained="):
        make_module(generator=tiny_generator(channels=4), pretrained=str(path))


# -- schedulers and gradient clipping under manual optimisation -------------------------------
def _lrs(t: L.Trainer) -> list[float]:
    return [opt.param_groups[0]["lr"] for opt in t.optimizers]


@pytest.mark.parametrize(
    "scheduler,interval,expected",
    [
        (partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.1), "step", 1e-5),
        (partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.1), "epoch", 1e-5),
        # Never "improves" (needs an 11-fold rise): reduced after the second validation.
        (
            partial(
                torch.optim.lr_scheduler.ReduceLROnPlateau, mode="max", threshold=10, patience=0
            ),
            "epoch",
            1e-4,
        ),
    ],
    ids=["step", "epoch", "plateau"],
)
def test_gan_schedulers_are_stepped(scheduler, interval: str, expected: float) -> None:
    spec = {"scheduler": scheduler, "monitor": "val/loss", "interval": interval}
    module = make_module("adversarial", scheduler=spec)
    epochs = 1 if interval == "step" else 2
    t = fit(module, max_epochs=epochs, limit_train_batches=1 if epochs == 2 else 2)
    assert _lrs(t) == pytest.approx([expected, expected])


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_model_gradient_clipping(algorithm: str) -> None:
    clip = 2.0**-10  # exact in float32
    module = make_module(
        "adversarial",
        gradient_clip_val=clip,
        gradient_clip_algorithm=algorithm,
        optimizer=partial(torch.optim.SGD, lr=1.0),
    )
    record = Gradients()
    before = snapshot(module.generator)
    fit(module, limit_train_batches=1, callbacks=[record])
    # Before clipping (each network's own step), and after the batch (clipped in place).
    g_step, d_step = record.before_step
    (after,) = record.after_batch
    for prefix, raw in (("generator.", g_step), ("discriminator.", d_step)):
        names = [n for n, g in raw.items() if n.startswith(prefix) and g is not None]
        unclipped, clipped = [raw[n] for n in names], [after[n] for n in names]
        if algorithm == "norm":
            assert norm(unclipped) > clip and norm(clipped) <= clip * (1 + 1e-4)
            for a, b in zip(unclipped, clipped, strict=True):  # scaled, not cut
                torch.testing.assert_close(b, a * clip / norm(unclipped), rtol=1e-4, atol=1e-10)
        else:
            assert max(float(g.abs().max()) for g in unclipped) > clip
            assert max(float(g.abs().max()) for g in clipped) <= clip
    # SGD with lr 1: the generator moved by exactly its clipped gradient.
    if algorithm == "norm":
        moved = zip(before, module.generator.parameters(), strict=True)
        assert 0 < torch.cat([(a - b).flatten() for a, b in moved]).norm() <= clip * 1.001


@pytest.mark.parametrize(
    "setting,message",
    [
        ({"gradient_clip_val": 1.0}, "set model.gradient_clip_val=1.0 instead"),
        ({"gradient_clip_algorithm": "value"}, "set model.gradient_clip_algorithm=value instead"),
        ({"accumulate_grad_batches": 2}, "trainer.accumulate_grad_batches=2: not supported"),
    ],
    ids=["clip_val", "clip_algorithm", "accumulate"],
)
def test_trainer_clipping_and_accumulation_are_refused(setting: dict, message: str) -> None:
    module = make_module("adversarial")
    t = trainer(**setting)
    with pytest.raises(LensexpError) as err:
        t.fit(module, loader(), loader())
    assert message in str(err.value) and "\n" not in str(err.value)
    assert (t.gradient_clip_val, t.accumulate_grad_batches) == (
        setting.get("gradient_clip_val"),
        setting.get("accumulate_grad_batches", 1),
    )  # read, not changed
    # Validation and prediction don't care; the plain module clips as Lightning does.
    trainer(**setting).validate(module, loader(), verbose=False)
    fit(make_module(), **setting)


# -- prediction and the report ----------------------------------------------------------------
def test_predict_and_report(tmp_path: Path) -> None:
    from lensexp.data.superres import SuperResolutionDataModule

    root = make_superres_folder(tmp_path / "sr", 10, lr_size=16)
    dm = SuperResolutionDataModule(
        root=str(root), hr_size=32, batch_size=4, cache_dir=str(tmp_path / "cache"),
        val_fraction=0.5, predict_split="val",
    )  # fmt: skip
    module = make_module(n_samples=3)
    t = trainer()
    (validated,) = trainer(limit_val_batches=1.0).validate(module, datamodule=dm, verbose=False)

    dm.setup("predict")
    outputs = t.predict(module, datamodule=dm)
    assert [o["psnr"].shape[0] for o in outputs] == [4, 1]
    science = ("psnr_arc", "ssim_arc", "flux_ratio")
    for key in (*science, *(f"bicubic_{k}" for k in science)):
        assert outputs[0][key].shape == (4,) and outputs[0][key].dtype == torch.float64, key
    assert outputs[0]["sr_samples"].shape == (3, 1, 32, 32) and "sr_samples" not in outputs[1]
    assert "sr" not in outputs[0]  # SR images of every item only when asked for

    files = dm.files["val"]
    module.keep_outputs = True
    outputs = t.predict(module, datamodule=dm)
    assert outputs[0]["sr"].shape == (4, 1, 32, 32)
    report = module.write_report(outputs, files, tmp_path / "report")

    science = {"psnr_arc", "ssim_arc", "flux_ratio", "flux_rel_error"}
    assert set(report) == {
        "mse", "psnr", "ssim", "n", "bicubic", "psnr_gain", "ssim_gain", "arc_empty",
        "arc_threshold", "ci95", *science,
    }  # fmt: skip
    assert set(report["bicubic"]) == {"mse", "psnr", "ssim", *science} and report["n"] == 5
    assert report["arc_threshold"] == 0.1 and report["arc_empty"] == 0
    assert set(report["ci95"]) == {"psnr", "ssim", "psnr_gain", "ssim_gain"}
    saved = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert saved == report
    assert (tmp_path / "report" / "comparison.png").stat().st_size > 0
    # Validation and evaluation score alike (the whole val split in one validation pass here).
    for name in ("mse", "psnr", "ssim"):
        assert report[name] == pytest.approx(validated[f"val/{name}"], rel=1e-5)
        assert report["bicubic"][name] == pytest.approx(validated[f"val/{name}_bicubic"], rel=1e-5)
    written = sorted(p.name for p in (tmp_path / "report" / "sr").glob("*.npy"))
    assert written == sorted(f.name for f in files)
    first = np.load(tmp_path / "report" / "sr" / files[0].name)
    assert first.shape == (1, 32, 32) and first.dtype == np.float32
    lr = torch.from_numpy(np.load(files[0])).unsqueeze(0)
    with torch.no_grad():
        np.testing.assert_allclose(first, module(lr).clamp(0, 1)[0].numpy(), atol=1e-6)

    # Without keep_outputs: the same report, no SR images.
    module.keep_outputs = False
    outputs = t.predict(module, datamodule=dm)
    assert module.write_report(outputs, files, tmp_path / "again") == report
    assert not (tmp_path / "again" / "sr").exists()
    with pytest.raises(ValueError, match=r"save_outputs=True\): needs"):
        write_superres_report(tmp_path / "again", outputs, files, save_outputs=True)


def test_arc_threshold_option() -> None:
    module = make_module(arc_threshold=0.3)
    assert module.hparams["arc_threshold"] == 0.3
    lr, hr = next(iter(loader()))
    with torch.no_grad():
        out = module.predict_step((lr, hr), 0)
        sr = module(lr).clamp(0, 1)
    expected = per_image_metrics(sr, hr, arc_threshold=0.3)
    torch.testing.assert_close(out["psnr_arc"], expected["psnr_arc"])
    torch.testing.assert_close(out["flux_ratio"], expected["flux_ratio"])
    assert make_module("adversarial", arc_threshold=0.3).arc_threshold == 0.3
    with pytest.raises(LensexpError, match=r"model\.arc_threshold=1\.5: must lie in \[0, 1\)"):
        make_module(arc_threshold=1.5)


def test_report_output_names_when_names_repeat() -> None:
    files = [Path("/d/LR/a.npy"), Path("/d/val/LR/a.npy"), Path("/d/LR/b.npy")]
    names = output_names(files)
    assert [n.as_posix() for n in names] == ["LR/a.npy", "val/LR/a.npy", "LR/b.npy"]


# -- configs ------------------------------------------------------------------------------------
def test_srresnet_config_selects_superres_data_and_mse() -> None:
    cfg = compose(["model=srresnet"])
    assert cfg.data._target_.endswith("SuperResolutionDataModule")
    assert cfg.loss.pixel.criterion == "mse" and "perceptual" not in cfg.loss
    assert (cfg.monitor, cfg.monitor_mode) == ("val/psnr", "max")
    assert cfg.model.generator.scale == cfg.data.scale
    # Every key fits the constructors.
    module = instantiate(
        cfg.model, loss=instantiate(cfg.loss), optimizer=instantiate(cfg.optimizer), scale=2
    )
    assert type(module) is SuperResolutionModule and module.generator.scale == 2

    cfg = compose(["model=srresnet", "loss=vgg"])
    assert cfg.loss.perceptual.layer == "conv5_4"
    assert cfg.model._target_.endswith(".SuperResolutionModule")


@pytest.mark.parametrize("loss", ["adversarial", "srgan"])
def test_gan_losses_select_the_adversarial_module(loss: str) -> None:
    cfg = compose(["model=srresnet", f"loss={loss}", "model.discriminator.channels=8"])
    assert "discriminator" not in cfg.loss and "discriminator_warmup_steps" not in cfg.loss
    model = OmegaConf.to_container(cfg.model)
    assert model["_target_"] == "lensexp.tasks.superres.AdversarialSRModule"
    assert model["discriminator"] == {
        "_target_": "lensexp.models.discriminator.Discriminator",
        "channels": 8, "n_stages": 4, "batch_norm": True, "pool_size": 4,
        "hidden": 1024,
    }  # fmt: skip
    assert model["discriminator_warmup_steps"] == 0 and model["gradient_clip_val"] is None
    assert model["generator"]["_target_"].endswith("SRResNet") and "ema_decay" in model
    # Every key fits the constructor.
    cfg.model.discriminator.update(n_stages=2, hidden=16)
    if loss == "srgan":
        cfg.loss.weights = "random"
        cfg.loss.perceptual.layer = "conv1_1"
    module = instantiate(
        cfg.model, loss=instantiate(cfg.loss), optimizer=instantiate(cfg.optimizer), scale=2
    )
    assert isinstance(module, AdversarialSRModule)
    assert isinstance(module.discriminator, Discriminator)


EXPERIMENTS = sorted(
    p.stem
    for p in (CONF / "experiment").glob("*.yaml")
    if "srresnet" in p.stem or "trail_" in p.stem
)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiments_compose(name: str) -> None:
    cfg = compose([f"experiment={name}"])
    OmegaConf.to_container(cfg, resolve=True)
    module = "AdversarialSRModule" if name == "trail_adversarial" else "SuperResolutionModule"
    assert cfg.model._target_ == f"lensexp.tasks.superres.{module}"
    assert cfg.data._target_.endswith("SuperResolutionDataModule")
    generator = instantiate(cfg.model.generator)
    assert isinstance(generator, SRResNet)
    if name == "trail_adversarial":
        assert isinstance(instantiate(cfg.model.discriminator), Discriminator)
        assert "adversarial" in cfg.loss and "discriminator" not in cfg.loss
