"""Fixtures for tests against the real local Slurm (tests/cluster/slurm_local_start.sh).

Imported by the test modules that need them (not a conftest.py: that file belongs to the lead).
Tests marked `slurm` skip when no cluster answers, and fail instead when HRM_TEST_SLURM=1 says the test
command started one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLUSTER_DIR = REPO / "tests" / "cluster"


def cluster_problem() -> str | None:
    """None when the local cluster takes jobs, else why not."""
    if not shutil.which("sinfo"):
        return "Slurm is not installed (run tests/cluster/slurm_local_start.sh)"
    r = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        return f"sinfo failed: {r.stderr.strip()[:200]}"
    if not any(s.rstrip("*~#") in ("idle", "mixed", "allocated", "completing") for s in r.stdout.split()):
        return f"no usable node (sinfo: {r.stdout.strip()})"
    return None


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    problem = cluster_problem()
    if problem:
        if os.environ.get("HRM_TEST_SLURM") == "1":
            pytest.fail(f"HRM_TEST_SLURM=1 but the local Slurm cluster is not reachable: {problem}")
        pytest.skip(f"no local Slurm cluster: {problem}")


@pytest.fixture(scope="session")
def lmod_tree(tmp_path_factory) -> Path:
    if not Path("/usr/share/lmod/lmod/init/bash").is_file():
        if os.environ.get("HRM_TEST_SLURM") == "1":
            pytest.fail("HRM_TEST_SLURM=1 but Lmod is not installed (slurm_local_start.sh installs it)")
        pytest.skip("Lmod is not installed")
    tree = tmp_path_factory.mktemp("modules")
    subprocess.run(["bash", str(CLUSTER_DIR / "make_fake_lmod.sh"), str(tree)], check=True)
    return tree


@pytest.fixture
def slurm_home(tmp_path, monkeypatch):
    """A private pipeline registry and working directory (Slurm's default logs land in the cwd).
    Afterwards, whatever the test submitted and left behind (a failed assertion) is cancelled."""
    monkeypatch.setenv("HRM_SLURM_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    ids = []
    for rec in (tmp_path / "home" / "pipelines").glob("*.json"):
        ids += [s["job_id"] for s in json.loads(rec.read_text())["stages"] if s.get("job_id")]
    if ids and shutil.which("scancel"):
        subprocess.run(["scancel", *ids], check=False, capture_output=True)


def wait_for(pred: Callable[[], object], timeout: float, what: str, interval: float = 1.0,
             state: Callable[[], str] | None = None) -> object:
    """Poll `pred`; on time-out, fail with `state()` (what the jobs were doing) when given."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}" + (f"\n{state()}" if state else ""))


def wait_jobs_done(job_ids: list[str], timeout: float) -> dict[str, dict]:
    """Poll sacct/squeue until every job is in a terminal state (sacct lags a few seconds)."""
    from slurm import queue

    def done() -> dict[str, dict] | None:
        states = queue.job_states(job_ids)
        if all(queue.is_done(states.get(j, {}).get("state", "")) for j in job_ids):
            return states
        return None

    return wait_for(done, timeout, f"jobs {job_ids} to finish", interval=2.0)  # type: ignore[return-value]


def describe(rec: dict) -> str:
    """What each job of a recorded pipeline is doing: its state, and the end of its log."""
    from slurm import queue

    ids = [s["job_id"] for s in rec["stages"] if s.get("job_id")]
    states = queue.job_states(ids)
    out = []
    for s in rec["stages"]:
        if not s.get("job_id"):
            continue
        log = Path(s["log"]).read_text(errors="replace")[-1500:] if Path(s["log"]).is_file() else "(no log yet)"
        out.append(f"--- {s['name']} {s['job_id']}: {states.get(s['job_id'])}\n{log}")
    return "\n".join(out)


def run_step(run: Path) -> int:
    """The last training step a run directory has logged (metrics.jsonl is written line by line)."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        return -1
    lines = [line for line in path.read_text().splitlines() if line.endswith("}")]
    return json.loads(lines[-1])["step"] if lines else -1


def _progress(rec: dict) -> tuple:
    """Anything that moves while a pipeline works: job states and restarts, log sizes, the run's step."""
    from slurm import queue

    ids = [s["job_id"] for s in rec["stages"] if s.get("job_id")]
    states = queue.job_states(ids)
    logs = tuple(Path(s["log"]).stat().st_size if s.get("log") and Path(s["log"]).is_file() else 0
                 for s in rec["stages"])
    step = run_step(Path(rec["run_dir"]))
    return tuple((j, states.get(j, {}).get("state"), states.get(j, {}).get("restarts")) for j in ids), logs, step


def wait_pipeline(rec: dict, stall: float = 600, limit: float = 3600) -> dict[str, dict]:
    """Wait until every job of the pipeline has ended, for as long as it makes progress: a busy machine only
    makes it slower. Fails, saying what each job was doing, after `stall` s without any change."""
    from slurm import queue

    ids = [s["job_id"] for s in rec["stages"] if s.get("job_id")]
    start = last_change = time.monotonic()
    seen = None
    while True:
        states = queue.job_states(ids)
        if all(queue.is_done(states.get(j, {}).get("state", "")) for j in ids):
            return states
        now = time.monotonic()
        mark = _progress(rec)
        if mark != seen:
            seen, last_change = mark, now
        if now - last_change > stall or now - start > limit:
            raise AssertionError(f"pipeline {rec['id']} made no progress for {now - last_change:.0f} s "
                                 f"({now - start:.0f} s in all):\n{describe(rec)}")
        time.sleep(2.0)
