"""City-logistics routing (city-logistics.md A.8): `hrm-data generate logistics` and `hrm-data build logistics`.

Every example is its own seeded city: avenue columns at spacing 4-7, street rows at spacing 3-5 (one or two of
them cross-town avenues), alley segments through the blocks, 1-3 closed parks, jams that keep the road class,
and ~3% closures. The vehicle is folded into the start token, so one map with one start and goal makes four
inputs (bike, car, van, truck) with four labels. A label is the input with the cells of the unique cheapest
route (costs depend on (token, vehicle) only) re-coded ROUTE; instances with no route, tied optima, or an
optimum the Manhattan-greedy walk finds are drawn again. A group is one map: its 4 vehicles x 8 dihedral
transforms in train (costs are isotropic, so a transformed optimum stays the unique optimum), 4 puzzles in test.

The token ids, the cost table and the vehicle list are the constants below (the HTML viewer reads them).
"""

from __future__ import annotations

import argparse
import csv
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
    check_arrays,
    load_split,
    preallocate,
    write_array,
)
from hrm.data.logistics_solver import greedy_route, solve

# ---------------------------------------------------------------------------------------------------
# The task's constants (A.8 items 2 and 3)

TOKENS = ("PAD", "BUILDING", "AVENUE", "STREET", "ALLEY", "AVENUE_JAM", "STREET_JAM", "CLOSURE", "GOAL",
          "START_BIKE", "START_CAR", "START_VAN", "START_TRUCK", "ROUTE")
(PAD, BUILDING, AVENUE, STREET, ALLEY, AVENUE_JAM, STREET_JAM, CLOSURE, GOAL,
 START_BIKE, START_CAR, START_VAN, START_TRUCK, ROUTE) = range(len(TOKENS))
VOCAB_SIZE = len(TOKENS)  # 14
ROADS = (AVENUE, STREET, ALLEY, AVENUE_JAM, STREET_JAM)
VEHICLES = ("bike", "car", "van", "truck")
START_TOKENS = (START_BIKE, START_CAR, START_VAN, START_TRUCK)  # START_TOKENS[v] starts vehicle VEHICLES[v]
# Cost of entering a road cell, per vehicle; a road class missing from a vehicle's row is closed to it.
COSTS = {
    "bike": {AVENUE: 2, STREET: 2, ALLEY: 2, AVENUE_JAM: 3, STREET_JAM: 3},
    "car": {AVENUE: 1, STREET: 2, ALLEY: 4, AVENUE_JAM: 6, STREET_JAM: 8},
    "van": {AVENUE: 1, STREET: 3, AVENUE_JAM: 6, STREET_JAM: 9},
    "truck": {AVENUE: 1, AVENUE_JAM: 6},
}
GOAL_COST = 1  # entering the goal, for every vehicle: the road under the GOAL token is not in the input
# COST_TABLE[vehicle, token]: entry cost, 0 = cannot be entered (buildings, closures, starts, ROUTE, PAD).
COST_TABLE = np.zeros((len(VEHICLES), VOCAB_SIZE), dtype=np.int64)
for _v, _name in enumerate(VEHICLES):
    for _token, _cost in COSTS[_name].items():
        COST_TABLE[_v, _token] = _cost
    COST_TABLE[_v, GOAL] = GOAL_COST
# One CSV character per token id (PAD never appears in a CSV), and the colour of each token in pictures.
CHARSET = "?#ASLJjXGBCVTo"
TOKEN_COLOURS = ("#000000", "#5b5b5b", "#f2f2f2", "#d9d9d9", "#b8b8b8", "#ff9f80", "#ffc9a8", "#1a1a1a",
                 "#ff4136", "#2ecc40", "#0074d9", "#b10dc9", "#ff851b", "#ffdc00")
HEADER = ("source", "question", "answer", "rating")  # the Sudoku / Maze CSV columns; rating = optimal cost
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}  # each split draws from its own seed range
CLOSURE_RATE = 0.03
MAX_JAM_RATE = 0.3
MAX_DRAWS = 2000  # maps drawn for one group before giving up (a grid too small or too strict)
GENERATED = "generated"  # --source value: generate the CSVs first (seeded), then build

_TOKEN_OF_CHAR = np.full(256, 255, dtype=np.uint8)
for _i, _ch in enumerate(CHARSET):
    _TOKEN_OF_CHAR[ord(_ch)] = _i


