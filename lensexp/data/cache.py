"""The packed image cache: one contiguous float32 memory-mapped array per list of files.

Reading thousands of small `.npy` files every epoch (and in every worker) is slow; the first
load packs them into one `.npy` that later epochs and workers memory-map, so no worker copies
the dataset. The cache is keyed by the files' paths, sizes and modification times, and rebuilt
when any of them changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from lensexp.data.npy import check_size, read_image
from lensexp.errors import LensexpError

log = logging.getLogger(__name__)


def fingerprint(files: list[Path], size: tuple[int, int] | None) -> str:
    """A hash of what the cache depends on: each file's path, size and mtime, and the image size."""
    h = hashlib.sha256(repr(size).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def packed_array(
    files: list[Path],
    cache_dir: Path,
    name: str,
    size: tuple[int, int] | None,
    allow_pickle: bool = False,
) -> Path:
    """Return the path of a (N, H, W) float32 `.npy` holding `files` in order, building it once.

    `size` is the expected (H, W); None takes the first file's size. Every file is checked
    (shape, NaN/Inf, readability) while packing, so bad data fails before training starts.
    """
    if not files:
        raise LensexpError(f"no .npy files to pack for {name}.")
    key = fingerprint(files, size)
    target = cache_dir / f"{name}-{key}.npy"
    if target.exists():
        return target
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LensexpError(
            f"cannot create the cache folder {cache_dir} ({err}); set paths.cache_dir."
        ) from err
    first = read_image(files[0], allow_pickle)
    shape = tuple(size) if size is not None else first.shape
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(files), *shape))
    try:
        for i, path in enumerate(files):
            image = first if i == 0 else read_image(path, allow_pickle)
            check_size(path, image, shape)
            out[i] = image
        out.flush()
    except BaseException:
        del out
        tmp.unlink(missing_ok=True)
        raise
    del out
    os.replace(tmp, target)  # atomic: a crash never leaves a half-built cache behind
    # Older packs of the same name belong to files that have since changed.
    for stale in cache_dir.glob(f"{name}-*.npy"):
        if stale != target:
            stale.unlink(missing_ok=True)
    (cache_dir / f"{name}.json").write_text(
        json.dumps({"files": [str(f) for f in files], "key": key}, indent=0)
    )
    log.info("packed %d images from %s into %s", len(files), files[0].parent.parent, target)
    return target


def cache_folder(cache_root: Path, data_root: Path) -> Path:
    """The cache folder of one dataset root: a readable name plus a hash of its absolute path."""
    resolved = data_root.resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    return cache_root / f"{resolved.name}-{digest}"
