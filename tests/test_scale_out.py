"""Scale-out: Optuna searches, parallel and SLURM launchers, DDP, sharded simulation.

Each test runs the real entry point (a subprocess, as a user would) on tiny data.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.helpers import CLASSES, ROOT, save_image

TINY = (
    "data.image_size=32", "model=mobilenet_v3_small", "model.pretrained=none", "trainer=cpu",
    "logger=csv", "data.test_fraction=0",
)  # fmt: skip


def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def learnable_folder(root: Path, n_train: int, n_val: int) -> Path:
    """32x32 images whose class is their brightness (plus noise): a model's outputs differ
    between images after a few steps, so its metrics depend on which images it scores."""
    rng = np.random.default_rng(0)
    for split, count in (("train", n_train), ("val", n_val)):
        for k, cls in enumerate(CLASSES):
            for i in range(count):
                image = 0.3 * k + rng.random((32, 32)) * 0.6
                save_image(root / split / cls / f"{cls}_{i:03d}.npy", image)
    return root


# -- Optuna --------------------------------------------------------------------------------------
def optuna_search(tmp_path: Path, root: Path, name: str, *extra: str) -> Path:
    sweep = tmp_path / name
    proc = run(
        "train.py", "-m", "hparams_search=classifier_optuna", f"data.root={root}", *TINY,
        "data.batch_size=8", "debug=limit", "trainer.max_epochs=1",
        "trainer.limit_train_batches=1", "trainer.limit_val_batches=1",
        f"paths.data_dir={tmp_path / 'data'}", f"hydra.sweep.dir={sweep}",
        "hydra.sweeper.n_trials=3", *extra,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep


@pytest.mark.slow
def test_seeded_optuna_search_repeats_records_failures_and_stores_in_sqlite(
    classification_root: Path, tmp_path: Path
) -> None:
    import optuna

    # A bad option among the choices: its trials fail, the others still run. (Sampler seed 4
    # draws sideways, repeat, repeat in this search space.)
    bad = ("model.input_adapter=choice(sideways,repeat)", "hydra.sweeper.sampler.seed=4")
    first = optuna_search(tmp_path, classification_root, "first", *bad)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    second = optuna_search(
        tmp_path, classification_root, "second", *bad, f"hydra.sweeper.storage={storage}"
    )
    # The sweeper's own record of the best trial, the same for both searches.
    best = [yaml.safe_load((s / "optimization_results.yaml").read_text()) for s in (first, second)]
    assert best[0] == best[1]
    assert {"optimizer.lr", "optimizer.weight_decay", "scheduler"} < set(best[0]["best_params"])
    assert best[0]["best_params"]["model.input_adapter"] == "repeat"
    # It is what the trial returned: the best checkpoint's macro AUC, not the monitored metric.
    failed, values = [], {}
    for job in "012":
        if (first / job / "error.txt").is_file():
            assert "model.input_adapter=sideways" in (first / job / "error.txt").read_text()
            failed.append(job)
            continue
        results = json.loads((first / job / "results.json").read_text())
        assert results["optimized_metric"] == "val/auc_macro"
        assert results["optimized_value"] == results["val_metrics"]["val/auc_macro"]
        values[job] = results["optimized_value"]
    assert failed == ["0"] and len(values) == 2
    assert best[0]["best_value"] == max(values.values())

    # The report ranks the trials, failed ones last, and gives the best one as a command
    # without the search.
    report = (first / "report.md").read_text()
    assert "## Optuna study" in report and f"3 trial(s), {len(failed)} failed" in report
    ranked = [line.split(" | ")[1] for line in report.splitlines() if line.startswith("| 3 | ")]
    assert ranked and ranked[-1] in failed
    command = report.split("```bash\n", 1)[1].split("\n", 1)[0]
    assert command.startswith("python train.py ") and "hparams_search" not in command
    for key, value in best[0]["best_params"].items():
        assert f"{key}={value}" in command.split()
    for png in ("optuna_history.png", "optuna_importance.png"):
        assert (first / png).stat().st_size > 1000
    # The stored study, which a rerun with the same storage continues (load_if_exists).
    study = optuna.load_study(study_name="classifier_optuna", storage=storage)
    assert len(study.trials) == 3 and study.best_trial.params == best[0]["best_params"]
    # Rerun with the same storage (as after an interruption): the study goes on from there.
    optuna_search(tmp_path, classification_root, "third", *bad, f"hydra.sweeper.storage={storage}")
    study = optuna.load_study(study_name="classifier_optuna", storage=storage)
    assert len(study.trials) == 6


def test_a_diverged_run_fails() -> None:
    from omegaconf import OmegaConf

    from lensexp.errors import LensexpError
    from lensexp.training import optimized_value

    cfg = OmegaConf.create({"optimized_metric": "val/auc_macro", "monitor": "val/auc_micro"})
    assert optimized_value(cfg, 0.6, {"val/auc_macro": 0.7}) == 0.7
    with pytest.raises(LensexpError, match="training diverged: val/auc_macro is nan"):
        optimized_value(cfg, 0.6, {"val/auc_macro": math.nan})
    with pytest.raises(LensexpError, match="optimized_metric=val/auc_macro: not a validation"):
        optimized_value(cfg, 0.6, {"val/acc": 0.7})
    # The training loss that fit logged last: not finite means the run diverged.
    from types import SimpleNamespace

    import torch

    from lensexp.training import _check_finite

    _check_finite(SimpleNamespace(callback_metrics={"train/loss_epoch": torch.tensor(0.3)}))
    diverged = {"train/loss_epoch": torch.tensor(math.nan)}
    with pytest.raises(LensexpError, match="training diverged: train/loss is nan at epoch 3"):
        _check_finite(SimpleNamespace(callback_metrics=diverged, current_epoch=3))
    cfg.optimized_metric = None
    assert optimized_value(cfg, 0.6, {}) == 0.6
    assert optimized_value(cfg, None, {}) is None  # no checkpoint saved (fast_dev_run)
    with pytest.raises(LensexpError, match="val/auc_micro is inf"):
        optimized_value(cfg, math.inf, {})


# -- DDP -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ddp_cpu_validation_equals_one_process(tmp_path: Path) -> None:
    # 15 validation images in batches of 4 over 2 processes: a padded distributed sampler would
    # score one image twice. Two jobs of a multirun: the second must start its processes anew.
    root = learnable_folder(tmp_path / "cls", n_train=10, n_val=5)
    sweep = tmp_path / "sweep"
    proc = run(
        "train.py", "-m", f"data.root={root}", *TINY[:-2], "trainer=ddp_cpu", "logger=csv",
        "data.test_fraction=0", "data.batch_size=4", "optimizer.lr=0.01,0.02",
        # One pass per image after fit too. NCHW, as when this test was written: the scores of
        # this barely trained network are near-tied, so last-bit differences between scoring
        # in two shares and in one process re-order them; in NCHW the two agree exactly here,
        # in NHWC they did not (validation micro AUC 0.4767 against 0.4789).
        "model.tta=none", "runtime.channels_last=false", "trainer.max_epochs=1",
        f"paths.data_dir={tmp_path / 'data'}",
        f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job in ("0", "1"):
        out = sweep / job
        results = json.loads((out / "results.json").read_text())
        assert results["world_size"] == 2
        # final_metrics: the two processes' synced validation during fit; val_metrics: the
        # same (final, best) checkpoint validated again by one process after fit.
        during, single = results["final_metrics"], results["val_metrics"]
        assert single["val/auc_micro"] != 0.5  # not all outputs alike: the images scored matter
        for key in ("val/loss", "val/acc", "val/auc_micro", "val/auc_macro"):
            assert during[key] == pytest.approx(single[key], rel=1e-5, abs=1e-6), key
        # One folder per job, written by rank 0 only: rank 1 adds its log and nothing else.
        assert sorted(p.name for p in out.iterdir()) == [
            ".hydra", "best_val", "checkpoints", "config.yaml", "csv", "provenance.json",
            "results.json", "train.log", "train_ddp_process_1.log",
        ]  # fmt: skip
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    assert not (ROOT / "outputs" / "train" / "runs").exists() or not any(
        "ddp_process" in p.name for p in (ROOT / "outputs").rglob("*.log")
    )


# -- launchers -----------------------------------------------------------------------------------
def tiny_sweep(tmp_path: Path, root: Path, name: str, *extra: str) -> Path:
    sweep = tmp_path / name
    proc = run(
        "train.py", "-m", f"data.root={root}", *TINY, "data.batch_size=8", "debug=limit",
        "trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1",
        f"paths.data_dir={tmp_path / 'data'}", f"hydra.sweep.dir={sweep}", *extra,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep


def report_rows(sweep: Path) -> dict[str, dict[str, str]]:
    """The report's rows, without what differs between any two runs (time, folders)."""
    with open(sweep / "report.csv") as fh:
        rows = list(csv.DictReader(fh))
    return {r["configuration"]: {k: v for k, v in r.items() if k != "wall_time_s"} for r in rows}


