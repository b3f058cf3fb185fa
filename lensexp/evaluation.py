"""What `evaluate.py` runs: rebuild a trained model, predict a split, write the task's report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from lensexp.builders import (
    build_datamodule,
    build_module,
    build_report_trainer,
    check_compatible,
    config_from_checkpoint,
    configure_runtime,
    fill_pre_test_split_defaults,
    read_checkpoint,
)
from lensexp.callbacks import CONFIG_KEY
from lensexp.errors import LensexpError
from lensexp.models.weights import KEYWORDS
from lensexp.reporting.files import print_metrics_table


def predict_split(
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    trainer: L.Trainer,
    split: str,
    save_outputs: bool = False,
) -> list[Any]:
    """`module`'s `predict_step` outputs over `split`, in the split's file order."""
    datamodule.predict_split = split
    datamodule.setup("predict")
    module.keep_outputs = save_outputs
    return trainer.predict(module, datamodule=datamodule, return_predictions=True)


def write_split_report(
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    outputs: list[Any],
    split: str,
    out_dir: Path,
) -> dict[str, Any]:
    """The task's report of `split` from its predictions `outputs`, written into `out_dir`."""
    return module.write_report(
        outputs, datamodule.files[split], Path(out_dir), metadata=datamodule.metadata(split)
    )


def evaluate_module(
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    trainer: L.Trainer,
    split: str,
    out_dir: Path,
    save_outputs: bool = False,
) -> dict[str, Any]:
    """Predict `split` with `module` as it is and write the task's report into `out_dir`."""
    outputs = predict_split(module, datamodule, trainer, split, save_outputs)
    return write_split_report(module, datamodule, outputs, split, out_dir)


def load_weights(module: L.LightningModule, checkpoint: dict[str, Any], path: str) -> None:
    """Load a checkpoint's weights into `module`, or say in one line that they do not fit."""
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:
        # The model is built for the data given now: other bands or classes change its shapes.
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0] if lines else type(err).__name__
        raise LensexpError(
            f"ckpt_path={path}: its weights do not fit the model built for this data "
            f"({detail[:300]}); the data's bands or classes differ from the training data's."
        ) from err


SPLIT_KEYS = ("split_seed", "val_fraction", "test_fraction")


def check_held_out(
    checkpoint: dict[str, Any], run: DictConfig, datamodule: L.LightningDataModule, path: str
) -> None:
    """Refuse a seeded test split of the checkpoint's own training data drawn with other
    settings than it trained with: that split would hold images the model trained on."""
    if "test" not in datamodule.carved_splits():
        return  # a test/ folder: the same images whatever the settings
    trained = OmegaConf.create(checkpoint[CONFIG_KEY]["data"])
    fill_pre_test_split_defaults(trained)
    trained_root = Path(trained.get("root") or trained.get("default_root") or "").expanduser()
    if trained_root.resolve() != datamodule.root.resolve():
        return  # other data: none of it was trained on
    changed = [
        f"data.{key}={run.data.get(key)} (trained with {trained.get(key)})"
        for key in SPLIT_KEYS
        if run.data.get(key) != trained.get(key)
    ]
    if changed:
        raise LensexpError(
            f"ckpt_path={path}: split=test with {', '.join(changed)} would draw another seeded "
            f"test split from the data it trained on, holding training images; leave those "
            f"settings out (the checkpoint's own split is its held-out test split), or give "
            f"data with a test/ folder."
        )


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate a checkpoint (`ckpt_path`) or the model the config builds; return the metrics."""
    out_dir = Path(cfg.paths.output_dir)
    if (out_dir / "results.json").exists():
        raise LensexpError(
            f"hydra.run.dir={out_dir}: a training run's folder; evaluate.py writes its report into "
            f"a folder of its own (leave hydra.run.dir unset: outputs/eval/runs/<stamp>)."
        )
    configure_runtime(cfg)
    checkpoint = None
    run = cfg
    pretrained = OmegaConf.select(cfg, "model.pretrained")
    if not cfg.get("ckpt_path") and str(pretrained) in ("None", *KEYWORDS):
        raise LensexpError(
            f"evaluate.py needs trained weights: give ckpt_path=CKPT (a checkpoint written by "
            f"train.py) or model.pretrained=PATH (a weights file for model=...); "
            f"model.pretrained={pretrained} would score an untrained network."
        )
    if cfg.get("ckpt_path"):
        checkpoint = read_checkpoint(str(cfg.ckpt_path))
        run = config_from_checkpoint(cfg, checkpoint, str(cfg.ckpt_path))
    task = check_compatible(run)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(run)
    if checkpoint is not None and cfg.split == "test":
        check_held_out(checkpoint, run, datamodule, str(cfg.ckpt_path))
    try:
        # The model reads facts from the data (its bands), so data errors can start here.
        module = build_module(run, datamodule)
        if checkpoint is not None:
            load_weights(module, checkpoint, str(cfg.ckpt_path))
        trainer = build_report_trainer(run, keep_limits=False)
        report = evaluate_module(
            module, datamodule, trainer, cfg.split, out_dir, cfg.get("save_outputs", False)
        )
    except LensexpError as err:
        if checkpoint is None:
            raise
        # Data of the other task is the likely cause: say what the checkpoint expects.
        raise LensexpError(f"{err} (ckpt_path={cfg.ckpt_path} is a {task} model)") from err
    title = f"{module.task}: {cfg.split} split of {datamodule.root}"
    if cfg.split == "test":
        title += f": {datamodule.test_source}"
    print_metrics_table(report, title=title)
    print(f"report: {out_dir}")
    return report
