"""End-to-end: configs compose, `train.py` trains and reports, `evaluate.py` reads its checkpoint.

In-process runs compose the real configs (as Hydra does for `python train.py ...`) and call the
same `train`/`evaluate` functions; a few subprocess runs go through the scripts themselves.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from lensexp.errors import LensexpError
from lensexp.evaluation import evaluate
from lensexp.training import check_compatible, train
from tests.helpers import (
    CLASSES,
    CONF,
    ROOT,
    Payload,
    compose_cfg,
    kill_then_resume,
    make_classification_folder,
    save_image,
)

GROUPS = [
    "data", "loss", "model", "optimizer", "scheduler", "trainer", "callbacks", "logger",
    "paths", "debug", "experiment",
]  # fmt: skip


def quick(root: Path, *extra: str) -> list[str]:
    """A short CPU training on the small 32x32 dataset at `root`."""
    return [
        f"data.root={root}",
        "data.image_size=32",
        "data.batch_size=8",
        "model=mobilenet_v3_small",
        "model.pretrained=none",
        "trainer=cpu",
        "logger=csv",
        *extra,
    ]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "group,option", [(g, o) for g in GROUPS for o in options(g)], ids=lambda v: str(v)
)
def test_every_option_composes(tmp_path: Path, group: str, option: str) -> None:
    cfg = compose_cfg(tmp_path, [f"{group}={option}"])
    assert cfg.model._target_ and cfg.data._target_ and cfg.trainer._target_
    # Resolving every interpolation catches a key that points nowhere.
    from omegaconf import OmegaConf

    OmegaConf.to_container(cfg, resolve=True)
    try:
        check_compatible(cfg)
    except LensexpError as err:  # a data/loss of the other task alone: refused with the remedy
        assert group in ("data", "loss")
        assert f"choose {group}=classification" in str(err) or "loss=cross_entropy" in str(err)


def test_incompatible_loss_is_refused(tmp_path: Path) -> None:
    cfg = compose_cfg(tmp_path, ["loss=vgg"])
    with pytest.raises(LensexpError, match="superres loss.*classification model"):
        check_compatible(cfg)


def test_short_training_writes_results_and_picks_the_best_checkpoint(
    classification_root: Path, tmp_path: Path
) -> None:
    # One pass per image (no test-time averaging), so validating the best checkpoint again
    # must give the very value that selected it.
    cfg = compose_cfg(
        tmp_path, quick(classification_root, "trainer.max_epochs=3", "model.tta=none")
    )
    results = train(cfg)
    out = tmp_path / "out"

    saved = json.loads((out / "results.json").read_text())
    assert saved["task"] == "classification"
    assert saved["monitor"] == "val/auc_micro" and saved["monitor_mode"] == "max"
    assert saved["pretrained_loaded"] is False
    assert Path(saved["config"]).is_file()
    assert Path(saved["best_checkpoint"]).is_file()
    assert (out / "checkpoints" / "last.ckpt").is_file()
    for key in ("val/acc", "val/auc_micro", "val/auc_macro", "val/auc_sphere", "val/loss"):
        assert key in saved["val_metrics"]

    # The kept checkpoint is the best epoch by the monitored metric (mode max), and
    # validating it again gives the value the callback recorded.
    with open(out / "csv" / "metrics.csv") as fh:
        per_epoch = [float(r["val/auc_micro"]) for r in csv.DictReader(fh) if r["val/auc_micro"]]
    assert len(per_epoch) == 3
    assert results["best_value"] == pytest.approx(max(per_epoch), abs=1e-6)
    assert saved["val_metrics"]["val/auc_micro"] == pytest.approx(saved["best_value"], abs=1e-5)

    report = json.loads((out / "best_val" / "metrics.json").read_text())
    assert report["n"] == 12
    assert report["accuracy"] == pytest.approx(saved["val_metrics"]["val/acc"], abs=1e-6)
    assert (out / "best_val" / "roc_curve.png").is_file()

    # The same report of the best checkpoint on the test split: no test/ here, so a seeded
    # one of each class's eight training images, which never trained.
    assert saved["test_split"] == "a seeded 10% of train/ (data.split_seed=0)"
    assert saved["test_report_dir"] == str(out / "best_test")
    tested = json.loads((out / "best_test" / "metrics.json").read_text())
    assert tested["n"] == 3 and tested["accuracy"] == saved["test_metrics"]["accuracy"]
    assert (out / "best_test" / "roc_curve.png").is_file()
    with open(out / "best_test" / "predictions.csv") as fh:
        test_files = {row["path"] for row in csv.DictReader(fh)}
    trained = sum(len(list((classification_root / "train" / c).glob("*.npy"))) for c in CLASSES)
    assert results["global_step"] == 3 * 3 and trained - len(test_files) == 21  # 3 batches of 8
    assert all("/train/" in path for path in test_files)


def test_a_validation_without_some_class_logs_no_best_and_no_warning(
    classification_root: Path, tmp_path: Path
) -> None:
    # One validation batch of 4 in class order: `no` images only, so each class's AUC and the
    # macro AUC are NaN every epoch (the micro AUC is not), as in a `debug=limit` run.
    cfg = compose_cfg(
        tmp_path,
        quick(classification_root, "trainer.max_epochs=2", "trainer.limit_val_batches=1",
              "data.batch_size=4"),
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(cfg)
    assert not [w for w in caught if "before the ``update``" in str(w.message)]
    with open(tmp_path / "out" / "csv" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert all(not r.get("val/auc_macro_best") for r in rows)
    best = [float(r["val/auc_micro_best"]) for r in rows if r.get("val/auc_micro_best")]
    micro = [float(r["val/auc_micro"]) for r in rows if r.get("val/auc_micro")]
    assert len(best) == 2 and best == [micro[0], max(micro)]


@pytest.mark.slow
def test_the_test_split_never_touches_selection(tmp_path: Path) -> None:
    """Whatever test/ holds, or with no test split at all, training, the best checkpoint and
    its validation numbers are the same; only test_metrics (the best checkpoint on test/)
    follow test/."""
    plain = make_classification_folder(tmp_path / "plain", 8, size=32, n_val=4)
    val_copy = shutil.copytree(plain, tmp_path / "val_copy")
    shutil.copytree(plain / "val", val_copy / "test")  # test/ holds the val images
    other = shutil.copytree(plain, tmp_path / "other")
    for i, cls in enumerate(CLASSES):  # test/ holds 2 other images a class, brighter
        for j in range(2):
            image = 5 * np.random.default_rng([i, j]).random((32, 32))
            save_image(other / "test" / cls / f"{cls}_{j}.npy", image)
    common = ("debug=limit", "trainer.deterministic=true", "seed=3")
    runs = {name: train(compose_cfg(tmp_path / name / "run", quick(root, *common)))
            for name, root in (("val_copy", val_copy), ("other", other))}  # fmt: skip
    untested = quick(plain, *common, "data.test_fraction=0")  # all of train/ trains, as above
    runs["none"] = train(compose_cfg(tmp_path / "none", untested))
    reference = runs["val_copy"]
    for name in ("other", "none"):
        for key in ("best_value", "val_metrics", "final_metrics", "global_step"):
            assert runs[name][key] == reference[key], (name, key)
        assert Path(runs[name]["best_checkpoint"]).name == Path(reference["best_checkpoint"]).name
    assert runs["none"]["test_metrics"] is None and runs["none"]["test_split"] is None
    assert not (tmp_path / "none" / "out" / "best_test").exists()
    # test/ with the val images scores as val does; other images score otherwise.
    best_val = tmp_path / "val_copy" / "run" / "out" / "best_val" / "metrics.json"
    best_val = json.loads(best_val.read_text())
    tested = reference["test_metrics"]
    assert tested["n"] == best_val["n"] == 12 and tested["accuracy"] == best_val["accuracy"]
    assert tested["auc_per_class"] == best_val["auc_per_class"]
    assert reference["test_split"] == str(val_copy / "test")
    assert runs["other"]["test_metrics"]["n"] == 6 and runs["other"]["test_metrics"] != tested
    with open(tmp_path / "other" / "run" / "out" / "best_test" / "predictions.csv") as fh:
        paths = [Path(row["path"]) for row in csv.DictReader(fh)]
    assert sorted(paths) == sorted((other / "test").rglob("*.npy"))


@pytest.mark.slow
def test_short_run_through_the_script(classification_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "train.py",
         *quick(classification_root, "debug=limit", "trainer.max_epochs=1", "logger=tensorboard"),
         f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={out}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert Path(results["best_checkpoint"]).parent == out / "checkpoints"
    assert f"best checkpoint: {results['best_checkpoint']}" in proc.stdout
    # Not a terminal: one progress line per epoch, with its metrics, and no progress bar.
    (epoch_line,) = [line for line in proc.stdout.splitlines() if "epoch 1/1 (step" in line]
    assert "val/auc_micro" in epoch_line
    assert "Epoch 0/0" not in proc.stdout
    # debug=limit logs every step, so Lightning has no logging interval to warn about.
    assert "smaller than the logging interval" not in proc.stderr, proc.stderr[-3000:]
    # Each of Lightning's messages once (fit's and the reports' Trainers each say which devices
    # they use), no notice about our own callbacks, and the model summary.
    assert proc.stdout.count("GPU available:") == 1, proc.stdout[-3000:]
    assert "already configured" not in proc.stdout
    # Not a terminal: Lightning's plain-text table, whole (Rich's cut type names at 80 columns),
    # in the job's log file too.
    assert "| val_metrics | ClassificationMetrics" in proc.stdout, proc.stdout[-3000:]
    assert "| val_metrics | ClassificationMetrics" in (out / "train.log").read_text()
    # With FLOPs, counted on the first training image (Lightning counts 0 without an example).
    assert re.search(r"^[1-9][\d.]* [KMG] +Total Flops$", proc.stdout, re.M), proc.stdout[-3000:]
    # The run's TensorBoard folder is named after the model.
    (events,) = (out / "tensorboard" / "mobilenet_v3_small").glob("events.out.tfevents.*")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(events), size_guidance={"images": 0}).Reload()
    assert {"val/auc_micro", "val/acc", "val/auc_micro_best"} <= set(tb.Tags()["scalars"])
    assert {"val/confusion_matrix", "val/roc_curve"} <= set(tb.Tags()["images"])


@pytest.mark.parametrize("limit_val_batches", ["null", "0.0", "3"])
def test_report_trainer_goes_as_far_as_validation_without_a_console_notice(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, limit_val_batches: str
) -> None:
    import logging

    from lensexp.builders import build_report_trainer

    cfg = compose_cfg(tmp_path, [f"trainer.limit_val_batches={limit_val_batches}"])
    lightning_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    lightning_log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger=lightning_log.name):
            everything = build_report_trainer(cfg, keep_limits=False)
            as_validated = build_report_trainer(cfg, keep_limits=True)
    finally:
        lightning_log.removeHandler(caplog.handler)
    assert everything.limit_predict_batches == 1.0
    # A run that validated on 3 batches reports on 3; one that did not validate, on all.
    assert as_validated.limit_predict_batches == (3 if limit_val_batches == "3" else 1.0)
    # Lightning announces an explicit limit of 1.0 ("100% of the batches will be used").
    assert not [r for r in caplog.records if "was configured so" in r.getMessage()]


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides,meant",
    [
        (["model.compile=true"], "runtime.compile"),  # the same name in another group
        (["data.bach_size=4"], "data.batch_size"),  # a misspelling
        (["model=srresnet", "model.n_blok=4"], "model.generator.n_blocks"),  # in the chosen model
        (["foo.bar=1"], None),
    ],
)
def test_an_unknown_key_names_the_keys_it_may_have_meant(
    tmp_path: Path, overrides: list[str], meant: str | None
) -> None:
    proc = subprocess.run(
        [sys.executable, "train.py", *overrides, f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    unknown = overrides[-1].split("=")[0]
    assert line.startswith(f"lensexp: error: unknown config key {unknown}: ")
    if meant is None:
        assert "did you mean" not in line
    else:
        assert f"did you mean {meant}?" in line
    assert not (tmp_path / "run").exists()


def test_similar_keys_look_in_the_config_the_other_overrides_choose(tmp_path: Path) -> None:
    from lensexp.cli import similar_keys

    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "small.yaml").write_text("width: 8\n")
    (tmp_path / "net" / "deep.yaml").write_text("stages:\n  n_blocks: 4\n")
    (tmp_path / "main.yaml").write_text(
        "defaults:\n  - net: small\n  - _self_\nrun:\n  compile: false\n  batch_size: 2\n"
    )
    conf = str(tmp_path)
    assert similar_keys("net.compile", conf, "main", []) == ["run.compile"]
    assert similar_keys("run.bach_size", conf, "main", []) == ["run.batch_size"]
    assert similar_keys("net.n_blok", conf, "main", ["net=deep", "net.n_blok=3"]) == [
        "net.stages.n_blocks"
    ]
    assert similar_keys("net.n_blok", conf, "main", []) == []  # the default net has none
    # Overrides that do not compose on their own (a sweep) fall back to the defaults.
    assert similar_keys("net.compile", conf, "main", ["net=small,deep"]) == ["run.compile"]


@pytest.mark.slow
def test_incompatible_choice_fails_in_one_line_before_any_work(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "train.py", "loss=vgg", f"hydra.run.dir={tmp_path / 'run'}",
         f"paths.data_dir={tmp_path / 'data'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == [lines[-1]] and lines[0].startswith("lensexp: error: loss=vgg")
    assert "choose loss=cross_entropy" in lines[0]
    assert not (tmp_path / "data").exists()  # no simulation started
    assert not (tmp_path / "run").exists()  # no run folder that would pass for a run


def test_evaluate_a_checkpoint_with_nothing_else(classification_root: Path, tmp_path: Path) -> None:
    train_cfg = compose_cfg(tmp_path / "train", quick(classification_root, "debug=limit"))
    results = train(train_cfg)

    # The test split by default: the seeded one train.py held out and reported.
    eval_cfg = compose_cfg(
        tmp_path / "eval", [f"ckpt_path={results['best_checkpoint']}", "trainer=cpu"], "eval"
    )
    assert eval_cfg.split == "test"
    metrics = evaluate(eval_cfg)
    out = tmp_path / "eval" / "out"
    saved = json.loads((out / "metrics.json").read_text())
    assert set(saved) >= {
        "accuracy", "auc_micro", "auc_macro", "auc_per_class", "confusion_matrix", "n"
    }  # fmt: skip
    assert set(saved["auc_per_class"]) == {"no", "sphere", "vort"}
    assert saved["n"] == 3 and np.sum(saved["confusion_matrix"]) == 3
    assert metrics["accuracy"] == pytest.approx(results["test_metrics"]["accuracy"], abs=1e-6)
    assert metrics["auc_per_class"] == pytest.approx(results["test_metrics"]["auc_per_class"])
    with open(out / "predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    with open(tmp_path / "train" / "out" / "best_test" / "predictions.csv") as fh:
        assert [row["path"] for row in rows] == [row["path"] for row in csv.DictReader(fh)]
    assert list(rows[0]) == [
        "path", "label", "prediction", "p_no", "p_sphere", "p_vort", "axion_mass"
    ]  # fmt: skip
    for name in ("metrics.md", "confusion_matrix.png", "roc_curve.png"):
        assert (out / name).is_file()

    # split=val: the split that selected the checkpoint.
    val_cfg = compose_cfg(
        tmp_path / "val", [f"ckpt_path={results['best_checkpoint']}", "trainer=cpu", "split=val"],
        "eval",
    )  # fmt: skip
    validated = evaluate(val_cfg)
    assert validated["n"] == 12
    assert validated["accuracy"] == pytest.approx(results["val_metrics"]["val/acc"], abs=1e-6)
    # Pointed at the training run's own folder, evaluate.py refuses rather than overwrite it.
    into_run = compose_cfg(tmp_path / "train", [f"ckpt_path={results['best_checkpoint']}"], "eval")
    before = sorted(p.stat().st_mtime_ns for p in (tmp_path / "train" / "out").rglob("*"))
    with pytest.raises(LensexpError, match=r"a training run's folder; evaluate\.py writes"):
        evaluate(into_run)
    assert sorted(p.stat().st_mtime_ns for p in (tmp_path / "train" / "out").rglob("*")) == before

    # split=all reads every file under data.root, labelled by folder.
    all_cfg = compose_cfg(
        tmp_path / "all",
        [f"ckpt_path={results['best_checkpoint']}", "trainer=cpu", "split=all",
         f"data.root={classification_root}"],
        "eval",
    )  # fmt: skip
    assert evaluate(all_cfg)["n"] == 36


def test_evaluate_never_tests_on_training_images(
    classification_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    results = train(compose_cfg(tmp_path / "train", quick(classification_root, "debug=limit")))
    best = results["best_checkpoint"]
    checkpoint = torch.load(best, weights_only=True)
    # Other split settings on the data it trained on would draw training images as test.
    for i, override in enumerate(("data.test_fraction=0.3", "data.split_seed=1")):
        overrides = [f"ckpt_path={best}", "trainer=cpu", override]
        cfg = compose_cfg(tmp_path / f"eval{i}", overrides, "eval")
        with pytest.raises(LensexpError, match=rf"{override}.*\(trained with .*holding training"):
            evaluate(cfg)
    # A checkpoint made before test splits trained on all of train/: no seeded test split.
    from lensexp.callbacks import CONFIG_KEY

    del checkpoint[CONFIG_KEY]["data"]["test_fraction"]
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    cfg = compose_cfg(tmp_path / "old", [f"ckpt_path={old}", "trainer=cpu"], "eval")
    with pytest.raises(LensexpError, match=r"no test split \(no test/ folder and data\.test_f"):
        evaluate(cfg)
    assert "trained before lensexp held out a test split" in caplog.text
    cfg = compose_cfg(
        tmp_path / "old_val", [f"ckpt_path={old}", "trainer=cpu", "split=val"], "eval"
    )
    assert evaluate(cfg)["n"] == 12


def test_evaluate_refuses_a_checkpoint_carrying_a_pickled_payload(
    classification_root: Path, tmp_path: Path
) -> None:
    results = train(compose_cfg(tmp_path / "train", quick(classification_root, "debug=limit")))
    checkpoint = torch.load(results["best_checkpoint"], weights_only=True)
    marker = tmp_path / "payload-ran"
    checkpoint["extra"] = Payload(marker)
    crafted = tmp_path / "crafted.ckpt"
    torch.save(checkpoint, crafted)

    cfg = compose_cfg(tmp_path / "eval", [f"ckpt_path={crafted}", "trainer=cpu"], "eval")
    with pytest.raises(LensexpError, match=r"crafted\.ckpt: refused, the file pickles exec,"):
        evaluate(cfg)
    assert not marker.exists()
    assert not (tmp_path / "eval" / "out" / "metrics.json").exists()


def write_learnable(root: Path, n_train: int, n_val: int, size: int = 32) -> Path:
    """Three classes a small CNN can tell apart: a centred blob, a ring, a blob off centre,
    each with noise and random position jitter."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2

    def image(label: int) -> np.ndarray:
        dx, dy = rng.uniform(-2, 2, 2)
        r = np.hypot(xx - dx, yy - dy)
        if label == 0:
            img = np.exp(-(r**2) / 18)
        elif label == 1:
            img = np.exp(-((r - 9) ** 2) / 4)
        else:
            img = np.exp(-((xx - dx - 8) ** 2 + (yy - dy) ** 2) / 8)
        img = img + rng.normal(0, 0.15, img.shape)
        return (img - img.min()) / (img.max() - img.min())

    for split, n in (("train", n_train), ("val", n_val)):
        for label, name in enumerate(("no", "sphere", "vort")):
            for i in range(n):
                save_image(root / split / name / f"{i:04d}.npy", image(label))
    return root