@pytest.mark.slow
def test_joblib_multirun_reports_what_the_basic_launcher_does(
    classification_root: Path, tmp_path: Path
) -> None:
    # One thread each, as joblib's two workers get on two cores: another thread count sums in
    # another order, which can tip a tiny run's AUC.
    jobs = ("optimizer.lr=0.001,0.01", "runtime.num_threads=1")
    basic = tiny_sweep(tmp_path, classification_root, "basic", *jobs)
    parallel = tiny_sweep(tmp_path, classification_root, "joblib", *jobs, "hydra/launcher=joblib")
    rows = report_rows(basic)
    assert set(rows) == {"optimizer.lr=0.001", "optimizer.lr=0.01"}
    assert all(r["status"] == "1 ok" for r in rows.values())
    assert report_rows(parallel) == rows


def test_joblib_runs_as_many_jobs_as_cores_allow() -> None:
    from lensexp.hydra_setup import parallel_jobs

    cores = len(os.sched_getaffinity(0))
    assert parallel_jobs(None) == parallel_jobs(1) == cores
    assert parallel_jobs(2) == max(1, cores // 2)
    assert parallel_jobs(10 * cores) == 1


def test_submitit_slurm_config_composes() -> None:
    proc = run(
        "train.py", "hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu",
        "trainer=ddp", "trainer.num_nodes=2", "--cfg", "hydra", timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    launcher = yaml.safe_load(proc.stdout)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert launcher["partition"] == "gpu"
    for key in ("timeout_min", "mem_gb", "gpus_per_node", "gpus_per_task", "tasks_per_node"):
        assert key in launcher
    assert launcher["nodes"] == "${trainer.num_nodes}"
    assert "validated against ConfigStore schema" not in proc.stderr


@pytest.mark.slow
def test_submitit_local_executor_runs_a_job(classification_root: Path, tmp_path: Path) -> None:
    sweep = tiny_sweep(
        tmp_path, classification_root, "submitit", "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=5",
    )  # fmt: skip
    results = json.loads((sweep / "0" / "results.json").read_text())
    assert results["best_value"] is not None
    assert list((sweep / ".submitit").glob("*/*_result.pkl"))  # ran through submitit
    assert report_rows(sweep)["(no overrides)"]["status"] == "1 ok"


# -- sharded simulation --------------------------------------------------------------------------
@pytest.mark.slow
def test_sharded_simulation_through_joblib_equals_one_process(tmp_path: Path) -> None:
    common = (
        "task=classification", "n_per_class=5", "seed=3", "progress=false", "num_workers=1",
        "+overrides.instrument.num_pix=40", "+overrides.instrument.pixel_scale=0.125",
    )  # fmt: skip
    one = run("-m", "lensexp.sim", f"out={tmp_path / 'one'}", *common)
    assert one.returncode == 0, one.stderr[-3000:]
    shards = run(
        "-m", "lensexp.sim", "-m", f"out={tmp_path / 'shards'}", *common, "shard=range(0,4)",
        "num_shards=4", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )  # fmt: skip
    assert shards.returncode == 0, shards.stderr[-3000:]

    def files(root: Path) -> dict[str, bytes]:
        found = [p for p in sorted(root.rglob("*")) if p.is_file() and ".sim" not in p.parts]
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in found}

    reference = files(tmp_path / "one")
    assert len([f for f in reference if f.endswith(".npy")]) == 15
    assert "manifest.csv" in reference
    assert files(tmp_path / "shards") == reference


# -- DDP configs -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "unused"),
    [((), False), (("model=srresnet",), False), (("model=srresnet", "loss=adversarial"), True)],
)
def test_ddp_looks_for_unused_parameters_exactly_for_the_adversarial_module(
    tmp_path: Path, overrides: tuple[str, ...], unused: bool
) -> None:
    from hydra.utils import instantiate
    from lightning.pytorch.strategies import DDPStrategy

    from lensexp.hydra_setup import prepare_hydra
    from tests.helpers import compose_cfg

    prepare_hydra()
    cfg = compose_cfg(tmp_path, [*overrides, "trainer=ddp_cpu"])
    assert cfg.trainer.devices == 2 and cfg.trainer.accelerator == "cpu"
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, DDPStrategy)
    assert strategy._ddp_kwargs["find_unused_parameters"] is unused
    assert strategy.process_group_backend == "gloo"


