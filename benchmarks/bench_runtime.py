"""Evaluation and CPU settings: batched inference as `evaluate.py` runs it (Trainer.predict
under `torch.inference_mode`) in images/s and peak memory, and NHWC weights
(`runtime.channels_last`) against NCHW on this machine, side by side.

Run:  python benchmarks/bench_runtime.py [--quick]   (writes the "runtime" section)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._common import compose_cfg, describe_machine, run_probe  # noqa: E402
from benchmarks._report import write_section  # noqa: E402
from lensexp.builders import build_datamodule  # noqa: E402

CASES = {
    # Each case names its model: the default changes (this label once said mobilenet_v3_large
    # while the default it measured was mobilenet_v3_small).
    "classifier, mobilenet_v3_small, 150 px": ["model=mobilenet_v3_small", "model.pretrained=none"],
    "classifier, small_resnet, 150 px": ["model=small_resnet"],
    "srresnet 16 blocks": ["model=srresnet"],
}


def main(quick: bool = False, write: bool = True) -> str:
    batches = 2 if quick else 8
    repeats = 1 if quick else 3
    rows, cl_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data_dir = tmp / "data"
        for name, case in CASES.items():
            if "classifier" in name:
                # 270 validation images: the timed batches are full ones (with 60, the
                # predict loop's own set-up dominated the figure).
                size = [f"data.simulate.n_per_class={20 if quick else 450}"]
            else:
                size = [f"data.simulate.n_pairs={40 if quick else 200}"]
                size += ["data.batch_size=4"] if quick else []
            over = [*case, *size, "trainer=cpu"]
            build_datamodule(compose_cfg(over, data_dir, tmp / "out"))  # simulate once
            args = {"overrides": over, "data_dir": str(data_dir), "out": str(tmp / "out")}
            # Classifiers predict as evaluate.py does by default (the 8-view average) and with
            # one pass per image.
            views = {"8 views (default)": [], "one pass": ["model.tta=none"]}
            for label, tta in views.items() if "classifier" in name else [("", [])]:
                inf = max(
                    (
                        run_probe(
                            "inference", batches=batches, **{**args, "overrides": [*over, *tta]}
                        )
                        for _ in range(repeats)
                    ),
                    key=lambda r: r["images_per_s"],
                )
                rows.append(
                    f"| {name}{', ' + label if label else ''} | {inf['images']} | "
                    f"{inf['images_per_s']:.1f} | {inf['peak_rss_mib']:.0f} |"
                )
            if "classifier" not in name and quick:
                continue
            on, off = [], []
            for _ in range(repeats):  # interleaved: drift hits both alike
                off.append(run_probe("channels_last_step", batches=batches,
                                     channels_last=False, **args))  # fmt: skip
                on.append(run_probe("channels_last_step", batches=batches,
                                    channels_last=True, **args))  # fmt: skip
            for key, what in (("train_per_s", "training"), ("infer_per_s", "inference")):
                a, b = max(r[key] for r in off), max(r[key] for r in on)
                cl_rows.append(f"| {name} | {what} | {a:.2f} | {b:.2f} | {b / a:.2f}x |")

    command = "python -m benchmarks" + (" --quick" if quick else "")
    markdown = f"""## Evaluation throughput and CPU settings

Command: `{command}`. Machine: {describe_machine()}.

Batched prediction as `evaluate.py` runs it (Trainer.predict, `inference_mode=true`, the data
module's batches, random weights), {batches} batches after a warm-up batch, best of {repeats}
runs, each in its own process (peak RSS: the whole process, model and data included); images/s
counts images, each of which the classifiers' default averages over 8 views:

| model | images | images/s | peak RSS (MiB) |
| --- | --- | --- | --- |
{chr(10).join(rows)}

`runtime.channels_last` (NHWC weights) against NCHW on this CPU, images/s of the plain loop,
best of {repeats} interleaved runs, each in its own process:

| model | pass | NCHW | NHWC | NHWC / NCHW |
| --- | --- | --- | --- | --- |
{chr(10).join(cl_rows)}
"""
    if write:
        write_section("runtime", markdown)
    return markdown


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    print(main(parser.parse_args().quick))
