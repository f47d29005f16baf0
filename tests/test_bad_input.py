"""Bad input and faults, as a careless or tired user makes them, across every command.

Each case of the table asserts: the exit code, at most 3 lines of output, no traceback, a message naming the
problem, no compute (no run directory, checkpoint or dataset made) and nothing left behind (the listing of the
working and data directories is the same before and after). Cases run in-process through the CLI's `main(argv)`
where it has one; a subset runs as real subprocesses (the paths where Hydra, torchrun or bash are involved).
Faults that need a run (truncated states, a crash after the run directory exists) have their own tests below.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from hrm.data.format import DatasetMetadata, write_split

REPO = Path(__file__).resolve().parents[1]
TINY = ["arch.hidden_size=32", "arch.num_heads=2", "arch.H_layers=1", "arch.L_layers=1", "arch.halt_max_steps=3",
        "arch.forward_dtype=float32", "global_batch_size=8", "lr=1e-3", "lr_warmup_steps=5", "wandb_mode=disabled",
        "epochs=4", "eval_interval=2"]


# --- fixtures: a small world of good and bad inputs ------------------------------------------------------------


def _split(root: Path, split: str, n: int, vocab: int = 6, seq_len: int = 12, bad_label: int | None = None) -> None:
    rng = np.random.default_rng(0)
    inputs = rng.integers(1, vocab, size=(n, seq_len), dtype=np.uint8)
    labels = (inputs % (vocab - 1) + 1).astype(np.uint8)
    meta = DatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=vocab, seq_len=seq_len,
                           num_puzzle_identifiers=3, total_groups=n, mean_puzzle_examples=1.0, sets=["all"])
    write_split(root / split, meta, {
        "inputs": inputs, "labels": labels, "puzzle_identifiers": rng.integers(1, 3, size=n).astype(np.int32),
        "puzzle_indices": np.arange(n + 1, dtype=np.int32), "group_indices": np.arange(n + 1, dtype=np.int32)})
    if bad_label is not None:  # written behind the writer's back, as a foreign builder might
        arr = np.load(root / split / "all__labels.npy")
        arr[n // 2, 3] = bad_label
        np.save(root / split / "all__labels.npy", arr)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("world")
    w = {"base": base, "work": base / "work", "data": base / "data"}
    w["work"].mkdir()
    toy = w["data"] / "toy"
    _split(toy, "train", 32)
    _split(toy, "test", 8)
    w["toy"] = toy
    _split(w["data"] / "bad_vocab", "train", 32, bad_label=77)
    _split(w["data"] / "bad_vocab", "test", 8)
    w["bad_vocab"] = w["data"] / "bad_vocab"
    _split(w["data"] / "no_test", "train", 32)
    w["no_test"] = w["data"] / "no_test"
    bad_json = w["data"] / "bad_json"
    _split(bad_json, "train", 32)
    _split(bad_json, "test", 8)
    (bad_json / "train" / "dataset.json").write_text('{"pad_id": 0, "vocab')
    w["bad_json"] = bad_json
    # a run directory for hrm-evaluate: its config, one truncated step file
    from omegaconf import OmegaConf

    from hrm.config import default_config

    run = w["data"] / "run"
    run.mkdir()
    cfg = default_config()
    cfg.data_path = str(toy)
    (run / "all_config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (run / "step_5").write_bytes(b"PK\x03\x04 cut short")
    w["run"] = run
    empty_run = w["data"] / "empty_run"
    empty_run.mkdir()
    (empty_run / "all_config.yaml").write_text(OmegaConf.to_yaml(cfg))
    w["empty_run"] = empty_run
    broken = w["data"] / "broken_cfg"
    broken.mkdir()
    (broken / "all_config.yaml").write_text("lr: [1e-4\n  :: nope")
    (broken / "step_2").write_bytes(b"x")
    w["broken_cfg"] = broken
    (w["data"] / "a_file").write_text("not a directory\n")
    w["a_file"] = w["data"] / "a_file"
    (w["data"] / "empty_dir").mkdir()
    w["empty_dir"] = w["data"] / "empty_dir"
    other = w["data"] / "other_files"
    other.mkdir()
    (other / "notes.txt").write_text("mine\n")
    w["other_files"] = other
    from hrm.data.sudoku import generate

    lm_run = w["data"] / "lm_run"  # what resolve_checkpoint looks at (no weights: nothing may load them)
    (lm_run / "step_4").mkdir(parents=True)
    (lm_run / "lm_config.json").write_text("{}")
    (lm_run / "step_4" / "train_state.json").write_text("{}")
    w["lm_run"] = lm_run
    generate(w["data"] / "sudoku_csv", 12, seed=0, test_count=4)
    w["sudoku_csv"] = w["data"] / "sudoku_csv"
    return w


def listing(*roots: Path) -> set[str]:
    out = set()
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                out.add(os.path.relpath(os.path.join(dirpath, name), root.parent))
    return out


# --- the table -----------------------------------------------------------------------------------------------


@dataclass
class Case:
    cmd: str  # train | evaluate | data | doctor | slurm | setup | lm
    args: list[str]
    message: str  # a part of the one error line
    code: int = 2
    subprocess: bool = False


def _cases() -> list[tuple[str, Case]]:
    T, R, E, D, H, S, L = "train", "train-run", "evaluate", "data", "doctor", "slurm", "lm"
    cases = {
        # hrm-train: the typed config, checked before Hydra starts
        "train-lr-not-a-number": Case(T, ["lr=abc"], "lr='abc' must be a number > 0"),
        "train-typo-key": Case(T, ["lrr=1e-3"], "did you mean lr=1e-3"),
        "train-typo-arch-key": Case(T, ["arch.hidden_sise=64"], "did you mean arch.hidden_size=64"),
        "train-plus-on-existing": Case(T, ["+lr=1e-3"], "'lr' is already in the config"),
        "train-plus-unknown": Case(T, ["+lrr=1e-3"], "unknown key 'lrr'; fix: did you mean lr="),
        "train-batch-zero": Case(T, ["global_batch_size=0"], "global_batch_size=0 must be a whole number >= 1"),
        "train-batch-text": Case(T, ["global_batch_size=abc"], "global_batch_size='abc'"),
        "train-batch-float": Case(T, ["global_batch_size=7.5"], "global_batch_size=7.5"),
        "train-eval-interval": Case(T, ["epochs=100", "eval_interval=7"], "not divisible by eval_interval=7"),
        "train-compile-word": Case(T, ["compile=maybe"], "compile='maybe' must be one of auto, true, false"),
        "train-device-word": Case(T, ["device=gpu"], "device='gpu' must be one of auto, cpu, cuda"),
        "train-max-steps-zero": Case(T, ["max_steps=0"], "max_steps=0"),
        "train-patience-zero": Case(T, ["early_stop.patience=0"], "early_stop.patience=0"),
        "train-metric-unknown": Case(T, ["early_stop.metric=loss"], "early_stop.metric='loss'"),
        "train-early-stop-typo": Case(T, ["early_stop.patiense=3"], "did you mean early_stop.patience=3"),
        "train-heads-do-not-divide": Case(T, ["arch.hidden_size=33", "arch.num_heads=2"],
                                          "not divisible by arch.num_heads"),
        "train-unknown-experiment": Case(T, ["+experiment=sudoku_dem"], "did you mean +experiment=sudoku_demo"),
        "train-sweep-bad-point": Case(T, ["-m", "lr=1e-4,abc"], "lr='abc'"),
        "train-bad-syntax": Case(T, ["lr=[1"], "bad override"),
        "train-loss-type": Case(T, ["arch.loss.loss_type=mse"], "arch.loss.loss_type='mse'"),
        "train-beta-range": Case(T, ["beta1=1.5"], "beta1=1.5 must be a number >= 0 and <= 1"),
        "train-wandb-mode": Case(T, ["wandb_mode=on"], "wandb_mode='on'"),
        "train-negative-warmup": Case(T, ["lr_warmup_steps=-5"], "lr_warmup_steps=-5"),
        "train-resources-gpus": Case(T, ["+experiment=sudoku_demo", "resources.gpus=abc"], "resources.gpus='abc'"),
        "train-resources-time": Case(T, ["+experiment=sudoku_demo", "resources.time=soon"], "not a Slurm time"),
        "train-slurm-key-given-to-train": Case(T, ["gpus=2"], "did you mean resources.gpus=2"),
        "train-save-output-typo": Case(T, ["eval_save_outputs=[logit]"], "did you mean logits?"),
        "train-save-outputs-not-a-list": Case(T, ["eval_save_outputs=logits"], "must be a list"),
        "train-unknown-arch": Case(T, ["arch=nope"], "unknown arch 'nope'"),
        "train-not-key-value": Case(T, ["lr"], "bad override"),
        "train-data-path-is-a-file": Case(R, ["data_path={a_file}"], "is a file, not a dataset directory"),
        # hrm-train: the data and the output path, before any model is built (real processes: Hydra runs)
        "train-no-dataset": Case(T, ["data_path={data}/nowhere"], "does not exist", subprocess=True),
        "train-token-outside-vocab": Case(R, ["data_path={bad_vocab}"], "token 77 >= vocab_size 6"),
        "train-patience-without-test": Case(R, ["data_path={no_test}", "early_stop.patience=2"], "needs evaluations"),
        "train-output-is-a-file": Case(R, ["data_path={toy}", "checkpoint_path={a_file}"], "is a file"),
        "train-output-under-a-file": Case(R, ["data_path={toy}", "checkpoint_path={a_file}/run"],
                                          "is not a directory"),
        "train-corrupt-dataset-json": Case(R, ["data_path={bad_json}"], "is not valid JSON"),
        "train-metric-set-unknown": Case(R, ["data_path={toy}", "early_stop.metric=hard/exact_accuracy"],
                                         "the test split has no set 'hard'"),
        "train-torchrun-batch-split": Case("torchrun", ["data_path={toy}", "global_batch_size=9"],
                                           "not divisible by the 2 ranks", subprocess=True),
        # hrm-evaluate
        "eval-no-checkpoint": Case(E, [], "missing checkpoint=PATH"),
        "eval-checkpoint-missing": Case(E, ["checkpoint={data}/nothing"], "not found"),
        "eval-not-key-value": Case(E, ["{run}"], "is not key=value"),
        "eval-steps-word": Case(E, ["checkpoint={run}", "eval_steps=banana"], "eval_steps='banana'"),
        "eval-arc-vote-word": Case(E, ["checkpoint={run}", "arc_vote=maybe"], "arc_vote='maybe'"),
        "eval-typo-key": Case(E, ["checkpoint={run}", "global_batch_sise=8"], "did you mean global_batch_size=8"),
        "eval-truncated-step": Case(E, ["checkpoint={run}/step_5"], "step_5 is truncated"),
        "eval-truncated-step-in-dir": Case(E, ["checkpoint={run}"], "step_5 is truncated"),
        "eval-batch-text": Case(E, ["checkpoint={run}", "global_batch_size=abc"], "global_batch_size='abc'"),
        "eval-no-step-files": Case(E, ["checkpoint={empty_run}"], "no step_N checkpoint"),
        "eval-no-best": Case(E, ["checkpoint={run}", "eval_steps=best"], "no best.json"),
        "eval-missing-step": Case(E, ["checkpoint={run}", "eval_steps=9"], "no such checkpoint"),
        "eval-no-config": Case(E, ["checkpoint={data}/empty_dir"], "no step_N checkpoint"),
        "eval-broken-config": Case(E, ["checkpoint={broken_cfg}"], "all_config.yaml is not readable"),
        "eval-device-word": Case(E, ["checkpoint={run}", "device=gpu"], "device='gpu' must be one of"),
        "eval-bad-syntax": Case(E, ["checkpoint={run}", "eval_save_outputs=[a"], "arguments not understood"),
        # hrm-data
        "data-source-missing": Case(D, ["build", "sudoku", "--source", "{data}/nowhere", "--output-dir", "{work}/s"],
                                    "nowhere"),
        "data-negative-aug": Case(D, ["build", "sudoku", "--source", "{sudoku_csv}", "--output-dir", "{work}/s",
                                      "--num-aug", "-1"], "--num-aug -1"),
        "data-subsample-zero": Case(D, ["build", "sudoku", "--source", "{sudoku_csv}", "--output-dir", "{work}/s",
                                        "--subsample-size", "0"], "--subsample-size"),
        "data-output-holds-other": Case(D, ["build", "sudoku", "--source", "{sudoku_csv}", "--output-dir",
                                            "{other_files}"], "not an hrm-data build"),
        "data-output-under-file": Case(D, ["build", "sudoku", "--source", "{sudoku_csv}", "--output-dir",
                                           "{a_file}/s"], "a_file"),
        "data-no-output-dir": Case(D, ["build", "sudoku", "--source", "{sudoku_csv}"], "--output-dir"),
        "data-aug-not-a-number": Case(D, ["build", "sudoku", "--output-dir", "{work}/s", "--num-aug", "many"],
                                      "invalid int value"),
        "data-check-missing": Case(D, ["check", "{data}/nowhere"], "nowhere"),
        "data-show-missing": Case(D, ["show", "{data}/nowhere"], "nowhere"),
        "data-generate-zero": Case(D, ["generate", "sudoku", "--count", "0", "--output-dir", "{work}/g"],
                                   "--count 0"),
        "data-maze-source-missing": Case(D, ["build", "maze", "--source", "{data}/nowhere", "--output-dir",
                                             "{work}/m"], "nowhere"),
        "data-unknown-kind": Case(D, ["build", "chess", "--output-dir", "{work}/c"], "invalid choice"),
        "data-view-missing": Case(D, ["view", "{data}/nowhere"], "build the dataset first"),
        "data-view-preds-missing": Case(D, ["view", "{toy}", "--preds", "{data}/nowhere", "--out", "{work}/v.html"],
                                        "no prediction files"),
        "data-logistics-source-missing": Case(D, ["build", "logistics", "--source", "{data}/nowhere",
                                                  "--output-dir", "{work}/l"], "is not a directory"),
        "data-logistics-grid": Case(D, ["generate", "logistics", "--out", "{work}/g", "--num-train", "5",
                                        "--num-test", "5", "--grid-size", "2"], "--grid-size 2 is out of range"),
        "data-logistics-no-trains": Case(D, ["generate", "logistics", "--out", "{work}/g", "--num-train", "0",
                                             "--num-test", "5"], "--num-train 0"),
        # hrm-doctor
        "doctor-lr-text": Case(H, ["config", "lr=abc"], "lr='abc'"),
        "doctor-typo-key": Case(H, ["config", "lrr=1"], "did you mean lr=1"),
        "doctor-unknown-experiment": Case(H, ["config", "+experiment=nope"], "unknown experiment 'nope'"),
        "doctor-gpus-zero": Case(H, ["config", "--gpus", "0"], "--gpus 0"),
        "doctor-batch-text": Case(H, ["config", "global_batch_size=abc"], "global_batch_size='abc'"),
        "doctor-memory-batch-text": Case(H, ["memory", "--batch", "abc"], "abc"),
        "doctor-unknown-command": Case(H, ["cure"], "invalid choice"),
        # hrm-slurm (cluster=local: no Slurm needed; nothing is submitted when the plan fails)
        "slurm-gpus-text": Case(S, ["preview", "+experiment=sudoku_demo", "cluster=local", "gpus=abc"],
                                "gpus=abc must be a whole number >= 0"),
        "slurm-nodes-zero": Case(S, ["preview", "+experiment=sudoku_demo", "cluster=local", "nodes=0"],
                                 "nodes=0 must be a whole number >= 1"),
        "slurm-typo-key": Case(S, ["preview", "+experiment=sudoku_demo", "cluster=local", "lrr=1e-3"],
                               "did you mean lr=1e-3"),
        "slurm-lr-text": Case(S, ["preview", "+experiment=sudoku_demo", "cluster=local", "lr=abc"], "lr='abc'"),
        "slurm-typo-slurm-key": Case(S, ["preview", "+experiment=sudoku_demo", "cluster=local", "gpu=2"],
                                     "did you mean gpus=2"),
        "slurm-unknown-experiment": Case(S, ["preview", "+experiment=nope", "cluster=local"],
                                         "unknown experiment 'nope'"),
        "slurm-unknown-cluster": Case(S, ["preview", "+experiment=sudoku_demo", "cluster=nowhere"],
                                      "unknown cluster 'nowhere'"),
        "slurm-not-key-value": Case(S, ["preview", "sudoku_demo"], "is not key=value"),
        "slurm-cpus-text": Case(S, ["preview", "+experiment=sudoku_demo", "cluster=local", "cpus_per_gpu=x"],
                                "cpus_per_gpu=x"),
        "slurm-bad-time": Case(S, ["preview", "+experiment=sudoku_demo", "cluster=local", "time=soon"], "soon"),
        "slurm-bad-launcher": Case(S, ["preview", "+experiment=sudoku_demo", "cluster=local", "launcher=mpi"],
                                   "launcher=mpi"),
        "slurm-qos-stage": Case(S, ["preview", "+experiment=sudoku_demo", "cluster=local", "qos.training=x"],
                                "no stage 'training'"),
        "slurm-mem-text": Case(S, ["preview", "+experiment=sudoku_demo", "cluster=local", "mem=lots"],
                               "mem=lots is not a Slurm memory size"),
        "slurm-time-zero": Case(S, ["preview", "+experiment=sudoku_demo", "cluster=local", "time=0"],
                                "time=0 is not a positive Slurm time"),
        "slurm-venv-missing": Case(S, ["preview", "+experiment=sudoku_demo", "cluster=local", "venv={data}/nowhere"],
                                   "is not a virtual environment"),
        "slurm-runs-dir-under-file": Case(S, ["preview", "+experiment=sudoku_demo", "cluster=local",
                                              "runs_dir={a_file}/runs"], "is not a writable directory"),
        "slurm-batch-does-not-split": Case(S, ["preview", "+experiment=sudoku_demo", "cluster=local", "gpus=2",
                                               "global_batch_size=33"], "not divisible by the 2 ranks"),
        "slurm-unknown-command": Case(S, ["previe"], "invalid choice"),
        "slurm-submit-gpus-text": Case(S, ["submit", "+experiment=sudoku_demo", "cluster=local", "gpus=abc"],
                                       "gpus=abc"),
        "slurm-collect-empty": Case(S, ["collect", "{data}/empty_dir", "--out", "{work}/results"], "no runs in"),
        "slurm-logs-nothing": Case(S, ["logs", "train"], "no pipelines recorded"),
        "slurm-status-unknown": Case(S, ["status", "no-such-pipeline"], "no pipeline 'no-such-pipeline'"),
        "slurm-requeues-text": Case(S, ["preview", "+experiment=sudoku_demo", "cluster=local", "max_requeues=x"],
                                    "max_requeues=x"),
        # hrm-lm (HRM-Text): configs/lm composed and checked before any data is read or directory made
        "lm-train-typo-key": Case(L, ["train", "+experiment=hrmtext_demo", "lrr=1e-3"], "did you mean lr=1e-3"),
        "lm-train-typo-arch-key": Case(L, ["train", "+experiment=hrmtext_demo", "arch.hidden_sise=64"],
                                       "did you mean arch.hidden_size=64"),
        "lm-train-unknown-experiment": Case(L, ["train", "+experiment=hrmtext_dem"],
                                            "did you mean +experiment=hrmtext_demo"),
        "lm-train-batch-text": Case(L, ["train", "+experiment=hrmtext_demo", "global_batch_size=abc"],
                                    "global_batch_size='abc' must be a whole number >= 1"),
        "lm-train-lr-text": Case(L, ["train", "+experiment=hrmtext_demo", "lr=abc"], "lr='abc' must be a number"),
        "lm-train-backend": Case(L, ["train", "+experiment=hrmtext_demo", "arch.attn_backend=fa4"],
                                 "arch.attn_backend='fa4' must be one of auto, fa3"),
        "lm-train-size": Case(L, ["train", "+experiment=hrmtext_demo", "arch.size=huge"], "arch.size='huge'"),
        "lm-train-ema-range": Case(L, ["train", "+experiment=hrmtext_demo", "ema=2"], "ema=2 must be a number"),
        "lm-train-no-data": Case(L, ["train", "+experiment=hrmtext_demo", "data_path={data}/nowhere",
                                     "checkpoint_path={work}/run"], "fix: hrm-lm data"),
        "lm-data-synth-count": Case(L, ["data", "--source", "synth:x", "--out", "{work}/lm"], "synth:5000"),
        "lm-data-no-source": Case(L, ["data", "--source", "{data}/nowhere", "--out", "{work}/lm",
                                      "--train-tokenizer", "512"], "does not exist"),
        "lm-data-no-tokenizer": Case(L, ["data", "--source", "synth:10", "--out", "{work}/lm"], "no tokenizer"),
        "lm-data-two-tokenizers": Case(L, ["data", "--source", "synth:10", "--out", "{work}/lm", "--tokenizer",
                                           "{a_file}", "--train-tokenizer", "512"], "both given"),
        "lm-data-epochs-zero": Case(L, ["data", "--source", "synth:10", "--out", "{work}/lm", "--train-tokenizer",
                                        "512", "--epochs", "0"], "--epochs 0"),
        "lm-eval-not-a-run": Case(L, ["eval", "{data}/empty_dir", "--tasks", "gsm8k"], "not an hrm-lm run"),
        "lm-eval-unknown-task": Case(L, ["eval", "{lm_run}", "--tasks", "gsm8kk"], "unknown lm-eval task(s) gsm8kk"),
        "lm-eval-include-path-missing": Case(L, ["eval", "{lm_run}", "--tasks", "mine", "--include-path",
                                                 "{data}/nowhere"], "is not a folder"),
        "lm-eval-missing-step": Case(L, ["eval", "{lm_run}", "--tasks", "gsm8k", "--step", "9"],
                                     "has no complete step_9; fix: one of the steps 4"),
        "lm-export-not-a-run": Case(L, ["export", "{data}/empty_dir", "{work}/hf"], "not an hrm-lm run"),
        "lm-unknown-command": Case(L, ["trian"], "unknown command 'trian'"),
        "lm-preview-typo-key": Case(S, ["preview", "+experiment=hrmtext_demo", "cluster=local", "lrr=1e-3"],
                                    "did you mean lr=1e-3"),
        "lm-preview-backend": Case(S, ["preview", "+experiment=hrmtext_L", "cluster=local", "arch.attn_backend=fa4"],
                                   "arch.attn_backend='fa4'"),
        # hrm_savio_setup.sh (over hrm-slurm; stderr holds the error and the script's own one-line epilogue)
        "setup-unknown-action": Case("setup", ["deploy"], "unknown action 'deploy'", code=1, subprocess=True),
        "setup-lr-text": Case("setup", ["train", "sudoku_demo", "--local", "lr=abc"], "lr='abc'", subprocess=True),
        "setup-gpus-text": Case("setup", ["train", "sudoku_demo", "--local", "gpus=abc"], "gpus=abc",
                                subprocess=True),
    }
    return list(cases.items())


CASES = _cases()


def _fill(args: list[str], world: dict[str, Path]) -> list[str]:
    return [a.format(**{k: str(v) for k, v in world.items()}) for a in args]


def _train_in_process(args: list[str], **patches) -> int:
    from hrm.config import compose_checked
    from hrm.train import train

    extra = [] if any(a.startswith("checkpoint_path=") for a in args) else [f"checkpoint_path={Path.cwd() / 'run'}"]
    return train(compose_checked([*TINY, *extra, *args]))


def _in_process(case: Case, args: list[str], capsys) -> tuple[int, str]:
    if case.cmd == "train":
        from hrm.train import main as train_main

        def entry(argv):
            train_main(argv)
            return 0
    elif case.cmd == "train-run":  # past the command-line checks: what train() finds in the data and paths
        entry = _train_in_process
    else:
        module = {"evaluate": "hrm.evaluate", "data": "hrm.data.cli", "doctor": "hrm.doctor",
                  "slurm": "slurm.cli", "lm": "hrm.lm.cli"}[case.cmd]
        entry = __import__(module, fromlist=["main"]).main
    try:
        code = entry(args)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _as_process(case: Case, args: list[str], world: dict[str, Path]) -> tuple[int, str, str]:
    env = {**os.environ, "HRM_SLURM_HOME": str(world["base"] / "slurm_home"), "WANDB_MODE": "disabled",
           "DISABLE_COMPILE": "1", "HRM_CLUSTER": "local"}
    env.pop("HRM_DEBUG", None)
    if case.cmd == "train":
        cmd = [sys.executable, "-m", "hrm.train", *TINY, f"checkpoint_path={world['work']}/run", *args]
        if any(a.startswith("checkpoint_path=") for a in args):
            cmd.remove(f"checkpoint_path={world['work']}/run")
    elif case.cmd == "torchrun":
        cmd = [sys.executable, "-m", "hrm.torchrun", "--nproc-per-node=2", "--master-port=29731", "-m", "hrm.train",
               *TINY, f"checkpoint_path={world['work']}/run", *args]
    else:  # setup
        env.update({"HRM_VENV": sys.prefix, "HRM_PYTHON": sys._base_executable})
        cmd = ["bash", str(REPO / "hrm_savio_setup.sh"), *args]
    r = subprocess.run(cmd, cwd=world["work"], env=env, capture_output=True, text=True, timeout=240)
    return r.returncode, r.stdout, r.stderr


@pytest.mark.parametrize("name,case", CASES, ids=[n for n, _ in CASES])
def test_bad_input(name, case, world, capsys, monkeypatch):
    monkeypatch.chdir(world["work"])
    monkeypatch.setenv("HRM_SLURM_HOME", str(world["base"] / "slurm_home"))
    monkeypatch.setenv("HRM_CLUSTER", "local")
    monkeypatch.delenv("HRM_DEBUG", raising=False)
    args = _fill(case.args, world)
    before = listing(world["work"], world["data"])
    if case.subprocess:
        code, out, err = _as_process(case, args, world)
        shown = err if case.cmd == "setup" else out + err  # the script's progress lines go to stdout
    else:
        code, shown = _in_process(case, args, capsys)
    lines = [line for line in shown.splitlines() if line.strip()]
    assert code == case.code, shown
    assert 1 <= len(lines) <= 3, shown
    assert "Traceback" not in shown, shown
    assert case.message in shown, shown
    assert any("error" in line or "usage" in line for line in lines), shown
    assert listing(world["work"], world["data"]) == before, "something was left behind"
    assert not (world["work"] / "run").exists()  # no run directory: nothing was computed


def test_table_covers_every_command_with_enough_cases():
    commands = {c.cmd for _, c in CASES}
    assert {"train", "evaluate", "data", "doctor", "slurm", "setup", "torchrun", "lm"} <= commands
    assert len(CASES) >= 60


# --- builds: signals, a full disk, a killed build's leftovers ------------------------------------------------


def _build_args(world, out: Path) -> list[str]:
    return ["build", "sudoku", "--source", str(world["sudoku_csv"]), "--output-dir", str(out), "--num-aug", "1"]


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c", "enospc"])
def test_interrupted_or_full_build_leaves_nothing(world, tmp_path, capsys, monkeypatch, how):
    from hrm.data import cli, sudoku

    real = sudoku.write_array

    def failing_write(path, array):
        if how == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
        elif how == "ctrl-c":
            raise KeyboardInterrupt
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(sudoku, "write_array", failing_write)
    handler = signal.getsignal(signal.SIGTERM)
    code = cli.main(_build_args(world, tmp_path / "s"))
    assert signal.getsignal(signal.SIGTERM) == handler  # the build's own handler is gone again
    shown = capsys.readouterr()
    lines = (shown.out + shown.err).strip().splitlines()
    assert code == (2 if how == "enospc" else 130) and len(lines) == 1, lines
    assert ("no space left" if how == "enospc" else "interrupted") in lines[0]
    assert list(tmp_path.iterdir()) == []  # no dataset, no hidden temp dir
    monkeypatch.setattr(sudoku, "write_array", real)
    assert cli.main(_build_args(world, tmp_path / "s")) == 0  # and the next build just works


def test_full_disk_is_refused_before_writing(world, tmp_path, capsys, monkeypatch):
    from hrm.data import cli, format

    monkeypatch.setattr(format.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 30, 10 << 30, 1 << 20))
    assert cli.main(_build_args(world, tmp_path / "s")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not enough disk space" in err[0] and "1 MB" not in err[0]
    assert list(tmp_path.iterdir()) == []


def test_preallocation_turns_a_full_disk_into_enospc(tmp_path, monkeypatch):
    from hrm.data import format

    path = tmp_path / "x.npy"
    np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(1000, 81))

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(format.os, "posix_fallocate", full)
    with pytest.raises(OSError) as e:
        format.preallocate(path)
    assert e.value.errno == errno.ENOSPC and str(path) in str(e.value)


def test_killed_build_leftover_is_removed_by_the_next_build(world, tmp_path, capsys):
    from hrm.data import cli

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    stale = tmp_path / f".s.tmp-{dead.pid}"
    (stale / "train").mkdir(parents=True)
    (stale / "train" / "all__inputs.npy").write_bytes(b"\0" * 4096)
    assert cli.main(_build_args(world, tmp_path / "s")) == 0
    err = capsys.readouterr().err
    assert f"removed {stale}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_build_while_another_runs_is_refused(world, tmp_path, capsys):
    from hrm.data import cli

    busy = tmp_path / f".s.tmp-{os.getppid()}"  # a live process (pytest's parent) holds it
    busy.mkdir()
    assert cli.main(_build_args(world, tmp_path / "s")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another build" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [busy.name]


# --- runs: crashes say so in status.json; corrupt states are named and the previous one resumes ------------


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def _train(world, run: Path, capsys=None, *extra: str) -> Result:
    """hrm-train's train() in this process (as the CLI calls it once the command line passed): fast, no Hydra app."""
    code = _train_in_process([f"data_path={world['toy']}", f"checkpoint_path={run}", *extra])
    out = capsys.readouterr() if capsys is not None else None
    return Result(code, out.out if out else "", out.err if out else "")


