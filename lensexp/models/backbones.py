"""torchvision classification backbones for lensing images of one band (or three).

`ImageClassifier` builds a torchvision network without weights, fills it through
`lensexp.models.weights.load_pretrained` (ImageNet weights, a local state dict, or none), then
replaces the final linear layer by a fresh `num_classes`-way one. Images reach the 3-channel
network in one of two ways (`input_adapter`):

- `repeat`: a single channel is repeated to RGB (three bands pass as they are, one per RGB
  channel) and normalised per channel with the `mean`/`std` buffers; the network is unchanged.
- `first_conv`: the first conv is replaced by one with `in_channels` inputs whose weights fold in
  the channel repetition and the normalisation, so at initialisation it computes exactly what
  `repeat` computes (see `FoldedInputConv`).

lensexp's own networks (`NATIVE`: `small_resnet`) are built for the data's bands and classes
instead, take the bands as they are (`input_adapter="none"`) and have no ImageNet weights.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models import WeightsEnum

from lensexp.checks import check_choice, check_int
from lensexp.errors import LensexpError
from lensexp.models.small_resnet import SmallResNet
from lensexp.models.weights import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    KEYWORDS,
    TORCHVISION_WEIGHTS,
    load_pretrained,
    read_state_dict,
)

# Prefix of the option names in error messages (the Hydra path of the classifier's config).
OPTION = "model"
# none: the images reach the network as they are (lensexp's own networks, made for the bands).
INPUT_ADAPTERS = ("repeat", "first_conv", "none")
NORMALIZE = ("auto", "imagenet", "none")


HEADS = ("last_linear", "linear")


@dataclass(frozen=True)
class Backbone:
    """A torchvision constructor, its ImageNet weights enum, and where its stem conv, final
    linear layer and whole classifier live."""

    build: Callable[..., nn.Module]
    weights: type[WeightsEnum]
    stem: str  # dotted path of the first conv (3 input channels)
    head: str  # dotted path of the final nn.Linear (1000 ImageNet classes)
    classifier: str  # dotted path of everything after the pooled features

    def imagenet_weights(self, name: str) -> WeightsEnum:
        """The enum member `name` (e.g. IMAGENET1K_V1), or torchvision's `DEFAULT`."""
        members = ["DEFAULT", *self.weights.__members__]
        return self.weights[check_choice(f"{OPTION}.imagenet_weights", name, members)]


BACKBONES: dict[str, Backbone] = {
    "mobilenet_v3_large": Backbone(
        torchvision.models.mobilenet_v3_large,
        torchvision.models.MobileNet_V3_Large_Weights,
        "features.0.0",
        "classifier.3",
        "classifier",
    ),
    "mobilenet_v3_small": Backbone(
        torchvision.models.mobilenet_v3_small,
        torchvision.models.MobileNet_V3_Small_Weights,
        "features.0.0",
        "classifier.3",
        "classifier",
    ),
    "resnet18": Backbone(
        torchvision.models.resnet18,
        torchvision.models.ResNet18_Weights,
        "conv1",
        "fc",
        "fc",
    ),
    "efficientnet_b0": Backbone(
        torchvision.models.efficientnet_b0,
        torchvision.models.EfficientNet_B0_Weights,
        "features.0.0",
        "classifier.1",
        "classifier",
    ),
}


# lensexp's own networks: built for the data's bands and classes, no ImageNet weights; their
# constructor's knobs come from `model.architecture`.
NATIVE: dict[str, Callable[..., nn.Module]] = {"small_resnet": SmallResNet}


def locate(model: nn.Module, path: str) -> tuple[nn.Module, str, nn.Module]:
    """(parent, attribute name, layer) of the submodule at dotted `path`, for replacing it."""
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    return parent, name, getattr(parent, name)


def first_conv(model: nn.Module, backbone: str) -> tuple[nn.Module, str, nn.Conv2d]:
    """(parent, attribute name, conv) of the stem conv of a torchvision `backbone` network."""
    parent, name, conv = locate(model, BACKBONES[backbone].stem)
    assert isinstance(conv, nn.Conv2d), f"{backbone}: {BACKBONES[backbone].stem} is {conv}"
    return parent, name, conv


def final_linear(model: nn.Module, backbone: str) -> tuple[nn.Module, str, nn.Linear]:
    """(parent, attribute name, linear) of the classification layer of a torchvision network."""
    parent, name, linear = locate(model, BACKBONES[backbone].head)
    assert isinstance(linear, nn.Linear), f"{backbone}: {BACKBONES[backbone].head} is {linear}"
    return parent, name, linear


