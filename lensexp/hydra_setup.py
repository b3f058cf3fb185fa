"""What Hydra needs before it composes lensexp's configs: the resolvers they use, and the one
warning lensexp's launcher files cause by design. The entry points call `prepare_hydra`."""

from __future__ import annotations

import os
import warnings

from omegaconf import OmegaConf


def parallel_jobs(threads_per_job: int | None) -> int:
    """How many jobs a local parallel launcher runs at once: the cores this process may use
    divided by each job's threads (`threads_per_job`, null counting as 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, int(threads_per_job or 1)))


def prepare_hydra() -> None:
    """Register `lensexp.parallel_jobs` and silence Hydra's schema-matching notice (idempotent)."""
    if not OmegaConf.has_resolver("lensexp.parallel_jobs"):
        OmegaConf.register_new_resolver("lensexp.parallel_jobs", parallel_jobs)
    # conf/hydra/launcher/{joblib,submitit_slurm}.yaml keep the plugins' own option names, so
    # Hydra checks them against the plugins' schemas (a misspelt key fails) and says that this
    # matching is deprecated. The files list every key, so they work without it too.
    warnings.filterwarnings("ignore", message=r"(?s).*validated against ConfigStore schema")
