"""The bad-input corpus, through the scripts a user types: every entry must end in a non-zero
exit and one `lensexp: error:` line that names the file or key, with no traceback, nothing
written into the data folder and no run folder left behind.

Each entry builds its bad input from the DeepLense formats described in the README (not from
lensexp's readers). Accepted on purpose, and so not here: integer pixel dtypes (read as float)
and constant images (taken as they are; see the README's data section).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import (
    ROOT,
    make_classification_folder,
    make_superres_folder,
    reference_sr_state_dict,
    tree,
)

pytestmark = pytest.mark.slow

# A few seconds of training on 32x32 images (classification) or 1-block 8-channel SR.
CLASSIFIER = ["data.image_size=32", "data.batch_size=2", "model=mobilenet_v3_small",
              "model.pretrained=none", "trainer=cpu", "logger=csv", "debug=fdr"]  # fmt: skip
SUPERRES = ["model=srresnet", "model.generator.n_blocks=1", "model.generator.channels=8",
            "data.batch_size=2", "trainer=cpu", "logger=csv", "debug=fdr"]  # fmt: skip


def npy(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array, allow_pickle=array.dtype == object)
    return path


def object_array(*items: object) -> np.ndarray:
    arr = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        arr[i] = item
    return arr


def classification(tmp: Path) -> Path:
    return make_classification_folder(tmp / "cls", 2, size=32, n_val=1)


def superres(tmp: Path) -> Path:
    return make_superres_folder(tmp / "sr", 6)


# Each entry: (data root or None, command-line arguments, text the error line must contain).
Case = tuple[Path | None, list[str], str]


def truncated(tmp: Path) -> Case:
    root = classification(tmp)
    bad = root / "train" / "sphere" / "sphere_0000.npy"
    bad.write_bytes(bad.read_bytes()[:100])
    return root, ["train.py", f"data.root={root}", *CLASSIFIER], bad.name


def zero_bytes(tmp: Path) -> Case:
    root = classification(tmp)
    (root / "train" / "no" / "no_0001.npy").write_bytes(b"")
    return root, ["train.py", f"data.root={root}", *CLASSIFIER], "no_0001.npy"


def object_not_image_and_number(tmp: Path) -> Case:
    root = classification(tmp)
    npy(root / "train" / "vort" / "odd.npy", object_array("an image?", "a mass?"))
    return root, ["train.py", f"data.root={root}", *CLASSIFIER], "odd.npy"


def dtype(kind: str) -> Callable[[Path], Case]:
    def build(tmp: Path) -> Case:
        root = classification(tmp)
        image = np.ones((1, 32, 32))
        npy(root / "train" / "no" / f"{kind}.npy", image.astype(kind))
        return root, ["train.py", f"data.root={root}", *CLASSIFIER], f"{kind}.npy"

    return build


def wrong_ndim(tmp: Path) -> Case:
    root = classification(tmp)
    npy(root / "train" / "no" / "four_d.npy", np.zeros((1, 1, 32, 32), np.float32))
    return root, ["train.py", f"data.root={root}", *CLASSIFIER], "four_d.npy"


def other_size(tmp: Path) -> Case:
    root = classification(tmp)
    npy(root / "train" / "sphere" / "big.npy", np.zeros((1, 40, 40), np.float32))
    return root, ["train.py", f"data.root={root}", *CLASSIFIER], "big.npy"


def bad_pixel(value: float) -> Callable[[Path], Case]:
    def build(tmp: Path) -> Case:
        root = classification(tmp)
        image = np.random.default_rng(0).random((1, 32, 32)).astype(np.float32)
        image[0, 3, 4] = value
        npy(root / "val" / "vort" / "bad_pixel.npy", image)
        return root, ["train.py", f"data.root={root}", *CLASSIFIER], "bad_pixel.npy"

    return build


def empty_class(tmp: Path) -> Case:
    root = classification(tmp)
    for f in (root / "train" / "sphere").iterdir():
        f.unlink()
    return root, ["train.py", f"data.root={root}", *CLASSIFIER], "sphere"


def class_missing_from_val(tmp: Path) -> Case:
    root = classification(tmp)
    for f in (root / "val" / "vort").iterdir():
        f.unlink()
    (root / "val" / "vort").rmdir()
    return root, ["train.py", f"data.root={root}", *CLASSIFIER], "vort"


def hr_without_lr(tmp: Path) -> Case:
    root = superres(tmp)
    (root / "LR" / "img3.npy").unlink()
    return root, ["train.py", f"data.root={root}", *SUPERRES], "img3.npy"


def lr_of_the_wrong_scale(tmp: Path) -> Case:
    root = superres(tmp)
    npy(root / "LR" / "img2.npy", np.zeros((1, 50, 50), np.float32))
    return root, ["train.py", f"data.root={root}", *SUPERRES], "img2.npy"


def sr_checkpoint(tmp: Path) -> Path:
    """A real superres checkpoint (one tiny epoch through train.py)."""
    root = superres(tmp / "train_data")
    run = tmp / "sr_run"
    subprocess.run(
        [sys.executable, "train.py", f"data.root={root}", *SUPERRES[:-1], "debug=limit",
         "trainer.max_epochs=1", f"hydra.run.dir={run}", f"paths.data_dir={tmp / 'data'}"],
        cwd=ROOT, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return run / "checkpoints" / "last.ckpt"


def other_task_checkpoint(tmp: Path) -> Case:
    ckpt = sr_checkpoint(tmp)
    root = classification(tmp)
    return root, ["evaluate.py", f"ckpt_path={ckpt}", f"data.root={root}"], "superres"


def other_task_model_for_a_checkpoint(tmp: Path) -> Case:
    ckpt = sr_checkpoint(tmp)
    args = ["evaluate.py", f"ckpt_path={ckpt}", "model=mobilenet_v3_small"]
    return None, args, "model=mobilenet_v3_small"


def truncated_checkpoint(tmp: Path) -> Case:
    ckpt = sr_checkpoint(tmp)
    cut = tmp / "cut.ckpt"
    cut.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    return None, ["evaluate.py", f"ckpt_path={cut}"], "cut.ckpt"


def reference_weights_of_another_architecture(tmp: Path) -> Case:
    root = classification(tmp)
    weights = tmp / "superres.pth"
    torch.save(reference_sr_state_dict(), weights)  # the SR generator's file, for a classifier
    args = ["evaluate.py", f"data.root={root}", *CLASSIFIER[:-1],
            f"model.pretrained={weights}"]  # fmt: skip
    return root, args, "model.pretrained"


def unknown_config_key(tmp: Path) -> Case:
    return None, ["train.py", "data.bach_size=4"], "data.bach_size"


def incompatible_model_and_loss(tmp: Path) -> Case:
    return None, ["train.py", "model=srresnet", "loss=cross_entropy"], "loss=cross_entropy"


def missing_root(tmp: Path) -> Case:
    return None, ["train.py", f"data.root={tmp / 'nowhere'}", *CLASSIFIER], "nowhere"


def empty_root(tmp: Path) -> Case:
    root = tmp / "empty"
    root.mkdir()
    return root, ["train.py", f"data.root={root}", *CLASSIFIER], "empty"


CORPUS = {
    "truncated npy": truncated,
    "zero-byte npy": zero_bytes,
    "object array not [image, number]": object_not_image_and_number,
    "complex pixels": dtype("complex64"),
    "boolean pixels": dtype("bool"),
    "wrong ndim": wrong_ndim,
    "one image of another size": other_size,
    "NaN pixel": bad_pixel(float("nan")),
    "Inf pixel": bad_pixel(float("inf")),
    "empty class folder": empty_class,
    "class folder missing from val": class_missing_from_val,
    "HR without its LR": hr_without_lr,
    "LR of the wrong scale": lr_of_the_wrong_scale,
    "checkpoint of the other task, other data": other_task_checkpoint,
    "checkpoint of the other task, other model": other_task_model_for_a_checkpoint,
    "truncated checkpoint": truncated_checkpoint,
    "weights of another architecture": reference_weights_of_another_architecture,
    "unknown config key": unknown_config_key,
    "incompatible model and loss": incompatible_model_and_loss,
    "data.root missing": missing_root,
    "data.root empty": empty_root,
}


@pytest.mark.parametrize("name", list(CORPUS))
def test_bad_input_is_one_clear_line(tmp_path: Path, name: str) -> None:
    root, args, names = CORPUS[name](tmp_path)
    before = tree(root) if root is not None else None
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, *args, f"hydra.run.dir={run_dir}", f"paths.data_dir={tmp_path / 'data'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0, proc.stdout[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lensexp: error: "), proc.stderr[-3000:]
    assert names in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    if root is not None:
        assert tree(root) == before  # nothing written into the user's data
    assert not run_dir.exists()  # no run folder that would pass for a run
