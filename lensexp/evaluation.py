"""What `evaluate.py` runs: rebuild a trained model, predict a split, write the task's report."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from lensexp.callbacks import CONFIG_KEY
from lensexp.errors import LensexpError
from lensexp.models.weights import load_torch_file
from lensexp.reporting.files import print_metrics_table

log = logging.getLogger(__name__)

# Command-line keys that still apply on top of a checkpoint's stored config.
OVERRIDABLE = ("data.", "model.", "loss.")
# The config keys a checkpoint brings along; the rest (trainer, paths, ...) come from this run.
STORED_KEYS = ("data", "loss", "model", "optimizer", "scheduler", "monitor", "monitor_mode")


def evaluate_module(
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    trainer: L.Trainer,
    split: str,
    out_dir: Path,
    save_outputs: bool = False,
) -> dict[str, Any]:
    """Predict `split` with `module` as it is and write the task's report into `out_dir`."""
    datamodule.predict_split = split
    datamodule.setup("predict")
    if module.task == "superres":
        # Full-size SR images are returned only when they are to be saved (memory).
        module.keep_sr_images = save_outputs
    outputs = trainer.predict(module, datamodule=datamodule, return_predictions=True)
    files = datamodule.files[split]
    out_dir = Path(out_dir)
    if module.task == "classification":
        from lensexp.reporting.classification import write_classification_report

        probs = torch.cat([o["probs"] for o in outputs])
        labels = torch.cat([o["labels"] for o in outputs])
        return write_classification_report(out_dir, probs, labels, files, module.class_names)
    if module.task == "superres":
        from lensexp.reporting.superres import write_superres_report

        return write_superres_report(out_dir, outputs, files, save_outputs=save_outputs)
    raise LensexpError(f"model: no evaluation report for task {module.task!r}.")


def _command_line() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def config_from_checkpoint(cfg: DictConfig, checkpoint: dict[str, Any], path: str) -> DictConfig:
    """The checkpoint's own data/loss/model config, with this run's trainer and paths and the
    command line's `data.`/`model.`/`loss.` keys on top."""
    stored = checkpoint.get(CONFIG_KEY)
    if not isinstance(stored, dict):
        raise LensexpError(
            f"ckpt_path={path}: holds no lensexp config (not written by train.py). Evaluate "
            f"plain weights with model=... model.pretrained=PATH instead."
        )
    run = OmegaConf.create({k: stored[k] for k in STORED_KEYS if k in stored})
    for key in cfg:
        if key not in STORED_KEYS:
            run[key] = cfg[key]
    ignored = []
    for item in _command_line():
        key = item.split("=", 1)[0].lstrip("+~")
        if key.startswith(OVERRIDABLE):
            OmegaConf.update(run, key, OmegaConf.select(cfg, key), force_add=True)
        elif key in ("data", "loss", "model", "experiment", "optimizer", "scheduler"):
            ignored.append(item)
    if ignored:
        log.warning(
            "ckpt_path given: the checkpoint's config wins; ignoring %s", ", ".join(ignored)
        )
    # The checkpoint holds the trained weights; don't fetch pretrained ones to overwrite.
    OmegaConf.update(
        run, "model.pretrained", None if run.model.get("pretrained") is None else "none"
    )
    if OmegaConf.select(run, "loss.weights") is not None:
        OmegaConf.update(run, "loss.weights", "random")
    return run


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate a checkpoint (`ckpt_path`) or the model the config builds; return the metrics."""
    from lensexp.training import build_datamodule, build_module, check_compatible, quiet_trainer

    checkpoint = None
    run = cfg
    if cfg.get("ckpt_path"):
        checkpoint = load_torch_file(
            cfg.ckpt_path,
            "ckpt_path",
            "Give a checkpoint written by train.py (checkpoints/*.ckpt).",
        )
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise LensexpError(
                f"ckpt_path={cfg.ckpt_path}: not a Lightning checkpoint (no state_dict); evaluate "
                f"plain weights with model=... model.pretrained=PATH instead."
            )
        run = config_from_checkpoint(cfg, checkpoint, str(cfg.ckpt_path))
    check_compatible(run)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(run)
    module = build_module(run, datamodule)
    if checkpoint is not None:
        module.load_state_dict(checkpoint["state_dict"])
    out_dir = Path(cfg.paths.output_dir)
    trainer = quiet_trainer(run, keep_limits=False)
    report = evaluate_module(
        module, datamodule, trainer, cfg.split, out_dir, cfg.get("save_outputs", False)
    )
    print_metrics_table(report, title=f"{module.task}: {cfg.split} split of {datamodule.root}")
    print(f"report: {out_dir}")
    return report
