"""Simulator presets: loading `conf/sim/presets/<name>.yaml`, applying overrides, checking values.

A preset is a nested mapping of physical and instrumental settings; it may name a `base` preset
and change only some of its keys. Presets are read and merged with OmegaConf, and the merged
preset is put in struct mode, so an override of a key the preset lacks (a typo) fails instead of
being ignored. Any numeric physical setting may be a number (fixed) or a two-element list
`[low, high]` (drawn uniformly per image); the value checks below, which an untyped OmegaConf
config cannot do, refuse malformed values here so the samplers never see one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import lensexp
from lensexp.checks import flatten
from lensexp.errors import LensexpError

PRESET_DIR = Path(lensexp.__file__).resolve().parent.parent / "conf" / "sim" / "presets"

# Sections every preset must have after its `base` is merged in.
PHYSICS_SECTIONS = (
    "cosmology",
    "halo",
    "shear",
    "source",
    "lens_light",
    "substructure",
    "sphere",
    "vort",
    "instrument",
)
# cosmology.distances: the distances converting a mass to an Einstein radius.
DISTANCES = ("angular_diameter", "luminosity")
# sphere.profile: the subhalos' mass profile.
PROFILES = ("point_mass", "tnfw")
# Keys under these paths are free-form (passed to lenstronomy), so overrides may add new ones.
OPEN_SECTIONS = ("instrument.settings", "superres.lr_instrument.settings")


# Settings added after datasets were first written, with the value every older dataset was
# made with: an older folder still matches a preset that keeps these values.
OLDER_DATASETS_IMPLY = {
    ("cosmology", "distances"): "angular_diameter",
    ("substructure", "compensate"): False,
    ("sphere", "profile"): "point_mass",
    ("lens_light", "enabled"): False,
}
# Settings that only act when another one is on, as (section, key, what turns it on).
_INERT_UNLESS = {
    ("lens_light", None): ("lens_light", "enabled", True),
    ("sphere", "z_max"): ("sphere", "profile", "tnfw"),
}


def with_older_defaults(old: dict, new: dict) -> dict:
    """`old`, a preset recorded with an older dataset, completed with the settings it implied.

    A setting `old` lacks is taken from `new` when `new` keeps the value older datasets were
    made with (`OLDER_DATASETS_IMPLY`), or when it is inert in `new`; otherwise it stays missing,
    so the two presets differ and the folder is re-simulated or refused.
    """
    done = {k: dict(v) if isinstance(v, dict) else v for k, v in old.items()}
    for (section, key), implied in OLDER_DATASETS_IMPLY.items():
        if key not in done.get(section, {}) and new.get(section, {}).get(key) == implied:
            done.setdefault(section, {})[key] = implied
    for (section, key), (on_section, on_key, on_value) in _INERT_UNLESS.items():
        if new.get(on_section, {}).get(on_key) == on_value or section not in new:
            continue
        if key is None:
            done[section] = {**new[section], **done.get(section, {})}
        elif key not in done.get(section, {}) and key in new[section]:
            done.setdefault(section, {})[key] = new[section][key]
    return done


def available_presets() -> list[str]:
    """Names of the presets shipped in conf/sim/presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(name: str, overrides: Mapping | None = None) -> dict:
    """Return preset `name` (with its `base` merged in) after applying `overrides`, checked.

    `overrides` uses the preset's key names, either dotted (`{"source.R_sersic": 0.3}`) or nested.
    Raises a LensexpError for an unknown preset or key, or a malformed value.
    """
    if not isinstance(name, str) or not name:
        raise LensexpError(f"preset must be a preset name, got {name!r}.")
    cfg = _read_with_bases(name)
    cfg.name = name
    OmegaConf.set_struct(cfg, True)
    if overrides:
        _apply_overrides(cfg, overrides, name)
    try:
        preset = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        raise LensexpError(f"simulator preset '{name}': {_first_line(err)}.") from err
    validate(preset)
    return preset


def _read_yaml(name: str) -> DictConfig:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(available_presets()) or f"none found in {PRESET_DIR}"
        raise LensexpError(f"unknown simulator preset '{name}'; choose one of: {known}.")
    try:
        # OmegaConf's YAML loader reads 1e12 as a number (plain PyYAML would give a string).
        cfg = OmegaConf.load(path)
    except Exception as err:
        raise LensexpError(f"{path}: not a valid preset file ({_first_line(err)}).") from err
    if not isinstance(cfg, DictConfig):
        raise LensexpError(f"{path}: a preset must be a mapping of settings.")
    return cfg


