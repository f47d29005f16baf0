"""`hrm-data view DATA_PATH [--preds RUN/step_N] [--out FILE.html]`: one self-contained HTML page of a split.

The page (template `view_page.html`, inline CSS and JS, nothing fetched) draws every puzzle of the split as
grids: Sudoku givens vs filled digits, mazes, ARC grids cropped to their extent in the ARC palette, logistics
maps, or plain token grids. With predictions (hrm-evaluate's `step_N_all_preds.*`) each example also shows the
prediction cell by cell against the label, right/wrong, sigmoid(q_halt) and the ACT steps, with filters (wrong
only, one group); ARC tasks also show the two voted attempts of `step_N_arc_vote.json` when it exists.

Arrays travel as base64 of uint8 rows; a puzzle is drawn when it scrolls near the viewport and emptied again when
it is far away, so a page of 1,000 puzzles opens at once and stays light. The kind of dataset is
`show.dataset_kind`'s (one detection for show and view). Predictions are read with torch (lazily: a page without
them needs numpy only), which is why `hrm-slurm collect` runs this as its own process.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import re
from pathlib import Path

import numpy as np

from hrm.data import logistics
from hrm.data.format import IDENTIFIERS, DatasetError, atomic_write_bytes, load_split, read_metadata
from hrm.data.show import ARC_COLOURS, MAZE_COLOURS, dataset_kind

TEMPLATE = Path(__file__).with_name("view_page.html")
DEFAULT_LIMIT = 1000
IGNORE_INDEX = -100  # what collation writes for unsupervised label cells (hrm.data.loader)
# Example states on the page.
NO_PRED, RIGHT, WRONG = 0, 1, 2

MAZE_NAMES = ("PAD", "wall", "open", "start", "goal", "path")
# ARC tokens: 0 PAD, 1 EOS, then colours 0..9.
ARC_TOKEN_COLOURS = ("#eeeeee", "#777777", *ARC_COLOURS)


def _palette(kind: str, vocab_size: int) -> list[str] | None:
    if kind == "arc":
        return list(ARC_TOKEN_COLOURS)
    if kind == "maze":
        return [MAZE_COLOURS.get(t, "#ff00ff") for t in range(vocab_size)]
    if kind == "logistics":
        return list(logistics.TOKEN_COLOURS)  # city-logistics.md A.8's 14 tokens, one colour each
    return None  # sudoku and plain grids print the token


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=np.uint8).tobytes()).decode("ascii")


def _arc_boxes(rows: np.ndarray) -> np.ndarray:
    """[n, 4] (row0, row1, col0, col1), end-exclusive, of each 30x30 row's colour cells (as show.arc_crop)."""
    grids = rows.reshape(len(rows), 30, 30) >= 2
    boxes = np.zeros((len(rows), 4), dtype=np.uint8)
    for i, g in enumerate(grids):
        r, c = np.nonzero(g)
        if len(r):
            boxes[i] = (r.min(), r.max() + 1, c.min(), c.max() + 1)
    return boxes


# ---------------------------------------------------------------------------------------------------
# Predictions


def _row_keys(identifiers: np.ndarray, inputs: np.ndarray) -> list[bytes]:
    ids = np.asarray(identifiers, dtype=np.int64)
    rows = np.ascontiguousarray(inputs, dtype=np.uint8)
    return [int(i).to_bytes(8, "little", signed=True) + r.tobytes() for i, r in zip(ids, rows)]


