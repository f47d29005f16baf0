"""City-logistics routing (city-logistics.md A.8): solver against brute force, generator, builder, linter, metrics."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hrm.data import logistics as L
from hrm.data.augment import dihedral
from hrm.data.check import check_dataset
from hrm.data.format import DatasetError, load_split
from hrm.data.logistics_metrics import evaluation_hook, is_valid_route, route_metrics, score_example
from hrm.data.logistics_solver import solve


def grid_of(rows: list[str]) -> np.ndarray:
    """Token grid from rows of CSV characters."""
    return np.array([[L.CHARSET.index(ch) for ch in row] for row in rows], dtype=np.uint8)


def endpoints(grid: np.ndarray) -> tuple[tuple[int, int], tuple[int, int]]:
    start = tuple(int(x) for x in np.argwhere(np.isin(grid, L.START_TOKENS))[0])
    return start, tuple(int(x) for x in np.argwhere(grid == L.GOAL)[0])


def brute_force(costs: np.ndarray, start, goal) -> tuple[int | None, list[list[tuple[int, int]]]]:
    """(least cost, every simple path of that cost) by enumerating all simple paths: no Dijkstra involved."""
    h, w = costs.shape
    found: list[tuple[int, list]] = []
    path = [start]

    def walk(cell, cost):
        if cell == goal:
            found.append((cost, list(path)))
            return
        r, c = cell
        for nb in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            if 0 <= nb[0] < h and 0 <= nb[1] < w and costs[nb] > 0 and nb not in path:
                path.append(nb)
                walk(nb, cost + int(costs[nb]))
                path.pop()

    walk(start, 0)
    if not found:
        return None, []
    best = min(c for c, _ in found)
    return best, [p for c, p in found if c == best]


# --- the task's constants ---------------------------------------------------------------------------------


def test_tokens_and_costs_follow_a8():
    assert L.TOKENS == ("PAD", "BUILDING", "AVENUE", "STREET", "ALLEY", "AVENUE_JAM", "STREET_JAM", "CLOSURE",
                        "GOAL", "START_BIKE", "START_CAR", "START_VAN", "START_TRUCK", "ROUTE")
    table = {"bike": (2, 2, 2, 3, 3), "car": (1, 2, 4, 6, 8), "van": (1, 3, 0, 6, 9), "truck": (1, 0, 0, 6, 0)}
    roads = [L.AVENUE, L.STREET, L.ALLEY, L.AVENUE_JAM, L.STREET_JAM]
    for v, name in enumerate(L.VEHICLES):
        assert tuple(L.COST_TABLE[v, roads]) == table[name]  # 0: closed to that vehicle (the A.8 infinity)
        assert L.COST_TABLE[v, [L.PAD, L.BUILDING, L.CLOSURE, L.ROUTE, *L.START_TOKENS]].max() == 0
    assert len(L.CHARSET) == len(L.TOKEN_COLOURS) == L.VOCAB_SIZE == 14


# --- solver -----------------------------------------------------------------------------------------------


def test_solver_counts_optima_like_brute_force_on_random_grids():
    rng = np.random.default_rng(7)
    ties = 0
    for _ in range(60):
        costs = rng.integers(1, 4, size=(5, 5)) * (rng.random((5, 5)) > 0.3)
        cells = np.argwhere(costs > 0)
        if len(cells) < 2:
            continue
        a, b = (tuple(int(x) for x in cells[i]) for i in rng.choice(len(cells), 2, replace=False))
        best, paths = brute_force(costs, a, b)
        sol = solve(costs, a, b)
        assert sol.cost == best and sol.count == len(paths)
        if paths:
            assert sol.route in paths
        ties += len(paths) > 1
    assert ties >= 5  # the grids did exercise the counting of tied optima


def test_generated_labels_are_the_unique_optimum_by_brute_force():
    for side in (6, 7, 8):
        for i in range(6):
            for v, (inp, lab, cost) in enumerate(L.generate_group(np.random.default_rng([3, side, i]), side)):
                start, goal = endpoints(inp)
                best, paths = brute_force(L.cost_grid(inp, v), start, goal)
                assert best == cost and len(paths) == 1, (side, i, v)
                route = np.zeros(inp.shape, dtype=bool)
                route[tuple(np.array(paths[0][1:-1]).T)] = True
                assert np.array_equal(lab == L.ROUTE, route)
                assert np.array_equal(np.where(route, inp, lab), inp)  # only route cells change
                assert inp[start] == L.START_TOKENS[v] and lab[start] == inp[start] and lab[goal] == L.GOAL


def test_dihedral_transform_of_a_label_is_the_optimum_of_the_transformed_city():
    for inp, lab, cost in L.generate_group(np.random.default_rng(11), 10):
        v = int(L.vehicle_of(inp.reshape(1, -1))[0])
        for t in range(8):
            tin, tlab = dihedral(inp, t), dihedral(lab, t)
            sol = solve(L.cost_grid(tin, v), *endpoints(tin))
            assert sol.count == 1 and sol.cost == cost
            assert sorted(sol.route[1:-1]) == sorted(map(tuple, np.argwhere(tlab == L.ROUTE).tolist()))


def test_instances_with_ties_greedy_routes_or_no_route_are_rejected():
    tie = grid_of(["AAAAA", "A###A", "AAAAA", "#####", "#####"])
    assert solve(L.cost_grid(tie, 1), (0, 0), (2, 4)).count == 2
    assert L.label_city(tie, (0, 0), (2, 4)) is None
    straight = grid_of(["AAAAA", "#####", "#####", "#####", "#####"])
    assert L.label_city(straight, (0, 0), (0, 4)) is None  # unique, but the greedy walk finds it
    no_truck = grid_of(["AASAA", "#####", "#####", "#####", "#####"])
    assert solve(L.cost_grid(no_truck, 3), (0, 0), (0, 4)).cost is None
    assert L.label_city(no_truck, (0, 0), (0, 4)) is None  # the truck has no route
    detour = grid_of(["AA#AA", "#AAA#", "#####", "#####", "#####"])
    found = L.label_city(detour, (0, 0), (0, 4))
    assert found is not None and [int(L.vehicle_of(i.reshape(1, -1))[0]) for i, _, _ in found] == [0, 1, 2, 3]
    assert [c for _, _, c in found] == [5 * 2 + 1, 5 + 1, 5 + 1, 5 + 1]  # 5 avenue cells and the goal


# --- generation and building ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("logistics")
    L.build(L.GENERATED, root / "ds", num_train=6, num_test=5, num_val=2, grid_size=10, seed=4)
    return root / "ds"


def test_build_layout(built):
    train, test, val = (load_split(built / s) for s in ("train", "test", "val"))
    meta = {s: json.loads((built / s / "dataset.json").read_text()) for s in ("train", "test", "val")}
    assert meta["train"] == {"pad_id": 0, "ignore_label_id": 0, "blank_identifier_id": 0, "vocab_size": 14,
                             "seq_len": 100, "num_puzzle_identifiers": 1, "total_groups": 6,
                             "mean_puzzle_examples": 1.0, "sets": ["all"], "total_puzzles": 6 * 32}
    assert meta["test"]["total_puzzles"] == 20 and meta["val"]["total_puzzles"] == 8
    assert list(train["group_indices"]) == list(range(0, 6 * 32 + 1, 32))
    assert list(test["group_indices"]) == list(range(0, 21, 4))
    assert json.loads((built / "identifiers.json").read_text()) == ["<blank>"]
    raw = next((built.parent / "raw").iterdir())
    csv_in, csv_lab, keys = L.read_csv(raw / "test.csv")
    assert np.array_equal(test["inputs"], csv_in) and np.array_equal(test["labels"], csv_lab)  # unaugmented
    assert len(set(keys)) == 5
    tr_in, tr_lab, _ = L.read_csv(raw / "train.csv")
    for row in (0, 5, 23):  # each train row is followed by its 8 dihedral transforms, in the group of its map
        for t in range(8):
            for field, src in (("inputs", tr_in), ("labels", tr_lab)):
                assert np.array_equal(train[field][row * 8 + t].reshape(10, 10), dihedral(src[row].reshape(10, 10), t))
    for g in range(6):  # a group is one map: its 4 vehicles, one start and goal, one city
        rows = tr_in[4 * g:4 * g + 4]
        assert sorted(L.vehicle_of(rows).tolist()) == [0, 1, 2, 3]
        assert (rows == rows[0]).all(axis=0).sum() == 99


def test_same_seed_gives_byte_identical_datasets_and_splits_do_not_share_seeds(built, tmp_path):
    again = tmp_path / "ds"
    L.build(L.GENERATED, again, num_train=6, num_test=5, num_val=2, grid_size=10, seed=4)
    files = sorted(p.relative_to(built) for p in built.rglob("*") if p.is_file() and p.name != "build_info.json")
    assert len(files) == 3 * 6 + 1
    for f in files:
        assert (again / f).read_bytes() == (built / f).read_bytes(), f
    raw_a, raw_b = (next((d / "raw").iterdir()) for d in (built.parent, tmp_path))
    for name in ("train.csv", "val.csv", "test.csv"):
        assert (raw_a / name).read_bytes() == (raw_b / name).read_bytes()
    # a city depends on (seed, split, index) only, and the splits draw different cities
    assert L.generate_rows("train", 2, 4, 10) == L.generate_rows("train", 3, 4, 10)[:8]
    test_cities = {r[1] for r in L.generate_rows("test", 3, 4, 10)}
    assert test_cities.isdisjoint(r[1] for r in L.generate_rows("train", 3, 4, 10))
    assert L.generate_rows("train", 2, 5, 10) != L.generate_rows("train", 2, 4, 10)


def test_bad_input_is_one_clear_line(tmp_path):
    with pytest.raises(DatasetError, match="--grid-size 3 is out of range"):
        L.generate(tmp_path / "a", 2, 2, grid_size=3)
    with pytest.raises(DatasetError, match="--num-train 0 must be at least 1"):
        L.generate(tmp_path / "a", 0, 2)
    with pytest.raises(DatasetError, match="is not a directory"):
        L.build(tmp_path / "nowhere", tmp_path / "out")
    src = tmp_path / "src"
    src.mkdir()
    rows = L.generate_rows("train", 1, 0, 6)
    head = ",".join(L.HEADER)
    bad = (rows[1][0], rows[1][1], rows[1][2].replace("#", "o", 1), rows[1][3])  # a building marked as route
    (src / "train.csv").write_text("\n".join([head, ",".join(rows[0]), ",".join(bad)]) + "\n")
    (src / "test.csv").write_text("\n".join([head, ",".join(rows[0])]) + "\n")
    with pytest.raises(DatasetError, match=r"train\.csv line 3: the answer changes '#' into 'o'"):
        L.build(src, tmp_path / "out")
    (src / "train.csv").write_text("\n".join([head, ",".join((rows[0][0], rows[0][1][:-1], rows[0][2], "1"))]) + "\n")
    with pytest.raises(DatasetError, match=r"train\.csv line 2: question has 35 characters, not a square grid"):
        L.build(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_generate_build_check_show(tmp_path, capsys):
    from hrm.data.cli import main
    from hrm.data.show import load_puzzle, print_puzzle

    gen = ["generate", "logistics", "--out", str(tmp_path / "csv"), "--num-train", "3", "--num-test", "2",
           "--seed", "1", "--grid-size", "8"]
    assert main(gen) == 0
    assert main(["build", "logistics", "--source", str(tmp_path / "csv"), "--output-dir", str(tmp_path / "ds")]) == 0
    assert len(load_split(tmp_path / "ds" / "train")["inputs"]) == 3 * 4 * 8
    assert main(["check", str(tmp_path / "ds"), "--global-batch-size", "8"]) == 0
    assert "logistics linter" in capsys.readouterr().out
    assert main(gen[:-1] + ["4"]) == 2  # grid size 4: one line, exit 2
    assert "--grid-size 4 is out of range" in capsys.readouterr().err
    puzzle = load_puzzle(tmp_path / "ds", 9, "train")
    assert puzzle["kind"] == "logistics"
    print_puzzle(puzzle)
    out = capsys.readouterr().out
    assert L.CHARSET[L.ROUTE] in out and L.CHARSET[L.GOAL] in out


# --- linter -----------------------------------------------------------------------------------------------


def test_linter_passes_a_good_dataset(built):
    report = check_dataset(built, global_batch_size=8)
    assert report["ok"], report["errors"]
    lint = report["logistics"]
    for split, n in (("train", 6 * 32), ("val", 8), ("test", 20)):
        r = lint["splits"][split]
        assert r["examples"] == n and r["supervised_fraction"] == 1.0 and r["conflicting_inputs"] == 0
        assert r["accuracy_ceiling"] == 1.0 and r["tie_rate"] == 0.0 and r["label_not_optimal"] == 0
        assert r["all_route"]["exact"] == 0.0 and r["copy_input"]["exact"] == 0.0
        assert 0.5 < r["copy_input"]["cell_accuracy"] < 1.0
        assert sum(r["label_histogram"]) == n * 100 and r["input_histogram"][L.ROUTE] == 0
    assert lint["test_inputs_in_train"] == 0


def _broken_copy(built: Path, tmp_path: Path, edit, splits=("test",)) -> Path:
    """A copy of the dataset whose inputs and labels `edit(split, arrays)` has changed in place."""
    out = tmp_path / "broken"
    shutil.copytree(built, out)
    for split in splits:
        arrays = {k: np.array(load_split(out / split)[k]) for k in ("inputs", "labels")}
        edit(split, arrays)
        for k, a in arrays.items():
            np.save(out / split / f"all__{k}.npy", a)
    return out


def test_linter_flags_conflicting_duplicates(built, tmp_path):
    def duplicate(split, a):
        a["inputs"][1] = a["inputs"][0]  # same input, but row 1 keeps the label of another vehicle
    report = check_dataset(_broken_copy(built, tmp_path, duplicate), global_batch_size=8)
    assert not report["ok"]
    r = report["logistics"]["splits"]["test"]
    assert r["conflicting_inputs"] == 1 and r["accuracy_ceiling"] == pytest.approx(19 / 20)
    assert any("carry different labels (accuracy ceiling 95.0%)" in e for e in report["errors"])


def test_linter_flags_labels_without_routes_train_overlap_and_unused_tokens(built, tmp_path):
    train = load_split(built / "train")

    def edit(split, a):
        if split == "test":
            a["labels"][2] = a["inputs"][2]  # a label with no route: copy-input is exactly right there
            a["inputs"][3] = train["inputs"][0]  # a test input that train holds
            a["labels"][3] = train["labels"][0]
        for k in a:
            a[k][a[k] == L.CLOSURE] = L.BUILDING  # closures are never used (the optimum stays the same)
    report = check_dataset(_broken_copy(built, tmp_path, edit, ("train", "val", "test")), global_batch_size=8)
    errors = " | ".join(report["errors"])
    assert "logistics test: predicting copy-input is exactly right on 5.0% of examples" in errors
    assert "1 test inputs also occur in train" in errors
    assert "0 have no route and 1 have a label that is not the optimum" in errors
    assert report["logistics"]["unused_tokens"] == ["CLOSURE"]
    assert "logistics: tokens never used in any split: CLOSURE" in report["warnings"]
    assert not any(e.startswith(("logistics train", "logistics val")) for e in report["errors"])


# --- metrics ----------------------------------------------------------------------------------------------

CITY = ["CAAAG",
        "A###A",
        "AAXAA",
        "A###A",
        "AAAAA"]


def _draw(grid: np.ndarray, cells: list[tuple[int, int]]) -> np.ndarray:
    out = grid.copy()
    for cell in cells:
        out[cell] = L.ROUTE
    return out.ravel()


def test_route_metrics_on_hand_made_predictions():
    grid = grid_of(CITY)
    label = _draw(grid, [(0, 1), (0, 2), (0, 3)])  # car: 3 avenues + the goal = 4
    assert solve(L.cost_grid(grid, 1), (0, 0), (0, 4)).cost == 4
    correct = score_example(grid.ravel(), label, label)
    assert correct == {"vehicle": "car", "exact": True, "valid_route": True, "cost_optimal": True,
                       "cost_ratio": 1.0, "route_f1": 1.0}
    broken = score_example(grid.ravel(), label, _draw(grid, [(0, 1), (0, 3)]))
    assert not broken["valid_route"] and not broken["cost_optimal"] and broken["cost_ratio"] is None
    assert broken["route_f1"] == pytest.approx(2 * 2 / (2 * 2 + 1))
    closure = score_example(grid.ravel(), label, _draw(grid, [(1, 0), (2, 0), (2, 1), (2, 2), (2, 3), (2, 4), (1, 4)]))
    assert not closure["valid_route"] and closure["route_f1"] == 0.0
    detour = [(1, 0), (2, 0), (3, 0), (4, 0), (4, 1), (4, 2), (4, 3), (4, 4), (3, 4), (2, 4), (1, 4)]
    longer = score_example(grid.ravel(), label, _draw(grid, detour))
    assert longer["valid_route"] and not longer["cost_optimal"] and not longer["exact"]
    assert longer["cost_ratio"] == pytest.approx(12 / 4)
    spur = score_example(grid.ravel(), label, _draw(grid, [(0, 1), (0, 2), (0, 3), (1, 0)]))
    assert not spur["valid_route"]  # a cell off the path: not one simple path


def test_valid_route_respects_the_vehicle_and_metrics_split_by_vehicle():
    van = grid_of(["VALAG", "A###A", "AAAAA", "#####", "#####"])
    through_alley = np.zeros((5, 5), dtype=bool)
    through_alley[0, 1:4] = True
    assert not is_valid_route(van, 2, through_alley)
    bike = van.copy()
    bike[0, 0] = L.START_BIKE
    assert is_valid_route(bike, 0, through_alley)
    car = grid_of(CITY)
    label = _draw(car, [(0, 1), (0, 2), (0, 3)])
    bike_label = _draw(bike, [(0, 1), (0, 2), (0, 3)])
    inputs = np.stack([car.ravel(), car.ravel(), bike.ravel()])
    labels = np.stack([label, label, bike_label])
    preds = np.stack([label, car.ravel(), bike_label])  # car right, car with no route, bike right
    m = route_metrics(inputs, labels, preds)
    assert m["all"]["count"] == 3 and m["all"]["exact"] == pytest.approx(2 / 3)
    assert m["by_vehicle"]["car"]["valid_route"] == 0.5 and m["by_vehicle"]["bike"]["cost_optimal"] == 1.0
    assert set(m["by_vehicle"]) == {"car", "bike"}


def test_evaluation_hook_scores_saved_predictions(built, tmp_path):
    test = load_split(built / "test")
    inputs = torch.from_numpy(np.array(test["inputs"], dtype=np.int32))
    labels = torch.from_numpy(np.array(test["labels"], dtype=np.int64))
    wrong = labels.clone()
    wrong[:10] = inputs[:10].long()  # half the examples predicted as a copy of the input
    logits = torch.nn.functional.one_hot(wrong, L.VOCAB_SIZE).float()
    torch.save({"inputs": inputs, "labels": labels, "logits": logits}, tmp_path / "step_7_all_preds.0")
    result = evaluation_hook(built, tmp_path, 7)["logistics"]
    assert result["all"]["count"] == 20 and result["all"]["exact"] == 0.5 and result["all"]["valid_route"] == 0.5
    assert result["all"]["mean_cost_ratio"] == 1.0
    assert evaluation_hook(tmp_path, tmp_path, 7) == {}  # not a logistics dataset: nothing added
