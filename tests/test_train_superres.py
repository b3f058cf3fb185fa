"""Super-resolution through the training and evaluation entry points: `model=srresnet` with
every loss, best-checkpoint selection by PSNR (mode max), evaluate.py on the checkpoint and on
reference-format generator weights."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lensexp.evaluation import evaluate
from lensexp.losses.perceptual import VGG19_LAYERS, vgg19_features
from lensexp.metrics.superres import per_image_metrics
from lensexp.training import check_compatible, train
from tests.helpers import RefGenerator, compose_cfg


def vgg_file(tmp_path: Path, layer: str = "conv2_2") -> Path:
    """A random VGG19 `features` state dict up to `layer` (conv5_4's would be 80 MB)."""
    path = tmp_path / "vgg19.pth"
    torch.manual_seed(0)
    state = vgg19_features(VGG19_LAYERS[layer] + 1).state_dict()
    torch.save({f"features.{k}": v for k, v in state.items()}, path)
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
        options += ["loss.discriminator.channels=8", "loss.discriminator.hidden=16"]
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
    results = train(compose_cfg(tmp_path, sr_quick(superres_root, tmp_path, loss, "debug=fdr")))
    assert results["task"] == "superres"
    metrics = results["val_metrics"]
    assert metrics["val/psnr_gain"] == pytest.approx(
        metrics["val/psnr"] - metrics["val/psnr_bicubic"], abs=1e-3
    )
    report = json.loads((tmp_path / "out" / "best_val" / "metrics.json").read_text())
    assert set(report) == {"mse", "psnr", "ssim", "n", "bicubic"} and report["n"] == 4


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

    eval_cfg = compose_cfg(
        tmp_path / "eval",
        [f"ckpt_path={results['best_checkpoint']}", "trainer=cpu", "save_outputs=true"],
        "eval",
    )
    report = evaluate(eval_cfg)
    assert report["psnr"] == pytest.approx(results["val_metrics"]["val/psnr"], abs=1e-3)
    out = tmp_path / "eval" / "out"
    assert (out / "comparison.png").is_file()
    saved = sorted(p.name for p in (out / "sr").glob("*.npy"))
    assert len(saved) == report["n"] == 4
    assert np.load(out / "sr" / saved[0]).shape == (1, 150, 150)


def test_evaluate_reference_weights_without_a_checkpoint(
    superres_root: Path, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    reference = RefGenerator(n_blocks=1).eval()
    weights = tmp_path / "reference_generator.pth"
    torch.save(reference.state_dict(), weights)
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
        expected = per_image_metrics(reference(lr.float()), hr.float())["psnr"].mean()
    assert report["psnr"] == pytest.approx(float(expected), abs=1e-3)
