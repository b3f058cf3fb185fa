"""SRResNet generator (Ledig et al. 2017) for single-channel lensing images, with the knobs exposed.

Two layouts share the skeleton: a 9x9 head conv + activation; `n_blocks` residual blocks
x + second(first(x)), each half a 3x3 conv [+BN]; a 3x3 post-body conv [+BN] whose output is
added to the head's output; one x2 upsampling stage (conv, pixel shuffle or alternative, then
activation) per factor of two; a tail conv.

- `layout="reference"` (the default): the DeepLense Test VI reference generator. An activation
  also follows the second conv of each block and the post-body conv; 3x3 tail conv.
- `layout="srgan"`: the SRGAN paper's generator. No activation after a block's second conv or
  after the post-body conv; 9x9 tail conv. The paper uses it with batch norm
  (`batch_norm=true`) and PReLU.

PReLU has one slope per channel everywhere (`nn.PReLU(num_parameters=channels)`), as in the
reference. With `global_residual` the bicubic-upsampled input is added to the output, so the
network only learns the correction to bicubic interpolation.

The reference solution published its generator (1 block, 64 channels, no batch norm, PReLU,
pixel shuffle, scale 2) as a plain state dict with its own names; `remap_reference_state_dict`
translates them, and `load_generator_weights` loads such a file or one of lensexp's own
checkpoints.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from collections.abc import Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from lensexp.checks import check_choice, check_int
from lensexp.errors import LensexpError
from lensexp.models.weights import NO_WEIGHTS, read_state_dict

SCALES = (2, 4)
ACTIVATIONS = ("prelu", "leakyrelu", "relu")
UPSAMPLERS = ("pixelshuffle", "transposed", "upsample_conv")
LAYOUTS = ("reference", "srgan")
# Prefix of the option names in error messages (the Hydra path of the generator's config).
OPTION = "model.generator"


def make_activation(name: str, channels: int) -> nn.Module:
    """The activation called `name` (prelu|leakyrelu|relu) for `channels` feature maps."""
    check_choice(f"{OPTION}.activation", name, ACTIVATIONS)
    if name == "prelu":
        # One slope per channel, as the reference generator (and the SRGAN paper) has it.
        return nn.PReLU(num_parameters=channels)
    if name == "leakyrelu":
        # BasicSR's MSRResNet slope.
        return nn.LeakyReLU(0.1)
    return nn.ReLU()


def conv_unit(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    batch_norm: bool,
    activation: str | None,
) -> nn.Sequential:
    """`conv` (same padding) [+ `bn`] [+ `act`], as a Sequential with those child names."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    # A bias before batch norm is cancelled by its mean subtraction.
    layers["conv"] = nn.Conv2d(
        in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=not batch_norm
    )
    if batch_norm:
        layers["bn"] = nn.BatchNorm2d(out_channels)
    if activation is not None:
        layers["act"] = make_activation(activation, out_channels)
    return nn.Sequential(layers)


class ResidualBlock(nn.Module):
    """x + second(first(x)), each a 3x3 conv [+BN] + activation (`second` without one when
    `activate_second` is false, as in SRGAN)."""

    def __init__(
        self, channels: int, batch_norm: bool, activation: str, activate_second: bool = True
    ) -> None:
        super().__init__()
        self.first = conv_unit(channels, channels, 3, batch_norm, activation)
        self.second = conv_unit(
            channels, channels, 3, batch_norm, activation if activate_second else None
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.second(self.first(x))


def upsample_stage(channels: int, upsampler: str, activation: str) -> nn.Sequential:
    """One x2 upsampling stage; every kind keeps `channels` channels and ends in `act`."""
    check_choice(f"{OPTION}.upsampler", upsampler, UPSAMPLERS)
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if upsampler == "pixelshuffle":
        layers["conv"] = nn.Conv2d(channels, 4 * channels, 3, padding=1)
        layers["shuffle"] = nn.PixelShuffle(2)
    elif upsampler == "transposed":
        # kernel 4, stride 2, padding 1 doubles the size exactly; kernel divisible by the stride
        # limits checkerboard artefacts.
        layers["conv"] = nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1)
    else:
        # Resize-then-convolve (Odena et al. 2016) avoids checkerboard artefacts altogether.
        layers["resize"] = nn.Upsample(scale_factor=2, mode="nearest")
        layers["conv"] = nn.Conv2d(channels, channels, 3, padding=1)
    layers["act"] = make_activation(activation, channels)
    return nn.Sequential(layers)


