"""Shared plumbing of the entry points: project root for configs, one-line errors."""

from __future__ import annotations

import gc
import logging
import os
import shutil
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from hydra.types import RunMode

from lensexp.checks import flatten
from lensexp.errors import LensexpError


def set_project_root(entry_file: str) -> str:
    """Point `paths.root_dir` at the entry script's folder (unless LENSEXP_ROOT is set) and
    return the config folder beside it."""
    root = Path(entry_file).resolve().parent
    os.environ.setdefault("LENSEXP_ROOT", str(root))
    return str(root / "conf")


# What a run folder holds before a run has made anything: Hydra's record and the log, the
# resolved config and the provenance.
BOOKKEEPING = (".hydra", "config.yaml", "provenance.json")


def remove_if_nothing_made(run_dir: Path, log_name: str) -> None:
    """Remove a failed run's folder when it holds only bookkeeping (and Hydra's `log_name`), so
    it does not pass for a run (e.g. in TensorBoard's run list); a folder holding anything else
    is left as it is."""
    if not run_dir.is_dir():
        return
    if all(p.name in (*BOOKKEEPING, log_name) for p in run_dir.iterdir()):
        shutil.rmtree(run_dir)


# Lightning's own console handlers, beside Hydra's: without them each message is printed once.
LIBRARY_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")


class _OncePerJob(logging.Filter):
    """Lightning's rank-zero messages without its advertising tips, each once per job: every
    Trainer a run builds (fit's, then the reports') says again which devices it uses."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "Tip:" in message or message in self.seen:
            return False
        self.seen.add(message)
        return True


_ONCE_PER_JOB = _OncePerJob()


def route_library_output() -> None:
    """Send Lightning's log messages once, through Hydra's handlers (console and the job's log
    file), without its advertising tips, repeats within the job, or the deprecation warning its
    own code raises. Does nothing when Hydra has not configured logging."""
    if not logging.getLogger().handlers:
        return
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _ONCE_PER_JOB not in rank_zero.filters:
        rank_zero.addFilter(_ONCE_PER_JOB)
    _ONCE_PER_JOB.seen.clear()  # a new job (of a multirun too) logs to its own file
    # Lightning 2.6's own use of a torch API that this torch deprecates; nothing a user can act on.
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated")


def _user_error(err: BaseException) -> LensexpError | None:
    """The LensexpError behind `err`: itself, or the cause Hydra wrapped while instantiating."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, LensexpError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def run_reporting_errors(fn: Callable[[], Any]) -> Any:
    """Run `fn`; a LensexpError (bad input or config), also one raised inside Hydra's
    `instantiate`, becomes one line on stderr and exit 1."""
    route_library_output()
    try:
        return fn()
    except Exception as err:
        user_error = _user_error(err)
        if user_error is None:
            raise
        print(f"lensexp: error: {user_error}", file=sys.stderr)
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            # An exception, not an exit: Hydra records this job as failed and runs the others.
            raise user_error from None
        if HydraConfig.initialized():
            hydra = HydraConfig.get()
            remove_if_nothing_made(Path(hydra.runtime.output_dir), f"{hydra.job.name}.log")
        sys.exit(1)


# What Hydra raises before any job runs: an unknown key, an option that does not exist, an
# override it cannot parse.
COMPOSITION_ERRORS = (ConfigCompositionException, MissingConfigException, OverrideParseException)
# Lines of Hydra's messages that say nothing the user can act on.
NOISE = ("full_key:", "object_type=", "Config search path", "provider=", "See https://hydra.cc")


