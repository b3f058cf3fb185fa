"""From a composed config to objects: the one place `training.py` and `evaluation.py` build from.

cfg.data      -> LightningDataModule      (task: classification | superres)
cfg.loss      -> loss nn.Module           (must share the data module's task)
cfg.model     -> TaskModule, given the loss, optimizer/scheduler partials and what the
                 data module knows (class names, scale, the images' bands)
cfg.trainer   -> lightning Trainer, with cfg.callbacks and cfg.logger
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import Callback, ModelSummary
from omegaconf import DictConfig, OmegaConf

from lensexp.callbacks import CONFIG_KEY, LogHparams, StoreConfig
from lensexp.checks import check_int
from lensexp.errors import LensexpError
from lensexp.models.weights import load_torch_file
from lensexp.provenance import provenance, usable_cpus

log = logging.getLogger(__name__)

TASK_GROUPS = ("data", "loss", "model")
# The config a checkpoint brings along; the rest (trainer, paths, ...) comes from this run.
STORED_KEYS = ("data", "loss", "model", "optimizer", "scheduler", "monitor", "monitor_mode")
# Command-line keys that still apply on top of a checkpoint's stored config.
OVERRIDABLE = ("data", "model", "loss")


# -- which task a run is ----------------------------------------------------------------------
def _target_of(node: Any) -> str | None:
    return node.get("_target_") if isinstance(node, DictConfig | dict) else None


def _task_of(target: str | None, key: str) -> str | None:
    if target is None:
        return None
    try:
        cls = get_class(target)
    except Exception as err:
        raise LensexpError(f"{key}._target_={target}: cannot be imported ({err}).") from err
    return getattr(cls, "task", None) or None


@contextmanager
def _hydra_compose_ready() -> Iterator[None]:
    """Hydra's config repository ready for `compose`: the running app's, or this run's config
    folder when the config was composed by the compose API (tests, notebooks)."""
    if GlobalHydra.instance().is_initialized():
        yield
        return
    sources = HydraConfig.get().runtime.config_sources
    main = next(s.path for s in sources if s.provider == "main" and s.schema == "file")
    with initialize_config_dir(config_dir=main, version_base="1.3"):
        yield


def _option_task(group: str, option: str) -> str | None:
    """The task of a config group option as it composes on its own (other groups default)."""
    cfg = compose(HydraConfig.get().job.config_name, overrides=[f"{group}={option}"])
    return _task_of(_target_of(cfg.get(group)), group)


def check_compatible(cfg: DictConfig) -> str:
    """The run's task; one clear line if data, loss and model serve different tasks.

    Only classes are imported here, so a bad combination fails before any data or weights load.
    On a mismatch, each chosen option is composed alone from Hydra's config repository to tell
    which one is the odd one out (an adversarial loss also swaps in its own module) and which
    options would fit.
    """
    tasks = {g: _task_of(_target_of(cfg.get(g)), g) for g in TASK_GROUPS}
    if tasks["model"] is None:
        raise LensexpError(
            f"model._target_={_target_of(cfg.get('model'))}: not a lensexp task module."
        )
    if len(set(tasks.values())) == 1:
        return tasks["model"]
    if not HydraConfig.initialized():
        raise LensexpError(
            f"data, loss and model serve different tasks ({tasks}); choose options of one task."
        )
    choices = HydraConfig.get().runtime.choices
    with _hydra_compose_ready():
        own = {g: _option_task(g, choices[g]) for g in TASK_GROUPS}
        model_task = own["model"]
        for group in ("data", "loss"):
            if own[group] != model_task:
                options = GlobalHydra.instance().config_loader().get_group_options(group)
                valid = [o for o in options if _option_task(group, o) == model_task]
                raise LensexpError(
                    f"{group}={choices[group]} is a {own[group]} {group}, but "
                    f"model={choices['model']} is a {model_task} model: choose "
                    f"{group}={'|'.join(valid)}."
                )
    # The options agree, so a command-line `_target_` override made the difference.
    raise LensexpError(
        f"data, loss and model serve different tasks ({tasks}); check the `_target_` keys "
        f"given on the command line."
    )


# -- objects ----------------------------------------------------------------------------------
def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    """The data module, with its dataset present (simulated first if it is the default one)."""
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    return datamodule


def data_facts(model: DictConfig, datamodule: L.LightningDataModule) -> dict[str, Any]:
    """What the data module tells the model (`state_for_model`), as constructor arguments.

    A plain value is an argument of the module (class names, scale, a classifier's
    `in_channels`). A dict holds settings of one of the model's networks (an SR generator's
    bands): Hydra merges it into that node before building it, so it is passed only when the
    model config has a node of that name (an SR model without a discriminator gets none).
    """
    facts = datamodule.state_for_model()
    return {
        key: value
        for key, value in facts.items()
        if not isinstance(value, dict) or isinstance(model.get(key), DictConfig)
    }


def build_module(cfg: DictConfig, datamodule: L.LightningDataModule) -> L.LightningModule:
    """The LightningModule, given its loss, optimizer, scheduler and what the data says, run
    as `runtime.channels_last` and `runtime.compile` say (`apply_run_options`)."""
    loss = instantiate(cfg.loss)
    optimizer = instantiate(cfg.optimizer)
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    # _convert_: plain lists and dicts in hparams, so checkpoints load with weights_only=True.
    module = instantiate(
        cfg.model,
        _convert_="all",
        loss=loss,
        optimizer=optimizer,
        scheduler=scheduler,
        **data_facts(cfg.model, datamodule),
    )
    runtime = cfg.get("runtime") or {}
    return apply_run_options(
        module,
        channels_last=bool(runtime.get("channels_last", False)),
        compile=bool(runtime.get("compile", False)),
    )


def compile_unsupported() -> str | None:
    """Why torch.compile cannot run here, or None when it can."""
    from torch import _dynamo

    if not _dynamo.is_dynamo_supported():
        return f"torch.compile does not support Python {sys.version.split()[0]} here"
    if not torch.cuda.is_available() and shutil.which(os.environ.get("CXX", "g++")) is None:
        return "torch.compile on the CPU needs a C++ compiler (g++ or $CXX), none found"
    return None


def apply_run_options(
    module: L.LightningModule, channels_last: bool = False, compile: bool = False
) -> L.LightningModule:
    """`channels_last`: the module's weights in NHWC memory order (convolutions then run and
    return NHWC; on a GPU with mixed precision often faster, on a CPU measure it:
    docs/benchmarks.md). `compile`: each network the module holds (its direct children with
    parameters) compiled in place by torch.compile, so checkpoints keep their parameter names;
    where torch.compile cannot run, one warning line and the networks run uncompiled."""
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    if compile:
        reason = compile_unsupported()
        if reason is not None:
            log.warning("runtime.compile=true: %s; running uncompiled.", reason)
            return module
        from torch import _dynamo

        # A network that fails to compile at its first call runs eagerly instead of failing.
        _dynamo.config.suppress_errors = True
        for child in module.children():
            if any(True for _ in child.parameters()):
                child.compile()
        module.compiled = True
    return module


def _environment_threads() -> int | None:
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def _native_bf16() -> bool:
    """Whether the current CUDA device does bfloat16 arithmetic itself (Ampere and later)."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # an older torch, without the argument, answers for native arithmetic
        return torch.cuda.is_bf16_supported()


