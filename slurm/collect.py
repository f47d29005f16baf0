"""Gather runs into a report: terminal table, CSV, Markdown, the evaluations of every checkpoint, and plots.

A run is a directory: `metrics.jsonl` (training rows with train/* keys, evaluation rows with set/* keys),
`step_N_eval.json` from hrm-evaluate ({"step", "metrics": {set: {metric: value}}}, ARC runs also pass@k,
there or in `step_N_arc_vote.json`), `all_config.yaml`, `status.json` and `best.json`. An HRM-Text run
(`lm_config.json`) has `eval/lm_eval_step_N.json` from `hrm-lm eval` instead: its sets are lm-eval tasks.

`collect(runs, out)` writes under `out`:
  results.csv, results.md   the last numbers of each run (one row per run)
  evals.csv                 run, step, set, metric, value: every evaluated checkpoint and metric
  report.md                 best and last checkpoint of each run, seed sweeps as mean ± sd, published numbers
  training_curves.png       the runs compared
  curves_RUN.png            one figure per run
  view_RUN.html             hrm-data view of the last evaluated step with saved predictions (a browser page)

The data behind the plots comes from plain functions (curve, moving_average, first_above, panels) that the
tests and guides/ondemand/monitor.ipynb use too. Only the standard library and PyYAML at import (this runs
on login nodes); matplotlib is imported to draw.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import re
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slurm.profiles import RequestError
from slurm.published import KINDS, Published, metric_for, published_for

CURVES = ("train/lm_loss", "train/exact_accuracy", "train/accuracy", "train/q_halt_accuracy", "train/steps")
TABLE_TRAIN = ("train/lm_loss", "train/exact_accuracy")
# Averaged over the sequences that halted at a step: undefined (logged as 0) when none did (train/count == 0).
PER_HALTED = ("train/accuracy", "train/exact_accuracy", "train/q_halt_accuracy", "train/steps")
TRAIN_SOLVED = 0.99  # "train accuracy nears 100%": the reference README's warning sign for Sudoku-1k
# Settings that do not make two runs different experiments: a seed sweep differs only in these (and in
# names and paths: keys ending in _path, _dir or _name; data_path is compared by its last component).
SWEEP_IGNORED = {
    "seed", "checkpoint_path", "run_name", "project_name", "wandb_mode", "state_every_minutes", "resources",
    "hydra", "device", "compile", "optimizer_impl",
}
STEP_FILE = re.compile(r"step_(\d+)")
EVAL_FILE = re.compile(r"step_(\d+)_eval\.json")
NOT_EVAL = ("train/", "perf/")  # metrics.jsonl keys that are not a set/metric evaluation
LM_EVAL_FILE = re.compile(r"lm_eval_step_(\d+)\.json")
# What a run is judged by, first found: ARC after voting, puzzles, then lm-eval's generate / multiple choice.
PRIMARY = ("pass@2", "exact_accuracy", "exact_match", "acc_norm", "acc")


# --- reading a run ------------------------------------------------------------------------------------------


def read_metrics(run: Path) -> list[dict[str, Any]]:
    path = Path(run) / "metrics.jsonl"
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut by a crash or a requeue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def eval_files(run: Path) -> dict[int, Path]:
    """hrm-evaluate's step_N_eval.json files by step."""
    out = {}
    for p in Path(run).glob("step_*_eval.json"):
        m = EVAL_FILE.fullmatch(p.name)
        if m:
            out[int(m.group(1))] = p
    return dict(sorted(out.items()))


def lm_eval_files(run: Path) -> dict[int, Path]:
    """hrm-lm eval's eval/lm_eval_step_N.json files by step (HRM-Text runs)."""
    found = ((LM_EVAL_FILE.fullmatch(p.name), p) for p in Path(run, "eval").glob("lm_eval_step_*.json"))
    return dict(sorted((int(m.group(1)), p) for m, p in found if m))


def is_lm_run(run: Path) -> bool:
    return (Path(run) / "lm_config.json").is_file()


def _lm_eval_metrics(data: dict[str, Any]) -> list[tuple[str, str, float]]:
    """(task, metric, value) of an lm_eval_step_N.json; lm-eval names a score "metric,filter"."""
    out = []
    for task, values in (data.get("results") or {}).items():
        for k, v in (values.items() if isinstance(values, dict) else ()):
            name, _, filt = str(k).partition(",")
            if filt and _number(v):
                out.append((str(task), name if filt == "none" else f"{name}[{filt}]", float(v)))
    return out


def checkpoints(run: Path) -> list[int]:
    """Steps of the saved weights (step_N files)."""
    return sorted(int(m.group(1)) for p in Path(run).glob("step_*") if (m := STEP_FILE.fullmatch(p.name)))


