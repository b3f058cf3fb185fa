"""The report of a Hydra multirun: one row per configuration, seeds aggregated.

Each job folder of a sweep holds Hydra's `.hydra/overrides.yaml` (what defines the job) and,
when it finished, lensexp's `results.json`; a failed job holds `error.txt` instead. From these
alone `write_sweep_report(SWEEP_DIR)` writes `report.md`, `report.csv` and `report.png` (the
monitored metric per configuration) into the sweep folder, for a finished, interrupted or
partly failed sweep alike; an Optuna search adds its trials ranked, the best trial's command
and Optuna's plots (`lensexp.reporting.optuna_study`). `SweepReport` is the Hydra callback that does it as jobs end.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from hydra.core.utils import JobReturn, JobStatus  # noqa: E402
from hydra.experimental.callback import Callback  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from lensexp.errors import LensexpError  # noqa: E402
from lensexp.reporting.files import write_text_atomic  # noqa: E402
from lensexp.reporting.optuna_study import optuna_section, sweeper_config  # noqa: E402

SEED_KEY = "seed"
ERROR_FILE = "error.txt"


@dataclass
class Job:
    """One job folder of a sweep."""

    folder: Path
    overrides: list[str]
    status: str  # ok | failed | incomplete
    results: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    @property
    def seed(self) -> str | None:
        return next((o.split("=", 1)[1] for o in self.overrides if _key(o) == SEED_KEY), None)


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _label(override: str) -> str:
    """How an override reads in the report: sweep files select their jobs' experiment as
    `+experiment@_global_=NAME`, which says no more than `experiment=NAME`."""
    key, _, value = override.partition("=")
    return f"{_key(key).split('@', 1)[0]}={value}"


def read_jobs(sweep_dir: Path) -> list[Job]:
    """Every job folder under `sweep_dir` (those holding `.hydra/overrides.yaml`), in job order."""
    jobs = []
    for overrides_file in sorted(Path(sweep_dir).glob("**/.hydra/overrides.yaml")):
        folder = overrides_file.parent.parent
        overrides = [str(o) for o in OmegaConf.load(overrides_file)]
        if (folder / "results.json").is_file():
            results = json.loads((folder / "results.json").read_text())
            jobs.append(Job(folder, overrides, "ok", results))
        elif (folder / ERROR_FILE).is_file():
            error = (folder / ERROR_FILE).read_text().strip().splitlines()
            jobs.append(Job(folder, overrides, "failed", error=error[-1] if error else ""))
        else:
            jobs.append(Job(folder, overrides, "incomplete"))
    return sorted(jobs, key=lambda j: (len(j.folder.parts), _job_number(j.folder)))


def _job_number(folder: Path) -> tuple[int, str]:
    return (int(folder.name), "") if folder.name.isdigit() else (1 << 30, folder.name)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


def _metric(results: dict[str, Any], group: str, name: str | None) -> float | None:
    value = (results.get(group) or {}).get(name) if name else None
    return None if value is None else float(value)


def summarise(jobs: Sequence[Job]) -> tuple[list[dict[str, Any]], list[str], str | None]:
    """Rows (one per configuration: the overrides that vary, seeds pooled), the overrides all
    jobs share, and the monitored metric."""
    if not jobs:
        return [], [], None
    varying = {
        _key(o)
        for job in jobs
        for o in job.overrides
        if _key(o) != SEED_KEY and any(o not in other.overrides for other in jobs)
    }
    common = [o for o in jobs[0].overrides if _key(o) not in varying and _key(o) != SEED_KEY]
    monitor = next((j.results.get("monitor") for j in jobs if j.results), None)
    bicubic = f"{monitor}_bicubic" if monitor else None
    groups: dict[tuple[str, ...], list[Job]] = {}
    for job in jobs:
        config = tuple(o for o in job.overrides if _key(o) in varying)
        groups.setdefault(config, []).append(job)
    rows = []
    for config, members in groups.items():
        done = [j for j in members if j.status == "ok"]
        best = _mean_std([j.results.get("best_value") for j in done])
        final = _mean_std([_metric(j.results, "final_metrics", monitor) for j in done])
        base = _mean_std([_metric(j.results, "val_metrics", bicubic) for j in done])
        statuses = [j.status for j in members]
        rows.append(
            {
                "configuration": " ".join(map(_label, config)) or "(no overrides)",
                "seeds": len(done),
                "best_mean": best[0],
                "best_std": best[1],
                "final_mean": final[0],
                "final_std": final[1],
                "bicubic_mean": base[0],
                "epochs": _mean_std([j.results.get("epochs") for j in done])[0],
                "wall_time_s": sum(j.results.get("wall_time_s") or 0.0 for j in done),
                "status": ", ".join(f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses)),
                "errors": "; ".join(f"{j.folder.name}: {j.error}" for j in members if j.error),
                "folders": " ".join(j.folder.name for j in members),
            }
        )
    return rows, common, monitor


def _fmt(value: Any, std: float | None = None) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        text = f"{value:.4f}"
        return text if not std else f"{text} ± {std:.4f}"
    return str(value).replace("|", "\\|")


def _bar_chart(rows: list[dict[str, Any]], monitor: str, path: Path) -> None:
    shown = [r for r in rows if not math.isnan(r["best_mean"])]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(shown) + 2), 3.6), layout="constrained")
    if shown:
        x = range(len(shown))
        ax.bar(x, [r["best_mean"] for r in shown], yerr=[r["best_std"] for r in shown], capsize=3)
        ax.set_xticks(list(x), [r["configuration"] for r in shown], rotation=30, ha="right")
        baseline = [r["bicubic_mean"] for r in shown if not math.isnan(r["bicubic_mean"])]
        if baseline:
            ax.axhline(statistics.fmean(baseline), color="k", ls="--", lw=1, label="bicubic")
            ax.legend()
        low = min(r["best_mean"] - r["best_std"] for r in shown)
        high = max(r["best_mean"] + r["best_std"] for r in shown)
        pad = 0.1 * (high - low) or 0.05 * abs(high) or 1.0
        ax.set_ylim(low - pad, high + pad)
    ax.set_ylabel(f"best {monitor}")
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


COLUMNS = [
    "configuration", "seeds", "best_mean", "best_std", "final_mean", "final_std",
    "bicubic_mean", "epochs", "wall_time_s", "status", "errors", "folders",
]  # fmt: skip


def write_sweep_report(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Write `report.md`, `report.csv` and `report.png` into `sweep_dir`; return the rows."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise LensexpError(f"{sweep_dir}: no such folder; give a Hydra multirun folder.")
    jobs = read_jobs(sweep_dir)
    if not jobs:
        raise LensexpError(
            f"{sweep_dir}: no job folders (none holds .hydra/overrides.yaml); give the folder "
            f"of a `python train.py -m ...` sweep, e.g. outputs/train/multiruns/<stamp>."
        )
    rows, common, monitor = summarise(jobs)
    with_bicubic = any(not math.isnan(r["bicubic_mean"]) for r in rows)
    lines = [
        f"# Sweep report: {sweep_dir.name}",
        "",
        f"{len(jobs)} job(s), {len(rows)} configuration(s); monitored metric: "
        f"`{monitor or 'unknown'}` (best = best epoch's value, final = last epoch's; "
        f"mean ± std over seeds).",
        f"Shared overrides: `{' '.join(common)}`" if common else "Shared overrides: none",
        "",
        "| configuration | seeds | best | final |"
        + (" bicubic |" if with_bicubic else "")
        + " epochs | wall time (s) | status |",
        "| --- | ---: | ---: | ---: |"
        + (" ---: |" if with_bicubic else "")
        + " ---: | ---: | --- |",
    ]
    for r in rows:
        cells = [
            f"`{r['configuration']}`",
            str(r["seeds"]),
            _fmt(r["best_mean"], r["best_std"]),
            _fmt(r["final_mean"], r["final_std"]),
            *([_fmt(r["bicubic_mean"])] if with_bicubic else []),
            "-" if math.isnan(r["epochs"]) else f"{r['epochs']:g}",
            f"{r['wall_time_s']:.0f}",
            _fmt(r["status"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [r for r in rows if r["errors"]]
    if failed:
        lines += ["", "## Errors", ""]
        lines += [f"- `{r['configuration']}`: {_fmt(r['errors'])}" for r in failed]
    sweeper = sweeper_config(sweep_dir, [j.folder for j in jobs])
    if sweeper is not None:
        lines += optuna_section(sweeper, jobs, sweep_dir)
    write_text_atomic(sweep_dir / "report.md", "\n".join(lines) + "\n")

    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    # Jobs of a parallel launcher may rewrite the report at the same time: never a torn file.
    write_text_atomic(sweep_dir / "report.csv", table.getvalue())
    if monitor:
        _bar_chart(rows, monitor, sweep_dir / "report.png")
    return rows


def _rank_zero() -> bool:
    """Whether this is the first process of its job: a multi-task SLURM job (submitit) runs the
    job, and this callback, in each of its processes."""
    return all(os.environ.get(k, "0") == "0" for k in ("SLURM_PROCID", "RANK", "LOCAL_RANK"))


class SweepReport(Callback):
    """Hydra callback: record a failed job's error in its folder, and rewrite the sweep's
    report after every job and at the end of the multirun."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN or not _rank_zero():
            return
        job_dir = Path(config.hydra.runtime.output_dir)
        if job_return.status == JobStatus.FAILED:
            try:
                job_return.return_value  # noqa: B018 (raises the job's exception)
            except Exception as err:
                text = "".join(traceback.format_exception(err))
                # The last line is the summary the report shows: the error's first line (Hydra's
                # instantiation errors end in a bare "full_key: ..." line).
                first = next((ln for ln in str(err).splitlines() if ln.strip()), "")
                write_text_atomic(job_dir / ERROR_FILE, f"{text}{type(err).__name__}: {first}\n")
        write_sweep_report(config.hydra.sweep.dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        rows = write_sweep_report(config.hydra.sweep.dir)
        print(f"sweep report ({len(rows)} configuration(s)): {config.hydra.sweep.dir}/report.md")
