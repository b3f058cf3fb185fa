"""ImageClassifier: backbones, input adapters, weight loading and normalisation buffers."""

from __future__ import annotations

import logging
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from torch import Tensor, nn

import lensexp.models.weights as weights_module
from lensexp.errors import LensexpError
from lensexp.models.backbones import (
    BACKBONES,
    FoldedInputConv,
    ImageClassifier,
    final_linear,
    locate,
)
from lensexp.models.weights import IMAGENET_MEAN, IMAGENET_STD

ADAPTERS = ("repeat", "first_conv")
# Every backbone; the two large ones take 3-5 s per test on a CPU.
ALL_BACKBONES = [
    pytest.param(b, marks=pytest.mark.slow) if b in ("mobilenet_v3_large", "efficientnet_b0") else b
    for b in BACKBONES
]


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision's download always fails, as it does offline; no test may reach the network."""

    def unreachable(weights: object) -> dict[str, Tensor]:
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(weights_module, "fetch_torchvision_weights", unreachable)


def save_torchvision_weights(backbone: str, path: Path, seed: int = 0) -> dict[str, Tensor]:
    """A seeded random torchvision `backbone` (1000-class head) saved as a state dict."""
    torch.manual_seed(seed)
    state = BACKBONES[backbone].build().state_dict()
    torch.save(state, path)
    return state


def stem_output(model: ImageClassifier, x: Tensor) -> tuple[Tensor, Tensor]:
    """(logits, output of the stem conv) of `model` on `x`, in eval mode without gradients."""
    captured: list[Tensor] = []
    stem = locate(model.net, BACKBONES[model.backbone].stem)[2]
    handle = stem.register_forward_hook(lambda module, args, out: captured.append(out))
    try:
        with torch.no_grad():
            logits = model.eval()(x)
    finally:
        handle.remove()
    return logits, captured[0]


def copy_head(source: ImageClassifier, target: ImageClassifier) -> None:
    path = BACKBONES[source.backbone].head
    locate(target.net, path)[2].load_state_dict(locate(source.net, path)[2].state_dict())


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("backbone", ALL_BACKBONES)
def test_logits_shape_for_every_backbone_and_adapter(backbone: str, adapter: str) -> None:
    model = ImageClassifier(backbone, num_classes=5, input_adapter=adapter, pretrained="none")
    with torch.no_grad():
        logits = model(torch.rand(2, 1, 64, 64))
    assert logits.shape == (2, 5)
    assert torch.isfinite(logits).all()
    assert model.pretrained_loaded is False
    assert model.normalize == "none"


def test_local_weights_file_is_loaded_before_the_head_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "mnv3s.pth"
    saved = save_torchvision_weights("mobilenet_v3_small", path)
    model = ImageClassifier("mobilenet_v3_small", pretrained=str(path))
    assert model.pretrained_loaded is True
    key = "features.3.block.0.0.weight"
    assert torch.equal(model.net.state_dict()[key], saved[key])
    assert final_linear(model.net, "mobilenet_v3_small")[2].out_features == 3
    # normalize=auto follows the loaded weights.
    assert model.normalize == "imagenet"
    assert torch.allclose(model.mean.flatten(), torch.tensor(IMAGENET_MEAN))
    assert torch.allclose(model.std.flatten(), torch.tensor(IMAGENET_STD))
    assert model(torch.rand(2, 1, 64, 64)).shape == (2, 3)


@pytest.mark.parametrize("backbone", ALL_BACKBONES)
def test_first_conv_equals_repeat_with_the_same_loaded_weights(
    backbone: str, tmp_path: Path
) -> None:
    path = tmp_path / f"{backbone}.pth"
    save_torchvision_weights(backbone, path)
    repeat = ImageClassifier(backbone, pretrained=str(path))
    folded = ImageClassifier(backbone, pretrained=str(path), input_adapter="first_conv")
    copy_head(repeat, folded)
    assert isinstance(locate(folded.net, BACKBONES[backbone].stem)[2], FoldedInputConv)

    x = torch.rand(2, 1, 64, 64)
    logits_r, stem_r = stem_output(repeat, x)
    logits_f, stem_f = stem_output(folded, x)
    # The whole stem map, border included: the rest of the two networks is identical.
    torch.testing.assert_close(stem_f, stem_r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits_f, logits_r, rtol=1e-4, atol=1e-5)


