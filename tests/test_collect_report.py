"""`hrm-slurm collect`'s report on fabricated run directories (no training): report.md's best/last lines and
seed-sweep rows agree with evals.csv, the curves leave out the rows where a metric is undefined, ARC runs are
judged by pass@2, the published numbers come from slurm/published.py, and an empty collect fails in one line."""

from __future__ import annotations

import csv
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from slurm import collect
from slurm.collect import analyse, curve, evaluations, find_runs, moving_average, panels, run_labels
from slurm.published import PUBLISHED, published_for

REPO = Path(__file__).resolve().parents[1]
SUDOKU_DATA = "/global/scratch/users/me/hrm-data/sudoku-extreme-1k-aug-1000"
ARC_DATA = "/global/scratch/users/me/hrm-data/arc-aug-1000"


def config(path: Path, seed: int = 0, data_path: str = SUDOKU_DATA, **extra) -> dict:
    return {"data_path": data_path, "seed": seed, "epochs": 20000, "eval_interval": 2000, "lr": 1e-4,
            "global_batch_size": 768, "arch": {"hidden_size": 512, "halt_max_steps": 16},
            "checkpoint_path": str(path), "run_name": path.name, "project_name": "Sudoku-extreme ACT-torch",
            "resources": {"gpus": 1, "partition": f"savio{3 + seed % 2}_gpu"}, **extra}


def make_run(path: Path, evals: dict[int, float], *, seed: int = 0, steps: int = 400, zero_every: int = 7,
             cfg: dict | None = None, eval_json: dict[int, dict] | None = None, best: bool = True) -> Path:
    """A run directory: training rows for steps 1..steps (every `zero_every`-th with no halted sequence, its
    per-sequence metrics logged as 0), evaluation rows of all/exact_accuracy at the steps of `evals`, a
    step_N weights file per evaluation, optional step_N_eval.json files, all_config.yaml and best.json."""
    path.mkdir(parents=True)
    rows = []
    for s in range(1, steps + 1):
        halted = s % zero_every != 0
        acc = min(1.0, s / (0.8 * steps)) if halted else 0.0
        rows.append({"step": s, "time": 100.0 + s, "train/lm_loss": 2.0 * 0.99**s,
                     "train/count": 1.0 if halted else 0.0, "train/exact_accuracy": acc, "train/accuracy": acc,
                     "train/q_halt_accuracy": acc,
                     "train/steps": 8.0 if halted else 0.0, "train/lr": 1e-4})
        if s in evals:
            rows.append({"step": s, "time": 100.5 + s, "all/exact_accuracy": evals[s], "all/accuracy": 0.9,
                         "all/count": 1.0, "all/lm_loss": 1.0, "all/steps": 16.0})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for s in evals:
        (path / f"step_{s}").write_bytes(b"weights")
    for s, data in (eval_json or {}).items():
        (path / f"step_{s}_eval.json").write_text(json.dumps({"step": s, **data}))
    (path / "all_config.yaml").write_text(yaml.safe_dump(cfg if cfg is not None else config(path, seed)))
    if best and evals:
        step = max(evals, key=lambda k: evals[k])
        (path / "best.json").write_text(json.dumps({"step": step, "metric": "all/exact_accuracy",
                                                    "value": evals[step]}))
    (path / "status.json").write_text(json.dumps({"state": "finished", "step": steps, "total_steps": steps}))
    return path


def read_evals(out: Path) -> list[dict]:
    with (out / "evals.csv").open() as f:
        return list(csv.DictReader(f))


def best_last(evals: list[dict], run: str, set_name: str, metric: str) -> tuple[tuple[int, float], tuple[int, float]]:
    pts = {int(e["step"]): float(e["value"]) for e in evals
           if e["run"] == run and e["set"] == set_name and e["metric"] == metric}
    best = max(pts, key=lambda s: (pts[s], -s))
    last = max(pts)
    return (best, pts[best]), (last, pts[last])


LINE = re.compile(r"^- `(?P<run>[^`]+)`[^:]*: best: step (?P<bs>\d+) (?P<metric>\S+) (?P<bv>[\d.]+)% "
                  r"\(last: step (?P<ls>\d+), (?P<lv>[\d.]+)%\)$")


