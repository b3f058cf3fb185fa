"""What several test modules share: small DeepLense-format datasets, the one config-compose
helper, and an independent stand-in of the DeepLense reference SR generator.

Every image is seeded random noise, so each file's content is distinct and tests can compare a
loaded item with the file it came from.
"""

from __future__ import annotations

import os
import signal
import zlib
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig

from lensexp.hydra_setup import compose_run_config

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"

CLASSES = ("no", "sphere", "vort")
# The public DeepLense Model I-IV class folders, in lensexp's class order (no, sphere, vort).
PUBLIC_CLASSES = ("no_sub", "cdm", "axion")
FORMATS = ("chw", "hw", "float64", "object", "hwc")


def _rng(*key: object) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def save_image(path: Path, image: np.ndarray, fmt: str = "chw", axion_mass: float = 1e-23) -> Path:
    """Write a (H, W) image, or a (C, H, W) one with "chw"/"hwc", in one of the DeepLense formats.

    fmt: "chw" (1, H, W) float32 (the DeepLense default; a (C, H, W) image as it is, the Model IV
    layout), "hwc" (H, W, C) float32, "hw" (H, W) float32, "float64" (1, H, W) float64, or
    "object" (the Model I-IV pickled object array `[image, axion_mass]`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.asarray(image)
    bands = image if image.ndim == 3 else image[None]
    if fmt == "chw":
        np.save(path, bands.astype(np.float32))
    elif fmt == "hwc":
        np.save(path, np.moveaxis(bands, 0, -1).astype(np.float32))
    elif fmt == "hw":
        np.save(path, image.astype(np.float32))
    elif fmt == "float64":
        np.save(path, image[None].astype(np.float64))
    elif fmt == "object":
        arr = np.empty(2, dtype=object)
        arr[0], arr[1] = image.astype(np.float64), float(axion_mass)
        np.save(path, arr, allow_pickle=True)
    else:
        raise ValueError(f"fmt={fmt!r}: choose one of {FORMATS}")
    return path


def load_bands(path: Path, fmt: str = "chw") -> np.ndarray:
    """A test file's (C, H, W) image as float32, written by `save_image` with `fmt`."""
    arr = np.load(path, allow_pickle=True)
    if arr.dtype == object:
        arr = np.asarray(arr[0])
    if fmt == "hwc":
        arr = np.moveaxis(arr, -1, 0)
    return np.asarray(arr, dtype=np.float32).reshape((-1, *arr.shape[-2:]))


def load_image(path: Path) -> np.ndarray:
    """A test file's image as float32 (H, W), whatever its format."""
    arr = np.load(path, allow_pickle=True)
    if arr.dtype == object:
        arr = np.asarray(arr[0])
    return np.asarray(arr, dtype=np.float32).reshape(arr.shape[-2:])


def make_classification_folder(
    root: Path,
    n_per_class: int,
    size: int = 150,
    classes: Sequence[str] = CLASSES,
    with_val: bool = True,
    fmt: str = "chw",
    *,
    n_val: int | None = None,
    with_test: bool = False,
    seed: int = 0,
    bands: int = 1,
) -> Path:
    """Write `ROOT/train/<class>/<class>_<i>.npy` (+ `val/`, `test/`) and return ROOT.

    `n_per_class` training images per class; val/ and test/ get `n_val` (default the same).
    `bands` > 1 writes (bands, size, size) images (fmt "chw" or "hwc").
    """
    root = Path(root)
    splits = ["train"] + (["val"] if with_val else []) + (["test"] if with_test else [])
    shape = (size, size) if bands == 1 else (bands, size, size)
    for split in splits:
        count = n_per_class if split == "train" or n_val is None else n_val
        for cls in classes:
            for i in range(count):
                image = _rng(seed, split, cls, i).random(shape)
                save_image(root / split / cls / f"{cls}_{i:04d}.npy", image, fmt)
    return root


