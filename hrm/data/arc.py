"""ARC builder (`hrm-data build arc`): ARC-AGI-1 + ConceptARC (`--preset arc1`) or ARC-AGI-2 (`arc2`).

Same dataset as the reference (split rule, dihedral + colour augmentation deduplicated by task
content, translation of train examples, EOS marking, shared identifiers across splits), with three
differences that only remove machine dependence: tasks are read in sorted order so identifiers do
not depend on directory listing order; every task draws from its own seeded stream, so the result
does not depend on the number of worker processes; and a content hash of the raw JSON is recorded.

The full arc1 build is ~3.6 million examples (6.5 GB). It runs in two passes over the tasks, both
spread over all cores: pass 1 draws and deduplicates each task's variants (small results), which
fixes every task's rows; pass 2 renders each task's block of rows and writes it straight to its
place in the final .npy files with pwrite, so no process ever holds more than one task's rows.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from hrm.data.augment import augmented_name, dihedral, transformed_shape
from hrm.data.format import (
    IDENTIFIERS,
    DatasetError,
    DatasetMetadata,
    atomic_write_json,
    building,
    check_arrays,
    write_array,
)

GRID = 30
SEQ_LEN = GRID * GRID
PAD, EOS, COLOUR0 = 0, 1, 2  # colour c is token c + 2
VOCAB_SIZE = 12
MAX_TRIALS_PER_AUG = 5

# Raw repositories, at the commits the reference pins as submodules (https: the reference's ssh URLs
# need keys).
REPOS = {
    "ARC-AGI": ("https://github.com/fchollet/ARC-AGI.git", "399030444e0ab0cc8b4e199870fb20b863846f34"),
    "ConceptARC": ("https://github.com/victorvikram/ConceptARC.git",
                   "b22ef526b4656679816b7811e78f55cc24d736d7"),
    "ARC-AGI-2": ("https://github.com/arcprize/ARC-AGI-2.git", "f3283f727488ad98fe575ea6a5ac981e4a188e49"),
}
PRESETS = {
    "arc1": {"dataset_dirs": ("ARC-AGI/data", "ConceptARC/corpus"), "output": "data/arc-aug-{n}"},
    "arc2": {"dataset_dirs": ("ARC-AGI-2/data",), "output": "data/arc-2-aug-{n}"},
}


@dataclass
class ArcTask:
    """One task file. `evaluation` tasks send their test pairs to the test split."""

    name: str
    key: str  # "<subdir>/<name>": stable across machines, seeds the task's random streams
    path: str
    evaluation: bool
    train: list[tuple[np.ndarray, np.ndarray]]
    test: list[tuple[np.ndarray, np.ndarray]]

    def split_pairs(self, split: str) -> list[tuple[np.ndarray, np.ndarray]]:
        if split == "train":
            return self.train if self.evaluation else self.train + self.test
        return self.test if self.evaluation else []


# ---------------------------------------------------------------------------------------------------
# Reading tasks


def _grid(value, where: str) -> np.ndarray:
    if not isinstance(value, list) or not value or not all(isinstance(r, list) for r in value):
        raise DatasetError(f"{where} is not a non-empty list of rows")
    h, w = len(value), len(value[0])
    if w == 0 or any(len(r) != w for r in value):
        raise DatasetError(f"{where} has rows of different or zero length")
    if h > GRID or w > GRID:
        raise DatasetError(f"{where} is {h}x{w}, larger than {GRID}x{GRID}")
    try:
        arr = np.array(value, dtype=np.int64)
    except (TypeError, ValueError):
        raise DatasetError(f"{where} holds values that are not integers") from None
    if arr.min() < 0 or arr.max() > 9:
        worst = int(arr.max() if arr.max() > 9 else arr.min())
        raise DatasetError(f"{where} holds colour {worst}, outside 0..9")
    return arr.astype(np.uint8)


def parse_task(path: Path, data: bytes, key: str, evaluation: bool) -> ArcTask:
    """Validate one task JSON; errors name the file and the pair (e.g. `train[2].output`)."""
    try:
        obj = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, dict) or not all(isinstance(obj.get(k), list) for k in ("train", "test")):
        raise DatasetError(f"{path}: expected an object with 'train' and 'test' lists of pairs")
    pairs = {}
    for part in ("train", "test"):
        pairs[part] = []
        for i, pair in enumerate(obj[part]):
            if not isinstance(pair, dict) or "input" not in pair or "output" not in pair:
                raise DatasetError(f"{path}: {part}[{i}] needs 'input' and 'output' grids")
            pairs[part].append((_grid(pair["input"], f"{path}: {part}[{i}].input"),
                                _grid(pair["output"], f"{path}: {part}[{i}].output")))
    return ArcTask(name=path.stem, key=key, path=str(path), evaluation=evaluation,
                   train=pairs["train"], test=pairs["test"])


def load_tasks(dataset_dirs: list[Path], skip_bad: bool = False) -> tuple[list[ArcTask], str, int]:
    """Read every `<dataset_dir>/<subdir>/*.json` in sorted order, as the reference's split rule sees them.

    Returns (tasks, sha256 of the names and bytes of every file read, number of bad files skipped).
    """
    digest = hashlib.sha256()
    tasks: list[ArcTask] = []
    seen: dict[str, str] = {}
    bad = 0
    for d in dataset_dirs:
        d = Path(d)
        if not d.is_dir():
            raise DatasetError(f"dataset dir {d} does not exist: pass --raw-dir with ARC-AGI/, ConceptARC/, "
                               f"ARC-AGI-2/ inside, or drop it to clone the repositories")
        subdirs = sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
        for sub in subdirs:
            for path in sorted(sub.glob("*.json")):
                data = path.read_bytes()
                key = f"{sub.name}/{path.stem}"
                digest.update(f"{key}\0{len(data)}\0".encode())
                digest.update(data)
                try:
                    task = parse_task(path, data, key, evaluation=sub.name == "evaluation")
                except DatasetError as e:
                    if not skip_bad:
                        raise DatasetError(f"{e}; fix or remove the file, or pass --skip-bad") from None
                    bad += 1
                    continue
                if task.name in seen:
                    raise DatasetError(f"task id {task.name} appears twice ({seen[task.name]} and {path}): "
                                       f"identifiers must be unique, drop one of the dataset dirs")
                seen[task.name] = str(path)
                tasks.append(task)
    if not tasks:
        raise DatasetError(f"no ARC task files under {', '.join(map(str, dataset_dirs))}: expected "
                           f"<dir>/<subdir>/*.json (e.g. ARC-AGI/data/training/*.json)")
    return tasks, digest.hexdigest(), bad


# ---------------------------------------------------------------------------------------------------
# Pass 1: variants


def _task_rng(seed: int, task: ArcTask, stream: int) -> np.random.Generator:
    key = int.from_bytes(hashlib.sha256(task.key.encode()).digest()[:8], "little")
    return np.random.default_rng(np.random.SeedSequence([seed, key, stream]))


def _render_grids(grid: np.ndarray, maps: np.ndarray, t: int) -> np.ndarray:
    """Colour-map then transform one grid for k variants: [k, h', w']."""
    return np.ascontiguousarray(dihedral(maps[:, grid], t))


def task_variants(task: ArcTask, num_aug: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The original plus up to `num_aug` distinct augmentations: (dihedral ids [n], colour maps [n, 10]).

    Trials (random dihedral, colour map fixing 0) are drawn up to 5 * num_aug times; a trial is kept
    when the transformed task (as a multiset of its pairs) differs from every kept one.
    """
    ts = [np.zeros(1, dtype=np.uint8)]
    maps = [np.arange(10, dtype=np.uint8)[None]]
    if num_aug > 0:
        rng = _task_rng(seed, task, 0)
        n = MAX_TRIALS_PER_AUG * num_aug
        trial_t = rng.integers(0, 8, size=n).astype(np.uint8)
        trial_maps = np.zeros((n, 10), dtype=np.uint8)
        trial_maps[:, 1:] = rng.permuted(np.tile(np.arange(1, 10, dtype=np.uint8), (n, 1)), axis=1)
        pairs = task.train + task.test
        seen = {_variant_key(pairs, ts[0], maps[0])[0]}
        kept = start = 0
        while start < n and kept < num_aug:
            # Keys cost most of the build's first pass: ask for a few more than still missing.
            sl = slice(start, min(n, start + (num_aug - kept) + (num_aug - kept) // 8 + 16))
            keys = _variant_key(pairs, trial_t[sl], trial_maps[sl])
            take = []
            for i, k in enumerate(keys):
                if k not in seen:
                    seen.add(k)
                    take.append(start + i)
                    kept += 1
                    if kept == num_aug:
                        break
            ts.append(trial_t[take])
            maps.append(trial_maps[take])
            start = sl.stop
    return np.concatenate(ts), np.concatenate(maps)


def _variant_key(pairs, ts: np.ndarray, maps: np.ndarray) -> list[bytes]:
    """Content digest of each variant: sorted per-pair (shape, bytes) so pair order does not matter."""
    ts = np.atleast_1d(ts)
    maps = maps.reshape(-1, 10)
    per_variant: list[list[bytes]] = [[] for _ in range(len(ts))]
    for t in np.unique(ts):
        idx = np.flatnonzero(ts == t)
        for inp, out in pairs:
            a = _render_grids(inp, maps[idx], int(t)).reshape(len(idx), -1)
            b = _render_grids(out, maps[idx], int(t)).reshape(len(idx), -1)
            head = bytes(transformed_shape(inp.shape, int(t)) + transformed_shape(out.shape, int(t)))
            for j, v in enumerate(idx):
                per_variant[v].append(head + a[j].tobytes() + b[j].tobytes())
    return [hashlib.sha256(b"\0".join(sorted(parts))).digest() for parts in per_variant]


# ---------------------------------------------------------------------------------------------------
# Pass 2: rendering rows


def render_split(task: ArcTask, split: str, ts: np.ndarray, maps: np.ndarray,
                 seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of one task in one split: (inputs, labels) uint8 [n_variants * n_examples, 900], variant-major.

    Train rows get a random offset shared by input and output, except one random example per
    variant kept at the origin; test rows always sit at the origin (ARC voting crops from there).
    EOS (token 1) marks the row under and the column right of each grid; the corner stays PAD.
    """
    pairs = task.split_pairs(split)
    n_var, n_ex = len(ts), len(pairs)
    inputs = np.zeros((n_var, n_ex, SEQ_LEN), dtype=np.uint8)
    labels = np.zeros((n_var, n_ex, SEQ_LEN), dtype=np.uint8)
    if n_ex == 0:
        return inputs.reshape(0, SEQ_LEN), labels.reshape(0, SEQ_LEN)
    offsets = np.zeros((n_var, n_ex, 2), dtype=np.int64)
    if split == "train":
        rng = _task_rng(seed, task, 1)
        u = rng.random((n_var, n_ex, 2))
        keep = rng.integers(0, n_ex, size=n_var)
    for t in np.unique(ts):
        t = int(t)
        idx = np.flatnonzero(ts == t)
        for e, (inp, out) in enumerate(pairs):
            (hi, wi), (ho, wo) = transformed_shape(inp.shape, t), transformed_shape(out.shape, t)
            if split == "train":
                room = np.array([GRID - max(hi, ho) + 1, GRID - max(wi, wo) + 1])
                off = np.floor(u[idx, e] * room).astype(np.int64)
                off[keep[idx] == e] = 0
                offsets[idx, e] = off
            off = offsets[idx, e]
            inputs[idx, e] = _stamp(_render_grids(inp, maps[idx], t), off)
            labels[idx, e] = _stamp(_render_grids(out, maps[idx], t), off)
    return inputs.reshape(-1, SEQ_LEN), labels.reshape(-1, SEQ_LEN)


def _stamp(grids: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Place k grids [k, h, w] with their EOS row/column at per-grid offsets on 30x30 canvases -> [k, 900]."""
    k, h, w = grids.shape
    stamp = np.zeros((k, h + 1, w + 1), dtype=np.uint8)
    stamp[:, :h, :w] = grids + COLOUR0
    stamp[:, h, :w] = EOS
    stamp[:, :h, w] = EOS
    canvas = np.zeros((k, GRID + 1, GRID + 1), dtype=np.uint8)  # one spare row/col takes clipped EOS
    if not offsets.any():
        canvas[:, : h + 1, : w + 1] = stamp
    else:
        rows = offsets[:, 0, None, None] + np.arange(h + 1)[None, :, None]
        cols = offsets[:, 1, None, None] + np.arange(w + 1)[None, None, :]
        canvas[np.arange(k)[:, None, None], rows, cols] = stamp
    return canvas[:, :GRID, :GRID].reshape(k, SEQ_LEN)


# ---------------------------------------------------------------------------------------------------
# Worker plumbing (fork: workers inherit the task list, so only indices and small arrays travel)

_TASKS: list[ArcTask] = []
_FDS: dict[str, int] = {}


def _variants_job(args: tuple[int, int, int]) -> tuple[int, np.ndarray, np.ndarray]:
    i, num_aug, seed = args
    ts, maps = task_variants(_TASKS[i], num_aug, seed)
    return i, ts, maps


def _write_job(args) -> int:
    """Render one task's rows for both splits and pwrite them at their row offsets; returns rows written."""
    i, ts, maps, seed, targets = args
    written = 0
    for split, (paths, header, row0) in targets.items():
        inputs, labels = render_split(_TASKS[i], split, ts, maps, seed)
        for path, rows in zip(paths, (inputs, labels)):
            fd = _FDS.get(path)
            if fd is None:
                fd = _FDS[path] = os.open(path, os.O_WRONLY)
            os.pwrite(fd, rows.tobytes(), header + row0 * SEQ_LEN)
        written += len(inputs)
    return written


def _default_signals() -> None:
    """A forked worker must not inherit the build's SIGTERM handler (format.building): Pool.terminate() stops
    its workers with SIGTERM, and a worker that raises instead of exiting can leave the pool's join hanging."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle


def _run(func, jobs: list, workers: int, ordered: bool = False):
    if workers <= 1:
        yield from map(func, jobs)
        return
    with multiprocessing.get_context("fork").Pool(workers, initializer=_default_signals) as pool:
        yield from (pool.imap if ordered else pool.imap_unordered)(func, jobs, chunksize=1)


def _close_fds() -> None:
    for fd in _FDS.values():
        os.close(fd)
    _FDS.clear()


# ---------------------------------------------------------------------------------------------------
# Build


@dataclass
class _SplitPlan:
    groups: list[int]  # task indices, in output order
    rows: dict[int, int]  # task index -> first row of its group
    examples: int


def build_arc(dataset_dirs: list[str | Path], output_dir: str | Path, num_aug: int = 1000, seed: int = 42,
              workers: int | None = None, skip_bad: bool = False, quiet: bool = False) -> Path:
    """Build the train/test splits and identifiers.json; returns the output directory."""
    global _TASKS
    say = (lambda *a: None) if quiet else print
    if num_aug < 0:
        raise DatasetError(f"--num-aug must be >= 0, got {num_aug}")
    workers = workers or len(os.sched_getaffinity(0))
    t0 = time.perf_counter()
    tasks, content_sha, bad = load_tasks([Path(d) for d in dataset_dirs], skip_bad)
    if bad:
        say(f"skipped {bad} bad task files (--skip-bad)")
    build_info = {"builder": "arc", "format": 1, "content_sha256": content_sha, "num_aug": num_aug,
                  "seed": seed,
                  "dataset_dirs": [f"{Path(d).parent.name}/{Path(d).name}" for d in dataset_dirs],
                  "skipped_bad_files": bad}
    output_dir = Path(output_dir)
    with building(output_dir, build_info) as tmp:
        if tmp is None:
            say(f"{output_dir} already holds this build; nothing to do")
            return output_dir
        _TASKS = tasks
        try:
            _build_into(tmp, tasks, num_aug, seed, workers, content_sha, say, t0)
        finally:
            _TASKS = []
    say(f"wrote {output_dir} in {time.perf_counter() - t0:.1f} s")
    return output_dir


def _build_into(tmp: Path, tasks: list[ArcTask], num_aug: int, seed: int, workers: int, content_sha: str,
                say, t0: float) -> None:
    # Pass 1: variants per task (expensive tasks first, for load balance).
    def cost(i: int) -> int:
        return sum(a.size + b.size for a, b in tasks[i].train + tasks[i].test)

    order = sorted(range(len(tasks)), key=cost, reverse=True)
    variants: list = [None] * len(tasks)
    for i, ts, maps in _run(_variants_job, [(i, num_aug, seed) for i in order], workers):
        variants[i] = (ts, maps)
    say(f"variants drawn for {len(tasks)} tasks in {time.perf_counter() - t0:.1f} s")

    # Layout: groups and their first rows (train groups first, then test, in sorted task order).
    plans = {}
    for split in ("train", "test"):
        groups = [i for i, task in enumerate(tasks) if task.split_pairs(split)]
        rows, total = {}, 0
        for i in groups:
            rows[i] = total
            total += len(variants[i][0]) * len(tasks[i].split_pairs(split))
        plans[split] = _SplitPlan(groups, rows, total)
    need = 2 * SEQ_LEN * sum(p.examples for p in plans.values())
    _check_disk(tmp, need)

    # Pass 2: preallocate the .npy files, then every worker pwrites its tasks' rows in place.
    files = {}
    for split, plan in plans.items():
        (tmp / split).mkdir()
        paths = []
        for field in ("inputs", "labels"):
            path = tmp / split / f"all__{field}.npy"
            mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(plan.examples, SEQ_LEN))
            header = mm.offset
            del mm
            paths.append(str(path))
        files[split] = (paths, header)
    jobs = []
    for i in order:
        targets = {}
        for split, plan in plans.items():
            if tasks[i].split_pairs(split):
                targets[split] = (*files[split], plan.rows[i])
        jobs.append((i, *variants[i], seed, targets))
    written = 0
    try:
        for n in _run(_write_job, jobs, workers):
            written += n
    finally:
        _close_fds()
    expected = sum(p.examples for p in plans.values())
    if written != expected:
        raise DatasetError(f"internal error: wrote {written} rows, planned {expected}; please report it")
    say(f"rows rendered and written in {time.perf_counter() - t0:.1f} s")

    # Identifiers in the same order; built only now so the forked workers never carry them.
    names = ["<blank>"]
    ids: dict[str, int] = {}
    for split in ("train", "test"):
        for i in plans[split].groups:
            for name in _variant_names(tasks[i].name, *variants[i]):
                if name not in ids:
                    ids[name] = len(names)
                    names.append(name)
    for split, plan in plans.items():
        _write_index_arrays(tmp / split, tasks, plan, split, variants, ids, len(names), content_sha)
    atomic_write_json(tmp / IDENTIFIERS, names)


def _variant_names(task: str, ts: np.ndarray, maps: np.ndarray) -> list[str]:
    return [task] + [augmented_name(task, int(t), m) for t, m in zip(ts[1:], maps[1:])]


def _write_index_arrays(split_dir: Path, tasks, plan: _SplitPlan, split: str, variants, ids, num_ids: int,
                        content_sha: str) -> None:
    puzzle_ids, puzzle_sizes, group_sizes = [], [], []
    for i in plan.groups:
        ts, maps = variants[i]
        names = _variant_names(tasks[i].name, ts, maps)
        puzzle_ids.extend(ids[n] for n in names)
        puzzle_sizes.extend([len(tasks[i].split_pairs(split))] * len(names))
        group_sizes.append(len(names))
    arrays = {
        "puzzle_identifiers": np.asarray(puzzle_ids, dtype=np.int32),
        "puzzle_indices": np.concatenate([[0], np.cumsum(puzzle_sizes)]).astype(np.int32),
        "group_indices": np.concatenate([[0], np.cumsum(group_sizes)]).astype(np.int32),
    }
    n_puzzles = len(puzzle_ids)
    metadata = DatasetMetadata(pad_id=PAD, ignore_label_id=PAD, blank_identifier_id=0, vocab_size=VOCAB_SIZE,
                               seq_len=SEQ_LEN, num_puzzle_identifiers=num_ids, total_groups=len(plan.groups),
                               mean_puzzle_examples=plan.examples / max(1, n_puzzles), sets=["all"])
    for name, array in arrays.items():
        write_array(split_dir / f"all__{name}.npy", array)
    on_disk = {name: np.load(split_dir / f"all__{name}.npy", mmap_mode="r") for name in ("inputs", "labels")}
    errors = check_arrays({**arrays, **on_disk}, metadata, full=False)
    if errors:
        raise DatasetError(f"internal error in {split_dir}: {errors[0]}; please report it")
    atomic_write_json(split_dir / "dataset.json",
                      {**asdict(metadata), "total_puzzles": n_puzzles, "content_sha256": content_sha})


def _check_disk(where: Path, need: int) -> None:
    free = shutil.disk_usage(where).free
    margin = 64 << 20
    if free < need + margin:
        raise DatasetError(f"not enough disk space under {where.parent}: the build needs {need / 1e9:.2f} GB"
                           f" and {free / 1e9:.2f} GB are free; free some space, choose another "
                           f"--output-dir or lower --num-aug")


# ---------------------------------------------------------------------------------------------------
# Sources and CLI


def resolve_dataset_dirs(preset: str | None, dataset_dirs: list[str] | None, raw_dir: str | None,
                         clone_dir: str = "data/raw-data") -> list[Path]:
    """Explicit --dataset-dirs win; otherwise the preset's dirs under --raw-dir, or under fresh clones."""
    if dataset_dirs:
        return [Path(d) for d in dataset_dirs]
    preset = preset or "arc1"
    if preset not in PRESETS:
        raise DatasetError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    rel = PRESETS[preset]["dataset_dirs"]
    if raw_dir is None:
        from hrm.data.sources import git_checkout

        for repo in sorted({r.split("/")[0] for r in rel}):
            url, commit = REPOS[repo]
            git_checkout(url, commit, Path(clone_dir) / repo)
        raw_dir = clone_dir
    return [Path(raw_dir) / r for r in rel]


def register_build(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("arc", help="ARC-AGI-1 + ConceptARC (arc1) or ARC-AGI-2 (arc2), augmented")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None, help="which raw data (default arc1)")
    p.add_argument("--dataset-dirs", nargs="+", default=None,
                   help="explicit dirs holding <subdir>/*.json (overrides --preset)")
    p.add_argument("--raw-dir", default=None,
                   help="local folder with ARC-AGI/, ConceptARC/, ARC-AGI-2/ "
                        "(default: git clone at the pinned commits)")
    p.add_argument("--clone-dir", default="data/raw-data", help="where to clone when there is no --raw-dir")
    p.add_argument("--output-dir", default=None,
                   help="default data/arc-aug-N (arc1) or data/arc-2-aug-N (arc2)")
    p.add_argument("--num-aug", type=int, default=1000)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--skip-bad", action="store_true", help="skip malformed task files instead of stopping")
    p.set_defaults(func=_build_cmd)


def _build_cmd(args: argparse.Namespace) -> int:
    dirs = resolve_dataset_dirs(args.preset, args.dataset_dirs, args.raw_dir, args.clone_dir)
    out = args.output_dir or PRESETS[args.preset or "arc1"]["output"].format(n=args.num_aug)
    build_arc(dirs, out, args.num_aug, args.seed, args.workers, args.skip_bad)
    return 0
