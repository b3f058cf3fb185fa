"""SuperResolutionModule (training with each loss kind, validation metrics, EMA, schedulers under
manual optimisation), the super-resolution report, and the SR configs.

Images are 16 -> 32 px and generators tiny, so every Lightning run takes about a second.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lensexp.errors import LensexpError
from lensexp.losses.perceptual import VGG19_LAYERS, vgg19_features
from lensexp.metrics.superres import SRMetrics, bicubic_upsample
from lensexp.models.srresnet import SRResNet
from lensexp.reporting.superres import output_names, write_superres_report
from lensexp.tasks.superres import SuperResolutionModule
from tests.helpers import CONF, RefGenerator, compose_cfg, make_superres_folder, randomise_prelus

VAL_KEYS = [
    f"val/{m}{suffix}"
    for m in ("mse", "psnr", "ssim")
    for suffix in ("", "_bicubic", "_gain")
] + ["val/loss", "val/psnr_best"]  # fmt: skip


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# -- builders ---------------------------------------------------------------------------------
def tiny_generator(**kwargs) -> SRResNet:
    options = dict(scale=2, n_blocks=1, channels=8, batch_norm=False) | kwargs
    return SRResNet(**options)


def loss_from_conf(name: str, tmp_path: Path | None = None, warmup: int = 0) -> nn.Module:
    """conf/loss/<name>.yaml, with a small discriminator and a local random VGG19 file."""
    cfg = OmegaConf.load(CONF / "loss" / f"{name}.yaml")
    if "perceptual" in cfg:
        cfg.perceptual.layer = "conv2_2"  # a 1 MB weights file instead of conv5_4's 80 MB
        path = tmp_path / "vgg19.pth"
        if not path.exists():
            end = VGG19_LAYERS[cfg.perceptual.layer] + 1
            features = vgg19_features(end).state_dict()
            torch.save({f"features.{k}": v for k, v in features.items()}, path)
        cfg.weights = str(path)
    if "discriminator" in cfg:
        cfg.discriminator.update(channels=8, n_stages=2, hidden=16)
        cfg.discriminator_warmup_steps = warmup
    return instantiate(cfg)


def make_module(loss: nn.Module | str = "mse", generator: nn.Module | None = None, **kwargs):
    options = dict(optimizer=partial(torch.optim.Adam, lr=1e-3), scale=2, scheduler=None)
    return SuperResolutionModule(
        generator=generator if generator is not None else tiny_generator(),
        loss=loss_from_conf(loss) if isinstance(loss, str) else loss,
        **(options | kwargs),
    )


def pairs(n: int = 8, lr_size: int = 16) -> TensorDataset:
    """HR noise smoothed a little (so SSIM is meaningful) and its 2x2 block mean as LR."""
    hr = F.avg_pool2d(torch.rand(n, 1, 2 * lr_size + 2, 2 * lr_size + 2), 3, stride=1)
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
    t = trainer(**kwargs)
    t.fit(module, train_dataloaders=loader(), val_dataloaders=loader())
    return t


def snapshot(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def changed(before: list[torch.Tensor], module: nn.Module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


# -- training ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mse", "l1", "vgg", "adversarial"])
def test_training_with_each_loss(tmp_path: Path, name: str) -> None:
    module = make_module(loss_from_conf(name, tmp_path))
    assert module.automatic_optimization == (name != "adversarial")
    gen_before = snapshot(module.generator)
    disc = module.loss.discriminator
    disc_before = snapshot(disc) if disc is not None else None

    t = fit(module)

    metrics = t.callback_metrics
    assert changed(gen_before, module.generator)
    assert module.generator_steps == 2
    assert "train/loss" in metrics and "train/loss_pixel" in metrics
    assert set(VAL_KEYS) <= set(metrics)
    if name == "vgg":
        assert "train/loss_perceptual" in metrics and module.hparams.loss["pretrained_loaded"]
    if name == "adversarial":
        assert changed(disc_before, disc)
        assert {"train/d_loss", "train/loss_adversarial", "train/d_real_logit"} <= set(metrics)
        # Two optimizers, over disjoint parameter sets.
        opt_g, opt_d = t.optimizers
        gen_ids = {id(p) for g in opt_g.param_groups for p in g["params"]}
        disc_ids = {id(p) for g in opt_d.param_groups for p in g["params"]}
        assert gen_ids == {id(p) for p in module.generator.parameters()}
        assert disc_ids == {id(p) for p in disc.parameters()}
    else:
        (opt,) = t.optimizers
        assert {id(p) for g in opt.param_groups for p in g["params"]} == {
            id(p) for p in module.generator.parameters()
        }


def test_discriminator_warmup_leaves_out_the_gan_term(tmp_path: Path) -> None:
    module = make_module(loss_from_conf("adversarial", warmup=100))
    disc_before = snapshot(module.loss.discriminator)
    metrics = fit(module).callback_metrics
    assert "train/loss_adversarial" not in metrics and "train/loss_pixel" in metrics
    # The discriminator trains during the generator's warm-up.
    assert "train/d_loss" in metrics and changed(disc_before, module.loss.discriminator)
    torch.testing.assert_close(metrics["train/loss"], metrics["train/loss_pixel"])


def test_hparams_record_choices_not_modules() -> None:
    module = make_module()
    hp = module.hparams
    assert not {"optimizer", "scheduler"} & set(hp)
    assert not any(isinstance(v, nn.Module) or callable(v) for v in hp.values())
    assert hp["scale"] == 2 and hp["pretrained"] is None and hp["ema_decay"] is None
    assert hp["pretrained_loaded"] is False and hp["generator"] == "SRResNet"
    assert hp["loss"] == {"task": "superres", "pixel_criterion": "mse", "pixel_weight": 1.0}


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


def test_tensorboard_image_grid(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="", version="")
    module = make_module(n_samples=6)  # more than one val batch (4): collected across batches
    fit(module, logger=logger, limit_val_batches=2)
    events = EventAccumulator(str(tmp_path)).Reload()
    (image,) = events.Images("val/samples")
    # 5 rows (LR | bicubic | SR | HR | error) x 6 columns of 32 px images, 2 px padding.
    assert (image.height, image.width) == (5 * 34 + 2, 6 * 34 + 2)


# -- EMA --------------------------------------------------------------------------------------
def test_ema_validates_with_averaged_weights_and_is_checkpointed(tmp_path: Path) -> None:
    module = make_module(ema_decay=0.5, optimizer=partial(torch.optim.Adam, lr=1e-2))
    assert module.inference_generator is module.generator_ema
    t = fit(module)
    raw, ema = module.generator, module.generator_ema
    assert changed(snapshot(raw), ema)
    assert not any(p.requires_grad for p in ema.parameters())

    val = loader()
    lr, hr = next(iter(val))
    with torch.no_grad():
        torch.testing.assert_close(module(lr), ema(lr))
        assert not torch.allclose(ema(lr), raw(lr))
    (metrics,) = t.validate(module, val, verbose=False)
    expected = SRMetrics()
    with torch.no_grad():
        expected.update(ema(lr), hr)
    assert metrics["val/psnr"] == pytest.approx(float(expected.compute()["psnr"]), rel=1e-5)

    path = tmp_path / "ema.ckpt"
    t.save_checkpoint(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert any(k.startswith("generator_ema.") for k in checkpoint["state_dict"])
    assert checkpoint["generator_steps"] == 2 and "psnr_best.max_value" in checkpoint["state_dict"]
    # As evaluate.py does: rebuild from config, then load the state dict.
    fresh = make_module(ema_decay=0.5)
    fresh.load_state_dict(checkpoint["state_dict"])
    for a, b in zip(fresh.generator_ema.parameters(), ema.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    # The raw generator's weights are what `model.pretrained=<ckpt>` picks up.
    warm = make_module(pretrained=str(path))
    assert warm.hparams["pretrained_loaded"] is True
    for a, b in zip(warm.generator.parameters(), raw.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_bad_options() -> None:
    with pytest.raises(LensexpError, match=r"data\.scale=2 .*model\.generator\.scale=4"):
        make_module(generator=tiny_generator(scale=4))
    with pytest.raises(LensexpError, match=r"model\.ema_decay=1\.5"):
        make_module(ema_decay=1.5)
    with pytest.raises(LensexpError, match="not a super-resolution loss"):
        make_module(loss=nn.CrossEntropyLoss())


def test_pretrained_reference_generator_file(tmp_path: Path) -> None:

    reference = RefGenerator(n_blocks=1, c=8)
    randomise_prelus(reference)
    path = tmp_path / "reference_generator.pth"
    torch.save(reference.state_dict(), path)
    generator = tiny_generator(activation="prelu")
    module = make_module(generator=generator, pretrained=str(path), ema_decay=0.9)
    assert module.hparams["pretrained_loaded"] is True
    lr = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(module.generator(lr), reference(lr), rtol=1e-5, atol=1e-6)
        # The EMA starts from the loaded weights.
        torch.testing.assert_close(module(lr), reference(lr), rtol=1e-5, atol=1e-6)
    assert make_module(pretrained="none").hparams["pretrained_loaded"] is False
    with pytest.raises(LensexpError, match=r"model\.pretrained="):
        make_module(generator=tiny_generator(channels=4), pretrained=str(path))


# -- schedulers, clipping and accumulation under manual optimisation ---------------------------
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
    module = make_module(loss_from_conf("adversarial"), scheduler=spec)
    epochs = 1 if interval == "step" else 2
    t = fit(module, max_epochs=epochs, limit_train_batches=1 if epochs == 2 else 2)
    assert _lrs(t) == pytest.approx([expected, expected])


def test_gan_gradient_clipping_and_accumulation() -> None:
    clip = 1e-6
    module = make_module(loss_from_conf("adversarial"), optimizer=partial(torch.optim.SGD, lr=1.0))
    before = snapshot(module.generator)
    fit(module, gradient_clip_val=clip, limit_train_batches=1)
    after = module.generator.parameters()
    step = torch.cat([(a - b).flatten() for a, b in zip(before, after, strict=True)])
    assert 0 < step.norm() <= clip * 1.001

    with pytest.raises(LensexpError, match=r"trainer\.accumulate_grad_batches=2"):
        fit(make_module(loss_from_conf("adversarial")), accumulate_grad_batches=2)
    # Validation and prediction don't care.
    trainer(accumulate_grad_batches=2).validate(module, loader(), verbose=False)


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
    assert outputs[0]["sr_samples"].shape == (3, 1, 32, 32) and "sr_samples" not in outputs[1]
    assert "sr" not in outputs[0]  # SR images of every item only when asked for

    module.keep_sr_images = True
    outputs = t.predict(module, datamodule=dm)
    files = dm.files["val"]
    report = write_superres_report(tmp_path / "report", outputs, files, save_outputs=True)

    assert set(report) == {"mse", "psnr", "ssim", "n", "bicubic"}
    assert set(report["bicubic"]) == {"mse", "psnr", "ssim"} and report["n"] == 5
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

    with pytest.raises(ValueError, match="keep_sr_images"):
        module.keep_sr_images = False
        write_superres_report(
            tmp_path / "again", t.predict(module, datamodule=dm), files, save_outputs=True
        )


def test_report_output_names_when_names_repeat() -> None:
    files = [Path("/d/LR/a.npy"), Path("/d/val/LR/a.npy"), Path("/d/LR/b.npy")]
    names = output_names(files)
    assert [n.as_posix() for n in names] == ["LR/a.npy", "val/LR/a.npy", "LR/b.npy"]


# -- configs ------------------------------------------------------------------------------------
def compose(overrides: list[str]) -> DictConfig:
    return compose_cfg(Path("outputs/test"), overrides)


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
    assert isinstance(module, SuperResolutionModule) and module.generator.scale == 2

    cfg = compose(["model=srresnet", "loss=vgg"])
    assert cfg.loss.perceptual.layer == "conv5_4"


EXPERIMENTS = sorted(
    p.stem
    for p in (CONF / "experiment").glob("*.yaml")
    if "srresnet" in p.stem or "trail_" in p.stem
)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiments_compose(name: str) -> None:
    cfg = compose([f"experiment={name}"])
    OmegaConf.to_container(cfg, resolve=True)
    assert cfg.model._target_.endswith("SuperResolutionModule")
    assert cfg.data._target_.endswith("SuperResolutionDataModule")
    assert (CONF / "experiment" / f"{name}.yaml").read_text().splitlines()[1].startswith("# ")
    generator = instantiate(cfg.model.generator)
    assert isinstance(generator, SRResNet)
    if name == "reference_srresnet":
        g = cfg.model.generator
        assert (g.n_blocks, g.channels, g.batch_norm, g.activation, g.upsampler) == (
            1, 64, False, "prelu", "pixelshuffle",
        )  # fmt: skip
        assert cfg.loss.pixel.criterion == "mse" and cfg.optimizer.lr == 1e-4
        assert cfg.data.batch_size == 16 and cfg.scheduler.monitor == "val/loss"
        assert (cfg.scheduler.scheduler.factor, cfg.scheduler.scheduler.patience) == (0.1, 1)
    if name == "trail_adversarial":
        assert "discriminator" in cfg.loss
