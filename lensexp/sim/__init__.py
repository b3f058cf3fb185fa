"""The lensing simulator: DeepLense-style datasets for classification and super-resolution.

    from lensexp.sim import make_classification_dataset, make_superres_dataset
    make_classification_dataset("data/sim", n_per_class=500)      # train/ and val/ + manifest.csv
    make_superres_dataset("data/sim_sr", n_pairs=1000)             # HR/ and LR/ + manifest.csv

Command line: `python -m lensexp.sim task=classification out=DIR n_per_class=N` (see
docs/simulation.md). Presets live in conf/sim/presets/.
"""

from lensexp.sim.config import available_presets, load_preset
from lensexp.sim.dataset import make_classification_dataset, make_superres_dataset
from lensexp.sim.physics import CLASSES, einstein_radius
from lensexp.sim.simulate import Simulator

__all__ = [
    "CLASSES",
    "Simulator",
    "available_presets",
    "einstein_radius",
    "load_preset",
    "make_classification_dataset",
    "make_superres_dataset",
]
