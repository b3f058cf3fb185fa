"""What the benchmark sections share: composing run configs, the machine's description, memory
readings (Linux /proc) and running a measurement in its own process (for its peak memory)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from lensexp.hydra_setup import compose_run_config
from lensexp.provenance import machine

ROOT = Path(__file__).resolve().parent.parent


def compose_cfg(overrides: list[str], data_dir: Path, out: Path) -> DictConfig:
    """The config `python train.py OVERRIDES` would run, data and outputs where given."""
    paths = [f"paths.data_dir={data_dir}", f"paths.output_dir={out}"]
    return compose_run_config(ROOT / "conf", [*paths, *overrides])


def describe_machine() -> str:
    """One line: CPU model, cores, Python, torch and its threads, GPU."""
    m = machine()
    gpu = m["gpu"] or "no GPU"
    return (
        f"{m['cpu']}, {m['usable_cpus']} usable of {m['cpu_count']} cores, {gpu}; Python "
        f"{platform.python_version()}, torch {torch.__version__} ({m['torch_num_threads']} "
        f"threads, {m['torch_num_interop_threads']} inter-op)"
    )


def _status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _smaps_kib(pid: int, *keys: str) -> int:
    """The sum of `keys` in /proc/PID/smaps_rollup (kB), 0 where unreadable."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return 0
    return sum(int(line.split()[1]) for line in lines if line.split(":")[0] in keys)


def pss_kib(pid: int) -> int:
    """Proportional set size (shared pages split among their users), 0 where unreadable."""
    return _smaps_kib(pid, "Pss")


def private_kib(pid: int) -> int:
    """Pages of `pid` that no other process shares (clean or dirty), 0 where unreadable."""
    return _smaps_kib(pid, "Private_Clean", "Private_Dirty")


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM) so far, MiB."""
    return _status_kib(os.getpid(), "VmHWM") / 1024


def run_probe(name: str, **args: Any) -> dict[str, Any]:
    """Run `benchmarks.probes.<name>(**args)` in a fresh process; its JSON result."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.probes", name, json.dumps(args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"probe {name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])
