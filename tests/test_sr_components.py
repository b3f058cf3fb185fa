"""Super-resolution building blocks: generator, discriminator, losses, metrics, loss configs."""

from __future__ import annotations

import functools
import math
from pathlib import Path
from urllib.error import URLError

import hydra.utils
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import lensexp.models.weights as weights_module
from lensexp.errors import LensexpError
from lensexp.losses.adversarial import GANLoss
from lensexp.losses.perceptual import PerceptualLoss, vgg19_layers
from lensexp.losses.pixel import PixelLoss
from lensexp.losses.superres import SuperResolutionLoss
from lensexp.metrics.superres import (
    SRMetrics,
    arc_mask,
    bicubic_upsample,
    flux_ratio,
    per_image_metrics,
)
from lensexp.models.discriminator import Discriminator
from lensexp.models.srresnet import (
    ACTIVATIONS,
    UPSAMPLERS,
    SRResNet,
    load_generator_weights,
    remap_reference_state_dict,
)
from tests.helpers import compose_cfg, reference_sr_forward, reference_sr_state_dict


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


@pytest.mark.parametrize("n_blocks", [1, 2])
def test_reference_state_dict_loads_and_reproduces(tmp_path, n_blocks):
    state = reference_sr_state_dict(n_blocks)
    path = tmp_path / "superres.pth"
    torch.save(state, path)

    net = SRResNet(scale=2, n_blocks=n_blocks, channels=64, batch_norm=False, activation="prelu")
    assert load_generator_weights(net, str(path)) is True
    # Every parameter of the network comes from the file, and every key of the file is used.
    assert set(remap_reference_state_dict(state)) == set(net.state_dict())
    x = torch.rand(2, 1, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference_sr_forward(state, x), rtol=1e-5, atol=1e-6)


def test_srgan_layout():
    net = SRResNet(n_blocks=2, channels=8, layout="srgan", batch_norm=True)
    names = set(net.state_dict())
    assert "body.0.first.act.weight" in names and "body.0.second.bn.weight" in names
    assert not any(n.startswith(("body.0.second.act", "body_conv.act")) for n in names)
    assert net.tail.kernel_size == (9, 9)
    assert net(torch.rand(1, 1, 12, 12)).shape == (1, 1, 24, 24)
    with pytest.raises(LensexpError, match=r"model\.generator\.layout=paper: not a valid"):
        SRResNet(layout="paper")


def test_prelu_has_one_slope_per_channel():
    net = SRResNet(n_blocks=1, channels=8, activation="prelu")
    slopes = {k: v.shape for k, v in net.state_dict().items() if k.endswith("act.weight")}
    assert slopes and set(slopes.values()) == {torch.Size([8])}


def test_generator_weights_from_own_and_wrapped_checkpoints(tmp_path):
    source = SRResNet(n_blocks=1, channels=8)
    wrapped = {f"generator.{k}": v for k, v in source.state_dict().items()}
    wrapped |= {
        f"generator_ema.module.{k}": torch.zeros_like(v) for k, v in source.state_dict().items()
    }
    wrapped["generator_ema.n_averaged"] = torch.tensor(3)
    wrapped["discriminator.head.1.weight"] = torch.zeros(3)
    torch.save({"state_dict": wrapped, "epoch": 3}, tmp_path / "last.ckpt")
    torch.save(source.state_dict(), tmp_path / "plain.pth")
    for name in ("last.ckpt", "plain.pth"):
        net = SRResNet(n_blocks=1, channels=8)
        assert load_generator_weights(net, tmp_path / name)
        for k, v in source.state_dict().items():
            torch.testing.assert_close(net.state_dict()[k], v)


def test_generator_weights_errors(tmp_path):
    torch.save(reference_sr_state_dict(), tmp_path / "ref.pth")
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
        ({"scale": 3}, "model.generator.scale=3"),
        ({"activation": "gelu"}, "model.generator.activation=gelu"),
        ({"upsampler": "bilinear"}, "model.generator.upsampler=bilinear"),
        ({"n_blocks": -1}, "model.generator.n_blocks=-1"),
        ({"global_residual": True, "out_channels": 3}, "model.generator.global_residual"),
    ],
)
def test_generator_bad_options(kwargs, option):
    with pytest.raises(LensexpError, match="^" + option.replace(".", r"\.")):
        SRResNet(**kwargs)


