"""`hrm-data build sudoku` (the reference's Sudoku-Extreme layout, spec §5.2) and `hrm-data generate sudoku`.

The build is seeded (the reference's is not), checks every CSV row, and augments with array operations:
each copy's relabelling, transpose and row/column shuffles become one gather index into the original
grids, applied a chunk of copies at a time and streamed to memory-mapped .npy files.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from hrm.data import sources, sudoku_solver
from hrm.data.format import (
    DatasetError,
    DatasetMetadata,
    atomic_write_bytes,
    atomic_write_json,
    building,
    check_arrays,
    load_split,
    preallocate,
    read_build_info,
    write_array,
)

BUILDER_VERSION = 1
DEFAULT_SOURCE = "sapientinc/sudoku-extreme"
HEADER = ["source", "question", "answer", "rating"]
READ_BLOCK = 1 << 16     # CSV rows per array conversion
NO_RATING = np.iinfo(np.int64).min
CHUNK_COPIES = 1 << 15   # augmented copies per vectorised chunk (bounds memory; results do not depend on it)
GENERATED = "generated"  # --source value: fresh seeded puzzles from `generate` (no network)
DEFAULT_CLUES = 24       # the generator blanks cells down to this many clues unless --blanks says otherwise
MAX_BLANKS = 81 - 17     # 17 clues is the fewest a unique-solution sudoku can have


@dataclass
class SudokuRows:
    """Parsed CSV rows: digits 0..9 (0 = blank) and the CSV line of each row."""
    questions: np.ndarray   # uint8 [n, 81]
    answers: np.ndarray     # uint8 [n, 81]
    ratings: np.ndarray     # int64 [n], NO_RATING where the field is not an integer
    lines: np.ndarray       # int64 [n]
    skipped: int = 0


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _bad(path: Path, line: int, what: str) -> DatasetError:
    return DatasetError(f"{path} line {line}: {what}: fix or remove the row, or pass --skip-bad")


def _grid_problem(answer: np.ndarray) -> str | None:
    """Why an 81-digit solution is not a valid sudoku, or None."""
    g = answer.reshape(9, 9).astype(np.int64)
    for name, groups in (("row", g), ("column", g.T),
                         ("box", g.reshape(3, 3, 3, 3).transpose(0, 2, 1, 3).reshape(9, 9))):
        for i, group in enumerate(groups):
            if sorted(group.tolist()) != list(range(1, 10)):
                return f"answer {name} {i + 1} does not hold each digit 1-9 once"
    return None


def _invalid_rows(questions: np.ndarray, answers: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Vectorised row checks: returns the bad-row mask and a reason for each bad row."""
    bits = np.left_shift(np.int32(1), answers.astype(np.int32)).reshape(-1, 9, 9)
    full = 0x3FE  # bits 1..9
    rows_ok = (np.bitwise_or.reduce(bits, axis=2) == full).all(axis=1)
    cols_ok = (np.bitwise_or.reduce(bits, axis=1) == full).all(axis=1)
    boxes = bits.reshape(-1, 3, 3, 3, 3).transpose(0, 1, 3, 2, 4).reshape(-1, 9, 9)
    boxes_ok = (np.bitwise_or.reduce(boxes, axis=2) == full).all(axis=1)
    consistent = ((questions == 0) | (questions == answers)).all(axis=1)
    bad = ~(rows_ok & cols_ok & boxes_ok & consistent)
    reasons = []
    for i in np.flatnonzero(bad):
        problem = _grid_problem(answers[i])
        if problem is None:
            cell = int(np.flatnonzero((questions[i] != 0) & (questions[i] != answers[i]))[0])
            problem = (f"answer contradicts the question at row {cell // 9 + 1} column {cell % 9 + 1} "
                       f"(given {questions[i, cell]}, answer {answers[i, cell]})")
        reasons.append(problem)
    return bad, reasons


