"""Reporting: figures, metrics tables and files written next to a run."""
