"""Perceptual (VGG19 feature) loss, BasicSR style: distance between VGG19 features of SR and HR.

The network is torchvision's `vgg19().features`, truncated at the named layer (`conv5_4` before
its ReLU is the SRGAN/ESRGAN choice), frozen and in eval mode. Images in [0, 1] with one channel
are repeated to three and normalised with the ImageNet mean and std, as VGG was trained.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

from lensexp.errors import LensexpError
from lensexp.losses.pixel import check_criterion, distance
from lensexp.models.weights import IMAGENET_MEAN, IMAGENET_STD, NO_WEIGHTS, load_pretrained

WEIGHTS_OPTION = "loss.weights"
LAYER_OPTION = "loss.perceptual.layer"
VGG19_WEIGHTS = torchvision.models.VGG19_Weights.IMAGENET1K_V1


def _vgg19_on_meta() -> torchvision.models.VGG:
    """torchvision's VGG19 with its tensors on the meta device: the architecture, no memory."""
    with torch.device("meta"):
        return torchvision.models.vgg19()


@functools.cache
def vgg19_layers() -> Mapping[str, int]:
    """conv<block>_<n> -> index of that conv in torchvision's `vgg19().features` (read-only).

    Read off the real module list: convs are counted within a block, and a block ends at its
    MaxPool2d.
    """
    names: dict[str, int] = {}
    block, n = 1, 0
    for index, layer in enumerate(_vgg19_on_meta().features):
        if isinstance(layer, nn.Conv2d):
            n += 1
            names[f"conv{block}_{n}"] = index
        elif isinstance(layer, nn.MaxPool2d):
            block, n = block + 1, 0
    return MappingProxyType(names)


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


def build_vgg19_features(end: int, weights: str) -> tuple[nn.Sequential, bool]:
    """torchvision's `vgg19().features[:end]` with `weights`, and whether they are pretrained.

    `random` keeps torchvision's own initialisation (building the whole VGG19, about 2 s). For
    `imagenet` and a path the network is built on the meta device and allocated uninitialised:
    the strict load that follows fills every tensor (VGG has no buffers), or raises.
    """
    if weights in NO_WEIGHTS:
        return torchvision.models.vgg19().features[:end], False
    vgg = _vgg19_on_meta()
    if weights == "imagenet":
        vgg.to_empty(device="cpu")
        loaded = load_pretrained(vgg, weights, VGG19_WEIGHTS, WEIGHTS_OPTION, offer_none=False)
        return vgg.features[:end], loaded
    holder = nn.Module()
    holder.features = vgg.features[:end].to_empty(device="cpu")
    # A path: the file may hold the whole VGG19 or only the features up to the layer.
    loaded = load_pretrained(
        holder, weights, VGG19_WEIGHTS, WEIGHTS_OPTION, remap=_retained_features(end)
    )
    return holder.features, loaded


class PerceptualLoss(nn.Module):
    """`weight` x L1/MSE distance between frozen VGG19 features of SR and HR images.

    `weights`: `imagenet` (torchvision's VGG19_Weights.IMAGENET1K_V1, cache or download),
    `random`/`none`, or a path to a state dict: either a full torchvision VGG19 file or one holding
    only `features.N.*` (or `N.*`) keys up to the chosen layer. `pretrained_loaded` records which.

    The VGG is an ordinary submodule `vgg` (so `.to()`, `.cuda()`, `.half()` move it), frozen
    (`requires_grad` off, so no optimizer of trainable parameters takes it) and kept in eval mode
    by `train()`. It is left out of `state_dict()` (checkpoints stay small and load whatever
    `weights` is given) and a state dict without it loads, strictly, leaving it as it is.
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
        layers = vgg19_layers()
        if layer not in layers:
            raise LensexpError(
                f"{LAYER_OPTION}={layer}: not a VGG19 conv layer; use one of {'|'.join(layers)}."
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

        # Each conv is followed by its ReLU: stop after the conv, or after the ReLU.
        end = layers[layer] + (1 if self.before_activation else 2)
        self.vgg, self.pretrained_loaded = build_vgg19_features(end, weights)
        self.vgg.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.register_state_dict_post_hook(_drop_vgg)
        self.register_load_state_dict_pre_hook(_keep_vgg)

    def train(self, mode: bool = True) -> PerceptualLoss:
        """Set the mode of the module as usual; the VGG stays in eval mode."""
        super().train(mode)
        self.vgg.eval()
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


def _drop_vgg(module: PerceptualLoss, state: dict[str, Any], prefix: str, metadata: Any) -> None:
    """state_dict post-hook: remove the VGG's entries (and their version metadata)."""
    vgg = f"{prefix}vgg."
    for key in [k for k in state if k.startswith(vgg)]:
        del state[key]
    versions = getattr(state, "_metadata", None)
    if versions is not None:
        for key in [k for k in versions if k == vgg[:-1] or k.startswith(vgg)]:
            del versions[key]


def _keep_vgg(module: PerceptualLoss, state: dict[str, Any], prefix: str, *args: Any) -> None:
    """load_state_dict pre-hook: a state dict without the VGG (as `state_dict()` writes them)
    loads the VGG's current tensors onto themselves, so a strict load reports nothing missing."""
    for name, tensor in module.vgg.state_dict(keep_vars=True).items():
        state.setdefault(f"{prefix}vgg.{name}", tensor)
