"""Where numbers go: `metrics.jsonl` in the run directory (always), W&B (online, offline or disabled), the console.

W&B never blocks a run: `auto` is online only when a key is configured, and an online start that fails
falls back to offline with one line saying so (sync later with `wandb sync`).
"""

from __future__ import annotations

import json
import netrc
import os
import time
import uuid
from pathlib import Path

from rich.console import Console

console = Console(stderr=False, highlight=False, soft_wrap=True)  # a path in a log stays on one line
METRICS_FILE = "metrics.jsonl"
WANDB_MODES = ("auto", "online", "offline", "disabled")


def flatten(metrics: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in metrics.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def _wandb_key_configured() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_wandb_mode(mode: str) -> str:
    if mode not in WANDB_MODES:
        raise ValueError(f"wandb_mode={mode!r}: choose one of {', '.join(WANDB_MODES)}")
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE")
    if env in ("online", "offline", "disabled"):
        return env
    if env == "dryrun":
        return "offline"
    return "online" if _wandb_key_configured() else "offline"


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a torn last line from a kill: ignore it and what follows
    return rows


class Tracker:
    """Rank 0 only; other ranks get a Tracker with enabled=False that does nothing."""

    def __init__(self, run_dir: Path, config: dict, project: str, run_name: str, mode: str,
                 enabled: bool = True, resume_step: int | None = None):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.wandb_run = None
        self.mode = resolve_wandb_mode(mode)
        if not enabled:
            return
        self._truncate_after(resume_step)
        self._file = open(self.run_dir / METRICS_FILE, "a", buffering=1)  # noqa: SIM115
        if self.mode != "disabled":
            self._start_wandb(config, project, run_name)

    def _truncate_after(self, step: int | None) -> None:
        """On resume, drop lines logged after the saved state: they will be logged again."""
        path = self.run_dir / METRICS_FILE
        rows = read_metrics(self.run_dir)
        keep = [r for r in rows if step is not None and r.get("step", 0) <= step]
        if path.exists() and len(keep) != len(rows):
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
            os.replace(tmp, path)

    def _start_wandb(self, config: dict, project: str, run_name: str) -> None:
        import wandb

        id_file = self.run_dir / "wandb_id.txt"
        if id_file.is_file():
            run_id = id_file.read_text().strip()
        else:
            run_id = uuid.uuid4().hex[:8]
            id_file.write_text(run_id)
        kwargs = dict(project=project, name=run_name, config=config, dir=str(self.run_dir), id=run_id,
                      resume="allow", settings=wandb.Settings(init_timeout=30, x_disable_stats=True))
        try:
            self.wandb_run = wandb.init(mode=self.mode, **kwargs)
        except Exception as e:  # no network, bad key, service down: never lose the run over it
            if self.mode != "online":
                raise
            console.print(f"[yellow]W&B online start failed ({type(e).__name__}: {e}); logging offline "
                          f"instead, sync later with `wandb sync {self.run_dir}/wandb`[/]")
            self.mode = "offline"
            self.wandb_run = wandb.init(mode="offline", **kwargs)

    def log(self, metrics: dict, step: int) -> None:
        if not self.enabled:
            return
        flat = flatten(metrics)
        self._file.write(json.dumps({"step": step, "time": round(time.time(), 3), **flat}) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log(metrics, step=step)

    def finish(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None
