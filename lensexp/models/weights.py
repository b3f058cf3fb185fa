"""Pretrained weights: torchvision's own loading code, a local state-dict file, or none.

Every pretrained option in lensexp (`model.pretrained`, `loss.weights`) takes the same values:
`auto`, `imagenet`, `none`/`random`, or a path to a state dict. One function resolves them all.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import WeightsEnum

from lensexp.errors import LensexpError

log = logging.getLogger(__name__)

NO_WEIGHTS = ("none", "random")
TORCHVISION_WEIGHTS = ("auto", "imagenet")
# Every value of a pretrained option that is not a path to a file.
KEYWORDS = (*TORCHVISION_WEIGHTS, *NO_WEIGHTS)
# The statistics torchvision's ImageNet weights were trained with (RGB).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Without this, a machine whose network blackholes packets would hang on the download.
DOWNLOAD_TIMEOUT_S = 20.0


def load_torch_file(path: str | os.PathLike, option: str, remedy: str) -> Any:
    """`torch.load` that runs no code: tensors, containers and plain data only.

    A file that pickles anything else (which could execute code while loading) is refused with
    one line; `remedy` says what to pass instead when the file does not exist.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise LensexpError(f"{option}={path}: no such file. {remedy}")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        raise LensexpError(
            f"{option}={path}: refused, the file pickles "
            f"{found.group(1) if found else 'an object'}, not only tensors and plain data, and "
            f"loading it could run code. Where you trust the file, re-save what it holds as "
            f"plain data, e.g. torch.save(model.state_dict(), PATH)."
        ) from None
    except Exception as err:  # torch raises many types for a truncated or foreign file
        first = str(err).strip().split(". ")[0].splitlines()
        reason = first[0] if first else type(err).__name__
        size = file.stat().st_size
        raise LensexpError(
            f"{option}={path}: not a readable torch file ({reason}; {size} bytes): truncated "
            f"or not written by torch.save; copy it again or give another file."
        ) from None


def read_state_dict(path: str | os.PathLike, option: str) -> dict[str, torch.Tensor]:
    """Load a state dict from `path`, unwrapping Lightning checkpoints and `{"state_dict": ...}`."""
    obj = load_torch_file(path, option, "Give a state-dict file, or one of auto|imagenet|none.")
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise LensexpError(f"{option}={path}: the file holds no tensor state dict.")
    return dict(obj)


def fetch_torchvision_weights(weights: WeightsEnum) -> dict[str, torch.Tensor]:
    """torchvision's loader: the TORCH_HOME hub cache first, then the network."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    finally:
        socket.setdefaulttimeout(previous)


def load_pretrained(
    model: nn.Module,
    spec: str | None,
    weights: WeightsEnum | None,
    option: str,
    remap: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
    offer_none: bool = True,
) -> bool:
    """Fill `model` according to `spec`; return whether pretrained weights were loaded.

    `auto` tries torchvision's weights and, when they cannot be had, warns and keeps the random
    initialisation; `imagenet` insists; a path loads that file (after `remap`, if given).
    `offer_none`: whether the remedy for missing weights may suggest `OPTION=none` (not for a
    perceptual loss, which is meaningless without its trained network).
    """
    spec = "none" if spec is None else str(spec)
    if spec in NO_WEIGHTS:
        return False
    if spec in TORCHVISION_WEIGHTS:
        assert weights is not None, f"{option}={spec}: no torchvision weights for this network"
        try:
            state = fetch_torchvision_weights(weights)
        except Exception as err:  # URLError, timeouts, hash mismatch: all mean "not available"
            hub = Path(torch.hub.get_dir()) / "checkpoints"
            remedy = (
                f"put {Path(weights.url).name} in {hub} (set TORCH_HOME to move that cache), "
                f"or pass a local file with {option}=/path/to/weights.pth"
                + (f", or {option}=none" if offer_none else "")
            )
            if spec == "imagenet":
                raise LensexpError(
                    f"{option}=imagenet: cannot load {weights} ({type(err).__name__}): {remedy}."
                ) from err
            log.warning(
                "\n%s\n!! %s=auto: ImageNet weights %s are not available (%s).\n"
                "!! Training FROM SCRATCH; recorded as pretrained_loaded=false. To use them, %s.\n%s",
                "!" * 78,
                option,
                weights,
                type(err).__name__,
                remedy,
                "!" * 78,
            )
            return False
    else:
        state = read_state_dict(spec, option)
        if remap is not None:
            state = remap(state)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise LensexpError(
            f"{option}={spec}: the weights do not fit this network "
            f"({first[0] if first else err}); check the architecture options."
        ) from err
    return True
