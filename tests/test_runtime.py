"""Run settings: torch threads (`runtime.*`), channels_last, torch.compile and its fallback,
the data loader's worker count, and the machine record in provenance."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from lensexp.builders import apply_run_options, configure_runtime
from lensexp.data.base import loader_workers
from lensexp.errors import LensexpError
from lensexp.provenance import provenance, usable_cpus


class TwoNets(nn.Module):
    """A stand-in for a task module: two networks and a parameter-free child."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU())
        self.head = nn.Conv2d(4, 2, 1)
        self.act = nn.ReLU()


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def runtime(**keys) -> OmegaConf:
    return OmegaConf.create({"runtime": keys})


def test_threads_auto_is_the_usable_cores_and_a_number_is_set(threads, monkeypatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert configure_runtime(runtime(num_threads="auto"))["num_threads"] == usable_cpus()
    assert torch.get_num_threads() == usable_cpus()
    applied = configure_runtime(runtime(num_threads=1, num_interop_threads="auto"))
    assert applied["num_threads"] == torch.get_num_threads() == 1
    assert applied["num_interop_threads"] == torch.get_num_interop_threads()
    # The run's provenance records the threads in force.
    machine = provenance(Path.cwd())["machine"]
    assert machine["torch_num_threads"] == 1 and machine["usable_cpus"] == usable_cpus()
    assert machine["cpu"]


def test_threads_auto_follows_omp_num_threads(threads, monkeypatch) -> None:
    """A user's (or a parallel launcher's) OMP_NUM_THREADS wins over the core count."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert configure_runtime(runtime(num_threads="auto"))["num_threads"] == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert configure_runtime(runtime(num_threads="auto"))["num_threads"] == 3
    assert configure_runtime(runtime(num_threads=2))["num_threads"] == 2  # a number wins


@pytest.mark.parametrize("key, value", [("num_threads", 0), ("num_threads", "many"),
                                        ("num_interop_threads", 1.5)])  # fmt: skip
def test_bad_thread_counts_name_the_key(threads, key: str, value) -> None:
    with pytest.raises(LensexpError, match=f"runtime.{key}="):
        configure_runtime(runtime(**{key: value}))


def test_channels_last_reorders_the_weights() -> None:
    module = apply_run_options(TwoNets(), channels_last=True)
    weight = module.net[0].weight
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert not weight.is_contiguous()  # NCHW order is gone
    out = module.head(module.net(torch.rand(2, 2, 8, 8)))
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_compile_wraps_each_network_in_place() -> None:
    module = TwoNets()
    names = list(module.state_dict())
    apply_run_options(module, compile=True)
    assert module.net._compiled_call_impl is not None
    assert module.head._compiled_call_impl is not None
    assert module.act._compiled_call_impl is None  # nothing to train, nothing to compile
    assert module.compiled  # so the model summary does not compile it for a batch of one
    assert list(module.state_dict()) == names  # checkpoints keep their parameter names


def test_compile_falls_back_with_one_warning_where_unsupported(monkeypatch, caplog) -> None:
    from torch import _dynamo

    monkeypatch.setattr(_dynamo, "is_dynamo_supported", lambda: False)
    with caplog.at_level(logging.WARNING, logger="lensexp.builders"):
        module = apply_run_options(TwoNets(), compile=True)
    (record,) = caplog.records
    assert record.getMessage().startswith("runtime.compile=true: torch.compile does not support")
    assert module.net._compiled_call_impl is None
    assert not getattr(module, "compiled", False)


def test_loader_workers() -> None:
    assert loader_workers(3) == 3
    expected = min(4, usable_cpus() // 2) if torch.cuda.is_available() else 0
    assert loader_workers("auto") == expected
    with pytest.raises(LensexpError, match="data.num_workers=-1"):
        loader_workers(-1)


def test_evaluate_applies_the_runtime_threads(
    classification_root: Path, tmp_path: Path, threads
) -> None:
    """evaluate.py sets torch's threads from `runtime` as train.py does (it composes the same
    `runtime` group); a checkpoint carries no run settings of its own."""
    from lensexp.evaluation import evaluate
    from lensexp.training import train
    from tests.helpers import compose_cfg
    from tests.test_train import quick

    results = train(compose_cfg(tmp_path / "train", quick(classification_root, "debug=limit")))
    torch.set_num_threads(2)
    overrides = [f"ckpt_path={results['best_checkpoint']}", "trainer=cpu", "runtime.num_threads=1"]
    evaluate(compose_cfg(tmp_path / "eval", overrides, "eval"))
    assert torch.get_num_threads() == 1


def test_the_default_run_trains_in_channels_last(tmp_path: Path) -> None:
    """NHWC is the default layout (measured faster on the CPU: docs/benchmarks.md); a run can
    still choose NCHW."""
    from lensexp.builders import build_datamodule, build_module
    from tests.helpers import compose_cfg, make_classification_folder

    root = make_classification_folder(tmp_path / "cls", 2, size=32, n_val=1)
    for flag, layout in (([], torch.channels_last), (["runtime.channels_last=false"], None)):
        cfg = compose_cfg(tmp_path, [f"data.root={root}", "model.pretrained=none", *flag])
        module = build_module(cfg, build_datamodule(cfg))
        convs = [m.weight for m in module.modules() if isinstance(m, nn.Conv2d)]
        assert convs and all(
            w.is_contiguous(memory_format=layout or torch.contiguous_format) for w in convs
        )


@pytest.mark.parametrize(
    "native,trainer,precision",
    [
        (False, {"accelerator": "gpu", "precision": "bf16-mixed"}, "16-mixed"),  # a T4, a V100
        (False, {"accelerator": "auto", "precision": "bf16-true"}, "16-true"),
        (False, {"accelerator": "cuda", "precision": "bf16"}, "16-mixed"),  # Lightning's alias
        (True, {"accelerator": "gpu", "precision": "bf16-mixed"}, "bf16-mixed"),  # Ampere on
        (False, {"accelerator": "gpu", "precision": "32-true"}, "32-true"),
        (False, {"accelerator": "cpu", "precision": "bf16-mixed"}, "bf16-mixed"),  # not a GPU's
    ],
)
def test_bf16_only_where_the_gpu_has_it(threads, monkeypatch, caplog, native, trainer, precision):
    # A CUDA device as torch describes it: capability 7.5 emulates bfloat16, 8.0 has it.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        torch.cuda,
        "is_bf16_supported",
        lambda including_emulation=True: native or including_emulation,
    )
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "Tesla T4")
    cfg = OmegaConf.create({"runtime": {}, "trainer": trainer})
    with caplog.at_level(logging.WARNING, logger="lensexp.builders"):
        configure_runtime(cfg)
    assert cfg.trainer.precision == precision
    if precision == trainer["precision"]:
        assert not caplog.records
    else:
        (record,) = caplog.records
        assert record.getMessage() == (
            f"trainer.precision={trainer['precision']}: Tesla T4 has no bfloat16 arithmetic "
            f"(torch would emulate it); running {precision} instead."
        )