@pytest.mark.slow
def test_validation_accuracy_rises_clearly_above_chance(tmp_path: Path) -> None:
    root = write_learnable(tmp_path / "learnable", 48, 16)
    cfg = compose_cfg(
        tmp_path,
        quick(root, "model=resnet18", "model.pretrained=none", "trainer.max_epochs=6",
              "data.batch_size=16", "scheduler=none"),
    )  # fmt: skip
    results = train(cfg)
    assert results["val_metrics"]["val/acc"] > 0.8  # chance is 1/3
    assert results["val_metrics"]["val/auc_micro"] > 0.9


def test_pretrained_from_a_local_file_is_recorded(
    classification_root: Path, tmp_path: Path
) -> None:
    from torchvision.models import mobilenet_v3_small

    torch.manual_seed(0)
    weights = tmp_path / "mnv3s.pth"
    torch.save(mobilenet_v3_small().state_dict(), weights)
    cfg = compose_cfg(
        tmp_path, quick(classification_root, "debug=fdr", f"model.pretrained={weights}")
    )
    results = train(cfg)  # fast_dev_run: one batch each way, no checkpoint
    assert results["pretrained_loaded"] is True
    assert results["best_checkpoint"] is None


def test_missing_data_root_is_one_clear_error(tmp_path: Path) -> None:
    cfg = compose_cfg(tmp_path, quick(tmp_path / "nowhere", "debug=fdr"))
    with pytest.raises(LensexpError, match="nowhere.*no such folder.*train/<class>"):
        train(cfg)


