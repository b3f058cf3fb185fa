"""SRGAN-style VGG-like discriminator that accepts any image size.

BasicSR's VGG-style discriminator flattens a fixed 4x4 map and so accepts only 128 or 256 px
inputs; here an adaptive average pool to `pool_size` x `pool_size` sits before the dense head, so
150 px lensing images (and 64 px crops) work unchanged.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from lensexp.checks import check_int

# Prefix of the option names in error messages (the Hydra path of the discriminator's config).
OPTION = "model.discriminator"


def _conv(in_channels: int, out_channels: int, stride: int, batch_norm: bool) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    layers["conv"] = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=not batch_norm)
    if batch_norm:
        layers["bn"] = nn.BatchNorm2d(out_channels)
    layers["act"] = nn.LeakyReLU(0.2)
    return nn.Sequential(layers)


class Discriminator(nn.Module):
    """(N, in_channels, H, W) -> (N, 1) real/fake logits.

    `n_stages` stages of (3x3 conv stride 1, 3x3 conv stride 2), each [+BN] + LeakyReLU(0.2), with
    `channels * 2**i` channels in stage i; as in SRGAN the very first conv has no batch norm.
    Then adaptive average pooling, Linear(-> `hidden`), LeakyReLU(0.2), Linear(-> 1).
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: int = 64,
        n_stages: int = 4,
        batch_norm: bool = True,
        pool_size: int = 4,
        hidden: int = 1024,
    ) -> None:
        super().__init__()
        check_int(f"{OPTION}.in_channels", in_channels, 1)
        check_int(f"{OPTION}.channels", channels, 1)
        check_int(f"{OPTION}.n_stages", n_stages, 1)
        check_int(f"{OPTION}.pool_size", pool_size, 1)
        check_int(f"{OPTION}.hidden", hidden, 1)
        stages = []
        width_in = in_channels
        for i in range(n_stages):
            width = channels * 2**i
            stages.append(
                nn.Sequential(
                    OrderedDict(
                        same=_conv(width_in, width, 1, batch_norm and i > 0),
                        down=_conv(width, width, 2, batch_norm),
                    )
                )
            )
            width_in = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(width_in * pool_size * pool_size, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.stages(x)))
