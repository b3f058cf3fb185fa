"""Lens, source and substructure sampling for the DeepLense recipe (no imaging here).

Everything drawn for one image comes from numpy Generators handed in by the caller, so the
same generators give the same lens system whatever process or order the image is made in.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np

from lensexp.errors import LensexpError
from lensexp.sim.config import is_range

CLASSES = ("no", "sphere", "vort")


def draw(rng: np.random.Generator, value: float | list) -> float:
    """A fixed setting as a float, or a uniform draw from a `[low, high]` range setting."""
    if is_range(value):
        return float(rng.uniform(value[0], value[1]))
    return float(value)


@functools.lru_cache(maxsize=16)
def _lens_cosmo(h0: float, om0: float, ob0: float, z_lens: float, z_source: float):
    from astropy.cosmology import FlatLambdaCDM
    from lenstronomy.Cosmo.lens_cosmo import LensCosmo

    return LensCosmo(z_lens=z_lens, z_source=z_source, cosmo=FlatLambdaCDM(H0=h0, Om0=om0, Ob0=ob0))


@functools.lru_cache(maxsize=16)
def _sigma_crit_angle(
    h0: float, om0: float, ob0: float, z_lens: float, z_source: float, distances: str
) -> float:
    """Critical surface density in solar masses per square arcsecond, pi Sigma = M / theta_E^2.

    `angular_diameter` is the physical one (D_d, D_s, D_ds angular-diameter distances);
    `luminosity` reproduces the public DeepLenseSim `mass_to_radius` (luminosity distances,
    D_ds = D_s - D_d), whose Einstein radii are 0.77 times smaller at z 0.5/1.0.
    """
    cosmo_args = (h0, om0, ob0, z_lens, z_source)
    sigma = float(_lens_cosmo(*cosmo_args).sigma_crit_angle)  # angular-diameter distances
    if distances == "luminosity":
        # Sigma_crit is proportional to D_d D_s / D_ds: swap in the luminosity distances.
        cosmo = _lens_cosmo(*cosmo_args).background.cosmo
        d_d, d_s = cosmo.luminosity_distance(z_lens), cosmo.luminosity_distance(z_source)
        a_d, a_s = (
            cosmo.angular_diameter_distance(z_lens),
            cosmo.angular_diameter_distance(z_source),
        )
        a_ds = cosmo.angular_diameter_distance(z_lens, z_source)
        sigma *= float(d_d * d_s / (d_s - d_d) / (a_d * a_s / a_ds))
    return sigma


def sigma_crit(cfg: dict) -> float:
    """The preset's critical surface density (Msun / arcsec^2) in its distance convention."""
    c = cfg["cosmology"]
    return _sigma_crit_angle(
        float(c["H0"]),
        float(c["Om0"]),
        float(c.get("Ob0", 0.0)),
        float(cfg["z_lens"]),
        float(cfg["z_source"]),
        c["distances"],
    )


def einstein_radius(mass: float | np.ndarray, cfg: dict) -> float | np.ndarray:
    """Einstein radius in arcsec of a point mass `mass` (solar masses) for the preset's geometry.

    theta_E = sqrt(4 G M / c^2 * D_ds / (D_d D_s)) = sqrt(M / (pi Sigma_crit)), with the
    distances of `cosmology.distances`; the recipe uses the same formula for the SIE main halo.
    """
    return np.sqrt(np.asarray(mass, dtype=float) / (math.pi * sigma_crit(cfg)))


def concentration(mass: np.ndarray, cfg: dict) -> np.ndarray:
    """NFW concentration c200 of halos of mass M200 (Msun) at z_lens.

    Duffy et al. (2008) power law as lenstronomy's `NFWParam.c_M_z` has it:
    c = 5.22 (M / 2e12 Msun/h)^-0.072 (1 + z)^-0.42, M in Msun/h.
    """
    from lenstronomy.Cosmo.nfw_param import NFWParam

    h = float(cfg["cosmology"]["H0"]) / 100.0
    return np.asarray(NFWParam.c_M_z(np.asarray(mass) * h, float(cfg["z_lens"])), dtype=float)


