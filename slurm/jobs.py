"""One pipeline stage -> one Slurm job: the job script's setup lines, the submitit parameters, and the
callable that submitit runs inside the job.

Everything a job does before the stage's command is in its script, visible in `hrm-slurm preview`:
modules, the venv, OMP_NUM_THREADS, the W&B mode, and for training the rendezvous and NCCL settings.
Secrets (WANDB_API_KEY) stay in the submitting environment, which sbatch passes on; they are never
written here.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slurm.profiles import Cluster, Request, RequestError

STAGE_NAMES = ("data", "train", "eval", "collect")
SIGNAL_DELAY_S = 120  # Slurm signals the train job this long before its time limit (it may come 60 s early)


def signal_delay(time_min: int) -> int:
    """Seconds before the time limit for the save-and-requeue signal; half the limit for very short jobs."""
    return min(SIGNAL_DELAY_S, max(30, time_min * 60 // 2))


@dataclass
class Stage:
    """What one job runs and with which resources."""

    name: str  # data | train | eval | collect
    argv: list[str]  # the command run inside the job
    request: Request
    launcher: str = "single"  # single | torchrun (one task per node) | srun (one task per GPU)
    env: dict[str, str] = field(default_factory=dict)  # extra exports, shown in the script
    requeue: bool = False  # train: save on the time-limit / preemption signal and requeue
    max_requeues: int = 0  # of the time-limit requeues hrm-slurm makes itself (preemptions do not count)
    preemptible: bool = False  # on a preemptible QoS: --requeue, so that Slurm requeues it after a preemption
    checkpoint_path: str | None = None  # train/eval: the run directory (status.json, step_N)
    workdir: str | None = None
    mail_user: str | None = None  # mail=ADDRESS: Slurm mails on mail_type events
    mail_type: str = "FAIL"
    # run first, in the same allocation and with the same launcher; a non-zero exit fails the job before the
    # stage's command starts (a multi-node train: python -m slurm.allreduce_check)
    preflight: list[str] = field(default_factory=list)

    @property
    def status_file(self) -> str | None:
        return str(Path(self.checkpoint_path) / "status.json") if self.checkpoint_path else None


# --- the job script ---------------------------------------------------------------------------------------


def setup_lines(cluster: Cluster, stage: Stage, venv: str | None, wandb_mode: str | None) -> list[str]:
    """The shell lines submitit puts before `srun`: everything the job sets up, nothing hidden."""
    lines = ["set -eo pipefail"]
    if cluster.modules or cluster.module_use:
        lines.append(f"# modules (cluster profile '{cluster.name}')")
        if cluster.lmod_init:
            inits = " ".join(shlex.quote(p) for p in cluster.lmod_init)
            # a job submitted from a clean environment (env -i) has no `module` function: load Lmod's init
            lines.append(
                f"if ! type module >/dev/null 2>&1; then for f in {inits}; do "
                f'if [ -f "$f" ]; then source "$f"; break; fi; done; fi'
            )
        for path in cluster.module_use:
            lines.append(f"module use {shlex.quote(path)}")
        if cluster.modules:
            lines.append("module load " + " ".join(shlex.quote(m) for m in cluster.modules))
    if venv:
        lines.append(f"source {shlex.quote(str(Path(venv) / 'bin' / 'activate'))}")
    req = stage.request
    procs_per_task = req.gpus if stage.launcher == "torchrun" else 1  # torchrun starts one process per GPU
    lines.append(f"export OMP_NUM_THREADS={max(1, req.cpus_per_task // max(1, procs_per_task))}")
    if wandb_mode and wandb_mode != "auto":
        lines.append(f"export WANDB_MODE={shlex.quote(wandb_mode)}")
    # Slurm 22.05-23.02 do not pass sbatch's --cpus-per-task on to srun: each task would get one CPU
    lines.append("export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK")
    if stage.launcher in ("torchrun", "srun"):
        lines += [
            "# rendezvous: the first node of the allocation (this script runs there), a port free on it now",
            'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
            "export MASTER_PORT=$(python -c 'import socket; s = socket.socket(); s.bind((\"\", 0)); "
            "print(s.getsockname()[1])')",
            f"export WORLD_SIZE=$((SLURM_JOB_NUM_NODES * {max(1, req.gpus)}))",
            "export TORCH_NCCL_ASYNC_ERROR_HANDLING=1",
            "export NCCL_DEBUG=${NCCL_DEBUG:-WARN}",
        ]
    part = cluster.partitions.get(req.partition)
    for k, v in {**cluster.env, **(part.env if part else {}), **stage.env}.items():
        lines.append(f"export {k}={shlex.quote(v)}")
    return lines


def submitit_parameters(
    cluster: Cluster, stage: Stage, venv: str | None, wandb_mode: str | None, dependency: str | None = None
) -> dict[str, Any]:
    """The parameters given to submitit's SlurmExecutor.update_parameters for this stage."""
    req = stage.request
    params: dict[str, Any] = {
        "job_name": f"hrm-{stage.name}",
        "partition": req.partition,
        "time": req.time_min,
        "nodes": req.nodes,
        "ntasks_per_node": req.tasks_per_node,
        "cpus_per_task": req.cpus_per_task,
        "setup": setup_lines(cluster, stage, venv, wandb_mode),
        "stderr_to_stdout": True,
        "signal_delay_s": signal_delay(req.time_min),
    }
    if req.gres:
        params["gres"] = req.gres
    if req.mem:
        params["mem"] = str(req.mem)
    if req.account:
        params["account"] = req.account
    if req.qos:
        params["qos"] = req.qos
    if stage.mail_user:
        params["mail_user"] = stage.mail_user
        params["mail_type"] = stage.mail_type
    extra: dict[str, Any] = {}
    if dependency:
        params["dependency"] = dependency
        extra["kill-on-invalid-dep"] = "yes"  # a failed stage cancels what waits on it
    if stage.requeue or stage.preemptible:
        extra["requeue"] = True
    if stage.workdir:
        extra["chdir"] = stage.workdir
    if extra:
        params["additional_parameters"] = extra
    return params


