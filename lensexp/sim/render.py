"""Imaging with lenstronomy: pixel grids, PSFs, noise, normalisation and LR degradation.

A `Camera` is one instrument set-up (a preset's `instrument` section). It keeps one
lenstronomy ImageModel per list of lens-model names, because building one is far slower
than rendering with it and a class always uses the same list (e.g. SIE + SHEAR + 100 masses).
"""

from __future__ import annotations

import importlib
import math

import numpy as np

from lensexp.errors import LensexpError
from lensexp.sim.physics import LensSystem, draw


class Camera:
    """Renders lens systems for one `instrument` section (type `simple` or `observation`)."""

    def __init__(self, inst: dict, where: str = "instrument"):
        from lenstronomy.LightModel.light_model import LightModel

        self.inst = inst
        self.where = where
        self.num_pix = int(inst["num_pix"])
        self.kind = inst["type"]
        self._models: dict[tuple[str, ...], object] = {}
        self._source_model = LightModel(["SERSIC_ELLIPSE"])
        if self.kind == "simple":
            self.pixel_scale = float(inst["pixel_scale"])
            self._band = None
            self._data, self._psf = self._simple_data_psf()
        else:
            self._band = self._observation_band()
            self.pixel_scale = float(self._band.pixel_scale)
            self._data, self._psf = self._band.data_class, self._band.psf_class

    # ------------------------------------------------------------------ set-up
    def _simple_data_psf(self):
        import lenstronomy.Util.util as util
        from lenstronomy.Data.imaging_data import ImageData
        from lenstronomy.Data.psf import PSF

        _, _, ra0, dec0, _, _, pix2angle, _ = util.make_grid_with_coordtransform(
            num_pix=self.num_pix, delta_pix=self.pixel_scale, subgrid_res=1, inverse=False
        )
        data = ImageData(
            image_data=np.zeros((self.num_pix, self.num_pix)),
            ra_at_xy_0=ra0,
            dec_at_xy_0=dec0,
            transform_pix2angle=pix2angle,
        )
        fwhm = float(self.inst["psf_fwhm"])
        if fwhm > 0:
            psf = PSF(
                psf_type="GAUSSIAN",
                fwhm=fwhm,
                pixel_size=self.pixel_scale,
                truncation=float(self.inst["psf_truncation"]),
            )
        else:
            psf = PSF(psf_type="NONE")
        return data, psf

    def _observation_band(self):
        """lenstronomy's instrument + observing conditions (ObservationConfig) as a DataAPI."""
        from lenstronomy.SimulationAPI.data_api import DataAPI

        name = self.inst["telescope"]
        try:
            module = importlib.import_module(f"lenstronomy.SimulationAPI.ObservationConfig.{name}")
            telescope = getattr(module, name)
        except (ImportError, AttributeError) as err:
            raise LensexpError(
                f"simulator setting '{self.where}.telescope' = {name!r}: not a lenstronomy "
                "ObservationConfig (e.g. Euclid, HST, LSST, Roman, DES, JWST)."
            ) from err
        kwargs = {"band": self.inst["band"]}
        for key in ("psf_type", "coadd_years"):
            if self.inst.get(key) is not None:
                kwargs[key] = self.inst[key]
        try:
            # dict() copy: some configs (HST) hand out their module-level dict.
            single_band = dict(telescope(**kwargs).kwargs_single_band())
        except ValueError as err:
            raise LensexpError(f"simulator settings '{self.where}' for {name}: {err}") from err
        single_band.update(self.inst.get("settings") or {})
        try:
            return DataAPI(self.num_pix, **single_band)
        except (TypeError, ValueError) as err:
            raise LensexpError(f"simulator setting '{self.where}.settings': {err}") from err

    def _image_model(self, lens_models: tuple[str, ...]):
        model = self._models.get(lens_models)
        if model is None:
            from lenstronomy.ImSim.image_model import ImageModel
            from lenstronomy.LensModel.lens_model import LensModel

            ss = int(self.inst.get("supersampling", 1))
            model = ImageModel(
                self._data,
                self._psf,
                lens_model_class=LensModel(list(lens_models)),
                source_model_class=self._source_model,
                lens_light_model_class=self._source_model,
                kwargs_numerics={"supersampling_factor": ss, "supersampling_convolution": False},
            )
            self._models[lens_models] = model
        return model

    # ------------------------------------------------------------------ imaging
    def conditions(self, rng: np.random.Generator) -> dict:
        """Observing conditions of one image: exposure time and background rms.

        Drawn first from the image's noise generator, so they can be recomputed for the
        manifest without rendering.
        """
        if self.kind == "simple":
            return {
                "exposure_time": 10.0 ** draw(rng, self.inst["log10_exposure_time"]),
                "background_rms": draw(rng, self.inst["background_rms"]),
            }
        return {
            "exposure_time": float(self._band.exposure_time),
            "background_rms": float(self._band.background_noise),
        }

    def source_kwargs(self, kwargs_source: dict, what: str = "source") -> dict:
        """lenstronomy Sersic kwargs, converting an apparent magnitude to an amplitude."""
        kw = dict(kwargs_source)
        magnitude = kw.pop("magnitude", None)
        if magnitude is not None:
            if self._band is None:
                raise LensexpError(
                    f"{what}.magnitude needs {self.where}.type=observation (a zero point); "
                    f"use {what}.amp with a simple instrument."
                )
            norm = self._source_model.total_flux([dict(kw, amp=1.0)], norm=True, k=0)[0]
            kw["amp"] = float(self._band.magnitude2cps(magnitude) / norm)
        return kw

    def model_image(self, system: LensSystem) -> np.ndarray:
        """Noise-free image (flux per pixel) of `system`: lensed source plus any lens light."""
        model = self._image_model(system.lens_models())
        light = system.kwargs_lens_light
        return np.asarray(
            model.image(
                system.lens_kwargs(),
                [self.source_kwargs(system.kwargs_source)],
                kwargs_lens_light=[self.source_kwargs(light, "lens_light")] if light else None,
                lens_light_add=light is not None,
            ),
            dtype=np.float64,
        )

    def observe(self, model: np.ndarray, cond: dict, rng: np.random.Generator) -> np.ndarray:
        """Add the instrument's noise for conditions `cond` to a model image (randomness from `rng`)."""
        noise = self.inst["noise"]
        if noise == "none":
            return model.copy()
        if self.kind == "observation":
            band = self._band
            return (
                model
                + rng.standard_normal(model.shape) * band.background_noise
                + rng.standard_normal(model.shape) * band.flux_noise(model)
            )
        exposure_time, bkg_rms = cond["exposure_time"], cond["background_rms"]
        # Gaussian approximations of the source's Poisson noise and of the background,
        # as lenstronomy's image_util.add_poisson / add_background compute them.
        poisson = np.sqrt(np.abs(model) / exposure_time) * rng.standard_normal(model.shape)
        background = bkg_rms * rng.standard_normal(model.shape)
        noisy = model + poisson + background
        if noise == "gaussian":
            return noisy
        # DeepLense Model I then draws Poisson counts of the noisy image (so photon noise is
        # applied twice); kept because the public data were made this way.
        return rng.poisson(np.clip(exposure_time * noisy, 0.0, None)).astype(np.float64)

    def render(self, system: LensSystem, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        """Noisy, min-max normalised image of `system`, and the observing conditions used."""
        cond = self.conditions(rng)
        return normalise(self.observe(self.model_image(system), cond, rng)), cond


def normalise(image: np.ndarray) -> np.ndarray:
    """Min-max normalise to [0, 1] (a constant image becomes zeros)."""
    lo, hi = float(image.min()), float(image.max())
    if not math.isfinite(lo) or not math.isfinite(hi):
        raise LensexpError(
            "simulated image has NaN/Inf pixels; check the source and lens settings."
        )
    if hi <= lo:
        return np.zeros_like(image)
    return (image - lo) / (hi - lo)


def downsample(
    hr: np.ndarray,
    factor: int,
    method: str,
    blur_sigma: float,
    noise_rms: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """LR image from a normalised HR one: optional Gaussian blur, downsampling, noise, clip to [0, 1].

    The result keeps the HR intensity scale (it is not re-normalised), so LR and HR compare
    pixel for pixel after upsampling.
    """
    image = hr
    if blur_sigma > 0:
        from scipy.ndimage import gaussian_filter

        image = gaussian_filter(image, sigma=blur_sigma, mode="nearest")
    if method == "area":
        n = image.shape[0] // factor
        image = image.reshape(n, factor, n, factor).mean(axis=(1, 3))
    else:
        import torch
        import torch.nn.functional as F  # noqa: N812

        t = torch.from_numpy(np.ascontiguousarray(image))[None, None]
        size = (image.shape[0] // factor, image.shape[1] // factor)
        image = (
            F.interpolate(t, size=size, mode="bicubic", align_corners=False, antialias=True)[0, 0]
            .numpy()
            .astype(np.float64)
        )
    if noise_rms > 0:
        image = image + noise_rms * rng.standard_normal(image.shape)
    return np.clip(image, 0.0, 1.0)