def test_a_bias_fold_would_differ_at_the_border() -> None:
    # Guards the reason for FoldedInputConv.offset: a constant offset is wrong near the edges.
    torch.manual_seed(0)
    repeat = ImageClassifier("resnet18", pretrained="none", normalize="imagenet")
    folded = ImageClassifier(
        "resnet18", pretrained="none", normalize="imagenet", input_adapter="first_conv"
    )
    folded.net.conv1.conv.weight.data.copy_(
        (repeat.net.conv1.weight / repeat.std).sum(1, keepdim=True)
    )
    offset = -(repeat.net.conv1.weight * repeat.mean / repeat.std).sum(1, keepdim=True)
    folded.net.conv1.offset.data.copy_(offset)
    x = torch.rand(2, 1, 64, 64)
    _, stem_r = stem_output(repeat, x)
    _, stem_f = stem_output(folded, x)
    torch.testing.assert_close(stem_f, stem_r, rtol=1e-5, atol=1e-5)
    # A bias would add the interior value everywhere; the border rows then disagree.
    bias = offset.sum(dim=(1, 2, 3)).view(1, -1, 1, 1)
    plain = folded.net.conv1.conv(x) + bias
    torch.testing.assert_close(
        plain[..., 2:-2, 2:-2], stem_r[..., 2:-2, 2:-2], rtol=1e-5, atol=1e-5
    )
    assert (plain[..., 0, :] - stem_r[..., 0, :]).abs().max() > 1e-2


@pytest.mark.parametrize("in_channels", [2, 3])
def test_first_conv_with_several_channels_equals_repeat_on_copies(in_channels: int) -> None:
    torch.manual_seed(0)
    repeat = ImageClassifier("mobilenet_v3_small", pretrained="none", normalize="imagenet")
    torch.manual_seed(0)
    folded = ImageClassifier(
        "mobilenet_v3_small",
        in_channels=in_channels,
        input_adapter="first_conv",
        pretrained="none",
        normalize="imagenet",
    )
    copy_head(repeat, folded)
    x = torch.rand(2, 1, 48, 48)
    logits_r, stem_r = stem_output(repeat, x)
    logits_f, stem_f = stem_output(folded, x.expand(-1, in_channels, -1, -1))
    torch.testing.assert_close(stem_f, stem_r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits_f, logits_r, rtol=1e-4, atol=1e-5)
    if in_channels == 3:
        # Three channels map one to one, so any RGB input matches too.
        rgb = torch.rand(2, 3, 48, 48)
        _, stem_r = stem_output(repeat, rgb)
        _, stem_f = stem_output(folded, rgb)
        torch.testing.assert_close(stem_f, stem_r, rtol=1e-5, atol=1e-5)


def test_three_bands_pass_through_repeat_one_per_rgb_channel() -> None:
    model = ImageClassifier("resnet18", in_channels=3, pretrained="none", normalize="imagenet")
    bands = torch.rand(2, 3, 32, 32)
    logits, stem = stem_output(model, bands)
    with torch.no_grad():
        expected = model.net.conv1((bands - model.mean) / model.std)
    torch.testing.assert_close(stem, expected)
    # Not one band repeated: the first band alone gives another stem output.
    _, first_band_only = stem_output(model, bands[:, :1])
    assert (stem - first_band_only).abs().max() > 1e-2


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_three_band_dataset_gives_a_three_channel_classifier(
    tmp_path: Path, adapter: str
) -> None:
    from lensexp.builders import build_datamodule, build_module
    from tests.helpers import compose_cfg, make_classification_folder

    root = make_classification_folder(tmp_path / "cls", 4, size=64, bands=3)
    cfg = compose_cfg(tmp_path, [f"data.root={root}", "model=mobilenet_v3_small",
                                 "model.pretrained=none", f"model.input_adapter={adapter}",
                                 "data.batch_size=4"])  # fmt: skip
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule)
    assert module.hparams.in_channels == module.net.in_channels == 3
    stem = locate(module.net.net, BACKBONES["mobilenet_v3_small"].stem)[2]
    conv = stem.conv if adapter == "first_conv" else stem
    assert conv.in_channels == 3
    datamodule.setup("fit")
    images, _ = next(iter(datamodule.train_dataloader()))
    assert images.shape == (4, 3, 64, 64)
    assert module.eval()(images).shape == (4, 3)


