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


def wait_for(pred: Callable[[], object], timeout: float, what: str, interval: float = 1.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_jobs_done(job_ids: list[str], timeout: float) -> dict[str, dict]:
    """Poll sacct/squeue until every job is in a terminal state (sacct lags a few seconds)."""
    from slurm import queue

    def done() -> dict[str, dict] | None:
        states = queue.job_states(job_ids)
        if all(queue.is_done(states.get(j, {}).get("state", "")) for j in job_ids):
            return states
        return None

    return wait_for(done, timeout, f"jobs {job_ids} to finish", interval=2.0)  # type: ignore[return-value]
