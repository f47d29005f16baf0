"""`hrm-slurm run-local`: the submit plan's stages run as processes here (the no-Slurm path of `both`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from test_train import TINY, make_dataset


def test_run_local_trains_evaluates_and_collects(tmp_path):
    data = make_dataset(tmp_path / "toy")
    work = tmp_path / "work"
    work.mkdir()
    cmd = [sys.executable, "-m", "slurm.cli", "run-local", "+experiment=sudoku_demo", f"data_path={data}",
           "epochs=4", "eval_interval=2", "max_steps=12", *[t for t in TINY if not t.startswith("wandb_mode")]]
    res = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "WANDB_MODE": "disabled"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    run_dir = work / "runs" / "sudoku_demo"
    assert "stage data: skipped" in res.stdout  # the dataset exists and checks out
    assert json.loads((run_dir / "status.json").read_text())["step"] == 12
    assert json.loads((run_dir / "step_12_eval.json").read_text())["metrics"]["all"]["steps"] == 3.0
    assert (run_dir / "results" / "results.csv").is_file()
    # it ends by drawing a test puzzle from the predictions and saying where the page of all of them is
    assert "[hrm] a puzzle the model solved" in res.stdout or "[hrm] no test puzzle solved yet" in res.stdout
    assert "[hrm] view all puzzles: " in res.stdout and "step_12" in res.stdout.split("view all puzzles: ")[1]
    # a second run resumes nothing, re-evaluates the same checkpoint and says so
    again = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=600,
                           env={**os.environ, "WANDB_MODE": "disabled"})
    assert again.returncode == 0, again.stderr[-2000:]
    assert "step_12" in again.stdout


def test_run_local_bad_experiment_is_one_line(tmp_path):
    res = subprocess.run([sys.executable, "-m", "slurm.cli", "run-local", "+experiment=nope"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "unknown experiment 'nope'" in res.stderr


def test_run_local_hrm_text_demo_builds_trains_scores_held_out_problems_and_reports(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    cmd = [sys.executable, "-m", "slurm.cli", "run-local", "+experiment=hrmtext_demo", "data.source=synth:600",
           f"data_path={tmp_path / 'lm'}", "max_steps=30", "checkpoint_every_steps=15", "log_every=5"]
    res = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "WANDB_MODE": "disabled"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    run_dir = work / "runs" / "hrmtext_demo"
    assert (tmp_path / "lm" / "tasks" / "hrmtext_synth.yaml").is_file()  # the data stage wrote the held-out task
    scored = json.loads((run_dir / "eval" / "lm_eval_step_30.json").read_text())
    value = scored["results"]["hrmtext_synth"]["exact_match,none"]
    assert scored["step"] == 30 and scored["results"]["hrmtext_synth"]["sample_len"] == 200
    report = (run_dir / "results" / "report.md").read_text()
    assert f"best: step 30 exact_match {100 * value:.2f}% (last: step 30, {100 * value:.2f}%)" in report
    assert "hrmtext_demo,30,hrmtext_synth,exact_match," in (run_dir / "results" / "evals.csv").read_text()
