"""hrm-train / hrm-evaluate end to end on CPU: loss falls, runs resume to identical weights, bad input
gets one line, evaluation reproduces training's numbers, reference-format checkpoints load."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from hrm.data.format import DatasetMetadata, write_split

TINY = ["arch.hidden_size=32", "arch.num_heads=2", "arch.H_layers=1", "arch.L_layers=1", "arch.halt_max_steps=3",
        "arch.forward_dtype=float32", "global_batch_size=8", "lr=1e-3", "puzzle_emb_lr=1e-2", "lr_warmup_steps=5",
        "wandb_mode=disabled", "seed=3"]


def make_dataset(root: Path, vocab: int = 6, seq_len: int = 12, n_train: int = 64, n_test: int = 20) -> Path:
    """A learnable toy task: the label is the input shifted by one token value (mod vocab, skipping PAD)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        inputs = rng.integers(1, vocab, size=(n, seq_len), dtype=np.uint8)
        labels = (inputs % (vocab - 1) + 1).astype(np.uint8)
        meta = DatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=vocab, seq_len=seq_len,
                               num_puzzle_identifiers=3, total_groups=n, mean_puzzle_examples=1.0, sets=["all"])
        write_split(root / split, meta, {
            "inputs": inputs, "labels": labels,
            "puzzle_identifiers": rng.integers(1, 3, size=n).astype(np.int32),
            "puzzle_indices": np.arange(n + 1, dtype=np.int32), "group_indices": np.arange(n + 1, dtype=np.int32)})
    (root / "identifiers.json").write_text(json.dumps(["<blank>", "a", "b"]))
    return root


def train_cmd(data: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "hrm.train", f"data_path={data}", f"checkpoint_path={run}", *TINY, *extra]


def run(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "toy")


@pytest.fixture(scope="module")
def straight_run(data, tmp_path_factory) -> Path:
    """40 epochs x 8 batches = 320 steps, evaluated every 20 epochs."""
    run_dir = tmp_path_factory.mktemp("runs") / "straight"
    res = run(train_cmd(data, run_dir, "epochs=40", "eval_interval=20"))
    assert res.returncode == 0, res.stderr[-3000:]
    return run_dir