def report_lines(out: Path) -> dict[str, dict]:
    found = {}
    for line in (out / "report.md").read_text().splitlines():
        m = LINE.match(line)
        if m:
            found[m["run"]] = m.groupdict()
    return found


def summary_table(out: Path) -> list[dict[str, str]]:
    text = (out / "report.md").read_text()
    block = text.split("## Summary", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split(" | ")] for line in block.splitlines()
            if line.startswith("| ")]
    return [dict(zip(rows[0], r)) for r in rows[1:]]


def test_report_best_and_last_lines_match_evals_csv(tmp_path):
    run = make_run(tmp_path / "runs" / "sudoku-a", {100: 0.20, 200: 0.50, 300: 0.45, 400: 0.30},
                   eval_json={300: {"metrics": {"all": {"exact_accuracy": 0.52, "accuracy": 0.95}}}})
    (run / "step_500").write_bytes(b"weights")  # saved, never evaluated
    with (run / "metrics.jsonl").open("a") as f:  # a requeued job evaluated step 200 again: the last row counts
        f.write(json.dumps({"step": 200, "all/exact_accuracy": 0.49}) + "\n" + '{"step": 401, "train/lm')
    out = tmp_path / "results"
    collect.collect([tmp_path / "runs"], out)  # a runs directory stands for the runs below it

    evals = read_evals(out)
    keys = [(e["run"], e["step"], e["set"], e["metric"]) for e in evals]
    assert len(keys) == len(set(keys))  # deduplicated
    exact = {int(e["step"]): float(e["value"]) for e in evals if e["metric"] == "exact_accuracy"}
    assert exact == {100: 0.20, 200: 0.49, 300: 0.52, 400: 0.30}  # step_300_eval.json over the training row
    assert {e["set"] for e in evals} == {"all"} and "lm_loss" in {e["metric"] for e in evals}

    (bs, bv), (ls, lv) = best_last(evals, "sudoku-a", "all", "exact_accuracy")
    line = report_lines(out)["sudoku-a"]
    assert (int(line["bs"]), line["metric"], int(line["ls"])) == (bs, "exact_accuracy", ls) == (300, "exact_accuracy",
                                                                                               400)
    assert float(line["bv"]) == pytest.approx(100 * bv, abs=0.005) and float(line["lv"]) == pytest.approx(100 * lv,
                                                                                                          abs=0.005)
    report = (out / "report.md").read_text()
    assert "- `sudoku-a` (sudoku_full, seed 0): best: step 300 exact_accuracy 52.00% (last: step 400, 30.00%)" in report
    assert "22.0 points below the best (step 300)" in report  # what to check: the last is not the best
    assert "best.json (written during training) names step 200" in report  # in-training evaluation chose 200
    assert f"exact_accuracy of 4 of 5 checkpoints: `hrm-evaluate checkpoint={run}` evaluates every one" in report
    # The published numbers of sudoku_full are columns of the table, with their sources below it.
    (row,) = summary_table(out)
    assert row["experiment"] == "sudoku_full" and row["n"] == "1" and row["best"] == "52.00%"
    assert (row["paper"], row["reproduction"], row["ARC Prize"]) == ("55.0%", "45.8%", "")
    assert "sapientinc/HRM/issues/12" in report and "arxiv.org/abs/2506.21734" in report
    # results.csv keeps one row per run, with the last evaluation
    with (out / "results.csv").open() as f:
        (res,) = list(csv.DictReader(f))
    assert res["run"] == "sudoku-a" and res["eval_step"] == "400" and float(res["all/exact_accuracy"]) == 0.30


