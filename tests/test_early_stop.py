"""Early stopping (issue 13): off by default; patience on an evaluation metric; train exact accuracy held for a
number of steps. best.json is written either way. A stop exits 0 with status `stopped` and its reason in one
line; a resumed run keeps its best; bad settings are refused in one line before anything is computed.
(best.json of a run without early stopping: tests/test_train.py::test_run_directory_contents_and_falling_loss.)"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from test_train import assert_same_weights, make_dataset, metrics, run, train_cmd

from hrm.config import config_dir
from hrm.train import EarlyStop, train

ES = ["epochs=40", "eval_interval=2"]  # 8 steps an epoch: an evaluation every 16 steps, 320 steps in all
PATIENCE = "early_stop.patience=3"
NO_EVERY_EVAL = "checkpoint_every_eval=false"  # so that patience keeps the best evaluation's weights itself
REASON = "early_stop: no improvement of all/exact_accuracy for 3 evaluations"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "toy")


def evals(run_dir: Path, metric: str = "all/exact_accuracy") -> list[tuple[int, float]]:
    return [(r["step"], r[metric]) for r in metrics(run_dir) if metric in r]


def first_best(rows: list[tuple[int, float]]) -> tuple[int, float]:
    """The earliest evaluation with the best value: later equal values are no improvement."""
    best = rows[0]
    for step, value in rows[1:]:
        if value > best[1]:
            best = (step, value)
    return best


def status(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


def weight_files(run_dir: Path) -> set[str]:
    return {p.name for p in run_dir.iterdir() if re.fullmatch(r"step_\d+", p.name)}


def best_json(run_dir: Path) -> dict:
    return json.loads((run_dir / "best.json").read_text())


@pytest.fixture(scope="module")
def patience_run(data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "patience"
    res = run(train_cmd(data, run_dir, *ES, PATIENCE, NO_EVERY_EVAL))
    assert res.returncode == 0, res.stderr[-3000:]
    return run_dir, res


def test_patience_stops_and_best_json_agrees_with_metrics(patience_run):
    run_dir, res = patience_run
    rows = evals(run_dir)
    best_step, best_value = first_best(rows)
    steps = [s for s, _ in rows]
    stop_step = steps[steps.index(best_step) + 3]  # three evaluations without improvement after the best
    assert steps[-1] == stop_step < 320, rows
    st = status(run_dir)
    assert (st["state"], st["step"], st["reason"]) == ("stopped", stop_step, REASON)
    assert best_json(run_dir) == {"step": best_step, "metric": "all/exact_accuracy", "value": best_value,
                                  "higher_is_better": True, "checkpoint": f"step_{best_step}"}
    improvements = [s for s, v in rows if v > max([u for t, u in rows if t < s], default=-1.0)]
    assert len(improvements) > 2 and improvements[-1] == best_step  # earlier bests' weights were saved, then dropped
    assert weight_files(run_dir) == {f"step_{best_step}", f"step_{stop_step}"}
    assert [r["step"] for r in metrics(run_dir) if "train/lm_loss" in r] == list(range(1, stop_step + 1))
    said = [line for line in res.stdout.splitlines() if "stopped early" in line]
    assert said == [f"stopped early at step {stop_step}/320: no improvement of all/exact_accuracy for 3 "
                    f"evaluations; best all/exact_accuracy {best_value:.4f} at step {best_step} (best.json)"]


def test_rerun_of_a_stopped_run_stays_stopped(patience_run, data):
    run_dir, _ = patience_run
    stop_step = status(run_dir)["step"]
    before, rows = (run_dir / f"step_{stop_step}").read_bytes(), len(metrics(run_dir))
    res = run(train_cmd(data, run_dir, *ES, PATIENCE, NO_EVERY_EVAL))
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"stopped early at step {stop_step}/320" in res.stdout
    assert (run_dir / f"step_{stop_step}").read_bytes() == before and len(metrics(run_dir)) == rows
    assert (status(run_dir)["state"], status(run_dir)["reason"]) == ("stopped", REASON)


def test_resumed_run_keeps_its_best(patience_run, data, tmp_path):
    """Cut after the best evaluation and before the stop: a resumed run that forgot its best would take the
    next evaluation as best and stop later."""
    straight, _ = patience_run
    steps = [s for s, _ in evals(straight)]
    best_step = best_json(straight)["step"]
    cut = steps[steps.index(best_step) + 1]
    run_dir = tmp_path / "staged"
    res = run(train_cmd(data, run_dir, *ES, PATIENCE, NO_EVERY_EVAL, f"max_steps={cut}"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert (status(run_dir)["state"], status(run_dir)["reason"]) == ("stopped", f"max_steps={cut}")
    assert best_json(run_dir)["step"] == best_step
    res = run(train_cmd(data, run_dir, *ES, PATIENCE, NO_EVERY_EVAL))
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resumed at step {cut}" in res.stdout
    assert best_json(run_dir) == best_json(straight)
    assert status(run_dir)["step"] == status(straight)["step"] and status(run_dir)["reason"] == REASON
    assert evals(run_dir) == evals(straight)
    assert_same_weights(straight / f"step_{status(straight)['step']}", run_dir / f"step_{status(run_dir)['step']}")


def test_train_exact_stops_once_held(data, tmp_path):
    """Also: without a checkpoint per evaluation, patience keeps the best evaluation's weights (and only them)."""
    run_dir = tmp_path / "exact"
    res = run(train_cmd(data, run_dir, *ES, "early_stop.train_exact=0.9", "early_stop.train_exact_steps=5",
                        "early_stop.patience=10", "checkpoint_every_eval=false"))
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [r for r in metrics(run_dir) if "train/lm_loss" in r]
    above, expected = 0, None
    for r in rows:  # the rule, applied to what was logged: steps where nothing halted do not count
        if r["train/count"] > 0:
            above = above + 1 if r["train/exact_accuracy"] >= 0.9 else 0
        if above >= 5:
            expected = r["step"]
            break
    assert expected is not None and rows[-1]["step"] == expected < 320
    st = status(run_dir)
    assert (st["state"], st["step"]) == ("stopped", expected)
    assert st["reason"] == "early_stop: train/exact_accuracy >= 0.9 for 5 steps"
    assert evals(run_dir)[-1][0] == expected  # evaluated and saved where it stopped, even mid-iteration
    best_step = first_best(evals(run_dir))[0]
    assert best_json(run_dir)["checkpoint"] == f"step_{best_step}"
    assert weight_files(run_dir) == {f"step_{best_step}", f"step_{expected}"}
    assert f"stopped early at step {expected}/320: train/exact_accuracy >= 0.9 for 5 steps" in res.stdout


