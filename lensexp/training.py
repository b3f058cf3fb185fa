"""How a composed config becomes objects, and the training run that `train.py` calls.

cfg.data      -> LightningDataModule      (task: classification | superres)
cfg.loss      -> loss nn.Module           (must share the data module's task)
cfg.model     -> TaskModule, given the loss, optimizer/scheduler partials and what the
                 data module knows (class names, scale)
cfg.trainer   -> lightning Trainer, with cfg.callbacks and cfg.logger
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from lensexp.callbacks import StoreConfig
from lensexp.errors import LensexpError
from lensexp.reporting.files import print_metrics_table, write_json

TASK_GROUPS = ("data", "loss", "model")


# -- compatibility --------------------------------------------------------------------------
def _target_of(node: Any) -> str | None:
    if isinstance(node, DictConfig | dict):
        return node.get("_target_")
    return None


def _task_of(target: str | None, key: str) -> str | None:
    if target is None:
        return None
    try:
        cls = get_class(target)
    except Exception as err:
        raise LensexpError(f"{key}._target_={target}: cannot be imported ({err}).") from err
    return getattr(cls, "task", None) or None


def _choices() -> dict[str, str]:
    """The group options picked for this run (`model: resnet18`), when Hydra is running."""
    if not HydraConfig.initialized():
        return {}
    return {k: str(v) for k, v in HydraConfig.get().runtime.choices.items() if v is not None}


def _config_dirs(cfg: DictConfig) -> list[Path]:
    if HydraConfig.initialized():
        return [
            Path(s.path)
            for s in HydraConfig.get().runtime.config_sources
            if s.provider == "main" and s.schema == "file"
        ]
    return [Path(OmegaConf.select(cfg, "paths.root_dir", default=".")) / "conf"]


def _options_by_task(cfg: DictConfig, group: str) -> dict[str, list[str]]:
    """For each task, the options of a config group that serve it (read from conf/)."""
    found: dict[str, list[str]] = {}
    for conf in _config_dirs(cfg):
        for file in sorted((conf / group).glob("*.yaml")):
            try:
                content = yaml.safe_load(file.read_text()) or {}
            except yaml.YAMLError:
                continue
            target = content.get("_target_") or (content.get(group) or {}).get("_target_")
            try:
                task = _task_of(target, group)
            except LensexpError:
                continue
            if task:
                found.setdefault(task, []).append(file.stem)
    return found


def check_compatible(cfg: DictConfig) -> str:
    """The run's task; one clear line if data, loss and model serve different tasks.

    Only classes are imported here, so a bad combination fails before any data or weights load.
    """
    tasks = {g: _task_of(_target_of(cfg.get(g)), g) for g in TASK_GROUPS}
    model_task = tasks["model"]
    if model_task is None:
        raise LensexpError(
            f"model._target_={_target_of(cfg.get('model'))}: not a lensexp task module."
        )
    choices = _choices()
    for group in ("data", "loss"):
        if tasks[group] != model_task:
            valid = _options_by_task(cfg, group).get(model_task, [])
            hint = f"choose {group}={'|'.join(valid)}" if valid else f"give a {model_task} {group}"
            raise LensexpError(
                f"{group}={choices.get(group, _target_of(cfg.get(group)))} is a "
                f"{tasks[group]} {group}, but model={choices.get('model', model_task)} is a "
                f"{model_task} model: {hint}."
            )
    return model_task


# -- building -------------------------------------------------------------------------------
def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    """The data module, with its dataset present (simulated first if it is the default one)."""
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    return datamodule


def build_module(cfg: DictConfig, datamodule: L.LightningDataModule) -> L.LightningModule:
    """The LightningModule, given its loss, optimizer, scheduler and what the data says."""
    loss = instantiate(cfg.loss)
    optimizer = instantiate(cfg.optimizer)
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    # _convert_: plain lists and dicts in hparams, so checkpoints load with weights_only=True.
    return instantiate(
        cfg.model,
        _convert_="all",
        loss=loss,
        optimizer=optimizer,
        scheduler=scheduler,
        **datamodule.state_for_model(),
    )


def build_callbacks(cfg: DictConfig) -> list[Callback]:
    """The callbacks of the `callbacks` group, plus the one storing the config in checkpoints."""
    callbacks: list[Callback] = []
    for node in (cfg.get("callbacks") or {}).values():
        if _target_of(node):
            callbacks.append(instantiate(node))
    callbacks.append(StoreConfig(OmegaConf.to_container(cfg, resolve=True)))
    return callbacks


def build_loggers(cfg: DictConfig) -> list[Any] | bool:
    """The loggers of the `logger` group, or False for none."""
    loggers = [instantiate(n) for n in (cfg.get("logger") or {}).values() if _target_of(n)]
    return loggers or False


def output_dir(cfg: DictConfig) -> Path:
    """This run's folder."""
    folder = Path(cfg.paths.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# Trainer settings that shorten a run, undone: a report covers the whole split.
NO_LIMITS = {"fast_dev_run": False, "limit_val_batches": 1.0, "limit_predict_batches": 1.0}


def quiet_trainer(cfg: DictConfig, keep_limits: bool = True) -> L.Trainer:
    """A trainer for one-off validation/prediction on the run's device, with no side effects."""
    return instantiate(
        cfg.trainer,
        **({} if keep_limits else NO_LIMITS),
        logger=False,
        callbacks=[],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_epochs=1,
        min_epochs=None,
    )


# -- the run ----------------------------------------------------------------------------------
def train(cfg: DictConfig) -> dict[str, Any]:
    """Train as `cfg` says; write `results.json` and the best checkpoint's report."""
    from lensexp.evaluation import evaluate_module

    started = time.perf_counter()
    task = check_compatible(cfg)
    out = output_dir(cfg)
    config_path = out / "config.yaml"
    config_path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    L.seed_everything(cfg.seed, workers=True)

    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule)
    callbacks = build_callbacks(cfg)
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=build_loggers(cfg))
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))

    checkpoints = [c for c in callbacks if isinstance(c, ModelCheckpoint)]
    checkpoint = next((c for c in checkpoints if c.monitor is not None), None)
    last = next((c for c in checkpoints if c.monitor is None), None)
    best_path = checkpoint.best_model_path if checkpoint is not None else ""
    best_score = checkpoint.best_model_score if checkpoint is not None else None
    # The reported numbers are those of the best checkpoint, validated afresh: this also
    # catches a checkpoint callback that kept the wrong one.
    final = quiet_trainer(cfg)
    validated = final.validate(
        module, datamodule=datamodule, ckpt_path=best_path or None, verbose=False
    )[0]
    report_dir = out / "best_val"
    report = evaluate_module(module, datamodule, quiet_trainer(cfg, False), "val", report_dir)

    results = {
        "task": task,
        "monitor": cfg.monitor,
        "monitor_mode": cfg.monitor_mode,
        "best_value": None if best_score is None else float(best_score),
        "best_checkpoint": best_path or None,
        "last_checkpoint": (last.best_model_path or None) if last is not None else None,
        "val_metrics": {k: float(v) for k, v in validated.items()},
        "report_dir": str(report_dir),
        "pretrained_loaded": module.hparams.get("pretrained_loaded"),
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "wall_time_s": round(time.perf_counter() - started, 1),
        "config": str(config_path),
    }
    write_json(out / "results.json", results)
    print_metrics_table(report, title=f"{task}: validation metrics of the best checkpoint")
    print(f"best checkpoint: {best_path or '(none saved)'}")
    print(f"figures and predictions: {report_dir}")
    print(f"results: {out / 'results.json'}")
    return results