def read_predictions(files: list[Path], identifiers: np.ndarray, inputs: np.ndarray) -> dict[str, np.ndarray]:
    """Each example's prediction from the `step_N_all_preds.*` files, matched by (puzzle identifier, input) so any rank
    count and batch order works; padding rows (labels all ignored) are dropped.

    Returns pred [n, seq] uint8, has_pred [n] bool, q_halt [n] float32 (sigmoid), steps [n] int32 (-1: not saved).
    """
    import torch

    from hrm.arc_vote import _load_preds

    wanted: dict[bytes, list[int]] = {}
    for e, key in enumerate(_row_keys(identifiers, inputs)):
        wanted.setdefault(key, []).append(e)
    n = len(inputs)
    out = {"pred": np.zeros(inputs.shape, dtype=np.uint8), "has_pred": np.zeros(n, dtype=bool),
           "q_halt": np.full(n, np.nan, dtype=np.float32), "steps": np.full(n, -1, dtype=np.int32)}
    seq_len = inputs.shape[1]
    for path in files:
        data = _load_preds(path)
        if data["inputs"].shape[-1] != seq_len:
            raise DatasetError(f"{path} holds rows of length {data['inputs'].shape[-1]} but the dataset's seq_len is "
                               f"{seq_len}: pass the DATA_PATH the predictions were made on")
        total = int(data["inputs"].shape[0])
        for start in range(0, total, 4096):
            sl = slice(start, min(total, start + 4096))
            rows_in = data["inputs"][sl].numpy()
            ids = data["puzzle_identifiers"][sl].numpy()
            if "labels" in data:
                real = (data["labels"][sl].numpy() != IGNORE_INDEX).any(axis=1)
            else:
                real = np.ones(len(ids), dtype=bool)
            hits = [(j, wanted[k]) for j, k in enumerate(_row_keys(ids, rows_in)) if real[j] and k in wanted]
            if not hits:
                continue
            rows = torch.as_tensor([start + j for j, _ in hits])
            if "preds" in data:
                pred = data["preds"].index_select(0, rows).to(torch.uint8).numpy()
            else:
                pred = data["logits"].index_select(0, rows).argmax(dim=-1).to(torch.uint8).numpy()
            q = torch.sigmoid(data["q_halt_logits"].index_select(0, rows).float()).numpy()
            steps = data["steps"].index_select(0, rows).to(torch.int32).numpy() if "steps" in data else None
            for h, (_, examples) in enumerate(hits):
                for e in examples:
                    out["pred"][e] = pred[h]
                    out["has_pred"][e] = True
                    out["q_halt"][e] = q[h]
                    if steps is not None:
                        out["steps"][e] = steps[h]
    if n and not out["has_pred"].any():
        raise DatasetError(f"no row of {files[0].parent / files[0].name.rsplit('.', 1)[0]}.* matches an example "
                           f"shown: the predictions come from another dataset or split; pass the DATA_PATH and "
                           f"--split they were made on")
    return out


def example_states(labels: np.ndarray, pred: np.ndarray, has_pred: np.ndarray, ignore_label_id: int | None
                   ) -> np.ndarray:
    """NO_PRED / RIGHT / WRONG per example: right when every supervised label cell is predicted (exact match)."""
    supervised = np.ones(labels.shape, dtype=bool) if ignore_label_id is None else labels != ignore_label_id
    wrong = ((pred != labels) & supervised).any(axis=1)
    return np.where(has_pred, np.where(wrong, WRONG, RIGHT), NO_PRED).astype(np.uint8)


def _halt_max_steps(run_dir: Path) -> int | None:
    """arch.halt_max_steps of the run: evaluation runs every row for that many segments."""
    import yaml

    config = run_dir / "all_config.yaml"
    try:
        value = (yaml.safe_load(config.read_text()) or {}).get("arch", {}).get("halt_max_steps")
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    return value if isinstance(value, int) else None


def _arc_votes(prefix: Path, names: list[str], idents: np.ndarray) -> dict[str, list] | None:
    """{local puzzle index: [{answer, attempts: [{grid, count, right}], pass2}]} from step_N_arc_vote.json
    beside the predictions (`prefix` = RUN/step_N)."""
    path = prefix.with_name(f"{prefix.name}_arc_vote.json")
    if not path.is_file():
        return None
    try:
        tasks = json.loads(path.read_text())["tasks"]
    except (OSError, ValueError, KeyError, TypeError):
        raise DatasetError(f"{path} is not an arc-vote file: delete it, or vote again (hrm-data arc-vote "
                           f"{prefix} --data-path DATA --output {path})") from None
    votes: dict[str, list] = {}
    for p, ident in enumerate(idents):
        name = names[int(ident)] if int(ident) < len(names) else ""
        task = tasks.get(name)
        if task is None:
            continue
        votes[str(p)] = [{"input": slot["input"], "answer": slot["answer"],
                          "attempts": [{"grid": c["grid"], "count": c["count"], "right": c["grid"] == slot["answer"]}
                                       for c in slot["candidates"][:2]],
                          "pass2": slot["rank"] is not None and slot["rank"] < 2}
                         for slot in task["test_inputs"]]
    return votes


# ---------------------------------------------------------------------------------------------------
# The page


