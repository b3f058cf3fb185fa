"""Files on disk: atomic .npy writes, the output-folder checks, run state, and the manifest.

Rules the simulator keeps in an output folder:
- every `.npy` is written under a hidden temporary name and renamed, so a killed run never
  leaves a half-written file under a final name; a rerun deletes its stale temporaries;
- `.sim/state.json` records the settings; a file counts as the simulator's own only when it
  matches the dataset layout *and* that state exists; anything else is left alone;
- `manifest.csv` exists only once every image of the plan is on disk (each shard writes its
  part under `.sim/`, and whichever shard finishes last merges them).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import secrets
import time
from pathlib import Path

import numpy as np

from lensexp.checks import flatten
from lensexp.errors import LensexpError
from lensexp.sim.config import with_older_defaults

STATE_DIR = ".sim"
STATE_FILE = "state.json"
MANIFEST = "manifest.csv"

# Final names the simulator writes, for both tasks (classification and super-resolution).
_OWN_NPY = re.compile(
    r"^(?:(?:train|val|test)/(?P<c>no|sphere|vort)/(?P=c)_\d{6,}|(?:HR|LR)/\d{6,})\.npy$"
)
_TMP = re.compile(r"^(?P<dir>.*/)?\.(?P<name>[^/]+\.npy)\.[0-9a-f]+\.tmp$")


# ----------------------------------------------------------------------------- atomic writes


def atomic_save(path: Path, array: np.ndarray) -> None:
    """Write `array` to `path` as .npy via a hidden temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid():x}{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as fh:
            np.save(fh, array, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str, tmp_dir: Path) -> None:
    """Write a text file via a temporary file in `tmp_dir` (same filesystem) and a rename."""
    tmp = tmp_dir / f"{path.name}.{os.getpid():x}{secrets.token_hex(4)}.tmp"
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def npy_size(shape: tuple[int, ...], dtype: str = "float32") -> int:
    """Byte size of a .npy file holding an array of `shape` and `dtype`."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": tuple(shape)}
    )
    return buf.tell() + int(np.prod(shape)) * np.dtype(dtype).itemsize


def is_complete(path: Path, size: int) -> bool:
    """True if `path` exists with exactly the size a finished file of this shape has."""
    try:
        return path.stat().st_size == size
    except OSError:
        return False


# ----------------------------------------------------------------------------- folder checks


def state_hash(state: dict) -> str:
    """Short fingerprint of the settings that decide the images' content and layout."""
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:12]


def _first_difference(old: dict, new: dict) -> str:
    a, b = flatten(old, "."), flatten(new, ".")
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            return f"{key}: {a.get(key)!r} then, {b.get(key)!r} now"
    return "unknown"


def _comparable(old: dict, new: dict) -> dict:
    """`old` with the preset settings its dataset implied (settings added since it was made)."""
    if isinstance(old.get("preset"), dict) and isinstance(new.get("preset"), dict):
        return {**old, "preset": with_older_defaults(old["preset"], new["preset"])}
    return old


