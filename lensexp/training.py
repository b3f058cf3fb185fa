"""The training run that `train.py` calls: build, fit, report the best checkpoint."""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from lensexp.builders import (
    build_datamodule,
    build_module,
    build_report_trainer,
    build_trainer,
    check_compatible,
    config_from_checkpoint,
    configure_runtime,
    output_dir,
    read_checkpoint,
)
from lensexp.errors import LensexpError
from lensexp.evaluation import evaluate_module, predict_split, write_split_report
from lensexp.hydra_setup import prepare_hydra
from lensexp.provenance import provenance
from lensexp.reporting.files import print_metrics_table, write_json, write_text_atomic

# A config composed outside train.py (tests, notebooks) resolves with lensexp's resolvers too.
prepare_hydra()

# What Lightning's DDP launcher sets in the environment of the process that starts the others.
DDP_ENVIRONMENT = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def _checkpoints(trainer: L.Trainer) -> tuple[ModelCheckpoint | None, ModelCheckpoint | None]:
    """The best-by-monitor checkpoint callback and the one that writes last.ckpt."""
    callbacks = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]
    best = next((c for c in callbacks if c.monitor is not None), None)
    last = next((c for c in callbacks if c.monitor is None), None)
    return best, last


def _load_best(trainer: L.Trainer, module: L.LightningModule, best_path: str) -> bool:
    """Load the best checkpoint's weights into `module` (none: keep the final ones); whether
    they are the weights fit ended with (its last validation scored them)."""
    if not best_path:
        return True
    checkpoint = torch.load(best_path, map_location="cpu", weights_only=True)
    module.load_state_dict(checkpoint["state_dict"])
    return checkpoint["global_step"] == trainer.global_step


def _best_validation(
    cfg: DictConfig,
    trainer: L.Trainer,
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    best_path: str,
    final_weights: bool,
    fit_metrics: dict[str, float],
    val_outputs: list[Any],
) -> dict[str, float]:
    """The validation metrics of the weights in `module` (the best checkpoint's), whose
    predictions over the validation split are `val_outputs` (the report's).

    Where these are the weights `fit` ended with and the module evaluates as in `fit` (no
    test-time averaging), fit's last validation (`fit_metrics`) already scored them: its
    numbers stand.
    Otherwise, in one process, the task computes them from the report's predictions (one pass
    serves both, as far as the run validated: a limited run stays short); a task that cannot,
    and a run after DDP that kept a best checkpoint (`best_path`, loaded into `module`),
    validates afresh (`final_metrics` keeps the processes' own).
    """
    if trainer.world_size > 1:
        if not best_path:
            return fit_metrics
    elif final_weights and module.evaluates_as_in_fit:
        return fit_metrics
    else:
        derived = module.metrics_of_outputs(val_outputs)
        if derived is not None:
            return derived
    validated = build_report_trainer(cfg, keep_limits=True).validate(
        module, datamodule=datamodule, verbose=False
    )[0]
    return {k: float(v) for k, v in validated.items()}


def _test_best(
    cfg: DictConfig, module: L.LightningModule, datamodule: L.LightningDataModule, out_dir: Path
) -> dict[str, Any] | None:
    """The evaluation report of the test split with `module`'s weights (the best checkpoint's),
    written into `out_dir`; None when the data has no test split. Nothing here feeds back
    into training or checkpoint selection, which end before it."""
    if datamodule.test_source is None:
        print("no test split (no test/ folder and data.test_fraction=0): test_metrics is null")
        return None
    trainer = build_report_trainer(cfg, keep_limits=True)
    return evaluate_module(module, datamodule, trainer, "test", out_dir)


def resume_config(cfg: DictConfig) -> tuple[DictConfig, str | None]:
    """The config to train with and the checkpoint to resume from (`ckpt_path`).

    `ckpt_path=last` is this run folder's `checkpoints/last.ckpt` (with `hydra.run.dir=RUN`, the
    run to continue). The checkpoint's stored config is the run's config, with the command line
    on top, so `python train.py ckpt_path=PATH` needs nothing else.
    """
    if not cfg.get("ckpt_path"):
        return cfg, None
    path = str(cfg.ckpt_path)
    if path == "last":
        path = str(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")
        if not Path(path).is_file():
            raise LensexpError(
                f"ckpt_path=last: no {path}; give hydra.run.dir=RUN (the folder of the run to "
                f"resume) or ckpt_path=PATH."
            )
    return config_from_checkpoint(cfg, read_checkpoint(path), path, resume=True), path


def single_process(cfg: DictConfig) -> DictConfig:
    """`cfg` with a one-process, one-device trainer: the reports after a DDP fit, which rank 0
    writes alone."""
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.trainer.strategy, cfg.trainer.devices, cfg.trainer.num_nodes = "auto", 1, 1
    return cfg


def _share_run_folder(trainer: L.Trainer, out: Path) -> None:
    """Make the processes Lightning's DDP launches (it re-runs this script with `sys.argv`)
    join this run: its folder, and this job's overrides rather than a sweep's `-m` command line,
    which would start a sweep of their own."""
    if trainer.world_size == 1 or trainer.strategy.cluster_environment.creates_processes_externally:
        return  # one process, or every process started by srun/torchrun already
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    with read_write(hydra_cfg):
        # Lightning passes this as hydra.run.dir to the processes it starts.
        hydra_cfg.run.dir = str(out)
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]


