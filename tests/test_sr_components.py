"""Super-resolution building blocks: generator, discriminator, losses, metrics, loss configs."""

from __future__ import annotations

import functools
import math
from pathlib import Path
from urllib.error import URLError

import hydra.utils
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

import lensexp.models.weights as weights_module
from lensexp.errors import LensexpError
from lensexp.losses.adversarial import GANLoss
from lensexp.losses.perceptual import VGG19_LAYERS, PerceptualLoss, vgg19_features
from lensexp.losses.pixel import PixelLoss
from lensexp.losses.superres import SuperResolutionLoss
from lensexp.metrics.superres import SRMetrics, bicubic_upsample, per_image_metrics
from lensexp.models.discriminator import Discriminator
from lensexp.models.srresnet import (
    ACTIVATIONS,
    UPSAMPLERS,
    SRResNet,
    load_generator_weights,
    remap_reference_state_dict,
)
from tests.helpers import RefGenerator, randomise_prelus

CONF_LOSS = Path(__file__).resolve().parents[1] / "conf" / "loss"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --- generator -------------------------------------------------------------------------------


@pytest.mark.parametrize("upsampler", UPSAMPLERS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("global_residual", [False, True])
def test_generator_shapes(upsampler, activation, batch_norm, scale, global_residual):
    net = SRResNet(
        scale=scale,
        n_blocks=2,
        channels=4,
        batch_norm=batch_norm,
        activation=activation,
        upsampler=upsampler,
        global_residual=global_residual,
    )
    assert net(torch.rand(1, 1, 75, 75)).shape == (1, 1, 75 * scale, 75 * scale)
    assert net(torch.rand(1, 1, 20, 33)).shape == (1, 1, 20 * scale, 33 * scale)


def test_generator_default_size_and_names():
    net = SRResNet()
    assert net(torch.rand(1, 1, 75, 75)).shape == (1, 1, 150, 150)
    names = set(net.state_dict())
    assert {"head.conv.weight", "body.15.second.act.weight", "body_conv.conv.weight"} <= names
    assert {"upsample.0.conv.weight", "tail.weight"} <= names
    assert not any("actication" in n for n in names)


def test_global_residual_adds_bicubic():
    net = SRResNet(n_blocks=1, channels=4, global_residual=True)
    nn.init.zeros_(net.tail.weight)
    nn.init.zeros_(net.tail.bias)
    x = torch.rand(1, 1, 16, 16)
    expected = nn.functional.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)
    torch.testing.assert_close(net(x), expected)


@pytest.mark.parametrize("n_blocks,bare_conv1", [(1, False), (2, False), (1, True)])
def test_reference_state_dict_loads_and_reproduces(tmp_path, n_blocks, bare_conv1):
    ref = RefGenerator(n_blocks, bare_conv1=bare_conv1)
    randomise_prelus(ref)
    state = ref.state_dict()
    assert "first_conv.actication.weight" in state and "upsampling.activation.weight" in state
    path = tmp_path / "reference_generator.pth"
    torch.save(state, path)

    net = SRResNet(scale=2, n_blocks=n_blocks, channels=64, batch_norm=False, activation="prelu")
    assert load_generator_weights(net, str(path)) is True
    x = torch.rand(2, 1, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref(x), rtol=1e-5, atol=1e-6)
    assert set(remap_reference_state_dict(state)) <= set(net.state_dict())


def test_generator_weights_from_own_and_wrapped_checkpoints(tmp_path):
    source = SRResNet(n_blocks=1, channels=8)
    wrapped = {f"generator.{k}": v for k, v in source.state_dict().items()}
    wrapped |= {f"generator_ema.{k}": torch.zeros_like(v) for k, v in source.state_dict().items()}
    wrapped["loss.discriminator.head.1.weight"] = torch.zeros(3)
    torch.save({"state_dict": wrapped, "epoch": 3}, tmp_path / "last.ckpt")
    torch.save(source.state_dict(), tmp_path / "plain.pth")
    for name in ("last.ckpt", "plain.pth"):
        net = SRResNet(n_blocks=1, channels=8)
        assert load_generator_weights(net, tmp_path / name)
        for k, v in source.state_dict().items():
            torch.testing.assert_close(net.state_dict()[k], v)


def test_generator_weights_errors(tmp_path):
    torch.save(RefGenerator().state_dict(), tmp_path / "ref.pth")
    with pytest.raises(LensexpError, match=r"model\.pretrained=.*do not fit.*channels"):
        load_generator_weights(SRResNet(n_blocks=1, channels=32), tmp_path / "ref.pth")
    with pytest.raises(LensexpError, match="no ImageNet weights"):
        load_generator_weights(SRResNet(n_blocks=1, channels=8), "imagenet")
    with pytest.raises(LensexpError, match="no such file"):
        load_generator_weights(SRResNet(n_blocks=1, channels=8), tmp_path / "missing.pth")
    assert load_generator_weights(SRResNet(n_blocks=1, channels=8), "none") is False