def vehicle_of(inputs: np.ndarray) -> np.ndarray:
    """Vehicle index (0..3) of each input row [n, seq] from its start token; -1 when it has none."""
    found = np.isin(inputs, START_TOKENS)
    tok = np.where(found.any(1), inputs[np.arange(len(inputs)), found.argmax(1)], 0).astype(np.int64)
    return np.where(found.any(1), tok - START_BIKE, -1)


def cost_grid(grid: np.ndarray, vehicle: int) -> np.ndarray:
    """Entry cost of every cell of a token grid [h, w] for one vehicle (0 = impassable)."""
    return COST_TABLE[vehicle][grid]


def map_text(tokens: np.ndarray):
    """A city as rich Text for the terminal: one CSV character per cell, coloured by token."""
    from rich.text import Text

    side = int(round(len(tokens) ** 0.5))
    text = Text()
    for row in np.asarray(tokens).reshape(side, side):
        for t in row.tolist():
            if t >= VOCAB_SIZE:
                text.append("?", style="bold white on magenta")
            else:  # dark cells (PAD, buildings, closures) get white text
                fg = "white" if t in (PAD, BUILDING, CLOSURE) else "black"
                text.append(CHARSET[t], style=f"{fg} on {TOKEN_COLOURS[t]}")
        text.append("\n")
    return text


# ---------------------------------------------------------------------------------------------------
# Generation


def _lines(rng: np.random.Generator, side: int, lo: int, hi: int) -> list[int]:
    """Positions 0..side-1 at random gaps lo..hi (inclusive), the first within the first gap."""
    out, x = [], int(rng.integers(0, lo))
    while x < side:
        out.append(x)
        x += int(rng.integers(lo, hi + 1))
    return out


