"""What a run was made with: package versions and the git commit of the project, if any."""

from __future__ import annotations

import functools
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("lensexp", "torch", "torchvision", "lightning", "hydra-core", "lenstronomy", "numpy")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git(root: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


@functools.cache
def provenance(root: str | Path) -> dict[str, Any]:
    """Versions of the packages that shape a result, Python's, and `root`'s git commit (with
    `git_dirty`: uncommitted changes to tracked files), or None outside a git checkout.
    Computed once per process and root (the run folder and the checkpoints both record it)."""
    root = Path(root)
    commit = _git(root, "rev-parse", "HEAD")
    dirty = _git(root, "status", "--porcelain", "--untracked-files=no") if commit else None
    return {
        "versions": {p: _version(p) for p in PACKAGES} | {"python": platform.python_version()},
        "git_commit": commit,
        "git_dirty": None if dirty is None else bool(dirty),
    }
