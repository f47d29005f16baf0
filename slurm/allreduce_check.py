"""Pre-flight for a multi-node job: every rank all-reduces a buffer once, on the nodes the training will use.

    torchrun --nnodes=N --nproc-per-node=G ... python -m slurm.allreduce_check [--mib 64] [--timeout 180]

Run by the train job itself before the trainer (Stage.preflight), so a broken interconnect, a wrong
MASTER_ADDR or a firewall costs a minute, not a requeue loop of a 16-GPU job: NCCL on GPUs, gloo on CPU
(the local replica's fake-GPU nodes). Exits 0 with one line per rank, or 1 naming the rank and the error.
torch is imported inside main(): the slurm package stays torch-free on the login node.
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import sys
import time


def _ranks() -> tuple[int, int, int]:
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if "SLURM_PROCID" in env:
        return int(env["SLURM_PROCID"]), int(env.get("SLURM_NTASKS", "1")), int(env.get("SLURM_LOCALID", 0))
    return 0, 1, 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m slurm.allreduce_check", description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=float, default=64.0, help="buffer size per rank (MiB of float32)")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds for the rendezvous and the collective")
    p.add_argument("--iters", type=int, default=3)
    args = p.parse_args(argv)
    import torch
    import torch.distributed as dist

    rank, world, local = _ranks()
    host = os.environ.get("SLURMD_NODENAME") or socket.gethostname()  # the Slurm node (several on one test box)
    cuda = torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    try:
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend, rank=rank, world_size=world, init_method="env://",
                                timeout=datetime.timedelta(seconds=args.timeout))
        dev = torch.device("cuda", local) if cuda else torch.device("cpu")
        n = max(1, int(args.mib * (1 << 20) / 4))
        buf = torch.empty(n, device=dev)
        best = float("inf")
        for _ in range(max(1, args.iters)):
            buf.fill_(float(rank + 1))
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            dist.all_reduce(buf)
            if cuda:
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        want = world * (world + 1) / 2
        got = float(buf[0]), float(buf[-1])
        if got != (want, want):
            raise RuntimeError(f"all_reduce gave {got}, expected {want} on both ends of the buffer")
        # bus bandwidth as nccl-tests define it for all_reduce: 2 (w - 1) / w x bytes / time
        busbw = 2 * (world - 1) / world * n * 4 / best / 1e9 if world > 1 else 0.0
        print(f"[allreduce-check] ok: rank {rank}/{world} on {host} ({backend}, {args.mib:g} MiB, "
              f"{best * 1e3:.1f} ms, busbw {busbw:.2f} GB/s)", flush=True)
        dist.barrier()
        dist.destroy_process_group()
        return 0
    except Exception as e:  # one line that says where and what, then a non-zero exit for the job
        msg = " ".join(str(e).split())[:300]
        print(f"[allreduce-check] FAILED: rank {rank}/{world} on {host} ({backend}, MASTER_ADDR="
              f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}): {msg}; fix: check the nodes' "
              f"network (NCCL_SOCKET_IFNAME, NCCL_IB_DISABLE) or resubmit to let Slurm pick other nodes",
              file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