def test_a_seed_sweep_is_one_row_with_mean_sd_and_n(tmp_path):
    finals = {0: (0.50, 0.40), 1: (0.56, 0.41), 2: (0.47, 0.47)}  # seed: (best, last)
    for seed, (b, last) in finals.items():  # multirun points: sweep/0, sweep/1, sweep/2
        make_run(tmp_path / "sweep" / str(seed), {100: 0.1, 200: b, 300: last}, seed=seed, steps=300)
    other = tmp_path / "other" / "0"  # same sweep layout, another lr: its own row
    make_run(other, {100: 0.2, 200: 0.3}, steps=200, cfg=config(other, 0, lr=7e-5, epochs=2000))
    runs = [tmp_path / "sweep" / str(s) for s in finals] + [other]
    assert run_labels(runs) == ["sweep/0", "sweep/1", "sweep/2", "other/0"]
    out = tmp_path / "results"
    collect.collect(runs, out)

    evals = read_evals(out)
    bests, lasts = [], []
    for seed in finals:
        (_, b), (_, last) = best_last(evals, f"sweep/{seed}", "all", "exact_accuracy")
        bests.append(b)
        lasts.append(last)
    rows = {r["run"]: r for r in summary_table(out)}
    assert set(rows) == {"sweep/0, sweep/1, sweep/2", "other/0"}
    sweep = rows["sweep/0, sweep/1, sweep/2"]
    assert sweep["n"] == "3" and sweep["seeds"] == "0, 1, 2" and sweep["experiment"] == "sudoku_full"
    mean, sd = re.fullmatch(r"([\d.]+)% ± ([\d.]+)", sweep["best"]).groups()
    assert float(mean) == pytest.approx(100 * statistics.mean(bests), abs=0.005)
    assert float(sd) == pytest.approx(100 * statistics.stdev(bests), abs=0.005)
    mean, sd = re.fullmatch(r"([\d.]+)% ± ([\d.]+)", sweep["last"]).groups()
    assert float(mean) == pytest.approx(100 * statistics.mean(lasts), abs=0.005)
    assert float(sd) == pytest.approx(100 * statistics.stdev(lasts), abs=0.005)
    assert sweep["best step"] == "200, 200, 200" and sweep["paper"] == "55.0%"  # a tie goes to the earlier step
    assert rows["other/0"]["n"] == "1" and rows["other/0"]["best"] == "30.00%"
    assert "epochs=2000, the recipe has 20000: a shorter schedule" in (out / "report.md").read_text()
    assert set(report_lines(out)) == {"sweep/0", "sweep/1", "sweep/2", "other/0"}  # still one line per run


def test_rows_where_no_sequence_halted_are_not_in_the_curves(tmp_path):
    run = make_run(tmp_path / "r", {100: 0.1}, steps=100, zero_every=5)
    with (run / "metrics.jsonl").open("a") as f:  # resumed from step 98: steps 99 and 100 logged again
        for s in (99, 100):
            f.write(json.dumps({"step": s, "train/lm_loss": 0.5, "train/count": 1.0, "train/exact_accuracy": 0.99,
                                "train/steps": 4.0}) + "\n")
    steps, values = curve(run, "train/exact_accuracy")
    assert steps == [s for s in range(1, 101) if s % 5 != 0 or s in (100,)]  # 100 re-logged with sequences halted
    assert 0.0 not in values and values[-1] == 0.99 and len(set(steps)) == len(steps)
    assert curve(run, "train/steps")[0] == steps and set(curve(run, "train/steps")[1][:-2]) == {8.0}
    loss_steps, loss = curve(run, "train/lm_loss")  # the loss is over every sequence: all steps
    assert loss_steps == list(range(1, 101)) and loss[-1] == 0.5
    assert curve(run, "all/exact_accuracy") == ([100], [0.1])
    # the panels drawn are this data
    by_key = {p.key: p for p in panels(analyse(run))}
    assert by_key["train/exact_accuracy"].steps == steps and by_key["train/exact_accuracy"].raw == values
    assert by_key["train/q_halt_accuracy"].steps == steps[:-1] and by_key["train/lm_loss"].log  # 100: not re-logged
    assert by_key["train/exact_accuracy"].smooth == moving_average(values, collect.smoothing_window(len(values)))
    # rows from before train/count was logged have every metric defined
    assert curve([{"step": 1, "train/exact_accuracy": 0.0}], "train/exact_accuracy") == ([1], [0.0])


