"""The job scripts' module lines against real Lmod (Debian's lmod) and a small fake module tree."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap

import pytest
from conftest_slurm import lmod_tree, slurm_cluster, slurm_home  # noqa: F401  (fixtures)

from slurm.jobs import Stage, setup_lines
from slurm.profiles import load_cluster, resolve

MODULES = ("python/3.11.6-gcc-11.4.0", "cuda/12.6.0")
CLEAN_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/root"}  # like `env -i`: no `module` function, no MODULEPATH


def savio_like(tree, modules=MODULES):
    return dataclasses.replace(load_cluster("local"), module_use=(str(tree),), modules=modules)


def script_for(cluster) -> str:
    stage = Stage("train", ["true"], resolve(cluster, cpus=2))
    body = "\n".join(setup_lines(cluster, stage, venv=sys.prefix, wandb_mode="offline"))
    return (
        body
        + '\necho "PY=$FAKE_PYTHON_MODULE CUDA=$CUDA_HOME OMP=$OMP_NUM_THREADS WANDB=$WANDB_MODE"\nnvcc\n'
    )


def test_module_lines_work_without_a_module_function(lmod_tree):  # noqa: F811
    r = subprocess.run(
        ["bash", "-c", script_for(savio_like(lmod_tree))], env=CLEAN_ENV, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert "PY=3.11.6-gcc-11.4.0" in r.stdout and f"CUDA={lmod_tree}/_sw/cuda-12.6.0" in r.stdout
    assert "OMP=2 WANDB=offline" in r.stdout and "nvcc: fake CUDA 12.6.0" in r.stdout


def test_module_lines_work_with_lmod_already_initialised(lmod_tree):  # noqa: F811
    prelude = "source /usr/share/lmod/lmod/init/bash\nmodule purge\n"
    r = subprocess.run(
        ["bash", "-c", prelude + script_for(savio_like(lmod_tree))],
        env=CLEAN_ENV,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "PY=3.11.6-gcc-11.4.0" in r.stdout


def test_a_missing_module_stops_the_script(lmod_tree):  # noqa: F811
    cluster = savio_like(lmod_tree, modules=("cuda/99.0",))
    r = subprocess.run(["bash", "-c", script_for(cluster)], env=CLEAN_ENV, capture_output=True, text=True)
    assert r.returncode != 0
    assert "nvcc" not in r.stdout and "unknown" in (r.stderr + r.stdout).lower()


@pytest.mark.slurm
def test_module_lines_inside_a_job_submitted_from_env_i(slurm_cluster, lmod_tree, slurm_home):  # noqa: F811
    """The real thing: submitit + sbatch from a clean environment, so the job has no `module` function."""
    out = slurm_home / "out.txt"
    code = textwrap.dedent(f"""
        import dataclasses, submitit
        from slurm.jobs import Stage, StageRun, submitit_parameters
        from slurm.profiles import load_cluster, resolve
        cluster = dataclasses.replace(load_cluster("local"), module_use=({str(lmod_tree)!r},),
                                      modules={MODULES!r})
        stage = Stage("probe", ["bash", "-c", "echo PY=$FAKE_PYTHON_MODULE; nvcc; type module | head -n 1"],
                      resolve(cluster, cpus=1, time="00:05:00"))
        ex = submitit.SlurmExecutor(folder={str(slurm_home / "jobs")!r})
        ex.update_parameters(**submitit_parameters(cluster, stage, None, "disabled"))
        job = ex.submit(StageRun(stage))
        job.result()
        open({str(out)!r}, "w").write(open(job.paths.stdout).read())
    """)
    env = {**CLEAN_ENV, "PATH": f"{os.path.dirname(sys.executable)}:/usr/bin:/bin"}
    r = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=slurm_home, capture_output=True, text=True, timeout=180
    )
    assert r.returncode == 0, r.stderr[-2000:]
    log = out.read_text()
    assert "PY=3.11.6-gcc-11.4.0" in log and "nvcc: fake CUDA 12.6.0" in log
    assert "module is a function" in log