# --- choosing stages: stages=NAME,... and mail=ADDRESS -----------------------------------------------------


def stage_keys(args: list[str]) -> tuple[list[str], list[str] | None, str | None]:
    """Take `stages=data,train` and `mail=ADDRESS` out of the arguments; the rest goes to the plan."""
    rest: list[str] = []
    names: list[str] | None = None
    mail: str | None = None
    for a in args:
        key, _, value = a.partition("=")
        if key == "stages":
            names = [n.strip() for n in value.split(",") if n.strip()]
            bad = [n for n in names if n not in STAGE_NAMES] if names else ["(none)"]
            if bad:
                raise RequestError(f"unknown stage '{bad[0]}' in stages={value}; fix: stages= a comma list of "
                                   f"{', '.join(STAGE_NAMES)}")
        elif key == "mail":
            if not re.fullmatch(r"[^@\s,]+@[^@\s,]+\.[^@\s,]+", value):
                raise RequestError(f"mail={value!r} is not an e-mail address; fix: mail=you@berkeley.edu")
            mail = value
        else:
            rest.append(a)
    return rest, names, mail


def select_stages(stages: list[Stage], names: list[str] | None, data_path: Path) -> list[Stage]:
    """The named stages (all when `names` is None), refused when what they read is not there yet: a stage
    submitted on its own has no afterok to wait on."""
    if names is None:
        return stages
    chosen = [s for s in stages if s.name in names]
    left_out = {s.name for s in stages} - set(names)
    if "data" in left_out and {"train", "eval"} & set(names):
        raise RequestError(f"no dataset at {data_path} yet; fix: build it first (stages=data), or include data "
                           f"in stages=")
    for s in chosen:
        if s.name == "eval" and "train" not in names:
            try:
                latest_step(s.checkpoint_path or ".")
            except RuntimeError:
                raise RequestError(f"no checkpoint to evaluate in {s.checkpoint_path}; fix: train first "
                                   f"(stages=train), or checkpoint_path=RUN_DIR") from None
    return chosen


