"""The solved puzzle a local run prints at its end: picked from, and equal to, the predictions file."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
import torch
from rich.console import Console

from hrm.data import solved, sudoku
from hrm.data.format import DatasetError, load_split

IGNORE = -100


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A small built Sudoku dataset (generated puzzles, 9 blanks each)."""
    out = tmp_path_factory.mktemp("data") / "sudoku"
    sudoku.build("generated", out, subsample_size=4, blanks=9, seed=5)
    return out


def write_preds(run, step, inputs, labels, guesses, vocab=11, rank=0):
    """A `step_N_all_preds.R` file as hrm-evaluate writes it: logits whose argmax is `guesses`."""
    logits = torch.randn(*guesses.shape, vocab)
    logits.scatter_(-1, torch.as_tensor(guesses, dtype=torch.int64)[..., None], 50.0)
    run.mkdir(parents=True, exist_ok=True)
    torch.save({"inputs": torch.as_tensor(inputs, dtype=torch.int32),
                "labels": torch.as_tensor(labels, dtype=torch.int32),
                "puzzle_identifiers": torch.zeros(len(inputs), dtype=torch.int32),
                "logits": logits, "q_halt_logits": torch.zeros(len(inputs)),
                "q_continue_logits": torch.zeros(len(inputs))}, run / f"step_{step}_all_preds.{rank}")


def printed_grids(text: str) -> list[list[int]]:
    """The digits (0 = blank) of each grid printed side by side, read back from the terminal text."""
    rows = [line for line in text.splitlines() if line.count("|") >= 2 and "+" not in line]
    grids: list[list[int]] = []
    for line in rows:
        cells = [0 if t == "." else int(t) for t in line.split() if t == "." or t.isdigit()]
        per = len(cells) // 9
        grids = grids or [[] for _ in range(per)]
        for g in range(per):
            grids[g] += cells[g * 9:(g + 1) * 9]
    return grids


def capture(run, data_path) -> tuple[dict, str]:
    buf = io.StringIO()
    shown = solved.print_solved(run, data_path, console=Console(file=buf, width=160, color_system=None))
    return shown, buf.getvalue()


def test_prints_the_first_solved_puzzle_as_in_the_predictions_file(data, tmp_path):
    test = load_split(data / "test")
    inputs, labels = np.asarray(test["inputs"][:6]).astype(np.int32), np.asarray(test["labels"][:6]).astype(np.int32)
    guesses = labels.copy()
    cell = np.flatnonzero(inputs[0] == 1)[0]  # row 0: one blank filled wrong (token 1 is a blank)
    guesses[0, cell] = (labels[0, cell] - 1) % 9 + 2
    guesses[1] = inputs[1]  # blanks left blank: wrong
    pad_in, pad_lab = np.zeros((2, 81), np.int32), np.full((2, 81), IGNORE, np.int32)  # a padded batch's tail
    run = tmp_path / "run"
    write_preds(run, 40, np.concatenate([inputs, pad_in]), np.concatenate([labels, pad_lab]),
                np.concatenate([guesses, pad_in]))
    write_preds(run, 20, inputs, labels, inputs)  # an older step where nothing was solved
    shown, text = capture(run, data)
    assert shown["step"] == 40 and shown["solved"] and shown["index"] == 2  # rows 0 and 1 are wrong
    assert "test puzzle 2" in text and "4 of 6 test puzzles solved exactly at step 40" in text
    file = torch.load(run / "step_40_all_preds.0", weights_only=True)
    before, after = printed_grids(text)
    assert before == (file["inputs"][2].numpy() - 1).clip(0).tolist()
    assert after == (file["logits"][2].argmax(-1).numpy() - 1).tolist()
    assert after == (labels[2] - 1).tolist() and 0 not in after
    assert shown["view"] == f"view all puzzles: hrm-data view {data} --preds {run / 'step_40'} --out " \
                            f"{run / 'step_40_view.html'}" or shown["view"].endswith("(open it in a browser)")
    assert f"[hrm] {shown['view']}" in text


def test_unsolved_shows_the_answer_beside_the_guess(data, tmp_path):
    test = load_split(data / "test")
    inputs, labels = np.asarray(test["inputs"][:3]).astype(np.int32), np.asarray(test["labels"][:3]).astype(np.int32)
    run = tmp_path / "run"
    write_preds(run, 7, inputs, labels, inputs)  # every blank predicted as a blank
    shown, text = capture(run, None)  # without the dataset: the kind comes from the predictions' shape
    assert not shown["solved"] and shown["index"] is None and shown["kind"] == "sudoku"
    assert "no test puzzle solved yet (0 of 3" in text and "9 cells wrong" in text
    before, after, answer = printed_grids(text)
    assert before == after == (inputs[0] - 1).clip(0).tolist()
    assert answer == (labels[0] - 1).tolist()
    assert "view all puzzles: hrm-data view DATA --preds" in text


def test_no_predictions_is_one_line(tmp_path):
    with pytest.raises(DatasetError, match="no step_N_all_preds files in .*: evaluate first"):
        solved.print_solved(tmp_path)
    r = subprocess.run([sys.executable, "-m", "hrm.data.solved", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "evaluate first" in r.stderr
