"""Super-resolution metrics: lensexp's one stated definition of MSE, PSNR and SSIM.

Definition (every SR number lensexp reports, models and the bicubic baseline alike):

- The SR output is clamped to [0, 1] before scoring; the HR target is used as stored (the
  datasets are min-max normalised to [0, 1]). No border is cropped; all channels are used.
- Each metric is computed per image (in float64), then averaged over all images of the split
  (not per batch).
- MSE: mean of (sr - hr)^2 over the pixels of one image.
- PSNR: 10 log10(1 / MSE) in dB with peak 1 (data range 1). The MSE is floored at 1e-10, so an
  exact reconstruction scores 100 dB instead of infinity, which would swamp the mean.
- SSIM: torchmetrics' `structural_similarity_index_measure` with an 11x11 Gaussian window,
  sigma 1.5, K1 0.01, K2 0.03, data range 1 (C1 = 1e-4, C2 = 9e-4). The SSIM map covers the whole
  image, the window reaching past the border into a 5-pixel reflection padding, and is averaged
  over the image (and channels).
- Baseline: `bicubic_upsample` (torch bicubic interpolation, align_corners=False, clamped to
  [0, 1]) of the LR input, scored the same way.

Science metrics (`per_image_metrics(..., arc_threshold=t)`, what `evaluate.py` reports):

- Arc mask: the pixels (of every channel) where the HR image exceeds `t`, by default
  `ARC_THRESHOLD` = 0.1 of the [0, 1] range: the lensed arcs and the lens, not the sky.
- `psnr_arc`: PSNR of the MSE over the mask's pixels only (same floor and peak as above).
- `ssim_arc`: the mean of the SSIM map above (the same window, so its values near the arc still
  see the surrounding sky) over the mask's pixels.
- An image whose mask is empty has NaN for both; means over images skip NaN.
- `flux_ratio`: total SR flux / total HR flux of the image (sums of pixel values, SR clamped as
  above); 1 is flux conserved. NaN for an HR image whose total is 0.

`SRMetrics` accumulates per-image sums and counts as torchmetrics states reduced by summation, so
the mean is exact over all images and across devices.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.image import structural_similarity_index_measure

MSE_FLOOR = 1e-10  # PSNR cap: 10 log10(1 / 1e-10) = 100 dB
METRICS = ("mse", "psnr", "ssim")
SCIENCE_METRICS = ("psnr_arc", "ssim_arc", "flux_ratio")
ARC_THRESHOLD = 0.1  # arc mask: HR pixels above this fraction of the [0, 1] range


def bicubic_upsample(lr: Tensor, scale: int) -> Tensor:
    """Bicubic upsampling of (N, C, H, W) images by `scale`, clamped to [0, 1] (the baseline)."""
    up = F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False)
    return up.clamp(0.0, 1.0)


def per_image_metrics(
    sr: Tensor, hr: Tensor, *, arc_threshold: float | None = None
) -> dict[str, Tensor]:
    """MSE, PSNR and SSIM of each image in (N, C, H, W) batches, by the module's definition; with
    `arc_threshold`, also `psnr_arc`, `ssim_arc` and `flux_ratio` (see the module docstring)."""
    if sr.shape != hr.shape or sr.ndim != 4:
        raise ValueError(
            f"SR metrics need equal (N, C, H, W) shapes, got {tuple(sr.shape)} and {tuple(hr.shape)}"
        )
    # float64: SSIM's variances (E[x^2] - E[x]^2) lose about 1e-4 to cancellation in float32.
    dtype = torch.float32 if sr.device.type == "mps" else torch.float64
    sr = sr.detach().to(dtype).clamp(0.0, 1.0)
    hr = hr.detach().to(dtype)
    squared_error = (sr - hr).pow(2)
    mse = squared_error.mean(dim=(1, 2, 3))
    ssim, ssim_map = structural_similarity_index_measure(
        sr,
        hr,
        gaussian_kernel=True,
        sigma=1.5,
        kernel_size=11,
        data_range=1.0,
        k1=0.01,
        k2=0.03,
        reduction="none",
        return_full_image=True,
    )
    values = {"mse": mse, "psnr": _psnr(mse), "ssim": ssim}
    if arc_threshold is not None:
        mask = arc_mask(hr, arc_threshold)
        values["psnr_arc"] = _psnr(masked_mean(squared_error, mask))
        values["ssim_arc"] = masked_mean(ssim_map, mask)
        values["flux_ratio"] = flux_ratio(sr, hr)
    return values


def _psnr(mse: Tensor) -> Tensor:
    """PSNR in dB with peak 1 of per-image MSEs, floored at MSE_FLOOR (NaN stays NaN)."""
    return 10.0 * torch.log10(1.0 / mse.clamp_min(MSE_FLOOR))


def arc_mask(hr: Tensor, threshold: float = ARC_THRESHOLD) -> Tensor:
    """Boolean (N, C, H, W) mask of the HR pixels above `threshold` (the arcs, not the sky)."""
    return hr > threshold


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Per-image mean of (N, C, H, W) `values` over the pixels of `mask`: (N,), NaN for an image
    with an empty mask."""
    count = mask.sum(dim=(1, 2, 3))
    total = (values * mask).sum(dim=(1, 2, 3))
    return torch.where(count > 0, total / count.clamp_min(1), math.nan)


def flux_ratio(sr: Tensor, hr: Tensor) -> Tensor:
    """Total SR flux over total HR flux of each (N, C, H, W) image: (N,), NaN where the HR
    total is 0. Pass the SR image as scored (clamped to [0, 1])."""
    hr_total = hr.sum(dim=(1, 2, 3))
    return torch.where(hr_total != 0, sr.sum(dim=(1, 2, 3)) / hr_total, math.nan)


class SRMetrics(Metric):
    """Mean per-image MSE, PSNR and SSIM over every image seen; `compute()` returns a dict."""

    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in METRICS:
            # float64 sums: thousands of ~40 dB values lose digits in float32.
            self.add_state(
                f"{name}_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum"
            )
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, sr: Tensor, hr: Tensor) -> None:
        """Add a batch of SR outputs and HR targets, both (N, C, H, W)."""
        values = per_image_metrics(sr, hr)
        for name in METRICS:
            state = getattr(self, f"{name}_sum")
            setattr(self, f"{name}_sum", state + values[name].sum().to(state.dtype))
        self.count += sr.shape[0]

    def compute(self) -> dict[str, Tensor]:
        """{"mse", "psnr", "ssim"}: means over images (float32 tensors; NaN before any update)."""
        count = self.count.to(torch.float64)
        return {name: (getattr(self, f"{name}_sum") / count).to(torch.float32) for name in METRICS}