def generate_map(rng: np.random.Generator, side: int) -> np.ndarray:
    """One city [side, side] of BUILDING and road tokens (no endpoints yet)."""
    grid = np.full((side, side), BUILDING, dtype=np.uint8)
    rows = _lines(rng, side, 3, 5)
    grid[rows, :] = STREET
    grid[:, _lines(rng, side, 4, 7)] = AVENUE
    for r in rng.choice(rows, size=min(len(rows), int(rng.integers(1, 3))), replace=False):
        grid[r, :] = AVENUE  # cross-town avenues, so that trucks can turn
    for _ in range(int(rng.integers(side // 3, side // 2 + 1))):  # alleys through the blocks
        r, c = (int(x) for x in rng.integers(0, side, size=2))
        length = int(rng.integers(2, 6))
        seg = grid[r, c:c + length] if rng.random() < 0.5 else grid[r:r + length, c]
        seg[seg == BUILDING] = ALLEY
    park_max = max(2, side // 5)
    for _ in range(int(rng.integers(1, 4))):  # closed parks cut every road they cover
        h, w = (int(x) for x in rng.integers(2, park_max + 1, size=2))
        r, c = int(rng.integers(0, side - h + 1)), int(rng.integers(0, side - w + 1))
        grid[r:r + h, c:c + w] = BUILDING
    jam = rng.random(grid.shape) < rng.uniform(0, MAX_JAM_RATE)
    grid[jam & (grid == AVENUE)] = AVENUE_JAM
    grid[jam & (grid == STREET)] = STREET_JAM
    grid[(rng.random(grid.shape) < CLOSURE_RATE) & np.isin(grid, ROADS)] = CLOSURE
    return grid


def label_city(grid: np.ndarray, start: tuple[int, int], goal: tuple[int, int],
               min_route_cells: int = 0) -> list[tuple[np.ndarray, np.ndarray, int]] | None:
    """The four (input, label, optimal cost) of one map and endpoint pair, or None when a vehicle's optimum is
    missing, tied, Manhattan-greedy or shorter than `min_route_cells` cells between the endpoints."""
    out = []
    for v in range(len(VEHICLES)):
        inp = grid.copy()
        inp[start], inp[goal] = START_TOKENS[v], GOAL
        costs = cost_grid(inp, v)
        sol = solve(costs, start, goal)
        if sol.cost is None or sol.count != 1 or len(sol.route) - 2 < min_route_cells:
            return None
        if greedy_route(costs, start, goal) == sol.route:
            return None
        lab = inp.copy()
        for cell in sol.route[1:-1]:
            lab[cell] = ROUTE
        out.append((inp, lab, sol.cost))
    return out


def generate_group(rng: np.random.Generator, side: int, min_distance: int | None = None,
                   min_route_cells: int = 0, tries_per_map: int = 8) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """[(input, label, optimal cost)] for the 4 vehicles of one accepted city (rejection sampling).

    Start and goal lie on avenues at least `min_distance` apart (Manhattan; default the grid side), so every
    vehicle can leave and reach them."""
    min_distance = side if min_distance is None else min_distance
    for _ in range(MAX_DRAWS):
        grid = generate_map(rng, side)
        cells = np.argwhere(grid == AVENUE)
        if len(cells) < 2:
            continue
        for _ in range(tries_per_map):
            a, b = cells[rng.choice(len(cells), size=2, replace=False)]
            if abs(int(a[0]) - int(b[0])) + abs(int(a[1]) - int(b[1])) < min_distance:
                continue
            found = label_city(grid, (int(a[0]), int(a[1])), (int(b[0]), int(b[1])), min_route_cells)
            if found is not None:
                return found
    raise DatasetError(f"no acceptable {side}x{side} city in {MAX_DRAWS} draws: use a larger --grid-size "
                       f"(10 or more) or a smaller --min-distance")


def _to_text(grid: np.ndarray) -> str:
    return "".join(CHARSET[t] for t in grid.ravel())


def generate_rows(split: str, count: int, seed: int, side: int, min_distance: int | None = None,
                  min_route_cells: int = 0) -> list[tuple[str, str, str, str]]:
    """CSV rows (source, question, answer, rating) of `count` cities of one split, 4 rows (vehicles) each.

    City i of a split uses the seed sequence (seed, split id, i): splits never share a seed, and a city does
    not depend on how many came before it."""
    rows = []
    for i in range(count):
        rng = np.random.default_rng([seed, SPLIT_IDS[split], i])
        for inp, lab, cost in generate_group(rng, side, min_distance, min_route_cells):
            rows.append((f"{split}-{seed}-{i}", _to_text(inp), _to_text(lab), str(cost)))
    return rows


def generate(output_dir: str | Path, num_train: int, num_test: int, seed: int = 0, grid_size: int = 30,
             num_val: int = 0, min_distance: int | None = None, min_route_cells: int = 0) -> Path | None:
    """Write train.csv, test.csv (and val.csv when `num_val`) of cities; None when already there."""
    if not 6 <= grid_size <= 64:
        raise DatasetError(f"--grid-size {grid_size} is out of range: use 6..64 (30 is the Maze-like default)")
    for name, n, least in (("--num-train", num_train, 1), ("--num-test", num_test, 1), ("--num-val", num_val, 0)):
        if n < least:
            raise DatasetError(f"{name} {n} must be at least {least}")
    counts = {"train": num_train, "val": num_val, "test": num_test}
    info = {"builder": "logistics-generate", "version": 1,
            "args": {"num_train": num_train, "num_val": num_val, "num_test": num_test, "seed": seed,
                     "grid_size": grid_size, "min_distance": min_distance, "min_route_cells": min_route_cells}}
    with building(Path(output_dir), info) as tmp:
        if tmp is None:
            return None
        for split, n in counts.items():
            if n:
                buf = io.StringIO()
                writer = csv.writer(buf, lineterminator="\n")
                writer.writerow(HEADER)
                writer.writerows(generate_rows(split, n, seed, grid_size, min_distance, min_route_cells))
                atomic_write_bytes(tmp / f"{split}.csv", buf.getvalue().encode())
    return Path(output_dir)


# ---------------------------------------------------------------------------------------------------
# Reading and building


def _row_problem(q: str, a: str, length: int | None) -> str | None:
    side = int(round(len(q) ** 0.5))
    if side * side != len(q) or side == 0:
        return f"question has {len(q)} characters, not a square grid"
    if length is not None and len(q) != length:
        return f"question has {len(q)} characters, expected {length} like the rows before it"
    if len(a) != len(q):
        return f"question and answer lengths differ ({len(q)} vs {len(a)})"
    bad = set(q + a) - set(CHARSET[1:])
    if bad:
        return f"holds {''.join(sorted(bad))!r}; only the characters {CHARSET[1:]!r} are allowed"
    starts = sum(q.count(CHARSET[t]) for t in START_TOKENS)
    if starts != 1 or q.count(CHARSET[GOAL]) != 1:
        return "the question needs exactly one start (B, C, V or T) and one goal (G)"
    if CHARSET[ROUTE] in q:
        return "the question holds a route cell 'o'"
    for x, y in zip(q, a):
        if x != y and not (y == CHARSET[ROUTE] and _TOKEN_OF_CHAR[ord(x)] in ROADS):
            return f"the answer changes {x!r} into {y!r}; it may only mark road cells as route 'o'"
    return None


def read_csv(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(inputs, labels) as token arrays [n, side*side] and each row's group key (the source column)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path} not found: generate it with hrm-data generate logistics --out DIR, or pass "
                           f"--source {GENERATED}")
    questions, answers, groups = [], [], []
    length = None
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(header) != HEADER:
            raise DatasetError(f"{path}: expected the header {','.join(HEADER)}, got {header!r}; is this a "
                               f"logistics CSV?")
        for row in reader:
            problem = (f"expected 4 fields, got {len(row)}" if len(row) != 4
                       else _row_problem(row[1], row[2], length))
            if problem:
                raise DatasetError(f"{path} line {reader.line_num}: {problem}; fix or regenerate the file")
            length = len(row[1])
            groups.append(row[0])
            questions.append(row[1].encode("ascii"))
            answers.append(row[2].encode("ascii"))
    if not questions:
        raise DatasetError(f"{path}: no rows; regenerate the file")
    shape = (len(questions), length)
    inputs = _TOKEN_OF_CHAR[np.frombuffer(b"".join(questions), dtype=np.uint8)].reshape(shape)
    labels = _TOKEN_OF_CHAR[np.frombuffer(b"".join(answers), dtype=np.uint8)].reshape(shape)
    return inputs, labels, groups


def _group_bounds(keys: list[str]) -> np.ndarray:
    """Row index where each run of equal group keys starts, plus the row count."""
    starts = [i for i in range(len(keys)) if i == 0 or keys[i] != keys[i - 1]]
    return np.array([*starts, len(keys)], dtype=np.int64)


def _write_split(split_dir: Path, inputs: np.ndarray, labels: np.ndarray, bounds: np.ndarray, aug: bool) -> int:
    """Stream one split: each row becomes 8 dihedral puzzles (aug) or 1; a group is a run of rows (one map)."""
    split_dir.mkdir(parents=True)
    n, length = inputs.shape
    side = int(round(length ** 0.5))
    per_row = NUM_DIHEDRAL if aug else 1
    total = n * per_row
    out = {name: np.lib.format.open_memmap(split_dir / f"all__{name}.npy", mode="w+", dtype=np.uint8,
                                           shape=(total, length)) for name in ("inputs", "labels")}
    for name in out:
        preallocate(split_dir / f"all__{name}.npy")
    for name, rows in (("inputs", inputs), ("labels", labels)):
        for r0 in range(0, n, 256):  # a slice of rows at a time: bounded memory, whatever the split size
            grids = rows[r0:r0 + 256].reshape(-1, side, side)
            stack = np.stack([dihedral(grids, t) for t in range(per_row)], axis=1)
            out[name][r0 * per_row:(r0 + len(grids)) * per_row] = stack.reshape(-1, length)
        out[name].flush()
    del out
    write_array(split_dir / "all__puzzle_identifiers.npy", np.zeros(total, dtype=np.int32))
    write_array(split_dir / "all__puzzle_indices.npy", np.arange(total + 1, dtype=np.int32))
    write_array(split_dir / "all__group_indices.npy", (bounds * per_row).astype(np.int32))
    meta = DatasetMetadata(pad_id=PAD, ignore_label_id=PAD, blank_identifier_id=0, vocab_size=VOCAB_SIZE,
                           seq_len=length, num_puzzle_identifiers=1, total_groups=len(bounds) - 1,
                           mean_puzzle_examples=1.0, sets=["all"])
    errors = check_arrays(load_split(split_dir), meta, full=True)
    if errors:  # a bug, not bad input: never leave a broken split behind
        raise DatasetError(f"internal error building {split_dir}: {errors[0]}; please report it")
    atomic_write_json(split_dir / "dataset.json", {**asdict(meta), "total_puzzles": total})  # Maze's keys
    return total


def build(source: str | Path = GENERATED, output_dir: str | Path = "data/logistics-30x30-1k", aug: bool = True,
          num_train: int = 1000, num_test: int = 1000, num_val: int = 0, grid_size: int = 30, seed: int = 0,
          min_distance: int | None = None, min_route_cells: int = 0) -> dict | None:
    """Build train/test (and val) from a folder of CSVs, or from freshly generated ones with `source=generated`
    (the generation arguments then apply). Returns a summary, or None when `output_dir` holds this build."""
    from hrm.data.sudoku import sha256_file

    output_dir = Path(output_dir)
    requested = str(source)
    if requested == GENERATED:
        source = output_dir.parent / "raw" / (f"logistics-{grid_size}x{grid_size}-{num_train}-{num_val}-"
                                              f"{num_test}-d{min_distance}-r{min_route_cells}-seed{seed}")
        generate(source, num_train, num_test, seed, grid_size, num_val, min_distance, min_route_cells)  # once
    folder = Path(source)
    if not folder.is_dir():
        raise DatasetError(f"--source {folder} is not a directory: pass the --out folder of hrm-data generate "
                           f"logistics, or --source {GENERATED}")
    paths = {s: folder / f"{s}.csv" for s in ("train", "val", "test") if s != "val" or (folder / "val.csv").is_file()}
    for p in paths.values():
        if not p.is_file():
            raise DatasetError(f"{p} not found: generate it with hrm-data generate logistics --out {folder}")
    info = {"builder": "logistics", "version": 1,
            "args": {"requested_source": requested, "source": str(source), "aug": bool(aug)},
            "source_sha256": {p.name: sha256_file(p) for p in paths.values()}}
    need = sum(p.stat().st_size * (NUM_DIHEDRAL if aug and s == "train" else 1) for s, p in paths.items())
    summary: dict = {"output_dir": str(output_dir)}
    with building(output_dir, info, need_bytes=need) as tmp:
        if tmp is None:
            return None
        for split, path in paths.items():
            inputs, labels, keys = read_csv(path)
            bounds = _group_bounds(keys)
            puzzles = _write_split(tmp / split, inputs, labels, bounds, aug and split == "train")
            summary[split] = {"groups": len(bounds) - 1, "puzzles": puzzles}
        atomic_write_json(tmp / "identifiers.json", ["<blank>"])
    return summary


# ---------------------------------------------------------------------------------------------------
# CLI


def _add_generation_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--num-train", type=int, required=required, default=None if required else 1000,
                   help="train cities (4 vehicles each)")
    p.add_argument("--num-test", type=int, required=required, default=None if required else 1000,
                   help="test cities (4 vehicles each)")
    p.add_argument("--num-val", type=int, default=0, help="validation cities, for checkpoint selection")
    p.add_argument("--grid-size", type=int, default=30, help="side of the square city (30: Maze's 900 cells)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-distance", type=int, default=None,
                   help="least Manhattan distance from start to goal (default: the grid side)")
    p.add_argument("--min-route-cells", type=int, default=0, help="least route cells between the endpoints")


def register_build(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("logistics", help="city-logistics routing (A.8): generated cities, unique optima",
                              description="Build the city-logistics routing dataset in the reference layout.")
    p.add_argument("--source", default=GENERATED,
                   help=f"a folder with train.csv and test.csv from hrm-data generate logistics, or '{GENERATED}' "
                        f"(generate them first, beside the output, from the arguments below) (default {GENERATED})")
    p.add_argument("--output-dir", required=True, help="where to write the dataset (created atomically)")
    p.add_argument("--no-aug", action="store_true", help="train without the 8 dihedral transforms")
    _add_generation_args(p, required=False)
    p.set_defaults(func=_run_build)


def register_generate(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("logistics", help="random cities with unique optimal routes (CSV)",
                              description="Generate city-logistics instances in the Sudoku/Maze CSV format.")
    p.add_argument("--out", required=True, help="folder for train.csv, test.csv (and val.csv)")
    _add_generation_args(p, required=True)
    p.set_defaults(func=_run_generate)


def _run_build(args: argparse.Namespace) -> int:
    summary = build(args.source, args.output_dir, not args.no_aug, args.num_train, args.num_test, args.num_val,
                    args.grid_size, args.seed, args.min_distance, args.min_route_cells)
    if summary is None:
        print(f"{args.output_dir}: already built, skipping")
        return 0
    parts = [f"{s} {v['puzzles']:,} puzzles in {v['groups']:,} groups" for s, v in summary.items() if s != "output_dir"]
    print(f"logistics: {', '.join(parts)} -> {args.output_dir}")
    return 0


def _run_generate(args: argparse.Namespace) -> int:
    out = generate(args.out, args.num_train, args.num_test, args.seed, args.grid_size, args.num_val,
                   args.min_distance, args.min_route_cells)
    if out is None:
        print(f"{args.out}: already generated, skipping")
    else:
        print(f"logistics: wrote {out}/train.csv and {out}/test.csv; build with hrm-data build logistics "
              f"--source {out} --output-dir DIR")
    return 0
