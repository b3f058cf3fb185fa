"""Test-time averaging over the eight symmetries of the square (`model.tta=dihedral`): the views,
the invariance it buys, and that only evaluation outside `fit` pays for it."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lensexp.data.transforms import dihedral_views
from lensexp.errors import LensexpError
from lensexp.evaluation import evaluate
from lensexp.tasks.classification import ClassifierModule
from lensexp.tasks.regression import AxionMassRegressor
from lensexp.training import train
from tests.helpers import compose_cfg
from tests.test_train import quick


def numpy_symmetries(image: np.ndarray) -> list[np.ndarray]:
    """The eight images of a square (H, W) image under rotations by 90 degrees and mirroring,
    made with numpy alone."""
    return [np.rot90(m, k) for m in (image, np.fliplr(image)) for k in range(4)]


def test_dihedral_views_are_the_eight_symmetries_of_the_square() -> None:
    image = np.arange(25, dtype=np.float32).reshape(5, 5)  # no symmetry of its own
    views = dihedral_views(torch.from_numpy(image)[None, None])
    assert len(views) == 8
    assert torch.equal(views[0][0, 0], torch.from_numpy(image))
    made = {v[0, 0].numpy().tobytes() for v in views}
    assert made == {np.ascontiguousarray(s).tobytes() for s in numpy_symmetries(image)}


def classifier(tta: str) -> ClassifierModule:
    """A classifier whose network is a seeded linear map of the 32x32 pixels: unlike a fresh
    MobileNet in eval mode (near-constant outputs), it tells a turned image from the original."""
    module = ClassifierModule(
        loss=nn.CrossEntropyLoss(),
        optimizer=functools.partial(torch.optim.Adam, lr=1e-3),
        class_names=["no", "sphere", "vort"],
        backbone="mobilenet_v3_small",
        pretrained="none",
        tta=tta,
    )
    torch.manual_seed(0)
    module.net = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 3))
    return module.eval()


def test_averaged_probabilities_are_the_mean_over_the_symmetries_and_invariant() -> None:
    images = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    single, averaged = classifier("none"), classifier("dihedral")
    with torch.inference_mode():
        probs = averaged.evaluation_logits(images).softmax(dim=1)
        by_hand = torch.stack(
            [
                single(torch.from_numpy(np.stack([s.copy() for s in views]))[:, None]).softmax(1)
                for views in zip(*(numpy_symmetries(x[0].numpy()) for x in images), strict=True)
            ]
        ).mean(dim=0)
        assert torch.allclose(probs, by_hand, atol=1e-5)
        # The average over the whole group does not change when the sky is turned or mirrored;
        # one pass does.
        for moved in (torch.rot90(images, 1, dims=(-2, -1)), images.flip(-2)):
            turned = averaged.evaluation_logits(moved).softmax(dim=1)
            assert torch.allclose(turned, probs, atol=1e-5)
            assert not torch.allclose(single.evaluation_logits(moved), single(images), atol=1e-3)


def test_regression_averages_the_prediction_over_the_symmetries() -> None:
    module = AxionMassRegressor(
        loss=nn.L1Loss(),
        optimizer=functools.partial(torch.optim.Adam, lr=1e-3),
        backbone="mobilenet_v3_small",
        pretrained="none",
        tta="dihedral",
    ).eval()
    torch.manual_seed(0)
    module.net = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 1))
    images = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = torch.stack([module(v) for v in dihedral_views(images)]).mean(dim=0)
        assert torch.allclose(module.evaluation_prediction(images), expected)
        mirrored = module.evaluation_prediction(images.flip(-1))
        assert torch.allclose(mirrored, expected, atol=1e-5)
        assert not torch.allclose(module(images.flip(-1)), module(images), atol=1e-3)


def test_unknown_tta_names_the_key() -> None:
    with pytest.raises(LensexpError, match=r"model\.tta='rotate': choose one of none, dihedral"):
        classifier("rotate")


@pytest.mark.slow
def test_fit_selects_on_one_pass_and_reports_the_average(
    classification_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, int] = {}
    forward = ClassifierModule.forward

    def counting(self: ClassifierModule, x: torch.Tensor) -> torch.Tensor:
        stage = str(self.trainer.state.fn.value) + ("" if self.training else "-eval")
        seen[stage] = seen.get(stage, 0) + x.shape[0]
        return forward(self, x)

    monkeypatch.setattr(ClassifierModule, "forward", counting)
    cfg = compose_cfg(
        tmp_path / "train",
        quick(classification_root, "trainer.max_epochs=2", "trainer.num_sanity_val_steps=0"),
    )
    assert cfg.model.tta == "dihedral"  # the default recipe's
    results = train(cfg)
    # 12 validation images (4 per class), 3 test images held out of train/: each epoch's
    # validation saw every image once; the best checkpoint's two reports (val, test) saw each
    # image in 8 views, and its validation metrics come from the val report's pass (no second
    # pass over val). The model summary counts FLOPs on one image, in eval mode, at fit's start.
    assert seen["fit-eval"] == 2 * 12 + 1
    assert "validate-eval" not in seen
    assert seen["predict-eval"] == 8 * (12 + 3)
    monkeypatch.undo()

    def validate(name: str, *extra: str) -> dict:
        overrides = [f"ckpt_path={results['best_checkpoint']}", "trainer=cpu", "split=val", *extra]
        return evaluate(compose_cfg(tmp_path / name, overrides, "eval"))

    # The reported validation of the best checkpoint is the averaged one, as evaluate.py's; the
    # value that selected it, a single pass.
    averaged = validate("averaged")
    assert results["val_metrics"]["val/acc"] == pytest.approx(averaged["accuracy"], abs=1e-6)
    assert results["val_metrics"]["val/auc_micro"] == pytest.approx(averaged["auc_micro"], abs=1e-6)
    assert results["val_metrics"]["val/auc_macro"] == pytest.approx(averaged["auc_macro"], abs=1e-6)
    one_pass = validate("one_pass", "model.tta=none")
    assert results["best_value"] == pytest.approx(one_pass["auc_micro"], abs=1e-6)


@pytest.mark.parametrize("tta", ["none", "dihedral"])
@pytest.mark.parametrize("task", ["classifier", "regressor"])
def test_metrics_from_the_report_pass_equal_a_fresh_validation(
    tmp_path: Path, task: str, tta: str
) -> None:
    """train.py takes the best checkpoint's validation metrics from the val report's
    predictions instead of a second pass: every key, as `trainer.validate` logs it."""
    from lensexp.builders import build_datamodule, build_module, build_report_trainer
    from lensexp.evaluation import predict_split
    from tests.helpers import make_classification_folder
    from tests.test_axion_mass import axion_folder

    if task == "classifier":
        root = make_classification_folder(tmp_path / "cls", 6, size=32, n_val=5)
        extra = ["model=mobilenet_v3_small", "data.batch_size=4"]  # a short last batch
    else:
        root = tmp_path / "axion"
        axion_folder(root, 7, size=32)
        extra = ["model=axion_regression", "model.backbone=resnet18", "data.batch_size=4"]
    cfg = compose_cfg(
        tmp_path,
        [f"data.root={root}", *extra, "model.pretrained=none", "trainer=cpu",
         f"model.tta={tta}", f"paths.cache_dir={tmp_path / 'cache'}"],
    )  # fmt: skip
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule)
    torch.manual_seed(0)
    with torch.no_grad():  # BatchNorm statistics away from their defaults
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    outputs = predict_split(module, datamodule, build_report_trainer(cfg, keep_limits=True), "val")
    derived = module.metrics_of_outputs(outputs)
    validated = build_report_trainer(cfg, keep_limits=True).validate(
        module, datamodule=datamodule, verbose=False
    )[0]
    assert set(derived) == set(validated)
    for key, value in validated.items():
        assert derived[key] == pytest.approx(float(value), abs=1e-5, nan_ok=True), key
