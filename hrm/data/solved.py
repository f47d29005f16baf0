"""One test puzzle the model solved, before and after: what a local run prints at its end.

A newcomer should see the model at work, not only a metrics table. This reads the latest evaluation's
`step_N_all_preds.*` (the reference's keys: inputs, labels, logits), draws the first test puzzle whose
prediction matches the label on every cell (else the first one, marked unsolved, beside its answer), and
points at the page that shows every puzzle (`hrm-data view`, written here when that command exists).

    python -m hrm.data.solved RUN_DIR [--data DATA] [--page FILE]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from hrm.data.format import DatasetError, load_split, read_metadata
from hrm.data.show import dataset_kind, render_example

PREDS_NAME = re.compile(r"step_(\d+)_all_preds\.(\d+)")
IGNORE = -100  # the loader's label for padding rows and ignored cells


def latest_preds_step(run_dir: Path) -> int | None:
    """The highest step N with a `step_N_all_preds.R` file in `run_dir`, or None."""
    steps = [int(m.group(1)) for p in Path(run_dir).glob("step_*_all_preds.*")
             if (m := PREDS_NAME.fullmatch(p.name))]
    return max(steps, default=None)


def load_preds(run_dir: Path, step: int) -> dict[str, np.ndarray]:
    """inputs, labels and preds (argmax of logits) of every rank's file, padding rows dropped."""
    from hrm.arc_vote import _load_preds, prediction_files

    parts = [_load_preds(p) for p in prediction_files(Path(run_dir) / f"step_{step}")]
    out = {"inputs": np.concatenate([p["inputs"].numpy() for p in parts]),
           "labels": np.concatenate([p["labels"].numpy() for p in parts]),
           "preds": np.concatenate([p["logits"].argmax(-1).numpy() for p in parts]),
           "vocab_size": parts[0]["logits"].shape[-1]}
    real = (out["labels"] != IGNORE).any(axis=1)
    for key in ("inputs", "labels", "preds"):
        out[key] = out[key][real]
    return out


def solved_rows(preds: dict[str, np.ndarray]) -> np.ndarray:
    """Per row: the prediction matches the label on every cell that is scored."""
    scored = preds["labels"] != IGNORE
    return ((preds["preds"] == preds["labels"]) | ~scored).all(axis=1)


def _test_index(data_path: Path | None, inputs: np.ndarray) -> int | None:
    """Where this input sits in the dataset's test split (for the page and `hrm-data show`), if found."""
    if data_path is None or not (Path(data_path) / "test" / "dataset.json").is_file():
        return None
    rows = np.asarray(load_split(Path(data_path) / "test", "all")["inputs"])
    hits = np.flatnonzero((rows == inputs.astype(rows.dtype)).all(axis=1))
    return int(hits[0]) if len(hits) else None


def _page(run_dir: Path, step: int, data_path: Path | None, page: Path) -> str:
    """Write the all-puzzles page with `hrm-data view` when it exists; the line that says where (or how)."""
    argv = ["hrm-data", "view", str(data_path or "DATA"), "--preds", str(Path(run_dir) / f"step_{step}"),
            "--out", str(page)]
    if data_path is not None:
        r = subprocess.run([sys.executable, "-m", "hrm.data.cli", *argv[1:]], capture_output=True, text=True)
        if r.returncode == 0 and page.is_file():
            return f"view all puzzles: {page} (open it in a browser)"
    return "view all puzzles: " + " ".join(argv)


def print_solved(run_dir: Path, data_path: Path | None = None, page: Path | None = None, console=None) -> dict:
    """Print one solved test puzzle of the run's latest evaluation; returns what was shown (for tests)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(highlight=False)
    run_dir = Path(run_dir)
    step = latest_preds_step(run_dir)
    if step is None:
        raise DatasetError(f"no step_N_all_preds files in {run_dir}: evaluate first "
                           f"(hrm-evaluate checkpoint={run_dir})")
    preds = load_preds(run_dir, step)
    solved = solved_rows(preds)
    row = int(np.argmax(solved)) if solved.any() else 0
    inputs, labels, guess = preds["inputs"][row], preds["labels"][row], preds["preds"][row]
    if data_path is not None and (Path(data_path) / "test" / "dataset.json").is_file():
        meta = read_metadata(Path(data_path) / "test")
        kind = dataset_kind(meta.seq_len, meta.vocab_size)
    else:
        kind = dataset_kind(inputs.shape[-1], preds["vocab_size"])
    index = _test_index(data_path, inputs)
    where = f"test puzzle {index}" if index is not None else f"row {row} of the predictions"
    count = f"{int(solved.sum())} of {len(solved)} test puzzles solved exactly at step {step}"
    table = Table(show_header=True, box=None, padding=(0, 2))
    before, after = render_example(kind, inputs, guess)
    table.add_column("before (the puzzle)")
    table.add_column("after (the model's answer)")
    cells = [before, after]
    if solved[row]:
        console.print(f"[hrm] a puzzle the model solved ({where}; {count}):", markup=False, soft_wrap=True)
    else:
        wrong = int(((guess != labels) & (labels != IGNORE)).sum())
        console.print(f"[hrm] no test puzzle solved yet ({count}); {where}, {wrong} cells wrong:",
                      markup=False, soft_wrap=True)
        table.add_column("the answer")
        cells.append(render_example(kind, inputs, labels)[1])
    table.add_row(*cells)
    console.print(table)
    page = page or run_dir / f"step_{step}_view.html"  # where `hrm-data view` puts it by default
    line = _page(run_dir, step, data_path, page)
    console.print(f"[hrm] {line}", markup=False, soft_wrap=True)
    return {"step": step, "row": row, "index": index, "solved": bool(solved[row]), "kind": kind,
            "inputs": inputs, "preds": guess, "labels": labels, "view": line}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hrm.data.solved", description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--data", default=None, help="the dataset the run was evaluated on (names the test puzzle)")
    p.add_argument("--page", default=None, help="where to write the all-puzzles page (default RUN/step_N_view.html)")
    args = p.parse_args(argv)
    try:
        print_solved(Path(args.run_dir), Path(args.data) if args.data else None,
                     Path(args.page) if args.page else None)
    except DatasetError as e:
        print(f"solved: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
