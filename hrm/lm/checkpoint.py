"""Sharded checkpoints of an HRM-Text run with torch.distributed.checkpoint (DCP), and loading them back.

`<run>/step_N/` holds DCP's per-rank shards of {"model", "optim"} (the optimizer state includes the EMA),
`train_state.json` (step, data position, world size, ...) and `rng_rank<r>.pt`. It is written as `.step_N.tmp`
and renamed by rank 0 once every rank is done, then `latest.json` names it: a kill at any moment leaves the
previous checkpoint whole. DCP reshards on load, so a run saved on 2 ranks resumes on 1 or 8.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from hrm import dist, runstate
from hrm.data.format import atomic_write_json

LATEST = "latest.json"
STATE_FILE = "train_state.json"
LM_CONFIG_FILE = "lm_config.json"


def _step_of(p: Path) -> int:
    tail = p.name.removeprefix("step_")
    return int(tail) if p.name.startswith("step_") and tail.isdigit() else -1


def complete_steps(run_dir: Path) -> list[int]:
    """Steps with a whole checkpoint (train_state.json is written last), oldest first."""
    return sorted(_step_of(p) for p in Path(run_dir).glob("step_*")
                  if _step_of(p) >= 0 and (p / STATE_FILE).is_file())


def latest_step(run_dir: Path) -> int | None:
    try:
        step = int(json.loads((Path(run_dir) / LATEST).read_text())["step"])
        if (Path(run_dir) / f"step_{step}" / STATE_FILE).is_file():
            return step
    except (OSError, ValueError, KeyError, TypeError):
        pass  # missing or torn: fall back on the newest complete folder
    steps = complete_steps(run_dir)
    return steps[-1] if steps else None


def _state_dicts(model: torch.nn.Module, optim: torch.optim.Optimizer) -> dict[str, Any]:
    return {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optim)}


def save(run_dir: Path, step: int, model: torch.nn.Module, optim: torch.optim.Optimizer, train_state: dict,
         info: dist.DistInfo, keep: int = 2) -> Path:
    """Collective: write step_N (every rank its shards and RNG), publish it, keep the newest `keep`."""
    run_dir = Path(run_dir)
    final, tmp = run_dir / f"step_{step}", run_dir / f".step_{step}.tmp"
    if info.is_main and tmp.exists():
        shutil.rmtree(tmp)
    dist.barrier()
    tmp.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # one process without a group: no_dist is the intent
        dcp.save(_state_dicts(model, optim), checkpoint_id=str(tmp), no_dist=not torch_dist.is_initialized())
    runstate.atomic_torch_save(runstate.rng_state(info.device), tmp / f"rng_rank{info.rank}.pt")
    dist.barrier()
    if info.is_main:
        atomic_write_json(tmp / STATE_FILE, {**train_state, "step": step, "world_size": info.world_size})
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        atomic_write_json(run_dir / LATEST, {"step": step, "dir": final.name, "world_size": info.world_size})
        for old in complete_steps(run_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(run_dir / f"step_{old}", ignore_errors=True)
    dist.barrier()
    return final


def clean_stale(run_dir: Path) -> None:
    """Half-written `.step_N.tmp` folders of a killed save (rank 0, before anyone writes)."""
    for p in Path(run_dir).glob(".step_*.tmp"):
        shutil.rmtree(p, ignore_errors=True)


def load(run_dir: Path, step: int, model: torch.nn.Module, optim: Any, info: dist.DistInfo, reseed: int = 0) -> dict:
    """Load step_N into the (possibly sharded) model and optimizer; its train_state. Each rank's RNG comes back
    when the world size is the same; another world size reseeds from (reseed, rank, step) (training draws none)."""
    ckpt = Path(run_dir) / f"step_{step}"
    optim.init_state()  # the template must hold every state tensor for DCP to fill it
    sd = _state_dicts(model, optim)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(sd, checkpoint_id=str(ckpt), no_dist=not torch_dist.is_initialized())
    set_model_state_dict(model, sd["model"])
    set_optimizer_state_dict(model, optim, sd["optim"])
    state = json.loads((ckpt / STATE_FILE).read_text())
    rng_file = ckpt / f"rng_rank{info.rank}.pt"
    if state.get("world_size") == info.world_size and rng_file.is_file():
        runstate.set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=False), info.device)
    else:
        torch.manual_seed(reseed + 1000003 * info.rank + int(state["step"]))
    return state


def resolve_checkpoint(ckpt_dir: Path, step: int | None = None) -> tuple[Path, int]:
    """(run directory, step) of a run directory (its latest complete step unless `step`) or one of its step_N
    folders; ValueError in one line when there is no such checkpoint. Cheap: no weights are read."""
    ckpt_dir = Path(ckpt_dir)
    if _step_of(ckpt_dir) >= 0 and (ckpt_dir / STATE_FILE).is_file():
        run_dir, step = ckpt_dir.parent, _step_of(ckpt_dir) if step is None else step
    else:
        run_dir = ckpt_dir
    if not (run_dir / LM_CONFIG_FILE).is_file():
        raise ValueError(f"{run_dir} has no {LM_CONFIG_FILE}: not an hrm-lm run directory; fix: pass the "
                         f"checkpoint_path of an hrm-lm train run")
    if step is None:
        step = latest_step(run_dir)
        if step is None:
            raise ValueError(f"{run_dir} has no complete step_N checkpoint yet; fix: train longer, or wait for one")
    elif not (run_dir / f"step_{step}" / STATE_FILE).is_file():
        have = ", ".join(map(str, complete_steps(run_dir))) or "none"
        raise ValueError(f"{run_dir} has no complete step_{step}; fix: one of the steps {have}")
    return run_dir, step


def load_for_inference(ckpt_dir: Path, step: int | None = None, use_ema: bool = True):
    """(model, LMConfig, tokenizer dir or None) from a run directory (or one of its step_N folders), in one
    process with no process group: DCP reads and reshards the shards into a plain model; with use_ema the
    weights are the optimizer's EMA (what eval, export and the released weights use)."""
    from hrm.lm.model import LMConfig, build_lm

    run_dir, step = resolve_checkpoint(ckpt_dir, step)
    cfg_file = run_dir / LM_CONFIG_FILE
    cfg = LMConfig(**json.loads(cfg_file.read_text()))
    model = build_lm(cfg, device="cpu")
    model_sd = model.state_dict()
    want: dict[str, Any] = {"model": model_sd}
    if use_ema:  # only the EMA of each parameter, read from the optimizer state (keyed by parameter name)
        emas = {name: torch.empty_like(p) for name, p in model.named_parameters()}
        want["optim"] = {"state": {name: {"param_ema": t} for name, t in emas.items()}}
    with warnings.catch_warnings():  # "torch.distributed is disabled ... single process": that is the intent
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(want, checkpoint_id=str(run_dir / f"step_{step}"), no_dist=True)
    if use_ema:
        model_sd = {**model_sd, **emas}
    model.load_state_dict(model_sd)
    model.eval()
    tok = run_dir / "tokenizer"
    return model, cfg, (tok if (tok / "tokenizer.json").is_file() else None)