@pytest.fixture(scope="module")
def finished_run(world, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "done"
    assert _train(world, run).returncode == 0
    assert len(list(run.glob("state_step_*"))) == 2  # the latest state and the one before
    return run


def _states(run: Path) -> list[str]:
    return sorted((p.name for p in run.glob("state_step_*")), key=lambda n: int(n.rsplit("_", 1)[1]))


def _copy(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def test_truncated_state_falls_back_to_the_previous_one(finished_run, world, tmp_path, capsys):
    run = _copy(finished_run, tmp_path)
    previous, latest = _states(run)
    common = run / latest / "common.pt"
    common.write_bytes(common.read_bytes()[:200])
    (run / "status.json").unlink()  # a run killed before its end: resuming trains the last steps again
    capsys.readouterr()
    r = _train(world, run, capsys)
    assert r.returncode == 0, r.stderr[-2000:]
    notes = [line for line in r.stderr.splitlines() if "note:" in line]
    assert len(notes) == 1 and str(common) in notes[0] and previous in notes[0], r.stderr
    assert f"resumed at step {previous.rsplit('_', 1)[1]} " in r.stdout
    assert json.loads((run / "status.json").read_text())["state"] == "finished"


def test_corrupt_latest_state_json_is_named_and_a_complete_state_resumes(finished_run, world, tmp_path, capsys):
    run = _copy(finished_run, tmp_path)
    latest = _states(run)[-1]
    (run / "latest_state.json").write_text('{"step": 8, "di')
    capsys.readouterr()
    r = _train(world, run, capsys)
    assert r.returncode == 0, r.stderr[-2000:]
    notes = [line for line in r.stderr.splitlines() if "note:" in line]
    assert len(notes) == 1 and "latest_state.json is corrupt" in notes[0] and latest in notes[0], r.stderr
    assert f"resumed at step {latest.rsplit('_', 1)[1]} " in r.stdout


def test_no_complete_state_left_fails_in_one_line_with_status_failed(finished_run, world, tmp_path, capsys):
    run = _copy(finished_run, tmp_path)
    for f in run.glob("state_step_*/rank0.pt"):
        f.write_bytes(b"\0" * 10)
    capsys.readouterr()
    r = _train(world, run, capsys)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "rank0.pt is truncated or unreadable" in lines[0] and "start over" in lines[0]
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed" and "rank0.pt" in status["reason"]


def test_a_crash_after_the_run_directory_exists_records_failed(world, tmp_path, capsys, monkeypatch):
    import hrm.optim

    def boom(*args, **kwargs):  # a fault no check could have seen, inside the training loop
        raise RuntimeError("schedule exploded")

    monkeypatch.setattr(hrm.optim, "cosine_schedule_with_warmup_lr", boom)
    monkeypatch.delenv("HRM_DEBUG", raising=False)
    run = tmp_path / "crash"
    capsys.readouterr()
    r = _train(world, run, capsys)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "RuntimeError: schedule exploded" in lines[0] and "HRM_DEBUG=1" in lines[0]
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed" and "schedule exploded" in status["reason"]
    monkeypatch.setenv("HRM_DEBUG", "1")
    with pytest.raises(RuntimeError, match="schedule exploded"):  # the traceback when asked for
        _train(world, tmp_path / "crash2")
    assert json.loads((tmp_path / "crash2" / "status.json").read_text())["state"] == "failed"


@pytest.mark.parametrize("name,problem", [("bad_vocab", "token 77 >= vocab_size 6"), ("bad_json", "not valid JSON")])
def test_check_reports_a_bad_dataset_by_file(world, capsys, name, problem):
    """hrm-data check is a report (a table, then the errors): exit 1 and the error names the file."""
    from hrm.data import cli

    assert cli.main(["check", str(world[name])]) == 1
    out = capsys.readouterr().out
    assert "Traceback" not in out and problem in " ".join(out.split()) and name in out


def test_missing_test_split_says_evaluation_is_skipped(world, tmp_path, capsys):
    code = _train_in_process([f"data_path={world['no_test']}", f"checkpoint_path={tmp_path / 'r'}", "max_steps=1"])
    assert code == 0
    assert "training without evaluation" in capsys.readouterr().out


def test_torchrun_fault_on_both_ranks_is_printed_once(world, tmp_path):
    """Two gloo ranks hit the same fault: one line from the ranks, one from the launcher, status failed."""
    script = tmp_path / "boom.py"
    script.write_text("import sys\nimport hrm.optim\n\n\ndef boom(*a, **k):\n"
                      "    raise RuntimeError('schedule exploded')\n\n\n"
                      "hrm.optim.cosine_schedule_with_warmup_lr = boom\nfrom hrm.train import main\n\n"
                      "main(sys.argv[1:])\n")
    run = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "disabled", "DISABLE_COMPILE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("HRM_DEBUG", None)
    r = subprocess.run([sys.executable, "-m", "hrm.torchrun", "--nproc-per-node=2", "--master-port=29733", str(script),
                        *TINY, f"data_path={world['toy']}", f"checkpoint_path={run}"], capture_output=True, text=True,
                       timeout=240, env=env, cwd=tmp_path)
    errors = [line for line in r.stderr.splitlines() if "error" in line or line.startswith("torchrun")]
    assert r.returncode == 1 and "Traceback" not in r.stderr and "ChildFailedError" not in r.stderr, r.stderr
    assert len(errors) == 2 and "RuntimeError: schedule exploded" in errors[0], r.stderr
    assert errors[1].startswith("torchrun: rank ") and "exited with code 1" in errors[1]
    assert json.loads((run / "status.json").read_text())["state"] == "failed"


def test_a_killed_runs_temp_files_are_removed_on_resume_but_not_a_live_writers(tmp_path):
    from hrm import runstate

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".state_step_3.tmp").mkdir()  # a state save cut short by SIGKILL
    (tmp_path / ".state_step_3.tmp" / "rank0.pt").write_bytes(b"\0")
    (tmp_path / f".step_4.tmp-{dead.pid}").write_bytes(b"\0")  # a weight file cut short
    live = tmp_path / f".step_4_eval.json.tmp-{os.getpid()}"  # an hrm-evaluate of this run, writing now
    live.write_text("{")
    removed = runstate.clean_stale(tmp_path)
    assert sorted(removed) == [".state_step_3.tmp", f".step_4.tmp-{dead.pid}"]
    assert [p.name for p in tmp_path.iterdir()] == [live.name]