def test_first_conv_without_normalisation_has_a_zero_offset() -> None:
    model = ImageClassifier("mobilenet_v3_small", pretrained="none", input_adapter="first_conv")
    stem = model.net.features[0][0]
    assert isinstance(stem, FoldedInputConv) and stem.conv.in_channels == 1
    assert torch.equal(stem.offset, torch.zeros_like(stem.offset))
    assert model(torch.rand(1, 1, 150, 150)).shape == (1, 3)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_checkpoint_loads_into_a_model_built_without_weights(adapter: str, tmp_path: Path) -> None:
    # evaluate.py rebuilds the model with pretrained=none and loads the trained state dict.
    path = tmp_path / "mnv3s.pth"
    save_torchvision_weights("mobilenet_v3_small", path)
    trained = ImageClassifier("mobilenet_v3_small", input_adapter=adapter, pretrained=str(path))
    rebuilt = ImageClassifier("mobilenet_v3_small", input_adapter=adapter, pretrained="none")
    assert rebuilt.normalize == "none"
    rebuilt.load_state_dict(trained.state_dict())
    assert rebuilt.normalize == "imagenet"
    x = torch.rand(2, 1, 48, 48)
    torch.testing.assert_close(stem_output(rebuilt, x)[1], stem_output(trained, x)[1])


def test_auto_without_network_warns_and_trains_from_scratch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="lensexp.models.weights")
    model = ImageClassifier("mobilenet_v3_small", pretrained="auto")
    assert model.pretrained_loaded is False
    assert "model.pretrained=auto" in caplog.text
    assert "pretrained_loaded=false" in caplog.text
    assert model.normalize == "none"
    assert torch.equal(model.mean, torch.zeros(1, 3, 1, 1))
    assert torch.equal(model.std, torch.ones(1, 3, 1, 1))


def test_imagenet_without_network_is_an_error() -> None:
    with pytest.raises(LensexpError, match=r"model\.pretrained=imagenet.*TORCH_HOME") as err:
        ImageClassifier("mobilenet_v3_small", pretrained="imagenet")
    assert "model.pretrained=/path/to/weights.pth" in str(err.value)


def test_weights_of_another_backbone_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "mnv3s.pth"
    save_torchvision_weights("mobilenet_v3_small", path)
    with pytest.raises(LensexpError, match=r"model\.pretrained=.*mnv3s\.pth.*do not fit"):
        ImageClassifier("efficientnet_b0", pretrained=str(path))


def test_missing_weights_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(LensexpError, match=r"model\.pretrained=.*nowhere\.pth: no such file"):
        ImageClassifier("mobilenet_v3_small", pretrained=str(tmp_path / "nowhere.pth"))


def test_normalisation_buffers_are_in_the_state_dict() -> None:
    model = ImageClassifier("mobilenet_v3_small", pretrained="none", normalize="imagenet")
    state = model.state_dict()
    assert state["mean"].shape == state["std"].shape == (1, 3, 1, 1)
    fresh = ImageClassifier("mobilenet_v3_small", pretrained="none")
    assert torch.equal(fresh.std, torch.ones(1, 3, 1, 1))
    fresh.load_state_dict(state)
    assert torch.allclose(fresh.std.flatten(), torch.tensor(IMAGENET_STD))


def test_bn_momentum_sets_every_batchnorm() -> None:
    def momenta(model: nn.Module) -> set[float]:
        return {m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)}

    assert momenta(ImageClassifier("mobilenet_v3_small", pretrained="none")) == {0.01}
    tuned = ImageClassifier("mobilenet_v3_small", pretrained="none", bn_momentum=0.1)
    assert momenta(tuned) == {0.1}