def _read_with_bases(name: str) -> DictConfig:
    """Preset `name` merged onto its chain of `base` presets (the more specific preset wins)."""
    preset = _read_yaml(name)
    seen = [name]
    while "base" in preset:
        base_name = preset.pop("base")
        if base_name in seen:
            raise LensexpError(f"preset '{name}': circular 'base' chain {seen + [base_name]}.")
        seen.append(base_name)
        parent = _read_yaml(base_name)
        # An instrument that names its `type` replaces the base's instead of merging into it,
        # so a Euclid preset does not inherit the simple camera's pixel scale or PSF.
        if "type" in preset.get("instrument", {}):
            parent.pop("instrument", None)
        preset = OmegaConf.merge(parent, preset)
    return preset


def _apply_overrides(cfg: DictConfig, overrides: Any, name: str) -> None:
    """Set each override on the struct-mode preset `cfg`, refusing keys the preset lacks."""
    if OmegaConf.is_config(overrides):
        overrides = OmegaConf.to_container(overrides, resolve=True)
    if not isinstance(overrides, Mapping):
        raise LensexpError(
            f"overrides must be a mapping of setting -> value, got {type(overrides).__name__}."
        )
    try:
        # One dotted key per leaf; plain JSON values (tuples become lists, numpy floats floats),
        # so a preset compares equal to its saved state.
        flat = json.loads(json.dumps(flatten(overrides, ".", keep_empty=True)))
    except (TypeError, ValueError) as err:
        raise LensexpError(f"overrides must hold numbers, strings and lists only ({err}).") from err
    for key, value in flat.items():
        if not _update(cfg, key, value):
            raise LensexpError(
                f"unknown simulator setting '{key}' in overrides for preset '{name}'; "
                f"see conf/sim/presets/{name}.yaml for the key names."
            )


def _update(cfg: DictConfig, key: str, value: Any) -> bool:
    """Set the setting at dotted `key` to `value`; False where `cfg` has no such setting.

    One key at a time, as Hydra applies its overrides: a merge of `{"halo": {"e1": {"x": 1}}}`
    would silently replace the number `halo.e1` by a mapping, where `halo.e1.x` is refused. A
    value replaces the old one, except that an empty mapping merges (a section stays as it was).
    """
    # lenstronomy's own settings are free-form: there an override may add a key.
    free_form = any(key.startswith(section + ".") for section in OPEN_SECTIONS)
    parent = key.rpartition(".")[0]
    try:
        # A list is one setting (a [low, high] range), not a section of settings.
        if "" in key.split(".") or (
            parent and isinstance(OmegaConf.select(cfg, parent), ListConfig)
        ):
            return False
        OmegaConf.update(cfg, key, value, merge=isinstance(value, dict), force_add=free_form)
    except OmegaConfBaseException:
        return False  # struct mode: a key the preset does not have
    return True


def _first_line(err: Exception) -> str:
    """The first line of an exception's message (OmegaConf adds lines of context)."""
    lines = str(err).strip().splitlines()
    return lines[0].rstrip(".") if lines else type(err).__name__


# ----------------------------------------------------------------------------- value checks


def is_range(value: Any) -> bool:
    """True for a `[low, high]` range setting."""
    return isinstance(value, (list, tuple))


def validate(cfg: dict) -> None:
    """Raise a LensexpError naming the first malformed setting of a merged preset."""
    for section in PHYSICS_SECTIONS:
        _section(cfg, section)
    _check_cosmology(cfg)
    _check_lens_and_source(cfg)
    _check_substructure(cfg)
    validate_instrument(cfg["instrument"], "instrument")
    if "superres" in cfg:
        validate_superres(cfg)
    _check_magnitude_cameras(cfg)


def _check_cosmology(cfg: dict) -> None:
    cosmo = cfg["cosmology"]
    for key in ("H0", "Om0"):
        _number(f"cosmology.{key}", cosmo.get(key), positive=True, allow_range=False)
    _number("cosmology.Ob0", cosmo.get("Ob0", 0.0), nonneg=True, allow_range=False)
    _choice("cosmology.distances", cosmo.get("distances"), DISTANCES)
    _number("z_lens", cfg.get("z_lens"), positive=True, allow_range=False)
    _number("z_source", cfg.get("z_source"), positive=True, allow_range=False)
    if cfg["z_source"] <= cfg["z_lens"]:
        raise LensexpError(
            f"simulator settings z_source={cfg['z_source']} must be above z_lens={cfg['z_lens']}."
        )