@pytest.mark.slow
def test_resume_needs_only_the_checkpoint(classification_root: Path, tmp_path: Path) -> None:
    first = train(compose_cfg(tmp_path, quick(classification_root, "debug=limit")))
    assert first["epochs"] == 2 and first["global_step"] == 2 * 3
    # None of the original overrides (model, data, trainer...): the checkpoint's config is used,
    # in the same run folder, with the command line on top.
    resumed = train(compose_cfg(tmp_path, ["ckpt_path=last", "trainer.max_epochs=3"]))
    assert resumed["epochs"] == 3 and resumed["global_step"] == 3 * 3  # as an uninterrupted run
    config = (tmp_path / "out" / "config.yaml").read_text()
    assert "backbone: mobilenet_v3_small" in config and f"root: {classification_root}" in config
    last = torch.load(resumed["last_checkpoint"], weights_only=True)
    assert last["epoch"] == 2 and last["global_step"] == 9


def test_resume_last_without_a_run_folder_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(
        LensexpError, match=r"ckpt_path=last: no .*last\.ckpt; give hydra\.run\.dir"
    ):
        train(compose_cfg(tmp_path, ["ckpt_path=last"]))


def test_last_checkpoint_is_the_final_epoch(classification_root: Path, tmp_path: Path) -> None:
    # A best-so-far metric never falls, so with mode=min the best checkpoint stays at epoch 0:
    # last.ckpt must still follow the run to its end.
    cfg = compose_cfg(
        tmp_path,
        quick(classification_root, "trainer.max_epochs=3", "monitor=val/auc_micro_best",
              "monitor_mode=min"),
    )  # fmt: skip
    results = train(cfg)
    assert Path(results["best_checkpoint"]).name == "best-epoch000.ckpt"
    last = torch.load(results["last_checkpoint"], map_location="cpu", weights_only=True)
    assert Path(results["last_checkpoint"]).name == "last.ckpt"
    assert last["epoch"] == results["epochs"] - 1 == 2
    assert last["global_step"] == results["global_step"] == 3 * 3  # 24 images, batch 8