def is_run(path: Path) -> bool:
    return (path / "metrics.jsonl").is_file() or bool(eval_files(path)) or bool(lm_eval_files(path))


def find_runs(paths: list[Path]) -> list[Path]:
    """The run directories among `paths`; a directory that is not a run stands for the runs below it."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            continue
        if is_run(p):
            candidates = [p]
        else:
            below = {m.parent for m in p.rglob("metrics.jsonl")} | {m.parent for m in p.rglob("step_*_eval.json")}
            candidates = sorted(below)
        for c in candidates:
            if c.resolve() not in {f.resolve() for f in found}:
                found.append(c)
    return found


def run_labels(runs: list[Path]) -> list[str]:
    """Short unique names: the directory names, with as many parent names as it takes to tell runs apart (one
    parent at least for a multirun point, whose directory is a number)."""
    parts = [Path(r).resolve().parts for r in runs]
    for depth in range(1, max((len(p) for p in parts), default=1) + 1):
        labels = ["/".join(p[-max(depth, 2 if p[-1].isdigit() else 1):]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(r) for r in runs]


def undefined(row: dict[str, Any], key: str) -> bool:
    """True where `key` has no value in this training row: a per-halted-sequence metric when none halted."""
    return key in PER_HALTED and _number(row.get("train/count")) and row["train/count"] == 0


def curve(run: Path | str | list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric, by step; a step logged twice (a resumed run repeats steps) keeps its last row.

    `run` is a run directory or its metrics rows. Training keys (train/...) come from metrics.jsonl without the
    rows where they are undefined (train/count == 0); evaluation keys (set/metric, e.g. all/exact_accuracy or
    arc/pass@2) from `evaluations` (step_N_eval.json and metrics.jsonl's evaluation rows).
    """
    if isinstance(run, (str, Path)) and not key.startswith("train/"):
        pts = {e["step"]: e["value"] for e in evaluations(Path(run)) if f"{e['set']}/{e['metric']}" == key}
    else:
        rows = read_metrics(Path(run)) if isinstance(run, (str, Path)) else run
        pts = {}
        for r in rows:
            v, s = r.get(key), r.get("step")
            if _number(v) and _number(s) and not undefined(r, key):
                pts[int(s)] = float(v)
    steps = sorted(pts)
    return steps, [pts[s] for s in steps]


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over `window` points, as long as `values` (the first points average what there is).

    Each mean is summed afresh (math.fsum), so a loss falling over orders of magnitude keeps its small values."""
    if window < 1:
        raise ValueError(f"window must be at least 1, not {window}")
    return [math.fsum(values[max(0, i + 1 - window):i + 1]) / min(i + 1, window) for i in range(len(values))]


def smoothing_window(n: int) -> int:
    """A light window for n points: 2% of them, 1 to 200."""
    return max(1, min(200, n // 50))


def first_above(steps: list[int], values: list[float], threshold: float) -> int | None:
    """The first step whose value exceeds `threshold` (None if none does)."""
    return next((s for s, v in zip(steps, values) if v > threshold), None)


def train_solved_step(steps: list[int], values: list[float], threshold: float = TRAIN_SOLVED) -> int | None:
    """Where the smoothed train exact accuracy first exceeds 0.99 (smoothed: a single lucky batch does not count)."""
    return first_above(steps, moving_average(values, smoothing_window(len(values))), threshold) if values else None


def _eval_json_metrics(data: dict[str, Any]) -> list[tuple[str, str, float]]:
    """(set, metric, value) of a step_N_eval.json: its metrics, and pass@k keys wherever they are (set 'arc')."""
    out = []
    for set_name, values in (data.get("metrics") or {}).items():
        if isinstance(values, dict):
            out += [(str(set_name), str(k), float(v)) for k, v in values.items() if _number(v)]

    def walk(node: dict[str, Any]) -> None:
        for k, v in node.items():
            if k in ("correct", "tasks"):  # counts of tasks and per-task detail, not fractions
                continue
            if isinstance(v, dict):
                walk(v)
            elif "pass@" in str(k) and _number(v):
                out.append(("arc", str(k), float(v)))

    walk({k: v for k, v in data.items() if k not in ("metrics", "step")})
    return out


def evaluations(run: Path, rows: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every evaluated checkpoint and metric, [{"step", "set", "metric", "value"}] sorted, one per (step, set,
    metric): hrm-evaluate's step_N_eval.json (with step_N_arc_vote.json's pass@k) over the evaluation rows of
    metrics.jsonl at the same step, and of those the last row."""
    found: dict[tuple[int, str, str], float] = {}
    for row in read_metrics(run) if rows is None else rows:
        if not _number(row.get("step")):
            continue
        for k, v in row.items():
            if "/" in k and not k.startswith(NOT_EVAL) and _number(v):
                set_name, metric = k.split("/", 1)
                found[(int(row["step"]), set_name, metric)] = float(v)
    for step, path in eval_files(run).items():
        vote = _load_json(Path(run) / f"step_{step}_arc_vote.json")  # ARC: pass@k per task, from hrm.arc_vote
        summary = vote.get("summary") if isinstance(vote, dict) else None
        if isinstance(summary, dict):
            found.update({(step, "arc", k): float(v) for k, v in summary.items() if k.startswith("pass@")
                          and _number(v)})
        data = _load_json(path)
        if isinstance(data, dict):
            found.update({(step, s, m): v for s, m, v in _eval_json_metrics(data)})
    for step, path in lm_eval_files(run).items():
        data = _load_json(path)
        if isinstance(data, dict):
            found.update({(step, s, m): v for s, m, v in _lm_eval_metrics(data)})
    return [{"step": s, "set": st, "metric": m, "value": v} for (s, st, m), v in sorted(found.items())]