def _check_lens_and_source(cfg: dict) -> None:
    halo = cfg["halo"]
    _number("halo.mass", halo.get("mass"), positive=True)
    for key in ("e1", "e2", "center_x", "center_y"):
        _number(f"halo.{key}", halo.get(key))
    for key in ("gamma1", "gamma2"):
        _number(f"shear.{key}", cfg["shear"].get(key))
    _check_light(cfg["source"], "source")
    for key in ("e1", "e2", "center_x", "center_y"):
        _number(f"source.{key}", cfg["source"].get(key))
    light = cfg["lens_light"]
    _flag("lens_light.enabled", light.get("enabled"))
    if light["enabled"]:
        _check_light(light, "lens_light")


def _check_light(section: dict, where: str) -> None:
    """A Sersic light section: exactly one of amp and magnitude, R_sersic and n_sersic."""
    if (section.get("amp") is None) == (section.get("magnitude") is None):
        raise LensexpError(
            f"simulator settings: set exactly one of {where}.amp and {where}.magnitude."
        )
    if section.get("amp") is not None:
        _number(f"{where}.amp", section["amp"], positive=True)
    if section.get("magnitude") is not None:
        _number(f"{where}.magnitude", section["magnitude"])
    _number(f"{where}.R_sersic", section.get("R_sersic"), positive=True)
    _number(f"{where}.n_sersic", section.get("n_sersic"), positive=True)


def _check_substructure(cfg: dict) -> None:
    _flag("substructure.compensate", cfg["substructure"].get("compensate"))
    sph = cfg["sphere"]
    _choice("sphere.profile", sph.get("profile"), PROFILES)
    _integer("sphere.n_subhalos", sph.get("n_subhalos"), 0)
    _number("sphere.mass_min", sph.get("mass_min"), positive=True, allow_range=False)
    _number("sphere.mass_max", sph.get("mass_max"), positive=True, allow_range=False)
    _number("sphere.slope", sph.get("slope"), allow_range=False)
    _number("sphere.r_min", sph.get("r_min"), nonneg=True, allow_range=False)
    _number("sphere.r_max", sph.get("r_max"), nonneg=True, allow_range=False)
    _number("sphere.z_max", sph.get("z_max"), nonneg=True, allow_range=False)
    if sph["mass_min"] > sph["mass_max"] or sph["r_min"] > sph["r_max"]:
        raise LensexpError(
            "simulator settings: sphere.mass_min/r_min must not exceed mass_max/r_max."
        )
    vort = cfg["vort"]
    _number("vort.mass", vort.get("mass"), positive=True)
    _integer("vort.n_points", vort.get("n_points"), 1)
    _number("vort.log10_axion_mass", vort.get("log10_axion_mass"))
    _number(
        "vort.length_coefficient", vort.get("length_coefficient"), positive=True, allow_range=False
    )


def _check_magnitude_cameras(cfg: dict) -> None:
    """A magnitude needs a zero point: every camera that renders one is an observation."""
    light = cfg["lens_light"]
    if cfg["source"].get("magnitude") is not None:
        what = "source"
    elif light["enabled"] and light.get("magnitude") is not None:
        what = "lens_light"
    else:
        return
    cameras = [("instrument", cfg["instrument"])]
    if cfg.get("superres", {}).get("degradation") == "render":
        cameras.append(("superres.lr_instrument", cfg["superres"]["lr_instrument"]))
    for where, inst in cameras:
        if inst["type"] == "simple":
            raise LensexpError(
                f"{what}.magnitude needs {where}.type=observation (a zero point); "
                f"use {what}.amp with a simple instrument."
            )


