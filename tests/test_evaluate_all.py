"""`hrm-evaluate checkpoint=RUN_DIR`: every step_N without a step_N_eval.json, in step order, resumable;
eval_steps=last|best|all|N,M picks which; ARC runs vote per checkpoint; bad input gets one line and no files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_train import make_dataset, metrics, run, train_cmd

from hrm import evaluate as ev

STEPS = [8, 16, 24, 32]  # 64 training rows / batch 8 = 8 steps per epoch; 4 epochs, a checkpoint after each


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "toy")


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "four"
    res = run(train_cmd(data, run_dir, "epochs=4", "eval_interval=1"))
    assert res.returncode == 0, res.stderr[-3000:]
    return run_dir


@pytest.fixture
def run_dir(trained, tmp_path) -> Path:
    """A fresh copy of the run's weights and config (no evaluations yet)."""
    dest = tmp_path / "run"
    dest.mkdir()
    for name in ["all_config.yaml", "metrics.jsonl", *(f"step_{s}" for s in STEPS)]:
        shutil.copy(trained / name, dest / name)
    return dest


def evaluate(capsys, *argv: str) -> tuple[int, str, str]:
    code = ev.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def evaluated(run_dir: Path) -> list[int]:
    return sorted(int(p.name.split("_")[1]) for p in run_dir.glob("step_*_eval.json"))


def done_order(out: str) -> list[int]:
    return [int(line.split("step_")[1].split()[0]) for line in out.splitlines()
            if line.startswith("hrm-evaluate: step_") and " done in " in line]


def snapshot(path: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in path.iterdir()}


def test_all_checkpoints_in_order_matching_training_then_nothing_new(run_dir, capsys, monkeypatch):
    code, out, err = evaluate(capsys, f"checkpoint={run_dir}")
    assert code == 0, err
    assert f"4 of 4 checkpoint(s) of {run_dir} to evaluate (step_8, step_16, step_24, step_32)" in out
    assert "3 test batch(es) of 8" in out and "per checkpoint" in out  # the time estimate from the first batches
    assert done_order(out) == STEPS
    assert evaluated(run_dir) == STEPS
    logged = {r["step"]: r for r in metrics(run_dir) if "all/exact_accuracy" in r}
    for step in STEPS:  # each checkpoint evaluated with its own weights: training's numbers at that step
        rec = json.loads((run_dir / f"step_{step}_eval.json").read_text())
        assert rec["step"] == step and rec["seconds"] > 0 and "arc" not in rec
        for key in ("accuracy", "exact_accuracy", "lm_loss", "q_halt_accuracy"):
            assert rec["metrics"]["all"][key] == pytest.approx(logged[step][f"all/{key}"], rel=1e-6), (step, key)
        assert (run_dir / f"step_{step}_all_preds.0").is_file()
    assert not list(run_dir.glob(".*tmp*"))

    # The same numbers as the one-checkpoint form, which still evaluates (and rewrites) that one file.
    before = json.loads((run_dir / "step_16_eval.json").read_text())["metrics"]
    stamp = (run_dir / "step_16_eval.json").stat().st_mtime_ns
    code, out, _ = evaluate(capsys, f"checkpoint={run_dir / 'step_16'}")
    assert code == 0 and out.startswith("evaluating ") and "nothing new" not in out
    assert (run_dir / "step_16_eval.json").stat().st_mtime_ns != stamp
    assert json.loads((run_dir / "step_16_eval.json").read_text())["metrics"] == before

    # A re-run builds no model and writes nothing: it says there is nothing new.
    monkeypatch.setattr(ev, "Evaluator", lambda *a, **k: pytest.fail("a re-run must not build a model"))
    files = snapshot(run_dir)
    code, out, _ = evaluate(capsys, f"checkpoint={run_dir}")
    assert code == 0
    assert "nothing new to evaluate" in out and "step_8, step_16, step_24, step_32 already evaluated" in out
    assert snapshot(run_dir) == files


