"""Process-group set-up for CPU, one GPU, torchrun, or ranks started directly by `srun`."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_ranks() -> tuple[int, int, int] | None:
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:  # torchrun (or a user who set them)
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1 and "MASTER_ADDR" in env:
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
    return None


def setup(device: str = "auto") -> DistInfo:
    """Start the process group when launched with several ranks; pick the device."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but no CUDA GPU is visible: check `nvidia-smi` and CUDA_VISIBLE_DEVICES, "
                         "or use device=cpu")
    ranks = _env_ranks()
    if ranks is None:
        return DistInfo(device=torch.device(device))
    rank, world_size, local_rank = ranks
    if world_size == 1:
        return DistInfo(device=torch.device(device))
    os.environ.setdefault("MASTER_PORT", "29500")
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        dev = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, init_method="env://")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_flags(flags: list[bool], device: torch.device) -> list[bool]:
    """Each flag true on every rank if it is true on any, in one collective: a decision every rank must take
    at the same step (stop, save) cannot rest on one rank's clock, or the ranks part ways and hang."""
    if not dist.is_initialized():
        return list(flags)
    t = torch.tensor([1 if f else 0 for f in flags], device=device, dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(x) for x in t.tolist()]


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