def test_moving_average_and_the_step_where_training_is_solved():
    assert moving_average([1.0, 2.0, 3.0, 4.0, 5.0], 2) == [1.0, 1.5, 2.5, 3.5, 4.5]
    assert moving_average([1.0, 2.0, 3.0, 4.0], 3) == pytest.approx([1.0, 1.5, 2.0, 3.0])
    assert moving_average([4.0, 2.0], 1) == [4.0, 2.0] and moving_average([], 3) == []
    assert moving_average([3.0, 5.0], 10) == [3.0, 4.0]
    with pytest.raises(ValueError):
        moving_average([1.0], 0)
    assert collect.smoothing_window(10) == 1 and collect.smoothing_window(5000) == 100
    assert collect.smoothing_window(10**6) == 200
    steps = list(range(1, 301))
    values = [0.5] * 100 + [0.995] * 200
    values[40] = 1.0  # one lucky batch early on does not count
    assert collect.first_above(steps, values, 0.99) == 41
    assert collect.train_solved_step(steps, values) == 106  # window 6: the mean passes 0.99 on the 6th high step


def test_arc_runs_are_judged_by_pass_at_2(tmp_path):
    run = make_run(tmp_path / "arc-a", {1000: 0.30, 2000: 0.35, 3000: 0.33}, steps=3000, zero_every=1000,
                   cfg=config(tmp_path / "arc-a", data_path=ARC_DATA, epochs=100000),
                   eval_json={2000: {"metrics": {"all": {"exact_accuracy": 0.35}}, "seconds": 12.5,  # as hrm-evaluate
                                     "arc": {"pass@1": 0.25, "pass@2": 0.30, "pass@10": 0.4, "tasks": 400,
                                             "correct": {"pass@1": 100, "pass@2": 120}}},
                              3000: {"metrics": {"all": {"exact_accuracy": 0.33}}}})
    (run / "step_3000_arc_vote.json").write_text(json.dumps({"summary": {"pass@1": 0.28, "pass@2": 0.34, "tasks": 400,
                                                                         "correct": {"pass@2": 136}}, "tasks": {}}))
    plain = make_run(tmp_path / "arc-b", {1000: 0.3}, steps=1000, cfg=config(tmp_path / "arc-b", data_path=ARC_DATA))
    out = tmp_path / "results"
    collect.collect([run, plain], out)

    evals = read_evals(out)
    arc = {(int(e["step"]), e["metric"]): float(e["value"]) for e in evals if e["set"] == "arc"}
    assert arc == {(2000, "pass@1"): 0.25, (2000, "pass@2"): 0.30, (2000, "pass@10"): 0.4,
                   (3000, "pass@1"): 0.28, (3000, "pass@2"): 0.34}  # counts of tasks are not metrics
    (bs, bv), (ls, lv) = best_last(evals, "arc-a", "arc", "pass@2")
    line = report_lines(out)["arc-a"]
    assert line["metric"] == "pass@2" and (int(line["bs"]), int(line["ls"])) == (bs, ls) == (3000, 3000)
    assert float(line["bv"]) == pytest.approx(100 * bv, abs=0.005) == 34.0
    rows = {r["run"]: r for r in summary_table(out)}
    assert rows["arc-a"]["experiment"] == "arc1" and rows["arc-a"]["metric"] == "pass@2"
    assert (rows["arc-a"]["paper"], rows["arc-a"]["ARC Prize"], rows["arc-a"]["reproduction"]) == ("40.3%", "32.0%", "")
    # without voting the run is judged by exact accuracy, and the report says that is not the published metric
    assert report_lines(out)["arc-b"]["metric"] == "exact_accuracy"
    assert "per augmented example, the published numbers are pass@2" in (out / "report.md").read_text()
    assert "arcprize.org/blog/hrm-analysis" in (out / "report.md").read_text()
    eval_panel = panels(analyse(run))[0]
    assert eval_panel.steps == [2000, 3000] and [v for v, _ in eval_panel.hlines] == [0.403, 0.32]
    assert eval_panel.marks[0][:2] == (3000, 0.34)


