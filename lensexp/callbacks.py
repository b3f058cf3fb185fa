"""Callbacks that lensexp adds to every run (the `callbacks` group holds the optional ones)."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

CONFIG_KEY = "lensexp_config"
PROVENANCE_KEY = "lensexp_provenance"


class StoreConfig(Callback):
    """Put the run's resolved config (plain data) and its provenance (package versions, git
    commit) into every checkpoint, so `evaluate.py ckpt_path=...` can rebuild the data module
    and model with nothing else, and a checkpoint says what made it."""

    def __init__(self, config: dict[str, Any], provenance: dict[str, Any]) -> None:
        self.config = config
        self.provenance = provenance

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[CONFIG_KEY] = self.config
        checkpoint[PROVENANCE_KEY] = self.provenance