# -- from config to run -----------------------------------------------------------------------
TRAINER_EXAMPLES = {
    "trainer.fast_dev_run=true": ("fast_dev_run", True),
    "trainer.limit_train_batches=0.1": ("limit_train_batches", 0.1),
    "trainer.accumulate_grad_batches=2": ("accumulate_grad_batches", 2),
    "trainer.gradient_clip_val=1.0": ("gradient_clip_val", 1.0),
}


@pytest.mark.parametrize("override", [*TRAINER_EXAMPLES, "trainer.max_time=00:00:01:30"])
def test_any_trainer_argument_from_the_command_line(tmp_path: Path, override: str) -> None:
    from lightning.pytorch.callbacks import Timer

    from lensexp.builders import build_trainer

    trainer = build_trainer(compose_cfg(tmp_path, ["logger=csv", override]))
    if override in TRAINER_EXAMPLES:
        name, value = TRAINER_EXAMPLES[override]
        assert getattr(trainer, name) == value
    else:
        (timer,) = [c for c in trainer.callbacks if isinstance(c, Timer)]
        assert timer._duration == 90.0


@pytest.mark.parametrize(
    "override,depths",
    [(None, [1]), ("callbacks.model_summary.max_depth=2", [2]),
     ("trainer.enable_model_summary=false", [])],
)  # fmt: skip
def test_the_model_summary_is_the_callbacks_groups_and_the_trainer_flag_turns_it_off(
    tmp_path: Path, override: str | None, depths: list[int]
) -> None:
    from lightning.pytorch.callbacks import ModelSummary

    from lensexp.builders import build_trainer
    from lensexp.callbacks import ModelSummary as LensexpSummary

    trainer = build_trainer(
        compose_cfg(tmp_path, ["logger=csv", *([override] if override else [])])
    )
    summaries = [c for c in trainer.callbacks if isinstance(c, ModelSummary)]
    assert [type(c) for c in summaries] == [LensexpSummary] * len(depths)
    assert [c._max_depth for c in summaries] == depths