@pytest.mark.parametrize(
    "kwargs,option",
    [
        ({"scale": 3}, "model.scale=3"),
        ({"activation": "gelu"}, "model.activation=gelu"),
        ({"upsampler": "bilinear"}, "model.upsampler=bilinear"),
        ({"n_blocks": -1}, "model.n_blocks=-1"),
        ({"global_residual": True, "out_channels": 3}, "model.global_residual"),
    ],
)
def test_generator_bad_options(kwargs, option):
    with pytest.raises(LensexpError, match=option.replace(".", r"\.")):
        SRResNet(**kwargs)


# --- discriminator ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [150, 64])
@pytest.mark.parametrize("batch_norm", [True, False])
def test_discriminator_any_size(size, batch_norm):
    disc = Discriminator(batch_norm=batch_norm)
    assert disc(torch.rand(2, 1, size, size)).shape == (2, 1)


def test_discriminator_bad_option():
    with pytest.raises(LensexpError, match=r"loss\.discriminator\.n_stages=0"):
        Discriminator(n_stages=0)


# --- losses ----------------------------------------------------------------------------------


def test_pixel_loss():
    sr, hr = torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 0.5)
    assert PixelLoss("mse", 2.0)(sr, hr).item() == pytest.approx(0.5)
    assert PixelLoss("l1", 0.1)(sr, hr).item() == pytest.approx(0.05)
    with pytest.raises(LensexpError, match=r"loss\.pixel\.criterion=huber"):
        PixelLoss("huber")


def test_gan_loss_known_values():
    x = torch.tensor([0.0, 2.0])
    w = 0.5
    softplus = lambda v: math.log1p(math.exp(v))  # noqa: E731
    cases = {
        # (real, discriminator), (fake, discriminator), generator
        "vanilla": (
            (softplus(0) + softplus(-2)) / 2,
            (softplus(0) + softplus(2)) / 2,
            w * (softplus(0) + softplus(-2)) / 2,
        ),
        "lsgan": (1.0, 2.0, w * 1.0),
        "hinge": (0.5, 2.0, -w * 1.0),
    }
    for gan_type, (real, fake, gen) in cases.items():
        loss = GANLoss(gan_type, weight=w)
        assert loss(x, True, is_discriminator=True).item() == pytest.approx(real, rel=1e-6)
        assert loss(x, False, is_discriminator=True).item() == pytest.approx(fake, rel=1e-6)
        assert loss(x, True, is_discriminator=False).item() == pytest.approx(gen, rel=1e-6)
    with pytest.raises(LensexpError, match=r"gan_type=wgan.*vanilla\|lsgan\|hinge"):
        GANLoss("wgan")


def _tiny_gan_loss(warmup: int = 0) -> SuperResolutionLoss:
    return SuperResolutionLoss(
        pixel=PixelLoss("l1", 1.0),
        adversarial=GANLoss("vanilla", 5e-3),
        discriminator=Discriminator(channels=8, n_stages=2, hidden=16),
        discriminator_warmup_steps=warmup,
    )