# --- discriminator ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [150, 64])
@pytest.mark.parametrize("batch_norm", [True, False])
def test_discriminator_any_size(size, batch_norm):
    disc = Discriminator(batch_norm=batch_norm)
    assert disc(torch.rand(2, 1, size, size)).shape == (2, 1)


def test_discriminator_bad_option():
    # (The option's prefix is the discriminator's config path.)
    with pytest.raises(LensexpError, match=r"discriminator\.n_stages=0"):
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


def test_gan_discriminator_loss():
    gan = GANLoss("hinge", weight=0.5)
    real, fake = torch.tensor([0.5, 2.0]), torch.tensor([-2.0, 1.0])
    total, terms = gan.discriminator_loss(real, fake)
    assert terms["real"].item() == pytest.approx(0.25)  # relu(1 - x): 0.5, 0
    assert terms["fake"].item() == pytest.approx(1.0)  # relu(1 + x): 0, 2
    assert total.item() == pytest.approx(1.25)  # unweighted, as in BasicSR
    assert (terms["real_logit"].item(), terms["fake_logit"].item()) == (1.25, -0.5)


def test_superres_loss_is_a_function_of_its_inputs():
    loss = SuperResolutionLoss(pixel=PixelLoss("l1", 1.0), adversarial=GANLoss("vanilla", 5e-3))
    assert list(loss.parameters()) == [] and list(loss.state_dict()) == []
    sr, hr = torch.rand(4, 1, 32, 32), torch.rand(4, 1, 32, 32)
    logits = torch.randn(4, 1, requires_grad=True)

    # The adversarial term only when the discriminator's logits of sr are given.
    total, terms = loss(sr, hr)
    assert set(terms) == {"pixel"}
    torch.testing.assert_close(total, F.l1_loss(sr, hr))
    total, terms = loss(sr, hr, fake_logits=logits)
    assert set(terms) == {"pixel", "adversarial"}
    expected = 5e-3 * F.binary_cross_entropy_with_logits(logits, torch.ones(4, 1))
    torch.testing.assert_close(terms["adversarial"], expected)
    torch.testing.assert_close(total, terms["pixel"] + terms["adversarial"])
    total.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0

    real = torch.randn(4, 1)
    d_total, d_terms = loss.discriminator_loss(real, logits.detach())
    torch.testing.assert_close(d_total, d_terms["real"] + d_terms["fake"])
    torch.testing.assert_close(d_terms["real_logit"], real.mean())
    # Logits passed positionally would be a mistake (the old third argument was a step).
    with pytest.raises(TypeError):
        loss(sr, hr, logits)


def test_superres_loss_bad_configs():
    with pytest.raises(LensexpError, match="no term configured"):
        SuperResolutionLoss()
    with pytest.raises(TypeError, match="discriminator"):
        SuperResolutionLoss(pixel=PixelLoss(), discriminator=Discriminator(channels=4))
    with pytest.raises(ValueError, match="no loss.adversarial"):
        SuperResolutionLoss(pixel=PixelLoss())(
            torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), fake_logits=torch.zeros(1, 1)
        )
    with pytest.raises(ValueError, match="no fake_logits"):
        SuperResolutionLoss(adversarial=GANLoss())(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))
    assert SuperResolutionLoss.task == "superres"
    assert SuperResolutionLoss(pixel=PixelLoss()).pretrained_loaded is None


# --- perceptual loss (VGG19) -----------------------------------------------------------------


def _features_state(end: int, prefix: str = "features.") -> dict[str, torch.Tensor]:
    """Random tensors shaped like torchvision's `vgg19().features[:end]` (built on meta)."""
    with torch.device("meta"):
        features = torchvision.models.vgg19().features[:end]
    return {f"{prefix}{k}": 0.05 * torch.randn(v.shape) for k, v in features.state_dict().items()}


def _save_features(path: Path, end: int, prefix: str = "features.", extra=None) -> dict:
    state = _features_state(end, prefix)
    torch.save({**state, **(extra or {})}, path)
    return state