class SRResNet(nn.Module):
    """SRResNet generator: (N, in_channels, H, W) -> (N, out_channels, scale*H, scale*W).

    The DeepLense reference generator is `SRResNet(scale=2, n_blocks=1, batch_norm=False,
    activation="prelu")`; the SRGAN paper's is `SRResNet(layout="srgan", batch_norm=True)`.
    """

    def __init__(
        self,
        scale: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        n_blocks: int = 16,
        channels: int = 64,
        batch_norm: bool = False,
        activation: str = "prelu",
        upsampler: str = "pixelshuffle",
        global_residual: bool = False,
        layout: str = "reference",
    ) -> None:
        super().__init__()
        check_choice(f"{OPTION}.layout", layout, LAYOUTS)
        check_choice(f"{OPTION}.scale", scale, SCALES)
        check_choice(f"{OPTION}.activation", activation, ACTIVATIONS)
        check_choice(f"{OPTION}.upsampler", upsampler, UPSAMPLERS)
        check_int(f"{OPTION}.in_channels", in_channels, 1)
        check_int(f"{OPTION}.out_channels", out_channels, 1)
        check_int(f"{OPTION}.n_blocks", n_blocks, 0)
        check_int(f"{OPTION}.channels", channels, 1)
        if global_residual and in_channels != out_channels:
            raise LensexpError(
                f"{OPTION}.global_residual=true needs in_channels == out_channels "
                f"(got {in_channels} and {out_channels}); set {OPTION}.global_residual=false."
            )
        self.scale = scale
        self.global_residual = global_residual
        reference = layout == "reference"

        self.head = conv_unit(in_channels, channels, 9, False, activation)
        self.body = nn.Sequential(
            *(ResidualBlock(channels, batch_norm, activation, reference) for _ in range(n_blocks))
        )
        self.body_conv = conv_unit(
            channels, channels, 3, batch_norm, activation if reference else None
        )
        self.upsample = nn.Sequential(
            *(
                upsample_stage(channels, upsampler, activation)
                for _ in range(scale.bit_length() - 1)
            )
        )
        tail_kernel = 3 if reference else 9
        self.tail = nn.Conv2d(channels, out_channels, tail_kernel, padding=tail_kernel // 2)

    def forward(self, x: Tensor) -> Tensor:
        head = self.head(x)
        out = self.tail(self.upsample(self.body_conv(self.body(head)) + head))
        if self.global_residual:
            # Not clamped: the network corrects bicubic's overshoot itself.
            out = out + F.interpolate(
                x, scale_factor=self.scale, mode="bicubic", align_corners=False
            )
        return out


# Reference module names -> SRResNet names; applied in order to each key.
_REFERENCE_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^first_conv\.cnn\.", "head.conv."),
    (r"^first_conv\.actication\.", "head.act."),
    (r"^res_blocks\.(\d+)\.b1\.cnn\.", r"body.\1.first.conv."),
    (r"^res_blocks\.(\d+)\.b1\.bn\.", r"body.\1.first.bn."),
    (r"^res_blocks\.(\d+)\.b1\.actication\.", r"body.\1.first.act."),
    (r"^res_blocks\.(\d+)\.b2\.cnn\.", r"body.\1.second.conv."),
    (r"^res_blocks\.(\d+)\.b2\.bn\.", r"body.\1.second.bn."),
    (r"^res_blocks\.(\d+)\.b2\.actication\.", r"body.\1.second.act."),
    (r"^first_conv\.bn\.", "head.bn."),
    # conv1 is either a wrapped block (conv1.cnn.*, conv1.actication.*) or a bare conv (conv1.*).
    (r"^conv1\.cnn\.", "body_conv.conv."),
    (r"^conv1\.bn\.", "body_conv.bn."),
    (r"^conv1\.actication\.", "body_conv.act."),
    # One stage is stored unindexed (upsampling.conv.*), several as upsampling.N.conv.*.
    (r"^upsampling\.(conv|activation|actication)\.", r"upsampling.0.\1."),
    (r"^upsampling\.(\d+)\.conv\.", r"upsample.\1.conv."),
    (r"^upsampling\.(\d+)\.(activation|actication)\.", r"upsample.\1.act."),
    (r"^last_conv\.", "tail."),
)


def remap_reference_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a DeepLense reference-generator state dict to SRResNet's parameter names.

    Keys it does not know (including SRResNet's own names) pass through unchanged, so a mixed or
    foreign file fails later with the offending names listed.
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        new = key.removeprefix("module.")  # saved from nn.DataParallel
        for pattern, repl in _REFERENCE_RENAMES:
            new = re.sub(pattern, repl, new)
        out[new] = value
    return out


def _strip_wrapper_prefix(state: dict[str, Tensor], expected: set[str]) -> dict[str, Tensor]:
    """Take the generator out of a larger checkpoint (e.g. `generator.head.conv.weight`).

    Chooses the shortest prefix under which every expected key is present, so a Lightning
    checkpoint of a whole training module yields its generator.
    """
    if expected <= state.keys():
        return state
    prefixes = {key[: -len(name)] for key in state for name in expected if key.endswith("." + name)}
    fitting = sorted((p for p in prefixes if all(p + name in state for name in expected)), key=len)
    if not fitting:
        return state
    prefix = fitting[0]
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def load_generator_weights(
    model: nn.Module, spec: str | os.PathLike | None, option: str = "model.pretrained"
) -> bool:
    """Load generator weights from `spec`; return whether weights were loaded.

    `spec` is `none`/`random` (keep the initialisation) or a state-dict file: the reference
    generator's names (see `remap_reference_state_dict`), SRResNet's own names, or a Lightning
    checkpoint holding the generator under some prefix. There are no ImageNet SR weights, so
    `auto`/`imagenet` are refused.
    """
    spec = "none" if spec is None else str(spec)
    if spec in NO_WEIGHTS:
        return False
    if spec in ("auto", "imagenet"):
        raise LensexpError(
            f"{option}={spec}: there are no ImageNet weights for the SR generator; give a "
            f"state-dict file ({option}=/path/to/generator.pth) or {option}=none."
        )
    state = remap_reference_state_dict(read_state_dict(spec, option))
    state = _strip_wrapper_prefix(state, set(model.state_dict()))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
        detail = "; ".join(lines[1:3]) if len(lines) > 1 else str(err)
        raise LensexpError(
            f"{option}={spec}: the weights do not fit this generator ({detail[:400]}); set the "
            f"{OPTION}.* architecture options (n_blocks, channels, batch_norm, activation, "
            f"upsampler, layout, scale) to those the file was trained with."
        ) from err
    return True
