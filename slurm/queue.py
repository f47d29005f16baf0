"""What Slurm says about jobs: sacct (with accounting), else squeue, plus the requeue count.

sacct lags squeue by a few seconds and forgets nothing; squeue is current but forgets finished jobs;
`scontrol show job` has the requeue count (Restarts=) while the controller still knows the job.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

TERMINAL = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
}


def _run(argv: list[str]) -> str | None:
    if not shutil.which(argv[0]):
        return None
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    return r.stdout if r.returncode == 0 else None


def job_states(job_ids: list[str]) -> dict[str, dict[str, Any]]:
    """{job id: {state, elapsed, exit_code, node, restarts}} for the jobs Slurm still knows."""
    ids = [j for j in job_ids if j]
    out: dict[str, dict[str, Any]] = {}
    if not ids:
        return out
    text = _run(["sacct", "-nP", "-X", "-j", ",".join(ids), "-o", "JobID,State,Elapsed,ExitCode,NodeList"])
    for line in (text or "").splitlines():
        jid, state, elapsed, exit_code, node = (line.split("|") + [""] * 5)[:5]
        out[jid] = {
            "state": state.split()[0] if state else "",
            "elapsed": elapsed,
            "exit_code": exit_code,
            "node": node,
        }
    text = _run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i|%T|%M|%R"])
    for line in (text or "").splitlines():  # squeue is fresher than sacct for jobs still queued or running
        jid, state, elapsed, reason = (line.split("|") + [""] * 4)[:4]
        out.setdefault(jid, {}).update({"state": state, "elapsed": elapsed, "reason": reason})
    for jid in ids:
        text = _run(["scontrol", "-o", "show", "job", jid])
        for tok in (text or "").split():
            if tok.startswith("Restarts="):
                out.setdefault(jid, {})["restarts"] = int(tok.split("=", 1)[1])
    return out


def is_done(state: str) -> bool:
    return state.split()[0] in TERMINAL if state else False


_CAUSE = ("Error", "error:", "Killed", "exited with code", "Traceback", "CANCELLED", "TIME LIMIT")


def why(log_path: str | None) -> str:
    """The line of a job's log that says best why it ended: the last error its stage printed."""
    try:
        lines = Path(log_path or "").read_text(errors="replace").splitlines()
    except OSError:
        return "no log"
    found = [x.strip() for x in lines if any(c in x for c in _CAUSE) and "submitit" not in x[:12]]
    causes = [x for x in found if "Error" in x and not x.startswith(("raise", "File "))]
    text = (causes or found or ["no error in the log"])[-1]
    return text if len(text) <= 200 else text[:197] + "..."
