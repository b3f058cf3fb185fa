"""What a run was made with: package versions, the git commit of the project (if any) and the
machine it ran on (CPU, cores, torch threads, GPU)."""

from __future__ import annotations

import functools
import os
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


def cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def usable_cpus() -> int:
    """The CPU cores this process may run on (its affinity: a SLURM or container limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def machine() -> dict[str, Any]:
    """The machine as it runs now: CPU, cores, torch's thread settings, the GPU if any."""
    import torch  # here: the simulator imports this module without torch

    return {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def provenance(root: str | Path) -> dict[str, Any]:
    """`code_provenance(root)` and the `machine` (threads as set now)."""
    return code_provenance(root) | {"machine": machine()}


@functools.cache
def code_provenance(root: str | Path) -> dict[str, Any]:
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
