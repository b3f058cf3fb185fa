"""Shortcut check: can a simple classifier tell the classes apart without seeing substructure?

For each preset, simulate `--n-per-class` images per class, reduce every image to a few summary
statistics that substructure should not change (ring radius and spread, total flux, peak radius,
the flux distribution's ellipticity), and score a multinomial logistic regression
on those statistics and their squares (so it sees class means and spreads) by stratified k-fold
cross-validation. Near chance (1/3) means the ring itself does not give the class away; the
network's test accuracy (from `--network PRESET=RESULTS_JSON`, a `train.py` run's results.json)
goes beside it.

Run from the repository root:
    python benchmarks/shortcut_check.py [--presets model_i ...] [--n-per-class 300]
        [--network model_i=outputs/.../results.json ...]
Writes the "shortcut" section of docs/simulation.md and three figures in docs/figures/:
sim_examples.png (images of each preset and class), sim_parameters.png (the drawn parameters) and
shortcut_check.png (ring-radius distributions and the accuracies).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if (
    str(ROOT) not in sys.path
):  # `python benchmarks/shortcut_check.py` puts only benchmarks/ on the path
    sys.path.insert(0, str(ROOT))

from benchmarks._report import write_section  # noqa: E402
from lensexp.sim import CLASSES, load_preset  # noqa: E402
from lensexp.sim.simulate import Simulator  # noqa: E402

DOC = ROOT / "docs" / "simulation.md"
FIGURES = ROOT / "docs" / "figures"
STATISTICS = (
    "ring radius (px)",
    "ring spread (px)",
    "total flux",
    "peak radius (px)",
    "flux ellipticity",
)
# Parameters shown in sim_parameters.png (manifest names); missing or constant ones are skipped.
PARAMETERS = (
    "theta_E",
    "lens_e1",
    "lens_e2",
    "gamma1",
    "gamma2",
    "source_R_sersic",
    "source_n_sersic",
    "source_center_x",
    "subhalo_mass_total",
)


def summary_statistics(image: np.ndarray) -> np.ndarray:
    """The statistics of one (H, W) image, in the order of `STATISTICS`, measured from the centre."""
    h, w = image.shape
    y, x = np.mgrid[0:h, 0:w]
    dx, dy = x - (w - 1) / 2.0, y - (h - 1) / 2.0
    r = np.hypot(dx, dy)
    flux = np.clip(image, 0.0, None)
    total = float(flux.sum())
    weights = flux / total if total > 0 else np.full_like(flux, 1.0 / flux.size)
    mean_r = float((weights * r).sum())
    spread = float(np.sqrt((weights * (r - mean_r) ** 2).sum()))
    peak = np.unravel_index(int(np.argmax(image)), image.shape)
    qxx, qyy, qxy = (weights * dx * dx).sum(), (weights * dy * dy).sum(), (weights * dx * dy).sum()
    ellipticity = float(np.hypot(qxx - qyy, 2 * qxy) / max(qxx + qyy, 1e-12))
    return np.array([mean_r, spread, total, float(r[peak]), ellipticity])


def simulate(preset: str, n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray, list]:
    """Images (N, H, W), labels (N,) and manifest rows of `n_per_class` images of each class."""
    sim = Simulator(load_preset(preset), "classification")
    images, labels, rows = [], [], []
    for label, cls in enumerate(CLASSES):
        for index in range(n_per_class):
            image, row = sim.image(cls, seed, index)
            images.append(image[0])
            labels.append(label)
            rows.append(row)
    return np.stack(images), np.asarray(labels), rows


def _features(stats: np.ndarray) -> np.ndarray:
    return np.concatenate([stats, stats**2], axis=1)


def _fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    """Multinomial logistic regression (L-BFGS, small L2 penalty) on standardised features."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-12
    xt = torch.tensor((x_train - mean) / std, dtype=torch.float64)
    yt = torch.tensor(y_train)
    layer = torch.nn.Linear(xt.shape[1], len(CLASSES)).double()
    optimiser = torch.optim.LBFGS(layer.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(layer(xt), yt) + 1e-3 * layer.weight.square().sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        scores = layer(torch.tensor((x_test - mean) / std, dtype=torch.float64))
    return scores.argmax(1).numpy()


def cross_validated_accuracy(
    stats: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0
) -> float:
    """Accuracy of the statistics classifier over stratified `folds`-fold cross-validation."""
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(labels), dtype=int)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        fold_of[members] = np.arange(members.size) % folds
    features = _features(stats)
    correct = 0
    for k in range(folds):
        test = fold_of == k
        predicted = _fit_predict(features[~test], labels[~test], features[test])
        correct += int((predicted == labels[test]).sum())
    return correct / len(labels)


def _network_accuracy(path: str) -> tuple[float, str]:
    results = json.loads(Path(path).read_text())
    for key, split in (("test_metrics", "test"), ("val_metrics", "val")):
        metrics = results.get(key) or {}
        for name in ("accuracy", "val/acc", "test/acc"):
            if name in metrics:
                return float(metrics[name]), split
    raise SystemExit(f"{path}: no accuracy in test_metrics or val_metrics")


