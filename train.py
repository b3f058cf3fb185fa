"""Train a lensexp model: `python train.py [model=srresnet] [loss=vgg] [key=value ...]`."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from lensexp.cli import run_entry_point, run_reporting_errors, set_project_root
from lensexp.hydra_setup import prepare_hydra

CONFIG_DIR = set_project_root(__file__)
CONFIG_NAME = "train"
prepare_hydra()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name=CONFIG_NAME)
def main(cfg: DictConfig) -> float | None:
    from lensexp.training import train

    results = run_reporting_errors(lambda: train(cfg))
    # Hydra sweepers (e.g. Optuna) optimise the returned value (`optimized_metric`); DDP ranks
    # other than 0 return nothing.
    return results.get("optimized_value")


if __name__ == "__main__":
    run_entry_point(main, (CONFIG_DIR, CONFIG_NAME))
