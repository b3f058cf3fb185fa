"""All of lensexp's performance benchmarks in one go on this machine:

    python -m benchmarks            # the full run (tens of minutes on 2 CPU cores)
    python -m benchmarks --quick    # a few batches each: does every section run? (not figures)
    python -m benchmarks --only data startup
    python -m benchmarks --only gpu # on a GPU machine (issue #12's GPU figures)

Each section replaces its own part of docs/benchmarks.md (the simulator's is
benchmarks/bench_sim.py's). Figures with a peer (Lightning vs a plain loop, lensexp's loading vs
the notebook's, train.py vs the notebook script, NHWC vs NCHW) are measured side by side in the
same run, interleaved: on a noisy machine read the ratios; absolute times are for the record.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time

from benchmarks import bench_data, bench_gpu, bench_runtime, bench_startup, bench_train
from benchmarks._common import describe_machine
from benchmarks._report import write_section

SECTIONS = {
    "training": lambda quick: bench_train.main(repeats=1 if quick else 4, quick=quick),
    "overhead": lambda quick: bench_train.overhead_main(repeats=1 if quick else 6, quick=quick),
    "data": lambda quick: bench_data.main(quick=quick),
    "runtime": lambda quick: bench_runtime.main(quick=quick),
    "startup": lambda quick: bench_startup.main(quick=quick),
    # Without a CUDA device the full run only says so; --quick checks it on the CPU.
    "gpu": lambda quick: bench_gpu.main(quick=quick),
}


def main() -> None:
    parser = argparse.ArgumentParser(description="lensexp benchmarks (docs/benchmarks.md)")
    parser.add_argument("--quick", action="store_true", help="a few batches: check, not measure")
    parser.add_argument("--only", nargs="*", choices=list(SECTIONS), default=list(SECTIONS))
    args = parser.parse_args()
    started = time.perf_counter()
    for name in args.only:
        print(f"== {name}", flush=True)
        print(SECTIONS[name](args.quick), flush=True)
    minutes = (time.perf_counter() - started) / 60
    kind = "a --quick run (a few batches: not measurements)" if args.quick else "a full run"
    write_section(
        "machine",
        f"""## Machine of the last suite run

`python -m benchmarks{" --quick" if args.quick else ""}` on {dt.date.today()}, {kind}:
{describe_machine()}. Sections: {", ".join(args.only)}; {minutes:.1f} min.""",
    )


if __name__ == "__main__":
    main()
