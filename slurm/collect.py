"""Gather finished runs into one table: terminal, CSV, Markdown, and PNG plots of the training curves.

A run is a directory: `metrics.jsonl` (training rows with train/* keys, evaluation rows with set/* keys),
`step_N_eval.json` from hrm-evaluate ({"step", "metrics": {set: {metric: value}}}) and `status.json`.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

CURVES = ("train/lm_loss", "train/exact_accuracy", "train/accuracy", "train/q_halt_accuracy", "train/steps")
TABLE_TRAIN = ("train/lm_loss", "train/exact_accuracy")


def read_metrics(run: Path) -> list[dict[str, Any]]:
    path = run / "metrics.jsonl"
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue  # a line cut by a crash or a requeue
    return rows


def latest_eval(run: Path) -> tuple[int | None, dict[str, float]]:
    """The last evaluation: hrm-evaluate's step_N_eval.json, else the last metrics row with eval keys."""
    files = [p for p in run.glob("step_*_eval.json") if re.fullmatch(r"step_\d+_eval\.json", p.name)]
    if files:
        data = json.loads(max(files, key=lambda p: int(p.name.split("_")[1])).read_text())
        flat = {f"{s}/{k}": v for s, m in (data.get("metrics") or {}).items() for k, v in (m or {}).items()}
        vote = run / f"step_{data.get('step')}_arc_vote.json"  # ARC runs: pass@k per task, from hrm.arc_vote
        if vote.is_file():
            summary = json.loads(vote.read_text()).get("summary") or {}
            flat.update({f"arc/{k}": v for k, v in summary.items() if k.startswith("pass@")})
        return data.get("step"), flat
    for row in reversed(read_metrics(run)):
        ev = {k: v for k, v in row.items() if "/" in k and not k.startswith("train/")}
        if ev:
            return row.get("step"), ev
    return None, {}


def summarize(run: Path) -> dict[str, Any]:
    rows = read_metrics(run)
    train = [r for r in rows if any(k.startswith("train/") for k in r)]
    status: dict[str, Any] = {}
    if (run / "status.json").is_file():
        try:
            status = json.loads((run / "status.json").read_text())
        except ValueError:
            pass
    eval_step, ev = latest_eval(run)
    out: dict[str, Any] = {
        "run": run.name,
        "state": status.get("state", ""),
        "step": train[-1]["step"] if train else "",
    }
    for k in TABLE_TRAIN:
        vals = [r[k] for r in train if k in r]
        out[k] = vals[-1] if vals else ""
    out["eval_step"] = eval_step if eval_step is not None else ""
    out.update(ev)
    out["_curves"] = {k: [(r["step"], r[k]) for r in train if k in r] for k in CURVES}
    out["_path"] = str(run)
    return out


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def columns(rows: list[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        for k in r:
            if not k.startswith("_") and k not in cols:
                cols.append(k)
    return cols


def collect(runs: list[Path], out: Path) -> list[dict[str, Any]]:
    """Summaries of the runs, written as results.csv, results.md and training_curves.png under `out`."""
    rows = [summarize(r) for r in runs if r.is_dir()]
    out.mkdir(parents=True, exist_ok=True)
    cols = columns(rows)
    with (out / "results.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in rows:
            w.writerow([r.get(c, "") for c in cols])
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    (out / "results.md").write_text("\n".join(md) + "\n")
    plot_curves(rows, out / "training_curves.png")
    return rows


def plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    """One panel per training metric, one line per run (matplotlib, without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in CURVES if any(r["_curves"].get(k) for r in rows)] or list(TABLE_TRAIN)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for r in rows:
            pts = r["_curves"].get(key) or []
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=r["run"])
        ax.set_title(key)
        ax.set_xlabel("step")
        if key.endswith("loss"):
            ax.set_yscale("log")
    if rows:
        axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def print_table(rows: list[dict[str, Any]], console: Any) -> None:
    from rich.table import Table

    table = Table(title="HRM runs")
    cols = columns(rows)
    for c in cols:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*(_fmt(r.get(c, "")) for c in cols))
    console.print(table)