def _stand_in(tmp_path, **changes) -> EarlyStop:
    settings = {"metric": "all/exact_accuracy", "patience": None, "train_exact": 0.9, "train_exact_steps": 3}
    return EarlyStop({**settings, **changes}, tmp_path, keep_best_weights=False)


def test_train_exact_counting_rule(tmp_path):
    """The class the training loop calls each step: count > 0 steps only; a counted step below resets."""
    es = _stand_in(tmp_path)
    seq = [(1, 0.95), (0, 0.0), (1, 1.0), (0, 0.0), (1, 0.5), (1, 0.9), (1, 0.99), (0, 0.0), (1, 0.93)]
    said = [es.observe_train({"train/count": c, "train/exact_accuracy": x}) for c, x in seq]
    assert said == [False] * 8 + [True]
    assert es.observe_train(None) is False  # ranks other than 0 pass None: only rank 0 proposes
    assert _stand_in(tmp_path, train_exact=None).observe_train({"train/count": 1, "train/exact_accuracy": 1.0}) \
        is False
    saved = es.state_dict()
    again = _stand_in(tmp_path)
    again.load_state_dict(saved)  # a resumed run that had stopped on train_exact stays stopped
    assert again.reason == "early_stop: train/exact_accuracy >= 0.9 for 3 steps"
    other = _stand_in(tmp_path, train_exact=0.99)
    other.load_state_dict(saved)  # another threshold: the run of steps starts over, training goes on
    assert (other.above, other.reason) == (0, None)


