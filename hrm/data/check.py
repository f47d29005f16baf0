"""`hrm-data check PATH`: validate a built dataset and show what training will do with it.

Users used to check these by hand before every run: shapes, dtypes, index arrays, token and
identifier ranges, counts per split, and the sampling picture for a global batch size (groups per
epoch, batches per epoch, "survey" vs "traditional" sampling, warmup length, total_steps with the
reference's formula). `check_dataset` returns the same report as a dict for the Slurm layer and the
trainer; anything in report["errors"] makes a run pointless.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from hrm.data.format import IDENTIFIERS, DatasetError, check_arrays, load_split, read_metadata

SPLITS = ("train", "test")
SCAN_ROWS = 1 << 16  # rows per read when scanning token ranges (bounded memory, no mmap residency)


def _scan(path: Path, seq_len: int, ignore_label_id: int | None) -> tuple[int, int, int]:
    """(min token, max token, rows whose tokens all equal ignore_label_id) of an integer [n, seq_len] .npy
    (uint8 from our builders, int64 from the reference's augmented Sudoku).

    Reads through a reusable buffer rather than a memory map, so scanning 3 GB stays at a few MB.
    """
    mm = np.load(path, mmap_mode="r")
    n, offset, dtype = mm.shape[0], mm.offset, mm.dtype
    del mm
    lo, hi, ignored = None, None, 0
    buf = np.empty(SCAN_ROWS * seq_len, dtype=dtype)
    with open(path, "rb") as f:
        f.seek(offset)
        for start in range(0, n, SCAN_ROWS):
            rows = min(SCAN_ROWS, n - start)
            view = buf[: rows * seq_len]
            if f.readinto(memoryview(view)) != view.nbytes:
                raise DatasetError(f"{path} is shorter than its header says: rebuild the dataset")
            a, b = int(view.min()), int(view.max())
            lo, hi = (a, b) if lo is None else (min(lo, a), max(hi, b))
            if ignore_label_id is not None:
                ignored += int(np.all(view.reshape(rows, seq_len) == ignore_label_id, axis=1).sum())
    return (lo, hi, ignored) if n and lo is not None else (0, 0, 0)


def _check_split(split_dir: Path, full: bool, errors: list[str], warnings: list[str]) -> dict | None:
    name = split_dir.name
    try:
        meta = read_metadata(split_dir)
    except DatasetError as e:
        errors.append(f"{name}: {e}")
        return None
    info = {"metadata": {k: getattr(meta, k) for k in meta.__dataclass_fields__}, "sets": {}}
    for label, value in (("pad_id", meta.pad_id), ("ignore_label_id", meta.ignore_label_id)):
        if value is not None and not 0 <= value < meta.vocab_size:
            errors.append(f"{name}: {label} {value} is outside [0, vocab_size={meta.vocab_size})")
    if not 0 <= meta.blank_identifier_id < meta.num_puzzle_identifiers:
        errors.append(f"{name}: blank_identifier_id {meta.blank_identifier_id} is outside "
                      f"[0, num_puzzle_identifiers={meta.num_puzzle_identifiers})")
    for set_name in meta.sets:
        try:
            arrays = load_split(split_dir, set_name)
        except DatasetError as e:
            errors.append(f"{name}: {e}")
            continue
        problems = check_arrays(arrays, meta, full=False)
        errors.extend(f"{name}/{set_name}: {p}" for p in problems)
        if problems:
            continue
        pidx, gidx, pid = arrays["puzzle_indices"], arrays["group_indices"], arrays["puzzle_identifiers"]
        sizes = np.diff(pidx.astype(np.int64))
        group_sizes = np.diff(gidx.astype(np.int64))
        csum = np.concatenate([[0], np.cumsum(sizes)])
        group_examples = csum[gidx[1:]] - csum[gidx[:-1]]
        stats = {
            "groups": len(gidx) - 1,
            "puzzles": len(pid),
            "examples": int(pidx[-1]),
            "examples_per_puzzle": [int(sizes.min()), int(sizes.max())] if len(sizes) else [0, 0],
            "puzzles_per_group": ([int(group_sizes.min()), int(group_sizes.max())] if len(gidx) > 1
                                  else [0, 0]),
            # Expected examples one sampling pass over the groups draws (one random puzzle per group).
            "examples_per_epoch": float((group_examples / np.maximum(group_sizes, 1)).sum()),
        }
        info["sets"][set_name] = stats
        if np.any(group_sizes == 0):
            errors.append(f"{name}/{set_name}: {int((group_sizes == 0).sum())} groups hold no puzzle "
                          f"(sampling would fail on them); rebuild the dataset")
        if np.any(sizes == 0):
            warnings.append(f"{name}/{set_name}: {int((sizes == 0).sum())} puzzles hold no example")
        if len(pid) and (int(pid.min()) < 0 or int(pid.max()) >= meta.num_puzzle_identifiers):
            errors.append(f"{name}/{set_name}: puzzle_identifiers span [{int(pid.min())}, {int(pid.max())}], "
                          f"outside [0, num_puzzle_identifiers={meta.num_puzzle_identifiers})")
        if full:
            inputs_path = split_dir / f"{set_name}__inputs.npy"
            labels_path = split_dir / f"{set_name}__labels.npy"
            _, in_hi, _ = _scan(inputs_path, meta.seq_len, None)
            _, lab_hi, ignored = _scan(labels_path, meta.seq_len, meta.ignore_label_id)
            stats.update(max_input_token=in_hi, max_label_token=lab_hi, rows_without_targets=ignored)
            for what, hi in (("inputs", in_hi), ("labels", lab_hi)):
                if hi >= meta.vocab_size:
                    errors.append(f"{name}/{set_name}: {what} hold token {hi} >= vocab_size "
                                  f"{meta.vocab_size}")
            if ignored:
                warnings.append(f"{name}/{set_name}: {ignored} examples have every label = ignore_label_id "
                                f"and add nothing to the loss")
    total_examples = sum(s["examples"] for s in info["sets"].values())
    total_puzzles = sum(s["puzzles"] for s in info["sets"].values())
    if info["sets"] and total_examples == 0:
        if name == "train":
            errors.append("train: the split holds no examples; rebuild the dataset with data in it")
        else:
            warnings.append(f"{name}: the split holds no examples, so evaluation has nothing to measure")
    actual = total_examples / total_puzzles if total_puzzles else 0.0
    if total_puzzles and not math.isclose(meta.mean_puzzle_examples, actual, rel_tol=1e-6):
        warnings.append(f"{name}: dataset.json mean_puzzle_examples {meta.mean_puzzle_examples:.6g} differs "
                        f"from the arrays' {actual:.6g} (total_steps uses the former)")
    return info


def _sampling(train: dict, test: dict | None, G: int, epochs: int | None, eval_interval: int | None,
              warmup: int | None, errors: list[str], warnings: list[str]) -> dict:
    meta = train["metadata"]
    groups = meta["total_groups"]
    per_epoch = sum(s["examples_per_epoch"] for s in train["sets"].values())
    batches = per_epoch / G
    out = {
        "global_batch_size": G,
        "groups": groups,
        "examples_per_epoch": round(per_epoch, 3),
        "batches_per_epoch": round(batches, 4),
        "batch_exceeds_groups": G > groups,
        # One batch draws more groups than exist: every batch surveys the whole dataset, repeating
        # groups (as other augmentations); otherwise an epoch spans several ordinary batches.
        "mode": "survey" if G > groups else "traditional",
    }
    if test is not None:
        test_examples = sum(s["examples"] for s in test["sets"].values())
        out["test_examples"] = test_examples
        out["test_batches"] = math.ceil(test_examples / G)
    if epochs is not None:
        total_steps = int(epochs * groups * meta["mean_puzzle_examples"] / G)
        out["epochs"] = epochs
        out["total_steps"] = total_steps
        if total_steps == 0:
            errors.append(f"total_steps is 0: {epochs} epochs of {groups} groups never fill a batch of {G}; "
                          f"raise epochs or lower global_batch_size")
        if eval_interval is not None:
            if eval_interval <= 0 or epochs % eval_interval:
                errors.append(f"eval_interval {eval_interval} must divide epochs {epochs} "
                              f"(the reference asserts it)")
            else:
                per_iter = int(eval_interval * per_epoch // G)
                out.update(eval_interval=eval_interval, evaluations=epochs // eval_interval,
                           steps_per_evaluation=per_iter)
                if per_iter == 0:
                    errors.append(f"eval_interval {eval_interval} epochs hold fewer than {G} examples, so no "
                                  f"full batch is ever drawn; raise eval_interval or lower global_batch_size")
    if warmup is not None:
        out["lr_warmup_steps"] = warmup
        out["warmup_epochs"] = round(warmup / batches, 3) if batches else None
        if epochs is not None and warmup >= out["total_steps"]:
            warnings.append(f"lr_warmup_steps {warmup} >= total_steps {out['total_steps']}: the lr never "
                            f"reaches its base value")
    return out


def check_dataset(path: str | Path, global_batch_size: int = 768, epochs: int | None = None,
                  eval_interval: int | None = None, lr_warmup_steps: int | None = None,
                  full: bool = True) -> dict:
    """Validate the dataset at `path` and describe its sampling; never raises for a bad dataset.

    Returns {"path", "ok", "errors": [...], "warnings": [...], "splits": {...}, "identifiers": {...},
    "sampling": {...}}. `full` also scans every token (reads the whole arrays, in bounded memory).
    """
    path = Path(path)
    errors: list[str] = []
    warnings: list[str] = []
    report: dict = {"path": str(path), "errors": errors, "warnings": warnings, "splits": {}}
    if global_batch_size <= 0:
        errors.append(f"global_batch_size must be positive, got {global_batch_size}")
    if not path.is_dir():
        errors.append(f"{path} is not a directory: build the dataset with hrm-data build ... "
                      f"or fix data_path")
        report["ok"] = False
        return report
    for split in SPLITS:
        info = _check_split(path / split, full, errors, warnings)
        if info is not None:
            report["splits"][split] = info
    splits = report["splits"]
    if "train" in splits and "test" in splits:
        tr, te = splits["train"]["metadata"], splits["test"]["metadata"]
        for key in ("seq_len", "vocab_size", "num_puzzle_identifiers"):
            if tr[key] != te[key]:
                errors.append(f"train and test disagree on {key} ({tr[key]} vs {te[key]}); "
                              f"rebuild the dataset")
    report["identifiers"] = _check_identifiers(path, splits, errors, warnings)
    if "train" in splits and splits["train"]["sets"] and global_batch_size > 0:
        report["sampling"] = _sampling(splits["train"], splits.get("test"), global_batch_size, epochs,
                                       eval_interval, lr_warmup_steps, errors, warnings)
    if full and not errors and "train" in splits:
        from hrm.data.logistics_metrics import is_logistics, lint_dataset

        if is_logistics(path):  # the task linter (city-logistics.md A.8 item 8)
            report["logistics"], lint_errors, lint_warnings = lint_dataset(path)
            errors.extend(lint_errors)
            warnings.extend(lint_warnings)
    report["ok"] = not errors
    return report


def _check_identifiers(path: Path, splits: dict, errors: list[str], warnings: list[str]) -> dict:
    ids_path = path / IDENTIFIERS
    if not ids_path.is_file():
        warnings.append(f"{IDENTIFIERS} is missing: puzzle names cannot be shown")
        return {"count": None}
    try:
        names = json.loads(ids_path.read_text())
    except json.JSONDecodeError as e:
        errors.append(f"{ids_path} is not valid JSON ({e}); rebuild the dataset")
        return {"count": None}
    if not isinstance(names, list):
        errors.append(f"{ids_path} must hold a list of names")
        return {"count": None}
    if "train" in splits:
        expected = splits["train"]["metadata"]["num_puzzle_identifiers"]
        if len(names) != expected:
            errors.append(f"{IDENTIFIERS} has {len(names)} names but num_puzzle_identifiers is {expected}; "
                          f"rebuild the dataset")
    if names and names[0] != "<blank>":
        warnings.append(f"{IDENTIFIERS}[0] is {names[0]!r}, expected '<blank>'")
    return {"count": len(names)}


# ---------------------------------------------------------------------------------------------------
# CLI


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("check", help="validate a built dataset and show its sampling picture")
    p.add_argument("path")
    p.add_argument("--global-batch-size", type=int, default=768)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--eval-interval", type=int, default=None)
    p.add_argument("--lr-warmup-steps", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="skip the token scan (structure and counts only)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_check_cmd)


def _check_cmd(args: argparse.Namespace) -> int:
    if not Path(args.path).is_dir():  # nothing to report on: one line, not an empty table
        raise DatasetError(f"{args.path} is not a directory: build the dataset with hrm-data build ... or fix the "
                           f"path")
    report = check_dataset(args.path, args.global_batch_size, args.epochs, args.eval_interval,
                           args.lr_warmup_steps, full=not args.quick)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        print_report(report)
    return 0 if report["ok"] else 1


def print_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"hrm-data check {report['path']}")
    for col in ("split", "groups", "puzzles", "examples", "ex/puzzle", "seq", "vocab", "ids"):
        table.add_column(col, justify="right" if col != "split" else "left", no_wrap=True)
    for split, info in report["splits"].items():
        m = info["metadata"]
        for set_name, s in info["sets"].items():
            lo, hi = s["examples_per_puzzle"]
            table.add_row(split if set_name == "all" else f"{split}/{set_name}", f"{s['groups']:,}",
                          f"{s['puzzles']:,}", f"{s['examples']:,}",
                          f"{m['mean_puzzle_examples']:.4g} ({lo}-{hi})",
                          str(m["seq_len"]), str(m["vocab_size"]), f"{m['num_puzzle_identifiers']:,}")
    console.print(table)
    if "sampling" in report:
        s = report["sampling"]
        st = Table(title="sampling", show_header=False)
        st.add_column("what")
        st.add_column("value", justify="right")
        st.add_row("global batch size", f"{s['global_batch_size']:,}")
        st.add_row("groups (one epoch visits each once)", f"{s['groups']:,}")
        st.add_row("examples per epoch (expected)", f"{s['examples_per_epoch']:,.1f}")
        st.add_row("batches per epoch", f"{s['batches_per_epoch']:,.3f}")
        st.add_row("mode", f"{s['mode']} (batch {'>' if s['batch_exceeds_groups'] else '<='} groups)")
        rows = (("test_batches", "test batches per evaluation"), ("total_steps", "total_steps"),
                ("evaluations", "evaluations"), ("steps_per_evaluation", "steps per evaluation"),
                ("lr_warmup_steps", "warmup (batches)"), ("warmup_epochs", "warmup (passes over the data)"))
        for key, label in rows:
            if s.get(key) is not None:
                st.add_row(label, f"{s[key]:,}")
        console.print(st)
    if "logistics" in report:
        from hrm.data.logistics_metrics import lint_table

        console.print(lint_table(report["logistics"]))
    for w in report["warnings"]:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
    for e in report["errors"]:
        console.print(f"[red]error:[/] {e}", highlight=False)
    console.print("[green]OK[/]" if report["ok"] else f"[red]{len(report['errors'])} error(s)[/]")
