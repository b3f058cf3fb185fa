"""Shared fixtures: small DeepLense-format datasets in a temporary folder (see tests/helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lensexp.hydra_setup import prepare_hydra
from tests.helpers import make_classification_folder, make_superres_folder

# The entry points register lensexp's config resolvers before they compose; the tests compose
# too, so they do the same, whichever test file runs first (test_superres_module.py run alone
# failed on `${lensexp.run_name:...}`).
prepare_hydra()


@pytest.fixture
def classification_root(tmp_path: Path) -> Path:
    """`train/` (8 per class) and `val/` (4 per class) of 32x32 (1, H, W) float32 images."""
    return make_classification_folder(tmp_path / "cls", 8, size=32, n_val=4)


@pytest.fixture
def superres_root(tmp_path: Path) -> Path:
    """20 pairs HR (1, 150, 150) / LR (1, 75, 75), LR the 2x2 block mean of HR, no val/."""
    return make_superres_folder(tmp_path / "sr", 20)


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    """A packed-cache folder outside every data folder."""
    return tmp_path / "cache"