def test_dropout_sets_the_head_dropout() -> None:
    model = ImageClassifier("mobilenet_v3_small", pretrained="none", dropout=0.5)
    assert [m.p for m in model.net.classifier.modules() if isinstance(m, nn.Dropout)] == [0.5]
    model = ImageClassifier("resnet18", pretrained="none", dropout=0.3)
    assert isinstance(model.net.fc, nn.Sequential) and model.net.fc[0].p == 0.3
    assert model.net.fc[1].out_features == 3
    default = ImageClassifier("mobilenet_v3_small", pretrained="none")
    assert [m.p for m in default.net.classifier.modules() if isinstance(m, nn.Dropout)] == [0.2]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backbone": "vgg16"}, r"model\.backbone=vgg16.*mobilenet_v3_large\|.*efficientnet_b0"),
        ({"input_adapter": "stack"}, r"model\.input_adapter=stack.*repeat\|first_conv"),
        ({"normalize": "per_image"}, r"model\.normalize=per_image.*auto\|imagenet\|none"),
        ({"num_classes": 0}, r"model\.num_classes=0: must be an integer >= 1"),
        ({"in_channels": 2}, r"model\.input_adapter=repeat.*first_conv"),
        ({"dropout": 1.5}, r"model\.dropout=1\.5"),
        ({"bn_momentum": 0.0}, r"model\.bn_momentum=0\.0"),
    ],
)
def test_bad_options_are_one_line_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(LensexpError, match=message) as err:
        ImageClassifier(pretrained="none", **kwargs)
    assert "\n" not in str(err.value)


def test_imagenet_weights_version_reaches_torchvision(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = []
    source = torchvision.models.mobilenet_v3_small().state_dict()
    monkeypatch.setattr(
        weights_module, "fetch_torchvision_weights", lambda w: asked.append(w) or source
    )
    model = ImageClassifier(
        "mobilenet_v3_small", pretrained="imagenet", imagenet_weights="IMAGENET1K_V1"
    )
    assert asked == [torchvision.models.MobileNet_V3_Small_Weights.IMAGENET1K_V1]
    assert model.pretrained_loaded
    torch.testing.assert_close(model.net.features[0][0].weight, source["features.0.0.weight"])
    with pytest.raises(LensexpError, match=r"^model\.imagenet_weights=V9: not a valid value"):
        ImageClassifier("mobilenet_v3_small", pretrained="none", imagenet_weights="V9")


def test_reference_format_classifier_loads_and_reproduces(tmp_path: Path) -> None:
    # The reference notebook's network: torchvision's MobileNetV3-Large whose whole classifier
    # is one Linear(960, 3); its state dict is features.* plus classifier.0.{weight,bias}.
    torch.manual_seed(0)
    reference = torchvision.models.mobilenet_v3_large()
    reference.classifier = nn.Sequential(nn.Linear(960, 3))
    reference.eval()
    state = reference.state_dict()
    assert {k for k in state if not k.startswith("features.")} == {
        "classifier.0.weight", "classifier.0.bias",
    }  # fmt: skip
    assert state["classifier.0.weight"].shape == (3, 960)
    path = tmp_path / "reference_classifier.pth"
    torch.save(state, path)

    model = ImageClassifier(
        "mobilenet_v3_large", pretrained=str(path), head="linear", normalize="none"
    ).eval()
    assert model.pretrained_loaded
    x = torch.rand(2, 1, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x.repeat(1, 3, 1, 1)))
    # An ImageNet-format file still loads before the head is replaced.
    torch.save(torchvision.models.mobilenet_v3_large().state_dict(), tmp_path / "imagenet.pth")
    other = ImageClassifier("mobilenet_v3_large", pretrained=str(tmp_path / "imagenet.pth"),
                            head="linear")  # fmt: skip
    assert other.pretrained_loaded and other.net.classifier[0].weight.shape == (3, 960)