def make_public_model_i_folder(root: Path, n_per_class: int, size: int = 150) -> Path:
    """The public DeepLense Model I layout: `ROOT/{train,val}/{no_sub,cdm,axion}/*.npy`, where
    no_sub and cdm hold (1, H, W) float64 arrays and axion holds 2-element object arrays
    `[image (H, W) float64, axion mass]` (np.save with allow_pickle). Pixels are raw-flux-like
    (not in [0, 1]), so a test can tell normalised values from the files' own."""
    root = Path(root)
    for split in ("train", "val"):
        for cls in PUBLIC_CLASSES:
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n_per_class):
                image = 50.0 + 900.0 * _rng("public", split, cls, i).random((size, size))
                if cls == "axion":
                    arr = np.empty(2, dtype=object)
                    arr[0], arr[1] = image, 10.0 ** -(22.0 + i % 3)
                    np.save(folder / f"axion_sim_{i}.npy", arr, allow_pickle=True)
                else:
                    np.save(folder / f"{cls}_sim_{i}.npy", image[None])
    return root


def make_superres_folder(
    root: Path,
    n: int,
    lr_size: int = 75,
    scale: int = 2,
    *,
    subdir: str = "",
    names: Sequence[str] | None = None,
    fmt: str = "chw",
    seed: int = 0,
    bands: int = 1,
) -> Path:
    """Write `n` pairs `ROOT[/subdir]/HR/<name>.npy` and `.../LR/<name>.npy`; return ROOT.

    HR is random (lr_size*scale pixels square, `bands` > 1: that many bands) and LR its exact
    `scale` x `scale` block mean, so `avg_pool2d(hr, scale) == lr`. Names default to
    `img<i>.npy` (not zero-padded, so their sorted order is not their numeric order). Files are
    written in reverse order in LR/.
    """
    root = Path(root)
    base = root / subdir if subdir else root
    names = list(names) if names is not None else [f"img{i}.npy" for i in range(n)]
    if len(names) != n:
        raise ValueError(f"{len(names)} names for {n} pairs")
    hr_size = lr_size * scale
    pairs = []
    lead = () if bands == 1 else (bands,)
    for i, name in enumerate(names):
        hr = _rng(seed, subdir, name, i).random((*lead, hr_size, hr_size)).astype(np.float32)
        blocks = hr.reshape(*lead, lr_size, scale, lr_size, scale)
        lr = blocks.mean(axis=(-3, -1), dtype=np.float64)
        pairs.append((name, hr, lr))
    for name, hr, _ in pairs:
        save_image(base / "HR" / name, hr, fmt)
    # A different creation order in LR/ than in HR/: pairing must not depend on it.
    for name, _, lr in reversed(pairs):
        save_image(base / "LR" / name, lr, fmt)
    return root


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root` with its size and mtime: compare before/after to see writes."""
    root = Path(root)
    return {
        p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    } | {p.relative_to(root).as_posix() + "/": (0, 0) for p in root.rglob("*") if p.is_dir()}


def compose_cfg(tmp_path: Path, overrides: Sequence[str], name: str = "train") -> DictConfig:
    """The config `python <name>.py OVERRIDES` would run, with data and outputs under `tmp_path`
    (and Hydra's runtime config installed, as a real run has it)."""
    paths = [f"paths.data_dir={tmp_path / 'data'}", f"paths.output_dir={tmp_path / 'out'}"]
    return compose_run_config(CONF, [*paths, *overrides], name)


# A tiny re-implementation of the DeepLense reference generator, with its parameter names.
def reference_sr_state_dict(n_blocks: int = 1, channels: int = 64, seed: int = 0) -> dict:
    """A state dict in the format of the DeepLense reference generator's `superres.pth`, written
    from its published facts (not from lensexp's model): every PReLU has one slope per channel
    (`actication`, sic), 9x9 head conv, 3x3 tail conv, pixel-shuffle upsampler. Values are
    random; slopes are distinct per channel so that a mix-up would show in the outputs."""
    gen = torch.Generator().manual_seed(seed)
    c = channels

    def rand(*shape: int, scale: float = 0.05) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * scale

    def slopes() -> torch.Tensor:
        return torch.rand(c, generator=gen) * 0.5 + 0.05

    state = {
        "first_conv.cnn.weight": rand(c, 1, 9, 9),
        "first_conv.cnn.bias": rand(c),
        "first_conv.actication.weight": slopes(),
    }
    for i in range(n_blocks):
        for half in ("b1", "b2"):
            state[f"res_blocks.{i}.{half}.cnn.weight"] = rand(c, c, 3, 3)
            state[f"res_blocks.{i}.{half}.cnn.bias"] = rand(c)
            state[f"res_blocks.{i}.{half}.actication.weight"] = slopes()
    state |= {
        "conv1.cnn.weight": rand(c, c, 3, 3),
        "conv1.cnn.bias": rand(c),
        "conv1.actication.weight": slopes(),
        "upsampling.conv.weight": rand(4 * c, c, 3, 3),
        "upsampling.conv.bias": rand(4 * c),
        "upsampling.activation.weight": slopes(),
        "last_conv.weight": rand(1, c, 3, 3),
        "last_conv.bias": rand(1),
    }
    return state


def reference_sr_forward(state: dict, lr: torch.Tensor) -> torch.Tensor:
    """The reference generator's forward pass on its own state dict: head conv + PReLU; residual
    blocks x + PReLU(conv(PReLU(conv(x)))); PReLU(conv1(.)) plus the head output; conv, pixel
    shuffle x2, PReLU; tail conv."""
    fn = torch.nn.functional

    def unit(prefix: str, x: torch.Tensor) -> torch.Tensor:
        weight = state[f"{prefix}.cnn.weight"]
        x = fn.conv2d(x, weight, state[f"{prefix}.cnn.bias"], padding=weight.shape[-1] // 2)
        return fn.prelu(x, state[f"{prefix}.actication.weight"])

    head = unit("first_conv", lr)
    x = head
    n_blocks = len({k.split(".")[1] for k in state if k.startswith("res_blocks.")})
    for i in range(n_blocks):
        x = x + unit(f"res_blocks.{i}.b2", unit(f"res_blocks.{i}.b1", x))
    x = unit("conv1", x) + head
    x = fn.conv2d(x, state["upsampling.conv.weight"], state["upsampling.conv.bias"], padding=1)
    x = fn.prelu(fn.pixel_shuffle(x, 2), state["upsampling.activation.weight"])
    return fn.conv2d(x, state["last_conv.weight"], state["last_conv.bias"], padding=1)


class Payload:
    """Pickles as a call that creates `marker`: if the file appears, loading ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def kill_then_resume(overrides: Sequence[str], tmp_path: Path) -> tuple[int, dict]:
    """Run `python train.py OVERRIDES` in `tmp_path/run`, SIGKILL it as soon as its first
    last.ckpt exists (wherever it then is, usually in the next epoch), then resume it with
    `ckpt_path=last` alone. Returns the killed checkpoint's global step and the resumed run's
    results.json."""
    import json
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    script = [sys.executable, "train.py", f"paths.data_dir={tmp_path / 'data'}",
              f"hydra.run.dir={run}"]  # fmt: skip
    last = run / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen([*script, *overrides], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    stderr = proc.communicate()[1]
    assert last.exists(), stderr[-3000:]
    killed_at = torch.load(last, weights_only=True)["global_step"]  # still loadable
    resumed = subprocess.run([*script, "ckpt_path=last"], cwd=ROOT, capture_output=True,
                             text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return killed_at, json.loads((run / "results.json").read_text())


class SignalAt(Callback):
    """Sends `signum` (SIGUSR1: SLURM's requeue signal) to its own process at the start of
    training batch `batch` of epoch `epoch`, so a signal test does not depend on timing."""

    def __init__(self, epoch: int, batch: int, signum: int = signal.SIGUSR1) -> None:
        self.epoch, self.batch, self.signum = epoch, batch, signum

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: object, batch_idx: int
    ) -> None:
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            os.kill(os.getpid(), self.signum)