def read_state(out: Path) -> dict | None:
    """The settings recorded by an earlier run in `out`, or None."""
    try:
        return json.loads((out / STATE_DIR / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


def _list_files(out: Path, has_state: bool, stop_at_foreign: bool) -> tuple[list[str], str | None]:
    """Relative paths of the files in `out`, and the first file the simulator did not write.

    With `stop_at_foreign` the walk ends at that first foreign file (enough to refuse the
    folder without listing, say, a whole home directory).
    """
    files: list[str] = []
    try:
        for root, _, names in os.walk(out, onerror=_raise):
            rel = Path(root).relative_to(out)
            for name in sorted(names):
                path = (rel / name).as_posix()
                if not _is_own(path, has_state):
                    if stop_at_foreign:
                        return files, path
                    continue
                files.append(path)
    except OSError as err:
        raise LensexpError(f"cannot read output folder {out} ({err.strerror or err}).") from err
    return files, None


def _raise(err: OSError) -> None:
    raise err


def _is_own(rel: str, has_state: bool) -> bool:
    if rel == STATE_DIR or rel.startswith(STATE_DIR + "/"):
        return True
    return has_state and (rel == MANIFEST or bool(_OWN_NPY.match(rel)) or bool(_TMP.match(rel)))


def prepare_output(
    out: Path, state: dict, planned: set[str], mine: set[str], overwrite: bool
) -> None:
    """Check `out` and make it ready for this run (or raise a one-line LensexpError).

    `planned` holds every final file of the whole dataset; `mine` those of this shard.
    Refuses a folder holding files the simulator did not write, or a dataset made with other
    settings or a larger count, unless `overwrite`. With `overwrite`, only the simulator's own
    files are deleted: this shard's images and files outside the plan (other shards keep theirs).
    """
    if out.exists() and not out.is_dir():
        raise LensexpError(f"out={out} is a file, not a folder; choose a folder path.")
    old = read_state(out)
    has_state = old is not None
    files, foreign = _list_files(out, has_state, not overwrite) if out.is_dir() else ([], None)
    if foreign is not None:
        raise LensexpError(
            f"output folder {out} already holds files the simulator did not write "
            f"(e.g. {foreign}); choose an empty folder, or pass overwrite=true (they are kept)."
        )
    own_npy = [f for f in files if has_state and _OWN_NPY.match(f)]
    surplus = [f for f in own_npy if f not in planned]
    changed = has_state and _comparable(old, state) != state
    if not overwrite:
        if changed:
            raise LensexpError(
                f"output folder {out} holds a simulated dataset made with other settings "
                f"({_first_difference(_comparable(old, state), state)}); choose another folder or pass overwrite=true."
            )
        if surplus:
            raise LensexpError(
                f"output folder {out} holds {len(surplus)} simulated file(s) beyond the requested "
                f"count (e.g. {surplus[0]}); ask for at least as many images, or pass "
                "overwrite=true to delete the surplus."
            )
    try:
        (out / STATE_DIR).mkdir(parents=True, exist_ok=True)
        if not os.access(out, os.W_OK):
            raise PermissionError(13, "permission denied")
        probe = out / STATE_DIR / f"probe.{os.getpid():x}{secrets.token_hex(4)}.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise LensexpError(
            f"output folder {out} is not writable ({err.strerror or err}); choose another out=."
        ) from err
    # Surplus files lie outside every shard's plan, so any shard may delete them.
    doomed = set(surplus) | ({f for f in own_npy if f in mine} if overwrite else set())
    for rel in doomed:
        (out / rel).unlink(missing_ok=True)
    for folder in sorted({Path(rel).parent for rel in doomed}, reverse=True):
        _remove_if_empty(out, folder)
    _remove_stale_temporaries(out, files, mine)
    if old != state:
        atomic_write_text(
            out / STATE_DIR / STATE_FILE,
            json.dumps(state, sort_keys=True, indent=1),
            out / STATE_DIR,
        )


def _remove_if_empty(out: Path, folder: Path) -> None:
    """Remove a layout folder under `out` (e.g. train/no, then train) the deletions left empty."""
    while folder.parts:
        with contextlib.suppress(OSError):  # not empty, or already gone
            (out / folder).rmdir()
        folder = folder.parent


def _remove_stale_temporaries(out: Path, files: list[str], mine: set[str]) -> None:
    """Delete temporaries left by a killed run: this shard's images' and old state temporaries."""
    for rel in files:
        m = _TMP.match(rel)
        if m:
            stale = f"{m['dir'] or ''}{m['name']}" in mine
        else:
            # State/manifest temporaries live for milliseconds; an old one is from a killed run.
            stale = (
                rel.startswith(f"{STATE_DIR}/") and rel.endswith(".tmp") and _age(out / rel) > 600
            )
        if stale:
            (out / rel).unlink(missing_ok=True)


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


# ----------------------------------------------------------------------------- manifest


def _csv_text(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="raise")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in columns})
    return buf.getvalue()


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def manifest_rows(path: Path) -> int:
    """Number of data rows in a manifest file (-1 if missing or unreadable)."""
    try:
        with open(path, newline="") as fh:
            return sum(1 for _ in csv.reader(fh)) - 1
    except OSError:
        return -1


def write_manifest(
    out: Path, rows: list[dict], columns: list[str], shard: int, num_shards: int, tag: str
) -> bool:
    """Write this shard's manifest rows; write `manifest.csv` once every shard's part is there.

    `tag` identifies the settings and count, so parts of other runs are never merged.
    Returns True if `manifest.csv` was written.
    """
    state_dir = out / STATE_DIR
    if num_shards == 1:
        atomic_write_text(out / MANIFEST, _csv_text(sorted(rows, key=_key), columns), state_dir)
        return True
    parts_dir = state_dir / "manifest-parts"
    parts_dir.mkdir(exist_ok=True)
    for stale in parts_dir.glob("part-*.csv"):
        if not stale.name.startswith(f"part-{tag}-"):
            stale.unlink(missing_ok=True)
    part = parts_dir / f"part-{tag}-{shard:05d}-of-{num_shards:05d}.csv"
    atomic_write_text(part, _csv_text(rows, columns), state_dir)
    parts = [parts_dir / f"part-{tag}-{k:05d}-of-{num_shards:05d}.csv" for k in range(num_shards)]
    if not all(p.exists() for p in parts):
        return False
    merged: list[dict] = []
    for p in parts:
        try:
            with open(p, newline="") as fh:
                merged.extend(csv.DictReader(fh))
        except OSError:
            return False  # another shard is rewriting its part; it will merge afterwards
    atomic_write_text(out / MANIFEST, _csv_text(sorted(merged, key=_key), columns), state_dir)
    return True


def remove_manifest_part(out: Path, shard: int, num_shards: int) -> None:
    """Forget this shard's earlier manifest part (it is about to render again)."""
    for p in (out / STATE_DIR / "manifest-parts").glob(
        f"part-*-{shard:05d}-of-{num_shards:05d}.csv"
    ):
        p.unlink(missing_ok=True)


def _key(row: dict) -> str:
    return str(row["file"])
