"""The reference's on-disk dataset layout: `{out}/{split}/dataset.json` + `{set}__{field}.npy`.

Builders write through `building()` so that an interrupted build never leaves a directory that looks
valid: everything goes to a temporary sibling that is renamed into place only when complete.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

FIELDS = ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")
# What our builders write. Readers take any integer dtype (the reference's augmented Sudoku builder writes int64
# inputs and labels) as long as every token fits the vocabulary.
DTYPES = {
    "inputs": np.uint8,
    "labels": np.uint8,
    "puzzle_identifiers": np.int32,
    "puzzle_indices": np.int32,
    "group_indices": np.int32,
}
BUILD_INFO = "build_info.json"
IDENTIFIERS = "identifiers.json"


class DatasetError(ValueError):
    """A dataset that cannot be used; the message names the file and the fix."""


@dataclass
class DatasetMetadata:
    pad_id: int
    ignore_label_id: int | None
    blank_identifier_id: int
    vocab_size: int
    seq_len: int
    num_puzzle_identifiers: int
    total_groups: int
    mean_puzzle_examples: float
    sets: list[str] = field(default_factory=lambda: ["all"])

    @classmethod
    def from_json(cls, data: dict) -> DatasetMetadata:
        # Extra keys (e.g. TRM's total_puzzles) are ignored, as the reference's pydantic model does.
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        missing = [k for k in cls.__dataclass_fields__ if k not in data and k != "sets"]
        if missing:
            raise DatasetError(f"dataset.json lacks {', '.join(missing)}: rebuild the dataset with hrm-data build")
        return cls(**known)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def write_array(path: Path, array: np.ndarray) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def write_split(split_dir: Path, metadata: DatasetMetadata, arrays: dict[str, np.ndarray],
                set_name: str = "all") -> None:
    """Validate and write one split (arrays of one set); `metadata.sets` must name the set."""
    split_dir = Path(split_dir)
    split_dir.mkdir(parents=True, exist_ok=True)
    errors = check_arrays(arrays, metadata)
    if errors:
        raise DatasetError(f"refusing to write {split_dir}: {errors[0]}")
    for name in FIELDS:
        write_array(split_dir / f"{set_name}__{name}.npy", np.ascontiguousarray(arrays[name], dtype=DTYPES[name]))
    atomic_write_json(split_dir / "dataset.json", asdict(metadata))


def read_metadata(split_dir: Path) -> DatasetMetadata:
    path = Path(split_dir) / "dataset.json"
    if not path.is_file():
        raise DatasetError(f"{path} not found: build the dataset first (hrm-data build ...) or fix data_path")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path} is not valid JSON ({e}): rebuild the dataset") from None
    return DatasetMetadata.from_json(data)


def load_split(split_dir: Path, set_name: str = "all", mmap: bool = True) -> dict[str, np.ndarray]:
    """Inputs and labels memory-mapped read-only (as the reference does); index arrays in RAM."""
    split_dir = Path(split_dir)
    out = {}
    for name in FIELDS:
        path = split_dir / f"{set_name}__{name}.npy"
        if not path.is_file():
            raise DatasetError(f"{path} not found: the dataset is incomplete, rebuild it")
        try:
            out[name] = np.load(path, mmap_mode="r" if (mmap and name in ("inputs", "labels")) else None)
        except ValueError as e:
            raise DatasetError(f"{path} is not a readable .npy file ({e}): rebuild the dataset") from None
    return out


TOKEN_FIELDS = ("inputs", "labels")
_SCAN_ELEMENTS = 1 << 22  # elements per slice when scanning a token array: one pass, slices stay in cache


def token_range(array: np.ndarray, exclude: int | None = None) -> tuple[int, int] | None:
    """(min, max) of an integer array, leaving out values equal to `exclude`; None when nothing is left.

    One pass over a memory map, a slice of rows at a time (min and max of a slice read it from cache).
    """
    flat = array if array.ndim == 2 else array.reshape(-1, 1)
    rows = max(1, _SCAN_ELEMENTS // max(flat.shape[1], 1))
    lo = hi = None
    for start in range(0, len(flat), rows):
        part = flat[start:start + rows]
        if exclude is not None:
            part = part[part != exclude]
        if part.size:
            a, b = int(part.min()), int(part.max())
            lo, hi = (a, b) if lo is None else (min(lo, a), max(hi, b))
    return None if lo is None else (lo, hi)


def _bad_tokens(name: str, array: np.ndarray, metadata: DatasetMetadata) -> str | None:
    """The one-line problem with `array`'s token values, or None when every value fits the vocabulary.

    Labels may also hold ignore_label_id (collation maps it to -100), even where it lies outside the vocabulary.
    """
    vocab, ignore = metadata.vocab_size, metadata.ignore_label_id
    span = token_range(array)
    if span is not None and not (0 <= span[0] and span[1] < vocab) and name == "labels" and ignore is not None:
        span = token_range(array, exclude=ignore)
    if span is None or (0 <= span[0] and span[1] < vocab):
        return None
    lo, hi = span
    return f"{name} hold token {hi} >= vocab_size {vocab}" if hi >= vocab else f"{name} hold negative token {lo}"


def _problems(arrays: dict[str, np.ndarray], metadata: DatasetMetadata, full: bool) -> list[tuple[str | None, str]]:
    """(field the problem is in, or None for a cross-array one; message) for `check_arrays`."""
    errors: list[tuple[str | None, str]] = []
    missing = [n for n in FIELDS if n not in arrays]
    if missing:
        return [(None, f"missing arrays: {', '.join(missing)}")]
    inp, lab = arrays["inputs"], arrays["labels"]
    pid, pidx, gidx = arrays["puzzle_identifiers"], arrays["puzzle_indices"], arrays["group_indices"]
    for name in FIELDS:
        # Any integer dtype: the reference's own augmented Sudoku builder writes int64 inputs and labels.
        if not np.issubdtype(arrays[name].dtype, np.integer):
            errors.append((name, f"{name} has dtype {arrays[name].dtype}, expected an integer dtype"))
    if errors:
        return errors
    if inp.ndim != 2 or inp.shape[1] != metadata.seq_len:
        errors.append(("inputs", f"inputs shape {inp.shape} does not match seq_len {metadata.seq_len}"))
    if lab.shape != inp.shape:
        errors.append(("labels", f"labels shape {lab.shape} differs from inputs shape {inp.shape}"))
    if pidx.ndim != 1 or len(pidx) != len(pid) + 1:
        errors.append(("puzzle_indices",
                       f"puzzle_indices has {len(pidx)} entries, expected num_puzzles + 1 = {len(pid) + 1}"))
    elif pidx[0] != 0 or pidx[-1] != len(inp) or np.any(np.diff(pidx) < 0):
        errors.append(("puzzle_indices",
                       "puzzle_indices must start at 0, be non-decreasing and end at the number of examples"))
    if gidx.ndim != 1 or len(gidx) < 1 or gidx[0] != 0 or gidx[-1] != len(pid) or np.any(np.diff(gidx) < 0):
        errors.append(("group_indices",
                       "group_indices must start at 0, be non-decreasing and end at the number of puzzles"))
    elif len(gidx) - 1 != metadata.total_groups:
        errors.append(("group_indices",
                       f"{len(gidx) - 1} groups on disk but dataset.json says total_groups={metadata.total_groups}"))
    if full and not errors:
        for name in TOKEN_FIELDS:
            problem = _bad_tokens(name, arrays[name], metadata)
            if problem:
                errors.append((name, problem))
        if len(pid) and (int(pid.min()) < 0 or int(pid.max()) >= metadata.num_puzzle_identifiers):
            errors.append(("puzzle_identifiers", f"puzzle_identifiers outside [0, {metadata.num_puzzle_identifiers})"))
    return errors


def check_arrays(arrays: dict[str, np.ndarray], metadata: DatasetMetadata, full: bool = True) -> list[str]:
    """Structural checks (shapes, integer dtypes, index arrays); `full` also checks that every token fits
    the vocabulary and every identifier the table (one pass over inputs and labels, fine on a memory map)."""
    return [message for _, message in _problems(arrays, metadata, full)]


def validate_dataset(data_path: Path, splits: tuple[str, ...] = ("train", "test"), full: bool = False) -> None:
    """Raise DatasetError with one line naming the file, the problem and the fix; cheap unless `full`."""
    data_path = Path(data_path)
    if not data_path.is_dir():
        what = "is a file, not a dataset directory" if data_path.exists() else "does not exist"
        raise DatasetError(f"dataset directory {data_path} {what}: build it with hrm-data build ... "
                           f"or set data_path to a built dataset")
    for split in splits:
        split_dir = data_path / split
        meta = read_metadata(split_dir)
        for set_name in meta.sets:
            problems = _problems(load_split(split_dir, set_name), meta, full=full)
            if not problems:
                continue
            name, message = problems[0]
            if name is None:
                raise DatasetError(f"{split_dir} ({set_name}): {message}; rebuild the dataset")
            where = split_dir / f"{set_name}__{name}.npy"
            fix = "rebuild the dataset"
            if name in TOKEN_FIELDS and ">= vocab_size" in message:
                fix = f"rebuild the dataset, or fix vocab_size in {split_dir / 'dataset.json'} if it is wrong"
            raise DatasetError(f"{where}: {message}; {fix}")


def read_build_info(out_dir: Path) -> dict | None:
    path = Path(out_dir) / BUILD_INFO
    return json.loads(path.read_text()) if path.is_file() else None


MIN_FREE_BYTES = 64 << 20  # a build refuses to start with less free space than this (plus its own estimate)


class BuildInterrupted(KeyboardInterrupt):
    """SIGTERM / SIGHUP during a build: unwinds like Ctrl-C, so the temporary directory is removed."""


def ensure_free(where: Path, need: int = 0) -> None:
    """DatasetError (one line) when the file system of `where` has less than `need` bytes (+ a margin) free."""
    free = shutil.disk_usage(where).free
    if free < need + MIN_FREE_BYTES:
        raise DatasetError(f"not enough disk space under {where}: the build needs about "
                           f"{(need + MIN_FREE_BYTES) / 1e9:.2f} GB and {free / 1e9:.2f} GB are free; fix: free "
                           f"some space (df -h {where}) or choose another --output-dir")


def preallocate(path: Path) -> None:
    """Reserve a file's blocks now (it was just created at full size, sparse): a full disk then fails here with
    ENOSPC, not later with SIGBUS when a memory map writes into a hole."""
    with open(path, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        if size and hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(f.fileno(), 0, size)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    return  # a file system without fallocate: keep the sparse file
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_builds(out_dir: Path) -> tuple[list[Path], list[Path]]:
    """(temp dirs of `out_dir` left by builds that were killed, those of builds still running)."""
    out_dir = Path(out_dir)
    dead, alive = [], []
    for p in out_dir.parent.glob(f".{out_dir.name}.tmp-*") if out_dir.parent.is_dir() else []:
        tail = p.name.rsplit("-", 1)[-1]
        if not tail.isdigit():
            continue
        (alive if int(tail) != os.getpid() and _pid_alive(int(tail)) else dead).append(p)
    return dead, alive


@contextlib.contextmanager
def _signals_unwind() -> Iterator[None]:
    """SIGTERM and SIGHUP raise BuildInterrupted while building (main thread only)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise BuildInterrupted(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


@contextlib.contextmanager
def building(out_dir: Path, build_info: dict, need_bytes: int = 0) -> Iterator[Path | None]:
    """Yield a temporary directory to build into, renamed to `out_dir` on success.

    Yields None when `out_dir` already holds the same build (same `build_info`), so builders can skip.
    Raises DatasetError when it holds something else, when another build of it is running, or when the disk has
    less than `need_bytes` (+ a margin) free. The temp dir is removed on any failure, Ctrl-C, SIGTERM and SIGHUP
    included; one left by a SIGKILL is removed by the next build of the same `out_dir` (with a note). A full disk
    (ENOSPC) becomes one DatasetError line.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        existing = read_build_info(out_dir)
        if existing == json.loads(json.dumps(build_info)):
            yield None
            return
        what = "a different dataset" if existing else "files that are not an hrm-data build"
        raise DatasetError(f"{out_dir} already holds {what}: choose another --output-dir or remove it")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DatasetError(f"cannot create {out_dir.parent} ({e.strerror}): choose a writable --output-dir") from None
    if not os.access(out_dir.parent, os.W_OK | os.X_OK):
        raise DatasetError(f"{out_dir.parent} is not writable: choose a writable --output-dir")
    dead, alive = stale_builds(out_dir)
    if alive:
        raise DatasetError(f"another build (pid {alive[0].name.rsplit('-', 1)[-1]}) is writing {out_dir}: wait for "
                           f"it to finish, or stop it and run this again")
    for p in dead:
        shutil.rmtree(p, ignore_errors=True)
        print(f"hrm-data: note: removed {p}, left by a build that was killed", file=sys.stderr)
    ensure_free(out_dir.parent, need_bytes)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    tmp.mkdir()
    try:
        with _signals_unwind():
            yield tmp
            atomic_write_json(tmp / BUILD_INFO, build_info)
            os.replace(tmp, out_dir)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise DatasetError(f"no space left on the device while building {out_dir} (the partial build was "
                               f"removed); fix: free some space (df -h {out_dir.parent}) or choose another "
                               f"--output-dir") from None
        raise
