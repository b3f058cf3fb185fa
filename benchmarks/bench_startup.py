"""Start-up and whole-process time of `python train.py`: config composition (`--cfg job`), and
a short run's phases (start-up to the first training batch, training and validation, the
reports after fit) against the reference notebook's loop as a plain script
(benchmarks/notebook_loop.py: same network, batches and validation, its own data loading),
side by side.

Run:  python benchmarks/bench_startup.py [--quick]   (writes the "startup" section)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._common import compose_cfg, describe_machine  # noqa: E402
from benchmarks._report import write_section  # noqa: E402
from lensexp.builders import build_datamodule  # noqa: E402


def timed(command: list[str]) -> tuple[float, float, str]:
    """Start and end wall-clock times (time.time()) of `command` as a process (from the
    repository root), and its standard output; it must succeed."""
    start = time.time()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
    return start, time.time(), proc.stdout


def phases(start: float, end: float, marks: dict[str, float]) -> dict[str, float]:
    """Seconds of start-up (to the first training batch), training and validation (to the end
    of fit), what follows (reports, exit) and the whole process."""
    return {
        "startup": marks["first_batch"] - start,
        "loop": marks["fit_end"] - marks["first_batch"],
        "after": end - marks["fit_end"],
        "whole": end - start,
    }


def best(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each phase's figure from the run with the shortest whole process."""
    return min(runs, key=lambda r: r["whole"])


def main(quick: bool = False, write: bool = True) -> str:
    n_per_class, n_train, n_val = (20, 2, 1) if quick else (100, 10, 4)
    repeats = 1 if quick else 3
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sim = [f"data.simulate.n_per_class={n_per_class}"]
        cfg = compose_cfg(sim, tmp / "data", tmp / "out")
        root = str(build_datamodule(cfg).root)
        arch, batch = str(cfg.model.backbone), int(cfg.data.batch_size)
        run = [
            sys.executable, "train.py", f"data.root={root}", "model.pretrained=none",
            "trainer=cpu", "trainer.max_epochs=1", f"trainer.limit_train_batches={n_train}",
            f"trainer.limit_val_batches={n_val}", "trainer.num_sanity_val_steps=0",
            f"paths.data_dir={tmp / 'data'}",
            # The bar as in a terminal: this benchmark's stdout is a pipe, where it draws none.
            "callbacks.progress_bar.terminal_only=false",
        ]  # fmt: skip
        timed([*run, f"hydra.run.dir={tmp / 'warm'}"])  # builds the data cache, once
        notebook = [
            sys.executable, "benchmarks/notebook_loop.py", root, str(n_train), str(n_val),
            str(batch), arch,
        ]  # fmt: skip
        compose_s: list[float] = []
        runs: dict[str, list[dict[str, float]]] = {"default": [], "one_pass": [], "notebook": []}
        for r in range(repeats):  # interleaved: drift hits both alike
            start, end, _ = timed([*run, "--cfg", "job"])
            compose_s.append(end - start)
            for name, extra in (("default", []), ("one_pass", ["model.tta=none"])):
                marks = tmp / f"{name}{r}.json"
                start, end, _ = timed(
                    [*run, *extra, f"hydra.run.dir={tmp / f'{name}{r}'}",
                     "+callbacks.phases._target_=benchmarks.probes.PhaseTimes",
                     f"+callbacks.phases.path={marks}"]
                )  # fmt: skip
                runs[name].append(phases(start, end, json.loads(marks.read_text())))
            start, end, out = timed(notebook)
            runs["notebook"].append(phases(start, end, json.loads(out.strip().splitlines()[-1])))
    ours, one_pass, theirs = best(runs["default"]), best(runs["one_pass"]), best(runs["notebook"])

    def row(label: str, key: str) -> str:
        return (
            f"| {label} | {ours[key]:.2f} | {one_pass[key]:.2f} | {theirs[key]:.2f} | "
            f"{ours[key] / theirs[key]:.2f} | {one_pass[key] / theirs[key]:.2f} |"
        )

    command = "python -m benchmarks" + (" --quick" if quick else "")
    markdown = f"""## Start-up and whole-process time

Command: `{command}`. Machine: {describe_machine()}.

A short run of the default classifier ({arch}, batch {batch}) on a simulated folder
(`data.simulate.n_per_class={n_per_class}`, its data cache built by an earlier untimed run):
`python train.py data.root=DIR model.pretrained=none trainer=cpu trainer.max_epochs=1
trainer.limit_train_batches={n_train} trainer.limit_val_batches={n_val}
trainer.num_sanity_val_steps=0 callbacks.progress_bar.terminal_only=false` (the progress bar
drawn, as in a terminal), as it is (test-time averaging of the best checkpoint's reports
over 8 views: `model.tta=dihedral`) and with `model.tta=none`, against the reference notebook's
loop as a script (`benchmarks/notebook_loop.py DIR {n_train} {n_val} {batch} {arch}`: the same
network and batches, per-file loading, one validation pass, accuracy and AUC printed). Each run
is a new process; of {repeats} interleaved repeats, the one with the shortest whole process.
Phases from wall-clock marks (`benchmarks.probes.PhaseTimes`; the script prints its own).

| phase (s) | train.py | train.py, `model.tta=none` | notebook script | ratio | ratio, `tta=none` |
| --- | --- | --- | --- | --- | --- |
{row("start-up: process start to the first training batch", "startup")}
{row("training batches and validation, to the end of fit", "loop")}
{row("after fit (train.py: the best checkpoint's reports on val and test)", "after")}
{row("**whole process** (goal: ratio at most 1.10)", "whole")}

Config composition alone (`--cfg job`: Hydra exits before lensexp and torch load):
{min(compose_s):.2f} s.
"""
    if write:
        write_section("startup", markdown)
    return markdown


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    print(main(parser.parse_args().quick))