def validate_instrument(inst: dict, where: str) -> None:
    """Check one instrument section (`instrument` or `superres.lr_instrument`)."""
    kind = inst.get("type")
    _integer(f"{where}.num_pix", inst.get("num_pix"), 4)
    _integer(f"{where}.supersampling", inst.get("supersampling", 1), 1)
    if kind == "simple":
        _number(f"{where}.pixel_scale", inst.get("pixel_scale"), positive=True, allow_range=False)
        _number(f"{where}.psf_fwhm", inst.get("psf_fwhm"), nonneg=True, allow_range=False)
        _number(
            f"{where}.psf_truncation", inst.get("psf_truncation"), positive=True, allow_range=False
        )
        _number(f"{where}.background_rms", inst.get("background_rms"), nonneg=True)
        _number(f"{where}.log10_exposure_time", inst.get("log10_exposure_time"))
        if inst.get("noise") not in ("deeplense", "gaussian", "none"):
            raise LensexpError(
                f"simulator setting '{where}.noise' = {inst.get('noise')!r}: "
                "expected deeplense, gaussian or none."
            )
    elif kind == "observation":
        for key in ("telescope", "band"):
            if not isinstance(inst.get(key), str):
                raise LensexpError(
                    f"simulator setting '{where}.{key}' must be a name (e.g. Euclid, VIS)."
                )
        if inst.get("noise") not in ("observation", "none"):
            raise LensexpError(
                f"simulator setting '{where}.noise' = {inst.get('noise')!r}: expected observation or none."
            )
        if not isinstance(inst.get("settings", {}), dict):
            raise LensexpError(f"simulator setting '{where}.settings' must be a mapping.")
    else:
        raise LensexpError(
            f"simulator setting '{where}.type' = {kind!r}: expected simple or observation."
        )


def validate_superres(cfg: dict) -> None:
    """Check the `superres` section of a super-resolution preset."""
    sr = _section(cfg, "superres")
    classes = sr.get("classes")
    if not classes or not all(c in ("no", "sphere", "vort") for c in classes):
        raise LensexpError(
            f"simulator setting 'superres.classes' = {classes!r}: a list of no, sphere, vort "
            '(quote "no" in YAML, where a bare no means false).'
        )
    _integer("superres.factor", sr.get("factor"), 1)
    mode = sr.get("degradation")
    hr_pix = cfg["instrument"]["num_pix"]
    if mode == "downsample":
        if hr_pix % sr["factor"]:
            raise LensexpError(
                f"simulator settings: instrument.num_pix={hr_pix} is not divisible by "
                f"superres.factor={sr['factor']}."
            )
        if sr.get("method") not in ("area", "bicubic"):
            raise LensexpError(
                f"simulator setting 'superres.method' = {sr.get('method')!r}: expected area or bicubic."
            )
        _number("superres.blur_sigma", sr.get("blur_sigma"), nonneg=True)
        _number("superres.noise_rms", sr.get("noise_rms"), nonneg=True)
    elif mode == "render":
        lr = sr.get("lr_instrument")
        if not isinstance(lr, dict):
            raise LensexpError(
                "simulator setting 'superres.lr_instrument' is needed for degradation=render."
            )
        validate_instrument(lr, "superres.lr_instrument")
    else:
        raise LensexpError(
            f"simulator setting 'superres.degradation' = {mode!r}: expected render or downsample."
        )


def _section(cfg: dict, key: str) -> dict:
    value = cfg.get(key)
    if not isinstance(value, dict):
        raise LensexpError(f"simulator preset '{cfg.get('name')}' lacks the '{key}' section.")
    return value


def _number(
    key: str, value: Any, *, positive: bool = False, nonneg: bool = False, allow_range: bool = True
) -> None:
    """Check that `key` holds a finite number or (if allowed) a `[low, high]` range of them."""
    values = value if is_range(value) else [value]
    if is_range(value) and (not allow_range or len(value) != 2):
        what = "a number or a [low, high] pair" if allow_range else "a single number"
        raise LensexpError(f"simulator setting '{key}' = {value!r}: expected {what}.")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise LensexpError(f"simulator setting '{key}' = {value!r}: expected a finite number.")
        if positive and v <= 0:
            raise LensexpError(f"simulator setting '{key}' = {value!r}: must be > 0.")
        if nonneg and v < 0:
            raise LensexpError(f"simulator setting '{key}' = {value!r}: must be >= 0.")
    if is_range(value) and value[0] > value[1]:
        raise LensexpError(f"simulator setting '{key}' = {value!r}: low is above high.")


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise LensexpError(
            f"simulator setting '{key}' = {value!r}: expected one of {', '.join(choices)}."
        )


def _flag(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise LensexpError(f"simulator setting '{key}' = {value!r}: expected true or false.")


def _integer(key: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise LensexpError(
            f"simulator setting '{key}' = {value!r}: expected an integer >= {minimum}."
        )
