"""Super-resolution through the training and evaluation entry points: `model=srresnet` with
every loss, best-checkpoint selection by PSNR (mode max), adversarial training's settings and
checkpoints, evaluate.py on a checkpoint and on reference-format generator weights."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from lensexp.errors import LensexpError
from lensexp.evaluation import evaluate
from lensexp.losses.perceptual import vgg19_layers
from lensexp.metrics.superres import per_image_metrics
from lensexp.training import check_compatible, train
from tests.helpers import (
    compose_cfg,
    kill_then_resume,
    make_superres_folder,
    reference_sr_forward,
    reference_sr_state_dict,
)


def vgg_file(tmp_path: Path, layer: str = "conv2_2") -> Path:
    """A random VGG19 `features` state dict up to `layer` (conv5_4's would be 80 MB)."""
    path = tmp_path / "vgg19.pth"
    with torch.device("meta"):
        features = torchvision.models.vgg19().features[: vgg19_layers()[layer] + 1]
    generator = torch.Generator().manual_seed(0)
    state = {
        f"features.{k}": 0.05 * torch.randn(v.shape, generator=generator)
        for k, v in features.state_dict().items()
    }
    torch.save(state, path)
    return path


def sr_quick(root: Path, tmp_path: Path, loss: str, *extra: str) -> list[str]:
    """A tiny SRResNet on the 20-pair fixture, CPU, CSV logs."""
    options = [
        "model=srresnet",
        f"loss={loss}",
        f"data.root={root}",
        "data.batch_size=4",
        "data.val_fraction=0.2",
        "model.generator.n_blocks=1",
        "model.generator.channels=8",
        "trainer=cpu",
        "logger=csv",
    ]
    if loss in ("vgg", "srgan"):
        options += [
            f"loss.weights={vgg_file(tmp_path)}",
            "loss.perceptual.layer=conv2_2",
        ]
    if loss in ("adversarial", "srgan"):
        options += ["model.discriminator.channels=8", "model.discriminator.hidden=16"]
    return options + list(extra)


def test_model_srresnet_switches_data_loss_and_monitor(tmp_path: Path) -> None:
    cfg = compose_cfg(tmp_path, ["model=srresnet"])
    assert cfg.data._target_.endswith("SuperResolutionDataModule")
    assert cfg.loss.pixel.criterion == "mse"
    assert (cfg.monitor, cfg.monitor_mode) == ("val/psnr", "max")
    assert check_compatible(cfg) == "superres"
    assert compose_cfg(tmp_path, ["model=srresnet", "loss=vgg"]).loss.perceptual.layer


@pytest.mark.parametrize("loss", ["mse", "l1", "vgg", "adversarial", "srgan"])
def test_fast_dev_run_every_loss(superres_root: Path, tmp_path: Path, loss: str) -> None:
    # Batches of 2 on 4 validation pairs: fast_dev_run predicts only the first batch.
    options = sr_quick(superres_root, tmp_path, loss, "debug=fdr", "data.batch_size=2")
    results = train(compose_cfg(tmp_path, options))
    assert results["task"] == "superres"
    metrics = results["val_metrics"]
    assert metrics["val/psnr_gain"] == pytest.approx(
        metrics["val/psnr"] - metrics["val/psnr_bicubic"], abs=1e-3
    )
    report = json.loads((tmp_path / "out" / "best_val" / "metrics.json").read_text())
    assert {"mse", "psnr", "ssim", "n", "bicubic", "ci95", "psnr_arc"} <= set(report)
    assert report["n"] == 2


@pytest.mark.slow
def test_best_checkpoint_is_the_highest_psnr(superres_root: Path, tmp_path: Path) -> None:
    cfg = compose_cfg(tmp_path, sr_quick(superres_root, tmp_path, "mse", "trainer.max_epochs=4"))
    results = train(cfg)
    with open(tmp_path / "out" / "csv" / "metrics.csv") as fh:
        psnr = [float(r["val/psnr"]) for r in csv.DictReader(fh) if r.get("val/psnr")]
    assert len(psnr) == 4
    # mode max: the kept checkpoint is the epoch with the highest PSNR, not the lowest.
    assert results["best_value"] == pytest.approx(max(psnr), abs=1e-4)
    best_epoch = int(np.argmax(psnr))
    assert Path(results["best_checkpoint"]).name == f"best-epoch{best_epoch:03d}.ckpt"
    assert results["val_metrics"]["val/psnr"] == pytest.approx(results["best_value"], abs=1e-4)

    # The super-resolution report of the best checkpoint on the test split (20 pairs: 2 test).
    tested = json.loads((tmp_path / "out" / "best_test" / "metrics.json").read_text())
    assert tested["n"] == 2 and tested["psnr"] == results["test_metrics"]["psnr"]
    assert (tmp_path / "out" / "best_test" / "comparison.png").is_file()

    eval_cfg = compose_cfg(
        tmp_path / "eval",
        [f"ckpt_path={results['best_checkpoint']}", "trainer=cpu", "save_outputs=true",
         "split=val"],
        "eval",
    )  # fmt: skip
    report = evaluate(eval_cfg)
    assert report["psnr"] == pytest.approx(results["val_metrics"]["val/psnr"], abs=1e-3)
    out = tmp_path / "eval" / "out"
    assert (out / "comparison.png").is_file()
    saved = sorted(p.name for p in (out / "sr").glob("*.npy"))
    assert len(saved) == report["n"] == 4
    assert np.load(out / "sr" / saved[0]).shape == (1, 150, 150)


@pytest.mark.slow
def test_evaluate_reference_weights_without_a_checkpoint(
    superres_root: Path, tmp_path: Path
) -> None:
    state = reference_sr_state_dict(n_blocks=1)
    weights = tmp_path / "superres.pth"
    torch.save(state, weights)
    cfg = compose_cfg(
        tmp_path,
        ["experiment=reference_srresnet", f"model.pretrained={weights}",
         f"data.root={superres_root}", "split=all", "trainer=cpu"],
        "eval",
    )  # fmt: skip
    report = evaluate(cfg)
    assert report["n"] == 20
    # The scores are those of the reference network itself, run here by hand.
    names = sorted(p.name for p in (superres_root / "LR").glob("*.npy"))
    lr = torch.stack([torch.from_numpy(np.load(superres_root / "LR" / n)) for n in names])
    hr = torch.stack([torch.from_numpy(np.load(superres_root / "HR" / n)) for n in names])
    with torch.no_grad():
        expected = per_image_metrics(reference_sr_forward(state, lr.float()), hr.float())[
            "psnr"
        ].mean()
    assert report["psnr"] == pytest.approx(float(expected), abs=1e-3)


def test_adversarial_run_clips_and_its_checkpoint_evaluates(tmp_path: Path) -> None:
    root = make_superres_folder(tmp_path / "small", 10, lr_size=16)  # 7 train, 2 val, 1 test
    options = sr_quick(
        root, tmp_path, "adversarial", "data.hr_size=32", "debug=limit", "trainer.max_epochs=1",
        "model.gradient_clip_val=0.5", "model.ema_decay=0.9", "model.discriminator_warmup_steps=1",
    )  # fmt: skip
    cfg = compose_cfg(tmp_path, options)
    assert cfg.model._target_ == "lensexp.tasks.superres.AdversarialSRModule"
    results = train(cfg)
    checkpoint = torch.load(results["last_checkpoint"], map_location="cpu", weights_only=True)
    assert checkpoint["generator_steps"] == 2 and len(checkpoint["optimizer_states"]) == 2
    assert checkpoint["hyper_parameters"]["gradient_clip_val"] == 0.5
    assert any(k.startswith("discriminator.") for k in checkpoint["state_dict"])
    with open(tmp_path / "out" / "csv" / "metrics.csv") as fh:
        columns = set(next(csv.reader(fh)))
    assert {"train/d_loss_epoch", "train/d_loss_real_epoch", "train/loss_adversarial"} <= columns

    # evaluate.py rebuilds the adversarial module from the stored config and loads it strictly.
    eval_cfg = compose_cfg(
        tmp_path / "eval", [f"ckpt_path={results['last_checkpoint']}", "trainer=cpu"], "eval"
    )
    report = evaluate(eval_cfg)  # the test split, as train.py reported it
    assert report["n"] == 1
    assert report["psnr"] == pytest.approx(results["test_metrics"]["psnr"], abs=1e-4)


@pytest.mark.parametrize(
    "override,key",
    [
        ("trainer.gradient_clip_val=1.0", "set model.gradient_clip_val=1.0 instead"),
        ("trainer.accumulate_grad_batches=2", "set trainer.accumulate_grad_batches=1"),
    ],
)
def test_adversarial_refuses_trainer_clipping_with_one_line(
    superres_root: Path, tmp_path: Path, override: str, key: str
) -> None:
    cfg = compose_cfg(tmp_path, sr_quick(superres_root, tmp_path, "adversarial", override))
    with pytest.raises(LensexpError) as err:
        train(cfg)
    assert key in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.slow
def test_adversarial_run_killed_and_resumed_matches_an_uninterrupted_run(
    superres_root: Path, tmp_path: Path
) -> None:
    # Both optimizers, both schedulers (plateau on val/loss), the EMA, the generator-step clock
    # and the best-so-far PSNR must come back from last.ckpt for the numbers to match.
    common = sr_quick(superres_root, tmp_path, "adversarial", "trainer.max_epochs=4",
                      "model.ema_decay=0.9", "scheduler=plateau", "model.generator.channels=4",
                      "trainer.deterministic=true", "seed=11")  # fmt: skip
    whole = train(compose_cfg(tmp_path / "whole", common))

    killed_at, results = kill_then_resume(common, tmp_path)
    assert killed_at < whole["global_step"]
    assert results["global_step"] == whole["global_step"]
    assert results["final_metrics"] == pytest.approx(whole["final_metrics"], abs=1e-6)
