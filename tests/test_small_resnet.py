"""model=small_resnet (lensexp's own one-band network) and scheduler=warmup_cosine."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor

from lensexp.errors import LensexpError
from lensexp.evaluation import evaluate
from lensexp.models.backbones import ImageClassifier
from lensexp.models.small_resnet import BasicBlock, SmallResNet
from lensexp.schedulers import warmup_cosine
from lensexp.training import train
from tests.helpers import compose_cfg


def conv_out(size: int, stride: int) -> int:
    """Output size of a 3x3 conv (or max-pool) with padding 1: floor((n + 2 - 3) / s) + 1."""
    return (size - 1) // stride + 1


def stage_sizes(net: SmallResNet, x: Tensor) -> list[tuple[int, int]]:
    """(channels, height) of the output of each stage of `net` on `x`."""
    sizes: list[tuple[int, int]] = []
    hooks = [
        stage.register_forward_hook(lambda m, a, out: sizes.append((out.shape[1], out.shape[2])))
        for stage in net.stages
    ]
    net(x)
    for hook in hooks:
        hook.remove()
    return sizes


@pytest.mark.parametrize(("stem_stride", "stem_pool"), [(2, False), (1, False), (2, True)])
def test_each_stage_after_the_first_halves_the_resolution(
    stem_stride: int, stem_pool: bool
) -> None:
    net = SmallResNet(widths=(8, 16, 24), n_blocks=(1, 2, 1), stem_stride=stem_stride,
                      stem_pool=stem_pool)  # fmt: skip
    size = conv_out(150, stem_stride)
    if stem_pool:
        size = conv_out(size, 2)
    expected = [(8, size), (16, conv_out(size, 2)), (24, conv_out(conv_out(size, 2), 2))]
    assert stage_sizes(net, torch.randn(2, 1, 150, 150)) == expected
    assert [len(stage) for stage in net.stages] == [1, 2, 1]


@pytest.mark.parametrize(("bands", "height", "width"), [(1, 150, 150), (3, 64, 48)])
def test_logits_for_any_bands_and_size(bands: int, height: int, width: int) -> None:
    net = SmallResNet(in_channels=bands, num_classes=5)
    assert net(torch.randn(3, bands, height, width)).shape == (3, 5)


def test_a_block_starts_as_its_shortcut() -> None:
    # The residual branch's last BatchNorm starts at zero: a fresh block passes relu(x).
    block = BasicBlock(8, 8).eval()
    x = torch.randn(2, 8, 10, 10)
    assert torch.equal(block(x), torch.relu(x))
    assert not torch.equal(BasicBlock(8, 16).eval()(x)[:, :8], torch.relu(x))


def test_dropout_sits_before_the_final_layer() -> None:
    net = SmallResNet(dropout=0.5).train()
    x = torch.randn(4, 1, 40, 40)
    torch.manual_seed(0)
    first = net(x)
    assert not torch.equal(first, net(x))  # two dropout masks
    net.eval()
    assert torch.equal(net(x), net(x))


def test_classifier_passes_the_bands_as_they_are() -> None:
    model = ImageClassifier("small_resnet", 4, in_channels=2, input_adapter="none",
                            pretrained="none", architecture={"widths": [8, 16], "n_blocks": [1, 1]})  # fmt: skip
    assert model.net.stem[0].in_channels == 2 and model.net.fc.out_features == 4
    assert model.normalize == "none" and not model.pretrained_loaded
    x = torch.randn(2, 2, 32, 32)
    model.eval()
    assert torch.equal(model(x), model.net(x))


def test_a_state_dict_of_the_same_network_is_loaded(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = SmallResNet(widths=(8, 16), n_blocks=(1, 1), num_classes=3)
    torch.save(source.state_dict(), tmp_path / "w.pth")
    model = ImageClassifier("small_resnet", 3, input_adapter="none", pretrained=str(tmp_path / "w.pth"),
                            architecture={"widths": [8, 16], "n_blocks": [1, 1]})  # fmt: skip
    assert model.pretrained_loaded and model.normalize == "none"  # its own weights, not ImageNet's
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(model.eval()(x), source.eval()(x))
    with pytest.raises(LensexpError, match=r"model\.pretrained=.*w\.pth: the weights do not fit"):
        ImageClassifier("small_resnet", 3, input_adapter="none", pretrained=str(tmp_path / "w.pth"),
                        architecture={"widths": [8, 32], "n_blocks": [1, 1]})  # fmt: skip


@pytest.mark.parametrize(
    ("backbone", "kwargs", "message"),
    [
        ("small_resnet", {"input_adapter": "repeat"},
         r"model\.input_adapter=repeat: small_resnet takes the data's bands.*input_adapter=none"),
        ("small_resnet", {"pretrained": "auto"}, r"model\.pretrained=auto: small_resnet has no Image"),
        ("small_resnet", {"pretrained": "imagenet"}, r"model\.pretrained=imagenet: small_resnet"),
        ("small_resnet", {"normalize": "imagenet"}, r"model\.normalize=imagenet: small_resnet"),
        ("small_resnet", {"architecture": {"nb": 2}},
         r"model\.architecture\.nb: not a knob of small_resnet; its knobs are widths, n_blocks"),
        ("small_resnet", {"architecture": {"widths": [8, 16], "n_blocks": [1]}},
         r"model\.architecture\.widths=\[8, 16\] and \.n_blocks=\[1\]: give one number"),
        ("small_resnet", {"architecture": {"widths": [0], "n_blocks": [1]}}, r"model\.architecture\.widths\[0\]=0"),
        ("mobilenet_v3_small", {"input_adapter": "none", "pretrained": "none"},
         r"model\.input_adapter=none: mobilenet_v3_small is an RGB network"),
        ("resnet18", {"architecture": {"widths": [8]}, "pretrained": "none"},
         r"model\.architecture: resnet18's architecture is torchvision's"),
    ],
)  # fmt: skip
def test_options_that_do_not_fit_the_network_are_one_line_errors(
    backbone: str, kwargs: dict, message: str
) -> None:
    options = {"input_adapter": "none", "pretrained": "none"} if backbone == "small_resnet" else {}
    with pytest.raises(LensexpError, match=message) as err:
        ImageClassifier(backbone, **{**options, **kwargs})
    assert "\n" not in str(err.value)


def test_warmup_then_cosine() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    schedule = warmup_cosine(optimizer, max_epochs=7, warmup_epochs=2, start_factor=0.2,
                             eta_min=0.1)  # fmt: skip
    seen = []
    for _ in range(7):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    # Linear from 0.2 to 1 over 2 epochs, then cosine from 1 towards 0.1 over the other 5.
    cosine = [0.1 + 0.9 * (1 + math.cos(math.pi * k / 5)) / 2 for k in range(5)]
    assert seen == pytest.approx([0.2, 0.6, *cosine])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"warmup_epochs": 5}, r"warmup_epochs=5: must be fewer than trainer\.max_epochs=5"),
        ({"warmup_epochs": 0}, r"warmup_epochs=0"),
        ({"start_factor": 0.0}, r"start_factor=0\.0: must be in \(0, 1\]"),
    ],
)
def test_bad_warmup_options_are_one_line_errors(kwargs: dict, message: str) -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(LensexpError, match=message):
        warmup_cosine(optimizer, max_epochs=5, **kwargs)


def test_train_and_evaluate_a_small_resnet_with_warmup(
    classification_root: Path, tmp_path: Path
) -> None:
    overrides = [
        f"data.root={classification_root}", "data.image_size=32", "data.batch_size=8",
        "model=small_resnet", "model.architecture.widths=[8,16]", "model.architecture.n_blocks=[1,1]",
        "scheduler=warmup_cosine", "scheduler.scheduler.warmup_epochs=2", "trainer=cpu",
        "trainer.max_epochs=4", "logger=csv", "model.tta=none",
    ]  # fmt: skip
    results = train(compose_cfg(tmp_path / "train", overrides))
    out = tmp_path / "train" / "out"
    with open(out / "csv" / "metrics.csv") as fh:
        rates = [float(r["lr-Adam"]) for r in csv.DictReader(fh) if r.get("lr-Adam")]
    lr = 1e-3  # optimizer=adam's default
    assert rates == pytest.approx([0.1 * lr, 0.55 * lr, lr, lr / 2])
    saved = json.loads((out / "results.json").read_text())
    assert saved["pretrained_loaded"] is False

    # evaluate.py rebuilds the network, knobs included, from the checkpoint alone.
    eval_cfg = compose_cfg(
        tmp_path / "eval", [f"ckpt_path={results['best_checkpoint']}", "trainer=cpu", "split=val"],
        "eval",
    )  # fmt: skip
    validated = evaluate(eval_cfg)
    assert validated["accuracy"] == pytest.approx(results["val_metrics"]["val/acc"], abs=1e-6)