def similar_keys(key: str, config_dir: str, config_name: str, overrides: list[str]) -> list[str]:
    """Keys of the config that the unknown `key` may have meant: the same name in another
    place (`model.compile` -> `runtime.compile`) or a close spelling (`data.bach_size` ->
    `data.batch_size`). The config is composed with the user's other overrides (they may
    choose the group that has the key), else with none; [] if neither composes."""
    import difflib

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    others = [o for o in overrides if not o.startswith("-") and o.split("=")[0].lstrip("+~") != key]
    for attempt in (others, []):
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
                cfg = compose(config_name, overrides=attempt)
            break
        except Exception:  # a sweep's syntax, another bad override: try without them
            continue
    else:
        return []
    keys = list(flatten(OmegaConf.to_container(cfg, resolve=False), "."))
    name = key.rsplit(".", 1)[-1]
    names = {k: k.rsplit(".", 1)[-1] for k in keys}
    elsewhere = [k for k in keys if names[k] == name]
    spelled = difflib.get_close_matches(key, keys, n=3, cutoff=0.8)
    # A misspelt name one level off (`model.n_blok` -> `model.generator.n_blocks`).
    close_names = set(difflib.get_close_matches(name, set(names.values()), n=3, cutoff=0.8))
    group = key.split(".")[0]
    renamed = [k for k in keys if names[k] in close_names and k.split(".")[0] == group]
    return list(dict.fromkeys(elsewhere + spelled + renamed))[:3]


def composition_error_line(
    err: BaseException, config: tuple[str, str] | None = None, overrides: list[str] | None = None
) -> str:
    """Hydra's several-line composition error as one line. `config` (folder, name) and the
    command line's `overrides`: where to look for the key an unknown key may have meant."""
    text = str(err)
    if "Could not override" in text and "+" in text:
        key = text.split("'")[1]
        meant = similar_keys(key, *config, overrides or []) if config else []
        if meant:
            return (
                f"unknown config key {key}: did you mean {' or '.join(meant)}? (`--cfg job` "
                f"prints every key; +{key}=VALUE adds a new one)"
            )
        return (
            f"unknown config key {key}: check its spelling (`--cfg job` prints every key), "
            f"or add a new key with +{key}=VALUE"
        )
    if isinstance(err, OverrideParseException):
        return f"cannot parse the override {err.override!r}: {text.splitlines()[0]}"
    line = ""
    heading = False
    for item in (raw.strip() for raw in text.splitlines()):
        if not item or item.startswith(NOISE):
            continue
        # The items under a "...:" heading (e.g. available options) become a comma list.
        separator = " " if not line or line.endswith(":") else (", " if heading else "; ")
        line += separator + item
        heading = heading or item.endswith(":")
    return line.strip()


def run_entry_point(main: Callable[[], Any], config: tuple[str, str] | None = None) -> None:
    """Run a Hydra entry point so that a config Hydra cannot compose, and a LensexpError that
    ends a multirun, are one `lensexp: error:` line and exit 1 instead of Hydra's several
    lines; `config` (its folder and name, as `hydra.main` has them) lets the line for an
    unknown key name the keys it may have meant. HYDRA_FULL_ERROR=1 set by the user keeps
    Hydra's full reports. After a run that ended normally, the process exits without the
    interpreter's final garbage collections (`skip_final_collection`)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        main()
        skip_final_collection()
        return
    # Hydra then raises instead of printing, and this function reports.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
    except COMPOSITION_ERRORS as err:
        line = composition_error_line(err, config, sys.argv[1:])
        print(f"lensexp: error: {line}", file=sys.stderr)
        sys.exit(1)
    except LensexpError as err:
        # A multirun's failed job (already reported on its own line); the others have run.
        print(f"lensexp: error: a job of the sweep failed: {err}", file=sys.stderr)
        sys.exit(1)
    skip_final_collection()


def skip_final_collection() -> None:
    """Collect what is garbage now (finalizers run), then exempt every live object from the
    garbage collections of interpreter shutdown.

    With torch and Lightning loaded those collections walk millions of objects: about 1 s of a
    process's end on 2 cores (docs/benchmarks.md). The objects still live are freed by the
    operating system instead; finalizers of objects that still exist at exit are not guaranteed
    by Python anyway, and the run's files are closed by then."""
    gc.collect()
    gc.freeze()
