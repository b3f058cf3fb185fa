"""Evaluate a trained model: `python evaluate.py ckpt_path=CKPT [data.root=DIR] [split=val|all]`
(the test split by default)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from lensexp.cli import run_entry_point, run_reporting_errors, set_project_root

CONFIG_DIR = set_project_root(__file__)
CONFIG_NAME = "eval"


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name=CONFIG_NAME)
def main(cfg: DictConfig) -> None:
    from lensexp.evaluation import evaluate

    run_reporting_errors(lambda: evaluate(cfg))


if __name__ == "__main__":
    run_entry_point(main, (CONFIG_DIR, CONFIG_NAME))
