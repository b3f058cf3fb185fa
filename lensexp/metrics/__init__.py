"""Metrics (torchmetrics-based, synced across devices)."""