def latest_eval(run: Path) -> tuple[int | None, dict[str, float]]:
    """The last evaluated checkpoint's metrics as {set/metric: value}."""
    evals = evaluations(run)
    if not evals:
        return None, {}
    step = evals[-1]["step"]
    return step, {f"{e['set']}/{e['metric']}": e["value"] for e in evals if e["step"] == step}


def primary_metric(evals: list[dict[str, Any]]) -> tuple[str, str] | None:
    """(set, metric) a run is judged by: pass@2 where ARC voting ran, else exact_accuracy (set 'all' first),
    else (HRM-Text) lm-eval's exact_match, acc_norm or acc."""
    names = {(e["set"], e["metric"]) for e in evals}
    for metric in PRIMARY:
        sets = sorted(s for s, m in names if m == metric)
        if sets:
            return next((s for s in ("arc", "all") if s in sets), sets[0]), metric
    return None


def best_and_last(evals: list[dict[str, Any]], set_name: str, metric: str
                  ) -> tuple[tuple[int, float], tuple[int, float]] | None:
    """((best step, value), (last step, value)) of one metric; ties go to the earliest checkpoint."""
    pts = {e["step"]: e["value"] for e in evals if e["set"] == set_name and e["metric"] == metric}
    if not pts:
        return None
    best = min(pts.items(), key=lambda sv: (-sv[1], sv[0]))
    last = max(pts)
    return best, (last, pts[last])


def read_config(run: Path) -> dict[str, Any]:
    path = Path(run) / "all_config.yaml"
    if not path.is_file():
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@functools.lru_cache(maxsize=4)
def _experiment_configs(config_dir: str) -> dict[str, dict[str, Any]]:
    import yaml

    out = {}
    for p in sorted(Path(config_dir, "experiment").glob("*.yaml")):
        try:
            data = yaml.safe_load(p.read_text())
        except (OSError, yaml.YAMLError):
            continue
        out[p.stem] = data if isinstance(data, dict) else {}
    try:
        base = yaml.safe_load(Path(config_dir, "cfg_pretrain.yaml").read_text())
    except (OSError, yaml.YAMLError):
        base = None
    out[""] = base if isinstance(base, dict) else {}  # the defaults, under no name
    return out


def base_config() -> dict[str, Any]:
    """configs/cfg_pretrain.yaml: the defaults an experiment starts from (e.g. epochs for arc1)."""
    from slurm.experiment import config_dir

    return _experiment_configs(str(config_dir())).get("", {})


def experiment_configs() -> dict[str, dict[str, Any]]:
    """configs/experiment/NAME.yaml as written (the keys each experiment sets), by name."""
    from hrm.lm.config import CONFIG_DIR as LM_CONFIG_DIR
    from slurm.experiment import config_dir

    known = {k: v for k, v in _experiment_configs(str(LM_CONFIG_DIR)).items() if k}  # HRM-Text
    return {**known, **{k: v for k, v in _experiment_configs(str(config_dir())).items() if k}}


def experiment_of(run: Path, config: dict[str, Any] | None = None) -> str | None:
    """The experiment a run belongs to: all_config.yaml's `experiment`, else the pipeline record's, else the
    experiment whose data_path ends like the run's, else the experiment the run directory is named after
    (hrm-slurm's runs/EXPERIMENT or EXPERIMENT-YYYYmmdd-HHMMSS)."""
    config = read_config(run) if config is None else config
    if isinstance(config.get("experiment"), str):
        return config["experiment"]
    record = _load_json(Path(run) / "slurm" / "pipeline.json")
    record = record if isinstance(record, dict) else {}
    if isinstance(record.get("experiment"), str) and record["experiment"]:
        return record["experiment"]
    known = experiment_configs()
    data_path = config.get("data_path") or record.get("data_path")
    if data_path:
        name = Path(str(data_path)).name
        for exp, cfg in known.items():
            if cfg.get("data_path") and Path(str(cfg["data_path"])).name == name:
                return exp
    # the run directory hrm-slurm names after the experiment: runs/EXPERIMENT (run-local), EXPERIMENT-DATE-TIME
    name = Path(run).resolve().name
    return next((exp for exp in known if name == exp or re.fullmatch(rf"{re.escape(exp)}-\d{{8}}-\d{{6}}", name)),
                None)


