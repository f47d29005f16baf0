"""Route metrics (A.8 item 7) and the dataset linter (item 8) of the city-logistics task.

Metrics score predicted grids against labels: exact match, valid route (the predicted ROUTE cells with the two
endpoints form one simple 4-connected path over cells the vehicle may enter), cost-optimal (valid and as cheap
as the label, which also credits another optimum), the mean cost ratio of valid routes and the F1 of route
cells, overall and per vehicle. The linter measures what would have caught the community benchmark's defects:
how much is supervised, what trivial predictors score, duplicate inputs with conflicting labels (and the
accuracy ceiling they impose), ties among optimal routes, unused tokens and train/test overlap.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np

from hrm.data.format import BUILD_INFO, load_split, read_metadata
from hrm.data.logistics import (
    COST_TABLE,
    GOAL,
    GOAL_COST,
    ROUTE,
    START_TOKENS,
    TOKENS,
    VEHICLES,
    VOCAB_SIZE,
    cost_grid,
    vehicle_of,
)
from hrm.data.logistics_solver import solve

LINT_SAMPLE = 1000  # examples per split re-solved for the tie check (evenly spaced, so deterministic)
LINT_CHUNK_ROWS = 4096  # rows read at a time
METRICS = ("exact", "valid_route", "cost_optimal", "mean_cost_ratio", "route_f1")


def is_logistics(data_path: str | Path) -> bool:
    """A dataset built by `hrm-data build logistics` (build_info), or one with its vocabulary on a square grid."""
    data_path = Path(data_path)
    info = data_path / BUILD_INFO
    if info.is_file():
        try:
            return json.loads(info.read_text()).get("builder") == "logistics"
        except (ValueError, AttributeError):
            return False
    try:
        meta = read_metadata(data_path / "train")
    except ValueError:
        return False
    side = int(round(meta.seq_len ** 0.5))
    return meta.vocab_size == VOCAB_SIZE and side * side == meta.seq_len


# ---------------------------------------------------------------------------------------------------
# Metrics


def _endpoints(grid: np.ndarray) -> tuple[tuple[int, int], tuple[int, int]]:
    start = tuple(int(x) for x in np.argwhere(np.isin(grid, START_TOKENS))[0])
    goal = tuple(int(x) for x in np.argwhere(grid == GOAL)[0])
    return start, goal


def route_cost(grid: np.ndarray, vehicle: int, cells: np.ndarray) -> int | None:
    """Cost of a route given as a mask of the cells between the endpoints (None if one is impassable)."""
    costs = COST_TABLE[vehicle][grid[cells]]
    return None if np.any(costs <= 0) else int(costs.sum()) + GOAL_COST


def is_valid_route(grid: np.ndarray, vehicle: int, cells: np.ndarray) -> bool:
    """True when `cells` (mask [h, w], endpoints excluded) plus start and goal form one simple path from start
    to goal over cells the vehicle may enter. The drawing must be an induced path: a route cell touching the
    route anywhere but its two neighbours is ambiguous (optimal routes never do: the contact is a shortcut)."""
    start, goal = _endpoints(grid)
    if np.any(cost_grid(grid, vehicle)[cells] <= 0):
        return False
    on = cells.copy()
    on[start] = on[goal] = True
    padded = np.pad(on, 1)
    degree = padded[:-2, 1:-1].astype(int) + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
    want = np.where(on, 2, 0)
    want[start] = want[goal] = 1
    if np.any(degree[on] != want[on]):
        return False
    seen, todo = {start}, [start]  # degrees alone allow a path plus separate loops: check connectedness
    while todo:
        r, c = todo.pop()
        for nb in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            if 0 <= nb[0] < on.shape[0] and 0 <= nb[1] < on.shape[1] and on[nb] and nb not in seen:
                seen.add(nb)
                todo.append(nb)
    return len(seen) == int(on.sum())


def score_example(inputs: np.ndarray, labels: np.ndarray, preds: np.ndarray) -> dict:
    """Metrics of one example (flat token rows): exact, valid_route, cost_optimal, cost_ratio, route_f1."""
    side = int(round(len(inputs) ** 0.5))
    grid = np.asarray(inputs).reshape(side, side)
    vehicle = int(vehicle_of(grid.reshape(1, -1))[0])
    endpoints = np.isin(grid, START_TOKENS) | (grid == GOAL)
    pred = (np.asarray(preds).reshape(side, side) == ROUTE) & ~endpoints
    true = (np.asarray(labels).reshape(side, side) == ROUTE) & ~endpoints
    valid = is_valid_route(grid, vehicle, pred)
    cost, optimum = route_cost(grid, vehicle, pred) if valid else None, route_cost(grid, vehicle, true)
    tp, wrong = int((pred & true).sum()), int((pred ^ true).sum())
    return {"vehicle": VEHICLES[vehicle], "exact": bool(np.array_equal(preds, labels)), "valid_route": valid,
            "cost_optimal": valid and cost == optimum,
            "cost_ratio": cost / optimum if valid and optimum else None,
            "route_f1": 2 * tp / (2 * tp + wrong) if (2 * tp + wrong) else 1.0}


def _summary(rows: list[dict]) -> dict:
    ratios = [r["cost_ratio"] for r in rows if r["cost_ratio"] is not None]
    out = {"count": len(rows)}
    for key in ("exact", "valid_route", "cost_optimal", "route_f1"):
        out[key] = float(np.mean([r[key] for r in rows])) if rows else None
    out["mean_cost_ratio"] = float(np.mean(ratios)) if ratios else None
    return out


def route_metrics(inputs: np.ndarray, labels: np.ndarray, preds: np.ndarray) -> dict:
    """{"all": summary, "by_vehicle": {vehicle: summary}} over examples (rows of flat token grids)."""
    rows = [score_example(i, lab, p) for i, lab, p in zip(inputs, labels, preds)]
    by = {v: _summary([r for r in rows if r["vehicle"] == v]) for v in VEHICLES}
    return {"all": _summary(rows), "by_vehicle": {v: s for v, s in by.items() if s["count"]}}


def evaluation_hook(data_path: str | Path, run_dir: Path, step: int) -> dict:
    """{"logistics": route metrics} from the saved predictions of step `step` (every rank's file), printed as a
    table; {} for any other dataset, or when the predictions were not saved with inputs, labels and logits."""
    if not is_logistics(data_path):
        return {}
    import torch
    from rich.table import Table

    from hrm.track import console

    parts: dict[str, list[np.ndarray]] = {"inputs": [], "labels": [], "preds": []}
    for path in sorted(Path(run_dir).glob(f"step_{step}_all_preds.*")):
        if not path.name.rsplit(".", 1)[1].isdigit():
            continue
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if not {"inputs", "labels"} <= saved.keys() or not ({"preds", "logits"} & saved.keys()):
            console.print("route metrics skipped: save inputs, labels and logits (eval_save_outputs)")
            return {}
        parts["inputs"].append(saved["inputs"].numpy())
        parts["labels"].append(saved["labels"].numpy())
        preds = saved["preds"] if "preds" in saved else saved["logits"].argmax(-1)
        parts["preds"].append(preds.numpy())
    if not parts["inputs"]:
        return {}
    result = route_metrics(*(np.concatenate(parts[k]) for k in ("inputs", "labels", "preds")))
    table = Table(title=f"route metrics, step {step}")
    table.add_column("vehicle")
    for name in ("count", "exact", "valid", "optimal", "cost ratio", "route F1"):  # METRICS, short
        table.add_column(name, justify="right")
    for name, s in (("all", result["all"]), *result["by_vehicle"].items()):
        table.add_row(name, str(s["count"]), *("-" if s[m] is None else f"{s[m]:.4f}" for m in METRICS))
    console.print(table)
    return {"logistics": result}


# ---------------------------------------------------------------------------------------------------
# Linter


def _digests(rows: np.ndarray) -> list[bytes]:
    """A 16-byte digest per row: duplicates found in bounded memory (a false match is ~2^-64 per pair)."""
    rows = np.ascontiguousarray(rows, dtype=np.uint8)
    return [hashlib.blake2b(r.tobytes(), digest_size=16).digest() for r in rows]


def lint_split(inputs: np.ndarray, labels: np.ndarray, ignore_label_id: int | None,
               sample: int = LINT_SAMPLE) -> tuple[dict, set[bytes]]:
    """The linter's numbers for one split (arrays [n, seq], memory maps are fine: read a slice of rows at a
    time), and the digests of its inputs (for the overlap between splits)."""
    n = len(inputs)
    sup_cells = 0
    acc = {"all_route": 0.0, "copy_input": 0.0}
    exact = {"all_route": 0, "copy_input": 0}
    hist_in = np.zeros(VOCAB_SIZE, dtype=np.int64)
    hist_lab = np.zeros(VOCAB_SIZE, dtype=np.int64)
    by_input: dict[bytes, Counter] = {}
    for r0 in range(0, n, LINT_CHUNK_ROWS):
        inp, lab = np.asarray(inputs[r0:r0 + LINT_CHUNK_ROWS]), np.asarray(labels[r0:r0 + LINT_CHUNK_ROWS])
        sup = lab != ignore_label_id if ignore_label_id is not None else np.ones(lab.shape, dtype=bool)
        per_row = sup.sum(1)
        sup_cells += int(per_row.sum())
        for name, guess in (("all_route", ROUTE), ("copy_input", inp)):
            hits = ((lab == guess) & sup).sum(1)
            acc[name] += float((hits / np.maximum(per_row, 1)).sum())
            exact[name] += int((hits == per_row).sum())
        hist_in += np.bincount(inp.ravel(), minlength=VOCAB_SIZE)[:VOCAB_SIZE]
        hist_lab += np.bincount(lab.ravel(), minlength=VOCAB_SIZE)[:VOCAB_SIZE]
        for key, label_key in zip(_digests(inp), _digests(lab)):
            by_input.setdefault(key, Counter())[label_key] += 1
    out: dict = {"examples": n, "supervised_fraction": sup_cells / (n * inputs.shape[1]) if n else 0.0}
    for name in acc:
        out[name] = {"cell_accuracy": acc[name] / n if n else 0.0, "exact": exact[name] / n if n else 0.0}
    conflicting = sum(1 for c in by_input.values() if len(c) > 1)
    out.update(distinct_inputs=len(by_input), conflicting_inputs=conflicting,
               accuracy_ceiling=sum(max(c.values()) for c in by_input.values()) / n if n else 1.0)
    picks = np.unique(np.linspace(0, n - 1, min(sample, n)).astype(int)) if n else []
    ties = unreachable = wrong = 0
    side = int(round(inputs.shape[1] ** 0.5))
    for i in picks:
        grid = inputs[i].reshape(side, side)
        vehicle = int(vehicle_of(inputs[i:i + 1])[0])
        if vehicle < 0 or not np.any(grid == GOAL):
            wrong += 1
            continue
        start, goal = _endpoints(grid)
        sol = solve(cost_grid(grid, vehicle), start, goal)
        label_route = (labels[i].reshape(side, side) == ROUTE)
        if sol.cost is None:
            unreachable += 1
            continue
        ties += sol.count > 1
        best = np.zeros_like(label_route)
        for cell in sol.route[1:-1]:
            best[cell] = True
        wrong += sol.count == 1 and not np.array_equal(best, label_route)
    out.update(solved=len(picks), tie_rate=ties / len(picks) if len(picks) else 0.0,
               unreachable=unreachable, label_not_optimal=int(wrong))
    out["input_histogram"], out["label_histogram"] = hist_in.tolist(), hist_lab.tolist()
    return out, set(by_input)


def lint_dataset(path: str | Path, sample: int = LINT_SAMPLE) -> tuple[dict, list[str], list[str]]:
    """(report per split plus cross-split numbers, errors, warnings) for a built logistics dataset."""
    path = Path(path)
    report: dict = {"splits": {}}
    errors: list[str] = []
    warnings: list[str] = []
    keys: dict[str, set[bytes]] = {}
    for split in ("train", "val", "test"):
        if not (path / split / "dataset.json").is_file():
            continue
        try:
            meta = read_metadata(path / split)
            arrays = load_split(path / split)
            r, keys[split] = lint_split(arrays["inputs"], arrays["labels"], meta.ignore_label_id, sample)
        except (ValueError, IndexError) as e:  # a split the structural checks do not cover (val): one line
            errors.append(f"logistics {split}: cannot lint ({e}); rebuild the dataset")
            continue
        report["splits"][split] = r
        if r["conflicting_inputs"]:
            errors.append(f"logistics {split}: {r['conflicting_inputs']} inputs carry different labels (accuracy "
                          f"ceiling {100 * r['accuracy_ceiling']:.1f}%): the input must determine the label")
        for name in ("all_route", "copy_input"):
            if r[name]["exact"] > 0:
                errors.append(f"logistics {split}: predicting {name.replace('_', '-')} is exactly right on "
                              f"{100 * r[name]['exact']:.1f}% of examples: the labels do not need a route")
        if r["tie_rate"] or r["unreachable"] or r["label_not_optimal"]:
            errors.append(f"logistics {split}: of {r['solved']} re-solved examples {100 * r['tie_rate']:.1f}% have "
                          f"tied optima, {r['unreachable']} have no route and {r['label_not_optimal']} have a label "
                          f"that is not the optimum: regenerate with hrm-data generate logistics")
        if r["supervised_fraction"] < 0.5:
            warnings.append(f"logistics {split}: only {100 * r['supervised_fraction']:.1f}% of label cells are "
                            f"supervised")
    used = np.zeros(VOCAB_SIZE, dtype=bool)
    for r in report["splits"].values():
        used |= (np.array(r["input_histogram"]) > 0) | (np.array(r["label_histogram"]) > 0)
    unused = [TOKENS[t] for t in range(1, VOCAB_SIZE) if not used[t]]
    report["unused_tokens"] = unused
    if unused:
        warnings.append(f"logistics: tokens never used in any split: {', '.join(unused)}")
    for split in ("val", "test"):
        if split in keys and "train" in keys:
            overlap = len(keys[split] & keys["train"])
            report[f"{split}_inputs_in_train"] = overlap
            if overlap:
                errors.append(f"logistics: {overlap} {split} inputs also occur in train: the {split} split does "
                              f"not measure generalisation; regenerate with separate seeds")
    return report, errors, warnings


def lint_table(report: dict):
    """The linter's report as a rich table, one column per split (for `hrm-data check`)."""
    from rich.table import Table

    splits = report["splits"]
    table = Table(title="logistics linter")
    table.add_column("what")
    for split in splits:
        table.add_column(split, justify="right")

    def pct(x: float) -> str:
        return f"{100 * x:.2f}%"

    rows = [("supervised label cells", lambda r: pct(r["supervised_fraction"])),
            ("all-ROUTE: cell acc / exact", lambda r: f"{pct(r['all_route']['cell_accuracy'])} / "
                                                      f"{pct(r['all_route']['exact'])}"),
            ("copy-input: cell acc / exact", lambda r: f"{pct(r['copy_input']['cell_accuracy'])} / "
                                                       f"{pct(r['copy_input']['exact'])}"),
            ("distinct inputs", lambda r: f"{r['distinct_inputs']:,} of {r['examples']:,}"),
            ("inputs with conflicting labels", lambda r: f"{r['conflicting_inputs']:,}"),
            ("exact-accuracy ceiling", lambda r: pct(r["accuracy_ceiling"])),
            ("tied optima (re-solved)", lambda r: f"{pct(r['tie_rate'])} of {r['solved']:,}"),
            ("no route / label not optimal", lambda r: f"{r['unreachable']} / {r['label_not_optimal']}")]
    for label, cell in rows:
        table.add_row(label, *(cell(r) for r in splits.values()))
    for t in range(1, VOCAB_SIZE):
        table.add_row(f"{TOKENS[t]} (inputs / labels)",
                      *(f"{r['input_histogram'][t]:,} / {r['label_histogram'][t]:,}" for r in splits.values()))
    for split in ("val", "test"):
        if f"{split}_inputs_in_train" in report:
            table.add_row(f"{split} inputs also in train", *(
                str(report[f"{split}_inputs_in_train"]) if s == split else "" for s in splits))
    return table