def test_gan_step_updates_both_networks():
    gen = SRResNet(n_blocks=1, channels=8)
    loss = _tiny_gan_loss()
    disc = loss.discriminator
    opt_g = torch.optim.Adam(gen.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-3)
    lr, hr = torch.rand(4, 1, 16, 16), torch.rand(4, 1, 32, 32)
    gen_before = [p.detach().clone() for p in gen.parameters()]
    disc_before = [p.detach().clone() for p in disc.parameters()]

    sr = gen(lr)
    total, terms = loss(sr, hr, step=0)
    assert set(terms) == {"pixel", "adversarial"}
    torch.testing.assert_close(total, terms["pixel"] + terms["adversarial"])
    opt_g.zero_grad()
    total.backward()
    assert all(p.grad is None for p in disc.parameters())
    assert all(p.requires_grad for p in disc.parameters())  # unfrozen again
    opt_g.step()
    assert any(not torch.equal(a, b) for a, b in zip(gen_before, gen.parameters(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(disc_before, disc.parameters(), strict=True))

    d_total, d_terms = loss.discriminator_loss(sr, hr)
    torch.testing.assert_close(d_total, d_terms["real"] + d_terms["fake"])
    opt_d.zero_grad()
    d_total.backward()
    gen_grads = [p.grad.clone() for p in gen.parameters()]
    opt_d.step()
    assert any(not torch.equal(a, b) for a, b in zip(disc_before, disc.parameters(), strict=True))
    # sr was detached: the discriminator step leaves the generator's gradients alone.
    assert all(torch.equal(g, p.grad) for g, p in zip(gen_grads, gen.parameters(), strict=True))


def test_discriminator_warmup():
    loss = _tiny_gan_loss(warmup=10)
    sr, hr = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    assert "adversarial" not in loss(sr, hr, step=9)[1]
    assert "adversarial" in loss(sr, hr, step=10)[1]
    assert loss.uses_discriminator and not loss.adversarial_active(0)


def test_superres_loss_bad_configs():
    with pytest.raises(LensexpError, match="no term configured"):
        SuperResolutionLoss()
    with pytest.raises(LensexpError, match=r"loss\.discriminator is missing"):
        SuperResolutionLoss(pixel=PixelLoss(), adversarial=GANLoss())
    with pytest.raises(LensexpError, match=r"loss\.adversarial is missing"):
        SuperResolutionLoss(pixel=PixelLoss(), discriminator=Discriminator(channels=4))
    assert SuperResolutionLoss.task == "superres"
    assert SuperResolutionLoss(pixel=PixelLoss()).pretrained_loaded is None


def _save_features(path: Path, end: int, prefix: str = "features.", extra=None) -> dict:
    state = {f"{prefix}{k}": v for k, v in vgg19_features(end).state_dict().items()}
    torch.save({**state, **(extra or {})}, path)
    return state


def test_perceptual_loss_local_weights(tmp_path):
    end = VGG19_LAYERS["conv1_2"] + 1
    saved = _save_features(tmp_path / "vgg_shallow.pth", end)
    loss = PerceptualLoss(layer="conv1_2", weights=str(tmp_path / "vgg_shallow.pth"))
    assert loss.pretrained_loaded
    torch.testing.assert_close(loss.vgg[2].weight, saved["features.2.weight"])
    assert len(loss.vgg) == end  # before activation: ends on the conv

    # A "full" file (deeper layers and classifier keys) and a file saved from vgg.features.
    _save_features(tmp_path / "vgg_full.pth", 10, extra={"classifier.0.weight": torch.zeros(2, 2)})
    _save_features(tmp_path / "vgg_features.pth", end, prefix="")
    for name in ("vgg_full.pth", "vgg_features.pth"):
        assert PerceptualLoss(layer="conv1_2", weights=str(tmp_path / name)).pretrained_loaded

    # The VGG is frozen and outside parameters()/state_dict(), yet gradients reach the input.
    assert list(loss.parameters()) == [] and list(loss.state_dict()) == []
    assert all(not p.requires_grad for p in loss.vgg.parameters())
    sr = torch.rand(2, 1, 32, 32, requires_grad=True)
    value = loss(sr, torch.rand(2, 1, 32, 32))
    value.backward()
    assert value.item() > 0 and sr.grad.abs().sum() > 0
    assert loss(sr.detach(), sr.detach()).item() == 0.0
    loss.train()
    assert not loss.vgg.training
    loss.to(torch.float64)
    assert loss.vgg[0].weight.dtype == torch.float64 and loss.mean.dtype == torch.float64


def test_perceptual_loss_weight_errors(tmp_path):
    _save_features(tmp_path / "conv1_1.pth", 1)
    with pytest.raises(LensexpError, match=r"loss\.weights=.*do not fit"):
        PerceptualLoss(layer="conv1_2", weights=str(tmp_path / "conv1_1.pth"))
    with pytest.raises(LensexpError, match=r"loss\.weights=auto"):
        PerceptualLoss(weights="auto")
    with pytest.raises(LensexpError, match=r"loss\.perceptual\.layer=conv6_1.*conv5_4"):
        PerceptualLoss(layer="conv6_1")
    with pytest.raises(LensexpError, match=r"loss\.perceptual\.criterion=huber"):
        PerceptualLoss(layer="conv1_1", weights="random", criterion="huber")


def test_perceptual_imagenet_offline_names_remedies(monkeypatch):
    def offline(weights):
        raise URLError("no network")

    monkeypatch.setattr(weights_module, "fetch_torchvision_weights", offline)
    with pytest.raises(LensexpError) as err:
        PerceptualLoss(layer="conv1_2", weights="imagenet")
    message = str(err.value)
    assert "loss.weights=imagenet" in message
    assert "vgg19-dcbb9e9d.pth" in message and "TORCH_HOME" in message
    assert "loss.weights=/path/to/weights.pth" in message


def test_checkpoint_round_trip_with_perceptual_and_discriminator():
    def build():
        module = nn.Module()
        module.generator = SRResNet(n_blocks=1, channels=8)
        module.loss = SuperResolutionLoss(
            pixel=PixelLoss("l1", 1e-2),
            perceptual=PerceptualLoss(layer="conv1_2", weights="random"),
            adversarial=GANLoss(),
            discriminator=Discriminator(channels=8, n_stages=2, hidden=16),
        )
        return module

    a, b = build(), build()
    state = a.state_dict()
    assert not any(".vgg." in k for k in state)
    assert any(k.startswith("loss.discriminator.") for k in state)
    b.load_state_dict(state)  # strict, as Lightning restores
    for k, v in state.items():
        torch.testing.assert_close(b.state_dict()[k], v)


# --- metrics ---------------------------------------------------------------------------------


def test_metrics_known_values():
    hr = torch.rand(3, 1, 40, 40) * 0.9
    same = per_image_metrics(hr, hr)
    assert torch.all(same["mse"] == 0)
    torch.testing.assert_close(same["psnr"], torch.full((3,), 100.0, dtype=torch.float64))
    torch.testing.assert_close(same["ssim"], torch.ones(3, dtype=torch.float64), atol=1e-7, rtol=0)

    hr64 = hr.double()
    offset = per_image_metrics(hr64 + 0.01, hr64)
    torch.testing.assert_close(offset["mse"], torch.full_like(hr64[:, 0, 0, 0], 1e-4))
    torch.testing.assert_close(offset["psnr"], torch.full_like(hr64[:, 0, 0, 0], 40.0))

    # Constant images a, b: SSIM reduces to the luminance term (2ab + C1) / (a^2 + b^2 + C1).
    a, b, c1 = 0.5, 0.4, 1e-4
    const_a, const_b = (torch.full((1, 1, 32, 32), v, dtype=torch.float64) for v in (a, b))
    ssim = per_image_metrics(const_a, const_b)["ssim"]
    assert ssim.item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-9)

    # SR is clamped to [0, 1] before scoring.
    assert per_image_metrics(torch.full((1, 1, 16, 16), 1.3), torch.ones(1, 1, 16, 16))["mse"] == 0


def test_srmetrics_accumulates_per_image_means():
    hr = torch.rand(5, 1, 24, 24) * 0.9
    metric = SRMetrics()
    metric.update(hr[:3] + 0.01, hr[:3])
    metric.update(hr[3:], hr[3:])
    out = metric.compute()
    assert set(out) == {"mse", "psnr", "ssim"}
    assert out["psnr"].item() == pytest.approx((3 * 40 + 2 * 100) / 5, abs=1e-3)
    assert out["mse"].item() == pytest.approx(3 * 1e-4 / 5, rel=1e-3)
    assert metric.count.item() == 5
    metric.reset()
    assert metric.count.item() == 0


def test_bicubic_upsample():
    up = bicubic_upsample(torch.full((2, 1, 75, 75), 0.3), 2)
    assert up.shape == (2, 1, 150, 150)
    torch.testing.assert_close(up, torch.full_like(up, 0.3))
    spiky = torch.zeros(1, 1, 8, 8)
    spiky[..., 4, 4] = 1.0  # bicubic overshoots around a spike; the baseline is clamped
    up = bicubic_upsample(spiky, 4)
    assert up.min() >= 0 and up.max() <= 1


# --- loss configs ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mse", "l1", "vgg", "adversarial", "srgan"])
def test_loss_configs_instantiate(name):
    cfg = OmegaConf.load(CONF_LOSS / f"{name}.yaml")
    if "perceptual" in cfg:
        assert cfg.perceptual.layer == "conv5_4" and cfg.perceptual.before_activation
        assert cfg.weights == "imagenet"
        # Offline and fast: random weights on a shallow layer.
        cfg.weights = "random"
        cfg.perceptual.layer = "conv1_2"
    if "adversarial" in cfg:
        assert cfg.adversarial.weight == 5e-3
    loss = hydra.utils.instantiate(cfg)
    assert isinstance(loss, SuperResolutionLoss) and loss.task == "superres"
    assert loss.uses_discriminator == (name in ("adversarial", "srgan"))
    sr, hr = torch.rand(2, 1, 32, 32, requires_grad=True), torch.rand(2, 1, 32, 32)
    total, terms = loss(sr, hr)
    expected = {"pixel"} | ({"perceptual"} if "perceptual" in cfg else set())
    expected |= {"adversarial"} if loss.uses_discriminator else set()
    assert set(terms) == expected
    total.backward()
    assert sr.grad is not None


def test_loss_weights_build_the_perceptual_term():
    loss = SuperResolutionLoss(
        pixel=PixelLoss("l1", 1e-2),
        perceptual=functools.partial(PerceptualLoss, layer="conv1_2"),
        weights="random",
    )
    assert loss.perceptual.weights == "random" and loss.pretrained_loaded is False
    with pytest.raises(LensexpError, match=r"loss\.weights=random: only used to build"):
        SuperResolutionLoss(pixel=PixelLoss("mse", 1.0), weights="random")
