"""Shared plumbing of the entry points: project root for configs, one-line errors."""

from __future__ import annotations

import os
import shutil
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


# What a run folder holds before a run has made anything: Hydra's record and the log, the
# resolved config and the provenance.
BOOKKEEPING = (".hydra", "config.yaml", "provenance.json")


def remove_if_nothing_made(run_dir: Path, log_name: str) -> None:
    """Remove a failed run's folder when it holds only bookkeeping (and Hydra's `log_name`), so
    it does not pass for a run (e.g. in TensorBoard's run list); a folder holding anything else
    is left as it is."""
    if not run_dir.is_dir():
        return
    if all(p.name in (*BOOKKEEPING, log_name) for p in run_dir.iterdir()):
        shutil.rmtree(run_dir)


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
        if HydraConfig.initialized():
            hydra = HydraConfig.get()
            remove_if_nothing_made(Path(hydra.runtime.output_dir), f"{hydra.job.name}.log")
        sys.exit(1)
