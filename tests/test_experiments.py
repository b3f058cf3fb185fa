"""Named recipes: every trail is its parent plus exactly the change its name says, and the
sweep files define the jobs the reference study needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from tests.helpers import CONF, compose_cfg

# trail -> (parent, the config keys (prefixes) its change may touch). Written from the
# reference's README, not read from the files: a trail that changes anything else fails.
TRAILS: dict[str, tuple[str, tuple[str, ...]]] = {
    # The adversarial loss brings its module: the discriminator and that module's settings.
    "adversarial": (
        "baseline",
        ("loss.", "model._target_", "model.discriminator", "model.gradient_clip"),
    ),
    "vgg": ("baseline", ("loss.",)),
    "no_batchnorm": ("baseline", ("model.generator.batch_norm",)),
    "prelu": ("no_batchnorm", ("model.generator.activation",)),
    "plateau": ("prelu", ("scheduler.",)),
    "transposed": ("plateau", ("model.generator.upsampler",)),
    "upsample_conv": ("plateau", ("model.generator.upsampler",)),
    "one_block": ("plateau", ("model.generator.n_blocks",)),
    "128_channels": ("plateau", ("model.generator.channels",)),
}


def flat(cfg: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flat(value, name + ".")
        else:
            out[name] = value
    return out


def composed(tmp_path: Path, *overrides: str) -> dict[str, Any]:
    cfg = compose_cfg(tmp_path, list(overrides))
    return flat(OmegaConf.to_container(cfg, resolve=False))


def changed_keys(a: dict[str, Any], b: dict[str, Any]) -> set[str]:
    return {k for k in a.keys() | b.keys() if a.get(k, "<absent>") != b.get(k, "<absent>")}


@pytest.mark.parametrize("trail", sorted(TRAILS))
def test_trail_differs_from_its_parent_only_where_intended(tmp_path: Path, trail: str) -> None:
    parent, allowed = TRAILS[trail]
    child = composed(tmp_path, f"experiment=trail_{trail}")
    diff = changed_keys(child, composed(tmp_path, f"experiment=trail_{parent}"))
    assert diff, f"trail_{trail} changes nothing"
    assert {k for k in diff if not k.startswith(allowed)} == set()
    # ... and the same single change, applied to the baseline, is the ablation's job.
    ablated = composed(tmp_path, "experiment=trail_baseline", f"+ablation={trail}")
    assert {k for k in changed_keys(ablated, composed(tmp_path, "experiment=trail_baseline"))
            if not k.startswith(allowed)} == set()  # fmt: skip


def test_trail_baseline_is_the_srgan_generator(tmp_path: Path) -> None:
    base = composed(tmp_path, "experiment=trail_baseline")
    assert base["model.generator.n_blocks"] == 16 and base["model.generator.batch_norm"] is True
    assert base["model.generator.activation"] == "leakyrelu"
    assert base["model.generator.upsampler"] == "pixelshuffle"
    assert base["loss.pixel.criterion"] == "mse" and "loss.adversarial.weight" not in base
    assert base["optimizer.lr"] == 1e-4 and base["scheduler.scheduler"] is None


def sweep_values(name: str, key: str) -> list[str]:
    params = OmegaConf.load(CONF / "experiment" / f"{name}.yaml").hydra.sweeper.params
    return [v.strip() for v in str(params[key]).split(",")]


def test_sweep_files_cover_every_trail_and_change() -> None:
    trails = sweep_values("sr_trails", "+experiment@_global_")
    assert sorted(trails) == sorted(["trail_baseline", *(f"trail_{t}" for t in TRAILS)])
    changes = sweep_values("sr_ablation", "+ablation")
    assert sorted(changes) == sorted(["none", *TRAILS])
    backbones = sweep_values("classifier_backbones", "model")
    assert sorted(backbones) == ["efficientnet_b0", "mobilenet_v3_large", "mobilenet_v3_small",
                                 "resnet18", "small_resnet"]  # fmt: skip


@pytest.mark.parametrize("trail", ["trail_baseline", "trail_prelu", "trail_adversarial"])
def test_a_sweep_job_is_the_trail_it_names(tmp_path: Path, trail: str) -> None:
    job = composed(tmp_path, "experiment=sr_trails", f"+experiment@_global_={trail}")
    assert job == composed(tmp_path, f"experiment={trail}")


def test_reference_srresnet_is_the_released_run(tmp_path: Path) -> None:
    cfg = composed(tmp_path, "experiment=reference_srresnet")
    generator = {k.removeprefix("model.generator."): v for k, v in cfg.items()
                 if k.startswith("model.generator.")}  # fmt: skip
    assert {k: generator[k] for k in ("n_blocks", "channels", "batch_norm", "activation",
                                      "upsampler", "layout")} == {  # fmt: skip
        "n_blocks": 1, "channels": 64, "batch_norm": False, "activation": "prelu",
        "upsampler": "pixelshuffle", "layout": "reference",
    }  # fmt: skip
    assert cfg["loss.pixel.criterion"] == "mse" and "loss.perceptual._target_" not in cfg
    assert (cfg["optimizer._target_"], cfg["optimizer.lr"]) == ("torch.optim.Adam", 1e-4)
    assert cfg["scheduler.scheduler._target_"].endswith("ReduceLROnPlateau")
    assert (cfg["scheduler.scheduler.factor"], cfg["scheduler.scheduler.patience"]) == (0.9, 4)
    assert cfg["scheduler.monitor"] == "val/loss"
    assert (cfg["data.batch_size"], cfg["trainer.max_epochs"], cfg["data.val_fraction"]) == (
        16, 30, 0.1)  # fmt: skip
    assert cfg["data.augment.flips"] is False and cfg["data.augment.rot90"] is False
    assert cfg["monitor"] == "val/psnr"


def test_reference_classifier_is_the_notebook(tmp_path: Path) -> None:
    cfg = composed(tmp_path, "experiment=reference_classifier")
    assert cfg["model.backbone"] == "mobilenet_v3_large"
    assert (cfg["model.pretrained"], cfg["model.imagenet_weights"]) == ("imagenet", "IMAGENET1K_V1")
    assert (cfg["model.head"], cfg["model.input_adapter"]) == ("linear", "repeat")
    assert (cfg["data.resize"], cfg["data.batch_size"], cfg["trainer.max_epochs"]) == (224, 50, 30)
    assert (cfg["optimizer._target_"], cfg["optimizer.lr"]) == ("torch.optim.Adam", 1e-3)
    assert (cfg["scheduler.scheduler.factor"], cfg["scheduler.scheduler.patience"]) == (0.5, 3)
    assert (cfg["monitor"], cfg["monitor_mode"]) == ("val/auc_macro", "max")
    assert (cfg["data.augment.random_center_crop"], cfg["data.augment.random_center_crop_p"]) == (
        100, 0.4)  # fmt: skip
    assert cfg["data.augment.rotation_degrees"] == 90 and cfg["data.augment.flips"] is True


def test_plateau_trail_lowers_the_lr_after_one_epoch_without_improvement(tmp_path: Path) -> None:
    from hydra.utils import instantiate

    cfg = compose_cfg(tmp_path, ["experiment=trail_plateau"])
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    scheduler = instantiate(cfg.scheduler.scheduler)(optimizer)
    scheduler.step(1.0)  # the first epoch sets the best validation loss
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
    scheduler.step(1.1)  # one epoch without improvement
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-5)


def test_default_run_is_the_measured_cpu_choice(tmp_path: Path) -> None:
    """`python train.py` trains the small one-band ResNet from scratch (nothing to download: the
    same run online or offline) for 30 epochs and reports with test-time averaging
    (docs/benchmarks.md); the epochs are the classifiers' own default, so SR keeps 10 and the
    command line still wins; the reference recipe evaluates each image once."""
    cfg = composed(tmp_path)
    assert (cfg["model.backbone"], cfg["trainer.max_epochs"]) == ("small_resnet", 30)
    assert (cfg["model.pretrained"], cfg["model.input_adapter"]) == ("none", "none")
    knobs = {k: v for k, v in cfg.items() if k.startswith("model.architecture.")}
    assert knobs == {
        "model.architecture.widths": [32, 64, 128, 256], "model.architecture.n_blocks": [1, 1, 1, 1],
        "model.architecture.stem_stride": 2, "model.architecture.stem_pool": True,
    }  # fmt: skip
    assert cfg["model.tta"] == "dihedral"
    assert composed(tmp_path, "experiment=reference_classifier")["model.tta"] == "none"
    assert composed(tmp_path, "model=resnet18")["trainer.max_epochs"] == 30
    assert composed(tmp_path, "model=srresnet")["trainer.max_epochs"] == 10
    assert composed(tmp_path, "trainer=cpu", "trainer.max_epochs=3")["trainer.max_epochs"] == 3


def test_compose_run_config_from_a_relative_folder_installs_hydras_choices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hydra.core.hydra_config import HydraConfig

    from lensexp.hydra_setup import compose_run_config

    monkeypatch.chdir(CONF.parent)
    cfg = compose_run_config("conf", ["experiment=trail_baseline"])
    assert "hydra" not in cfg and cfg.model.generator.n_blocks == 16
    assert HydraConfig.get().runtime.choices["experiment"] == "trail_baseline"