def add_mail(stages: list[Stage], mail: str | None) -> None:
    """Mail on any stage's failure and on the end of the last one: one mail for a pipeline that succeeds."""
    for i, s in enumerate(stages):
        s.mail_user = mail
        s.mail_type = "END,FAIL" if i == len(stages) - 1 else "FAIL"


def sbatch_text(folder: Path, params: dict[str, Any], python: str = sys.executable) -> str:
    """The exact script submitit writes for these parameters (its own generator, nothing submitted)."""
    from submitit.slurm.slurm import _make_sbatch_string

    command = " ".join([shlex.quote(python), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    return _make_sbatch_string(command=command, folder=folder, **params)


# --- what runs inside the job -----------------------------------------------------------------------------


def _ignore_usr2() -> None:
    # Slurm sends --signal=USR2 to every process of the step. Only submitit's handler (in our parent)
    # should act on it; the trainer is told to save through SIGUSR1/SIGTERM instead.
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def latest_step(checkpoint_path: str) -> str:
    steps = [p for p in Path(checkpoint_path).glob("step_*") if re.fullmatch(r"step_\d+", p.name)]
    if not steps:
        raise RuntimeError(f"no step_N checkpoint in {checkpoint_path}")
    return str(max(steps, key=lambda p: int(p.name.split("_")[1])))


REQUEUES_FILE = "hrm_requeues.txt"  # the time-limit requeues hrm-slurm made (SLURM_RESTART_COUNT adds preemptions)


def own_requeues(checkpoint_path: str | None) -> int:
    try:
        return int((Path(checkpoint_path or ".") / REQUEUES_FILE).read_text())
    except (OSError, ValueError):
        return 0


class StageRun:
    """The callable submitit pickles and runs in each task of the job: runs the stage's command."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        self._proc: subprocess.Popen | None = None
        self._terminated = False

    def __getstate__(self) -> dict[str, Any]:
        return {"stage": self.stage, "_proc": None, "_terminated": False}

    def argv(self) -> list[str]:
        argv = list(self.stage.argv)
        for i, a in enumerate(argv):
            if "{latest_step}" in a:
                argv[i] = a.replace("{latest_step}", latest_step(self.stage.checkpoint_path or "."))
        return self._launch(argv)

    def _launch(self, argv: list[str]) -> list[str]:
        if self.stage.launcher == "torchrun":
            env = os.environ
            argv = [
                sys.executable, "-m", "hrm.torchrun",  # torchrun with a one-line failure report
                f"--nnodes={env.get('SLURM_JOB_NUM_NODES', '1')}",
                f"--nproc-per-node={self.stage.request.gpus}",
                f"--node-rank={env.get('SLURM_NODEID', '0')}",
                f"--master-addr={env.get('MASTER_ADDR', '127.0.0.1')}",
                f"--master-port={env.get('MASTER_PORT', '29500')}",
                # torchrun SIGKILLs its workers this long after forwarding SIGTERM (default 30 s): give the
                # trainer's save the time hrm-slurm itself waits for it
                f"--shutdown-timeout={self._save_wait()}",
                "--no-python",
                *argv,
            ]
        return argv

    def _save_wait(self) -> int:
        return max(10, signal_delay(self.stage.request.time_min) - 20)

    def __call__(self) -> dict[str, Any]:
        rank = int(os.environ.get("SLURM_PROCID", "0"))
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        if self.stage.requeue and rank == 0 and self.stage.checkpoint_path:
            # `hrm-slurm status` shows this after Slurm has forgotten the job
            Path(self.stage.checkpoint_path).mkdir(parents=True, exist_ok=True)
            (Path(self.stage.checkpoint_path) / "slurm_restarts.txt").write_text(f"{restarts}\n")
        argv = self.argv()
        if self.stage.preflight:
            check = self._launch(list(self.stage.preflight))
            print(f"[hrm-slurm] stage {self.stage.name}: pre-flight {shlex.join(check)}", flush=True)
            rc = subprocess.run(check, preexec_fn=_ignore_usr2).returncode
            if rc != 0:
                raise RuntimeError(f"stage {self.stage.name}: pre-flight {shlex.join(self.stage.preflight)} exited "
                                   f"with code {rc} (see its FAILED line above); the stage did not start")
        print(f"[hrm-slurm] stage {self.stage.name} (restart {restarts}): {shlex.join(argv)}", flush=True)
        previous = signal.getsignal(signal.SIGUSR2)

        def on_usr2(signum: int, frame: Any) -> None:
            if rank != 0:  # submitit only acts on rank 0; the other ranks' trainers must save too
                self._stop_child()
            elif callable(previous):
                previous(signum, frame)  # submitit: calls self.checkpoint(), requeues, exits

        def on_term(signum: int, frame: Any) -> None:
            # Slurm sends SIGTERM to every process of the step: at a preemption (then, after GraceTime, it
            # kills and requeues the job), a cancel, or the time limit. The stage's process saves by itself.
            self._terminated = True

        # Only the train stage saves and requeues at the time-limit signal; for the others USR2 means nothing
        # (its default action would kill an evaluation two minutes before its limit).
        signal.signal(signal.SIGUSR2, on_usr2 if self.stage.requeue else signal.SIG_IGN)
        if self.stage.requeue or self.stage.preemptible:
            signal.signal(signal.SIGTERM, on_term)
        self._proc = subprocess.Popen(argv, preexec_fn=_ignore_usr2)
        rc = self._wait()
        state = self._status()
        print(f"[hrm-slurm] stage {self.stage.name} exited with {rc}; status {state}", flush=True)
        if self._terminated and rc != 0:
            # A job that ends by itself inside its preemption grace time counts as done, not requeued: stay
            # until Slurm ends the grace time, kills the job and requeues it (or ends it, after a cancel).
            print("[hrm-slurm] SIGTERM (preemption, cancel or time limit): the stage has stopped; waiting for "
                  "Slurm to requeue or end the job", flush=True)
            while True:
                time.sleep(60)
        if rc != 0 and not (rank != 0 and state.get("state") == "interrupted"):
            raise RuntimeError(f"stage {self.stage.name}: {argv[0]} exited with code {rc}")
        return {"stage": self.stage.name, "returncode": rc, "status": state, "restarts": restarts}

    def _wait(self, timeout: float | None = None) -> int | None:
        # Poll with a timeout: a blocking Popen.wait() holds a lock that the signal handler's own wait needs.
        assert self._proc is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                return self._proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                if deadline is not None and time.monotonic() > deadline:
                    return None

    def _status(self) -> dict[str, Any]:
        if not self.stage.status_file:
            return {}
        try:
            return json.loads(Path(self.stage.status_file).read_text())
        except (OSError, ValueError):
            return {}

    def _stop_child(self) -> None:
        """Ask the trainer to finish its step and save (torchrun forwards SIGTERM to its workers)."""
        if self._proc is None or self._proc.poll() is not None:
            return
        sig = signal.SIGTERM if self.stage.launcher == "torchrun" else signal.SIGUSR1
        print(f"[hrm-slurm] time limit or preemption: sending {sig.name} to the trainer", flush=True)
        self._proc.send_signal(sig)
        if self._wait(timeout=self._save_wait()) is None:
            print("[hrm-slurm] the trainer did not exit in time; requeueing anyway", flush=True)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit calls this on rank 0 at the signal: save through the trainer, then requeue (bounded)."""
        import submitit

        self._stop_child()
        done = own_requeues(self.stage.checkpoint_path)
        if done >= self.stage.max_requeues:
            print(
                f"[hrm-slurm] not requeueing: {done} time-limit requeues already "
                f"(max_requeues={self.stage.max_requeues})",
                flush=True,
            )
            return None
        print(
            f"[hrm-slurm] requeueing (requeue {done + 1} of at most {self.stage.max_requeues})",
            flush=True,
        )
        if self.stage.checkpoint_path:
            path = Path(self.stage.checkpoint_path) / REQUEUES_FILE
            tmp = path.with_suffix(".tmp")
            tmp.write_text(f"{done + 1}\n")
            tmp.replace(path)
        return submitit.helpers.DelayedSubmission(StageRun(self.stage), *args, **kwargs)