def test_run_directory_contents_and_falling_loss(straight_run):
    names = {p.name for p in straight_run.iterdir()}
    assert {"all_config.yaml", "metrics.jsonl", "status.json", "step_160", "step_320", "latest_state.json"} <= names
    status = json.loads((straight_run / "status.json").read_text())
    assert status["state"] == "finished" and status["step"] == 320 == status["total_steps"]
    rows = [r for r in metrics(straight_run) if "train/lm_loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 321))
    first = np.mean([r["train/lm_loss"] for r in rows[:20]])
    last = np.mean([r["train/lm_loss"] for r in rows[-20:]])
    assert last < 0.7 * first, (first, last)
    evals = [r for r in metrics(straight_run) if "all/exact_accuracy" in r]
    assert [r["step"] for r in evals] == [160, 320]
    assert rows[0]["train/lr"] == pytest.approx(1e-3 / 5)  # warmup: first update uses base_lr / W
    # early stopping is off by default, best.json is written anyway: the best evaluation by all/exact_accuracy
    best = max(evals, key=lambda r: (r["all/exact_accuracy"], -r["step"]))
    assert json.loads((straight_run / "best.json").read_text()) == {
        "step": best["step"], "metric": "all/exact_accuracy", "value": best["all/exact_accuracy"],
        "higher_is_better": True, "checkpoint": f"step_{best['step']}"}


def test_rerun_of_finished_run_does_nothing(straight_run, data):
    before = (straight_run / "step_320").read_bytes()
    res = run(train_cmd(data, straight_run, "epochs=40", "eval_interval=20"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert (straight_run / "step_320").read_bytes() == before


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_sigterm_then_resume_gives_identical_weights(straight_run, data, tmp_path):
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(data, run_dir, "epochs=40", "eval_interval=20"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        mfile = run_dir / "metrics.jsonl"
        if mfile.exists() and len(mfile.read_text().splitlines()) > 40:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err[-3000:]
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "interrupted" and 0 < status["step"] < 320
    res = run(train_cmd(data, run_dir, "epochs=40", "eval_interval=20"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed at step" in res.stdout
    assert_same_weights(straight_run / "step_320", run_dir / "step_320")
    # metrics.jsonl has each step once, in order, despite the kill
    steps = [r["step"] for r in metrics(run_dir) if "train/lm_loss" in r]
    assert steps == list(range(1, 321))


def test_max_steps_then_continue_matches_straight_run(straight_run, data, tmp_path):
    run_dir = tmp_path / "staged"
    res = run(train_cmd(data, run_dir, "epochs=40", "eval_interval=20", "max_steps=100"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((run_dir / "status.json").read_text())["step"] == 100
    res = run(train_cmd(data, run_dir, "epochs=40", "eval_interval=20"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert_same_weights(straight_run / "step_320", run_dir / "step_320")


def test_resume_with_other_settings_is_refused(straight_run, data):
    res = run(train_cmd(data, straight_run, "epochs=40", "eval_interval=20", "lr=5e-4"))
    assert res.returncode == 2
    assert "holds a run with other settings" in res.stderr and "lr" in res.stderr


@pytest.mark.parametrize("override,message", [
    ("data_path=/nonexistent/data", "does not exist"),
    ("eval_interval=7", "not divisible by eval_interval"),
    ("arch.attn_backend=flash9", "arch.attn_backend='flash9' must be one of auto, fa3, fa2, sdpa"),
    ("arch.forward_dtype=float8", "arch.forward_dtype"),
])
def test_bad_input_one_line_and_nothing_written(data, tmp_path, override, message):
    run_dir = tmp_path / "bad"
    res = run(train_cmd(data, run_dir, "epochs=40", "eval_interval=20", override))
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert not run_dir.exists()


def test_malformed_dataset_is_reported(tmp_path):
    data = make_dataset(tmp_path / "broken")
    (data / "train" / "all__labels.npy").write_bytes(b"not numpy")
    res = run(train_cmd(data, tmp_path / "r", "epochs=4", "eval_interval=2"))
    assert res.returncode == 2 and "all__labels.npy" in res.stderr


def test_evaluate_reproduces_training_eval(straight_run):
    res = run([sys.executable, "-m", "hrm.evaluate", f"checkpoint={straight_run / 'step_320'}"])
    assert res.returncode == 0, res.stderr[-3000:]
    preds = torch.load(straight_run / "step_320_all_preds.0", weights_only=True)
    assert set(preds) == {"inputs", "labels", "puzzle_identifiers", "logits", "q_halt_logits", "q_continue_logits"}
    assert preds["logits"].shape == (24, 12, 6)  # 20 test rows padded to 3 batches of 8
    saved = json.loads((straight_run / "step_320_eval.json").read_text())["metrics"]["all"]
    logged = [r for r in metrics(straight_run) if r["step"] == 320 and "all/exact_accuracy" in r][-1]
    for key in ("accuracy", "exact_accuracy", "lm_loss", "steps", "q_halt_accuracy"):
        assert saved[key] == pytest.approx(logged[f"all/{key}"], rel=1e-6), key
    assert saved["steps"] == pytest.approx(3.0)  # eval always runs halt_max_steps segments


def test_reference_format_checkpoint_loads(straight_run, data, tmp_path):
    """A run directory as the reference writes it: `_orig_mod.` keys and a config with only its keys."""
    ref_dir = tmp_path / "reference_run"
    ref_dir.mkdir()
    sd = _state(straight_run / "step_320")
    torch.save({f"_orig_mod.{k}": v for k, v in sd.items()}, ref_dir / "step_320")
    ours = yaml.safe_load((straight_run / "all_config.yaml").read_text())
    ref_keys = ["data_path", "global_batch_size", "epochs", "eval_interval", "checkpoint_every_eval", "lr",
                "lr_min_ratio", "lr_warmup_steps", "weight_decay", "beta1", "beta2", "puzzle_emb_lr",
                "puzzle_emb_weight_decay", "seed", "project_name", "run_name", "checkpoint_path", "eval_save_outputs"]
    arch_keys = ["name", "loss", "halt_exploration_prob", "halt_max_steps", "H_cycles", "L_cycles", "H_layers",
                 "L_layers", "hidden_size", "num_heads", "expansion", "puzzle_emb_ndim", "pos_encodings"]
    ref_cfg = {k: ours[k] for k in ref_keys}
    ref_cfg["arch"] = {k: ours["arch"][k] for k in arch_keys}
    ref_cfg["arch"]["forward_dtype"] = "float32"  # the reference's class default is bf16; keep CPU tolerance tight
    (ref_dir / "all_config.yaml").write_text(yaml.safe_dump(ref_cfg))
    res = run([sys.executable, "-m", "hrm.evaluate", f"checkpoint={ref_dir / 'step_320'}"])
    assert res.returncode == 0, res.stderr[-3000:]
    if not (straight_run / "step_320_all_preds.0").exists():
        run([sys.executable, "-m", "hrm.evaluate", f"checkpoint={straight_run / 'step_320'}"])
    a = torch.load(ref_dir / "step_320_all_preds.0", weights_only=True)
    b = torch.load(straight_run / "step_320_all_preds.0", weights_only=True)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_checkpoint_that_does_not_fit_the_data(straight_run, tmp_path):
    other = make_dataset(tmp_path / "vocab9", vocab=9)
    res = run([sys.executable, "-m", "hrm.evaluate", f"checkpoint={straight_run / 'step_320'}", f"data_path={other}"])
    assert res.returncode == 2
    assert "vocab_size" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_wandb_offline_run_is_recorded(data, tmp_path):
    run_dir = tmp_path / "wb"
    cmd = [c for c in train_cmd(data, run_dir, "epochs=2", "eval_interval=1") if c != "wandb_mode=disabled"]
    res = run(cmd + ["wandb_mode=offline"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "W&B offline" in res.stdout
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    # wandb's offline log is a protobuf record stream: our metric names are stored in it verbatim
    log = next(offline[0].glob("run-*.wandb")).read_bytes()
    for key in (b"train/lm_loss", b"train/exact_accuracy", b"num_params", b"exact_accuracy", b"q_halt_accuracy"):
        assert key in log, key


@pytest.mark.slow
def test_torchrun_two_ranks_on_cpu(data, tmp_path):
    run_dir = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29631",
           "-m", "hrm.train", f"data_path={data}", f"checkpoint_path={run_dir}", *TINY, "epochs=4", "eval_interval=2"]
    res = run(cmd)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "x2" in res.stdout
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "finished" and status["step"] == 32
    evals = [r for r in metrics(run_dir) if "all/count" in r]
    assert len(evals) == 2


@pytest.mark.parametrize("override,message", [
    ("arch.grad_mode=backprop", "arch.grad_mode='backprop' must be one of one_step, full, sqrt"),
    ("arch.grad_window=99", "grad_window"),
])
def test_bad_gradient_settings_one_line(data, tmp_path, override, message):
    res = run(train_cmd(data, tmp_path / "g", "epochs=4", "eval_interval=2", "arch.grad_mode=full", override)
              if "window" in override else train_cmd(data, tmp_path / "g", "epochs=4", "eval_interval=2", override))
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert not (tmp_path / "g").exists()


def test_memory_limit_below_one_application_is_refused(data, tmp_path):
    res = run(train_cmd(data, tmp_path / "m", "epochs=4", "eval_interval=2", "arch.grad_mode=sqrt",
                        "arch.memory_limit_mb=0.0001"))
    assert res.returncode == 2, res.stderr[-2000:]
    assert len(res.stderr.strip().splitlines()) == 1 and "memory" in res.stderr
    assert not (tmp_path / "m").exists()


def reference_copy(data: Path, root: Path, dtype=np.int64) -> Path:
    """`data` rewritten the way the reference's augmented Sudoku builder leaves it: int64 inputs and labels
    (its digit relabelling promotes the dtype), np.save'd as they are, dataset.json and identifiers.json beside."""
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        for f in (data / split).glob("*.npy"):
            a = np.load(f)
            np.save(root / split / f.name, a.astype(dtype) if f.name.endswith(("inputs.npy", "labels.npy")) else a)
        (root / split / "dataset.json").write_text((data / split / "dataset.json").read_text())
    (root / "identifiers.json").write_text((data / "identifiers.json").read_text())
    return root


def test_reference_built_int64_dataset_trains_unchanged(straight_run, data, tmp_path):
    """The same examples as int64 (the reference's Sudoku builder) train exactly as our uint8 ones do."""
    ref = reference_copy(data, tmp_path / "ref")
    assert np.load(ref / "train" / "all__inputs.npy", mmap_mode="r").dtype == np.int64
    run_dir = tmp_path / "theirs"
    res = run(train_cmd(ref, run_dir, "epochs=40", "eval_interval=20", "max_steps=160"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((run_dir / "status.json").read_text())["step"] == 160
    assert_same_weights(straight_run / "step_160", run_dir / "step_160")


@pytest.mark.parametrize("split,field,value,problem", [
    ("train", "inputs", 6, "inputs hold token 6 >= vocab_size 6"),
    ("test", "labels", -3, "labels hold negative token -3"),
])  # non-integer dtypes: tests/test_loader.py::test_bad_tokens_and_dtypes_name_the_file
def test_tokens_outside_the_vocabulary_refused_before_the_model(data, tmp_path, split, field, value, problem):
    ref = reference_copy(data, tmp_path / "ref")
    path = ref / split / f"all__{field}.npy"
    a = np.load(path)
    a[3, 4] = value
    np.save(path, a)
    run_dir = tmp_path / "never"
    res = run(train_cmd(ref, run_dir, "epochs=2", "eval_interval=1"))
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert lines == [f"hrm-train: error: {path}: {problem}; rebuild the dataset" + (
        f", or fix vocab_size in {ref / split / 'dataset.json'} if it is wrong" if ">=" in problem else "")]
    assert not run_dir.exists() and res.stdout == ""