def _rating(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return NO_RATING


def read_sudoku_csv(path: Path, skip_bad: bool = False) -> SudokuRows:
    """Parse and check an official-format CSV; bad rows raise (one line) or are skipped with `skip_bad`.

    Rows are converted to arrays in blocks, so a multi-million-row file never sits in Python strings.
    """
    path = Path(path)
    blocks: list[tuple[np.ndarray, ...]] = []
    qs, ans, ratings, lines = [], [], [], []
    first_bad: tuple[int, str] | None = None  # (line, why) of the first row rejected while reading
    skipped = 0

    def flush() -> None:
        n = len(qs)
        q = np.frombuffer("".join(qs).encode("ascii"), dtype=np.uint8).reshape(n, 81)
        a = np.frombuffer("".join(ans).encode("ascii"), dtype=np.uint8).reshape(n, 81)
        blocks.append((q, a, np.asarray(ratings, dtype=np.int64), np.asarray(lines, dtype=np.int64)))
        for pending in (qs, ans, ratings, lines):
            pending.clear()

    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip().lower() for h in header][:1] != ["source"] or len(header) != 4:
            raise DatasetError(f"{path} does not start with the header {','.join(HEADER)}: "
                               f"is it a Sudoku-Extreme CSV?")
        for row in reader:
            if not row:
                continue
            why = None
            if len(row) != 4:
                why = f"{len(row)} fields, expected 4 ({','.join(HEADER)})"
            elif len(row[1]) != 81 or len(row[2]) != 81:
                which, n = ("question", len(row[1])) if len(row[1]) != 81 else ("answer", len(row[2]))
                why = f"{which} has {n} characters, expected 81"
            elif not (row[1].isascii() and row[2].isascii()):
                why = "non-ASCII characters in question or answer"
            if why is not None:
                skipped += 1
                if first_bad is None:
                    first_bad = (reader.line_num, why)
                if not skip_bad:
                    break  # only the rows read so far can hold an earlier error
                continue
            qs.append(row[1])
            ans.append(row[2])
            ratings.append(_rating(row[3]))
            lines.append(reader.line_num)
            if len(qs) == READ_BLOCK:
                flush()
    flush()
    q_arr, a_arr, rating_arr, line_arr = (np.concatenate(parts) for parts in zip(*blocks))
    blocks.clear()
    q_arr[q_arr == ord(".")] = ord("0")
    bad_q = ((q_arr < ord("0")) | (q_arr > ord("9"))).any(axis=1)
    bad_a = ((a_arr < ord("1")) | (a_arr > ord("9"))).any(axis=1)
    q_arr -= ord("0")
    a_arr -= ord("0")
    ok_chars = np.flatnonzero(~(bad_q | bad_a))
    mask, why_grid = _invalid_rows(q_arr[ok_chars], a_arr[ok_chars])
    bad = bad_q | bad_a
    bad[ok_chars[mask]] = True
    if bad.any() and not skip_bad:
        first = int(np.flatnonzero(bad)[0])
        if first_bad is None or line_arr[first] < first_bad[0]:
            reasons = dict(zip(ok_chars[mask].tolist(), why_grid))
            why = ("question holds a character other than '.' or 0-9" if bad_q[first] else
                   "answer holds a character other than 1-9" if bad_a[first] else reasons[first])
            first_bad = (int(line_arr[first]), why)
    if first_bad is not None and not skip_bad:
        raise _bad(path, *first_bad)
    if bad.any():
        skipped += int(bad.sum())
        keep = ~bad
        q_arr, a_arr, rating_arr, line_arr = q_arr[keep], a_arr[keep], rating_arr[keep], line_arr[keep]
    return SudokuRows(q_arr, a_arr, rating_arr, line_arr, skipped)


