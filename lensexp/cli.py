"""Shared plumbing of the entry points: project root for configs, one-line errors."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lensexp.errors import LensexpError


def set_project_root(entry_file: str) -> str:
    """Point `paths.root_dir` at the entry script's folder (unless LENSEXP_ROOT is set) and
    return the config folder beside it."""
    root = Path(entry_file).resolve().parent
    os.environ.setdefault("LENSEXP_ROOT", str(root))
    return str(root / "conf")


def run_reporting_errors(fn: Callable[[], Any]) -> Any:
    """Run `fn`; a LensexpError (bad input or config) becomes one line on stderr and exit 1."""
    try:
        return fn()
    except LensexpError as err:
        print(f"lensexp: error: {err}", file=sys.stderr)
        sys.exit(1)
