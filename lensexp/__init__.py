"""lensexp: Lightning + Hydra experiments for strong-lensing dark-matter substructure."""

__version__ = "0.1.0"
