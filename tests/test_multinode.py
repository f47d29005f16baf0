"""Many nodes and real preemption on the replica (two savio4_gpu nodes, a5k1 and a5k2, each its own slurmd).

- 2 nodes x 2 ranks (CPU, gloo), with torchrun (one task per node) and srun (one task per rank), end where one
  process with the same global batch and seed ends; float sums over ranks are added in another order, so
  weights agree to float32 rounding (rtol 1e-4), not bit for bit.
- A training job on savio_lowprio is preempted by a job that needs its node(s): it saves on the SIGTERM, Slurm
  requeues it after the grace time, it resumes, and ends bit for bit with the weights of an uninterrupted run
  with the same ranks (1 process; 2 nodes x 1 rank against torchrun with 2 ranks on one machine).
- A node's processes die mid-run: the job fails (the other rank's collective errors at once), `hrm-slurm
  status` says so in one line, and the next submission resumes from the last complete state.

Waits follow progress (job states, the run's step) with generous limits; failures print every job's state.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from conftest_slurm import describe, run_step, slurm_cluster, slurm_home, wait_for, wait_pipeline  # noqa: F401
from test_slurm_cluster import TINY, cli, hrm, sudoku_csv, sudoku_data  # noqa: F401  (fixtures)

from slurm import queue
from slurm.jobs import latest_step

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def submit_train(home: Path, data: Path, *extra: str, account: str = "fc_test") -> dict:
    r = cli(
        ["submit", "+experiment=sudoku_demo", "cluster=local", f"account={account}", "partition=savio4_gpu",
         "stages=train", f"data_path={data}", f"runs_dir={home}/runs", *TINY, "time=00:30:00", *extra],
        home,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    records = sorted((home / "home" / "pipelines").glob("*.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(records[-1].read_text())


def reference_run(home: Path, data: Path, name: str, threads: str, *train: str, ranks: int = 1) -> subprocess.Popen:
    """The same training outside Slurm, uninterrupted: one process, or `ranks` ranks under torchrun."""
    launch = [hrm("hrm-train")] if ranks == 1 else [
        hrm("torchrun"), f"--nproc-per-node={ranks}", "--master-port=29641", "--no-python", hrm("hrm-train")]
    return subprocess.Popen(
        [*launch, "+experiment=sudoku_demo", *TINY, *train, f"data_path={data}", f"checkpoint_path={home / name}"],
        cwd=home, env={**os.environ, "OMP_NUM_THREADS": threads}, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )


def job_threads(rec: dict) -> str:
    script = next((Path(rec["run_dir"]) / "slurm" / "train").glob("*_submission.sh")).read_text()
    return re.search(r"^export OMP_NUM_THREADS=(\d+)$", script, re.M).group(1)


def final_weights(run: Path) -> dict:
    return torch.load(latest_step(str(run)), weights_only=True)


def assert_close_weights(a: dict, b: dict, exact: bool) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")


def last_eval(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if "all/count" in r][-1]


def nothing_half_written(run: Path) -> None:
    """Every step_N and the state latest_state.json names load whole; a save cut short leaves at most its own
    unpublished .state_step_N.tmp directory, never a partial file under a published name."""
    stray = [p for p in run.rglob("*.tmp") if not any(x.startswith(".state") for x in p.relative_to(run).parts)]
    assert not stray, stray
    for p in run.glob("step_*"):
        if re.fullmatch(r"step_\d+", p.name):
            torch.load(p, weights_only=True)
    latest = json.loads((run / "latest_state.json").read_text())
    for f in (run / latest["dir"]).iterdir():
        torch.load(f, weights_only=False)


@pytest.mark.parametrize("launcher", ["torchrun", "srun"])
def test_two_nodes_two_ranks_each_end_where_one_process_does(slurm_cluster, slurm_home, sudoku_data, launcher):  # noqa: F811
    train = ["epochs=2", "eval_interval=2"]
    rec = submit_train(slurm_home, sudoku_data, "gpus=2", "nodes=2", f"launcher={launcher}", *train)
    (stage,) = [s for s in rec["stages"] if s.get("job_id")]
    assert stage["request"]["nodes"] == 2 and stage["request"]["gpus"] == 2
    ref = reference_run(slurm_home, sudoku_data, "reference", job_threads(rec), *train)
    states = wait_pipeline(rec)
    assert ref.wait(timeout=1200) == 0
    assert states[stage["job_id"]]["state"] == "COMPLETED", describe(rec)
    assert states[stage["job_id"]]["node"] == "a5k[1-2]", states
    log = Path(stage["log"]).read_text()
    assert "x4" in log, log[-3000:]  # four ranks
    run = Path(rec["run_dir"])
    assert_close_weights(final_weights(run), final_weights(slurm_home / "reference"), exact=False)
    ours, theirs = last_eval(run), last_eval(slurm_home / "reference")
    assert ours["all/count"] == theirs["all/count"]
    for key in ("all/accuracy", "all/exact_accuracy", "all/lm_loss"):
        assert ours[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-6), key


def preempt(nodes: str, home: Path) -> None:
    """An FCA job at normal priority that needs every GPU and core of `nodes`: savio_lowprio gives way."""
    n = len(subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True).stdout.split())
    out = home / "preemptor.out"
    r = subprocess.run(
        ["sbatch", "-A", "fc_test", "-p", "savio4_gpu", "-q", "a5k_gpu4_normal", "-N", str(n), "-w", nodes,
         "--ntasks-per-node=1", "-c", "32", "--gres=gpu:A5000:8", "-t", "5", "-o", str(out),
         "--wrap", "echo preemptor ran; sleep 2"],
        capture_output=True, text=True,
    )
    assert r.returncode == 0, r.stderr
    wait_for(lambda: out.is_file() and "preemptor ran" in out.read_text(), 600, f"the preemptor to run on {nodes}")


@pytest.mark.parametrize("nodes", [1, 2])
def test_preempted_training_resumes_to_the_weights_of_an_uninterrupted_run(
    slurm_cluster, slurm_home, sudoku_data, nodes  # noqa: F811
):
    train = ["epochs=40", "eval_interval=40"]
    shape = ["gpus=1", f"nodes={nodes}"] + (["launcher=torchrun"] if nodes > 1 else [])
    rec = submit_train(slurm_home, sudoku_data, *shape, "qos=savio_lowprio", *train, account="co_test")
    (stage,) = [s for s in rec["stages"] if s.get("job_id")]
    assert stage["request"]["qos"] == "savio_lowprio"
    run, job = Path(rec["run_dir"]), stage["job_id"]
    # the uninterrupted run with the same ranks: two ranks add their gradients in the same order on one node
    ref = reference_run(slurm_home, sudoku_data, "reference", job_threads(rec), *train, ranks=nodes)
    try:
        wait_for(lambda: run_step(run) >= 3, 900, "training to reach step 3", state=lambda: describe(rec)[-2000:])
        where = queue.job_states([job])[job].get("node") or queue.job_states([job])[job].get("reason")
        preempt(where, slurm_home)
        states = wait_pipeline(rec)
        assert ref.wait(timeout=1200) == 0
    finally:
        if ref.poll() is None:
            ref.kill()
    log = Path(stage["log"]).read_text()
    assert states[job]["state"] == "COMPLETED", describe(rec)
    assert states[job]["restarts"] >= 1 and "SIGTERM" in log and "stage train (restart 1)" in log, log[-4000:]
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    nothing_half_written(run)
    assert_close_weights(final_weights(run), final_weights(slurm_home / "reference"), exact=True)


def _job_pids_on(job: str, node: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = dict(kv.split("=", 1) for kv in (d / "environ").read_bytes().decode(errors="replace").split("\0")
                       if "=" in kv)
        except OSError:
            continue
        if env.get("SLURM_JOB_ID") == job and env.get("SLURMD_NODENAME") == node and "SLURM_STEP_ID" in env:
            if env["SLURM_STEP_ID"] not in ("batch", "extern", "4294967291", "4294967292"):
                pids.append(int(d.name))
    return pids


def test_a_node_lost_mid_run_fails_cleanly_and_the_next_run_resumes(slurm_cluster, slurm_home, sudoku_data):  # noqa: F811
    train = ["epochs=40", "eval_interval=40", "state_every_minutes=0.02"]  # a full state about every second
    rec = submit_train(slurm_home, sudoku_data, "gpus=1", "nodes=2", "launcher=torchrun", *train)
    (stage,) = [s for s in rec["stages"] if s.get("job_id")]
    run, job = Path(rec["run_dir"]), stage["job_id"]
    wait_for(lambda: (run / "latest_state.json").is_file() and run_step(run) >= 3, 900,
             "a full state at step 3 or later", state=lambda: describe(rec)[-2000:])
    pids = _job_pids_on(job, "a5k2")
    assert pids, describe(rec)
    for pid in pids:  # everything the step runs on a5k2 dies at once, as when a node goes
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    states = wait_pipeline(rec)
    assert states[job]["state"] in ("FAILED", "NODE_FAIL"), describe(rec)
    status = cli(["status"], slurm_home)
    line = next((x for x in status.stdout.splitlines() if x.startswith(f"train {job}")), "")
    assert states[job]["state"] in line and "a5k[1-2]" in line and len(line) < 400, status.stdout
    saved = json.loads((run / "latest_state.json").read_text())
    nothing_half_written(run)
    # the next run (same run directory) resumes from the last complete state
    again = submit_train(slurm_home, sudoku_data, "gpus=1", "nodes=2", "launcher=torchrun", *train,
                         f"checkpoint_path={run}")
    states = wait_pipeline(again)
    (stage2,) = [s for s in again["stages"] if s.get("job_id")]
    log = Path(stage2["log"]).read_text()
    assert states[stage2["job_id"]]["state"] == "COMPLETED", describe(again)
    assert f"resumed at step {saved['step']}" in log, log[-3000:]
    assert json.loads((run / "status.json").read_text())["state"] == "finished"


def test_hydra_multirun_sends_two_points_to_two_partitions(slurm_cluster, slurm_home, sudoku_data):  # noqa: F811
    """`+resources.partition=a,b`: one array per partition (hydra-submitit alone sends one array for all)."""
    sweep = slurm_home / "sweep"
    r = subprocess.run(
        [hrm("hrm-train"), "-m", "hydra/launcher=local", "+experiment=sudoku_demo", *TINY, "epochs=2",
         "eval_interval=2", f"data_path={sudoku_data}", "+resources.partition=savio3_htc,savio4_gpu",
         f"hydra.sweep.dir={sweep}"],
        cwd=slurm_home, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=1200,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    scripts = sorted((sweep / ".submitit").rglob("*_submission.sh"))
    partitions = {re.search(r"^#SBATCH --partition=(\S+)$", p.read_text(), re.M).group(1) for p in scripts}
    assert partitions == {"savio3_htc", "savio4_gpu"}, scripts
    jobs = sorted({d.name.split("_")[0] for d in (sweep / ".submitit").iterdir() if d.name[0].isdigit()})

    def sacct() -> tuple[list[str], str]:
        r = subprocess.run(["sacct", "-n", "-X", "-P", "-j", ",".join(jobs), "-o", "jobid,partition,state"],
                           capture_output=True, text=True)
        return r.stdout.split(), f"sacct -j {','.join(jobs)} (exit {r.returncode}):\n{r.stdout}{r.stderr}"

    # the launcher returns once the jobs have ended; sacct (through slurmdbd) can lag behind by seconds
    wait_for(lambda: {g.split("|")[1] for g in sacct()[0] if g.endswith("|COMPLETED")} == {"savio3_htc", "savio4_gpu"},
             300, "both points COMPLETED in sacct, one per partition", state=lambda: sacct()[1])
    for point in ("0", "1"):  # each point trained in its own directory, hydra.sweep.dir/<n>
        status = next((sweep / point).rglob("status.json"))
        assert json.loads(status.read_text())["state"] == "finished"
