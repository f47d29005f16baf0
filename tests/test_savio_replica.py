"""The Savio replica (tests/cluster/slurm_local_start.sh): it refuses what Savio refuses, and every experiment's
pipeline, as hrm-slurm sends it, is accepted for an FCA (fc_test) and a condo (co_test) account and runs.

Each experiment keeps its real resources (8 fake A5000 for ARC, 4 for maze, ...) and its data -> train -> eval
-> collect chain; only the work is shrunk (a handful of puzzles, a 64-wide model, two steps) so that it fits
on 2 CPU cores. Waits are on job states with generous limits; a failure prints what each job was doing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import RAW
from conftest_slurm import describe, slurm_cluster, slurm_home, wait_for, wait_pipeline  # noqa: F401
from test_slurm_cluster import TINY, cli, hrm, job_ids, sudoku_csv  # noqa: F401  (fixture)

pytestmark = pytest.mark.slurm

ARC_TASKS = {"training": ["6150a2bd", "44f52bb0"], "evaluation": ["66e6c45b", "00576224"]}


def sbatch(*flags: str) -> subprocess.CompletedProcess:
    r = subprocess.run(["sbatch", "-o", "/dev/null", *flags, "--wrap", "true"], capture_output=True, text=True)
    if r.returncode == 0:
        subprocess.run(["scancel", r.stdout.split()[-1]], check=False)
    return r


# What the audit (../shared/reference/savio-audit.md, appendix) showed hrm-slurm used to send, and why Savio
# refuses it; each is refused by the replica, and its fixed form is accepted.
REFUSED = [
    ("finding 1: savio_normal on savio4_gpu (sudoku_full train)",
     ["-A", "fc_test", "-p", "savio4_gpu", "-q", "savio_normal", "--gres=gpu:A5000:1", "-c", "4"],
     "Invalid qos", ["-A", "fc_test", "-p", "savio4_gpu", "-q", "a5k_gpu4_normal", "--gres=gpu:A5000:1", "-c", "4"]),
    ("finding 1: a condo's data job with savio_normal on savio3_htc",
     ["-A", "co_test", "-p", "savio3_htc", "-q", "savio_normal", "-c", "2"],
     "Invalid qos", ["-A", "co_test", "-p", "savio3_htc", "-q", "savio_lowprio", "-c", "2"]),
    ("finding 2: an FCA's data job with the GPU QoS savio_lowprio on savio3_htc",
     ["-A", "fc_test", "-p", "savio3_htc", "-q", "savio_lowprio", "-c", "2"],
     "Invalid qos", ["-A", "fc_test", "-p", "savio3_htc", "-q", "savio_normal", "-c", "2"]),
    ("finding 3: savio_debug for a GPU smoke test",
     ["-A", "fc_test", "-p", "savio4_gpu", "-q", "savio_debug", "--gres=gpu:A5000:1", "-c", "4", "-t", "30"],
     "Invalid qos", ["-A", "fc_test", "-p", "savio4_gpu", "-q", "a5k_gpu4_normal", "--gres=gpu:A5000:1", "-c", "4",
                     "-t", "30"]),
    ("finding 4: 2 CPUs for an A5000",
     ["-A", "fc_test", "-p", "savio4_gpu", "-q", "a5k_gpu4_normal", "--gres=gpu:A5000:1", "-c", "2"],
     "at least 4 per GPU", ["-A", "fc_test", "-p", "savio4_gpu", "-q", "a5k_gpu4_normal", "--gres=gpu:A5000:1",
                            "-c", "8"]),
    ("finding 4: the srun launcher's 8 tasks with 2 CPUs each on two nodes",
     ["-A", "fc_test", "-p", "savio4_gpu", "-N", "2", "--ntasks-per-node=8", "-c", "2", "--gres=gpu:A5000:8"],
     "at least 4 per GPU", ["-A", "fc_test", "-p", "savio4_gpu", "-N", "2", "--ntasks-per-node=8", "-c", "4",
                            "--gres=gpu:A5000:8"]),
    ("finding 5: savio5_gpu", ["-A", "fc_test", "-p", "savio5_gpu", "--gres=gpu:H100:1", "-c", "8"],
     "Invalid partition", None),
    ("finding 7: an A40 under the FCA's default QoS (gtx2080_gpu3_normal)",
     ["-A", "fc_test", "-p", "savio3_gpu", "--gres=gpu:A40:1", "-c", "8"],
     "needs -q a40_gpu3_normal", ["-A", "fc_test", "-p", "savio3_gpu", "-q", "a40_gpu3_normal", "--gres=gpu:A40:1",
                                  "-c", "8"]),
    ("finding 7: an A40 under another type's QoS",
     ["-A", "fc_test", "-p", "savio3_gpu", "-q", "gtx2080_gpu3_normal", "--gres=gpu:A40:1", "-c", "8"],
     "not for a40", None),
    ("an account the user does not have", ["-A", "fc_nobody", "-p", "savio3_htc"], "Invalid account", None),
    ("over the partition's time limit", ["-A", "fc_test", "-p", "savio3_htc", "-t", "4-00:00:00"], "time limit",
     None),
    ("a GPU on the CPU partition", ["-A", "fc_test", "-p", "savio3_htc", "--gres=gpu:A5000:1", "-c", "4"],
     "", None),
]


@pytest.mark.parametrize("what, flags, message, fixed", REFUSED, ids=[r[0] for r in REFUSED])
def test_the_replica_refuses_what_savio_refuses(slurm_cluster, slurm_home, what, flags, message, fixed):  # noqa: F811
    r = sbatch("-t", "5", *flags)
    assert r.returncode != 0 and message.lower() in r.stderr.lower(), (what, r.stderr)
    if fixed:
        ok = sbatch("-t", "5", *fixed)
        assert ok.returncode == 0, (what, ok.stderr)


def test_hrm_slurm_refuses_before_sbatch_what_the_account_lacks(slurm_cluster, slurm_home):  # noqa: F811
    """Read from the replica's associations (sacctmgr), one line, nothing submitted."""
    cases = [
        (["account=fc_test", "qos=savio_debug"], "QoS 'savio_debug' for the train job is not one account 'fc_test' "
                                                 "has on savio4_gpu A5000 (it has: a5k_gpu4_normal, savio_lowprio)"),
        (["account=co_test", "qos.data=savio_normal"], "account 'co_test' has on savio3_htc (it has: savio_lowprio)"),
        (["account=fc_nobody"], "account 'fc_nobody' has no association"),
    ]
    for extra, message in cases:
        r = cli(["submit", "+experiment=sudoku_full", "cluster=local", *extra], slurm_home)
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (slurm_home / "home" / "pipelines").exists()


