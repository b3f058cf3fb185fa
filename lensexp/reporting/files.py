"""Metrics files and tables: `metrics.json`, `metrics.md` and a rich table for the terminal."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from lensexp.checks import flatten

CI_KEY = "ci95"  # where the reports keep the bootstrap intervals of their metrics


def _plain(obj: Any) -> Any:
    """`obj` as JSON types: tensors/arrays to lists or numbers, NaN and +-inf to None."""
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu().tolist()
    elif isinstance(obj, np.ndarray | np.generic):
        obj = obj.tolist()
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_text_atomic(path: Path | str, text: str) -> Path:
    """Write `text` to a temporary file beside `path`, then rename it over `path`: a process
    killed at any moment leaves the previous file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_json(path: Path | str, obj: Any) -> Path:
    """Write `obj` as indented JSON (floats unrounded); returns the path.

    NaN and +-infinity (e.g. the AUC of a class absent from the split) are written as `null`, so
    the file stays valid JSON for strict parsers; tensors and numpy values become plain numbers.
    """
    text = json.dumps(_plain(obj), indent=2, allow_nan=False)
    return write_text_atomic(path, text + "\n")


def _format(value: Any) -> str:
    if isinstance(value, torch.Tensor | np.generic) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        # Four decimals, except for small values (SR MSEs ~1e-4) that would print as 0.0000.
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.3e}"
        return f"{value:.4f}"
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _is_matrix(value: Any) -> bool:
    return isinstance(value, list | tuple) and bool(value) and isinstance(value[0], list | tuple)


def _rows(metrics: Mapping[str, Any]) -> list[tuple[str, Any, str]]:
    """(flattened name, value, text) of every entry; a scalar with an interval under `ci95`
    (same key path) reads `value [lo, hi]`, and the `ci95` entries are not listed themselves."""
    intervals = metrics.get(CI_KEY)
    intervals = flatten(intervals, "/") if isinstance(intervals, Mapping) else {}
    rest = {k: v for k, v in metrics.items() if not (k == CI_KEY and intervals)}
    rows = []
    for name, value in flatten(rest, "/").items():
        if isinstance(value, list | tuple):
            text = ", ".join(_format(v) for v in value)
        else:
            text = _format(value)
            if name in intervals:
                text += " " + _interval(intervals.pop(name))
        rows.append((name, value, text))
    # An interval without its point estimate (lensexp writes none) still shows, on its own.
    for name, interval in intervals.items():
        rows.append((f"{CI_KEY}/{name}", interval, _interval(interval)))
    return rows


def _interval(values: Any) -> str:
    return "[" + ", ".join(_format(v) for v in values) + "]"


def metrics_markdown(
    metrics: Mapping[str, Any], title: str, class_names: Sequence[str] | None = None
) -> str:
    """A Markdown report: `| metric | value |` for the scalars, then a table per matrix.

    Nested dicts are flattened to `parent/child` keys; floats have 4 decimals (values below 1e-3
    in scientific notation instead). Confidence intervals under the `ci95` key, a tree of
    `[lo, hi]` with the key paths of their metrics, are shown beside them: `value [lo, hi]`.
    A list of lists (the confusion matrix) gets its own table, rows labelled by `class_names`
    when given (true class), else by index.
    """
    lines = [f"# {title}", "", "| metric | value |", "|---|---|"]
    matrices: list[tuple[str, Any]] = []
    for name, value, text in _rows(metrics):
        if _is_matrix(value):
            matrices.append((name, value))
        else:
            lines.append(f"| {_cell(name)} | {_cell(text)} |")
    for name, matrix in matrices:
        n_cols = len(matrix[0])
        labels = [str(c) for c in class_names] if class_names else []
        rows = labels if len(labels) == len(matrix) else [str(i) for i in range(len(matrix))]
        cols = labels if len(labels) == n_cols else [str(j) for j in range(n_cols)]
        heading = name.replace("_", " ").capitalize()
        lines += ["", f"## {heading}", ""]
        corner = "true \\\\ predicted" if name.endswith("confusion_matrix") else ""
        lines.append(f"| {corner} | " + " | ".join(_cell(c) for c in cols) + " |")
        lines.append("|---" * (n_cols + 1) + "|")
        for label, row in zip(rows, matrix, strict=True):
            lines.append(
                f"| **{_cell(label)}** | " + " | ".join(_cell(_format(v)) for v in row) + " |"
            )
    return "\n".join(lines) + "\n"


def write_metrics(
    out_dir: Path | str,
    metrics: Mapping[str, Any],
    title: str,
    class_names: Sequence[str] | None = None,
) -> tuple[Path, Path]:
    """Write `metrics.json` and `metrics.md` into `out_dir`; returns both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = write_json(out_dir / "metrics.json", metrics)
    md_path = out_dir / "metrics.md"
    md_path.write_text(metrics_markdown(metrics, title, class_names=class_names))
    return json_path, md_path


def print_metrics_table(
    metrics: Mapping[str, Any], title: str, console: Console | None = None
) -> None:
    """Print `title` on a line of its own, then the flattened scalar metrics with their `ci95`
    intervals as in `metrics_markdown` (lists such as the confusion matrix left out)."""
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value, text in _rows(metrics):
        if isinstance(value, list | tuple):
            continue
        table.add_row(name, text)
    console = console or Console()
    # Not as the table's title: Rich wraps that to the table's width, splitting the data
    # folder's path over several centred lines.
    console.print(title, soft_wrap=True, markup=False, highlight=False)
    console.print(table)