class FoldedInputConv(nn.Module):
    """A conv on `in_channels` raw channels equal to an RGB conv on normalised, repeated input.

    The RGB conv sees `(x - mean_c) / std_c` with zero padding, so its output is
    `sum_c w_c * pad(x) / std_c  -  sum_c w_c * pad(1) * mean_c / std_c  (+ bias)`:
    a conv of the raw input with `sum_c w_c / std_c`, minus a conv of an all-ones image with
    `sum_c w_c mean_c / std_c`. The second term does not depend on the input; it is a constant
    in the interior but not near the border (fewer kernel taps land inside the image), so it
    cannot be folded into a bias. `offset` keeps it as a (trainable) kernel applied to ones,
    which makes the fold exact everywhere.

    With 3 input channels, channel c gets `w_c / std_c` (exact for any input). Otherwise every
    input channel gets `(sum_c w_c / std_c) / in_channels` (exact when the channels are equal).
    """

    def __init__(self, conv: nn.Conv2d, in_channels: int, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        if conv.groups != 1 or conv.padding_mode != "zeros" or conv.in_channels != 3:
            raise ValueError(f"cannot fold the input normalisation into {conv}")
        weight = conv.weight.detach()
        scale = (1.0 / std).view(1, 3, 1, 1).to(weight)
        shift = (mean / std).view(1, 3, 1, 1).to(weight)
        self.conv = nn.Conv2d(
            in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            bias=conv.bias is not None,
        )
        with torch.no_grad():
            if in_channels == 3:
                self.conv.weight.copy_(weight * scale)
            else:
                folded = (weight * scale).sum(dim=1, keepdim=True) / in_channels
                self.conv.weight.copy_(folded.expand(-1, in_channels, -1, -1))
            if conv.bias is not None:
                self.conv.bias.copy_(conv.bias.detach())
        # Zero without normalisation, but always present: a checkpoint then loads into a model
        # built with any `normalize` (evaluate.py rebuilds with pretrained=none).
        self.offset = nn.Parameter(-(weight * shift).sum(dim=1, keepdim=True).clone())

    def forward(self, x: Tensor) -> Tensor:
        c = self.conv
        # One image of ones is enough: the term is the same for the whole batch.
        ones = x.new_ones((1, 1, *x.shape[-2:]))
        offset = F.conv2d(ones, self.offset.to(x.dtype), None, c.stride, c.padding, c.dilation)
        return c(x) + offset


def _check_options(
    backbone: str,
    num_classes: int,
    in_channels: int,
    input_adapter: str,
    normalize: str,
    dropout: float | None,
    bn_momentum: float | None,
    head: str,
    pretrained: str | None,
    architecture: Mapping[str, Any] | None,
) -> None:
    """Refuse a bad `ImageClassifier` option in one line naming its config key."""
    check_choice(f"{OPTION}.backbone", backbone, [*BACKBONES, *NATIVE])
    check_choice(f"{OPTION}.head", head, HEADS)
    check_choice(f"{OPTION}.input_adapter", input_adapter, INPUT_ADAPTERS)
    check_choice(f"{OPTION}.normalize", normalize, NORMALIZE)
    check_int(f"{OPTION}.num_classes", num_classes, 1)  # 1: a regression output
    check_int(f"{OPTION}.in_channels", in_channels, 1)
    if backbone in NATIVE:
        _check_native_options(backbone, input_adapter, normalize, pretrained)
    else:
        if input_adapter == "none":
            raise LensexpError(
                f"{OPTION}.input_adapter=none: {backbone} is an RGB network; use repeat or "
                f"first_conv (none is for lensexp's own networks: {', '.join(NATIVE)})."
            )
        if architecture:
            raise LensexpError(
                f"{OPTION}.architecture: {backbone}'s architecture is torchvision's; the key "
                f"sets the knobs of lensexp's own networks ({', '.join(NATIVE)}). Remove it."
            )
    if input_adapter == "repeat" and in_channels not in (1, 3):
        raise LensexpError(
            f"{OPTION}.input_adapter=repeat takes 1 or 3 input channels, not {in_channels}; "
            f"use {OPTION}.input_adapter=first_conv."
        )
    if dropout is not None and not 0.0 <= float(dropout) < 1.0:
        raise LensexpError(f"{OPTION}.dropout={dropout}: must be in [0, 1), or null.")
    if bn_momentum is not None and not 0.0 < float(bn_momentum) <= 1.0:
        raise LensexpError(f"{OPTION}.bn_momentum={bn_momentum}: must be in (0, 1], or null.")


def _check_native_options(
    backbone: str, input_adapter: str, normalize: str, pretrained: str | None
) -> None:
    """Refuse the RGB/ImageNet options that mean nothing for lensexp's own networks."""
    if input_adapter != "none":
        raise LensexpError(
            f"{OPTION}.input_adapter={input_adapter}: {backbone} takes the data's bands as they "
            f"are; set {OPTION}.input_adapter=none (conf/model/{backbone}.yaml does)."
        )
    if normalize == "imagenet":
        raise LensexpError(
            f"{OPTION}.normalize=imagenet: {backbone} has no ImageNet weights to match; use "
            f"{OPTION}.normalize=none or auto."
        )
    if str(pretrained) in TORCHVISION_WEIGHTS:
        raise LensexpError(
            f"{OPTION}.pretrained={pretrained}: {backbone} has no ImageNet weights; use "
            f"{OPTION}.pretrained=none, or a path to a state dict of this network."
        )


def _replace_head(
    net: nn.Module, backbone: str, num_classes: int, dropout: float | None, head: str
) -> None:
    """Put a fresh `num_classes`-way linear layer where the 1000-class ImageNet head was.

    `head="last_linear"`: only the final linear layer is replaced (MobileNetV3 keeps its
    960 -> 1280 hidden layer); `dropout` sets the head's existing dropout layers, or adds one
    before a head without any. `head="linear"`: the whole classifier becomes
    `Sequential(Linear(features, num_classes))`, as the DeepLense reference notebook did (its
    state dict then holds `classifier.0.{weight,bias}`); `dropout` adds a dropout before it.
    """
    if head == "linear":
        parent, name, classifier = locate(net, BACKBONES[backbone].classifier)
        first = next(m for m in classifier.modules() if isinstance(m, nn.Linear))
        layers: list[nn.Module] = [nn.Linear(first.in_features, num_classes)]
        if dropout is not None:
            layers.insert(0, nn.Dropout(float(dropout)))
        # resnet's classifier is its fc itself: keep it a plain Linear (key fc.weight).
        new = nn.Sequential(*layers) if name == "classifier" else layers[-1]
        setattr(parent, name, new)
        return
    parent, name, linear = final_linear(net, backbone)
    head: nn.Module = nn.Linear(linear.in_features, num_classes)
    if dropout is not None:
        dropouts = [m for m in parent.modules() if isinstance(m, nn.Dropout)]
        if dropouts:
            for module in dropouts:
                module.p = float(dropout)
        else:
            head = nn.Sequential(nn.Dropout(float(dropout)), head)
    setattr(parent, name, head)


def _finished_classifier(
    spec: Backbone,
    backbone: str,
    num_classes: int,
    dropout: float | None,
    head: str,
    pretrained: str | None,
) -> nn.Module | None:
    """The classifier as built here (head included) loaded from the file at `pretrained`, when
    the file holds exactly that network (a fine-tuned classifier); None for keywords and for
    ImageNet-format files."""
    if pretrained is None or str(pretrained) in KEYWORDS:
        return None
    state = read_state_dict(pretrained, f"{OPTION}.pretrained")
    net = spec.build(weights=None)
    _replace_head(net, backbone, num_classes, dropout, head)
    own = net.state_dict()
    if state.keys() != own.keys() or any(state[k].shape != own[k].shape for k in own):
        return None
    net.load_state_dict(state)
    return net


def _native_network(
    backbone: str,
    in_channels: int,
    num_classes: int,
    dropout: float | None,
    architecture: Mapping[str, Any] | None,
) -> nn.Module:
    """lensexp's own network `backbone` with the knobs in `architecture`."""
    build = NATIVE[backbone]
    knobs = dict(architecture or {})
    allowed = [
        name
        for name in inspect.signature(build).parameters
        if name not in ("in_channels", "num_classes", "dropout")
    ]
    unknown = sorted(set(knobs) - set(allowed))
    if unknown:
        raise LensexpError(
            f"{OPTION}.architecture.{unknown[0]}: not a knob of {backbone}; "
            f"its knobs are {', '.join(allowed)}."
        )
    return build(in_channels=in_channels, num_classes=num_classes, dropout=dropout, **knobs)


class ImageClassifier(nn.Module):
    """torchvision backbone with a fresh `num_classes` head: (N, in_channels, H, W) -> logits;
    or one of lensexp's own networks (`NATIVE`: `small_resnet`), built for the data's bands.

    - `architecture`: the own network's constructor knobs (e.g. `widths`, `n_blocks` of
      `SmallResNet`); it takes `input_adapter="none"` and `pretrained` none or a path only.

    - `pretrained`: `auto|imagenet|none|random` or a path to a state dict: either of the
      torchvision network with its 1000-class ImageNet head (loaded before the head is
      replaced), or of the finished classifier, head included (e.g. the DeepLense reference's
      fine-tuned MobileNetV3 with `head="linear"`: `features.*`, `classifier.0.*`).
    - `imagenet_weights`: which torchvision weights `auto`/`imagenet` load: `DEFAULT` or a
      member of the backbone's enum, e.g. `IMAGENET1K_V1` (what `pretrained=True` gave).
    - `head`: `last_linear` (replace the final linear layer) or `linear` (replace the whole
      classifier by one linear layer, as the reference did).
    - `normalize`: `imagenet`, `none`, or `auto` (ImageNet statistics exactly when pretrained
      weights were loaded). The statistics are the persistent buffers `mean`/`std` (1, 3, 1, 1).
      With `repeat` they are applied in `forward`; with `first_conv` they were folded into the
      new stem conv at construction and are kept as a record. The `normalize` attribute
      (`imagenet`|`none`) is read from the buffers, so it follows a loaded checkpoint.
    - `bn_momentum`: momentum of every BatchNorm's running statistics; None keeps torchvision's
      (0.01 in MobileNetV3, made for long ImageNet schedules: in a short run the statistics stay
      far from the data, and evaluation then gives nearly constant outputs).
    - `dropout`: the head's dropout probability; None keeps torchvision's (resnet18 has none;
      a value adds a dropout before its `fc`).
    """

    def __init__(
        self,
        backbone: str = "mobilenet_v3_large",
        num_classes: int = 3,
        in_channels: int = 1,
        input_adapter: str = "repeat",
        pretrained: str | None = "auto",
        normalize: str = "auto",
        dropout: float | None = None,
        bn_momentum: float | None = None,
        imagenet_weights: str = "DEFAULT",
        head: str = "last_linear",
        architecture: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        # Every option is checked before the (possibly slow) weight loading.
        _check_options(
            backbone, num_classes, in_channels, input_adapter, normalize, dropout, bn_momentum,
            head, pretrained, architecture,
        )  # fmt: skip
        self.backbone = backbone
        self.input_adapter = input_adapter
        self.in_channels = in_channels
        self.num_classes = num_classes
        if backbone in NATIVE:
            net = _native_network(backbone, in_channels, num_classes, dropout, architecture)
            # Only a state dict of this very network can fill it (pretrained=none|path).
            self.pretrained_loaded = load_pretrained(net, pretrained, None, f"{OPTION}.pretrained")
        else:
            spec = BACKBONES[backbone]
            weights = spec.imagenet_weights(imagenet_weights)
            net = _finished_classifier(spec, backbone, num_classes, dropout, head, pretrained)
            self.pretrained_loaded = net is not None
        if net is None:
            # ImageNet-format weights (or none) fit the network before its head is replaced.
            net = spec.build(weights=None)
            self.pretrained_loaded = load_pretrained(
                net, pretrained, weights, f"{OPTION}.pretrained"
            )
            _replace_head(net, backbone, num_classes, dropout, head)
        self.net = net
        # A native network's loaded weights are its own, never ImageNet's.
        use_imagenet = normalize == "imagenet" or (
            normalize == "auto" and self.pretrained_loaded and backbone not in NATIVE
        )
        mean = torch.tensor(IMAGENET_MEAN if use_imagenet else (0.0, 0.0, 0.0))
        std = torch.tensor(IMAGENET_STD if use_imagenet else (1.0, 1.0, 1.0))
        self.register_buffer("mean", mean.view(1, 3, 1, 1))
        self.register_buffer("std", std.view(1, 3, 1, 1))

        if bn_momentum is not None:
            for module in self.net.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.momentum = float(bn_momentum)
        if input_adapter == "first_conv":
            parent, name, conv = first_conv(self.net, backbone)
            setattr(parent, name, FoldedInputConv(conv, in_channels, mean, std))

    @property
    def normalize(self) -> str:
        """`imagenet` or `none`: read from the buffers, so it follows a loaded checkpoint."""
        return "imagenet" if bool((self.mean != 0).any()) else "none"

    def forward(self, x: Tensor) -> Tensor:
        """Logits (N, num_classes) of images (N, in_channels, H, W)."""
        if self.input_adapter == "repeat":
            x = (x.expand(-1, 3, -1, -1) - self.mean) / self.std
        return self.net(x)

    def extra_repr(self) -> str:
        return (
            f"backbone={self.backbone}, input_adapter={self.input_adapter}, "
            f"normalize={self.normalize}, pretrained_loaded={self.pretrained_loaded}"
        )
