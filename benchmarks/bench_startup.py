"""Start-up and whole-process time of `python train.py`: imports and config composition
(`--cfg job`), the time from process start to the first training batch, and a short run's whole
process against the reference notebook's loop as a plain script (benchmarks/notebook_loop.py:
same network, batches and validation, its own data loading and report), side by side.

Run:  python benchmarks/bench_startup.py [--quick]   (writes the "startup" section)
"""

from __future__ import annotations

import argparse
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


def timed(command: list[str]) -> float:
    """Wall seconds of `command` as a process (from the repository root); it must succeed."""
    start = time.time()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
    return time.time() - start


def main(quick: bool = False, write: bool = True) -> str:
    n_per_class, n_train, n_val = (20, 2, 1) if quick else (100, 10, 4)
    repeats = 1 if quick else 3
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sim = [f"data.simulate.n_per_class={n_per_class}"]
        datamodule = build_datamodule(compose_cfg(sim, tmp / "data", tmp / "out"))
        root = str(datamodule.root)
        run = [
            sys.executable, "train.py", f"data.root={root}", "model.pretrained=none",
            "trainer=cpu", "trainer.max_epochs=1", f"trainer.limit_train_batches={n_train}",
            f"trainer.limit_val_batches={n_val}", "trainer.num_sanity_val_steps=0",
            f"paths.data_dir={tmp / 'data'}",
        ]  # fmt: skip
        timed([*run, f"hydra.run.dir={tmp / 'warm'}"])  # builds the data cache, once
        compose_s, first_s, lensexp_s, notebook_s = [], [], [], []
        for r in range(repeats):  # interleaved: drift hits both alike
            compose_s.append(timed([*run, "--cfg", "job"]))
            stamp = tmp / f"first{r}.txt"
            start = time.time()
            timed([*run, f"hydra.run.dir={tmp / f'first{r}'}",
                   "+callbacks.first_batch._target_=benchmarks.probes.FirstBatchTime",
                   f"+callbacks.first_batch.path={stamp}"])  # fmt: skip
            first_s.append(float(stamp.read_text()) - start)
            lensexp_s.append(timed([*run, f"hydra.run.dir={tmp / f'run{r}'}"]))
            notebook_s.append(
                timed(
                    [sys.executable, "benchmarks/notebook_loop.py", root, str(n_train), str(n_val)]
                )  # fmt: skip
            )
    ratio = min(lensexp_s) / min(notebook_s)
    command = "python -m benchmarks" + (" --quick" if quick else "")
    markdown = f"""## Start-up and whole-process time

Command: `{command}`. Machine: {describe_machine()}.

A short default run on a simulated folder (`data.simulate.n_per_class={n_per_class}`, its data
cache built by an earlier untimed run): `python train.py data.root=DIR model.pretrained=none
trainer=cpu trainer.max_epochs=1 trainer.limit_train_batches={n_train}
trainer.limit_val_batches={n_val}`, best of {repeats} interleaved runs, each a new process.

| what | seconds |
| --- | --- |
| config composition only (`--cfg job`: Hydra exits before lensexp and torch load) | {min(compose_s):.2f} |
| process start to the first training batch | {min(first_s):.2f} |
| the whole run (training, validation, best-checkpoint reports on val and test) | {min(lensexp_s):.2f} |
| the notebook's loop as a script (`benchmarks/notebook_loop.py`, same batches) | {min(notebook_s):.2f} |
| **train.py / notebook script** (goal at most 1.10) | **{ratio:.2f}** |
"""
    if write:
        write_section("startup", markdown)
    return markdown


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    print(main(parser.parse_args().quick))