def sweep_key(config: dict[str, Any]) -> str | None:
    """The settings that make a run what it is, without seed, names and paths: equal within a seed sweep."""
    if not config:
        return None
    keep = {}
    for k, v in _flat(config).items():
        last = k.rsplit(".", 1)[-1]
        if k in SWEEP_IGNORED or k.split(".")[0] in SWEEP_IGNORED:
            continue
        if k == "data_path":
            v = Path(str(v)).name
        elif last.endswith(("_path", "_dir", "_name")):
            continue
        keep[k] = v
    return json.dumps(keep, sort_keys=True, default=str)


# --- one run's report ---------------------------------------------------------------------------------------


@dataclass
class RunReport:
    label: str
    path: Path
    experiment: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    set: str | None = None
    metric: str | None = None
    best: tuple[int, float] | None = None
    last: tuple[int, float] | None = None
    train_solved: int | None = None
    best_json: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    @property
    def published(self) -> list[Published]:
        return published_for(self.experiment)

    def line(self) -> str:
        """`best: step N exact_accuracy X (last: step M, Y)`, in percent."""
        if self.best is None or self.last is None:
            return "no evaluation yet"
        return (f"best: step {self.best[0]} {self.metric} {pct(self.best[1])} "
                f"(last: step {self.last[0]}, {pct(self.last[1])})")


def pct(v: float | None, digits: int = 2) -> str:
    return "" if v is None else f"{100 * v:.{digits}f}%"


def analyse(run: Path, label: str | None = None) -> RunReport:
    run = Path(run)
    rep = RunReport(label or run.name, run, config=read_config(run), rows=read_metrics(run))
    rep.experiment = experiment_of(run, rep.config)
    rep.evals = evaluations(run, rep.rows)
    chosen = primary_metric(rep.evals)
    if chosen:
        rep.set, rep.metric = chosen
        rep.best, rep.last = best_and_last(rep.evals, *chosen) or (None, None)
    rep.train_solved = train_solved_step(*curve(rep.rows, "train/exact_accuracy"))
    best_json = _load_json(run / "best.json")
    rep.best_json = best_json if isinstance(best_json, dict) else None
    rep.notes = _notes(rep)
    return rep


def _notes(rep: RunReport) -> list[str]:
    """What the report says to check, each with the command that answers it (see guides/EXPERIMENTS.md)."""
    notes = []
    ckpts = checkpoints(rep.path)
    scored = {e["step"] for e in rep.evals if (e["set"], e["metric"]) == (rep.set, rep.metric)}
    want = metric_for(rep.experiment)
    lm = is_lm_run(rep.path)
    if rep.best is None:
        notes.append(f"no evaluation yet: `hrm-lm eval {rep.path} --tasks public` scores the last checkpoint" if lm
                     else f"no evaluation yet: `hrm-evaluate checkpoint={rep.path}` evaluates every checkpoint")
        return notes
    if want == "pass@2" and rep.metric != "pass@2":
        notes.append(f"{rep.metric} here is per augmented example, the published numbers are pass@2 after voting: "
                     f"`hrm-evaluate checkpoint={rep.path} arc_vote=true`")
    gap = rep.best[1] - rep.last[1] if rep.last else 0.0
    if gap >= 0.005:
        notes.append(f"the last checkpoint is {100 * gap:.1f} points below the best (step {rep.best[0]}): quote the "
                     f"best; `early_stop.*` stops training near it")
    missing = [s for s in ckpts if s not in scored]
    if missing and lm:
        ev, data = rep.config.get("eval") or {}, rep.config.get("data_path")
        inc = ev.get("include_path") if isinstance(ev, dict) else None
        inc_arg = f" --include-path {Path(str(data or '.')) / str(inc)}" if inc else ""
        notes.append(f"{rep.set} {rep.metric} of {len(ckpts) - len(missing)} of {len(ckpts)} checkpoints: "
                     f"`hrm-lm eval {rep.path} --step {missing[-1]} --tasks {rep.set}{inc_arg}` scores another")
    elif missing:
        how = " arc_vote=true" if rep.metric == "pass@2" else ""
        notes.append(f"{rep.metric} of {len(ckpts) - len(missing)} of {len(ckpts)} checkpoints: `hrm-evaluate "
                     f"checkpoint={rep.path}{how}` evaluates every one (or eval_steps=...)")
    if rep.train_solved is not None and rep.last and rep.best[0] < rep.last[0]:
        notes.append(f"train exact accuracy passed {TRAIN_SOLVED} at step {rep.train_solved}; the best evaluation is "
                     f"at step {rep.best[0]}")
    known = experiment_configs()
    recipe = known[rep.experiment].get("epochs", base_config().get("epochs")) if rep.experiment in known else None
    epochs = rep.config.get("epochs")
    if _number(recipe) and _number(epochs) and epochs < recipe:
        notes.append(f"epochs={epochs}, the recipe has {recipe}: a shorter schedule")
    status = _load_json(rep.path / "status.json")
    if isinstance(status, dict) and _number(status.get("total_steps")) and _number(status.get("step")):
        if status["step"] < status["total_steps"]:
            notes.append(f"trained to step {status['step']} of {status['total_steps']} "
                         f"({status.get('state') or 'state unknown'})")
    bj = rep.best_json or {}
    if bj.get("metric") == f"{rep.set}/{rep.metric}" and _number(bj.get("step")) and bj["step"] != rep.best[0]:
        notes.append(f"best.json (written during training) names step {bj['step']}; the evaluations say step "
                     f"{rep.best[0]}")
    return notes