def test_trainer_config_lists_every_trainer_argument() -> None:
    import inspect

    import lightning
    from omegaconf import OmegaConf

    params = set(inspect.signature(lightning.pytorch.Trainer.__init__).parameters)
    listed = set(OmegaConf.load(CONF / "trainer" / "default.yaml")) - {"_target_"}
    # callbacks and logger come from their own groups.
    assert listed == params - {"self", "callbacks", "logger"}


def test_debug_wins_over_experiment(tmp_path: Path) -> None:
    cfg = compose_cfg(tmp_path, ["experiment=trail_baseline", "debug=limit"])
    assert cfg.trainer.max_epochs == 2 and cfg.trainer.limit_train_batches == 3


def test_adversarial_loss_on_a_classifier_names_the_loss(tmp_path: Path) -> None:
    # The adversarial loss also swaps in its own module: the check must still blame the loss.
    cfg = compose_cfg(tmp_path, ["model=resnet18", "loss=adversarial"])
    with pytest.raises(LensexpError, match=r"^loss=adversarial is a superres loss, but "
                       r"model=resnet18 is a classification model: choose loss=cross_entropy\.$"):  # fmt: skip
        check_compatible(cfg)
    assert check_compatible(compose_cfg(tmp_path, ["model=srresnet", "loss=vgg"])) == "superres"