def _filter_difficulty(rows: SudokuRows, path: Path, min_difficulty: int | None) -> SudokuRows:
    if min_difficulty is None:
        return rows
    unrated = np.flatnonzero(rows.ratings == NO_RATING)
    if len(unrated):
        raise DatasetError(f"{path} line {rows.lines[unrated[0]]}: the rating is not an integer: fix the row "
                           f"or drop --min-difficulty")
    keep = rows.ratings >= min_difficulty
    return SudokuRows(rows.questions[keep], rows.answers[keep], rows.ratings[keep], rows.lines[keep],
                      rows.skipped)


def _permutations(n: int) -> np.ndarray:
    """All n! permutations of range(n), one per row (a fixed order, so a random row is a random perm)."""
    table = np.zeros((1, 0), dtype=np.int64)
    for k in range(n):
        table = np.concatenate([np.insert(table, pos, k, axis=1) for pos in range(k + 1)])
    return table


def _line_permutations() -> np.ndarray:
    """The 6 * 6**3 = 1296 row orders that keep bands: a band order, then a row order inside each band."""
    p3 = _permutations(3)
    bands = np.repeat(p3, 216, axis=0)                                     # [1296, 3]
    inner = np.stack(np.meshgrid(*([np.arange(6)] * 3), indexing="ij"), -1).reshape(216, 3)
    inner = p3[np.tile(inner, (6, 1))]                                     # [1296, 3 bands, 3 rows]
    return (bands[:, :, None] * 3 + inner).reshape(1296, 9)


DIGIT_PERMS = _permutations(9).astype(np.uint8)   # [362880, 9]
LINE_PERMS = _line_permutations()       # [1296, 9]
NUM_TRANSFORMS = len(DIGIT_PERMS) * len(LINE_PERMS) ** 2 * 2


