"""Maze-Hard builder (`hrm-data build maze`) and offline generator (`hrm-data generate maze`).

The builder reproduces the reference's arrays byte for byte: the charset "# SGo" maps to tokens 1..5
(0 is PAD), one puzzle and one example per maze, optional 8-fold dihedral augmentation of train.
The generator writes new 30x30 mazes in the official CSV format. Its labels follow the tie-break
that reproduces every official label: BFS from S expanding (row+1), (col-1), (col+1), (row-1), each
cell's parent being its first discoverer. That path is the lexicographically smallest shortest path
in this move order, i.e. the greedy walk from S along the distance-to-G that takes the first
decreasing move, which is what we compute (it vectorises over a batch of mazes).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
from dataclasses import asdict
from pathlib import Path

import numpy as np

from hrm.data.augment import NUM_DIHEDRAL, dihedral
from hrm.data.format import (
    DatasetError,
    DatasetMetadata,
    atomic_write_bytes,
    atomic_write_json,
    building,
    write_split,
)

CHARSET = "# SGo"
WALL, OPEN, START, GOAL, PATH = (ord(c) for c in CHARSET)
DEFAULT_SOURCE = "sapientinc/maze-30x30-hard-1k"
HEADER = ("source", "question", "answer", "rating")
# Move order of the official labels' BFS: down, left, right, up.
MOVES = ((1, 0), (0, -1), (0, 1), (-1, 0))
MIN_PATH_CELLS = 108  # the official mazes' shortest path has 108..152 'o' cells

_TOKEN = np.zeros(256, dtype=np.uint8)
for _i, _c in enumerate(CHARSET):
    _TOKEN[ord(_c)] = _i + 1


# ---------------------------------------------------------------------------------------------------
# Reading the CSV


def read_maze_csv(path: Path, skip_bad: bool = False) -> tuple[np.ndarray, np.ndarray, int]:
    """Return (questions, answers) as uint8 character arrays [n, side*side] and the bad-row count.

    Every row must hold two strings of the same perfect-square length over "# SGo". With
    `skip_bad` a bad row is counted and dropped; otherwise the first one raises DatasetError.
    """
    path = Path(path)
    questions, answers, bad = [], [], 0
    length = None
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or len(header) != 4:
            raise DatasetError(f"{path}: expected a header with 4 columns {','.join(HEADER)}, "
                               f"got {header!r}; is this a maze CSV?")
        for row in reader:
            problem, q, a = _check_row(row, length)
            if problem is None and length is None:
                length = len(q)
            if problem is not None:
                if not skip_bad:
                    raise DatasetError(f"{path} line {reader.line_num}: {problem}; "
                                       f"fix or remove the row, or pass --skip-bad")
                bad += 1
                continue
            questions.append(q.encode("ascii"))
            answers.append(a.encode("ascii"))
    if not questions:
        raise DatasetError(f"{path}: no usable maze rows; check the file")
    q_arr = np.frombuffer(b"".join(questions), dtype=np.uint8).reshape(len(questions), length)
    a_arr = np.frombuffer(b"".join(answers), dtype=np.uint8).reshape(len(answers), length)
    return q_arr, a_arr, bad


def _check_row(row: list[str], length: int | None) -> tuple[str | None, str, str]:
    if len(row) != 4:
        return f"expected 4 fields, got {len(row)}", "", ""
    _, q, a, _ = row
    for name, text in (("question", q), ("answer", a)):
        side = int(round(len(text) ** 0.5))
        if length is not None and len(text) != length:
            return f"{name} has {len(text)} characters, expected {length} like the rows before it", q, a
        if side * side != len(text) or side == 0:
            return f"{name} has {len(text)} characters, not a square grid", q, a
        bad = set(text) - set(CHARSET)
        if bad:
            return f"{name} holds {''.join(sorted(bad))!r}; only the characters {CHARSET!r} are allowed", q, a
    if len(q) != len(a):
        return f"question and answer lengths differ ({len(q)} vs {len(a)})", q, a
    return None, q, a


def encode(chars: np.ndarray) -> np.ndarray:
    """Characters "# SGo" -> tokens 1..5 (uint8)."""
    return _TOKEN[chars]


# ---------------------------------------------------------------------------------------------------
# Building


def build_maze(source: str | Path = DEFAULT_SOURCE, output_dir: str | Path = "data/maze-30x30-hard-1k",
               subsample_size: int | None = None, aug: bool = False, seed: int = 0,
               skip_bad: bool = False) -> Path:
    """Build train/test splits in the reference layout; returns the output directory.

    `subsample_size` draws that many train mazes without replacement (seeded; the reference's draw
    was not); `aug` turns each train maze into a group of its 8 dihedral transforms.
    """
    from hrm.data.sources import resolve_csv_source

    src = Path(resolve_csv_source(str(source)))
    splits = {}
    digest = hashlib.sha256()
    bad_total = 0
    for split in ("train", "test"):
        path = src / f"{split}.csv"
        digest.update(path.read_bytes())
        q, a, bad = read_maze_csv(path, skip_bad)
        bad_total += bad
        splits[split] = (encode(q), encode(a))
    if bad_total:
        print(f"skipped {bad_total} bad rows (--skip-bad)")
    build_info = {"builder": "maze", "format": 1, "source_sha256": digest.hexdigest(),
                  "subsample_size": subsample_size, "aug": bool(aug),
                  "seed": seed if subsample_size else None, "skipped_bad_rows": bad_total}
    output_dir = Path(output_dir)
    with building(output_dir, build_info) as tmp:
        if tmp is None:
            print(f"{output_dir} already holds this build; nothing to do")
            return output_dir
        for split, (inp, lab) in splits.items():
            if split == "train" and subsample_size is not None:
                if not 0 < subsample_size <= len(inp):
                    raise DatasetError(f"--subsample-size {subsample_size} is outside 1..{len(inp)} "
                                       f"(the train split has {len(inp)} mazes)")
                idx = np.sort(np.random.default_rng(seed).choice(len(inp), subsample_size, replace=False))
                inp, lab = inp[idx], lab[idx]
            per_group = NUM_DIHEDRAL if (aug and split == "train") else 1
            if per_group > 1:
                inp, lab = _dihedral_stack(inp), _dihedral_stack(lab)
            _write_single_example_split(tmp / split, inp, lab, per_group)
        atomic_write_json(tmp / "identifiers.json", ["<blank>"])
    print(f"wrote {output_dir}")
    return output_dir


def _dihedral_stack(flat: np.ndarray) -> np.ndarray:
    """[n, s*s] -> [n*8, s*s]: each maze followed by its transforms 1..7 (one group per maze)."""
    n, length = flat.shape
    side = int(round(length ** 0.5))
    grids = flat.reshape(n, side, side)
    out = np.stack([dihedral(grids, t) for t in range(NUM_DIHEDRAL)], axis=1)
    return np.ascontiguousarray(out).reshape(n * NUM_DIHEDRAL, length)


def _write_single_example_split(split_dir: Path, inputs: np.ndarray, labels: np.ndarray,
                                per_group: int) -> None:
    """One example per puzzle, `per_group` puzzles per group, every identifier the blank 0."""
    n = len(inputs)
    metadata = DatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0,
                               vocab_size=len(CHARSET) + 1, seq_len=inputs.shape[1], num_puzzle_identifiers=1,
                               total_groups=n // per_group, mean_puzzle_examples=1.0, sets=["all"])
    arrays = {
        "inputs": inputs,
        "labels": labels,
        "puzzle_identifiers": np.zeros(n, dtype=np.int32),
        "puzzle_indices": np.arange(n + 1, dtype=np.int32),
        "group_indices": np.arange(0, n + 1, per_group, dtype=np.int32),
    }
    write_split(split_dir, metadata, arrays)
    # The reference (TRM's common.py) also records total_puzzles; keep the file's keys identical.
    atomic_write_json(split_dir / "dataset.json", {**asdict(metadata), "total_puzzles": n})


# ---------------------------------------------------------------------------------------------------
# Labelling and generation


def bfs_distances(open_cells: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """Distances from one source per maze: open [b, h, w] bool, sources [b, 2] -> int32, -1 unreached."""
    b, h, w = open_cells.shape
    dist = np.full((b, h, w), -1, dtype=np.int32)
    frontier = np.zeros((b, h, w), dtype=bool)
    frontier[np.arange(b), sources[:, 0], sources[:, 1]] = True
    d = 0
    while frontier.any():
        dist[frontier] = d
        grown = np.zeros_like(frontier)
        grown[:, 1:, :] |= frontier[:, :-1, :]
        grown[:, :-1, :] |= frontier[:, 1:, :]
        grown[:, :, 1:] |= frontier[:, :, :-1]
        grown[:, :, :-1] |= frontier[:, :, 1:]
        frontier = grown & open_cells & (dist < 0)
        d += 1
    return dist


def label_paths(open_cells: np.ndarray, starts: np.ndarray, goals: np.ndarray) -> np.ndarray:
    """Cells strictly between S and G on the official tie-break path, as a bool mask [b, h, w].

    Every goal must be reachable from its start.
    """
    b, h, w = open_cells.shape
    to_goal = bfs_distances(open_cells, goals)
    rows = np.arange(b)
    if np.any(to_goal[rows, starts[:, 0], starts[:, 1]] < 0):
        raise ValueError("a goal is not reachable from its start")
    padded = np.full((b, h + 2, w + 2), -2, dtype=np.int32)
    padded[:, 1:-1, 1:-1] = to_goal
    path = np.zeros((b, h, w), dtype=bool)
    pos = starts.astype(np.int64).copy()
    left = to_goal[rows, pos[:, 0], pos[:, 1]]
    while np.any(left > 1):
        active = left > 1
        # Distance of each neighbour in move order; the first one that is one step closer wins.
        nbr = np.stack([padded[rows, pos[:, 0] + 1 + dr, pos[:, 1] + 1 + dc] for dr, dc in MOVES], axis=1)
        choice = np.argmax(nbr == (left - 1)[:, None], axis=1)
        step = np.asarray(MOVES)[choice]
        pos = np.where(active[:, None], pos + step, pos)
        left = np.where(active, left - 1, left)
        path[rows[active], pos[active, 0], pos[active, 1]] = True
    return path


def solve_questions(questions: np.ndarray) -> np.ndarray:
    """Official-style answers for question character arrays [n, side*side] (each with one S and one G)."""
    n, length = questions.shape
    side = int(round(length ** 0.5))
    grids = questions.reshape(n, side, side)
    starts = np.argwhere(grids == START)
    goals = np.argwhere(grids == GOAL)
    if len(starts) != n or len(goals) != n:
        raise DatasetError("every maze needs exactly one 'S' and one 'G'")
    path = label_paths(grids != WALL, starts[:, 1:], goals[:, 1:])
    return np.where(path, np.uint8(PATH), grids).reshape(n, length)


def _pack(cells: np.ndarray) -> np.ndarray:
    """bool [b, h, w] -> one uint32 bitmask per row [b, h] (bit c is column c); needs w <= 32."""
    shifted = cells.astype(np.uint32) << np.arange(cells.shape[2], dtype=np.uint32)
    return shifted.sum(axis=2, dtype=np.uint32)


def _unpack(bits: np.ndarray, width: int) -> np.ndarray:
    return ((bits[:, :, None] >> np.arange(width, dtype=np.uint32)) & 1).astype(bool)


def _bit_bfs(open_bits: np.ndarray, source_bits: np.ndarray,
             k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bit-parallel BFS over a batch (30x less work than cell arrays; the generator lives on it).

    Returns bitmasks of (the last non-empty BFS level, cells within k steps, all reachable cells).
    Mazes whose search has ended are dropped from the working set every few levels.
    """
    last = source_bits.copy()
    visited = source_bits.copy()
    within = np.zeros_like(source_bits)
    active = np.arange(len(source_bits))
    a_open, a_visited, frontier = open_bits, visited.copy(), source_bits.copy()
    level = 0
    while len(active):
        if level == k:
            within[active] = a_visited
        grown = (frontier << np.uint32(1)) | (frontier >> np.uint32(1))
        grown[:, 1:] |= frontier[:, :-1]
        grown[:, :-1] |= frontier[:, 1:]
        frontier = grown & a_open & ~a_visited
        a_visited |= frontier
        level += 1
        nonempty = frontier.any(axis=1)
        last[active[nonempty]] = frontier[nonempty]
        if level % 8 == 0 or not nonempty.any():
            done = ~nonempty
            visited[active[done]] = a_visited[done]
            if level <= k:
                within[active[done]] = a_visited[done]
            active, a_open, a_visited, frontier = (active[nonempty], a_open[nonempty], a_visited[nonempty],
                                                   frontier[nonempty])
    return last, within, visited