def test_a_deleted_result_is_the_only_one_evaluated_again(run_dir, capsys):
    assert evaluate(capsys, f"checkpoint={run_dir}")[0] == 0
    (run_dir / "step_16_eval.json").unlink()
    (run_dir / "step_24_eval.json").write_text('{"step": 24, "metr')  # cut short (not ours: ours are atomic)
    kept = {s: (run_dir / f"step_{s}_eval.json").stat().st_mtime_ns for s in (8, 32)}
    code, out, err = evaluate(capsys, f"checkpoint={run_dir}")
    assert code == 0, err
    assert "2 of 4 checkpoint(s)" in out and "(step_16, step_24)" in out and "2 already done" in out
    assert "each from earlier evaluations" in out  # the estimate comes from the recorded times
    assert done_order(out) == [16, 24]
    assert {s: (run_dir / f"step_{s}_eval.json").stat().st_mtime_ns for s in (8, 32)} == kept
    assert json.loads((run_dir / "step_24_eval.json").read_text())["step"] == 24


@pytest.mark.parametrize("spec,expected", [
    ("last", [32]), ("all", STEPS), ("16,32", [16, 32]), ("32,16,16", [16, 32]), ("step_24", [24]),
    ("[8,24]", [8, 24]), ("8", [8]), ("best", [16]),
])
def test_eval_steps_selects(run_dir, capsys, spec, expected):
    (run_dir / "best.json").write_text(json.dumps({"step": 16, "metric": "all/exact_accuracy", "value": 0.5}))
    code, out, err = evaluate(capsys, f"checkpoint={run_dir}", f"eval_steps={spec}")
    assert code == 0, err
    assert done_order(out) == expected and evaluated(run_dir) == expected
    assert f"{len(expected)} of {len(expected)} checkpoint(s)" in out


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("args,message", [
    (["eval_steps=40"], "eval_steps names step_40 but"),
    (["eval_steps=8,40"], "has no such checkpoint (it has step_8, step_16, step_24, step_32)"),
    (["eval_steps=banana"], "eval_steps='banana' is not understood"),
    (["eval_steps=8,,16"], "is not understood"),
    (["eval_steps=1.5"], "is not understood"),
    (["eval_steps=-8"], "is not understood"),
    (["eval_steps=true"], "is not understood"),
    (["eval_steps=best"], "no best.json in"),
])
def test_bad_eval_steps_one_line_nothing_written(run_dir, capsys, args, message):
    files = snapshot(run_dir)
    code, out, err = evaluate(capsys, f"checkpoint={run_dir}", *args)
    assert code == 2
    line = one_line(err)
    assert line.startswith("hrm-evaluate: error: ") and message in line, line
    assert snapshot(run_dir) == files


def test_bad_run_dirs_one_line_nothing_written(run_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "step_5").mkdir()  # a directory, not weights
    (empty / "step_x").write_text("")
    code, _, err = evaluate(capsys, f"checkpoint={empty}")
    assert code == 2 and "no step_N checkpoint in" in one_line(err)
    assert sorted(p.name for p in empty.iterdir()) == ["step_5", "step_x"]

    (run_dir / "best.json").write_text(json.dumps({"step": 12, "metric": "all/exact_accuracy", "value": 0.1}))
    files = snapshot(run_dir)
    code, _, err = evaluate(capsys, f"checkpoint={run_dir}", "eval_steps=best")
    assert code == 2 and "best.json names step_12 but" in one_line(err)
    (run_dir / "best.json").write_text("{not json")
    code, _, err = evaluate(capsys, f"checkpoint={run_dir}", "eval_steps=best")
    assert code == 2 and "has no readable \"step\"" in one_line(err)
    code, _, err = evaluate(capsys, f"checkpoint={run_dir / 'step_8'}", "eval_steps=last")
    assert code == 2 and f"pass checkpoint={run_dir}" in one_line(err)
    code, _, err = evaluate(capsys, f"checkpoint={run_dir}", "arc_vote=true", "eval_save_outputs=[logits]")
    assert code == 2 and "arc_vote=true needs inputs, puzzle_identifiers, q_halt_logits" in one_line(err)
    code, _, err = evaluate(capsys, f"checkpoint={tmp_path / 'nope'}")
    assert code == 2 and "not found: pass a run directory or one of its step_N files" in one_line(err)
    files["best.json"] = (run_dir / "best.json").stat().st_mtime_ns
    assert snapshot(run_dir) == files
    (run_dir / "all_config.yaml").unlink()
    code, _, err = evaluate(capsys, f"checkpoint={run_dir}")
    assert code == 2 and "all_config.yaml not found" in one_line(err)
    assert not list(run_dir.glob("*_eval.json"))


