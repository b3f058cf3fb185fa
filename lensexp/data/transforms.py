"""Batch transforms that run on the training device after transfer (Lightning's
`on_after_batch_transfer`), so a GPU does the augmentation and the CPU workers only read.

Only physically valid augmentation is on by default: a lensing image has no preferred
orientation, so flips and 90-degree rotations give equally likely skies.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from lensexp.errors import LensexpError


def random_dihedral(*images: Tensor, flips: bool = True, rot90: bool = True) -> tuple[Tensor, ...]:
    """Apply the same random flip and 90-degree rotation per sample to every batch in `images`.

    All tensors are (N, C, H, W) with square images (sizes may differ, as for LR/HR pairs).
    Each sample is mirrored (last axis) with probability 1/2 if `flips`, then turned by a
    uniform number of quarter turns if `rot90`.
    """
    if not (flips or rot90):
        return images
    n = images[0].shape[0]
    device = images[0].device
    none = torch.zeros(n, dtype=torch.long, device=device)
    flip = (torch.rand(n, device=device) < 0.5).long() if flips else none
    turns = torch.randint(0, 4, (n,), device=device) if rot90 else none
    # One gather a batch: each of the 8 symmetries is a fixed permutation of the pixels, so a
    # sample's output is its pixels read in its symmetry's order (a third of the time of
    # flipping and rotating the batch in masked parts, and no wait for a GPU).
    choice = 4 * flip + turns
    out = []
    for x in images:
        n_images, channels, height, width = x.shape
        if height != width:
            raise ValueError(f"random_dihedral needs square images, got {height}x{width}")
        index = _dihedral_index(height, x.device)[choice]
        pixels = x.flatten(-2).gather(-1, index[:, None].expand(n_images, channels, -1))
        out.append(pixels.view_as(x))
    return tuple(out)


@functools.lru_cache(maxsize=16)
def _dihedral_index(size: int, device: torch.device) -> Tensor:
    """(8, size * size): for symmetry 4 * mirrored + quarter turns, the source of each pixel."""
    grid = torch.arange(size * size, device=device).view(size, size)
    return torch.stack(
        [
            torch.rot90(grid.flip(-1) if mirrored else grid, k, dims=(-2, -1)).reshape(-1)
            for mirrored in (0, 1)
            for k in range(4)
        ]
    )


def dihedral_views(x: Tensor) -> list[Tensor]:
    """The eight images of each square image under the symmetries of the square: the four
    90-degree rotations, each also mirrored; the first view is `x` itself."""
    views = []
    for k in range(4):
        turned = torch.rot90(x, k, dims=(-2, -1)) if k else x
        views += [turned, turned.flip(-1)]
    return views


def random_patches(lr: Tensor, hr: Tensor, size: int, scale: int) -> tuple[Tensor, Tensor]:
    """A random `size` x `size` patch of each LR image and the `scale`-times larger HR patch
    over the same sky (BasicSR's paired random crop), drawn per sample."""
    h, w = lr.shape[-2:]
    if size > min(h, w):
        raise LensexpError(
            f"data.patch_size={size}: larger than the {h}x{w} LR images; give at most {min(h, w)}, "
            f"or null to train on whole images."
        )
    n = lr.shape[0]
    tops = torch.randint(0, h - size + 1, (n,)).tolist()
    lefts = torch.randint(0, w - size + 1, (n,)).tolist()
    lr_patches = [
        x[..., t : t + size, s : s + size] for x, t, s in zip(lr, tops, lefts, strict=True)
    ]
    big = size * scale
    hr_patches = [
        x[..., t * scale : t * scale + big, s * scale : s * scale + big]
        for x, t, s in zip(hr, tops, lefts, strict=True)
    ]
    return torch.stack(lr_patches), torch.stack(hr_patches)


def random_rotation(x: Tensor, degrees: float) -> Tensor:
    """Rotate each sample by an angle uniform in [-degrees, degrees] (bilinear, zero fill)."""
    n = x.shape[0]
    angle = (torch.rand(n, device=x.device) * 2 - 1) * math.radians(degrees)
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def center_crop(x: Tensor, size: int) -> Tensor:
    """The central `size` x `size` pixels."""
    h, w = x.shape[-2:]
    if size > min(h, w):
        raise ValueError(f"center_crop {size} is larger than the {h}x{w} image")
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def _resize(x: Tensor, size: int | None) -> Tensor:
    if not size or tuple(x.shape[-2:]) == (size, size):
        return x
    # The antialiasing filter only changes a shrinking resize; growing (150 -> 224), torch's
    # antialiased kernel gives the plain bilinear result (within float rounding) at half speed.
    shrinking = size < max(x.shape[-2:])
    return F.interpolate(
        x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking
    )


class ClassificationTransform:
    """Per-batch augmentation (training only), then optional centre crop and resize (always).

    `random_center_crop` with probability `random_center_crop_p` (training only, per sample):
    the central crop of that size, resized back to the batch's output size (the DeepLense
    reference notebook's `RandomApply([CenterCrop(100)], p=0.4)`).
    """

    def __init__(
        self,
        flips: bool = True,
        rot90: bool = True,
        rotation_degrees: float = 0.0,
        center_crop: int | None = None,
        resize: int | None = None,
        random_center_crop: int | None = None,
        random_center_crop_p: float = 0.0,
    ) -> None:
        self.flips = flips
        self.rot90 = rot90
        self.rotation_degrees = float(rotation_degrees)
        self.crop = center_crop
        self.resize = resize
        self.random_crop = random_center_crop
        self.random_crop_p = float(random_center_crop_p)

    def __call__(self, x: Tensor, train: bool) -> Tensor:
        chosen = None
        if train:
            (x,) = random_dihedral(x, flips=self.flips, rot90=self.rot90)
            if self.rotation_degrees > 0:
                x = random_rotation(x, self.rotation_degrees)
            if self.random_crop and self.random_crop_p > 0:
                chosen = torch.rand(x.shape[0], device=x.device) < self.random_crop_p
        if self.crop:
            x = center_crop(x, self.crop)
        out = _resize(x, self.resize)
        if chosen is not None:
            # Every sample's crop is resized and the chosen ones kept: asking the device which
            # samples were chosen (`chosen.any()`, indexing by the mask) would wait for a GPU
            # once a batch. On a CPU the extra resizes cost no more than the masked copies did
            # (the reference recipe's transform, a batch of 50: 22-23 ms either way).
            zoomed = _resize(center_crop(x, self.random_crop), out.shape[-1])
            out = torch.where(chosen.view(-1, 1, 1, 1), zoomed, out)
        return out