def test_the_experiment_comes_from_the_config_the_pipeline_record_or_the_data_path(tmp_path):
    a = make_run(tmp_path / "a", {10: 0.1}, steps=10, cfg={"experiment": "arc2", "data_path": SUDOKU_DATA})
    b = make_run(tmp_path / "b", {10: 0.1}, steps=10, cfg={"data_path": "/somewhere/else"})
    (b / "slurm").mkdir()
    (b / "slurm" / "pipeline.json").write_text(json.dumps({"experiment": "maze", "data_path": "x"}))
    c = make_run(tmp_path / "c", {10: 0.1}, steps=10, cfg={"data_path": "data/maze-30x30-hard-1k"})
    d = make_run(tmp_path / "d", {10: 0.1}, steps=10, cfg={"data_path": "data/mine"})
    e = make_run(tmp_path / "sudoku_demo", {10: 0.1}, steps=10, cfg={"data_path": "data/mine"})  # run-local's name
    f = make_run(tmp_path / "maze-20250101-120000", {10: 0.1}, steps=10, cfg={})  # hrm-slurm submit's name
    assert [collect.experiment_of(r) for r in (a, b, c, d, e, f)] == ["arc2", "maze", "maze", None, "sudoku_demo",
                                                                      "maze"]
    assert collect.analyse(d).notes == []  # no experiment: no recipe to call the schedule short against
    assert published_for("sudoku_demo") == [] and published_for(None) == []


def test_published_numbers_are_one_table_that_the_guides_quote():
    table = {(p.experiment, p.kind): (p.metric, p.value) for p in PUBLISHED}
    assert table == {("sudoku_full", "paper"): ("exact_accuracy", 0.55),
                     ("sudoku_full", "reproduction"): ("exact_accuracy", 0.458),
                     ("maze", "paper"): ("exact_accuracy", 0.745),
                     ("arc1", "paper"): ("pass@2", 0.403), ("arc1", "ARC Prize"): ("pass@2", 0.32),
                     ("arc2", "paper"): ("pass@2", 0.05), ("arc2", "ARC Prize"): ("pass@2", 0.02)}
    guide = (REPO / "guides" / "EXPERIMENTS.md").read_text()
    summary = guide.split("## Summary", 1)[1].split("\n## ", 1)[0]
    for p in PUBLISHED:
        row = next(line for line in summary.splitlines() if line.startswith(f"| `{p.experiment}` |"))
        assert f"**{100 * p.value:.1f}%**" in row or f"**{round(100 * p.value, 1):g}%**" in row, (p, row)
        assert p.url.startswith("https://")


def test_plots_are_written_one_per_run_and_one_comparing_them(tmp_path):
    import matplotlib.image

    make_run(tmp_path / "runs" / "x", {100: 0.2, 200: 0.4}, steps=200)
    make_run(tmp_path / "runs" / "y", {}, steps=50, best=False)  # no evaluation yet: the panel says so
    out = tmp_path / "results"
    collect.collect([tmp_path / "runs"], out)
    for name in ("training_curves.png", "curves_x.png", "curves_y.png"):
        assert (out / name).stat().st_size > 20_000, name
        h, w = matplotlib.image.imread(out / name).shape[:2]
        assert h > 300 and w > 1000
    text = (out / "report.md").read_text()
    assert "- `y` (sudoku_full, seed 0): no evaluation yet" in text and "`curves_x.png`" in text


