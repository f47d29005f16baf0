"""`hrm-lm train`: the demo's loss falls; FSDP2 on 2 gloo ranks stopped by SIGTERM resumes to the same weights as
an uninterrupted run; a 2-rank checkpoint resumes on 1 rank; bad settings fail in one line."""

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
import torch

pytest.importorskip("tokenizers")
pytest.importorskip("hrm.lm.model")  # helper A's model (the trainer's only outside piece)

from hrm.lm import checkpoint  # noqa: E402
from hrm.lm.data import BuildArgs, build  # noqa: E402
from hrm.track import read_metrics  # noqa: E402

# hidden 64, 2 + 2 layers, 256 tokens per rank (2 ranks), context 128: seconds per run
TINY = ["arch.size=tiny", "arch.hidden_size=64", "arch.num_heads=2", "arch.n_layers=4", "arch.attn_backend=sdpa",
        "global_batch_size=512", "lr=3e-3", "lr_warmup_steps=5", "ema=0.9", "log_every=5", "wandb_mode=disabled",
        "device=cpu", "keep_checkpoints=0"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lmdata")
    return build(BuildArgs(source="synth:1200", out=root / "synth", train_tokenizer=400, epochs=2, context=128,
                           chunk_rows=600))


def train_cmd(data: Path, run_dir: Path, *extra: str, ranks: int = 1) -> list[str]:
    settings = dict(a.split("=", 1) for a in [*TINY, f"data_path={data}", f"checkpoint_path={run_dir}", *extra])
    args = ["-m", "hrm.lm.cli", "train", *(f"{k}={v}" for k, v in settings.items())]  # the last value of a key
    if ranks == 1:
        return [sys.executable, *args]
    return [sys.executable, "-m", "hrm.torchrun", "--standalone", f"--nproc-per-node={ranks}", *args]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)


def train_here(data: Path, run_dir: Path, *extra: str) -> int:
    """One process, in this one (no interpreter start-up): compose as `hrm-lm train` does, then train."""
    from hrm.lm.config import compose
    from hrm.lm.train import train

    settings = dict(a.split("=", 1) for a in [*TINY, f"data_path={data}", f"checkpoint_path={run_dir}", *extra])
    return train(compose([f"{k}={v}" for k, v in settings.items()]))


def weights(run_dir: Path, step: int, ema: bool) -> dict[str, torch.Tensor]:
    model, _, _ = checkpoint.load_for_inference(run_dir, step=step, use_ema=ema)
    return model.state_dict()


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_demo_loss_falls_and_the_run_directory_is_complete(data, tmp_path):
    run_dir = tmp_path / "demo"
    assert train_here(data, run_dir, "+experiment=hrmtext_demo", "max_steps=60", "log_every=10") == 0
    rows = [r for r in read_metrics(run_dir) if "train/lm_loss" in r]
    assert [r["step"] for r in rows] == [10, 20, 30, 40, 50, 60]
    assert rows[-1]["train/lm_loss"] < 0.7 * rows[0]["train/lm_loss"], [r["train/lm_loss"] for r in rows]
    assert all(r["perf/tokens_per_s"] > 0 and r["train/bp_steps"] in (2, 3, 4, 5) for r in rows)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "stopped" and status["step"] == 60
    for f in ("all_config.yaml", "lm_config.json", "tokenizer/tokenizer.json", "tokenizer_info.json"):
        assert (run_dir / f).is_file(), f
    assert checkpoint.latest_step(run_dir) == 60
    ema, raw = weights(run_dir, 60, True), weights(run_dir, 60, False)
    assert any(not torch.equal(ema[k], raw[k]) for k in raw)  # the EMA is its own set of weights


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    res = run(train_cmd(data, run_dir, "max_steps=40", "checkpoint_every_steps=20", ranks=2))
    assert res.returncode == 0, res.stderr[-3000:]
    return run_dir


def test_fsdp2_sigterm_then_resume_gives_identical_weights(data, straight, tmp_path):
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(data, run_dir, "max_steps=40", "checkpoint_every_steps=20", ranks=2),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if len(read_metrics(run_dir)) >= 2:  # num_params at step 0, then step 5
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # to torchrun, which forwards it to both ranks
    out, err = proc.communicate(timeout=120)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "interrupted" and 0 < status["step"] < 40, (status, err[-3000:])
    assert proc.returncode != 0 and checkpoint.latest_step(run_dir) == status["step"]
    res = run(train_cmd(data, run_dir, "max_steps=40", "checkpoint_every_steps=20", ranks=2))
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resumed at step {status['step']}" in res.stdout
    assert_same(weights(straight, 40, False), weights(run_dir, 40, False))
    assert_same(weights(straight, 40, True), weights(run_dir, 40, True))
    steps = [r["step"] for r in read_metrics(run_dir) if "train/lm_loss" in r]
    assert steps == list(range(5, 41, 5))  # each window once, despite the kill


def test_two_rank_checkpoint_resumes_on_one_rank(data, straight, tmp_path, capsys):
    run_dir = tmp_path / "one"
    shutil.copytree(straight, run_dir)
    shutil.rmtree(run_dir / "step_40")  # back to the state at step 20 (latest.json now names a missing step)
    assert train_here(data, run_dir, "max_steps=30") == 0
    out = capsys.readouterr().out
    assert "resumed at step 20" in out and "saved on 2 rank(s), now 1" in out
    before = json.loads((run_dir / "step_20" / checkpoint.STATE_FILE).read_text())
    after = json.loads((run_dir / "step_30" / checkpoint.STATE_FILE).read_text())
    assert after["world_size"] == 1 and before["world_size"] == 2
    assert (after["position"]["epoch"], after["position"]["cursor"]) > (before["position"]["epoch"],
                                                                       before["position"]["cursor"])
    w20, w30 = weights(run_dir, 20, False), weights(straight, 20, False)
    assert_same(w20, w30)  # the copy's step 20 is the 2-rank run's
    losses = [r["train/lm_loss"] for r in read_metrics(run_dir) if "train/lm_loss" in r and r["step"] > 20]
    assert len(losses) == 2 and all(0 < v < 10 for v in losses)


def test_activation_checkpointing_changes_memory_not_the_weights(data, tmp_path):
    for name, ac in (("plain", "false"), ("ac", "true")):
        assert train_here(data, tmp_path / name, "max_steps=6", f"activation_checkpointing={ac}") == 0
    assert_same(weights(tmp_path / "plain", 6, False), weights(tmp_path / "ac", 6, False))


def test_bad_settings_fail_in_one_line_before_training(data, tmp_path, capsys):
    for setting, says in [("global_batch_size=100", "fewer than the data's context 128"),
                          ("arch.size=huge", "arch.size='huge' must be one of tiny"),
                          (f"data_path={tmp_path / 'none'}", "fix: hrm-lm data")]:
        assert train_here(data, tmp_path / "bad", setting) == 2
        err = capsys.readouterr().err
        assert says in err and err.startswith("hrm-lm train: error: ") and err.count("\n") == 1, err
        assert not list((tmp_path / "bad").glob("step_*"))