@pytest.mark.slow
def test_adversarial_sr_trains_under_ddp_cpu(tmp_path: Path) -> None:
    """Both networks of the adversarial module train over 2 processes, and the checkpoint holds
    the generator's and the discriminator's weights and both optimizers."""
    import torch

    from tests.helpers import make_superres_folder

    root = make_superres_folder(tmp_path / "sr", 12, lr_size=16)
    out = tmp_path / "run"
    proc = run(
        "train.py", "model=srresnet", "loss=adversarial", f"data.root={root}", "data.hr_size=32",
        "data.batch_size=2", "data.val_fraction=0.2", "data.test_fraction=0",
        "model.generator.n_blocks=1", "model.generator.channels=8",
        "model.discriminator_warmup_steps=1", "trainer=ddp_cpu", "trainer.max_epochs=1",
        "logger=csv", f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={out}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == 2 and math.isfinite(results["val_metrics"]["val/psnr"])
    checkpoint = torch.load(results["last_checkpoint"], map_location="cpu", weights_only=True)
    assert len(checkpoint["optimizer_states"]) == 2
    assert any(k.startswith("discriminator.") for k in checkpoint["state_dict"])
    # 12 pairs: 9 train (batches of 2, over 2 processes: 3 steps each, the odd one out waits),
    # so both networks stepped in every process.
    assert checkpoint["generator_steps"] >= 2
