"""Command line: `python -m lensexp.sim task=classification out=DIR n_per_class=N` (Hydra).

Configuration: conf/sim/cli/config.yaml; presets: conf/sim/presets/. A bad input prints one line
starting with `lensexp: error:` and exits with status 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

import lensexp
from lensexp.checks import check_choice
from lensexp.cli import run_entry_point
from lensexp.errors import LensexpError

# The CLI config sits in its own folder so Hydra does not offer the presets as a config group
# (they are files that `preset=NAME` selects and load_preset reads, with one-line errors).
CONF_DIR = Path(lensexp.__file__).resolve().parent.parent / "conf" / "sim" / "cli"
CONF_NAME = "config"
DEFAULT_PRESET = {"classification": "model_i", "superres": "superres_mild"}


def run(cfg: DictConfig) -> Path:
    """Make the dataset described by the CLI config (the same functions as the Python API)."""
    from lensexp.sim.dataset import make_classification_dataset, make_superres_dataset

    task = check_choice("task", cfg.task, tuple(DEFAULT_PRESET))
    common = dict(
        preset=cfg.preset or DEFAULT_PRESET[task],
        seed=cfg.seed,
        num_workers=cfg.num_workers,
        overwrite=cfg.overwrite,
        progress=cfg.progress,
        shard=cfg.shard,
        num_shards=cfg.num_shards,
        overrides=OmegaConf.to_container(cfg.overrides, resolve=True),
    )
    if OmegaConf.is_missing(cfg, "out"):
        raise LensexpError("out is required: the folder to write the dataset into (out=DIR).")
    if task == "classification":
        return make_classification_dataset(
            cfg.out,
            cfg.n_per_class,
            val_fraction=cfg.val_fraction,
            test_fraction=cfg.test_fraction,
            **common,
        )
    return make_superres_dataset(cfg.out, cfg.n_pairs, **common)


@hydra.main(config_path=str(CONF_DIR), config_name=CONF_NAME, version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: report bad input as one line and exit 1.

    Unlike a training sweep, a multirun of shards stops at the first bad job: the shards share
    their settings, so the others would fail the same way.
    """
    try:
        out = run(cfg)
    except LensexpError as err:
        print(f"lensexp: error: {err}", file=sys.stderr)
        sys.exit(1)
    print(out)


if __name__ == "__main__":
    run_entry_point(main, (str(CONF_DIR), CONF_NAME))