def page_data(data_path: str | Path, split: str = "test", preds: str | Path | None = None, start: int = 0,
              limit: int = DEFAULT_LIMIT, set_name: str = "all") -> dict:
    """Everything the page draws, as JSON-ready values (arrays as base64 of uint8 rows)."""
    data_path = Path(data_path)
    meta = read_metadata(data_path / split)
    if set_name not in meta.sets:
        raise DatasetError(f"{data_path / split} has no set {set_name!r} (it has {', '.join(meta.sets)}): "
                           f"pass --set with one of those")
    if meta.vocab_size > 256:
        raise DatasetError(f"{data_path / split}: vocab_size {meta.vocab_size} does not fit the viewer's uint8 cells")
    arrays = load_split(data_path / split, set_name)
    total = len(arrays["puzzle_identifiers"])
    if not 0 <= start < max(total, 1):
        raise DatasetError(f"--start {start} is out of range: {data_path / split} holds puzzles 0..{total - 1}")
    if limit < 1:
        raise DatasetError(f"--limit {limit}: give at least 1 puzzle")
    end = min(total, start + limit)
    pidx = np.asarray(arrays["puzzle_indices"], dtype=np.int64)
    lo, hi = int(pidx[start]), int(pidx[end])
    inputs = np.asarray(arrays["inputs"][lo:hi]).astype(np.uint8)
    labels = np.asarray(arrays["labels"][lo:hi]).astype(np.uint8)
    idents = np.asarray(arrays["puzzle_identifiers"][start:end], dtype=np.int64)
    groups = np.searchsorted(np.asarray(arrays["group_indices"]), np.arange(start, end), side="right") - 1
    names_path = data_path / IDENTIFIERS
    names = json.loads(names_path.read_text()) if names_path.is_file() else []
    kind = dataset_kind(meta.seq_len, meta.vocab_size)
    side = math.isqrt(meta.seq_len)
    rows, cols = (side, side) if side * side == meta.seq_len else (1, meta.seq_len)
    used = sorted({int(i) for i in idents})
    data = {
        "title": f"{data_path.name} / {split}", "source": str(data_path), "split": split, "kind": kind,
        "rows": rows, "cols": cols, "seq_len": meta.seq_len, "vocab": meta.vocab_size,
        "ignore_label": meta.ignore_label_id, "palette": _palette(kind, meta.vocab_size),
        "legend": {"maze": MAZE_NAMES, "logistics": logistics.TOKENS}.get(kind),
        "total_puzzles": total, "first_puzzle": start,
        "example_start": (pidx[start:end + 1] - lo).tolist(), "group": groups.tolist(),
        "name": {str(i): (names[i] if i < len(names) else f"#{i}") for i in used},
        "ident": idents.tolist(), "inputs": _b64(inputs), "labels": _b64(labels),
        "boxes": _b64(np.concatenate([_arc_boxes(inputs), _arc_boxes(labels)], axis=1)) if kind == "arc" else None,
        "preds": None,
    }
    if preds is not None:
        from hrm.arc_vote import prediction_files

        files = prediction_files(preds)
        prefix = files[0].with_name(re.sub(r"_all_preds\.\d+$", "", files[0].name))  # RUN/step_N, however named
        found = read_predictions(files, np.repeat(idents, np.diff(pidx[start:end + 1])), inputs)
        states = example_states(labels, found["pred"], found["has_pred"], meta.ignore_label_id)
        data["preds"] = {
            "source": str(prefix), "pred": _b64(found["pred"]), "state": _b64(states),
            "q_halt": [None if math.isnan(q) else round(float(q), 3) for q in found["q_halt"]],
            "steps": found["steps"].tolist() if (found["steps"] >= 0).any() else None,
            "halt_max_steps": _halt_max_steps(prefix.parent),
            "votes": _arc_votes(prefix, names, idents) if kind == "arc" else None,
        }
    return data


def render_page(data: dict) -> str:
    """The template with the data inlined (`</` escaped so no string can close the script element)."""
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    html = TEMPLATE.read_text()
    return html.replace("__TITLE__", _html_escape(data["title"])).replace("__DATA__", payload)


def _html_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write_view(data_path: str | Path, out: str | Path, split: str = "test", preds: str | Path | None = None,
               start: int = 0, limit: int = DEFAULT_LIMIT) -> Path:
    """Write the page atomically; returns its path."""
    out = Path(out)
    if out.is_dir():
        raise DatasetError(f"--out {out} is a directory: give a file name such as {out / 'view.html'}")
    page = render_page(page_data(data_path, split, preds, start, limit))
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, page.encode())
    return out


# ---------------------------------------------------------------------------------------------------
# CLI


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("view", help="write one self-contained HTML page of a split's puzzles (and predictions)")
    p.add_argument("path", help="a built dataset (the directory holding train/ and test/)")
    p.add_argument("--preds", default=None, help="RUN/step_N: draw hrm-evaluate's step_N_all_preds.* against labels")
    p.add_argument("--out", default=None, help="the HTML file (default: view_SPLIT.html, or RUN/step_N_view.html)")
    p.add_argument("--split", default="test", choices=("train", "test"))
    p.add_argument("--start", type=int, default=0, help="first puzzle index")
    p.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help="most puzzles on the page")
    p.set_defaults(func=_view_cmd)


def _view_cmd(args: argparse.Namespace) -> int:
    out = args.out
    if out is None:
        out = f"{args.preds}_view.html" if args.preds else f"view_{args.split}.html"
    path = write_view(args.path, out, args.split, args.preds, args.start, args.limit)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0
