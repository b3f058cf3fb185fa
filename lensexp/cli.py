"""Shared plumbing of the entry points: project root for configs, one-line errors."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from lensexp.errors import LensexpError


def set_project_root(entry_file: str) -> str:
    """Point `paths.root_dir` at the entry script's folder (unless LENSEXP_ROOT is set) and
    return the config folder beside it."""
    root = Path(entry_file).resolve().parent
    os.environ.setdefault("LENSEXP_ROOT", str(root))
    return str(root / "conf")


def _user_error(err: BaseException) -> LensexpError | None:
    """The LensexpError behind `err`: itself, or the cause Hydra wrapped while instantiating."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, LensexpError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def run_reporting_errors(fn: Callable[[], Any]) -> Any:
    """Run `fn`; a LensexpError (bad input or config), also one raised inside Hydra's
    `instantiate`, becomes one line on stderr and exit 1."""
    try:
        return fn()
    except Exception as err:
        user_error = _user_error(err)
        if user_error is None:
            raise
        print(f"lensexp: error: {user_error}", file=sys.stderr)
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            # An exception, not an exit: Hydra records this job as failed and runs the others.
            raise user_error from None
        sys.exit(1)