def _pick(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One uniformly random True cell per row of a [b, n] mask (0 where the row is empty)."""
    return np.argmax(rng.random(mask.shape, dtype=np.float32) * mask, axis=1)


def generate_mazes(count: int, seed: int, side: int = 30, wall_density: float = 0.37,
                   min_path_cells: int = MIN_PATH_CELLS, batch: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """`count` random mazes whose shortest S->G path has at least `min_path_cells` cells between S and G.

    Walls are i.i.d. at `wall_density`. Such walls rarely hold a path that long between two random
    cells (0.2% at 37%), so S is a far end of its component (the farthest cell from a random open
    cell) and G a random cell more than `min_path_cells` steps from S; about 1.4% of layouts qualify.
    Returns (questions, answers) character arrays [count, side*side].
    """
    if count <= 0:
        raise DatasetError(f"--count must be positive, got {count}")
    if not 0 < side <= 32:
        raise DatasetError(f"maze side must be 1..32, got {side}")
    rng = np.random.default_rng(seed)
    seen: set[bytes] = set()
    out: list[np.ndarray] = []
    rows = np.arange(batch)
    while len(out) < count:
        walls = rng.random((batch, side, side)) < wall_density
        open_bits = _pack(~walls)
        probe = rng.integers(0, side * side, size=batch)  # a wall probe is fine: BFS leaves it at once
        src = np.zeros((batch, side), dtype=np.uint32)
        src[rows, probe // side] = np.uint32(1) << (probe % side).astype(np.uint32)
        last, _, _ = _bit_bfs(open_bits, src, 0)
        s_idx = _pick(_unpack(last, side).reshape(batch, -1), rng)
        src[:] = 0
        src[rows, s_idx // side] = np.uint32(1) << (s_idx % side).astype(np.uint32)
        _, near, reach = _bit_bfs(open_bits, src, min_path_cells)
        far = _unpack(reach & ~near, side).reshape(batch, -1)
        ok = far.any(axis=1)
        g_idx = _pick(far, rng)
        grids = np.where(walls, np.uint8(WALL), np.uint8(OPEN)).reshape(batch, -1)
        grids[rows, s_idx] = START
        grids[rows, g_idx] = GOAL
        for row in grids[ok]:
            key = row.tobytes()
            if key not in seen and len(out) < count:
                seen.add(key)
                out.append(row)
    questions = np.stack(out)
    return questions, solve_questions(questions)


def write_maze_csv(path: Path, questions: np.ndarray, answers: np.ndarray, source: str = "") -> None:
    """Official CSV layout: header source,question,answer,rating with every field quoted."""
    buf = io.StringIO()
    writer = csv.writer(buf, quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerow(HEADER)
    for q, a in zip(questions, answers):
        writer.writerow((source, q.tobytes().decode("ascii"), a.tobytes().decode("ascii"), ""))
    atomic_write_bytes(Path(path), buf.getvalue().encode())


def generate_maze_csvs(output_dir: str | Path, count: int, test_count: int | None = None,
                       seed: int = 0) -> Path:
    """Write train.csv (count mazes) and test.csv (test_count, default count) with disjoint mazes."""
    test_count = count if test_count is None else test_count
    output_dir = Path(output_dir)
    questions, answers = generate_mazes(count + test_count, seed)
    parts = {"train": slice(0, count), "test": slice(count, count + test_count)}
    output_dir.mkdir(parents=True, exist_ok=True)
    for split, rows in parts.items():
        path = output_dir / f"{split}.csv"
        tmp = output_dir / f".{split}.csv.new"
        write_maze_csv(tmp, questions[rows], answers[rows], source=f"hrm-data generate maze --seed {seed}")
        if path.exists() and path.read_bytes() != tmp.read_bytes():
            tmp.unlink()
            raise DatasetError(f"{path} already exists with other mazes: choose another --output-dir "
                               f"or remove it")
        tmp.replace(path)
    return output_dir


# ---------------------------------------------------------------------------------------------------
# CLI


def register_build(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("maze", help="Maze-Hard 30x30 (CSV from the HF hub or a local directory)")
    p.add_argument("--source", default=DEFAULT_SOURCE,
                   help="HF dataset repo id or a local directory with train.csv and test.csv")
    p.add_argument("--output-dir", default="data/maze-30x30-hard-1k")
    p.add_argument("--subsample-size", type=int, default=None, help="keep this many train mazes (random)")
    p.add_argument("--aug", action="store_true", help="add the 8 dihedral transforms of each train maze")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-bad", action="store_true", help="drop malformed rows instead of stopping")
    p.set_defaults(func=lambda a: build_maze(a.source, a.output_dir, a.subsample_size, a.aug, a.seed,
                                             a.skip_bad) and 0)


def register_generate(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("maze", help="random 30x30 mazes with official-style labels (CSV)")
    p.add_argument("--count", type=int, required=True, help="train mazes")
    p.add_argument("--test-count", type=int, default=None, help="test mazes (default: --count)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", required=True)
    p.set_defaults(func=_generate_cmd)


def _generate_cmd(args: argparse.Namespace) -> int:
    out = generate_maze_csvs(args.output_dir, args.count, args.test_count, args.seed)
    print(f"wrote {out}/train.csv and {out}/test.csv")
    return 0