def augmentation_indices(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-copy (cell gather index [M, 81], token map [M, 10]) from codes uniform in [0, NUM_TRANSFORMS).

    A code picks a digit relabelling of 1..9, a transpose bit and band-preserving row and column orders;
    new cell (i, j) = old (row_perm[i], col_perm[j]) of the optionally transposed grid, i.e. old cell
    row_perm[i] * 9 + col_perm[j], or col_perm[j] * 9 + row_perm[i] when transposed. The token map
    sends digit d to its token (relabelled digit + 1; blank 0 -> token 1).
    """
    codes, transpose = np.divmod(codes, 2)
    codes, col = np.divmod(codes, len(LINE_PERMS))
    digits, row = np.divmod(codes, len(LINE_PERMS))
    r, c, t = LINE_PERMS[row], LINE_PERMS[col], transpose[:, None].astype(bool)
    r_step, c_step = np.where(t, r, r * 9), np.where(t, c * 9, c)   # [M, 9] each: scale before broadcasting
    index = (r_step[:, :, None] + c_step[:, None, :]).reshape(len(codes), 81)
    token_map = np.ones((len(codes), 10), dtype=np.uint8)
    token_map[:, 1:] = DIGIT_PERMS[digits] + 2
    return index, token_map


def _write_split(split_dir: Path, rows: SudokuRows, num_aug: int, rng: np.random.Generator) -> int:
    """Stream one split to `split_dir`: each row is a group of 1 + num_aug one-example puzzles."""
    split_dir.mkdir(parents=True)
    n, per = len(rows.questions), 1 + num_aug
    total = n * per
    arrays = {name: np.lib.format.open_memmap(split_dir / f"all__{name}.npy", mode="w+", dtype=np.uint8,
                                              shape=(total, 81)) for name in ("inputs", "labels")}
    for name in arrays:  # a full disk: ENOSPC here, not SIGBUS from the map below
        preallocate(split_dir / f"all__{name}.npy")
    grids = {"inputs": rows.questions, "labels": rows.answers}
    groups_per_chunk = max(1, CHUNK_COPIES // per)
    for g0 in range(0, n, groups_per_chunk):
        g1 = min(n, g0 + groups_per_chunk)
        c = g1 - g0
        if num_aug:
            M = c * num_aug
            index, token_map = augmentation_indices(rng.integers(0, NUM_TRANSFORMS, size=M))
            index += (np.repeat(np.arange(g0, g1, dtype=np.int64), num_aug) * 81)[:, None]
            map_offset = (np.arange(M, dtype=np.int64) * 10)[:, None]
        for name, grid in grids.items():
            view = arrays[name][g0 * per:g1 * per].reshape(c, per, 81)
            view[:, 0] = grid[g0:g1] + 1
            if num_aug:
                digits = np.take(grid, index)                                      # [M, 81] digits 0..9
                view[:, 1:] = np.take(token_map, map_offset + digits).reshape(c, num_aug, 81)
    for array in arrays.values():
        array.flush()
    del arrays
    write_array(split_dir / "all__puzzle_identifiers.npy", np.zeros(total, dtype=np.int32))
    write_array(split_dir / "all__puzzle_indices.npy", np.arange(total + 1, dtype=np.int32))
    write_array(split_dir / "all__group_indices.npy", np.arange(0, total + 1, per, dtype=np.int32))
    meta = DatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=11, seq_len=81,
                           num_puzzle_identifiers=1, total_groups=n, mean_puzzle_examples=1.0, sets=["all"])
    errors = check_arrays(load_split(split_dir), meta, full=True)
    if errors:  # a bug, not bad input: never leave a broken split behind
        raise DatasetError(f"internal error building {split_dir}: {errors[0]}; please report it")
    atomic_write_json(split_dir / "dataset.json", asdict(meta))
    return total


def build(source: str = DEFAULT_SOURCE, output_dir: str | Path = "data/sudoku-extreme-full",
          subsample_size: int | None = None, min_difficulty: int | None = None, num_aug: int = 0,
          seed: int = 0, skip_bad: bool = False, blanks: int | None = None) -> dict | None:
    """Build train/test splits; returns a summary, or None when `output_dir` already holds this build.

    `source="generated"` builds from fresh seeded puzzles (`subsample_size` of them, default 1000, each
    with `blanks` blank cells when given), so a demo needs no network and is the same everywhere.
    """
    if blanks is not None and source != GENERATED:
        raise DatasetError(f"--blanks {blanks} applies to generated puzzles only: add --source {GENERATED} "
                           f"or drop --blanks")
    _check_blanks(blanks)
    if num_aug < 0:
        raise DatasetError(f"--num-aug {num_aug} is negative: use 0 (no augmentation) or more")
    if subsample_size is not None and subsample_size < 1:
        raise DatasetError(f"--subsample-size {subsample_size} must be at least 1 (or left out for all rows)")
    requested = source
    if source == "auto":
        existing = read_build_info(Path(output_dir))
        if existing and existing.get("args", {}).get("requested_source") == "auto":
            return None  # an earlier auto build (hub or generated) stands
        source = _auto_source(Path(output_dir), subsample_size or 1000, seed)
    elif source == GENERATED:
        source = _generated_source(Path(output_dir), subsample_size or 1000, seed, blanks)
    folder = sources.resolve_csv_source(source)
    paths = {split: folder / f"{split}.csv" for split in ("train", "test")}
    info = {"builder": "sudoku", "version": BUILDER_VERSION,
            "args": {"requested_source": requested, "source": source, "subsample_size": subsample_size,
                     "min_difficulty": min_difficulty,
                     "num_aug": num_aug, "seed": seed, "skip_bad": skip_bad},
            "source_sha256": {p.name: sha256_file(p) for p in paths.values()}}
    summary = {"output_dir": str(output_dir), "skipped": {}}
    with building(Path(output_dir), info, need_bytes=_estimate_bytes(paths, subsample_size, num_aug)) as tmp:
        if tmp is None:
            return None
        rng = np.random.default_rng(seed)
        for split, path in paths.items():
            rows = _filter_difficulty(read_sudoku_csv(path, skip_bad), path, min_difficulty)
            if split == "train" and subsample_size is not None and subsample_size < len(rows.questions):
                pick = np.sort(rng.choice(len(rows.questions), subsample_size, replace=False))
                rows = SudokuRows(rows.questions[pick], rows.answers[pick], rows.ratings[pick],
                                  rows.lines[pick], rows.skipped)
            if not len(rows.questions):
                raise DatasetError(f"{path}: no rows left to build from (after --min-difficulty "
                                   f"{min_difficulty}): lower --min-difficulty or check the file")
            count = _write_split(tmp / split, rows, num_aug if split == "train" else 0, rng)
            summary[split] = {"groups": len(rows.questions), "puzzles": count}
            summary["skipped"][path.name] = rows.skipped
        atomic_write_json(tmp / "identifiers.json", ["<blank>"])
    return summary


def _auto_source(output_dir: Path, count: int, seed: int) -> str:
    """The hub when it answers within a few seconds, else freshly generated puzzles; says which."""
    if sources.hub_reachable(timeout_s=3.0):
        print(f"sudoku: the Hugging Face hub answers; using {DEFAULT_SOURCE}")
        return DEFAULT_SOURCE
    raw = output_dir.parent / "raw" / f"sudoku-generated-{count}-seed{seed}"
    print(f"sudoku: the Hugging Face hub does not answer; generating {count} puzzles offline into {raw} "
          f"(a stand-in, easier than Sudoku-Extreme)")
    generate(raw, count, seed=seed, test_count=max(200, count // 5))
    return str(raw)


def _estimate_bytes(paths: dict[str, Path], subsample_size: int | None, num_aug: int) -> int:
    """About what a build writes, from the CSV sizes (a row is ~170 bytes there and 170 bytes built): for the
    free-space check before anything is written."""
    total = 0
    for split, path in paths.items():
        rows = path.stat().st_size // 170 + 1
        if split == "train":
            rows = min(rows, subsample_size or rows) * (1 + num_aug)
        total += rows * 170
    return total


def _generated_source(output_dir: Path, count: int, seed: int, blanks: int | None) -> str:
    """Generate (once) the raw CSVs of a `--source generated` build beside the dataset; returns their folder."""
    raw = output_dir.parent / "raw" / f"sudoku-generated-{count}-{blanks or 'max'}blanks-seed{seed}"
    generate(raw, count, seed=seed, test_count=max(200, count // 5), blanks=blanks)
    return str(raw)


def _check_blanks(blanks: int | None) -> None:
    if blanks is not None and not 1 <= blanks <= MAX_BLANKS:
        raise DatasetError(f"--blanks {blanks} is out of range: use 1..{MAX_BLANKS} (a unique solution needs "
                           f"at least 17 clues)")


def generate(output_dir: str | Path, count: int, seed: int = 0, test_count: int | None = None,
             blanks: int | None = None) -> Path | None:
    """Write train.csv/test.csv of unique-solution puzzles in the official format; None if already there.

    Cells are blanked while the solution stays unique, down to 24 clues, or exactly `blanks` blank cells
    when given (few blanks make easy puzzles: every blank is then forced by its filled peers).
    """
    _check_blanks(blanks)
    target_clues = DEFAULT_CLUES if blanks is None else 81 - blanks
    if count < 1:
        raise DatasetError(f"--count {count} must be at least 1")
    test_count = max(1, count // 5) if test_count is None else test_count
    if test_count < 1:
        raise DatasetError(f"--test-count {test_count} must be at least 1")
    info = {"builder": "sudoku-generate", "version": BUILDER_VERSION,
            "args": {"count": count, "seed": seed, "test_count": test_count, "target_clues": target_clues}}
    with building(Path(output_dir), info) as tmp:
        if tmp is None:
            return None
        rng = np.random.default_rng(seed)
        seen: set[str] = set()
        for name, n in (("train.csv", count), ("test.csv", test_count)):
            out = [",".join(HEADER)]
            while len(out) <= n:
                puzzle, solution = sudoku_solver.generate_puzzle(rng, target_clues)
                question = sudoku_solver.to_string(puzzle)
                if question in seen:  # keep train and test disjoint
                    continue
                seen.add(question)
                rating = sudoku_solver.solve(puzzle, 1).guesses
                out.append(f"generated,{question},{sudoku_solver.to_string(solution)},{rating}")
            atomic_write_bytes(tmp / name, ("\n".join(out) + "\n").encode())
    return Path(output_dir)


# ------------------------------------------------------------------------------------------------- CLI

def _run_build(args: argparse.Namespace) -> int:
    summary = build(args.source, args.output_dir, args.subsample_size, args.min_difficulty, args.num_aug,
                    args.seed, args.skip_bad, args.blanks)
    if summary is None:
        print(f"{args.output_dir}: already built, skipping")
        return 0
    for name, n in summary["skipped"].items():
        if n:
            print(f"skipped {n} bad rows in {name}")
    tr, te = summary["train"], summary["test"]
    print(f"sudoku: train {tr['puzzles']:,} puzzles in {tr['groups']:,} groups, test {te['puzzles']:,} "
          f"-> {args.output_dir}")
    return 0


def _run_generate(args: argparse.Namespace) -> int:
    out = generate(args.output_dir, args.count, args.seed, args.test_count, args.blanks)
    if out is None:
        print(f"{args.output_dir}: already generated, skipping")
    else:
        print(f"sudoku: wrote {out / 'train.csv'} and {out / 'test.csv'}; build with "
              f"hrm-data build sudoku --source {out} --output-dir DIR")
    return 0


def register_build(subparsers) -> None:
    p = subparsers.add_parser("sudoku", help="Sudoku-Extreme (HF sapientinc/sudoku-extreme or a folder)",
                              description="Build the Sudoku-Extreme dataset in the reference layout.")
    p.add_argument("--source", default=DEFAULT_SOURCE,
                   help=f"HF dataset id, a folder with train.csv and test.csv, 'auto' (the hub if it answers "
                        f"within seconds, else generated puzzles), or '{GENERATED}' (seeded generated puzzles, "
                        f"--subsample-size of them, default 1000) (default {DEFAULT_SOURCE})")
    p.add_argument("--output-dir", required=True, help="where to write the dataset (created atomically)")
    p.add_argument("--subsample-size", type=int, default=None, help="random N train rows (default: all)")
    p.add_argument("--min-difficulty", type=int, default=None, help="keep rows with rating >= R")
    p.add_argument("--num-aug", type=int, default=0, help="augmented copies per train puzzle (paper: 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subsample and the augmentations")
    p.add_argument("--skip-bad", action="store_true", help="skip malformed rows instead of stopping")
    p.add_argument("--blanks", type=int, default=None,
                   help=f"with --source {GENERATED}: blank cells per puzzle (default: as many as uniqueness "
                        f"allows, down to {DEFAULT_CLUES} clues)")
    p.set_defaults(func=_run_build)


def register_generate(subparsers) -> None:
    p = subparsers.add_parser("sudoku", help="random unique-solution puzzles as train.csv/test.csv",
                              description="Generate Sudoku puzzles in the Sudoku-Extreme CSV format "
                                          "(for offline use; not the official data).")
    p.add_argument("--count", type=int, required=True, help="train puzzles")
    p.add_argument("--test-count", type=int, default=None, help="test puzzles (default count // 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--blanks", type=int, default=None,
                   help=f"blank cells per puzzle, 1..{MAX_BLANKS}; fewer is easier (default: as many as "
                        f"uniqueness allows, down to {DEFAULT_CLUES} clues)")
    p.add_argument("--output-dir", required=True)
    p.set_defaults(func=_run_generate)
