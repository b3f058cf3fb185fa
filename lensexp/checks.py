"""Small helpers for configuration values: one-line option checks and flattening nested settings.

The checks raise a `LensexpError` of the form `OPTION=VALUE: what is wrong; what to do`, where
OPTION is the full config key (e.g. `model.generator.activation`, `data.batch_size`), so the
message tells the user exactly what to change.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, TypeVar

from lensexp.errors import LensexpError

T = TypeVar("T")


def check_choice(option: str, value: T, valid: Collection) -> T:
    """Return `value` if it is one of `valid`, else raise naming `option` and the choices."""
    if value not in valid:
        choices = "|".join(str(v) for v in valid)
        raise LensexpError(f"{option}={value}: not a valid value; use one of {choices}.")
    return value


def check_int(option: str, value: Any, minimum: int) -> int:
    """Return `value` if it is an int >= `minimum` (not a bool, a float or a numeric string)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise LensexpError(f"{option}={value}: must be an integer >= {minimum}.")
    return value


def flatten(tree: Mapping, sep: str, *, keep_empty: bool = False) -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a<sep>b": 1}`: every non-mapping leaf under its joined key path.

    Keys become strings. An empty mapping has no leaves, so it leaves no entry, unless
    `keep_empty` makes it a leaf itself. lensexp joins metric names with "/" (`bicubic/psnr`)
    and simulator settings with "." (`halo.e1`).
    """
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and (value or not keep_empty):
            inner = flatten(value, sep, keep_empty=keep_empty)
            flat.update({f"{key}{sep}{k}": v for k, v in inner.items()})
        else:
            flat[str(key)] = value
    return flat