@pytest.fixture(scope="session")
def arc_raw(tmp_path_factory) -> Path:
    if not (RAW / "ARC-AGI").is_dir():
        pytest.skip(f"shared ARC data not found at {RAW}")
    dest = tmp_path_factory.mktemp("arc_raw")
    for sub, names in ARC_TASKS.items():
        (dest / sub).mkdir()
        for n in names:
            shutil.copy(RAW / "ARC-AGI" / "data" / sub / f"{n}.json", dest / sub)
    return dest


def tiny_build(experiment: str, sudoku_csv: Path, arc_raw: Path) -> list[str]:  # noqa: F811
    if experiment.startswith("sudoku"):
        return [f"build.args.source={sudoku_csv}", "build.args.subsample_size=64", "build.args.num_aug=1"]
    if experiment == "maze":
        return [f"build.args.source={RAW / 'maze-30x30-hard-1k'}", "+build.args.subsample_size=16"]
    return [f"+build.args.dataset_dirs={arc_raw}", "build.args.num_aug=1"]


MATRIX = [(e, a, ()) for e in ("sudoku_full", "maze", "arc1", "arc2") for a in ("fc_test", "co_test")]
MATRIX.append(("arc1", "fc_test", ("nodes=2",)))  # 2 x 8 A5000, 16 ranks: `preview arc1 nodes=2` as it runs


def test_every_experiment_is_accepted_and_runs_for_both_account_kinds(
    slurm_cluster, slurm_home, sudoku_csv, arc_raw  # noqa: F811
):
    """All eight pipelines are submitted at once (the replica has room for them to queue), then waited on."""
    records = {}
    for experiment, account, extra in MATRIX:
        home = slurm_home / "-".join((experiment, account, *(e.replace("=", "") for e in extra)))
        home.mkdir()
        r = cli(
            [
                "submit",
                f"+experiment={experiment}",
                "cluster=local",
                f"account={account}",
                f"data_path={home}/data",
                f"runs_dir={home}/runs",
                *tiny_build(experiment, sudoku_csv, arc_raw),
                *TINY,
                "max_steps=2",
                "epochs=2",
                "eval_interval=2",
                "time=00:30:00",
                "data_time=00:20:00",
                "eval_time=00:20:00",
                *extra,
            ],
            slurm_home,
            timeout=300,
        )
        assert r.returncode == 0, (experiment, account, r.stderr[-2000:])
        (rec_path,) = [p for p in (slurm_home / "home" / "pipelines").glob("*.json")
                       if json.loads(p.read_text())["run_dir"].startswith(f"{home}/")]
        records[(experiment, account, extra)] = json.loads(rec_path.read_text())
    want_qos = {"fc_test": {"data": "savio_normal", "train": "a5k_gpu4_normal"},
                "co_test": {"data": "savio_lowprio", "train": "test_gpu4_normal"}}
    for (experiment, account, extra), rec in records.items():
        states = wait_pipeline(rec)
        assert all(states[j]["state"] == "COMPLETED" for j in job_ids(rec)), (experiment, account, describe(rec))
        qos_of = {s["name"]: s["request"]["qos"] for s in rec["stages"]}
        assert qos_of["data"] == want_qos[account]["data"] and qos_of["train"] == want_qos[account]["train"]
        run = Path(rec["run_dir"])
        status = json.loads((run / "status.json").read_text())
        assert status["state"] in ("finished", "stopped") and status["step"] >= 1, describe(rec)  # max_steps
        assert list(run.glob("step_*_eval.json")) and (run / "results" / "results.csv").is_file(), describe(rec)
        if experiment.startswith("arc"):
            train_log = Path(rec["stages"][1]["log"]).read_text()
            assert "torchrun" in train_log and "--nproc-per-node=8" in train_log
            assert f"--nnodes={2 if extra else 1}" in train_log and f"x{16 if extra else 8}" in train_log


