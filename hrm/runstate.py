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
    return json.loads(path.read_text()) if path.is_file() else None


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
        atomic_write_json(run_dir / LATEST_FILE, {"step": step, "dir": name, "world_size": info.world_size})
        for old in run_dir.glob(f"{STATE_PREFIX}*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def load_state(run_dir: Path, info: dist.DistInfo, map_location) -> tuple[dict, dict | None] | None:
    """(common, this rank's part) of the latest state, or None for a fresh run.

    The per-rank part is None when the world size changed: the run resumes with fresh ACT carries.
    """
    latest = Path(run_dir) / LATEST_FILE
    if not latest.is_file():
        return None
    meta = json.loads(latest.read_text())
    state_dir = Path(run_dir) / meta["dir"]
    common = torch.load(state_dir / "common.pt", map_location=map_location, weights_only=False)
    rank_file = state_dir / f"rank{info.rank}.pt"
    if meta.get("world_size") != info.world_size or not rank_file.is_file():
        return common, None
    return common, torch.load(rank_file, map_location=map_location, weights_only=False)


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