def group_runs(reports: list[RunReport]) -> list[list[RunReport]]:
    """Runs that differ only in seed (and names, paths, Slurm placement) form one group; the others stand alone."""
    groups: dict[Any, list[RunReport]] = {}
    for i, rep in enumerate(reports):
        key = sweep_key(rep.config)
        groups.setdefault((rep.experiment, key) if key is not None else i, []).append(rep)
    return list(groups.values())


@dataclass
class Stat:
    mean: float
    sd: float | None  # None for a single run
    n: int

    def text(self) -> str:
        return pct(self.mean) + (f" ± {100 * self.sd:.2f}" if self.sd is not None else "")


def stat(values: list[float]) -> Stat | None:
    if not values:
        return None
    return Stat(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))


def group_row(group: list[RunReport]) -> dict[str, Any]:
    """One row of the report's table: mean ± sd over the group's runs (n of them)."""
    evaluated = [r for r in group if r.best is not None and r.last is not None]
    metrics = {r.metric for r in evaluated}
    metric = "pass@2" if "pass@2" in metrics else min(metrics, default="")  # never a mean over two metrics
    evaluated = [r for r in evaluated if r.metric == metric]
    first = group[0]
    row: dict[str, Any] = {
        "run": ", ".join(r.label for r in group),
        "experiment": first.experiment or "",
        "n": len(evaluated),
        "seeds": ", ".join(str(r.seed) for r in group if r.seed is not None),
        "metric": metric,
        "best": stat([r.best[1] for r in evaluated]),  # type: ignore[index]
        "best step": ", ".join(str(r.best[0]) for r in evaluated),  # type: ignore[index]
        "last": stat([r.last[1] for r in evaluated]),  # type: ignore[index]
        "last step": ", ".join(str(r.last[0]) for r in evaluated),  # type: ignore[index]
        "train > 0.99 at": ", ".join(str(r.train_solved) for r in group if r.train_solved is not None),
    }
    for kind in KINDS:
        row[kind] = next((p for p in first.published if p.kind == kind), None)
    return row


# --- writing ------------------------------------------------------------------------------------------------


def write_evals_csv(reports: list[RunReport], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "step", "set", "metric", "value"])
        for rep in reports:
            for e in rep.evals:
                w.writerow([rep.label, e["step"], e["set"], e["metric"], repr(e["value"])])


def _cell(v: Any) -> str:
    if isinstance(v, Stat):
        return v.text()
    if isinstance(v, Published):
        return pct(v.value, 1)
    if v is None:
        return ""
    return str(v).replace("|", "\\|")


def lm_benchmark_rows(rep: RunReport) -> list[tuple[Any, ...]]:
    """(run, benchmark, task, metric, step, ours, public L, public XL) for each public HRM-Text benchmark that
    the run's last lm-eval evaluation scored (hrm.lm.evaluate.PUBLIC_BENCHMARKS: torch-free to import)."""
    if not is_lm_run(rep.path) or not rep.evals:
        return []
    from hrm.lm.evaluate import PUBLIC_BENCHMARKS

    rows = []
    for b in PUBLIC_BENCHMARKS:
        name, _, filt = b.metric.partition(",")
        metric = name if filt in ("", "none") else f"{name}[{filt}]"
        pts = {e["step"]: e["value"] for e in rep.evals if e["set"] == b.task and e["metric"] == metric}
        if pts:
            step = max(pts)
            rows.append((rep.label, b.name, b.task, metric, step, pct(pts[step], 1), f"{b.public_L:.1f}%",
                         f"{b.public_XL:.1f}%"))
    return rows


