"""`python -m lensexp.report SWEEP_DIR`: the report of a finished, interrupted or partly failed
multirun (see `lensexp.reporting.sweep`)."""

from __future__ import annotations

import argparse

from lensexp.cli import run_reporting_errors
from lensexp.reporting.sweep import write_sweep_report


def main(argv: list[str] | None = None) -> None:
    """Write report.md, report.csv and report.png into the sweep folder given."""
    parser = argparse.ArgumentParser(prog="python -m lensexp.report", description=__doc__)
    parser.add_argument("sweep_dir", help="a Hydra multirun folder (outputs/train/multiruns/...)")
    args = parser.parse_args(argv)
    rows = run_reporting_errors(lambda: write_sweep_report(args.sweep_dir))
    print(f"{len(rows)} configuration(s): {args.sweep_dir}/report.md")


if __name__ == "__main__":
    main()
