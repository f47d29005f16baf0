"""A run is a directory: config, `step_N` weights, the full training state, status and metrics.

The full state (model, both optimizers, sparse embedding, per-rank ACT carry and RNG, step, data
position) is written to a temporary directory and renamed into place, so a kill at any moment leaves
either the previous state or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

from hrm import dist
from hrm.data.format import atomic_write_json

STATUS_FILE = "status.json"
LATEST_FILE = "latest_state.json"
STATE_PREFIX = "state_step_"
EXIT_INTERRUPTED = 3  # the run saved its state on a signal; re-run the same command to resume


def atomic_torch_save(obj, path: Path) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_status(run_dir: Path, state: str, step: int, total_steps: int, **extra) -> None:
    atomic_write_json(Path(run_dir) / STATUS_FILE,
                      {"state": state, "step": step, "total_steps": total_steps, "time": time.time(), **extra})


def read_status(run_dir: Path) -> dict | None:
    path = Path(run_dir) / STATUS_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except ValueError:
        return None  # cut short by a crash before atomic writes: no status


def mark_failed(run_dir: Path, reason: str) -> None:
    """status.json says `failed` and why (keeping the step it had reached): a crash never leaves `running`."""
    old = read_status(run_dir) or {}
    extra = {k: v for k, v in old.items() if k not in ("state", "step", "total_steps", "time", "reason")}
    try:
        write_status(run_dir, "failed", old.get("step", 0), old.get("total_steps", 0), reason=reason, **extra)
    except OSError:
        pass  # the run directory cannot be written (disk full, removed): the printed line says why


def save_weights(run_dir: Path, step: int, state_dict: dict) -> Path:
    path = Path(run_dir) / f"step_{step}"
    atomic_torch_save(state_dict, path)
    return path


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_state(run_dir: Path, step: int, common: dict, per_rank: dict, info: dist.DistInfo) -> None:
    """Collective: every rank writes its own part, rank 0 the shared part, then rank 0 publishes."""
    run_dir = Path(run_dir)
    name = f"{STATE_PREFIX}{step}"
    tmp = run_dir / f".{name}.tmp"
    if info.is_main and tmp.exists():
        shutil.rmtree(tmp)
    dist.barrier()
    tmp.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(per_rank, tmp / f"rank{info.rank}.pt")
    dist.barrier()
    if info.is_main:
        atomic_torch_save(common, tmp / "common.pt")
        final = run_dir / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        previous = _latest_dir(run_dir)
        atomic_write_json(run_dir / LATEST_FILE, {"step": step, "dir": name, "world_size": info.world_size})
        for old in run_dir.glob(f"{STATE_PREFIX}*"):  # the one before stays: resume falls back on it
            if old.name not in (name, previous):
                shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def _latest_dir(run_dir: Path) -> str | None:
    try:
        return json.loads((Path(run_dir) / LATEST_FILE).read_text())["dir"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def clean_stale(run_dir: Path) -> list[str]:
    """Remove what a killed run left half-written (temp state dirs, temp files); the names removed."""
    removed = []
    for p in list(Path(run_dir).glob(f".{STATE_PREFIX}*.tmp")) + list(Path(run_dir).glob(".*.tmp-*")):
        pid = p.name.rsplit("-", 1)[-1]
        if ".tmp-" in p.name and pid.isdigit() and _alive(int(pid)):
            continue  # another process (an hrm-evaluate of this run) is writing it now
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p.name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _state_candidates(run_dir: Path) -> tuple[list[Path], str | None]:
    """State dirs to try, newest first (the one latest_state.json names first), and a problem with that file."""
    run_dir = Path(run_dir)
    latest = run_dir / LATEST_FILE
    problem, named = None, None
    if latest.is_file():
        try:
            named = json.loads(latest.read_text())["dir"]
            if not isinstance(named, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            problem = f"{latest} is corrupt"

    def step_of(p: Path) -> int:
        tail = p.name[len(STATE_PREFIX):]
        return int(tail) if tail.isdigit() else -1

    dirs = sorted((p for p in run_dir.glob(f"{STATE_PREFIX}*") if p.is_dir() and step_of(p) >= 0),
                  key=step_of, reverse=True)
    if named is not None:
        dirs = [run_dir / named, *[d for d in dirs if d.name != named]]
    return dirs, problem


def load_state(run_dir: Path, info: dist.DistInfo, map_location) -> tuple[dict, dict | None] | None:
    """(common, this rank's part) of the latest state, or None for a fresh run.

    The per-rank part is None when the world size changed: the run resumes with fresh ACT carries.
    A corrupt latest_state.json or a truncated state file is named and the previous complete state resumes (a
    one-line notice); ValueError (one line) when no complete state is left.
    """
    run_dir = Path(run_dir)
    if info.is_main and run_dir.is_dir():
        clean_stale(run_dir)
    candidates, problem = _state_candidates(run_dir)
    if not candidates:
        if problem:
            raise ValueError(f"{problem} and no state_step_N directory is left: delete {run_dir / LATEST_FILE} "
                             f"to start over, or use a new checkpoint_path")
        return None
    for state_dir in candidates:
        try:
            common = _load(state_dir / "common.pt", map_location)
            rank_file = state_dir / f"rank{info.rank}.pt"
            mine = None
            if _saved_world_size(state_dir, common, run_dir) == info.world_size and rank_file.is_file():
                mine = _load(rank_file, map_location)
        except ValueError as e:
            problem = str(e)
            continue
        if problem and info.is_main:
            print(f"hrm-train: note: {problem}; resuming from the previous complete state {state_dir.name}",
                  file=sys.stderr, flush=True)
        return common, mine
    raise ValueError(f"{problem}, and no earlier complete state is left: delete the state_step_* directories and "
                     f"{LATEST_FILE} in {run_dir} to start over (step_N weights stay), or use a new checkpoint_path")


def _load(path: Path, map_location):
    if not path.is_file():
        raise ValueError(f"{path} is missing")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:
        raise ValueError(f"{path} is truncated or unreadable ({type(e).__name__})") from None


def _saved_world_size(state_dir: Path, common: dict, run_dir: Path) -> int:
    """The world size the state was saved with: latest_state.json when it names this dir, else its rank files."""
    try:
        meta = json.loads((run_dir / LATEST_FILE).read_text())
        if meta.get("dir") == state_dir.name:
            return int(meta["world_size"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return len(list(state_dir.glob("rank*.pt")))


class StopSignal:
    """Turns SIGTERM / SIGUSR1 / SIGINT into a flag the training loop checks after every step."""

    SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict = {}

    def install(self) -> StopSignal:
        for name in self.SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C means "now"
        self.received = signal.Signals(signum).name

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def requested(self) -> bool:
        return self.received is not None
