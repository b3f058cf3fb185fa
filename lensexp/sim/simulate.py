"""One image (classification) or one HR/LR pair (super-resolution) from (seed, class, index).

Each image gets its own `numpy.random.SeedSequence([seed, task, class, index])`, split into
independent streams for the macro model, the substructure, the HR noise and the LR
degradation. The files therefore do not depend on how work is split over processes or
machines, and the manifest can be rebuilt from the draws alone, without rendering.
"""

from __future__ import annotations

import numpy as np

from lensexp.errors import LensexpError
from lensexp.sim.physics import CLASSES, LensSystem, draw, sample_system
from lensexp.sim.render import Camera, downsample

TASKS = ("classification", "superres")
_TASK_CODE = {"classification": 1, "superres": 2}
_CLASS_CODE = {c: i for i, c in enumerate(CLASSES)}


def image_streams(seed: int, task: str, cls: str, index: int) -> list[np.random.Generator]:
    """The four generators of one image: macro model, substructure, HR noise, LR degradation."""
    ss = np.random.SeedSequence([seed, _TASK_CODE[task], _CLASS_CODE[cls], index])
    return [np.random.default_rng(s) for s in ss.spawn(4)]


class Simulator:
    """Renders the images of one task from a merged, checked preset (see `config.load_preset`)."""

    def __init__(self, cfg: dict, task: str):
        if task not in TASKS:
            raise LensexpError(f"task={task!r} is not one of {', '.join(TASKS)}.")
        has_sr = "superres" in cfg
        if task == "superres" and not has_sr:
            raise LensexpError(
                f"preset '{cfg['name']}' has no 'superres' section; use a super-resolution preset "
                "such as superres_mild or superres_render."
            )
        if task == "classification" and has_sr:
            raise LensexpError(
                f"preset '{cfg['name']}' is a super-resolution preset; use a classification "
                "preset (model_i, model_i_varied, model_i_tnfw, model_ii or model_iii)."
            )
        self.cfg = cfg
        self.task = task
        self.camera = Camera(cfg["instrument"])
        self.sr = cfg.get("superres")
        self.lr_camera = None
        if has_sr and self.sr["degradation"] == "render":
            self.lr_camera = Camera(self.sr["lr_instrument"], "superres.lr_instrument")
            self._check_same_field()

    def _check_same_field(self) -> None:
        hr, lr = self.camera, self.lr_camera
        fov_hr, fov_lr = hr.num_pix * hr.pixel_scale, lr.num_pix * lr.pixel_scale
        if abs(fov_hr - fov_lr) > 0.01 * fov_hr:
            raise LensexpError(
                f'HR field {fov_hr:.3f}" (instrument) and LR field {fov_lr:.3f}" '
                "(superres.lr_instrument) differ; set num_pix * pixel_scale equal for both."
            )

    @property
    def hr_shape(self) -> tuple[int, int, int]:
        return (1, self.camera.num_pix, self.camera.num_pix)

    @property
    def lr_shape(self) -> tuple[int, int, int]:
        if self.lr_camera is not None:
            return (1, self.lr_camera.num_pix, self.lr_camera.num_pix)
        n = self.camera.num_pix // int(self.sr["factor"])
        return (1, n, n)

    def system(
        self, cls: str, seed: int, index: int
    ) -> tuple[LensSystem, list[np.random.Generator]]:
        """The lens system of image `index` of class `cls`, and its remaining noise streams."""
        macro, sub, hr_rng, lr_rng = image_streams(seed, self.task, cls, index)
        return sample_system(cls, self.cfg, macro, sub), [hr_rng, lr_rng]

    def warm_up(self, classes: tuple[str, ...]) -> None:
        """Import lenstronomy's imaging code and build the image models these classes use.

        Done once in the parent before forking workers, so each worker does not repeat it.
        """
        for cls in classes:
            system, _ = self.system(cls, 0, 0)
            self.camera.model_image(system)
            if self.lr_camera is not None:
                self.lr_camera.model_image(system)

    def _lr_settings(self, rng: np.random.Generator) -> dict:
        return {
            "lr_blur_sigma": draw(rng, self.sr["blur_sigma"]),
            "lr_noise_rms": draw(rng, self.sr["noise_rms"]),
        }

    def describe(self, cls: str, seed: int, index: int) -> dict:
        """The manifest fields of one image or pair, from the draws alone (nothing rendered)."""
        system, (hr_rng, lr_rng) = self.system(cls, seed, index)
        row = system.describe()
        row.update(self.camera.conditions(hr_rng))
        if self.task == "superres":
            if self.lr_camera is not None:
                cond = self.lr_camera.conditions(lr_rng)
                row.update({f"lr_{k}": v for k, v in cond.items()})
            else:
                row.update(self._lr_settings(lr_rng))
        return row

    def image(self, cls: str, seed: int, index: int) -> tuple[np.ndarray, dict]:
        """One classification image, (1, H, W) float32 in [0, 1], and its manifest fields."""
        system, (hr_rng, _) = self.system(cls, seed, index)
        image, cond = self.camera.render(system, hr_rng)
        return image[None].astype(np.float32), {**system.describe(), **cond}

    def pair(self, cls: str, seed: int, index: int) -> tuple[np.ndarray, np.ndarray, dict]:
        """One HR/LR pair of the same lens and source, as (1, H, W) float32, and its fields."""
        system, (hr_rng, lr_rng) = self.system(cls, seed, index)
        hr, cond = self.camera.render(system, hr_rng)
        row = {**system.describe(), **cond}
        if self.lr_camera is not None:
            lr, lr_cond = self.lr_camera.render(system, lr_rng)
            row.update({f"lr_{k}": v for k, v in lr_cond.items()})
        else:
            settings = self._lr_settings(lr_rng)
            lr = downsample(
                hr,
                int(self.sr["factor"]),
                self.sr["method"],
                settings["lr_blur_sigma"],
                settings["lr_noise_rms"],
                lr_rng,
            )
            row.update(settings)
        return hr[None].astype(np.float32), lr[None].astype(np.float32), row
