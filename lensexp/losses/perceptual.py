"""Perceptual (VGG19 feature) loss, BasicSR style: distance between VGG19 features of SR and HR.

The network is torchvision's VGG19 `features`, truncated at the named layer (`conv5_4` before its
ReLU is the SRGAN/ESRGAN choice), frozen and in eval mode. Images in [0, 1] with one channel are
repeated to three and normalised with the ImageNet mean and std, as VGG was trained.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
import torchvision
from torch import Tensor, nn

from lensexp.errors import LensexpError
from lensexp.losses.pixel import check_criterion, distance
from lensexp.models.weights import load_pretrained

WEIGHTS_OPTION = "loss.weights"
LAYER_OPTION = "loss.perceptual.layer"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's VGG19 configuration "E": conv widths, "M" = 2x2 max pool.
_VGG19_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
    512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
)  # fmt: skip


def _conv_indices() -> dict[str, int]:
    """conv<block>_<n> -> index of that conv in vgg19().features (each conv is followed by a ReLU)."""
    names: dict[str, int] = {}
    index, block, n = 0, 1, 0
    for item in _VGG19_CFG:
        if item == "M":
            index, block, n = index + 1, block + 1, 0
        else:
            n += 1
            names[f"conv{block}_{n}"] = index
            index += 2
    return names


VGG19_LAYERS: dict[str, int] = _conv_indices()


def vgg19_features(end: int) -> nn.Sequential:
    """The first `end` modules of torchvision's `vgg19().features`, with its initialisation.

    Built here rather than through `vgg19()` to skip its 100M-parameter classifier; module
    indices (hence state-dict keys) are the same as torchvision's.
    """
    layers: list[nn.Module] = []
    width = 3
    for item in _VGG19_CFG:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            conv = nn.Conv2d(width, int(item), kernel_size=3, padding=1)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.ReLU(inplace=True)]
            width = int(item)
    return nn.Sequential(*layers)[:end]


def _retained_features(end: int) -> Callable[[dict[str, Tensor]], dict[str, Tensor]]:
    """Remap for a weights file: keep `features.N.*` with N < end, drop deeper layers and the
    classifier, and accept files saved from `vgg.features` (keys `N.*`)."""

    def remap(state: dict[str, Tensor]) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for key, value in state.items():
            key = key.removeprefix("module.")
            if re.match(r"^\d+\.", key):
                key = "features." + key
            match = re.match(r"^features\.(\d+)\.", key)
            if (match and int(match.group(1)) >= end) or key.startswith("classifier."):
                continue
            out[key] = value
        return out

    return remap


class PerceptualLoss(nn.Module):
    """`weight` x L1/MSE distance between frozen VGG19 features of SR and HR images.

    `weights`: `imagenet` (torchvision's VGG19_Weights.IMAGENET1K_V1, cache or download),
    `random`/`none`, or a path to a state dict: either a full torchvision VGG19 file or one holding
    only `features.N.*` (or `N.*`) keys up to the chosen layer. `pretrained_loaded` records which.

    The VGG is held outside the module tree: it never appears in `parameters()` or `state_dict()`
    (checkpoints stay small and load whatever `weights` is given), yet it follows `.to()`,
    `.cuda()` and `.half()`, and it always stays in eval mode with gradients off.
    """

    def __init__(
        self,
        layer: str = "conv5_4",
        weights: str = "imagenet",
        criterion: str = "l1",
        weight: float = 1.0,
        before_activation: bool = True,
    ) -> None:
        super().__init__()
        if layer not in VGG19_LAYERS:
            raise LensexpError(
                f"{LAYER_OPTION}={layer}: not a VGG19 conv layer; use one of "
                f"{'|'.join(VGG19_LAYERS)}."
            )
        weights = str(weights)
        if weights == "auto":
            raise LensexpError(
                f"{WEIGHTS_OPTION}=auto: a perceptual loss must not silently fall back to a random "
                f"VGG; use {WEIGHTS_OPTION}=imagenet, a path to VGG19 weights, or random."
            )
        self.layer = layer
        self.weights = weights
        self.criterion = check_criterion(criterion, "loss.perceptual.criterion")
        self.weight = float(weight)
        self.before_activation = bool(before_activation)

        end = VGG19_LAYERS[layer] + (1 if self.before_activation else 2)
        if weights == "imagenet":
            vgg = torchvision.models.vgg19()
            self.pretrained_loaded = load_pretrained(
                vgg, weights, torchvision.models.VGG19_Weights.IMAGENET1K_V1, WEIGHTS_OPTION
            )
            features = vgg.features[:end]
        else:
            holder = nn.Module()
            holder.features = vgg19_features(end)
            # A path goes through the same loader; the enum is only used for auto/imagenet.
            self.pretrained_loaded = load_pretrained(
                holder,
                weights,
                torchvision.models.VGG19_Weights.IMAGENET1K_V1,
                WEIGHTS_OPTION,
                remap=_retained_features(end),
            )
            features = holder.features
        features.eval().requires_grad_(False)
        # Not registered as a submodule on purpose (see the class docstring).
        object.__setattr__(self, "vgg", features)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _apply(self, fn: Callable, recurse: bool = True) -> PerceptualLoss:  # type: ignore[override]
        super()._apply(fn, recurse)
        self.vgg._apply(fn)
        return self

    def features(self, x: Tensor) -> Tensor:
        """VGG features of images in [0, 1] with 1 or 3 channels."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != 3:
            raise ValueError(f"PerceptualLoss needs 1- or 3-channel images, got {x.shape[1]}")
        return self.vgg((x - self.mean) / self.std)

    def forward(self, sr: Tensor, hr: Tensor) -> Tensor:
        with torch.no_grad():
            target = self.features(hr)
        return self.weight * distance(self.features(sr), target, self.criterion)

    def extra_repr(self) -> str:
        return (
            f"layer={self.layer}, before_activation={self.before_activation}, "
            f"criterion={self.criterion}, weight={self.weight}, weights={self.weights}, "
            f"pretrained_loaded={self.pretrained_loaded}"
        )