def test_no_import_cycles_among_lensexp_modules() -> None:
    import ast

    package = ROOT / "lensexp"
    modules = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
        for p in package.rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            found |= {t for t in targets if t in modules and t != name}
        # A package's __init__ importing its own children is not a cycle with them.
        graph[name] = {t for t in found if not t.startswith(name + ".")}

    def visit(node: str, stack: list[str], done: set[str]) -> None:
        if node in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(node):] + [node]))  # fmt: skip
        if node in done:
            return
        for target in graph[node]:
            visit(target, [*stack, node], done)
        done.add(node)

    done: set[str] = set()
    for name in graph:
        visit(name, [], done)
    assert "lensexp.training" not in graph["lensexp.evaluation"]


@pytest.mark.slow
def test_error_inside_instantiate_is_one_line(classification_root: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "train.py", *quick(classification_root, "model.input_adapter=sideways"),
         f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "Error in call to target" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("lensexp: error: model.input_adapter=sideways: ")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("pretrained", ["auto", "none"])
def test_evaluate_without_weights_refuses(
    classification_root: Path, tmp_path: Path, pretrained: str
) -> None:
    cfg = compose_cfg(
        tmp_path, [f"data.root={classification_root}", f"model.pretrained={pretrained}"], "eval"
    )
    with pytest.raises(LensexpError, match=r"give ckpt_path=CKPT .* or model.pretrained=PATH"):
        evaluate(cfg)
    assert not (tmp_path / "out" / "metrics.json").exists()


@pytest.mark.slow
def test_seeded_deterministic_runs_agree_and_record_provenance(
    classification_root: Path, tmp_path: Path
) -> None:
    runs = [
        train(compose_cfg(tmp_path / name, quick(classification_root, "debug=limit", "seed=7",
                                                 "trainer.deterministic=true")))
        for name in ("a", "b")
    ]  # fmt: skip
    assert runs[0]["val_metrics"] == runs[1]["val_metrics"]
    assert runs[0]["global_step"] == runs[1]["global_step"] == 2 * 3

    saved = json.loads((tmp_path / "a" / "out" / "provenance.json").read_text())
    checkpoint = torch.load(runs[0]["last_checkpoint"], weights_only=True)
    assert checkpoint["lensexp_provenance"] == saved
    assert saved["versions"]["torch"] == torch.__version__.split("+")[0]
    assert saved["versions"]["lightning"] and saved["versions"]["lensexp"]
    assert saved["git_commit"] is None or len(saved["git_commit"]) == 40


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(
    classification_root: Path, tmp_path: Path
) -> None:
    import signal
    import time

    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "train.py",
         *quick(classification_root, "trainer.max_epochs=500", "trainer.limit_val_batches=1"),
         f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={run}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert last.exists(), proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "Traceback" not in stderr
    saved = run / "checkpoints" / "interrupted.ckpt"
    assert f"saved {saved}; resume with python train.py ckpt_path={saved}" in stderr
    checkpoint = torch.load(saved, weights_only=True)
    assert 0 < checkpoint["global_step"] < 500 * 3
    assert not (run / "results.json").exists()  # the run did not pretend to finish


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(
    classification_root: Path, tmp_path: Path
) -> None:
    common = quick(classification_root, "trainer.max_epochs=4", "trainer.deterministic=true",
                   "seed=5")  # fmt: skip
    whole = train(compose_cfg(tmp_path / "whole", common))

    killed_at, results = kill_then_resume(common, tmp_path)
    assert 0 < killed_at < whole["global_step"]
    assert results["global_step"] == whole["global_step"] == 4 * 3
    assert results["final_metrics"] == pytest.approx(whole["final_metrics"], abs=1e-6)
    assert results["val_metrics"] == pytest.approx(whole["val_metrics"], abs=1e-6)


@pytest.mark.slow
def test_slurm_requeue_through_lightnings_plugin_resumes_the_run(
    classification_root: Path, tmp_path: Path
) -> None:
    """As under `sbatch --requeue --signal=SIGUSR1@90` with `hydra.run.dir=.../$SLURM_JOB_ID`:
    SIGUSR1 makes Lightning save hpc_ckpt_1.ckpt in the run folder and call `scontrol requeue`;
    SLURM then kills the job and starts the same command, which continues from that
    checkpoint and ends at the step where an uninterrupted run ends.

    The signal comes from inside the run (`tests.helpers.SignalAt`: epoch 1, its second
    training batch). Sent from outside when the first last.ckpt appeared, the resumed run
    twice ended at step 9, not 12 (once in each of two sessions' full-suite runs): most likely
    Lightning's save inside its signal handler, between any two bytecodes of the loop,
    recording a loop state whose resume skips an epoch. Open: see the closing note of
    2026-12-05."""
    import os
    import time

    common = quick(classification_root, "trainer.max_epochs=4", "trainer.deterministic=true",
                   "seed=5")  # fmt: skip
    whole = train(compose_cfg(tmp_path / "whole", common))

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    requeued = tmp_path / "requeued.txt"
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" > {requeued}\n')
    (bin_dir / "scontrol").chmod(0o755)
    env = os.environ | {
        "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1",
        "SLURM_JOB_NAME": "lensexp", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost",
    }  # fmt: skip
    run = tmp_path / "run"
    command = [sys.executable, "train.py", *common, f"paths.data_dir={tmp_path / 'data'}",
               f"hydra.run.dir={run}"]  # fmt: skip
    signalled = [*command, "+callbacks.signal._target_=tests.helpers.SignalAt",
                 "+callbacks.signal.epoch=1", "+callbacks.signal.batch=1"]  # fmt: skip
    proc = subprocess.Popen(signalled, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not requeued.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()  # what SLURM does to a requeued job
    stderr = proc.communicate()[1]
    assert requeued.read_text().split() == ["requeue", "4242"], stderr[-3000:]
    saved = torch.load(run / "hpc_ckpt_1.ckpt", weights_only=True)
    assert saved["global_step"] == 3 + 1  # epoch 0's three batches, then epoch 1's first

    restarted = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                               timeout=300)  # fmt: skip
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    # Continued from the hpc checkpoint (not afresh), and only fit loaded it: the reports
    # score the best checkpoint, not the spent hpc one.
    restored = f"Restoring states from the checkpoint path at {run / 'hpc_ckpt_1.ckpt'}"
    assert restarted.stdout.count(restored) == 1, restarted.stdout[-3000:]
    results = json.loads((run / "results.json").read_text())
    # The same number of steps. (The metrics match an uninterrupted run only when the signal
    # came between epochs: Lightning restarts an interrupted epoch's data from its beginning.)
    assert results["global_step"] == whole["global_step"] == 4 * 3
