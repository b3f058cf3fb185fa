"""Reading and checking single DeepLense `.npy` images.

Object arrays (the Model I-IV axion files `[image, axion_mass]`) are pickles. They are read by
an unpickler that admits only what numpy arrays, dtypes and numbers need, so a crafted file
cannot run code, whatever `data.allow_pickle` says.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from lensexp.errors import LensexpError

log = logging.getLogger(__name__)

NPY_MAGIC = b"\x93NUMPY"
# The globals a pickled numpy object array of arrays and numbers refers to (numpy 1.x and 2.x
# module names), and nothing else: no callable here can run code or touch files.
NUMPY_GLOBALS = {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name}")


def _object_array(fh: BinaryIO, path: Path) -> np.ndarray | None:
    """The object array stored in `fh` (positioned after the magic), unpickled with only numpy
    globals; None when the file holds a plain (non-object) array."""
    fh.seek(0)
    version = np.lib.format.read_magic(fh)
    read_header = (
        np.lib.format.read_array_header_1_0
        if version == (1, 0)
        else np.lib.format.read_array_header_2_0
    )
    _, _, dtype = read_header(fh)
    if not dtype.hasobject:
        return None
    try:
        arr = _NumpyOnlyUnpickler(fh).load()
    except pickle.UnpicklingError as err:
        raise LensexpError(
            f"{path}: refused: its pickled content calls {err}, which is not numpy array data; "
            f"lensexp never runs code from a data file. Re-save the image as a plain array "
            f"(np.save(path, image))."
        ) from None
    except Exception as err:  # truncated or corrupt pickle stream
        raise LensexpError(f"{path}: unreadable or truncated object array ({err}).") from None
    if not isinstance(arr, np.ndarray):
        raise LensexpError(f"{path}: holds a pickled {type(arr).__name__}, not an array.")
    return arr


def _image_of_object_array(arr: np.ndarray, path: Path, allow_pickle: bool) -> np.ndarray:
    """The image of a Model I-IV `[image, axion_mass]` object array; with `allow_pickle`, the
    first array element of any other object array."""
    items = list(arr.flat)
    axion_layout = (
        len(items) == 2
        and isinstance(items[0], np.ndarray)
        and isinstance(items[1], int | float | np.number)
    )
    if axion_layout:
        return items[0]
    if allow_pickle:
        first = next((x for x in items if isinstance(x, np.ndarray)), None)
        if first is not None:
            return first
    found = ", ".join(type(x).__name__ for x in items[:4]) or "nothing"
    raise LensexpError(
        f"{path}: object array holding [{found}]; lensexp reads [image, axion_mass] (Model I-IV)"
        + (
            "."
            if allow_pickle
            else "; set data.allow_pickle=true to take the first array of other object arrays."
        )
    )


def read_image(path: Path, allow_pickle: bool = False) -> np.ndarray:
    """Load one image as a float32 (H, W) array, or raise a LensexpError naming the file.

    Accepts (H, W) and (1, H, W) arrays of any numeric dtype, and the Model I-IV object arrays
    `[image, axion_mass]` (read without running code; `allow_pickle` admits other object
    arrays, taking their first array).
    """
    try:
        with open(path, "rb") as fh:
            magic = fh.read(len(NPY_MAGIC))
    except OSError as err:
        raise LensexpError(f"{path}: unreadable file ({err}).") from err
    if magic != NPY_MAGIC and not magic.startswith(b"PK"):
        # np.load takes any other bytes for a pickle: it would advise allow_pickle, then fail.
        raise LensexpError(f"{path}: not a .npy file (empty, or no NumPy header).")
    arr = None
    if magic == NPY_MAGIC:
        try:
            with open(path, "rb") as fh:
                arr = _object_array(fh, path)
        except (ValueError, OSError, EOFError) as err:
            raise LensexpError(f"{path}: not a readable .npy file ({err}).") from err
    if arr is not None:
        arr = np.asarray(_image_of_object_array(arr, path, allow_pickle))
    else:
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as err:
            raise LensexpError(f"{path}: not a readable .npy file ({err}).") from err
        except (OSError, EOFError) as err:
            raise LensexpError(f"{path}: unreadable or truncated .npy file ({err}).") from err
        if isinstance(arr, np.lib.npyio.NpzFile):
            arr.close()
            raise LensexpError(
                f"{path}: is an .npz archive; lensexp reads one image per .npy file."
            )
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise LensexpError(f"{path}: array of shape {arr.shape}; expected (H, W) or (1, H, W).")
    # Integers and floats are pixel values; a complex or boolean image is not (converting would
    # silently drop the imaginary part or turn a mask into an image).
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise LensexpError(
            f"{path}: dtype {arr.dtype}; lensexp reads integer or floating-point images. "
            f"Convert the file (e.g. np.save(path, image.astype(np.float32)))."
        )
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


def inside(path: Path, root: Path) -> bool:
    """Whether `path`, symlinks resolved, lies under `root` (a link may lead anywhere)."""
    return path.resolve().is_relative_to(root.resolve())


def list_npy(folder: Path, root: Path, what: str) -> list[Path]:
    """Sorted `.npy` files directly inside `folder` that lie inside `root`.

    Other files, and symlinks leading out of `root`, are skipped with one warning saying how
    many (`what` names the folder's role in it, e.g. `class folder`).
    """
    files, other, outside = [], 0, 0
    for path in folder.iterdir():
        if path.suffix != ".npy" or not path.is_file():
            other += path.is_file()
        elif not inside(path, root):
            outside += 1
        else:
            files.append(path)
    if other or outside:
        log.warning(
            "%s (%s): skipped %d file(s) that are not .npy and %d symlink(s) leading outside "
            "data.root=%s",
            folder, what, other, outside, root,
        )  # fmt: skip
    return sorted(files)
