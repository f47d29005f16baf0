"""ARC pass@k from saved predictions (`hrm-data arc-vote`, and `hrm-evaluate arc_vote=true`).

The reference scores ARC outside its trainer: every augmented test prediction is cropped, mapped
back to the original task frame (inverse dihedral, then inverse colour map, parsed from the puzzle
name), and the answers are voted by count with the mean sigmoid(q_halt) as tie-break. A task counts
for pass@k only if every one of its test inputs has the true output among its top k answers.

Prediction files (`step_N_all_preds.<rank>`, ours or the reference's) are torch dicts of CPU tensors;
they are read one at a time and in row chunks (logits are [N, 900, V] bf16, gigabytes for ARC-1).
Ground truth comes from the dataset's unaugmented test puzzles, so a task with no predictions counts
as wrong rather than vanishing from the denominator.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from hrm.data.augment import invert_augmentation, parse_augmented_name
from hrm.data.format import IDENTIFIERS, DatasetError, atomic_write_json, load_split

DEFAULT_KS = (1, 2, 10, 100, 1000)
REQUIRED_KEYS = ("inputs", "puzzle_identifiers", "logits", "q_halt_logits")
CHUNK_ROWS = 2048
TOP_SAVED = 10  # candidates per test input kept in the per-task JSON


def crop(tokens: np.ndarray) -> np.ndarray:
    """Colour grid (0..9) of an untranslated ARC row: the largest all-colour rectangle anchored at (0, 0).

    Scanning rows downward, the admissible width shrinks to the first non-colour cell of each row; the
    row count with the largest area wins (the first one on ties), as in the reference's notebook.
    """
    grid = np.asarray(tokens).reshape(30, 30)
    bad = (grid < 2) | (grid > 11)
    first_bad = np.where(bad.any(axis=1), bad.argmax(axis=1), 30)
    width = np.minimum.accumulate(first_bad)
    area = width * np.arange(1, 31)
    h = int(area.argmax()) + 1
    if area[h - 1] == 0:
        return np.zeros((0, 0), dtype=np.uint8)
    return (grid[:h, : width[h - 1]] - 2).astype(np.uint8)


def grid_key(grid: np.ndarray) -> bytes:
    """Hashable identity of a grid: its shape and its bytes."""
    g = np.ascontiguousarray(grid, dtype=np.uint8)
    return bytes([g.shape[0], g.shape[1] if g.ndim == 2 else 0]) + g.tobytes()


def key_grid(key: bytes) -> list[list[int]]:
    h, w = key[0], key[1]
    return np.frombuffer(key[2:], dtype=np.uint8).reshape(h, w).tolist() if h and w else []


def load_ground_truth(data_path: str | Path) -> tuple[list[str], dict[str, dict[bytes, bytes]]]:
    """(identifier names, {task: {input key: output key}}) from the unaugmented test puzzles."""
    data_path = Path(data_path)
    names_path = data_path / IDENTIFIERS
    if not names_path.is_file():
        raise DatasetError(f"{names_path} not found: --data-path must be the ARC dataset the predictions "
                           f"came from")
    names = json.loads(names_path.read_text())
    arrays = load_split(data_path / "test")
    truth: dict[str, dict[bytes, bytes]] = {}
    pidx = arrays["puzzle_indices"]
    for p, ident in enumerate(arrays["puzzle_identifiers"]):
        name = names[int(ident)]
        task, t, mapping = parse_augmented_name(name)
        if task != name:
            continue
        slots = truth.setdefault(task, {})
        for row in range(int(pidx[p]), int(pidx[p + 1])):
            slots[grid_key(crop(arrays["inputs"][row]))] = grid_key(crop(arrays["labels"][row]))
    if not truth:
        raise DatasetError(f"{data_path / 'test'} has no unaugmented ARC test puzzles: is it an ARC dataset?")
    return names, truth


def prediction_files(preds_prefix: str | Path) -> list[Path]:
    """`PREFIX_all_preds.*` (PREFIX like .../step_N), or a folder holding exactly one step's files."""
    prefix = Path(preds_prefix)
    if prefix.is_dir():
        files = sorted(prefix.glob("step_*_all_preds.*"))
        steps = {re.sub(r"_all_preds\..*$", "", f.name) for f in files}
        if len(steps) > 1:
            raise DatasetError(f"{prefix} holds predictions of several steps ({', '.join(sorted(steps))}): "
                               f"pass one prefix, e.g. {prefix / sorted(steps)[-1]}")
    else:
        stem = re.sub(r"_all_preds(\.\d+)?$", "", prefix.name)
        files = sorted(prefix.parent.glob(f"{stem}_all_preds.*"))
    files = [f for f in files if re.search(r"_all_preds\.\d+$", f.name)]
    if not files:
        raise DatasetError(f"no prediction files {preds_prefix}_all_preds.* found: run hrm-evaluate with "
                           f"eval_save_outputs (or arc_vote=true) first, or fix the prefix")
    return sorted(files, key=lambda f: int(f.name.rsplit(".", 1)[1]))


def _load_preds(path: Path) -> dict:
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # files from the legacy (non-zip) serialiser cannot be memory-mapped
        data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict):
        raise DatasetError(f"{path} is not a dict of tensors: is it a step_N_all_preds file?")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise DatasetError(f"{path} lacks {', '.join(missing)}: save predictions with eval_save_outputs = "
                           f"[inputs, labels, puzzle_identifiers, logits, q_halt_logits, q_continue_logits]")
    return data


