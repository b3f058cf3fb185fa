"""Simulator benchmark: images/s per class on one process and on all cores, and the
bicubic/bilinear baseline (PSNR, SSIM of upsampled LR against HR) of every super-resolution preset.

Run from the repository root:  python benchmarks/bench_sim.py [--n-per-class 200] [--sr-pairs 300]
Writes the "simulator" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python benchmarks/bench_sim.py` puts only benchmarks/ on the path
    sys.path.insert(0, str(ROOT))

from benchmarks._report import write_section  # noqa: E402
from lensexp.provenance import cpu_name  # noqa: E402
from lensexp.sim import CLASSES, load_preset, make_superres_dataset  # noqa: E402
from lensexp.sim.dataset import _render_all, classification_plan, resolve_workers  # noqa: E402
from lensexp.sim.simulate import Simulator  # noqa: E402


def throughput(cls: str, n: int, processes: int, preset: str) -> float:
    """Images/s for `n` images of class `cls`, pool start-up and file writing included."""
    cfg = load_preset(preset)
    items = [it for it in classification_plan(n, 0.2, 0.2) if it.cls == cls]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for folder in {Path(it.files[0]).parent for it in items}:
            (out / folder).mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        _render_all(items, cfg, "classification", 0, out, processes, progress=False)
        return n / (time.perf_counter() - start)


def sr_baseline(preset: str, n_pairs: int) -> dict[str, tuple[float, float]]:
    """Mean per-image PSNR (data range 1) and SSIM (Gaussian 11, sigma 1.5) of upsampled LR vs HR."""
    import torch
    import torch.nn.functional as F  # noqa: N812
    from torchmetrics.functional.image import (
        peak_signal_noise_ratio,
        structural_similarity_index_measure,
    )

    with tempfile.TemporaryDirectory() as tmp:
        out = make_superres_dataset(Path(tmp) / "sr", n_pairs, preset=preset, progress=False)
        names = sorted(p.name for p in (out / "HR").glob("*.npy"))
        hr = torch.from_numpy(np.stack([np.load(out / "HR" / n) for n in names])).double()
        lr = torch.from_numpy(np.stack([np.load(out / "LR" / n) for n in names])).double()
    result = {}
    for mode in ("bicubic", "bilinear"):
        up = F.interpolate(lr, size=hr.shape[-2:], mode=mode, align_corners=False).clamp(0, 1)
        psnr = peak_signal_noise_ratio(up, hr, data_range=1.0, reduction="none", dim=(1, 2, 3))
        # In small batches: torchmetrics' SSIM convolution unfolds 121 values per pixel.
        ssim = torch.cat(
            [
                structural_similarity_index_measure(
                    up[i : i + 8],
                    hr[i : i + 8],
                    data_range=1.0,
                    gaussian_kernel=True,
                    sigma=1.5,
                    kernel_size=11,
                    reduction="none",
                )
                for i in range(0, len(hr), 8)
            ]
        )
        result[mode] = (float(psnr.mean()), float(ssim.mean()))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-per-class", type=int, default=200, help="images per class and run")
    parser.add_argument(
        "--sr-pairs", type=int, default=300, help="pairs per super-resolution preset"
    )
    parser.add_argument("--preset", default="model_i", help="classification preset to time")
    args = parser.parse_args()
    cores = resolve_workers(0)

    # Warm the parent once (lenstronomy imports, image models) so the first timing is not penalised.
    Simulator(load_preset(args.preset), "classification").warm_up(CLASSES)
    rows = []
    for cls in CLASSES:
        one = throughput(cls, args.n_per_class, 1, args.preset)
        many = throughput(cls, args.n_per_class, cores, args.preset)
        rows.append((cls, one, many, many / one))
        print(f"{cls}: {one:.1f} img/s on 1 process, {many:.1f} on {cores}, x{many / one:.2f}")
    mean_one = 3 / sum(1 / r[1] for r in rows)  # images/s for a balanced 3-class dataset
    mean_many = 3 / sum(1 / r[2] for r in rows)

    sr = {}
    for preset in ("superres_mild", "superres_render"):
        sr[preset] = sr_baseline(preset, args.sr_pairs)
        print(f"{preset}: {sr[preset]}")

    command = "python benchmarks/bench_sim.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = [
        "## Simulator",
        "",
        f"Command: `{command.strip()}` (from the repository root). Machine: {cores} cores "
        f"({cpu_name()}), Python {platform.python_version()}.",
        "",
        f"Throughput, preset `{args.preset}` ({args.n_per_class} images per class and run, "
        "process start-up and .npy writing included):",
        "",
        f"| class | images/s, 1 process | images/s, {cores} processes | scaling |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {c} | {a:.1f} | {b:.1f} | {r:.2f}x |" for c, a, b, r in rows]
    lines += [
        f"| all three, balanced | {mean_one:.1f} | {mean_many:.1f} | {mean_many / mean_one:.2f}x |",
        "",
        f"Super-resolution baselines ({args.sr_pairs} generated pairs per preset; LR upsampled "
        "with torch `interpolate(align_corners=False)` and clamped to [0, 1]; PSNR with data "
        "range 1 and SSIM with a Gaussian window 11, sigma 1.5, both per image, then averaged):",
        "",
        "| preset | bicubic PSNR (dB) | bicubic SSIM | bilinear PSNR (dB) | bilinear SSIM |",
        "| --- | --- | --- | --- | --- |",
    ]
    for preset, res in sr.items():
        (bp, bs), (lp, ls) = res["bicubic"], res["bilinear"]
        lines.append(f"| {preset} | {bp:.2f} | {bs:.4f} | {lp:.2f} | {ls:.4f} |")
    lines += ["", "Public Test VI bilinear baseline for comparison: 41.51 dB, SSIM 0.970."]
    write_section("simulator", "\n".join(lines))
    print("wrote the simulator section of docs/benchmarks.md")


if __name__ == "__main__":
    main()
