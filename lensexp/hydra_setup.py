"""What Hydra needs before it composes lensexp's configs: the resolvers they use, and the one
warning lensexp's launcher files cause by design. The entry points call `prepare_hydra`;
`compose_run_config` composes a run's config outside an entry point (notebooks, tests,
benchmarks)."""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict


def parallel_jobs(num_threads: int | str | None) -> int:
    """How many jobs a local parallel launcher runs at once: the cores this process may use
    divided by each job's torch threads (`runtime.num_threads`; auto counting as 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    per_job = int(num_threads) if str(num_threads).isdigit() else 1
    return max(1, (cores or 1) // max(1, per_job))


def ddp_find_unused_parameters(module_target: str) -> bool:
    """Whether DDP must look for parameters without gradients in the model `module_target`
    (its class attribute `ddp_find_unused_parameters`; the adversarial SR module sets it)."""
    module_path, _, name = module_target.rpartition(".")
    cls = getattr(importlib.import_module(module_path), name)
    return bool(getattr(cls, "ddp_find_unused_parameters", False))


def run_name(choices: Mapping[str, Any]) -> str:
    """A run's name in TensorBoard's run list, from Hydra's config choices: the experiment if
    one is chosen (a sweep's own entry, e.g. a trail of `sr_trails`, before the sweep file),
    the model, and the ablation step of an `sr_ablation` job: `small_resnet`,
    `trail_vgg-srresnet`, `classifier_backbones-resnet18`, `sr_ablation-srresnet-prelu`."""
    experiment = choices.get("experiment@_global_") or choices.get("experiment")
    parts = (experiment, choices["model"], choices.get("ablation"))
    return "-".join(str(part) for part in parts if part)


RESOLVERS = {
    "lensexp.run_name": run_name,
    "lensexp.parallel_jobs": parallel_jobs,
    "lensexp.ddp_find_unused_parameters": ddp_find_unused_parameters,
}


def prepare_hydra() -> None:
    """Register lensexp's resolvers and silence Hydra's schema-matching notice (idempotent)."""
    for name, resolver in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)
    # conf/hydra/launcher/{joblib,submitit_slurm}.yaml keep the plugins' own option names, so
    # Hydra checks them against the plugins' schemas (a misspelt key fails) and says that this
    # matching is deprecated. The files list every key, so they work without it too.
    warnings.filterwarnings("ignore", message=r"(?s).*validated against ConfigStore schema")


def compose_run_config(
    config_dir: str | Path, overrides: Sequence[str], config_name: str = "train"
) -> DictConfig:
    """The config `python <config_name>.py OVERRIDES` would run, composed without running it
    (notebooks, tests, benchmarks). Hydra's runtime config is installed as a run has it, so
    code that reads the chosen options (run names, the builders' checks) sees this one."""
    prepare_hydra()
    with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg
