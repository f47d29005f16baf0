"""ARC voting: fabricated predictions with known right and wrong answers give exact pass@k."""

from __future__ import annotations

import argparse
import json
import math
import shutil

import numpy as np
import pytest
import torch

from hrm import arc_vote
from hrm.data import arc
from hrm.data.augment import dihedral, parse_augmented_name
from hrm.data.format import DatasetError, load_split

VOCAB = 12
TASKS = {"training": ["6150a2bd", "44f52bb0"], "evaluation": ["66e6c45b", "00576224", "6ea4a07e", "e345f17b"]}


def small_raw(raw, dest):
    for sub, names in TASKS.items():
        (dest / sub).mkdir(parents=True, exist_ok=True)
        for n in names:
            shutil.copy(raw / "ARC-AGI" / "data" / sub / f"{n}.json", dest / sub / f"{n}.json")
    return dest


def render(grid: np.ndarray, t: int, mapping: np.ndarray) -> np.ndarray:
    """An original-frame grid as the augmented variant's test row shows it (origin, EOS)."""
    return arc._stamp(np.ascontiguousarray(dihedral(mapping[grid], t))[None], np.zeros((1, 2), np.int64))[0]


def wrong(grid: np.ndarray, shift: int) -> np.ndarray:
    """A plausible wrong answer: every non-black colour moved by `shift`."""
    return np.where(grid > 0, (grid - 1 + shift) % 9 + 1, 0).astype(np.uint8)


