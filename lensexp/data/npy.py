"""Reading and checking single DeepLense `.npy` images.

An image is read as a float32 (C, H, W) array: C bands (1 for Model I-III, 3 for Model IV).
Object arrays (the Model I-IV axion files `[image, axion_mass]`) are pickles. They are read by
an unpickler that admits only what numpy arrays, dtypes and numbers need, so a crafted file
cannot run code, whatever `data.allow_pickle` says.
"""

from __future__ import annotations

import logging
import math
import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from lensexp.errors import LensexpError

log = logging.getLogger(__name__)

# data.normalize: per-image min-max to [0, 1], or the pixel values as the files hold them.
NORMALIZE = ("minmax", "none")
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


def _image_and_mass_of_object_array(
    arr: np.ndarray, path: Path, allow_pickle: bool
) -> tuple[np.ndarray, float]:
    """The image and axion mass (eV) of a Model I-IV `[image, axion_mass]` object array; with
    `allow_pickle`, the first array element of any other object array and a NaN mass."""
    items = list(arr.flat)
    axion_layout = (
        len(items) == 2
        and isinstance(items[0], np.ndarray)
        and isinstance(items[1], int | float | np.number)
    )
    if axion_layout:
        # A complex "mass" is no mass: kept as unknown rather than cut to its real part.
        real = isinstance(items[1], int | float | np.integer | np.floating)
        return items[0], float(items[1]) if real else math.nan
    if allow_pickle:
        first = next((x for x in items if isinstance(x, np.ndarray)), None)
        if first is not None:
            return first, math.nan
    found = ", ".join(type(x).__name__ for x in items[:4]) or "nothing"
    raise LensexpError(
        f"{path}: object array holding [{found}]; lensexp reads [image, axion_mass] (Model I-IV)"
        + (
            "."
            if allow_pickle
            else "; set data.allow_pickle=true to take the first array of other object arrays."
        )
    )


def band_axis(shape: tuple[int, ...], path: Path) -> int | None:
    """Where the bands of an array of `shape` are: 0 ((C, H, W)), -1 ((H, W, C)), or None for
    one band ((H, W)); raise a LensexpError naming `path` for any other shape.

    A 3-D array's band axis is the one strictly smaller than the other two, first or last:
    (1, 150, 150) and (3, 64, 64) are (C, H, W), (64, 64, 3) is (H, W, C). Shapes where that
    does not decide, such as (3, 3, 3) or (64, 3, 64), are refused rather than guessed.
    """
    if len(shape) == 2:
        return None
    if len(shape) == 3:
        first, middle, last = shape
        if first < min(middle, last):
            return 0
        if last < min(first, middle):
            return -1
        raise LensexpError(
            f"{path}: array of shape {tuple(shape)}; its band axis is ambiguous (lensexp takes "
            f"the axis strictly smaller than the other two, first or last). Save it as "
            f"(C, H, W)."
        )
    raise LensexpError(
        f"{path}: array of shape {tuple(shape)}; expected (H, W), (C, H, W) or (H, W, C)."
    )


def read_image(path: Path, allow_pickle: bool = False) -> np.ndarray:
    """Load one image as a float32 (C, H, W) array (see `read_image_and_mass`)."""
    return read_image_and_mass(path, allow_pickle)[0]


def read_image_and_mass(path: Path, allow_pickle: bool = False) -> tuple[np.ndarray, float]:
    """Load one image as a float32 (C, H, W) array and its axion mass in eV (NaN for a file
    without one), or raise a LensexpError naming the file.

    Accepts (H, W) (one band), (C, H, W) and (H, W, C) arrays (see `band_axis`) of any numeric
    dtype, and the Model I-IV object arrays `[image, axion_mass]` (read without running code;
    `allow_pickle` admits other object arrays, taking their first array).
    """
    try:
        with open(path, "rb") as fh:
            magic = fh.read(len(NPY_MAGIC))
    except OSError as err:
        raise LensexpError(f"{path}: unreadable file ({err}).") from err
    if magic != NPY_MAGIC and not magic.startswith(b"PK"):
        # np.load takes any other bytes for a pickle: it would advise allow_pickle, then fail.
        raise LensexpError(f"{path}: not a .npy file (empty, or no NumPy header).")
    arr, mass = None, math.nan
    if magic == NPY_MAGIC:
        try:
            with open(path, "rb") as fh:
                arr = _object_array(fh, path)
        except (ValueError, OSError, EOFError) as err:
            raise LensexpError(f"{path}: not a readable .npy file ({err}).") from err
    if arr is not None:
        image, mass = _image_and_mass_of_object_array(arr, path, allow_pickle)
        arr = np.asarray(image)
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
    if band_axis(arr.shape, path) == -1:
        arr = np.moveaxis(arr, -1, 0)
    elif arr.ndim == 2:
        arr = arr[None]
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
    return arr, mass


def shape_mismatch(
    path: Path, shape: tuple[int, ...], expected: tuple[int, ...], what: str = "image"
) -> str | None:
    """What differs between a (C, H, W) image `shape` and the `expected` one, led by `path`
    (`what` names the image, e.g. `HR image`); None when they agree."""
    (c, h, w), (ec, eh, ew) = shape, expected
    if (h, w) != (eh, ew):
        return f"{path}: {what} is {h}x{w}, expected {eh}x{ew}"
    if c != ec:
        return f"{path}: {what} has {c} band(s), expected {ec}"
    return None


def check_size(path: Path, image: np.ndarray, expected: tuple[int, ...], hint: str) -> None:
    """Raise a LensexpError unless the (C, H, W) `image` has the `expected` shape; `hint` says
    where the expected shape came from and what to change."""
    problem = shape_mismatch(path, tuple(image.shape), tuple(expected))
    if problem is not None:
        raise LensexpError(f"{problem} ({hint}).")


def normalize_image(image: np.ndarray, mode: str) -> np.ndarray:
    """`image` min-max normalised to [0, 1] over all its pixels and bands (`minmax`), or as it
    is (`none`). A constant image has no range to divide by, so it is kept as it is."""
    if mode == "none":
        return image
    low, high = float(image.min()), float(image.max())
    if high <= low:
        return image
    # float64 arithmetic: float32 raw fluxes can span a range where (x - low) loses digits.
    return ((image.astype(np.float64) - low) / (high - low)).astype(np.float32)


def npy_header_shape(path: Path) -> tuple[int, ...] | None:
    """The array shape in a `.npy` header, or None where only loading can tell (pickles, junk).

    Reading headers is cheap, so sizes are checked with a clear message before any packing.
    """
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                return None
    except (OSError, ValueError, EOFError):
        return None  # read_image reports unreadable files, naming them, when packing
    if dtype.hasobject:
        return None
    return tuple(int(s) for s in shape)


def header_image_shape(path: Path) -> tuple[int, int, int] | None:
    """The (C, H, W) shape `read_image` will give for `path`, from its header alone; None where
    only loading can tell (pickles, unreadable files, shapes `read_image` refuses)."""
    shape = npy_header_shape(path)
    if shape is None or len(shape) not in (2, 3):
        return None
    try:
        axis = band_axis(shape, path)
    except LensexpError:
        return None  # read_image refuses it, naming the file, when packing
    if axis is None:
        return (1, *shape)
    return shape if axis == 0 else (shape[2], shape[0], shape[1])


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