def test_vgg19_layer_names_follow_torchvision():
    layers = vgg19_layers()
    assert len(layers) == 16 and list(layers)[:3] == ["conv1_1", "conv1_2", "conv2_1"]
    assert (layers["conv1_1"], layers["conv2_1"], layers["conv5_4"]) == (0, 5, 34)
    with torch.device("meta"):
        features = torchvision.models.vgg19().features
    assert all(isinstance(features[i], nn.Conv2d) for i in layers.values())
    assert all(isinstance(features[i + 1], nn.ReLU) for i in layers.values())
    # Each block's first conv follows a max pool (or is the first layer).
    firsts = [i for name, i in layers.items() if name.endswith("_1")]
    assert firsts[0] == 0 and all(isinstance(features[i - 1], nn.MaxPool2d) for i in firsts[1:])


def test_perceptual_loss_local_weights(tmp_path):
    end = vgg19_layers()["conv1_2"] + 1
    saved = _save_features(tmp_path / "vgg_shallow.pth", end)
    loss = PerceptualLoss(layer="conv1_2", weights=str(tmp_path / "vgg_shallow.pth"))
    assert loss.pretrained_loaded
    torch.testing.assert_close(loss.vgg[2].weight, saved["features.2.weight"])
    assert len(loss.vgg) == end  # before activation: ends on the conv
    assert isinstance(loss.vgg[-1], nn.Conv2d)
    after = PerceptualLoss(layer="conv1_2", weights="random", before_activation=False)
    assert isinstance(after.vgg[-1], nn.ReLU) and len(after.vgg) == end + 1

    # A "full" file (deeper layers and classifier keys) and a file saved from vgg.features.
    _save_features(tmp_path / "vgg_full.pth", 10, extra={"classifier.0.weight": torch.zeros(2, 2)})
    _save_features(tmp_path / "vgg_features.pth", end, prefix="")
    for name in ("vgg_full.pth", "vgg_features.pth"):
        assert PerceptualLoss(layer="conv1_2", weights=str(tmp_path / name)).pretrained_loaded

    sr = torch.rand(2, 1, 32, 32, requires_grad=True)
    value = loss(sr, torch.rand(2, 1, 32, 32))
    value.backward()
    assert value.item() > 0 and sr.grad.abs().sum() > 0  # gradients reach the input
    assert loss(sr.detach(), sr.detach()).item() == 0.0


def test_perceptual_vgg_is_a_frozen_submodule_outside_state_dict(tmp_path):
    _save_features(tmp_path / "vgg.pth", vgg19_layers()["conv1_2"] + 1)
    loss = PerceptualLoss(layer="conv1_2", weights=str(tmp_path / "vgg.pth"))
    vgg = list(loss.vgg.parameters())
    # A registered submodule: in parameters(), yet frozen, so an optimizer of the trainable
    # parameters never sees it, and it is not saved.
    assert dict(loss.named_children()) == {"vgg": loss.vgg}
    assert [id(p) for p in loss.parameters()] == [id(p) for p in vgg]
    assert not any(p.requires_grad for p in loss.parameters())
    assert list(loss.state_dict()) == []
    # Eval mode whatever the module's mode; dtype and device follow the module.
    loss.train()
    assert loss.training and not loss.vgg.training
    assert not any(m.training for m in loss.vgg.modules())
    loss.to(torch.float64)
    assert loss.vgg[0].weight.dtype == torch.float64 and loss.mean.dtype == torch.float64
    assert loss(torch.rand(1, 1, 8, 8, dtype=torch.float64), torch.rand(1, 1, 8, 8)).isfinite()
    loss.eval()
    assert not loss.vgg.training

    # Inside a bigger module: out of its state dict too, and a strict load keeps the VGG.
    def build(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        module = nn.Module()
        module.head = nn.Linear(2, 2)
        module.loss = PerceptualLoss(layer="conv1_2", weights="random")
        return module

    a, b = build(0), build(1)
    vgg_b = [p.detach().clone() for p in b.loss.vgg.parameters()]
    state = a.state_dict()
    assert set(state) == {"head.weight", "head.bias"}
    assert not any(k.startswith("loss.vgg") for k in getattr(state, "_metadata", {}))
    assert b.load_state_dict(state) is not None  # strict: nothing missing, nothing unexpected
    torch.testing.assert_close(b.head.weight, a.head.weight)
    assert all(torch.equal(x, y) for x, y in zip(vgg_b, b.loss.vgg.parameters(), strict=True))


def test_perceptual_random_weights_are_torchvisions_initialisation():
    loss = PerceptualLoss(layer="conv1_1", weights="random")
    assert loss.pretrained_loaded is False
    conv = loss.vgg[0]
    # torchvision's VGG init: kaiming normal (fan out, ReLU) and zero biases.
    assert torch.count_nonzero(conv.bias) == 0
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.15)


