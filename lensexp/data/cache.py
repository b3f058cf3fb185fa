"""The packed image cache: one contiguous float32 memory-mapped array per list of files.

Reading thousands of small `.npy` files every epoch (and in every worker) is slow; the first
load packs them into one `.npy` that later epochs and workers memory-map, so no worker copies
the dataset. Beside it, `<pack>.mass` (also `.npy` format) holds each image's axion mass (eV; NaN for files without
one), which the Model I-IV `[image, mass]` files carry. The pack holds the images as the model sees them (normalised per
`data.normalize`), so the cache is keyed by the files' paths, sizes and modification times, the
image shape and the normalisation, and rebuilt when any of them changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from lensexp.data.npy import check_size, normalize_image, read_image_and_mass
from lensexp.errors import LensexpError

log = logging.getLogger(__name__)


# Bumped when the packed layout changes, so an older pack is never read as a newer one.
PACK_FORMAT = 3  # 2: (N, C, H, W) images, normalised as packed; 3: plus the axion masses


def fingerprint(files: list[Path], shape: tuple[int, ...], normalize: str) -> str:
    """A hash of what the cache depends on: each file's path, size and mtime, the image shape
    and the normalisation."""
    h = hashlib.sha256(repr((PACK_FORMAT, tuple(shape), normalize)).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def packed_array(
    files: list[Path],
    cache_dir: Path,
    name: str,
    shape: tuple[int, int, int],
    *,
    allow_pickle: bool = False,
    normalize: str = "none",
    hint: str = "",
) -> Path:
    """Return the path of a (N, C, H, W) float32 `.npy` holding `files` in order, each image
    normalised per `normalize` (see `normalize_image`), building it once.

    `shape` is every image's (C, H, W). Every file is checked (shape, NaN/Inf, readability)
    while packing, so bad data fails before training starts; `hint` ends a shape error (where
    the expected shape came from, what to change).
    """
    if not files:
        raise LensexpError(f"no .npy files to pack for {name}.")
    shape = tuple(int(s) for s in shape)
    key = fingerprint(files, shape, normalize)
    target = cache_dir / f"{name}-{key}.npy"
    masses_file = mass_path(target)
    if target.exists() and masses_file.exists():
        return target
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LensexpError(
            f"cannot create the cache folder {cache_dir} ({err}); set paths.cache_dir."
        ) from err
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(files), *shape))
    masses = np.full(len(files), np.nan)
    try:
        for i, path in enumerate(files):
            image, masses[i] = read_image_and_mass(path, allow_pickle)
            check_size(path, image, shape, hint)
            out[i] = normalize_image(image, normalize)
        out.flush()
    except BaseException:
        del out
        tmp.unlink(missing_ok=True)
        raise
    del out
    # The masses first: the pack's presence (with them) is what says "built".
    tmp_masses = masses_file.with_name(f"{masses_file.name}.tmp{os.getpid()}")
    with open(tmp_masses, "wb") as fh:
        np.save(fh, masses)
    os.replace(tmp_masses, masses_file)
    os.replace(tmp, target)  # atomic: a crash never leaves a half-built cache behind
    # Older packs of the same name belong to files that have since changed.
    for pattern in (f"{name}-*.npy", f"{name}-*.mass"):
        for stale in cache_dir.glob(pattern):
            if stale not in (target, masses_file):
                stale.unlink(missing_ok=True)
    (cache_dir / f"{name}.json").write_text(
        json.dumps({"files": [str(f) for f in files], "key": key, "normalize": normalize}, indent=0)
    )
    log.info("packed %d images from %s into %s", len(files), files[0].parent.parent, target)
    return target


def mass_path(pack: Path) -> Path:
    """The file beside a pack holding its images' axion masses (float64, eV, NaN: none)."""
    return pack.with_suffix(".mass")


def pack_masses(pack: Path) -> np.ndarray:
    """The axion masses (eV; NaN where a file has none) of a pack's images, in pack order."""
    return np.load(mass_path(pack))


def cache_folder(cache_root: Path, data_root: Path) -> Path:
    """The cache folder of one dataset root: a readable name plus a hash of its absolute path."""
    resolved = data_root.resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    return cache_root / f"{resolved.name}-{digest}"