def tnfw_parameters(
    mass: np.ndarray, r_3d: np.ndarray, theta_E_host: float, cfg: dict
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """lenstronomy TNFW `(Rs, alpha_Rs, r_trunc)` (arcsec) of subhalos of mass M200 `mass`.

    Rs and alpha_Rs from LensCosmo.nfw_physical2angle with the `concentration` relation;
    alpha_Rs is rescaled to the preset's distance convention so that point masses and tNFW
    subhalos share one Sigma_crit. The truncation radius is the tidal radius in an isothermal
    host, r_t = r (m / (2 M_host,3D(<r)))^(1/3) with M_host,3D(<r) = 2 Sigma_crit theta_E r,
    for subhalos at 3D distance `r_3d` (arcsec at the lens) from the host centre.
    """
    c = cfg["cosmology"]
    lens_cosmo = _lens_cosmo(
        float(c["H0"]),
        float(c["Om0"]),
        float(c.get("Ob0", 0.0)),
        float(cfg["z_lens"]),
        float(cfg["z_source"]),
    )
    mass = np.asarray(mass, dtype=float)
    rs, alpha_rs = lens_cosmo.nfw_physical2angle(mass, concentration(mass, cfg))
    sigma = sigma_crit(cfg)
    alpha_rs = np.asarray(alpha_rs) * float(lens_cosmo.sigma_crit_angle) / sigma
    r = np.maximum(np.asarray(r_3d, dtype=float), 1e-3)
    r_trunc = r * (mass / (4.0 * sigma * theta_E_host * r)) ** (1.0 / 3.0)
    return np.asarray(rs, dtype=float), alpha_rs, r_trunc


def axion_half_length(axion_mass_ev: float, coefficient: float) -> float:
    """Half-length (arcsec) of the vortex line: the recipe's de Broglie scale for z_lens 0.5.

    L = coefficient * 1e-22 eV / (2 m); coefficient 0.06 gives L = 0.03" at 1e-22 eV and 3" at
    1e-24 eV (the public code's `axion_mass_to_length`).
    """
    return coefficient * 1e-22 / (2.0 * axion_mass_ev)


@dataclass
class Substructure:
    """Subhalos: positions (arcsec), masses (Msun) and lenstronomy parameters of `profile`.

    Point masses carry `theta_E`; tNFW subhalos (M200 masses) carry `Rs`, `alpha_Rs`, `r_trunc`.
    """

    kind: str
    profile: str | None = None
    x: np.ndarray = field(default_factory=lambda: np.zeros(0))
    y: np.ndarray = field(default_factory=lambda: np.zeros(0))
    mass: np.ndarray = field(default_factory=lambda: np.zeros(0))
    theta_E: np.ndarray = field(default_factory=lambda: np.zeros(0))
    Rs: np.ndarray = field(default_factory=lambda: np.zeros(0))
    alpha_Rs: np.ndarray = field(default_factory=lambda: np.zeros(0))
    r_trunc: np.ndarray = field(default_factory=lambda: np.zeros(0))
    axion_mass: float | None = None
    half_length: float | None = None
    angle: float | None = None

    @property
    def count(self) -> int:
        return int(self.x.size)

    def lens_models(self) -> tuple[str, ...]:
        """lenstronomy lens model names of the subhalos."""
        return ("TNFW" if self.profile == "tnfw" else "POINT_MASS",) * self.count

    def lens_kwargs(self) -> list[dict]:
        """lenstronomy keyword arguments of the subhalos."""
        if self.profile == "tnfw":
            return [
                {
                    "Rs": float(rs),
                    "alpha_Rs": float(a),
                    "r_trunc": float(rt),
                    "center_x": float(x),
                    "center_y": float(y),
                }
                for rs, a, rt, x, y in zip(
                    self.Rs, self.alpha_Rs, self.r_trunc, self.x, self.y, strict=True
                )
            ]
        return [
            {"theta_E": float(t), "center_x": float(x), "center_y": float(y)}
            for t, x, y in zip(self.theta_E, self.x, self.y, strict=True)
        ]

    def mass_within(self, center: tuple[float, float], radius: float, sigma: float) -> float:
        """Projected subhalo mass (Msun) inside the circle `radius` (arcsec) around `center`.

        Point masses count when inside. An extended profile is integrated with Gauss's theorem
        in the lens plane: div(alpha) = 2 kappa, so M(<R) = Sigma_crit / 2 * (flux of the
        deflection through the circle), evaluated on 720 points with lenstronomy.
        """
        if self.count == 0:
            return 0.0
        if self.profile != "tnfw":
            inside = np.hypot(self.x - center[0], self.y - center[1]) < radius
            return float(self.mass[inside].sum())
        phi = np.linspace(0.0, 2.0 * math.pi, 720, endpoint=False)
        nx, ny = np.cos(phi), np.sin(phi)
        ax, ay = _lens_model(self.lens_models()).alpha(
            center[0] + radius * nx, center[1] + radius * ny, self.lens_kwargs()
        )
        flux = float(np.mean(ax * nx + ay * ny)) * 2.0 * math.pi * radius
        return 0.5 * sigma * flux


@functools.lru_cache(maxsize=8)
def _lens_model(models: tuple[str, ...]):
    from lenstronomy.LensModel.lens_model import LensModel

    return LensModel(list(models))


@dataclass
class LensSystem:
    """One lens: SIE main halo + external shear + subhalos, a Sersic source, optional lens light.

    `theta_E` is the Einstein radius of the lens system's mass; the SIE's own radius
    (`kwargs_halo["theta_E"]`) is smaller by the substructure's mass within the ring when the
    preset compensates it (`substructure.compensate`), and equal otherwise.
    """

    cls: str
    halo_mass: float
    theta_E: float
    kwargs_halo: dict
    kwargs_shear: dict
    kwargs_source: dict
    sub: Substructure
    sub_mass_in_ring: float
    kwargs_lens_light: dict | None = None

    def lens_models(self) -> tuple[str, ...]:
        """lenstronomy lens model names, in the order of `lens_kwargs()`."""
        return ("SIE", "SHEAR") + self.sub.lens_models()

    def lens_kwargs(self) -> list[dict]:
        """lenstronomy keyword arguments of every deflector."""
        return [self.kwargs_halo, self.kwargs_shear, *self.sub.lens_kwargs()]

    def describe(self) -> dict:
        """The manifest fields of this system."""
        h, s, src = self.kwargs_halo, self.kwargs_shear, self.kwargs_source
        sub, light = self.sub, self.kwargs_lens_light or {}
        return {
            "class": self.cls,
            "halo_mass": self.halo_mass,
            "theta_E": self.theta_E,
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
            "subhalo_profile": sub.profile,
            "subhalo_mass_in_ring": self.sub_mass_in_ring,
            "halo_theta_E": h["theta_E"],
            "lens_light_amp": light.get("amp"),
            "lens_light_magnitude": light.get("magnitude"),
            "lens_light_R_sersic": light.get("R_sersic"),
            "lens_light_n_sersic": light.get("n_sersic"),
        }


def _sersic(section: dict, rng: np.random.Generator, keys: tuple[str, ...]) -> dict:
    """Sersic kwargs drawn from a light section: `amp` or `magnitude`, then `keys`."""
    kw = {}
    if section.get("amp") is not None:
        kw["amp"] = draw(rng, section["amp"])
    else:
        kw["magnitude"] = draw(rng, section["magnitude"])
    for key in keys:
        kw[key] = draw(rng, section[key])
    return kw


def sample_macro(cfg: dict, rng: np.random.Generator) -> tuple[float, dict, dict, dict]:
    """Draw the main halo, shear and source: `(halo_mass, kwargs_halo, kwargs_shear, kwargs_source)`."""
    halo, shear = cfg["halo"], cfg["shear"]
    mass = draw(rng, halo["mass"])
    kwargs_halo = {
        "theta_E": float(einstein_radius(mass, cfg)),
        "e1": draw(rng, halo["e1"]),
        "e2": draw(rng, halo["e2"]),
        "center_x": draw(rng, halo["center_x"]),
        "center_y": draw(rng, halo["center_y"]),
    }
    kwargs_shear = {"gamma1": draw(rng, shear["gamma1"]), "gamma2": draw(rng, shear["gamma2"])}
    keys = ("R_sersic", "n_sersic", "e1", "e2", "center_x", "center_y")
    return mass, kwargs_halo, kwargs_shear, _sersic(cfg["source"], rng, keys)


def sample_lens_light(cfg: dict, rng: np.random.Generator, kwargs_halo: dict) -> dict | None:
    """Sersic light of the main galaxy (centre and ellipticity of the halo), or None if off."""
    light = cfg["lens_light"]
    if not light["enabled"]:
        return None
    kw = _sersic(light, rng, ("R_sersic", "n_sersic"))
    kw.update({k: kwargs_halo[k] for k in ("e1", "e2", "center_x", "center_y")})
    return kw


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
    cls: str,
    cfg: dict,
    rng: np.random.Generator,
    center: tuple[float, float],
    theta_E_host: float,
) -> Substructure:
    """Draw the subhalos of class `cls` ('no', 'sphere' or 'vort') around the halo `center`.

    `theta_E_host` (the lens system's Einstein radius) sets the tidal truncation of tNFW subhalos.
    """
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
        sub = Substructure(
            "sphere", s["profile"], x=cx + r * np.sin(phi), y=cy + r * np.cos(phi), mass=mass
        )
        if s["profile"] == "tnfw":
            # Along the line of sight a subhalo sits uniformly within z_max of the lens plane;
            # its 3D distance sets the tidal truncation.
            z = rng.uniform(-s["z_max"], s["z_max"], size=n)
            sub.Rs, sub.alpha_Rs, sub.r_trunc = tnfw_parameters(
                mass, np.hypot(r, z), theta_E_host, cfg
            )
        else:
            sub.theta_E = np.asarray(einstein_radius(mass, cfg))
        return sub
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
            "point_mass",
            x=cx + along * math.cos(angle),
            y=cy + along * math.sin(angle),
            mass=mass,
            theta_E=np.asarray(einstein_radius(mass, cfg)),
            axion_mass=float(axion_mass),
            half_length=float(half),
            angle=angle,
        )
    raise ValueError(f"unknown class {cls!r}; expected one of {CLASSES}")