def test_perceptual_imagenet_goes_through_the_torchvision_loader(monkeypatch):
    requested = []

    def fetch(weights):
        requested.append(weights)
        with torch.device("meta"):
            shapes = torchvision.models.vgg19().state_dict()
        # Features with distinct values; the big classifier as cheap zeros.
        return {
            k: torch.zeros(v.shape) if k.startswith("classifier.") else torch.full(v.shape, i + 1.0)
            for i, (k, v) in enumerate(shapes.items())
        }

    monkeypatch.setattr(weights_module, "fetch_torchvision_weights", fetch)
    loss = PerceptualLoss(layer="conv1_2", weights="imagenet")
    assert requested == [torchvision.models.VGG19_Weights.IMAGENET1K_V1]
    assert loss.pretrained_loaded is True and len(loss.vgg) == 3
    values = [float(t.unique()) for t in loss.vgg.state_dict().values()]
    assert values == [1.0, 2.0, 3.0, 4.0]  # features.0.weight/bias, features.2.weight/bias


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
    assert "loss.weights=none" not in message  # a random VGG is no perceptual loss


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


def test_arc_psnr_is_the_mse_over_the_mask_only():
    # An 8x8 image (SSIM's window needs 6 pixels): the arc is 4 pixels at 0.5 (above 0.1),
    # the sky 0.05 (below).
    hr = torch.full((1, 1, 8, 8), 0.05, dtype=torch.float64)
    hr[0, 0, 1, 1:3] = 0.5
    hr[0, 0, 2, 1:3] = 0.5
    sr = hr.clone()
    sr[0, 0, 1, 1] += 0.1  # two arc pixels off by 0.1
    sr[0, 0, 2, 2] -= 0.1
    sr[0, 0, 0, 0] += 0.2  # and a sky pixel, which the arc metric ignores
    assert arc_mask(hr, 0.1).sum() == 4
    values = per_image_metrics(sr, hr, arc_threshold=0.1)
    # Arc MSE = (0.01 + 0.01 + 0 + 0) / 4 = 0.005; PSNR = 10 log10(1 / 0.005) = 23.0103 dB.
    assert values["psnr_arc"].item() == pytest.approx(23.010299956639813, abs=1e-9)
    # The whole-image PSNR counts the sky pixel: MSE (0.01 + 0.01 + 0.04) / 64.
    assert values["psnr"].item() == pytest.approx(30.280287236002437, abs=1e-9)
    # A higher threshold than every pixel: an empty mask, NaN.
    empty = per_image_metrics(sr, hr, arc_threshold=0.6)
    assert math.isnan(empty["psnr_arc"].item()) and math.isnan(empty["ssim_arc"].item())
    assert set(per_image_metrics(sr, hr)) == {"mse", "psnr", "ssim"}  # unchanged without it


def test_arc_ssim_averages_the_ssim_map_over_the_mask():
    # Constant images a, b: the SSIM map is the luminance term (2ab + C1) / (a^2 + b^2 + C1)
    # everywhere, so its mean over any mask is that value too.
    a, b, c1 = 0.5, 0.4, 1e-4
    sr, hr = (torch.full((1, 1, 32, 32), v, dtype=torch.float64) for v in (a, b))
    values = per_image_metrics(sr, hr, arc_threshold=0.1)
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert values["ssim_arc"].item() == pytest.approx(expected, rel=1e-9)
    # A mask covering the whole image gives the image's SSIM.
    hr = torch.rand(2, 1, 32, 32, dtype=torch.float64) * 0.8 + 0.15
    sr = (hr + 0.05 * torch.rand_like(hr)).clamp(0, 1)
    values = per_image_metrics(sr, hr, arc_threshold=0.1)
    torch.testing.assert_close(values["ssim_arc"], values["ssim"])
    torch.testing.assert_close(values["psnr_arc"], values["psnr"])