def native_precision(precision: str, accelerator: str) -> str:
    """`precision`, except bfloat16 on a CUDA GPU without bfloat16 arithmetic (before Ampere,
    e.g. a T4 or V100): torch would emulate it there, without the tensor cores that make mixed
    precision fast (their float16 ones; not measured here, no GPU was lent), so float16 mixed
    precision instead, with one warning line: `trainer=gpu`'s bf16-mixed "where supported"."""
    if not precision.startswith("bf16") or accelerator not in ("gpu", "cuda", "auto"):
        return precision
    if not torch.cuda.is_available() or _native_bf16():
        return precision
    fallback = "16-true" if precision == "bf16-true" else "16-mixed"  # "bf16": bf16-mixed
    log.warning(
        "trainer.precision=%s: %s has no bfloat16 arithmetic (torch would emulate it); "
        "running %s instead.",
        precision,
        torch.cuda.get_device_name(),
        fallback,
    )
    return fallback


def use_native_precision(cfg: DictConfig) -> None:
    """Set `trainer.precision` (where `cfg` has one) to what this machine runs natively
    (`native_precision`)."""
    trainer = cfg.get("trainer")
    if trainer is None or trainer.get("precision") is None:
        return
    asked = str(trainer.precision)
    native = native_precision(asked, str(trainer.get("accelerator") or "auto"))
    if native != asked:
        trainer.precision = native