def _accumulate(path: Path, names: list[str], truth: dict, votes: dict, stats: dict) -> None:
    """Add one file's votes: votes[(task, input key)][answer key] = [count, sum of sigmoid(q_halt)]."""
    import torch

    data = _load_preds(path)
    n = int(data["puzzle_identifiers"].shape[0])
    for start in range(0, n, CHUNK_ROWS):
        sl = slice(start, min(n, start + CHUNK_ROWS))
        ids = data["puzzle_identifiers"][sl].numpy()
        keep = np.flatnonzero(ids != 0)
        stats["padding_rows"] += len(ids) - len(keep)
        if not len(keep):
            continue
        rows = torch.from_numpy(keep + start)
        preds = data["logits"].index_select(0, rows).argmax(dim=-1).to(torch.uint8).numpy()
        inputs = data["inputs"].index_select(0, rows).to(torch.int32).numpy()
        q = torch.sigmoid(data["q_halt_logits"].index_select(0, rows).float()).numpy()
        for j, ident in enumerate(ids[keep]):
            if not 0 <= int(ident) < len(names):
                raise DatasetError(f"{path}: puzzle identifier {int(ident)} is not in {IDENTIFIERS} "
                                   f"({len(names)} names): the predictions come from another dataset")
            task, t, mapping = parse_augmented_name(names[int(ident)])
            slots = truth.get(task)
            inp = grid_key(invert_augmentation(crop(inputs[j]), t, mapping))
            if slots is None or inp not in slots:
                stats["unmatched_rows"] += 1
                continue
            ans = grid_key(invert_augmentation(crop(preds[j]), t, mapping))
            cell = votes[(task, inp)].setdefault(ans, [0, 0.0])
            cell[0] += 1
            cell[1] += float(q[j])
            stats["rows"] += 1


def vote(preds_prefix: str | Path, data_path: str | Path, ks=DEFAULT_KS,
         output_json: Path | None = None) -> dict:
    """pass@k over ARC tasks from saved predictions; optionally write a per-task JSON.

    Returns {"pass@k": fraction for each k, "tasks", "correct@k": counts, "rows", "padding_rows",
    "unmatched_rows", "files"}.
    """
    ks = tuple(sorted(int(k) for k in ks))
    names, truth = load_ground_truth(data_path)
    files = prediction_files(preds_prefix)
    votes: dict = defaultdict(dict)
    stats = {"rows": 0, "padding_rows": 0, "unmatched_rows": 0}
    for path in files:
        _accumulate(path, names, truth, votes, stats)

    per_task = {}
    correct = dict.fromkeys(ks, 0)
    for task in sorted(truth):
        slots = []
        for inp, answer in truth[task].items():
            cands = votes.get((task, inp), {})
            ranked = sorted(cands.items(), key=lambda kv: (kv[1][0], kv[1][1] / kv[1][0]), reverse=True)
            rank = next((r for r, (key, _) in enumerate(ranked) if key == answer), None)
            slots.append({"rank": rank, "votes": sum(c for c, _ in cands.values()), "input": key_grid(inp),
                          "answer": key_grid(answer),
                          "candidates": [{"grid": key_grid(key), "count": c, "mean_q": s / c}
                                         for key, (c, s) in ranked[:TOP_SAVED]]})
        passed = {k: all(s["rank"] is not None and s["rank"] < k for s in slots) for k in ks}
        for k in ks:
            correct[k] += passed[k]
        per_task[task] = {"pass": {f"pass@{k}": passed[k] for k in ks}, "test_inputs": slots}
    n_tasks = len(truth)
    result = {f"pass@{k}": correct[k] / n_tasks for k in ks}
    result.update({"tasks": n_tasks, "correct": {f"pass@{k}": correct[k] for k in ks},
                   "files": [str(f) for f in files], **stats})
    if output_json is not None:
        atomic_write_json(Path(output_json), {"summary": result, "tasks": per_task})
    return result


# ---------------------------------------------------------------------------------------------------
# CLI


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("arc-vote", help="ARC pass@k from saved predictions (step_N_all_preds.*)")
    p.add_argument("preds_prefix", help="e.g. checkpoints/RUN/step_414456 (reads step_414456_all_preds.*)")
    p.add_argument("--data-path", required=True, help="the ARC dataset the predictions were made on")
    p.add_argument("--output", default=None, help="per-task JSON for later analysis")
    p.add_argument("--ks", type=int, nargs="+", default=list(DEFAULT_KS))
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_vote_cmd)


def _vote_cmd(args: argparse.Namespace) -> int:
    result = vote(args.preds_prefix, args.data_path, args.ks, Path(args.output) if args.output else None)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return 0
    for k in args.ks:
        hits = result["correct"][f"pass@{k}"]
        print(f"{k}-shot: {100 * result[f'pass@{k}']:.2f}%  ({hits}/{result['tasks']})")
    print(f"{result['rows']:,} predictions voted, {result['padding_rows']:,} padding rows dropped, "
          f"{result['unmatched_rows']:,} not matching any test input")
    return 0
