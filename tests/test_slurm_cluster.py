"""Integration against the real local Slurm: a tiny Sudoku pipeline, a time-limit requeue that resumes to the
same weights, a Hydra multirun through hydra-submitit-launcher, and a cancel.

Started by the test command after tests/cluster/slurm_local_start.sh (HRM_TEST_SLURM=1). Real hrm-data,
hrm-train and hrm-evaluate, with a model small enough for 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest_slurm import describe, slurm_cluster, slurm_home, wait_for, wait_jobs_done, wait_pipeline  # noqa: F401

from slurm import queue
from slurm.jobs import latest_step

pytestmark = pytest.mark.slurm

SECRET = "wandb-test-secret-fedcba9876543210"
BIN = Path(sys.executable).parent
TINY = [
    "arch.hidden_size=64",
    "arch.num_heads=2",
    "arch.H_layers=1",
    "arch.L_layers=1",
    "arch.halt_max_steps=2",
    "arch.H_cycles=1",
    "arch.L_cycles=1",
    "arch.forward_dtype=float32",
    "global_batch_size=16",
    "eval_max_batches=2",
    "device=cpu",
    "wandb_mode=disabled",
    "lr_warmup_steps=2",
]


def hrm(tool: str) -> str:
    return str(BIN / tool)


def cli(args: list[str], cwd: Path, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    r = subprocess.run(
        [hrm("hrm-slurm"), *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )
    return r


@pytest.fixture(scope="session")
def sudoku_csv(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sudoku_csv") / "csv"
    subprocess.run(
        [
            hrm("hrm-data"),
            "generate",
            "sudoku",
            "--count",
            "64",
            "--test-count",
            "16",
            "--seed",
            "0",
            "--output-dir",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture(scope="session")
def sudoku_data(tmp_path_factory, sudoku_csv) -> Path:
    out = tmp_path_factory.mktemp("sudoku_data") / "d"
    subprocess.run(
        [
            hrm("hrm-data"),
            "build",
            "sudoku",
            "--source",
            str(sudoku_csv),
            "--output-dir",
            str(out),
            "--subsample-size",
            "64",
            "--num-aug",
            "1",
            "--seed",
            "0",
        ],
        check=True,
        capture_output=True,
    )
    return out


def record_of(home: Path) -> dict:
    (path,) = (home / "home" / "pipelines").glob("*.json")
    return json.loads(path.read_text())


def job_ids(record: dict) -> list[str]:
    return [s["job_id"] for s in record["stages"] if s.get("job_id")]


def all_text_under(root: Path) -> str:
    return "".join(p.read_bytes().decode(errors="replace") for p in root.rglob("*") if p.is_file())


def test_sudoku_pipeline_data_train_eval_collect(slurm_cluster, slurm_home, sudoku_csv):  # noqa: F811
    data = slurm_home / "data"
    r = cli(
        [
            "submit",
            "+experiment=sudoku_demo",
            "cluster=local",
            f"data_path={data}",
            f"runs_dir={slurm_home}/runs",
            f"build.args.source={sudoku_csv}",
            "build.args.blanks=null",  # the demo's generated-puzzle option does not apply to a CSV
            "build.args.subsample_size=64",
            "build.args.num_aug=1",
            *TINY,
            "epochs=2",
            "eval_interval=2",
            "time=00:15:00",
            "data_time=00:10:00",
            "eval_time=00:10:00",
        ],
        slurm_home,
        WANDB_API_KEY=SECRET,
    )
    assert r.returncode == 0, r.stderr
    rec = record_of(slurm_home)
    assert [s["name"] for s in rec["stages"]] == ["data", "train", "eval", "collect"]
    for s in rec["stages"]:
        assert s["job_id"] in r.stdout and s["log"] in r.stdout
    states = wait_pipeline(rec)
    logs = {s["name"]: Path(s["log"]).read_text() if Path(s["log"]).exists() else "" for s in rec["stages"]}
    assert all(states[j]["state"] == "COMPLETED" for j in job_ids(rec)), (states, logs)

    run = Path(rec["run_dir"])
    assert (data / "train" / "dataset.json").is_file()
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    assert list(run.glob("step_*_eval.json"))
    results = run / "results"
    assert (results / "results.csv").read_text().count("\n") == 2
    assert "| run |" in (results / "results.md").read_text()
    assert (results / "training_curves.png").stat().st_size > 1000
    assert "module load" not in logs["train"]  # the local profile loads no modules

    status = cli(["status"], slurm_home)
    assert status.returncode == 0 and status.stdout.count("COMPLETED") == 4
    out = cli(["logs", "train"], slurm_home)
    assert "stage train" in out.stdout and "exited with 0" in out.stdout
    collected = cli(["collect", str(run), "--out", str(slurm_home / "all")], slurm_home)
    assert collected.returncode == 0 and (slurm_home / "all" / "results.csv").is_file()

    # the W&B key was in the submitting environment: it reached no script, log, pickle or record
    assert SECRET not in all_text_under(run) and SECRET not in all_text_under(slurm_home / "home")
    assert SECRET not in r.stdout + status.stdout + out.stdout


def test_time_limit_requeues_and_resumes_to_the_same_weights(slurm_cluster, slurm_home, sudoku_data):  # noqa: F811
    """A 2-minute limit against about 3 minutes of training on one core (4,000 steps; more on a loaded
    machine): Slurm's signal comes about 60 s in (65 s measured, at step ~1,600), so the first run is always
    interrupted; the trainer saves, the job requeues itself and resumes. The job and the uninterrupted reference
    get one thread each, so on two cores neither starves the other. Once the requeue has happened, the test
    lifts the limit (as the cluster admin) so that a slow machine does not turn this into a long chain of
    requeues; repeated requeues go through the same code."""
    import torch

    train = [*TINY, "epochs=1000", "eval_interval=1000", f"data_path={sudoku_data}"]
    r = cli(
        [
            "submit",
            "+experiment=sudoku_demo",
            "cluster=local",
            f"runs_dir={slurm_home}/runs",
            *train,
            "time=00:02:00",
            "cpus=1",
            "max_requeues=8",
        ],
        slurm_home,
    )
    assert r.returncode == 0, r.stderr
    rec = record_of(slurm_home)
    assert [s["name"] for s in rec["stages"] if s["job_id"]] == ["train", "eval", "collect"]  # data exists
    train_stage = next(s for s in rec["stages"] if s["name"] == "train")
    run = Path(rec["run_dir"])
    reference = slurm_home / "reference"  # the same training, uninterrupted, outside Slurm
    # CPU matmuls round differently with another thread count: run the reference with the job's own.
    script = next((run / "slurm" / "train").glob("*_submission.sh")).read_text()
    threads = re.search(r"^export OMP_NUM_THREADS=(\d+)$", script, re.M).group(1)
    ref = subprocess.Popen(
        [hrm("hrm-train"), "+experiment=sudoku_demo", *train, f"checkpoint_path={reference}"],
        cwd=slurm_home,
        env={**os.environ, "OMP_NUM_THREADS": threads},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(
            lambda: (run / "slurm_restarts.txt").is_file() and int((run / "slurm_restarts.txt").read_text()),
            900,
            "the first requeue",
            state=lambda: describe(rec),
        )
        subprocess.run(
            ["scontrol", "update", f"jobid={train_stage['job_id']}", "TimeLimit=00:20:00"], check=True
        )
        states = wait_pipeline(rec)  # as long as it makes progress, however busy the machine
        assert ref.wait(timeout=1200) == 0
    finally:
        if ref.poll() is None:
            ref.kill()
    log = Path(train_stage["log"]).read_text()
    assert states[train_stage["job_id"]]["state"] == "COMPLETED", log[-3000:]

    restarts = int((run / "slurm_restarts.txt").read_text())
    assert restarts >= 1 and "requeueing (requeue 1" in log and "sending SIGUSR1" in log
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    assert list(run.glob("step_*_eval.json"))
    status = cli(["status"], slurm_home)
    row = next(line for line in status.stdout.splitlines() if line.strip("│ ").startswith("train"))
    assert "COMPLETED" in row and f" {restarts} " in row

    final = Path(latest_step(str(run)))
    a = torch.load(final, weights_only=True)
    b = torch.load(reference / final.name, weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("account, qos", [("fc_test", "savio_normal"), ("co_test", "savio_lowprio")])
def test_hydra_multirun_submits_one_job_per_point(slurm_cluster, slurm_home, sudoku_data, account, qos):  # noqa: F811
    """For an FCA and a condo: the launcher sends no --qos, so each gets its association's default QoS."""
    sweep = slurm_home / "sweep"
    r = subprocess.run(
        [
            hrm("hrm-train"),
            "-m",
            "hydra/launcher=local",
            "+experiment=sudoku_demo",
            *TINY,
            "epochs=2",
            "eval_interval=2",
            f"data_path={sudoku_data}",
            "lr=1e-3,5e-4",
            f"hydra.sweep.dir={sweep}",
            f"checkpoint_path={slurm_home}/points/lr_${{lr}}",
        ],
        cwd=slurm_home,
        env={**os.environ, "OMP_NUM_THREADS": "1", "SAVIO_ACCOUNT": account},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    points = sorted((slurm_home / "points").iterdir())
    assert [p.name for p in points] == ["lr_0.0005", "lr_0.001"]
    for p in points:
        assert json.loads((p / "status.json").read_text())["state"] == "finished"
    scripts = list((sweep / ".submitit").rglob("*_submission.sh"))
    assert scripts
    text = scripts[0].read_text()
    assert "#SBATCH --partition=savio3_htc" in text and f"#SBATCH --account={account}" in text
    assert "#SBATCH --array=0-1" in text and "export OMP_NUM_THREADS=2" in text and "--qos" not in text
    array_id = scripts[0].parent.name.split("_")[0]
    got = wait_for(
        lambda: subprocess.run(["sacct", "-n", "-X", "-P", "-j", array_id, "-o", "qos"], capture_output=True,
                               text=True).stdout.split(),
        60,
        "sacct to list the sweep's jobs",
    )
    assert set(got) == {qos}, got


def test_cancel_stops_the_whole_pipeline(slurm_cluster, slurm_home, sudoku_data):  # noqa: F811
    r = cli(
        [
            "submit",
            "+experiment=sudoku_demo",
            "cluster=local",
            f"runs_dir={slurm_home}/runs",
            *TINY,
            "epochs=100000",
            "eval_interval=100000",
            f"data_path={sudoku_data}",
            "time=00:30:00",
        ],
        slurm_home,
    )
    assert r.returncode == 0, r.stderr
    rec = record_of(slurm_home)
    train_id = rec["stages"][1]["job_id"]
    wait_for(
        lambda: queue.job_states([train_id]).get(train_id, {}).get("state") == "RUNNING", 60, "train to run"
    )
    c = cli(["cancel"], slurm_home)
    assert c.returncode == 0 and train_id in c.stdout
    states = wait_pipeline(rec)
    assert {states[j]["state"] for j in job_ids(rec)} == {"CANCELLED"}