def compensated_theta_E(theta_E: float, mass_in_ring: float, sigma: float) -> float:
    """Einstein radius of the SIE that, with `mass_in_ring` Msun of substructure, keeps theta_E.

    An SIE of radius t holds pi Sigma_crit t R within radius R (its mass grows linearly with R),
    and the ring sits where the mean convergence inside is 1, i.e. where the enclosed mass is
    pi Sigma_crit theta_E^2. Solving pi Sigma t theta_E + M_sub(<theta_E) = pi Sigma theta_E^2:
    t = theta_E - M_sub(<theta_E) / (pi Sigma_crit theta_E).
    """
    t = theta_E - mass_in_ring / (math.pi * sigma * theta_E)
    if t <= 0:
        raise LensexpError(
            f"substructure mass within the ring ({mass_in_ring:.3g} Msun) exceeds the lens's; "
            "lower the subhalo masses or set substructure.compensate=false."
        )
    return t


def sample_system(
    cls: str, cfg: dict, macro_rng: np.random.Generator, sub_rng: np.random.Generator
) -> LensSystem:
    """A full lens system of class `cls`; the macro model uses only `macro_rng`.

    Keeping the substructure on its own generator means the same `macro_rng` state gives the
    same halo, source and lens light for every class, which the physics checks rely on.
    """
    mass, kh, ks, src = sample_macro(cfg, macro_rng)
    light = sample_lens_light(cfg, macro_rng, kh)
    theta_E = kh["theta_E"]
    center = (kh["center_x"], kh["center_y"])
    sub = sample_substructure(cls, cfg, sub_rng, center, theta_E)
    sigma = sigma_crit(cfg)
    in_ring = sub.mass_within(center, theta_E, sigma)
    if cfg["substructure"]["compensate"]:
        kh = dict(kh, theta_E=compensated_theta_E(theta_E, in_ring, sigma))
    return LensSystem(cls, mass, theta_E, kh, ks, src, sub, in_ring, light)
