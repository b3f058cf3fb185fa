"""The training run that `train.py` calls: build, fit, report the best checkpoint."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

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
from lensexp.evaluation import evaluate_module
from lensexp.provenance import provenance
from lensexp.reporting.files import print_metrics_table, write_json, write_text_atomic


def _checkpoints(trainer: L.Trainer) -> tuple[ModelCheckpoint | None, ModelCheckpoint | None]:
    """The best-by-monitor checkpoint callback and the one that writes last.ckpt."""
    callbacks = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]
    best = next((c for c in callbacks if c.monitor is not None), None)
    last = next((c for c in callbacks if c.monitor is None), None)
    return best, last


def _validate_best(
    cfg: DictConfig,
    trainer: L.Trainer,
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    best_path: str,
) -> dict[str, float]:
    """Load the best checkpoint's weights into `module`; return its validation metrics.

    When the best checkpoint is the final step, the last validation of `fit` already scored these
    very weights, so its numbers are taken as they are; otherwise the checkpoint is validated
    afresh (as far as the run validated: a limited run stays short).
    """
    if best_path:
        checkpoint = torch.load(best_path, map_location="cpu", weights_only=True)
        module.load_state_dict(checkpoint["state_dict"])
        if checkpoint["global_step"] != trainer.global_step:
            validated = build_report_trainer(cfg, keep_limits=True).validate(
                module, datamodule=datamodule, verbose=False
            )[0]
            return {k: float(v) for k, v in validated.items()}
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}


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


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train as `cfg` says; write `results.json` and the best checkpoint's reports on the
    validation split (which selected it) and the test split (which did not)."""
    started = time.perf_counter()
    cfg, ckpt_path = resume_config(cfg)
    task = check_compatible(cfg)
    configure_runtime(cfg)  # before any work; provenance.json records the threads
    out = output_dir(cfg)
    config_path = out / "config.yaml"
    write_text_atomic(config_path, OmegaConf.to_yaml(cfg, resolve=True))
    write_json(out / "provenance.json", provenance(cfg.paths.root_dir))
    L.seed_everything(cfg.seed, workers=True)

    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule)
    trainer = build_trainer(cfg)
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

    best, last = _checkpoints(trainer)
    best_path = best.best_model_path if best is not None else ""
    best_score = best.best_model_score if best is not None else None
    # The last epoch's numbers, before the best checkpoint's weights replace the final ones.
    final = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    validated = _validate_best(cfg, trainer, module, datamodule, best_path)
    report_dir = out / "best_val"
    report = evaluate_module(
        module, datamodule, build_report_trainer(cfg, keep_limits=True), "val", report_dir
    )
    test_dir = out / "best_test"
    test_report = _test_best(cfg, module, datamodule, test_dir)
    results = {
        "task": task,
        "monitor": cfg.monitor,
        "monitor_mode": cfg.monitor_mode,
        "best_value": None if best_score is None else float(best_score),
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
