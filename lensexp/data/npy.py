"""Reading and checking single DeepLense `.npy` images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lensexp.errors import LensexpError

NPY_MAGIC = b"\x93NUMPY"


def read_image(path: Path, allow_pickle: bool = False) -> np.ndarray:
    """Load one image as a float32 (H, W) array, or raise a LensexpError naming the file.

    Accepts (H, W) and (1, H, W) arrays of any float dtype, and the Model I-IV object arrays
    `[image, axion_mass]` (those need `data.allow_pickle=true`: they are pickles).
    """
    try:
        with open(path, "rb") as fh:
            magic = fh.read(len(NPY_MAGIC))
    except OSError as err:
        raise LensexpError(f"{path}: unreadable file ({err}).") from err
    if magic != NPY_MAGIC and not magic.startswith(b"PK"):
        # np.load takes any other bytes for a pickle: it would advise allow_pickle, then fail.
        raise LensexpError(f"{path}: not a .npy file (empty, or no NumPy header).")
    try:
        arr = np.load(path, allow_pickle=allow_pickle)
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise LensexpError(
                f"{path}: holds a pickled object array (Model I-IV format); "
                f"load it only if you trust it, with data.allow_pickle=true."
            ) from err
        raise LensexpError(f"{path}: not a readable .npy file ({err}).") from err
    except (OSError, EOFError) as err:
        raise LensexpError(f"{path}: unreadable or truncated .npy file ({err}).") from err
    if isinstance(arr, np.lib.npyio.NpzFile):
        arr.close()
        raise LensexpError(f"{path}: is an .npz archive; lensexp reads one image per .npy file.")
    if arr.dtype == object:
        if arr.size == 0:
            raise LensexpError(f"{path}: empty object array, expected [image, axion_mass].")
        # Model I-IV axion files store [image, axion_mass]; the image is the first element.
        arr = np.asarray(arr.flat[0])
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise LensexpError(f"{path}: array of shape {arr.shape}; expected (H, W) or (1, H, W).")
    if not np.issubdtype(arr.dtype, np.number):
        raise LensexpError(f"{path}: dtype {arr.dtype} is not numeric.")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise LensexpError(f"{path}: {bad} NaN/Inf pixels; fix or remove this file.")
    return arr


def check_size(path: Path, image: np.ndarray, expected: tuple[int, int]) -> None:
    """Raise a LensexpError unless `image` is `expected` pixels."""
    if tuple(image.shape) != tuple(expected):
        raise LensexpError(
            f"{path}: image is {image.shape[0]}x{image.shape[1]}, expected "
            f"{expected[0]}x{expected[1]} (set data.image_size to change it)."
        )


def list_npy(folder: Path) -> list[Path]:
    """Sorted `.npy` files directly inside `folder`."""
    return sorted(p for p in folder.iterdir() if p.suffix == ".npy" and p.is_file())