def _figures(samples: dict, stats: dict, accuracy: dict, network: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    FIGURES.mkdir(parents=True, exist_ok=True)
    presets = list(samples)
    fig, axes = plt.subplots(
        len(presets), 2 * len(CLASSES), figsize=(2 * 2 * len(CLASSES), 2.1 * len(presets))
    )
    axes = np.atleast_2d(axes)
    for i, preset in enumerate(presets):
        images, labels, _ = samples[preset]
        for c, cls in enumerate(CLASSES):
            for j in range(2):
                ax = axes[i, 2 * c + j]
                ax.imshow(images[np.flatnonzero(labels == c)[j]], cmap="magma", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    ax.set_title(cls)
            axes[i, 0].set_ylabel(preset, fontsize=8)
    fig.tight_layout()
    fig.savefig(FIGURES / "sim_examples.png", dpi=80)
    plt.close(fig)

    shown = [
        p
        for p in PARAMETERS
        if any(
            len({row.get(p) for row in samples[s][2] if row.get(p) is not None}) > 1
            for s in presets
        )
    ]
    ncols = 5
    nrows = -(-len(shown) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.3 * nrows), squeeze=False)
    for ax, name in zip(axes.flat, shown, strict=False):
        for preset in presets:
            values = np.array(
                [row[name] for row in samples[preset][2] if row.get(name) is not None], dtype=float
            )
            if name == "subhalo_mass_total":  # zero for `no`; masses span decades
                values = np.log10(values[values > 0])
            if len(set(values.tolist())) > 1:
                ax.hist(values, bins=30, histtype="step", label=preset)
            elif values.size:
                ax.axvline(values[0], color=f"C{presets.index(preset)}", label=preset)
        title = "log10 subhalo_mass_total (Msun)" if name == "subhalo_mass_total" else name
        ax.set_title(title, fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(shown) :]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=6)
    fig.suptitle("drawn parameters (a vertical line: fixed in that preset)", fontsize=9)
    fig.tight_layout()
    fig.savefig(FIGURES / "sim_parameters.png", dpi=80)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(presets) + 1, figsize=(3.2 * (len(presets) + 1), 2.8))
    for ax, preset in zip(axes[:-1], presets, strict=True):
        _, labels, _ = samples[preset]
        for c, cls in enumerate(CLASSES):
            ax.hist(stats[preset][labels == c, 0], bins=30, histtype="step", label=cls)
        ax.set_title(f"{preset}: ring radius", fontsize=9)
        ax.set_xlabel("flux-weighted mean radius (px)", fontsize=8)
    axes[0].legend(fontsize=7)
    ax = axes[-1]
    x = np.arange(len(presets))
    ax.bar(x - 0.2, [accuracy[p] for p in presets], 0.4, label="statistics")
    ax.bar(x + 0.2, [network.get(p, (np.nan, ""))[0] for p in presets], 0.4, label="network")
    ax.axhline(1 / len(CLASSES), color="k", ls="--", lw=1, label="chance")
    ax.set_xticks(x, presets, rotation=20, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_title("accuracy", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(FIGURES / "shortcut_check.png", dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["model_i"])
    parser.add_argument("--n-per-class", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--network", nargs="*", default=[], metavar="PRESET=RESULTS_JSON")
    args = parser.parse_args(argv)
    network = {}
    for item in args.network:
        preset, _, path = item.partition("=")
        network[preset] = _network_accuracy(path)

    samples, stats, accuracy, lines = {}, {}, {}, []
    for preset in args.presets:
        start = time.perf_counter()
        samples[preset] = simulate(preset, args.n_per_class, args.seed)
        images, labels, _ = samples[preset]
        stats[preset] = np.stack([summary_statistics(im) for im in images])
        accuracy[preset] = cross_validated_accuracy(stats[preset], labels)
        means = " / ".join(f"{stats[preset][labels == c, 0].mean():.2f}" for c in range(3))
        stderr = np.sqrt(accuracy[preset] * (1 - accuracy[preset]) / len(labels))
        net, split = network.get(preset, (None, ""))
        net_cell = "not run" if net is None else f"{net:.3f} ({split})"
        lines.append(
            f"| `{preset}` | {means} | {accuracy[preset]:.3f} +/- {stderr:.3f} | {net_cell} |"
        )
        print(
            f"{preset}: statistics accuracy {accuracy[preset]:.3f}, network {net_cell}, "
            f"{time.perf_counter() - start:.0f} s"
        )
    _figures(samples, stats, accuracy, network)

    command = "python benchmarks/shortcut_check.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    markdown = "\n".join(
        [
            f"Command: `{command.strip()}` ({args.n_per_class} images per class and preset, "
            f"seed {args.seed}; chance is {1 / len(CLASSES):.3f}).",
            "",
            f"Statistics: {', '.join(STATISTICS)} (from the image centre), and their squares; "
            "classifier: multinomial logistic regression, 5-fold stratified cross-validation "
            "(+/- is the binomial standard error). Network: the test accuracy of a `train.py` "
            "run on that preset's default dataset (its results.json).",
            "",
            "| preset | mean ring radius no / sphere / vort (px) | statistics classifier | network |",
            "| --- | --- | --- | --- |",
            *lines,
            "",
            "![example images of each preset and class](figures/sim_examples.png)",
            "",
            "![parameter distributions](figures/sim_parameters.png)",
            "",
            "![ring radius by class and the accuracies](figures/shortcut_check.png)",
        ]
    )
    write_section("shortcut", markdown, doc=DOC)
    print(f"wrote {DOC} and {FIGURES}/sim_examples.png, sim_parameters.png, shortcut_check.png")


if __name__ == "__main__":
    main()
