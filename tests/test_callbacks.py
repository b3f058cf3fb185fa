"""lensexp's own callbacks, and the entry points' exit."""

from __future__ import annotations

import io
import logging
import sys
import time

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset

from lensexp.callbacks import EpochLog, ModelSummary, ProgressBar


class Regression(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit_with(
    tmp_path,
    callbacks: list[Callback],
    max_epochs: int = 1,
    module: L.LightningModule | None = None,
    batches: int = 2,
    validate: bool = False,
) -> L.Trainer:
    """The trainer, after fitting `module` (`Regression`) on `batches` batches of 4 an epoch
    with `callbacks` (and validating on the same batches, if `validate`)."""
    trainer = L.Trainer(
        max_epochs=max_epochs,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    data = DataLoader(
        TensorDataset(torch.randn(4 * batches, 4), torch.randn(4 * batches, 1)), batch_size=4
    )
    trainer.fit(module or Regression(), data, data if validate else None)
    return trainer


class KeepDrawingThread(Callback):
    """Holds on to the progress bar's drawing thread while training runs."""

    def on_train_batch_end(self, trainer, *args) -> None:
        self.thread = trainer.progress_bar_callback.progress.live._refresh_thread


def test_progress_bar_stops_without_waiting_for_its_drawing_thread(tmp_path) -> None:
    # A refresh period of 50 s: joining the sleeping thread at the end of fit, as Lightning's
    # own bar does, would leave it finished (after up to 50 s) by the time fit returns.
    keep = KeepDrawingThread()
    trainer = fit_with(tmp_path, [ProgressBar(refresh_rate=0.02, terminal_only=False), keep])

    assert keep.thread is not None
    assert keep.thread.done.is_set()  # told to stop: it draws nothing more
    assert keep.thread.is_alive()  # but fit did not wait for it
    assert keep.thread.daemon  # and it cannot hold the process open
    assert trainer.progress_bar_callback.progress.live._refresh_thread is None


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [True, False])
def test_progress_bar_draws_in_a_terminal_only(tmp_path, monkeypatch, terminal) -> None:
    out = Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    trainer = fit_with(tmp_path, [ProgressBar()], max_epochs=2)

    bar = trainer.progress_bar_callback
    assert bar.is_enabled is terminal
    assert (bar.progress is not None) is terminal
    # Rich draws the epochs' bars ("Epoch 1/1 ... 2/2") into a terminal, nothing into a log.
    assert ("Epoch 1/1" in out.getvalue()) is terminal


class ALayerTypeNameTooLongForAnEightyColumnTable(torch.nn.Linear):
    pass


class LongTypeNameRegression(Regression):
    def __init__(self) -> None:
        super().__init__()
        self.layer = ALayerTypeNameTooLongForAnEightyColumnTable(4, 1)


@pytest.mark.parametrize("terminal", [True, False])
def test_model_summary_is_rich_in_a_terminal_and_whole_plain_text_in_logs(
    tmp_path, monkeypatch, caplog, terminal
) -> None:
    out = Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    summary_log = logging.getLogger("lightning.pytorch.callbacks.model_summary")
    summary_log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger=summary_log.name):
            fit_with(tmp_path, [ModelSummary()], module=LongTypeNameRegression())
    finally:
        summary_log.removeHandler(caplog.handler)

    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert ("┃" in out.getvalue()) is terminal  # Rich's table goes to the terminal
    if not terminal:  # and Lightning's plain one, whole, to the log (Rich's would be cut)
        assert "| layer | ALayerTypeNameTooLongForAnEightyColumnTable |" in logged
        assert "Total params" in logged
    else:
        assert logged == ""


class LoggedRegression(Regression):
    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        return loss


def test_epoch_log_line_shows_each_training_value_once(tmp_path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="lensexp.callbacks"):
        trainer = fit_with(tmp_path, [EpochLog(always=True)], 2, LoggedRegression())

    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2 (step 2)", "epoch 2/2 (step 4)"]
    epoch_mean = float(trainer.callback_metrics["train/loss_epoch"])
    # the epoch's mean, not also as train/loss_epoch, nor the last step's train/loss_step
    assert lines[-1].split(": ")[1].split(" [")[0] == f"train/loss {epoch_mean:.4g}"


def test_progress_bar_reads_its_metrics_as_often_as_it_draws(tmp_path) -> None:
    # 2 epochs of 30 fast batches, the bar drawn once a second (as in conf/callbacks): Lightning's
    # bar reads (and turns into numbers, a wait for a GPU) the shown metrics after every batch.
    bar = ProgressBar(refresh_rate=1, terminal_only=False)
    reads: list[dict] = []
    get_metrics = bar.get_metrics

    def counted(*args):
        reads.append(get_metrics(*args))
        return reads[-1]

    bar.get_metrics = counted
    started = time.monotonic()
    trainer = fit_with(tmp_path, [bar], 2, LoggedRegression(), batches=30, validate=True)
    seconds = time.monotonic() - started

    # At most one read a second after batches, plus each epoch's end and each validation's end.
    assert len(reads) <= 2 * 2 + int(seconds) + 2 < 60
    # The last read, at the end of fit, shows the last epoch's mean.
    epoch_loss = float(trainer.callback_metrics["train/loss_epoch"])
    assert reads[-1]["train/loss_epoch"] == pytest.approx(epoch_loss)


def test_entry_point_collects_the_garbage_then_freezes_what_lives(monkeypatch) -> None:
    import gc

    from lensexp.cli import run_entry_point

    finalized = []

    class Cyclic:
        def __init__(self) -> None:
            self.me = self  # garbage only a collection frees

        def __del__(self) -> None:
            finalized.append(True)

    def main() -> None:
        Cyclic()

    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    gc.unfreeze()
    gc.disable()  # only run_entry_point's own collection may free the cycle
    try:
        run_entry_point(main)
        assert finalized  # collected, its finalizer run, before the freeze
        assert gc.get_freeze_count() > 0  # shutdown's collections will skip what lives
    finally:
        gc.enable()
        gc.unfreeze()  # this test process goes on collecting as before