@pytest.fixture(scope="module")
def dataset(raw_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vote")
    src = small_raw(raw_data, tmp / "raw" / "data")
    return arc.build_arc([src], tmp / "ds", num_aug=3, seed=0, workers=1, quiet=True)


def fabricate(dataset, out_dir):
    """Predictions for every test row, following a plan per (task, test input, variant)."""
    names = json.loads((dataset / "identifiers.json").read_text())
    tasks = {t.name: t for t in arc.load_tasks([dataset.parent / "raw" / "data"])[0]}
    test = load_split(dataset / "test")
    pi, pid = test["puzzle_indices"], test["puzzle_identifiers"]
    rows, ids, qs = [], [], []
    seen: dict = {}
    for p in range(len(pid)):
        task, t, mapping = parse_augmented_name(names[pid[p]])
        for e in range(pi[p + 1] - pi[p]):
            row = pi[p] + e
            answer = tasks[task].test[e][1]
            v = seen[(task, e)] = seen.get((task, e), -1) + 1  # variant number of this test input
            grid, q = answer, 0.5
            if task == "00576224":  # 2 right (high q) vs 2 of the same wrong (low q): right wins the tie
                grid, q = (answer, 0.9) if v < 2 else (wrong(answer, 1), 0.2)
            elif task == "6ea4a07e" and e == 1:  # tie lost on q: right only at rank 2
                grid, q = (answer, 0.1) if v < 2 else (wrong(answer, 2), 0.8)
            elif task == "e345f17b" and e == 0:  # the answer never shows up
                grid = wrong(answer, 3) if v < 3 else wrong(answer, 4)
            pred = render(grid, t, mapping)
            assert (v == 0) == (names[pid[p]] == task)
            if grid is answer:
                assert np.array_equal(pred, test["labels"][row])  # right answers match the stored label
            rows.append((np.asarray(test["inputs"][row]), pred))
            ids.append(int(pid[p]))
            qs.append(q)
    # An input that matches no test input of its task, and padding rows.
    rows.append((np.full(900, 5, np.uint8), np.full(900, 5, np.uint8)))
    ids.append(int(pid[0]))
    qs.append(0.99)
    for _ in range(3):
        rows.append((np.zeros(900, np.uint8), np.full(900, 7, np.uint8)))
        ids.append(0)
        qs.append(0.99)
    inputs = torch.tensor(np.stack([r[0] for r in rows]), dtype=torch.int32)
    preds = torch.tensor(np.stack([r[1] for r in rows]), dtype=torch.long)
    logits = torch.nn.functional.one_hot(preds, VOCAB).to(torch.bfloat16) * 3 - 1
    q_logit = torch.tensor([math.log(q / (1 - q)) for q in qs])
    data = {"inputs": inputs, "labels": inputs.clone(),
            "puzzle_identifiers": torch.tensor(ids, dtype=torch.int32), "logits": logits,
            "q_halt_logits": q_logit, "q_continue_logits": -q_logit}
    out_dir.mkdir(parents=True, exist_ok=True)
    half = len(ids) // 2  # two ranks' files
    for rank, sl in enumerate((slice(0, half), slice(half, None))):
        torch.save({k: v[sl].clone() for k, v in data.items()}, out_dir / f"step_7_all_preds.{rank}")
    return out_dir / "step_7"


def test_pass_at_k_exact(dataset, tmp_path):
    prefix = fabricate(dataset, tmp_path / "ckpt")
    report = tmp_path / "vote.json"
    result = arc_vote.vote(prefix, dataset, output_json=report)
    assert result["tasks"] == 4
    assert result["pass@1"] == 0.5
    assert result["pass@2"] == result["pass@10"] == result["pass@100"] == result["pass@1000"] == 0.75
    assert result["padding_rows"] == 3 and result["unmatched_rows"] == 1
    assert result["rows"] == 4 * 6  # 6 test inputs, 4 variants each
    per_task = json.loads(report.read_text())["tasks"]
    assert [s["rank"] for s in per_task["66e6c45b"]["test_inputs"]] == [0]
    assert [s["rank"] for s in per_task["00576224"]["test_inputs"]] == [0]
    assert [s["rank"] for s in per_task["6ea4a07e"]["test_inputs"]] == [0, 1]
    assert [s["rank"] for s in per_task["e345f17b"]["test_inputs"]] == [None, 0]
    top = per_task["00576224"]["test_inputs"][0]["candidates"]
    assert [c["count"] for c in top] == [2, 2] and top[0]["mean_q"] == pytest.approx(0.9, abs=1e-6)
    assert per_task["e345f17b"]["test_inputs"][0]["candidates"][0]["count"] == 3
    # The evaluator's prefix form and the CLI give the same numbers.
    again = arc_vote.vote(str(prefix) + "_all_preds", dataset, ks=(1, 2))
    assert (again["pass@1"], again["pass@2"]) == (0.5, 0.75)


def test_cli(dataset, tmp_path, capsys):
    from hrm.arc_vote import _vote_cmd, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    prefix = fabricate(dataset, tmp_path / "ckpt")
    args = parser.parse_args(["arc-vote", str(prefix), "--data-path", str(dataset), "--ks", "1", "2"])
    assert _vote_cmd(args) == 0
    out = capsys.readouterr().out
    assert "1-shot: 50.00%  (2/4)" in out and "2-shot: 75.00%  (3/4)" in out


def test_bad_inputs(dataset, tmp_path):
    with pytest.raises(DatasetError, match="no prediction files"):
        arc_vote.vote(tmp_path / "step_1", dataset)
    torch.save({"inputs": torch.zeros(1, 900)}, tmp_path / "step_2_all_preds.0")
    with pytest.raises(DatasetError, match="lacks puzzle_identifiers, logits, q_halt_logits"):
        arc_vote.vote(tmp_path / "step_2", dataset)
    with pytest.raises(DatasetError, match="identifiers.json not found"):
        arc_vote.vote(tmp_path / "step_2", tmp_path)


def test_crop_matches_the_reference_rule():
    grid = np.zeros((30, 30), np.uint8)
    grid[:3, :4] = 5
    grid[3, :4] = 1  # EOS row
    grid[:3, 4] = 1
    assert arc_vote.crop(grid.ravel()).shape == (3, 4)
    assert np.all(arc_vote.crop(grid.ravel()) == 3)
    # A ragged prediction: the widest-area rectangle from the origin wins.
    grid[1, 2] = 0  # widths 4, 2, 2: three rows of two (area 6) beat one row of four
    assert arc_vote.crop(grid.ravel()).shape == (3, 2)
    grid[:, :] = 2
    assert arc_vote.crop(grid.ravel()).shape == (30, 30)
    assert arc_vote.crop(np.zeros(900, np.uint8)).shape == (0, 0)
