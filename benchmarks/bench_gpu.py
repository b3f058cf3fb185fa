"""GPU: training throughput of the default classifier and of SRResNet in fp32 NCHW against
bf16-mixed with NHWC weights, and with torch.compile on top; evaluate.py's batched inference in
fp32 against bf16-mixed + NHWC. The script to run once where a GPU machine is lent (issue #12).

Run:  python benchmarks/bench_gpu.py            (on a CUDA machine; writes the "gpu" section)
      python benchmarks/bench_gpu.py --quick    (anywhere: a few CPU batches, checks it runs)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._common import compose_cfg, describe_machine, run_probe  # noqa: E402
from benchmarks._report import write_section  # noqa: E402
from lensexp.builders import build_datamodule  # noqa: E402

MODELS = {
    "classifier, small_resnet, 150 px": ["model=small_resnet", "data.batch_size=64"],
    "classifier, mobilenet_v3_small, 150 px": [
        "model=mobilenet_v3_small",
        "model.pretrained=none",
        "data.batch_size=64",
    ],
    "srresnet 16 blocks": ["model=srresnet", "data.batch_size=16"],
}
# (label, overrides) of each training setting, on the GPU; --quick swaps trainer=gpu for cpu.
SETTINGS = {
    "fp32, NCHW": ["trainer=gpu", "trainer.precision=32-true", "runtime.channels_last=false"],
    "bf16-mixed, NHWC": ["trainer=gpu", "runtime.channels_last=true"],
    "bf16-mixed, NHWC, compile": ["trainer=gpu", "runtime.channels_last=true", "runtime.compile=true"],
}  # fmt: skip


def _on(settings: list[str], quick: bool) -> list[str]:
    return [o.replace("trainer=gpu", "trainer=cpu") for o in settings] if quick else settings


def main(quick: bool = False, write: bool = True) -> str:
    if not quick and not torch.cuda.is_available():
        return (
            "## GPU\n\nNo CUDA device here: run on a GPU machine (or --quick to check on a CPU).\n"
        )
    batches, warmup = (3, 1) if quick else (60, 15)
    train_rows, infer_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data_dir = tmp / "data"
        for name, model in MODELS.items():
            if "classifier" in name:
                size = [f"data.simulate.n_per_class={20 if quick else 1300}"]
            else:
                size = [f"data.simulate.n_pairs={20 if quick else 1000}"]
            if quick:
                model = [o for o in model if not o.startswith("data.batch_size")]
                model += ["data.batch_size=4"]
            base = [*model, *size, "scheduler=none"]  # no validation: nothing to plateau on
            build_datamodule(compose_cfg([*base, "trainer=cpu"], data_dir, tmp / "o"))  # simulate
            args = {"data_dir": str(data_dir), "out": str(tmp / "o")}
            rates = {}
            for label, settings in SETTINGS.items():
                over = [*base, *_on(settings, quick)]
                rates[label] = run_probe("train_throughput", overrides=over, batches=batches,
                                         warmup=warmup, **args)  # fmt: skip
            fp32 = rates["fp32, NCHW"]["images_per_s"]
            for label, r in rates.items():
                memory = "-" if r["peak_device_mib"] is None else f"{r['peak_device_mib']:.0f}"
                # What ran: 16-mixed on a GPU without bfloat16 (lensexp.builders.native_precision).
                label = label.replace("bf16-mixed", r["precision"])
                train_rows.append(
                    f"| {name} | {label} | {r['images_per_s']:.1f} | "
                    f"{r['images_per_s'] / fp32:.2f}x | {memory} |"
                )
            for label in ("fp32, NCHW", "bf16-mixed, NHWC"):
                over = [*base, *_on(SETTINGS[label], quick)]
                r = run_probe("inference", overrides=over, batches=batches, **args)
                label = label.replace("bf16-mixed", r["precision"])
                infer_rows.append(
                    f"| {name} | {label} | {r['images_per_s']:.1f} | {r['peak_rss_mib']:.0f} |"
                )
    command = "python benchmarks/bench_gpu.py" + (" --quick" if quick else "")
    note = " (--quick: on the CPU, a few batches; checks the script, not the GPU)" if quick else ""
    markdown = f"""## GPU

Command: `{command}`{note}. Machine: {describe_machine()}.

Training throughput through Lightning as `train.py` runs it (`trainer=gpu`; the settings as
overrides: `trainer.precision=32-true`, `runtime.channels_last`, `runtime.compile`), images or
pairs per second over {batches - warmup} batches after {warmup} warm-up batches (which include
compilation), peak device memory:

| model | setting | images/s | vs fp32 NCHW | peak device memory (MiB) |
| --- | --- | --- | --- | --- |
{chr(10).join(train_rows)}

`evaluate.py`'s batched inference (Trainer.predict, inference_mode), {batches} batches after
a warm-up batch; images/s counts images, each of which the classifiers average over 8 views
(`model.tta=dihedral`, their default); peak host memory of the process:

| model | setting | images/s | peak RSS (MiB) |
| --- | --- | --- | --- |
{chr(10).join(infer_rows)}
"""
    if write and not quick:
        write_section("gpu", markdown)
    return markdown


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    print(main(parser.parse_args().quick))
