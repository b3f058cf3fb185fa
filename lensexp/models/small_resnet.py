"""`SmallResNet`: a ResNet made for lensing images of one band (or a few) at native resolution.

torchvision's ImageNet networks expect three channels and (for their speed) strong early
downsampling made for 224 px photographs. A lensing image is one band of 150 px whose signal
(subhalo or vortex distortions of the ring) is a few pixels wide; this network takes the bands as
they are, quarters the resolution in its stem (conv and max-pool) and halves it once per later
stage, and is small enough to train from scratch on a CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from lensexp.checks import check_int
from lensexp.errors import LensexpError


class BasicBlock(nn.Module):
    """Two 3x3 conv + BatchNorm layers with an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        # The residual branch starts at zero, so each block starts as its shortcut: a deep
        # network then trains like a shallow one at first (Goyal et al. 2017).
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """(N, in_channels, H, W) -> logits (N, num_classes), for any H, W.

    - `widths`: channels of each stage; the first stage keeps the stem's resolution, each
      later one halves it.
    - `n_blocks`: basic blocks per stage (as many entries as `widths`).
    - `stem_stride`: stride of the 3x3 stem conv (2: 150 px -> 75 px); `stem_pool`: a 3x3
      max-pool of stride 2 after it (ResNet's: 75 -> 38 px into the first stage).
    - `dropout`: probability of a dropout before the final linear layer `fc`, or None.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 3,
        widths: Sequence[int] = (32, 64, 128, 256),
        n_blocks: Sequence[int] = (1, 1, 1, 1),
        stem_stride: int = 2,
        stem_pool: bool = True,
        dropout: float | None = None,
    ) -> None:
        super().__init__()
        widths, n_blocks = [int(w) for w in widths], [int(b) for b in n_blocks]
        if not widths or len(widths) != len(n_blocks):
            raise LensexpError(
                f"model.architecture.widths={widths} and .n_blocks={n_blocks}: give one number of "
                "blocks per stage (equal, non-empty lists)."
            )
        for i, (width, blocks) in enumerate(zip(widths, n_blocks, strict=True)):
            check_int(f"model.architecture.widths[{i}]", width, 1)
            check_int(f"model.architecture.n_blocks[{i}]", blocks, 1)
        check_int("model.architecture.stem_stride", stem_stride, 1)
        stem: list[nn.Module] = [
            nn.Conv2d(in_channels, widths[0], 3, stem_stride, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        ]
        if stem_pool:
            stem.append(nn.MaxPool2d(3, 2, 1))
        self.stem = nn.Sequential(*stem)
        stages: list[nn.Module] = []
        channels = widths[0]
        for i, (width, blocks) in enumerate(zip(widths, n_blocks, strict=True)):
            layers = []
            for j in range(blocks):
                layers.append(BasicBlock(channels, width, 2 if i > 0 and j == 0 else 1))
                channels = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(float(dropout)) if dropout is not None else nn.Identity()
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        """Logits (N, num_classes) of images (N, in_channels, H, W)."""
        features = self.pool(self.stages(self.stem(x))).flatten(1)
        return self.fc(self.dropout(features))
