"""`hrm-slurm run-local`: the same pipeline as `submit`, each stage a process on this machine.

For laptops and machines without Slurm: the plan (checks, data recipe, train/eval/collect commands) is
the one `submit` would send, so a local demo and a cluster run cannot drift apart.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time

from slurm import lm_stages, pipeline
from slurm.jobs import StageRun, select_stages, stage_keys
from slurm.profiles import RequestError

EXIT_INTERRUPTED = 3  # hrm-train saved its state on a signal; re-run to resume


def run_local(args: list[str]) -> int:
    args, names, _ = stage_keys(args)  # mail= means nothing without Slurm
    experiment, options, _ = pipeline.split_args(args)
    extra = [] if "cluster" in options else ["cluster=local"]
    p = pipeline.plan([*extra, *args], run_id=experiment or "run")
    stages = select_stages(p.stages, names, p.data_path)
    env = os.environ.copy()
    env.setdefault("WANDB_MODE", p.wandb_mode or "offline")
    env.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)))))
    bin_dir = os.path.dirname(sys.executable)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")  # the venv's hrm-* commands first
    print(f"[hrm] running {experiment or 'the pipeline'} locally; run directory {p.run_dir}", flush=True)
    for name, why in p.skipped.items():
        print(f"[hrm] stage {name}: skipped ({why})", flush=True)
    for stage in stages:
        argv = StageRun(stage).argv()
        print(f"[hrm] stage {stage.name}: {shlex.join(argv)}", flush=True)
        t0 = time.time()
        rc = subprocess.run(argv, env={**env, **stage.env}, cwd=stage.workdir).returncode
        print(f"[hrm] stage {stage.name} finished in {time.time() - t0:.0f} s (exit {rc})", flush=True)
        if rc == EXIT_INTERRUPTED and stage.name == "train":
            print("[hrm] training was interrupted and saved its state; run the same command to resume", flush=True)
            return rc
        if rc != 0:
            raise RequestError(f"stage {stage.name} failed (exit {rc}); fix the error above and re-run the same "
                               f"command (finished stages are skipped or resume)")
    if any(stage.name == "eval" for stage in stages) and not lm_stages.is_lm_experiment(experiment):
        show_solved(p, env)  # a puzzle drawing; HRM-Text has none
    ran = f"results in {p.run_dir / 'results'}" if not names or "collect" in names else "stages " + ",".join(names)
    print(f"[hrm] done: {ran}", flush=True)
    return 0


def show_solved(p: pipeline.Plan, env: dict[str, str]) -> None:
    """Draw one test puzzle the model solved (before/after) and where the all-puzzles page is.

    A separate process, since reading the predictions needs torch; a failure here only costs the picture."""
    argv = [sys.executable, "-m", "hrm.data.solved", str(p.run_dir), "--data", str(p.data_path)]
    if subprocess.run(argv, env=env).returncode != 0:
        print("[hrm] (no solved puzzle to show: see the line above)", flush=True)
