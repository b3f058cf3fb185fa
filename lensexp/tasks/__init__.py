"""LightningModules: what is trained and how (classification, super-resolution)."""