def test_flux_ratio():
    image = torch.rand(3, 1, 16, 16, dtype=torch.float64) * 0.5
    torch.testing.assert_close(flux_ratio(image, image), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(flux_ratio(2 * image, image), torch.full((3,), 2.0).double())
    # Through per_image_metrics (2 x image stays within [0, 1], so the clamp leaves it).
    values = per_image_metrics(2 * image, image, arc_threshold=0.1)
    torch.testing.assert_close(values["flux_ratio"], torch.full((3,), 2.0).double())
    assert math.isnan(flux_ratio(image[:1], torch.zeros_like(image[:1])).item())


# --- loss configs ----------------------------------------------------------------------------


# The terms of each loss option as the reference README and the SRGAN paper give them (and, for
# esrgan, BasicSR's weights): (pixel criterion, weight) | None, (VGG criterion, weight, before
# its ReLU) | None, GAN weight | None.
LOSS_TERMS = {
    "mse": (("mse", 1.0), None, None),
    "l1": (("l1", 1.0), None, None),
    "vgg": (("mse", 1.0), ("mse", 1 / 12.75**2, False), None),
    "adversarial": (("mse", 1.0), None, 1e-3),
    "srgan": (None, ("mse", 1 / 12.75**2, False), 1e-3),
    "esrgan": (("l1", 1e-2), ("l1", 1.0, True), 5e-3),
}


@pytest.mark.parametrize("name", sorted(LOSS_TERMS))
def test_loss_configs_are_the_stated_recipes(tmp_path, name):
    cfg = compose_cfg(tmp_path, ["model=srresnet", f"loss={name}"])
    pixel, perceptual, gan = LOSS_TERMS[name]
    loss_cfg = cfg.loss
    if perceptual is not None:
        assert loss_cfg.weights == "imagenet" and loss_cfg.perceptual.layer == "conv5_4"
        # Offline and fast: random weights on a shallow layer.
        loss_cfg.weights = "random"
        loss_cfg.perceptual.layer = "conv1_1"
    loss = hydra.utils.instantiate(loss_cfg)
    assert isinstance(loss, SuperResolutionLoss) and loss.task == "superres"
    if pixel is None:
        assert loss.pixel is None
    else:
        assert (loss.pixel.criterion, loss.pixel.weight) == pytest.approx(pixel)
    if perceptual is None:
        assert loss.perceptual is None
    else:
        p = loss.perceptual
        assert (p.criterion, p.before_activation) == (perceptual[0], perceptual[2])
        assert p.weight == pytest.approx(perceptual[1], rel=1e-3)
    if gan is None:
        assert loss.adversarial is None and cfg.model._target_.endswith(".SuperResolutionModule")
    else:
        assert loss.adversarial.gan_type == "vanilla"  # BCE with logits
        assert loss.adversarial.weight == pytest.approx(gan)
        assert cfg.model._target_.endswith(".AdversarialSRModule") and "discriminator" in cfg.model
    sr, hr = torch.rand(2, 1, 32, 32, requires_grad=True), torch.rand(2, 1, 32, 32)
    total, terms = loss(sr, hr, fake_logits=torch.zeros(2, 1) if gan else None)
    expected = {
        n
        for n, t in zip(("pixel", "perceptual", "adversarial"), LOSS_TERMS[name], strict=True)
        if t
    }
    assert set(terms) == expected
    total.backward()
    assert sr.grad is not None
    if gan is not None:
        # Every GAN loss trains the same adversarial module and discriminator.
        assert cfg.model == compose_cfg(tmp_path, ["model=srresnet", "loss=adversarial"]).model


def test_loss_weights_build_the_perceptual_term():
    loss = SuperResolutionLoss(
        pixel=PixelLoss("l1", 1e-2),
        perceptual=functools.partial(PerceptualLoss, layer="conv1_2"),
        weights="random",
    )
    assert loss.perceptual.weights == "random" and loss.pretrained_loaded is False
    with pytest.raises(LensexpError, match=r"loss\.weights=random: only used to build"):
        SuperResolutionLoss(pixel=PixelLoss("mse", 1.0), weights="random")