@pytest.fixture(scope="session")
def sudoku_long_eval(tmp_path_factory) -> Path:
    """A Sudoku source whose test split takes the tiny model tens of seconds to evaluate."""
    raw = RAW / "sudoku-extreme"
    if not (raw / "test_standin_tdoku.csv").is_file():
        pytest.skip(f"shared Sudoku rows not found at {raw}")
    dest = tmp_path_factory.mktemp("sudoku_long_eval")
    shutil.copy(raw / "train.csv", dest / "train.csv")
    rows = (raw / "test_standin_tdoku.csv").read_text().splitlines()[:8001]
    (dest / "test.csv").write_text("\n".join(rows) + "\n")
    return dest


def test_a_preempted_lowprio_eval_job_is_requeued_and_the_pipeline_ends(
    slurm_cluster, slurm_home, sudoku_long_eval  # noqa: F811
):
    """A condo pipeline on savio_lowprio: while its evaluation runs, an FCA job that needs the whole node
    preempts it. Slurm requeues it (--requeue on every stage of a preemptible QoS), it runs again, and the
    chain behind it (collect) still runs: nothing is lost."""
    tiny = [a for a in TINY if not a.startswith(("eval_max_batches", "arch.halt_max_steps"))]
    r = cli(
        [
            "submit",
            "+experiment=sudoku_demo",
            "cluster=local",
            "account=co_test",
            f"data_path={slurm_home}/data",
            f"runs_dir={slurm_home}/runs",
            f"build.args.source={sudoku_long_eval}",
            "build.args.blanks=null",  # the demo's generated-puzzle option does not apply to a CSV
            "build.args.subsample_size=64",
            "build.args.num_aug=1",
            *tiny,
            "arch.halt_max_steps=8",  # every test batch runs 8 segments: an evaluation of some 30 s
            "max_steps=2",  # training stops before its own evaluation
            "epochs=1000",
            "eval_interval=1000",
            "time=00:20:00",
            "eval_time=00:20:00",
        ],
        slurm_home,
    )
    assert r.returncode == 0, r.stderr
    (rec_path,) = (slurm_home / "home" / "pipelines").glob("*.json")
    rec = json.loads(rec_path.read_text())
    assert {s["request"]["qos"] for s in rec["stages"]} == {"savio_lowprio"}
    ev = next(s for s in rec["stages"] if s["name"] == "eval")
    log = Path(ev["log"])
    wait_for(lambda: log.is_file() and "stage eval (restart 0)" in log.read_text(), 600,
             f"the eval job to start; jobs: {describe(rec)[-3000:]}")
    pre = subprocess.run(
        ["sbatch", "-A", "fc_test", "-p", "savio3_htc", "-q", "savio_normal", "-c", "40", "-t", "5",
         "-o", str(slurm_home / "preemptor.out"), "--wrap", "echo preemptor ran; sleep 2"],
        capture_output=True, text=True,
    )
    assert pre.returncode == 0, pre.stderr
    out = slurm_home / "preemptor.out"
    wait_for(lambda: out.is_file() and "preemptor ran" in out.read_text(), 300, "the preemptor to run")
    states = wait_pipeline(rec)
    text = log.read_text()
    assert "exited with 0" not in text.split("stage eval (restart 1)")[0], "the eval ended before the preemption"
    assert all(states[j]["state"] == "COMPLETED" for j in job_ids(rec)), describe(rec)
    assert "waiting for Slurm to requeue" in text and "stage eval (restart 1)" in text, text[-3000:]
    assert states[ev["job_id"]]["restarts"] >= 1
    run = Path(rec["run_dir"])
    assert list(run.glob("step_*_eval.json")) and (run / "results" / "results.csv").is_file()
