"""What a training run leaves in TensorBoard, read back from its event file: the run folder
named after the experiment and model, the HPARAMS entry (resolved config and final metrics) and
figures on the scalars' step axis."""

from __future__ import annotations

from pathlib import Path

import pytest

from lensexp.training import train
from tests.helpers import compose_cfg


@pytest.mark.slow
def test_run_names_hparams_and_figure_steps(classification_root: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    cfg = compose_cfg(tmp_path, [
        f"data.root={classification_root}", "data.image_size=32", "data.batch_size=8",
        "model=mobilenet_v3_small", "model.pretrained=none", "trainer=cpu", "debug=limit",
        "logger=tensorboard",
    ])  # fmt: skip
    train(cfg)
    run = tmp_path / "out" / "tensorboard" / "mobilenet_v3_small"
    (events,) = run.glob("events.out.tfevents.*")
    tb = EventAccumulator(str(events), size_guidance={"images": 0, "scalars": 0}).Reload()

    # HPARAMS: the flattened resolved config, and the final metrics as its metric columns.
    content = tb.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]
    ).session_start_info
    assert start.hparams["model/backbone"].string_value == "mobilenet_v3_small"
    assert start.hparams["data/batch_size"].number_value == 8
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/experiment"]
    ).experiment
    metric_tags = {m.name.tag for m in experiment.metric_infos}
    assert {"final/val/acc", "final/val/auc_micro", "final/train/loss_epoch"} <= metric_tags
    (final_acc,) = tb.Scalars("final/val/acc")
    last_acc = tb.Scalars("val/acc")[-1]
    assert final_acc.value == pytest.approx(last_acc.value) and final_acc.step == last_acc.step

    # Figures sit on the scalars' step axis: each epoch's at that epoch's validation step
    # (debug=limit: 2 epochs of 3 batches; Lightning logs an epoch's metrics at its last step).
    image_steps = [e.step for e in tb.Images("val/confusion_matrix")]
    assert image_steps == [e.step for e in tb.Scalars("val/acc")] == [2, 5]


@pytest.mark.parametrize(
    "overrides,name",
    [
        ([], "small_resnet"),
        (["model=resnet18"], "resnet18"),
        (["experiment=trail_vgg"], "trail_vgg-srresnet"),
        # A job of a sweep over experiments: its own trail, not the sweep file's name.
        (["experiment=sr_trails", "+experiment@_global_=trail_prelu"], "trail_prelu-srresnet"),
        (["experiment=classifier_backbones", "model=resnet18"], "classifier_backbones-resnet18"),
        (["experiment=sr_ablation", "+ablation=prelu"], "sr_ablation-srresnet-prelu"),
    ],
)
def test_a_run_is_named_after_its_experiment_and_model(
    tmp_path: Path, overrides: list[str], name: str
) -> None:
    cfg = compose_cfg(tmp_path, ["logger=tensorboard", *overrides])
    assert cfg.logger.tensorboard.name == name
