"""Lens, source and substructure sampling for the DeepLense recipe (no imaging here).

Everything drawn for one image comes from numpy Generators handed in by the caller, so the
same generators give the same lens system whatever process or order the image is made in.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np

from lensexp.sim.config import is_range

CLASSES = ("no", "sphere", "vort")


def draw(rng: np.random.Generator, value: float | list) -> float:
    """A fixed setting as a float, or a uniform draw from a `[low, high]` range setting."""
    if is_range(value):
        return float(rng.uniform(value[0], value[1]))
    return float(value)


@functools.lru_cache(maxsize=16)
def _sigma_crit_angle(h0: float, om0: float, ob0: float, z_lens: float, z_source: float) -> float:
    """Critical surface density in solar masses per square arcsecond (lenstronomy LensCosmo)."""
    from astropy.cosmology import FlatLambdaCDM
    from lenstronomy.Cosmo.lens_cosmo import LensCosmo

    cosmo = FlatLambdaCDM(H0=h0, Om0=om0, Ob0=ob0)
    return float(LensCosmo(z_lens=z_lens, z_source=z_source, cosmo=cosmo).sigma_crit_angle)


def einstein_radius(mass: float | np.ndarray, cfg: dict) -> float | np.ndarray:
    """Einstein radius in arcsec of a point mass `mass` (solar masses) for the preset's geometry.

    theta_E = sqrt(4 G M / c^2 * D_ds / (D_d D_s)) with angular-diameter distances, i.e.
    sqrt(M / (pi Sigma_crit)); the recipe uses the same formula for the SIE main halo.
    """
    c = cfg["cosmology"]
    sigma = _sigma_crit_angle(
        float(c["H0"]),
        float(c["Om0"]),
        float(c.get("Ob0", 0.0)),
        float(cfg["z_lens"]),
        float(cfg["z_source"]),
    )
    return np.sqrt(np.asarray(mass, dtype=float) / (math.pi * sigma))


def axion_half_length(axion_mass_ev: float, coefficient: float) -> float:
    """Half-length (arcsec) of the vortex line: the recipe's de Broglie scale for z_lens 0.5.

    L = coefficient * 1e-22 eV / (2 m); coefficient 0.06 gives L = 0.03" at 1e-22 eV and 3" at
    1e-24 eV (the public code's `axion_mass_to_length`).
    """
    return coefficient * 1e-22 / (2.0 * axion_mass_ev)


@dataclass
class Substructure:
    """Point-mass subhalos: positions and Einstein radii (arcsec) and masses (Msun)."""

    kind: str
    x: np.ndarray = field(default_factory=lambda: np.zeros(0))
    y: np.ndarray = field(default_factory=lambda: np.zeros(0))
    mass: np.ndarray = field(default_factory=lambda: np.zeros(0))
    theta_E: np.ndarray = field(default_factory=lambda: np.zeros(0))
    axion_mass: float | None = None
    half_length: float | None = None
    angle: float | None = None

    @property
    def count(self) -> int:
        return int(self.x.size)


@dataclass
class LensSystem:
    """One lens: SIE main halo + external shear + point-mass subhalos, and a Sersic source."""

    cls: str
    halo_mass: float
    kwargs_halo: dict
    kwargs_shear: dict
    kwargs_source: dict
    sub: Substructure

    def lens_models(self) -> tuple[str, ...]:
        """lenstronomy lens model names, in the order of `lens_kwargs()`."""
        return ("SIE", "SHEAR") + ("POINT_MASS",) * self.sub.count

    def lens_kwargs(self) -> list[dict]:
        """lenstronomy keyword arguments of every deflector."""
        subs = [
            {"theta_E": float(t), "center_x": float(x), "center_y": float(y)}
            for t, x, y in zip(self.sub.theta_E, self.sub.x, self.sub.y, strict=True)
        ]
        return [self.kwargs_halo, self.kwargs_shear, *subs]

    def describe(self) -> dict:
        """The manifest fields of this system."""
        h, s, src = self.kwargs_halo, self.kwargs_shear, self.kwargs_source
        sub = self.sub
        return {
            "class": self.cls,
            "halo_mass": self.halo_mass,
            "theta_E": h["theta_E"],
            "lens_e1": h["e1"],
            "lens_e2": h["e2"],
            "lens_center_x": h["center_x"],
            "lens_center_y": h["center_y"],
            "gamma1": s["gamma1"],
            "gamma2": s["gamma2"],
            "source_amp": src.get("amp"),
            "source_magnitude": src.get("magnitude"),
            "source_R_sersic": src["R_sersic"],
            "source_n_sersic": src["n_sersic"],
            "source_e1": src["e1"],
            "source_e2": src["e2"],
            "source_center_x": src["center_x"],
            "source_center_y": src["center_y"],
            "n_subhalos": sub.count,
            "subhalo_mass_total": float(sub.mass.sum()),
            "axion_mass": sub.axion_mass,
            "vortex_half_length": sub.half_length,
            "vortex_angle": sub.angle,
        }


def sample_macro(cfg: dict, rng: np.random.Generator) -> tuple[float, dict, dict, dict]:
    """Draw the main halo, shear and source: `(halo_mass, kwargs_halo, kwargs_shear, kwargs_source)`."""
    halo, shear, src = cfg["halo"], cfg["shear"], cfg["source"]
    mass = draw(rng, halo["mass"])
    kwargs_halo = {
        "theta_E": float(einstein_radius(mass, cfg)),
        "e1": draw(rng, halo["e1"]),
        "e2": draw(rng, halo["e2"]),
        "center_x": draw(rng, halo["center_x"]),
        "center_y": draw(rng, halo["center_y"]),
    }
    kwargs_shear = {"gamma1": draw(rng, shear["gamma1"]), "gamma2": draw(rng, shear["gamma2"])}
    kwargs_source = {}
    if src.get("amp") is not None:
        kwargs_source["amp"] = draw(rng, src["amp"])
    else:
        kwargs_source["magnitude"] = draw(rng, src["magnitude"])
    for key in ("R_sersic", "n_sersic", "e1", "e2", "center_x", "center_y"):
        kwargs_source[key] = draw(rng, src[key])
    return mass, kwargs_halo, kwargs_shear, kwargs_source


def power_law_masses(
    rng: np.random.Generator, n: int, m_min: float, m_max: float, slope: float
) -> np.ndarray:
    """`n` masses from dN/dm ~ m^slope on [m_min, m_max] by inverse-CDF sampling."""
    u = rng.uniform(0.0, 1.0, size=n)
    if abs(slope + 1.0) < 1e-12:  # dN/dm ~ 1/m: uniform in log m
        return m_min * (m_max / m_min) ** u
    p = slope + 1.0
    lo, hi = m_min**p, m_max**p
    return (lo + (hi - lo) * u) ** (1.0 / p)


def sample_substructure(
    cls: str, cfg: dict, rng: np.random.Generator, center: tuple[float, float]
) -> Substructure:
    """Draw the subhalos of class `cls` ('no', 'sphere' or 'vort') around the halo `center`."""
    cx, cy = center
    if cls == "no":
        return Substructure("no")
    if cls == "sphere":
        s = cfg["sphere"]
        # The public code draws a Poisson count but then always uses the mean; both are offered.
        n = int(rng.poisson(s["n_subhalos"])) if s.get("poisson_number") else int(s["n_subhalos"])
        mass = power_law_masses(
            rng, n, float(s["mass_min"]), float(s["mass_max"]), float(s["slope"])
        )
        r = rng.uniform(s["r_min"], s["r_max"], size=n)
        phi = rng.uniform(0.0, 2.0 * math.pi, size=n)
        return Substructure(
            "sphere",
            x=cx + r * np.sin(phi),
            y=cy + r * np.cos(phi),
            mass=mass,
            theta_E=np.asarray(einstein_radius(mass, cfg)),
        )
    if cls == "vort":
        v = cfg["vort"]
        axion_mass = 10.0 ** draw(rng, v["log10_axion_mass"])
        half = axion_half_length(axion_mass, float(v["length_coefficient"]))
        angle = float(rng.uniform(0.0, 2.0 * math.pi))
        n = int(v["n_points"])
        along = np.linspace(-half, half, n)
        mass = np.full(n, draw(rng, v["mass"]) / n)
        return Substructure(
            "vort",
            x=cx + along * math.cos(angle),
            y=cy + along * math.sin(angle),
            mass=mass,
            theta_E=np.asarray(einstein_radius(mass, cfg)),
            axion_mass=float(axion_mass),
            half_length=float(half),
            angle=angle,
        )
    raise ValueError(f"unknown class {cls!r}; expected one of {CLASSES}")


def sample_system(
    cls: str, cfg: dict, macro_rng: np.random.Generator, sub_rng: np.random.Generator
) -> LensSystem:
    """A full lens system of class `cls`; the macro model uses only `macro_rng`.

    Keeping the substructure on its own generator means the same `macro_rng` state gives the
    same halo and source for every class, which the physics checks rely on.
    """
    mass, kh, ks, src = sample_macro(cfg, macro_rng)
    sub = sample_substructure(cls, cfg, sub_rng, (kh["center_x"], kh["center_y"]))
    return LensSystem(cls, mass, kh, ks, src, sub)
