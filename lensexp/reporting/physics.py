"""The metrics-against-physics files of a classification report: `physics.csv`, `physics.md`
and `physics.png` (the numbers come from `lensexp.metrics.physics`)."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lensexp.metrics.physics import N_BINS
from lensexp.reporting.figures import physics_figure, save_figure

COLUMNS = ("quantity", "population", "bin", "lo", "hi", "n", "accuracy", "auc", "note")


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def physics_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The table of `rows` as Markdown, headed by how its bins and AUCs are defined."""
    lines = [
        "## Metrics against the physics",
        "",
        f"Bins: {N_BINS} quantiles of each quantity over the images binned (lo <= value < hi, "
        "the last bin closed; log10 quantiles for masses). sphere/vort quantities: accuracy of "
        "that class's images in the bin; AUC of that class's probability, the bin's images "
        "against every `no` image. all: accuracy and macro one-vs-rest AUC within the bin. "
        "See `lensexp/metrics/physics.py`.",
        "",
        "| quantity | images | bin | lo | hi | n | accuracy | AUC | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [_text(r[c]) for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_physics_report(out_dir: Path | str, rows: Sequence[dict[str, Any]]) -> str:
    """Write `physics.csv`, `physics.md` and `physics.png` into `out_dir`; return the Markdown
    table (for `metrics.md`)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "physics.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        for r in rows:
            writer.writerow([_text(r[c]) for c in COLUMNS])
    text = physics_markdown(rows)
    (out_dir / "physics.md").write_text("# Classification metrics against the physics\n\n" + text)
    save_figure(physics_figure(rows), out_dir / "physics.png")
    return text