def test_sigterm_midway_then_rerun_continues(run_dir, data, tmp_path):
    """Killed during the second checkpoint: the first result stays, nothing half-written; the same command
    evaluates the other three. A bigger test set (same vocab and identifiers) makes each checkpoint last ~1 s."""
    big = make_dataset(tmp_path / "big", n_test=640)
    cmd = [sys.executable, "-m", "hrm.evaluate", f"checkpoint={run_dir}", f"data_path={big}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    deadline = time.time() + 120
    while time.time() < deadline and not (run_dir / "step_8_eval.json").exists() and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == ev.EXIT_INTERRUPTED, out[-2000:] + err[-2000:]
    assert "SIGTERM: stopped with 1 of 4 done" in out and "remaining 3 (step_16, step_24, step_32)" in out
    assert evaluated(run_dir) == [8]
    assert not list(run_dir.glob(".*tmp*"))
    res = run(cmd + ["eval_max_batches=2"])
    assert res.returncode == 0, res.stderr[-2000:]
    assert "3 of 4 checkpoint(s)" in res.stdout and done_order(res.stdout) == [16, 24, 32]
    assert evaluated(run_dir) == STEPS


# --- ARC: a vote per checkpoint ----------------------------------------------------------------------------

ARC_TINY = ["arch.hidden_size=16", "arch.num_heads=2", "arch.H_layers=1", "arch.L_layers=1", "arch.H_cycles=1",
            "arch.L_cycles=1", "arch.halt_max_steps=2", "arch.forward_dtype=float32", "global_batch_size=16",
            "wandb_mode=disabled", "epochs=2", "eval_interval=1", "eval_max_batches=1"]


@pytest.fixture(scope="module")
def arc_run(raw_data, tmp_path_factory) -> tuple[Path, Path]:
    from test_arc_data import small_raw

    from hrm.data import arc

    tmp = tmp_path_factory.mktemp("arc")
    dataset = arc.build_arc([small_raw(raw_data, tmp / "raw" / "data")], tmp / "ds", num_aug=2, seed=0, workers=1,
                            quiet=True)
    run_dir = tmp / "run"
    res = run([sys.executable, "-m", "hrm.train", f"data_path={dataset}", f"checkpoint_path={run_dir}", *ARC_TINY])
    assert res.returncode == 0, res.stderr[-3000:]
    assert {"step_1", "step_2"} <= {p.name for p in run_dir.iterdir()}
    return dataset, run_dir


def test_arc_vote_per_checkpoint(arc_run, capsys):
    from hrm.arc_vote import vote

    dataset, run_dir = arc_run
    code, out, err = evaluate(capsys, f"checkpoint={run_dir}", "arc_vote=true", "eval_max_batches=null")
    assert code == 0, err
    assert done_order(out) == [1, 2] and "step_2 ARC pass@1 " in out
    for step in (1, 2):
        rec = json.loads((run_dir / f"step_{step}_eval.json").read_text())
        summary = json.loads((run_dir / f"step_{step}_arc_vote.json").read_text())["summary"]
        assert summary["tasks"] == 4 and summary["rows"] == 18  # every test row voted (18 = 6 inputs x 3)
        again = vote(run_dir / f"step_{step}", dataset)
        for k in ("pass@1", "pass@2", "pass@10"):
            assert rec["arc"][k] == summary[k] == again[k]
        assert rec["arc"]["tasks"] == 4 and rec["arc"]["correct"] == again["correct"]

    # Killed between the evaluation and the vote: the re-run votes from the saved predictions, no new evaluation.
    rec = json.loads((run_dir / "step_2_eval.json").read_text())
    del rec["arc"]
    (run_dir / "step_2_eval.json").write_text(json.dumps(rec))
    (run_dir / "step_2_arc_vote.json").unlink()
    preds = (run_dir / "step_2_all_preds.0").stat().st_mtime_ns
    code, out, err = evaluate(capsys, f"checkpoint={run_dir}", "arc_vote=true", "eval_max_batches=null")
    assert code == 0, err
    assert "0 of 2 checkpoint(s)" in out and "1 to vote from saved predictions" in out
    assert (run_dir / "step_2_all_preds.0").stat().st_mtime_ns == preds
    new = json.loads((run_dir / "step_2_eval.json").read_text())
    assert new["metrics"] == rec["metrics"] and new["arc"]["tasks"] == 4
    assert (run_dir / "step_2_arc_vote.json").is_file()
    code, out, _ = evaluate(capsys, f"checkpoint={run_dir}", "arc_vote=true")
    assert code == 0 and "step_1, step_2 already evaluated and voted" in out