def configure_runtime(cfg: DictConfig) -> dict[str, int]:
    """Set torch's CPU threads from `runtime` (once, before any work): `num_threads` auto =
    OMP_NUM_THREADS where the environment sets it (a user, or a parallel launcher sharing the
    cores among its jobs), else the cores this process may use (its affinity, e.g. a SLURM
    allocation); `num_interop_threads` auto = torch's own choice; or numbers. Also sets
    `trainer.precision` to what this GPU runs natively (`native_precision`), before the run's
    config is written. Returns the thread settings in force."""
    use_native_precision(cfg)
    runtime = cfg.get("runtime") or {}
    threads = runtime.get("num_threads", "auto")
    if threads == "auto":
        threads = _environment_threads() or usable_cpus()
    else:
        threads = check_int("runtime.num_threads", threads, 1)
    torch.set_num_threads(threads)
    interop = runtime.get("num_interop_threads", "auto")
    if interop != "auto":
        interop = check_int("runtime.num_interop_threads", interop, 1)
        if interop != torch.get_num_interop_threads():
            try:
                torch.set_num_interop_threads(interop)
            except RuntimeError as err:  # torch allows it only before any inter-op work
                raise LensexpError(
                    f"runtime.num_interop_threads={interop}: torch refuses it now ({err}); "
                    f"set it to auto."
                ) from err
    return {
        "num_threads": torch.get_num_threads(),
        "num_interop_threads": torch.get_num_interop_threads(),
    }


def build_callbacks(cfg: DictConfig) -> list[Callback]:
    """The callbacks of the `callbacks` group, plus the one storing the config in checkpoints."""
    callbacks: list[Callback] = [
        instantiate(node) for node in (cfg.get("callbacks") or {}).values() if _target_of(node)
    ]
    config = OmegaConf.to_container(cfg, resolve=True)
    callbacks.append(StoreConfig(config, provenance(cfg.paths.root_dir)))
    callbacks.append(LogHparams(config))
    return callbacks


def build_loggers(cfg: DictConfig) -> list[Any] | bool:
    """The loggers of the `logger` group, or False for none."""
    loggers = [instantiate(n) for n in (cfg.get("logger") or {}).values() if _target_of(n)]
    return loggers or False


def build_trainer(cfg: DictConfig) -> L.Trainer:
    """The training Trainer: `cfg.trainer` with the run's callbacks and loggers."""
    callbacks = build_callbacks(cfg)
    if cfg.trainer.get("enable_model_summary") is False:
        callbacks = [c for c in callbacks if not isinstance(c, ModelSummary)]
    # The summary is a callback of the `callbacks` group (`model_summary`); told that one is
    # there, Lightning would add nothing but a console notice saying so.
    return instantiate(
        cfg.trainer, callbacks=callbacks, logger=build_loggers(cfg), enable_model_summary=False
    )


def build_report_trainer(cfg: DictConfig, keep_limits: bool) -> L.Trainer:
    """A Trainer for one pass outside fitting (the best checkpoint's validation, a report's
    prediction) on the run's device, with no side effects.

    `keep_limits`: go as far as the run validated (a debug or limited run stays short);
    otherwise predict the whole split.
    """
    # None, not 1.0, for "all of it": Lightning announces an explicit 1.0 on the console.
    limits: dict[str, Any] = {"fast_dev_run": False, "limit_predict_batches": None}
    if keep_limits:
        limits = {
            "fast_dev_run": cfg.trainer.get("fast_dev_run", False),
            "limit_predict_batches": cfg.trainer.get("limit_val_batches") or None,
        }
    return instantiate(
        cfg.trainer,
        **limits,
        # Under SLURM, Lightning loads the newest hpc_ckpt_*.ckpt of default_root_dir over the
        # weights it is given; this trainer writes nothing, so it gets a folder without any.
        default_root_dir=Path(tempfile.gettempdir()) / "lensexp-report-trainer",
        logger=False,
        callbacks=[],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_epochs=1,
        min_epochs=None,
    )