def _end_distributed(trainer: L.Trainer, environment: dict[str, str | None]) -> bool:
    """After a DDP fit: wait for every process, leave the process group (the reports that
    follow are rank 0's alone, and synced metrics would wait for the others), and give back the
    environment as it was before `fit` (`environment`): the next job of a multirun would
    otherwise take the launcher's LOCAL_RANK for processes started by someone else, and wait
    for them. True on rank 0."""
    if trainer.world_size == 1:
        return True
    trainer.strategy.barrier()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    for key, value in environment.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    return trainer.is_global_zero


def _check_finite(trainer: L.Trainer) -> None:
    """A diverged run fails (an Optuna trial is then recorded as failed) instead of reporting
    a checkpoint from before the divergence."""
    loss = trainer.callback_metrics.get(
        "train/loss_epoch", trainer.callback_metrics.get("train/loss")
    )
    if loss is not None and not math.isfinite(float(loss)):
        raise LensexpError(
            f"training diverged: train/loss is {float(loss)} at epoch {trainer.current_epoch}; "
            f"lower optimizer.lr (or set trainer.gradient_clip_val)."
        )


def optimized_value(
    cfg: DictConfig, best_value: float | None, validated: dict[str, float]
) -> float | None:
    """What train.py returns to a sweeper: `optimized_metric` of the best checkpoint's
    validation metrics, or the monitored metric's best value when it is null (None when no
    checkpoint was saved, as in a fast_dev_run). A value that is not finite is a diverged run."""
    name = cfg.get("optimized_metric")
    value = best_value if name is None else validated.get(name)
    if name is not None and value is None:
        raise LensexpError(
            f"optimized_metric={name}: not a validation metric of this run; choose one of "
            f"{', '.join(sorted(validated))}."
        )
    if value is not None and not math.isfinite(value):
        raise LensexpError(
            f"training diverged: {name or cfg.monitor} is {value}; lower optimizer.lr (or set "
            f"trainer.gradient_clip_val)."
        )
    return None if value is None else float(value)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train as `cfg` says; write `results.json` and the best checkpoint's reports on the
    validation split (which selected it) and the test split (which did not).

    Under DDP every process trains; only rank 0 writes files, and it returns the results
    (other ranks return an empty dict)."""
    started = time.perf_counter()
    cfg, ckpt_path = resume_config(cfg)
    task = check_compatible(cfg)
    configure_runtime(cfg)  # before any work; provenance.json records the threads
    out = output_dir(cfg)
    config_path = out / "config.yaml"
    # Lightning sets the rank from the launcher's environment (LOCAL_RANK, SLURM_PROCID, RANK).
    if rank_zero_only.rank == 0:
        write_text_atomic(config_path, OmegaConf.to_yaml(cfg, resolve=True))
        write_json(out / "provenance.json", provenance(cfg.paths.root_dir))
    L.seed_everything(cfg.seed, workers=True)

    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule)
    trainer = build_trainer(cfg)
    _share_run_folder(trainer, out)
    environment = {key: os.environ.get(key) for key in DDP_ENVIRONMENT}
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:
        # Lightning stopped at a batch boundary and the on_exception callback saved the state;
        # the SystemExit it raises ends the process with status 0 and no traceback.
        saved = out / "checkpoints" / "interrupted.ckpt"
        print(
            f"lensexp: SIGTERM at epoch {trainer.current_epoch}, step {trainer.global_step}: "
            f"saved {saved}; resume with python train.py ckpt_path={saved}",
            file=sys.stderr,
        )
        raise
    if not _end_distributed(trainer, environment):
        return {}
    _check_finite(trainer)
    cfg = single_process(cfg) if trainer.world_size > 1 else cfg

    best, last = _checkpoints(trainer)
    best_path = best.best_model_path if best is not None else ""
    best_score = best.best_model_score if best is not None else None
    # The last epoch's numbers, before the best checkpoint's weights replace the final ones.
    final = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    final_weights = _load_best(trainer, module, best_path)
    report_dir = out / "best_val"
    val_outputs = predict_split(
        module, datamodule, build_report_trainer(cfg, keep_limits=True), "val"
    )
    validated = _best_validation(
        cfg, trainer, module, datamodule, best_path, final_weights, final, val_outputs
    )
    report = write_split_report(module, datamodule, val_outputs, "val", report_dir)
    test_dir = out / "best_test"
    test_report = _test_best(cfg, module, datamodule, test_dir)
    best_value = None if best_score is None else float(best_score)
    results = {
        "task": task,
        "monitor": cfg.monitor,
        "monitor_mode": cfg.monitor_mode,
        "best_value": best_value,
        "optimized_metric": cfg.get("optimized_metric") or cfg.monitor,
        "optimized_value": optimized_value(cfg, best_value, validated),
        "best_checkpoint": best_path or None,
        "last_checkpoint": (last.best_model_path or None) if last is not None else None,
        "val_metrics": validated,
        "final_metrics": final,
        "report_dir": str(report_dir),
        # The best checkpoint on the test split: held out from training and from selection.
        "test_metrics": test_report,
        "test_split": datamodule.test_source,
        "test_report_dir": None if test_report is None else str(test_dir),
        "pretrained_loaded": module.pretrained_loaded,
        "world_size": trainer.world_size,
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "wall_time_s": round(time.perf_counter() - started, 1),
        "config": str(config_path),
    }
    write_json(out / "results.json", results)
    print_metrics_table(report, title=f"{task}: validation metrics of the best checkpoint")
    if test_report is not None:
        title = f"{task}: test metrics of the best checkpoint, {datamodule.test_source}"
        print_metrics_table(test_report, title=title)
    print(f"best checkpoint: {best_path or '(none saved)'}")
    tested = "" if test_report is None else f", {test_dir}"
    print(f"figures and predictions: {report_dir}{tested}")
    print(f"results: {out / 'results.json'}")
    return results
