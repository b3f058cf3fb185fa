"""Classification metrics as a function of the physics of each image (the simulator's manifest).

Pure functions of arrays, no I/O. Definitions (`physics_table`):

- Quantities (`QUANTITIES`): for `sphere` images, the total subhalo mass and the number of
  subhalos; for `vort` images, the axion mass; for images of every class, the Einstein radius
  `theta_E` and the source brightness (`source_amp`, or `source_magnitude` where the amplitude
  is not recorded).
- Bins: quantiles of the quantity over the images it is binned on (`N_BINS` equal-count bins;
  log10 of the quantity for the masses, so their edges interpolate in log). Bin i holds
  lo <= value < hi, the last bin also its upper edge. Equal edges (a discrete quantity) are
  merged and an empty bin is left out. Images without a finite value (non-positive for a
  logarithmic quantity) are not binned.
- Per bin: `n` images; `accuracy`, the fraction of them whose argmax class is their label.
- `auc` of a class-specific quantity (population P, e.g. sphere): the ROC AUC of p_P with the
  bin's P images as positives against every image of the reference class `no` (all bins share
  those negatives), i.e. how well P images of that mass are told from no substructure.
- `auc` of an all-class quantity: the macro one-vs-rest AUC within the bin, the mean over the
  classes that have both a positive and a negative image in the bin of the AUC of p_k for
  class-k images against the bin's other images.
- AUCs are Mann-Whitney statistics (ties count half), as in `lensexp.metrics.classification`.
  A bin where the AUC is undefined (no `no` images; one class only) has NaN and says why in
  `note`; a quantity without values for its class, or constant, gets one row with `bin` None
  saying so; a column that is absent or empty for every image is left out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

N_BINS = 4
REFERENCE_CLASS = "no"


@dataclass(frozen=True)
class Quantity:
    """A manifest column to bin on: the class whose images are binned (None: every class),
    whether its bins are in log10, and how figures label it."""

    column: str
    population: str | None
    log: bool
    label: str


QUANTITIES = (
    Quantity("subhalo_mass_total", "sphere", True, "total subhalo mass [Msun]"),
    Quantity("n_subhalos", "sphere", False, "number of subhalos"),
    Quantity("axion_mass", "vort", True, "axion mass [eV]"),
    Quantity("theta_E", None, False, "Einstein radius theta_E [arcsec]"),
    Quantity("source_amp", None, False, "source amplitude"),
    Quantity("source_magnitude", None, False, "source magnitude"),
)


def binary_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(score of a positive > score of a negative) + P(tie) / 2; NaN if either set is empty."""
    positive, negative = np.asarray(positive, float), np.asarray(negative, float)
    if positive.size == 0 or negative.size == 0:
        return math.nan
    scores = np.concatenate([positive, negative])
    # Mid-ranks: tied scores share the mean of the ranks they span.
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    mid = upper - (counts - 1) / 2.0
    ranks = mid[inverse]
    n_pos, n_neg = positive.size, negative.size
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def macro_auc(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean one-vs-rest AUC over the classes with a positive and a negative image; NaN if none."""
    aucs = []
    for k in range(probs.shape[1]):
        is_k = labels == k
        if is_k.any() and (~is_k).any():
            aucs.append(binary_auc(probs[is_k, k], probs[~is_k, k]))
    return float(np.mean(aucs)) if aucs else math.nan


def quantile_edges(values: np.ndarray, n_bins: int, log: bool) -> np.ndarray | None:
    """Bin edges (in the quantity's units) at the quantiles of `values` (of their log10 when
    `log`), equal ones merged; None when the values do not vary."""
    v = np.log10(values) if log else np.asarray(values, float)
    edges = np.unique(np.quantile(v, np.linspace(0.0, 1.0, n_bins + 1)))
    if edges.size < 2:
        return None
    return 10.0**edges if log else edges


def bin_of(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The bin index of each value: i where edges[i] <= value < edges[i + 1], the last bin
    closed (values are assumed to lie within the edges)."""
    return np.searchsorted(edges[1:-1], values, side="right")


def _usable(values: np.ndarray, log: bool) -> np.ndarray:
    finite = np.isfinite(values)
    return finite & (values > 0) if log else finite


def physics_table(
    columns: Mapping[str, np.ndarray],
    probs: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    n_bins: int = N_BINS,
) -> list[dict[str, Any]]:
    """The per-bin count, accuracy and AUC of each quantity of `QUANTITIES` found in `columns`
    (per-image values aligned with `probs` (N, C) and `labels` (N,)); see the module docstring.

    Rows: `{"quantity", "population", "bin", "lo", "hi", "n", "accuracy", "auc", "note"}`;
    `population` is the class binned, or `all`; a quantity that cannot be binned has one row
    with `bin` None and the reason in `note`.
    """
    probs, labels = np.asarray(probs, float), np.asarray(labels)
    names = [str(c) for c in class_names]
    predicted = probs.argmax(axis=1)
    rows: list[dict[str, Any]] = []
    for q in QUANTITIES:
        population = q.population or "all"

        def skip(note: str, q: Quantity = q, population: str = population) -> None:
            rows.append(
                {"quantity": q.column, "population": population, "bin": None, "lo": None,
                 "hi": None, "n": 0, "accuracy": math.nan, "auc": math.nan, "note": note}
            )  # fmt: skip

        values = np.asarray(columns.get(q.column, []), float)
        if not np.isfinite(values).any():
            # Not recorded (e.g. source_magnitude when the amplitude is): nothing to say.
            continue
        members = _usable(values, q.log)
        if q.population is not None:
            if q.population not in names:
                skip(f"no `{q.population}` class in data.classes")
                continue
            target = names.index(q.population)
            members &= labels == target
        if not members.any():
            skip("no values")
            continue
        edges = quantile_edges(values[members], n_bins, q.log)
        if edges is None:
            skip(f"does not vary (all {values[members][0]:g})")
            continue
        index = np.flatnonzero(members)
        bins = bin_of(values[index], edges)
        negatives = None
        if q.population is not None and REFERENCE_CLASS in names:
            negatives = probs[labels == names.index(REFERENCE_CLASS), target]
        for b in range(edges.size - 1):
            in_bin = index[bins == b]
            if in_bin.size == 0:
                continue
            note = ""
            if q.population is None:
                bin_labels = labels[in_bin]
                auc = macro_auc(probs[in_bin], bin_labels)
                if np.unique(bin_labels).size < 2:
                    note = "one class only: no AUC"
            elif negatives is None or negatives.size == 0:
                auc = math.nan
                note = f"no `{REFERENCE_CLASS}` images: no AUC"
            else:
                auc = binary_auc(probs[in_bin, target], negatives)
            rows.append(
                {
                    "quantity": q.column,
                    "population": population,
                    "bin": b,
                    "lo": float(edges[b]),
                    "hi": float(edges[b + 1]),
                    "n": int(in_bin.size),
                    "accuracy": float((predicted[in_bin] == labels[in_bin]).mean()),
                    "auc": auc,
                    "note": note,
                }
            )
    return rows