def output_dir(cfg: DictConfig) -> Path:
    """This run's folder."""
    folder = Path(cfg.paths.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# -- a checkpoint's own config ----------------------------------------------------------------
def read_checkpoint(path: str) -> dict[str, Any]:
    """A checkpoint written by train.py, loaded without running code (`ckpt_path=PATH`)."""
    checkpoint = load_torch_file(
        path, "ckpt_path", "Give a checkpoint written by train.py (checkpoints/*.ckpt)."
    )
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise LensexpError(
            f"ckpt_path={path}: not a Lightning checkpoint (no state_dict); evaluate plain "
            f"weights with model=... model.pretrained=PATH instead."
        )
    return checkpoint


def fill_pre_test_split_defaults(data: DictConfig) -> bool:
    """Give a data config stored before lensexp held out test splits the splits its model
    trained with: no seeded test split (`test_fraction` 0) and, for the simulated classification
    set, no test/ folder. A resumed run then keeps its training images and its folder, and no
    seeded test split holds images the model trained on. True if anything was filled in."""
    filled = "test_fraction" not in data
    if filled:
        data.test_fraction = 0.0
    simulate = data.get("simulate")
    # Only the classification simulator splits (its settings carry val_fraction).
    if simulate is not None and "val_fraction" in simulate and "test_fraction" not in simulate:
        simulate.test_fraction = 0.0
        filled = True
    return filled


def _command_line() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def config_from_checkpoint(
    cfg: DictConfig, checkpoint: dict[str, Any], path: str, resume: bool = False
) -> DictConfig:
    """The run config that a checkpoint's stored config and this command line make.

    Evaluation (`resume=False`): the checkpoint's data/loss/model/optimizer/scheduler/monitor
    with this run's trainer and paths; of the command line only `data.*`, `model.*` and `loss.*`
    keys apply on top (others that would change the model are ignored with a warning).
    Resuming training (`resume=True`): the trainer and seed come from the checkpoint too, and
    every command-line override applies on top. Callbacks, loggers and paths are always this
    run's, so a resumed run never writes into another run's folder. Overrides are parsed by
    Hydra's own override parser.
    """
    stored = checkpoint.get(CONFIG_KEY)
    if not isinstance(stored, dict):
        raise LensexpError(
            f"ckpt_path={path}: holds no lensexp config (not written by train.py). Evaluate "
            f"plain weights with model=... model.pretrained=PATH instead."
        )
    keys = STORED_KEYS + (("trainer", "seed") if resume else ())
    run = OmegaConf.create({k: stored[k] for k in keys if k in stored})
    if "data" in run and fill_pre_test_split_defaults(run.data):
        log.warning(
            "ckpt_path=%s: trained before lensexp held out a test split, on all of its "
            "training images; data.test_fraction=0 (its test split: a test/ folder only)",
            path,
        )
    for key in cfg:
        if key not in keys:
            run[key] = cfg[key]
    if resume and "trainer" in run:
        run.trainer.default_root_dir = cfg.trainer.default_root_dir
    ignored = []
    for override in OverridesParser.create().parse_overrides(_command_line()):
        key = override.key_or_group
        head = key.split(".", 1)[0]
        if (resume and head in keys) or ("." in key and head in OVERRIDABLE):
            OmegaConf.update(run, key, OmegaConf.select(cfg, key), force_add=True)
        elif head in keys or head == "experiment":
            ignored.append(override.input_line)
    if ignored:
        stored_task = _task_of(_target_of(run.get("model")), "model")
        asked_task = _task_of(_target_of(cfg.get("model")), "model")
        if asked_task != stored_task:
            raise LensexpError(
                f"ckpt_path={path}: a {stored_task} checkpoint, but {' '.join(ignored)} asks for "
                f"a {asked_task} model: leave those out (the checkpoint's own config is used), "
                f"or give a {asked_task} checkpoint."
            )
        log.warning(
            "ckpt_path given: the checkpoint's config wins; ignoring %s", ", ".join(ignored)
        )
    # The checkpoint holds the trained weights; don't fetch pretrained ones to overwrite them.
    OmegaConf.update(
        run, "model.pretrained", None if run.model.get("pretrained") is None else "none"
    )
    if not resume and OmegaConf.select(run, "loss.weights") is not None:
        # Only the validation loss uses the VGG here, and its weights are not in checkpoints.
        OmegaConf.update(run, "loss.weights", "random")
    return run