def test_patience_state_and_metric_change(tmp_path):
    es = _stand_in(tmp_path, patience=2, train_exact=None)
    for step, v in ((16, 0.5), (32, 0.7), (48, 0.7), (64, float("nan"))):
        es.observe_eval(step, {"all": {"exact_accuracy": v}})
    assert es.best == {"step": 32, "value": 0.7, "extra": False} and es.patience_exhausted()
    resumed = _stand_in(tmp_path, patience=2, train_exact=None)
    resumed.load_state_dict(es.state_dict())
    assert resumed.best == es.best and resumed.reason == "early_stop: no improvement of all/exact_accuracy for 2 " \
                                                         "evaluations"
    patient = _stand_in(tmp_path, patience=5, train_exact=None)
    patient.load_state_dict(es.state_dict())  # more patience on resume: it trains on, best kept
    assert patient.best == es.best and patient.reason is None
    loss = _stand_in(tmp_path, metric="all/lm_loss", patience=2, train_exact=None)
    loss.load_state_dict(es.state_dict())  # another metric: its best starts over
    assert loss.best is None and loss.reason is None
    assert loss.observe_eval(16, {"all": {"lm_loss": 0.4}}) and not loss.observe_eval(32, {"all": {"lm_loss": 0.5}})


def _train_in_process(capsys, overrides: list[str]) -> tuple[int, str, str]:
    with initialize_config_dir(str(config_dir()), version_base=None):
        cfg = compose("cfg_pretrain", overrides=overrides)
    code = train(cfg)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("override,message", [
    ("early_stop.patience=-1", "early_stop.patience=-1 must be a whole number of evaluations >= 1, or null"),
    ("early_stop.patience=0", "early_stop.patience=0 must be a whole number of evaluations >= 1"),
    ("early_stop.metric=all/steps", "early_stop.metric='all/steps' is not an evaluation metric early stopping"),
    ("early_stop.metric=exact_accuracy", "use <set>/<name> with name one of exact_accuracy (higher is better)"),
    ("early_stop.metric=train/exact_accuracy", "the test split has no set 'train' (it has all): use e.g. "
                                               "early_stop.metric=all/exact_accuracy"),
    ("early_stop.train_exact=1.5", "early_stop.train_exact=1.5 must be a train exact accuracy in (0, 1]"),
    ("early_stop.train_exact=0", "early_stop.train_exact=0 must be a train exact accuracy in (0, 1]"),
    ("early_stop.train_exact_steps=0", "early_stop.train_exact_steps=0 must be a whole number of steps >= 1"),
])
def test_bad_settings_refused_in_one_line(data, tmp_path, capsys, override, message):
    run_dir = tmp_path / "never"
    code, out, err = _train_in_process(capsys, train_cmd(data, run_dir, *ES, override)[3:])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("hrm-train: error: ") and message in lines[0], err
    assert out == "" and not run_dir.exists()


def test_patience_without_a_test_split(data, tmp_path, capsys):
    no_test = tmp_path / "no_test"
    shutil.copytree(data, no_test)
    shutil.rmtree(no_test / "test")
    code, _, err = _train_in_process(capsys, train_cmd(no_test, tmp_path / "r", *ES, PATIENCE)[3:])
    assert code == 2 and err.strip() == (f"hrm-train: error: early_stop.patience=3 needs evaluations, but "
                                         f"{no_test / 'test'} does not exist: build the test split or set "
                                         f"early_stop.patience=null")


@pytest.mark.slow
def test_two_ranks_stop_at_the_same_step(data, tmp_path):
    """Rank 0 alone sees the metrics; the stop is all-reduced, so rank 1 stops with it (else: a hang)."""
    run_dir = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29637",
           *train_cmd(data, run_dir, *ES, "early_stop.patience=2", "early_stop.train_exact=0.9",
                      "early_stop.train_exact_steps=5")[1:]]
    res = run(cmd, timeout=240)
    assert res.returncode == 0, res.stderr[-4000:]
    st = status(run_dir)
    assert st["state"] == "stopped" and st["reason"].startswith("early_stop: ") and st["step"] < 320
    assert [r["step"] for r in metrics(run_dir) if "train/lm_loss" in r][-1] == st["step"]
    assert best_json(run_dir)["step"] == first_best(evals(run_dir))[0]