def report_text(reports: list[RunReport], groups: list[list[RunReport]], plots: dict[str, str]) -> str:
    lines = ["# HRM results", "",
             f"{len(reports)} run(s), gathered by `hrm-slurm collect`. Numbers are percent of the test set. `best` is "
             "the evaluated checkpoint with the highest score (pass@2 where ARC voting ran, else exact_accuracy), "
             "`last` the last one evaluated. Why a number is below the paper's: guides/EXPERIMENTS.md, "
             '"Why is my number below the paper?".', "", "## Runs", ""]
    for rep in reports:
        what = ", ".join(x for x in (rep.experiment, f"seed {rep.seed}" if rep.seed is not None else None) if x)
        lines.append(f"- `{rep.label}`" + (f" ({what})" if what else "") + f": {rep.line()}")
    cols = ["run", "experiment", "n", "seeds", "metric", "best", "best step", "last", "last step",
            "train > 0.99 at", *KINDS]
    lines += ["", "## Summary", "",
              "One row per run, or per seed sweep (runs whose settings differ only in `seed`): mean ± sd in points "
              "over its n runs. The last columns are the published numbers (sources below).", "",
              "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in cols) + " |" for row in map(group_row, groups)]
    noted = [r for r in reports if r.notes]
    if noted:
        lines += ["", "## What to check", ""]
        for rep in noted:
            lines.append(f"- `{rep.label}`:")
            lines += [f"  - {n}" for n in rep.notes]
    shown = sorted({p for r in reports for p in r.published}, key=lambda p: (p.experiment, KINDS.index(p.kind)))
    if shown:
        lines += ["", "## Published numbers", "", "| experiment | metric | value | kind | source |",
                  "|---|---|---|---|---|"]
        lines += [f"| {p.experiment} | {p.metric} | {pct(p.value, 1)} | {p.kind} | [{p.source}]({p.url}) |"
                  for p in shown]
    lm_rows = [row for rep in reports for row in lm_benchmark_rows(rep)]
    if lm_rows:
        lines += ["", "## HRM-Text benchmarks", "",
                  "The last evaluated checkpoint of each HRM-Text run on the public benchmarks' lm-eval tasks, beside "
                  "the published L and XL scores (sapientinc/HRM-Text README). Those come from the repository's own "
                  "generative harness, which scores differently: guides/HRM_TEXT.md, \"Evaluation with lm-eval\".",
                  "", "| run | benchmark | lm-eval task | metric | step | ours | public L | public XL |",
                  "|---|---|---|---|---:|---:|---:|---:|"]
        lines += ["| " + " | ".join(map(str, r)) + " |" for r in lm_rows]
    lines += ["", "## Files", "", "- `evals.csv`: run, step, set, metric, value of every evaluated checkpoint",
              "- `results.csv`, `results.md`: the last numbers of each run"]
    lines += [f"- `{name}`: {what}" for name, what in plots.items()]
    return "\n".join(lines) + "\n"


def summarize(run: Path, label: str | None = None) -> dict[str, Any]:
    """The last numbers of a run: state, step, last training values, last evaluation."""
    rows = read_metrics(run)
    train = [r for r in rows if any(k.startswith("train/") for k in r)]
    status = _load_json(run / "status.json") if (run / "status.json").is_file() else None
    status = status if isinstance(status, dict) else {}
    eval_step, ev = latest_eval(run)
    out: dict[str, Any] = {
        "run": label or run.name,
        "state": status.get("state", ""),
        "step": train[-1]["step"] if train else "",
    }
    for k in TABLE_TRAIN:
        vals = curve(train, k)[1]
        out[k] = vals[-1] if vals else ""
    out["eval_step"] = eval_step if eval_step is not None else ""
    out.update(ev)
    out["_curves"] = {k: list(zip(*curve(train, k))) for k in CURVES}
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


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "run"


def collect(runs: list[Path], out: Path) -> list[dict[str, Any]]:
    """Summaries of the runs; results.csv, results.md, evals.csv, report.md and the plots under `out`."""
    found = find_runs(list(runs))
    if not found:
        if not runs:
            raise RequestError("no runs to collect (none named and no pipeline recorded); fix: hrm-slurm collect "
                               "RUN_DIR ... (a directory with metrics.jsonl, the checkpoint_path of hrm-train)")
        named = ", ".join(map(str, runs[:3])) + (" ..." if len(runs) > 3 else "")
        raise RequestError(f"no runs in {named} (no metrics.jsonl or step_N_eval.json there or below); fix: hrm-slurm"
                           " collect RUN_DIR ... with the checkpoint_path of a run, or its runs directory")
    skipped = [str(r) for r in runs if not Path(r).is_dir()]
    if skipped:
        print(f"hrm-slurm collect: skipped {', '.join(skipped)}: not a directory", file=sys.stderr)
    labels = run_labels(found)
    reports = [analyse(r, label) for r, label in zip(found, labels)]
    groups = group_runs(reports)
    rows = [summarize(r, label) for r, label in zip(found, labels)]
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
    write_evals_csv(reports, out / "evals.csv")
    plots: dict[str, str] = {}
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("hrm-slurm collect: matplotlib is not installed, no plots; fix: pip install matplotlib", file=sys.stderr)
    else:
        plot_compare(reports, out / "training_curves.png")
        plots["training_curves.png"] = "the runs compared"
        for rep in reports:
            name = f"curves_{_safe(rep.label)}.png"
            plot_run(rep, out / name)
            plots[name] = f"`{rep.label}`: evaluation, train exact accuracy, loss, halting, ACT steps"
    for run, label in zip(found, labels):
        page = viewer_page(run, label, out)
        if page:
            plots[page[0]] = page[1]
    (out / "report.md").write_text(report_text(reports, groups, plots))
    for row, rep in zip(rows, reports):
        row["_report_line"] = f"{rep.label}: {rep.line()}"
    if rows:
        rows[0]["_report_path"] = str(out / "report.md")
    return rows


def viewer_page(run: Path, label: str, out: Path) -> tuple[str, str] | None:
    """`hrm-data view` of the run's last evaluated step that has saved predictions, as (file name, what it is);
    None when there is none or its dataset is not here. Run as its own process: reading the prediction files
    needs torch, which collect never imports."""
    steps = [s for s in eval_files(run) if any(Path(run).glob(f"step_{s}_all_preds.*"))]
    data_path = read_config(run).get("data_path")
    if not steps or not isinstance(data_path, str) or not (Path(data_path) / "test" / "dataset.json").is_file():
        return None
    name = f"view_{_safe(label)}.html"
    cmd = [sys.executable, "-m", "hrm.data.cli", "view", data_path, "--preds", str(Path(run) / f"step_{steps[-1]}"),
           "--out", str(out / name)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        why = (res.stderr.strip().splitlines() or ["no message"])[-1]
        print(f"hrm-slurm collect: no viewer page for {label}: {why}", file=sys.stderr)
        return None
    return name, f"`{label}`: puzzles and predictions of step_{steps[-1]}, right/wrong cell by cell (open in a browser)"


# --- plots --------------------------------------------------------------------------------------------------


@dataclass
class Panel:
    """The data of one plot panel: raw points, their moving average, marked steps and reference lines."""

    key: str
    title: str
    steps: list[int]
    raw: list[float]
    smooth: list[float] | None = None  # None: draw the points themselves (evaluations)
    marks: list[tuple[int, float, str]] = field(default_factory=list)  # (step, value, label)
    vlines: list[tuple[int, str]] = field(default_factory=list)
    hlines: list[tuple[float, str]] = field(default_factory=list)
    log: bool = False
    fraction: bool = False  # a value in [0, 1]
    empty: str = ""


def train_panel(rows: list[dict[str, Any]], key: str, title: str, window: int | None = None) -> Panel:
    steps, raw = curve(rows, key)
    w = window or smoothing_window(len(raw))
    return Panel(key, title, steps, raw, moving_average(raw, w) if raw else [], log=key.endswith("loss"),
                 fraction=key.endswith("accuracy"), empty="no rows with sequences halted" if not raw else "")


def eval_panel(rep: RunReport) -> Panel:
    if rep.metric is None:
        return Panel("eval", "evaluation", [], [], empty="no evaluation yet")
    pts = {e["step"]: e["value"] for e in rep.evals if e["set"] == rep.set and e["metric"] == rep.metric}
    steps = sorted(pts)
    p = Panel(f"{rep.set}/{rep.metric}", f"test {rep.set}/{rep.metric}", steps, [pts[s] for s in steps],
              fraction=True)
    if rep.best:
        p.marks.append((rep.best[0], rep.best[1], f"best: step {rep.best[0]}, {pct(rep.best[1])}"))
    p.hlines = [(x.value, f"{x.kind} {pct(x.value, 1)}") for x in rep.published if x.metric == rep.metric]
    if rep.published and not p.hlines:
        p.title += f" (published: {rep.published[0].metric})"
    return p


def panels(rep: RunReport) -> list[Panel]:
    """A run's figure: evaluation (best marked, published lines), train exact accuracy (where it passes 0.99),
    loss (log), halting accuracy, mean ACT steps, per-cell accuracy. HRM-Text: evaluation, loss, token
    accuracy, tokens/s, learning rate, backprop steps."""
    if is_lm_run(rep.path):
        return [eval_panel(rep), train_panel(rep.rows, "train/lm_loss", "train lm_loss (log)"),
                train_panel(rep.rows, "train/accuracy", "train token accuracy"),
                train_panel(rep.rows, "perf/tokens_per_s", "tokens/s"), train_panel(rep.rows, "train/lr", "lr"),
                train_panel(rep.rows, "train/bp_steps", "backprop steps")]
    exact = train_panel(rep.rows, "train/exact_accuracy", "train exact accuracy")
    if rep.train_solved is not None:
        exact.vlines.append((rep.train_solved, f"> {TRAIN_SOLVED} at step {rep.train_solved}"))
    return [eval_panel(rep), exact, train_panel(rep.rows, "train/lm_loss", "train lm_loss (log)"),
            train_panel(rep.rows, "train/q_halt_accuracy", "halting accuracy (q_halt)"),
            train_panel(rep.rows, "train/steps", "mean ACT steps"),
            train_panel(rep.rows, "train/accuracy", "train per-cell accuracy")]


def draw(ax: Any, p: Panel, colour: str | None = None, label: str | None = None) -> None:
    """One panel's data on a matplotlib axis: faint raw points, the moving average over them."""
    if not p.steps:
        if p.empty and label is None:
            ax.text(0.5, 0.5, p.empty, ha="center", va="center", transform=ax.transAxes, color="grey")
    elif p.smooth is None:
        ax.plot(p.steps, p.raw, "o-", color=colour, label=label, ms=4)
    else:
        (line,) = ax.plot(p.steps, p.smooth, color=colour, lw=1.5, label=label)
        ax.plot(p.steps, p.raw, ".", color=line.get_color(), alpha=0.15, ms=2, zorder=line.get_zorder() - 1)
    for s, v, text in p.marks:
        ax.plot([s], [v], "*", color="crimson", ms=12, zorder=5)
        ax.annotate(text, (s, v), textcoords="offset points", xytext=(4, -12), fontsize="small", color="crimson")
    for s, text in p.vlines:
        ax.axvline(s, color="grey", ls=":", lw=1)
        ax.annotate(text, (s, 0.02), xycoords=("data", "axes fraction"), fontsize="small", color="grey",
                    xytext=(3, 0), textcoords="offset points")
    for v, text in p.hlines:
        ax.axhline(v, color="black", ls="--", lw=0.8, alpha=0.6)
        ax.annotate(text, (0.01, v), xycoords=("axes fraction", "data"), fontsize="small", va="bottom")
    ax.set_title(p.title)
    ax.set_xlabel("step")
    if p.log and any(v > 0 for v in p.raw):
        ax.set_yscale("log")
    if p.fraction:
        ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_run(rep: RunReport, path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    for ax, p in zip(axes.flat, panels(rep)):
        draw(ax, p)
    fig.suptitle(f"{rep.label}" + (f" ({rep.experiment})" if rep.experiment else "") + f": {rep.line()}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def compare_panels(rep: RunReport) -> list[Panel]:
    return [eval_panel(rep), train_panel(rep.rows, "train/exact_accuracy", "train exact accuracy"),
            train_panel(rep.rows, "train/lm_loss", "train lm_loss (log)"),
            train_panel(rep.rows, "train/steps", "mean ACT steps")]


def plot_compare(reports: list[RunReport], path: Path) -> None:
    """The runs side by side: evaluation score, train exact accuracy, loss, ACT steps; one colour per run."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.2), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    seen: set[str | None] = set()  # the published lines of an experiment are drawn once
    for i, rep in enumerate(reports):
        for ax, p in zip(axes[0], compare_panels(rep)):
            p.marks, p.vlines = [], []
            p.hlines = [] if rep.experiment in seen else [(v, f"{rep.experiment} {t}") for v, t in p.hlines]
            draw(ax, p, colours[i % len(colours)], rep.label)
        seen.add(rep.experiment)
    for ax, title in zip(axes[0], ("test score (pass@2 / exact_accuracy)", "train exact accuracy",
                                   "train lm_loss (log)", "mean ACT steps")):
        ax.set_title(title)
    for ax in axes[0]:
        if ax.get_legend_handles_labels()[0]:  # the first panel with a run's data
            ax.legend(fontsize="small")
            break
    fig.tight_layout()
    fig.savefig(path, dpi=90)
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
    for r in rows:
        if r.get("_report_line"):
            console.print(r["_report_line"], markup=False, highlight=False)
    if rows and rows[0].get("_report_path"):
        console.print(f"report: {rows[0]['_report_path']}", markup=False, highlight=False)