def cli(args: list[str], cwd: Path, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HRM_SLURM_HOME": str(home), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "slurm.cli", "collect", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_collect_with_no_runs_fails_in_one_line_naming_the_fix(tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("not a run")
    for args in ([str(empty), "--out", str(tmp_path / "out")], ["--out", str(tmp_path / "out")]):
        r = cli(args, tmp_path, tmp_path / "registry")
        lines = r.stderr.strip().splitlines()
        assert r.returncode != 0 and len(lines) == 1 and "fix: hrm-slurm collect RUN_DIR" in lines[0], r.stderr
        assert "no runs" in lines[0] and not (tmp_path / "out").exists()
    assert find_runs([empty, tmp_path / "missing"]) == []
    run = make_run(tmp_path / "runs" / "ok", {10: 0.5}, steps=10)
    r = cli([str(run), "--out", str(tmp_path / "out")], tmp_path, tmp_path / "registry")
    assert r.returncode == 0, r.stderr
    assert "ok: best: step 10 exact_accuracy 50.00% (last: step 10, 50.00%)" in r.stdout
    assert (tmp_path / "out" / "report.md").is_file() and evaluations(run)[0]["step"] == 10


def test_an_hrm_text_run_is_judged_by_its_lm_eval_scores(tmp_path):
    run = tmp_path / "runs" / "hrmtext_demo"
    run.mkdir(parents=True)
    rows = [{"step": s, "train/lm_loss": 5.0 / s, "train/accuracy": 1 - 1 / s, "perf/tokens_per_s": 9000.0}
            for s in range(10, 110, 10)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "lm_config.json").write_text("{}")
    for s in (50, 100):
        (run / f"step_{s}").mkdir()
    (run / "all_config.yaml").write_text(yaml.safe_dump({"seed": 0, "data_path": "/d/hrmtext-demo",
                                                         "eval": {"tasks": ["t"], "include_path": "tasks"}}))
    (run / "eval").mkdir()
    result = {"t": {"alias": "t", "exact_match,none": 0.3, "exact_match,strict": 0.1, "sample_len": 200}}
    (run / "eval" / "lm_eval_step_100.json").write_text(json.dumps({"step": 100, "results": result}))
    rep = analyse(run)
    assert rep.experiment == "hrmtext_demo" and (rep.set, rep.metric) == ("t", "exact_match")
    assert rep.best == (100, 0.3) and rep.line() == "best: step 100 exact_match 30.00% (last: step 100, 30.00%)"
    assert {(e["set"], e["metric"]) for e in rep.evals} == {("t", "exact_match"), ("t", "exact_match[strict]")}
    assert rep.notes == ["t exact_match of 1 of 2 checkpoints: `hrm-lm eval " + str(run) + " --step 50 --tasks t "
                         "--include-path /d/hrmtext-demo/tasks` scores another"]
    keys = [p.key for p in panels(rep)]
    assert keys == ["t/exact_match", "train/lm_loss", "train/accuracy", "perf/tokens_per_s", "train/lr",
                    "train/bp_steps"]
    assert panels(rep)[3].raw == [9000.0] * 10
    out = tmp_path / "results"
    collect.collect([run], out)
    assert {e["set"] for e in read_evals(out)} == {"t"}  # perf/* rows are not evaluations
    assert report_lines(out)["hrmtext_demo"]["bv"] == "30.00"


def test_an_hrm_text_run_on_public_benchmarks_is_set_beside_the_published_scores(tmp_path):
    from hrm.lm.evaluate import PUBLIC_BENCHMARKS

    run = tmp_path / "runs" / "hrmtext_L"
    (run / "eval").mkdir(parents=True)
    (run / "lm_config.json").write_text("{}")
    (run / "metrics.jsonl").write_text(json.dumps({"step": 10, "train/lm_loss": 3.0}) + "\n")
    for step, gsm in ((500, 0.2), (1000, 0.4)):
        results = {"gsm8k": {"exact_match,strict-match": 0.1, "exact_match,flexible-extract": gsm},
                   "mmlu": {"acc,none": 0.3}, "other": {"acc,none": 0.9}}
        (run / "eval" / f"lm_eval_step_{step}.json").write_text(json.dumps({"step": step, "results": results}))
    out = tmp_path / "results"
    collect.collect([run], out)
    text = (out / "report.md").read_text()
    block = text.split("## HRM-Text benchmarks", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in block.splitlines() if line.startswith("| hrmtext_L")]
    pub = {b.task: b for b in PUBLIC_BENCHMARKS}
    assert rows == [
        f"| hrmtext_L | GSM8k | gsm8k | exact_match[flexible-extract] | 1000 | 40.0% | {pub['gsm8k'].public_L:.1f}% | "
        f"{pub['gsm8k'].public_XL:.1f}% |",
        f"| hrmtext_L | MMLU | mmlu | acc | 1000 | 30.0% | {pub['mmlu'].public_L:.1f}% | "
        f"{pub['mmlu'].public_XL:.1f}% |",
    ]  # the last evaluation, public benchmarks only, in the table's order
    make_run(tmp_path / "runs" / "sudoku", {100: 0.2})
    collect.collect([tmp_path / "runs" / "sudoku"], tmp_path / "puzzle")
    assert "HRM-Text benchmarks" not in (tmp_path / "puzzle" / "report.md").read_text()
