"""`hrm-doctor memory +experiment=hrmtext_L`: will an HRM-Text step fit on this GPU (Savio: a 24 GB A5000)?

Two answers, side by side:
- the analytic estimate per GPU under FSDP2 (hrm/lm/cost.py): the sharded fp32 state (weights, grads,
  Adam moments, EMA), the bf16 parameters that reshard_after_forward=False keeps gathered, the saved
  activations of the module steps that run with gradient, and the logits with their fp32 loss copies;
- on CUDA, a measured probe: one forward + backward of the real model in bf16 on this GPU at each token
  budget, in a child process (an out-of-memory ends the child, not the report), plus the sharded state that
  the other ranks would hold in a real run.
On CPU the probe counts the bytes the autograd graph saves for backward, which checks the activation term.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from hrm.lm import cost
from hrm.lm.config import model_sizes


def synthetic_batch(vocab: int, tokens: int, seed: int = 0, mean_len: int = 256) -> Any:
    """Samples of random lengths (prefix >= 1, response >= 2) packed into one stream of `tokens` slots."""
    import numpy as np

    from hrm.lm.packing import pack

    rng = np.random.default_rng(seed)
    samples, used = [], 0
    while True:
        n = int(rng.integers(mean_len // 2, mean_len * 3 // 2 + 1))
        p = int(rng.integers(1, n - 1))
        inst = rng.integers(1, vocab, size=p)
        resp = rng.integers(1, vocab, size=n - p + 1)  # the packed length is p + r - 1 = n
        if used + n > tokens:
            break
        samples.append((inst, resp))
        used += n
    return pack(samples, tokens), samples


def saved_activation_bytes(model: Any, batch: Any, bp_steps: int) -> int:
    """Bytes of the distinct tensors autograd keeps for backward during one forward (any device)."""
    import torch

    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()  # views of one tensor share a storage: count it once
        seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
        return t

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(batch, bp_steps=bp_steps)
    del logits
    return sum(n for ptr, n in seen.items() if ptr not in params)


def _probe(spec: dict[str, Any]) -> dict[str, Any]:
    """Child process: build the model on CUDA in bf16, one forward + backward at spec['tokens']."""
    import torch

    from hrm.lm.model import build_lm, lm_config, lm_loss

    cfg = lm_config(spec["size"], spec["vocab_size"], **spec.get("overrides", {}))
    model = build_lm(cfg, device=torch.device("cuda")).to(torch.bfloat16)
    batch, _ = synthetic_batch(cfg.vocab_size, spec["tokens"])
    batch = batch.to("cuda")
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    try:
        loss, _ = lm_loss(model(batch, bp_steps=spec["bp_steps"]), batch.labels)
        loss.backward()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return {"ok": True, "peak_gib": peak / cost.GIB, "model_gib": base / cost.GIB}
    except torch.cuda.OutOfMemoryError:
        return {"ok": False, "status": "out of memory"}


def lm_memory_report(size: str, vocab_size: int, tokens: list[int], world: int, gpu_type: str,
                     probe: bool, overrides: dict[str, Any] | None = None, bp_steps: int = cost.FULL_BP,
                     timeout: float = 600) -> dict[str, Any]:
    shape = cost.shape_of({**model_sizes()[size], **(overrides or {}), "vocab_size": vocab_size})
    card = cost.GPU_MEMORY_GIB.get(gpu_type)
    rows = []
    for t in tokens:
        est = cost.memory_estimate(shape, t, world, bp_steps=bp_steps)
        row: dict[str, Any] = {"tokens_per_gpu": t, "estimate": vars(est),
                               "fits": est.fits(card) if card else None}
        if probe:
            spec = {"size": size, "vocab_size": vocab_size, "tokens": t, "bp_steps": bp_steps,
                    "overrides": overrides or {}}
            r = subprocess.run([sys.executable, "-m", "hrm.lm.memory", "_probe"], input=json.dumps(spec),
                               capture_output=True, text=True, timeout=timeout)
            got = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 and r.stdout.strip() else {
                "ok": False, "status": (r.stderr.strip().splitlines() or ["probe failed"])[-1][:200]}
            if got.get("ok"):  # the probe holds bf16 weights only: add this rank's share of the fp32 state
                got["with_sharded_state_gib"] = got["peak_gib"] + est.sharded_state
            row["measured"] = got
        rows.append(row)
    return {"size": size, "params": cost.num_params(shape), "world_size": world, "gpu_type": gpu_type,
            "gpu_gib": card, "bp_steps": bp_steps, "rows": rows,
            "max_tokens_per_gpu": cost.max_tokens_per_gpu(shape, world, card) if card else None}


def print_lm_memory(rep: dict[str, Any]) -> None:
    print(f"HRM-Text {rep['size']} ({rep['params'] / 1e6:,.1f}M parameters) on {rep['world_size']} x "
          f"{rep['gpu_type']} ({rep['gpu_gib']} GiB each), FSDP2, bp_steps {rep['bp_steps']}; analytic GiB per GPU:")
    print(f"{'tokens/GPU':>11} {'state':>7} {'params':>7} {'activ.':>7} {'logits':>7} {'total':>7}  fits  measured")
    for r in rep["rows"]:
        e, m = r["estimate"], r.get("measured")
        meas = "" if m is None else (f"{m['with_sharded_state_gib']:.1f} GiB" if m.get("ok") else m["status"])
        fits = {True: "yes", False: "NO", None: "?"}[r["fits"]]
        print(f"{r['tokens_per_gpu']:>11,} {e['sharded_state']:>7.2f} {e['gathered_params']:>7.2f} "
              f"{e['activations']:>7.2f} {e['logits']:>7.2f} {e['total']:>7.2f}  {fits:<4}  {meas}")
    if rep["max_tokens_per_gpu"] is not None:
        print(f"largest token budget per GPU that fits (90% of the card): ~{rep['max_tokens_per_gpu']:,} "
              f"(global_batch_size = that x {rep['world_size']})")


def main(argv: list[str]) -> int:
    """`hrm-doctor memory +experiment=hrmtext_* [key=value] [--gpus N] [--gpu-type T] [--batch TOKENS,..]`."""
    from slurm import lm_stages
    from slurm.profiles import RequestError

    if argv[:1] == ["_probe"]:
        print(json.dumps(_probe(json.loads(sys.stdin.read()))))
        return 0
    p = argparse.ArgumentParser(prog="hrm-doctor memory", description="HRM-Text memory per GPU under FSDP2")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--gpus", type=int, default=None, help="ranks in all (default: the experiment's resources)")
    p.add_argument("--gpu-type", default="A5000", help=f"one of {', '.join(cost.GPU_MEMORY_GIB)} (default A5000)")
    p.add_argument("--batch", default=None, help="tokens per GPU, comma-separated (default: global batch / GPUs)")
    p.add_argument("--probe", action="store_true", help="also measure on this CUDA GPU (default: when one is here)")
    p.add_argument("--no-probe", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    exp = next((a.split("=", 1)[1] for a in args.overrides if a.lstrip("+").startswith("experiment=")), None)
    rest = [a for a in args.overrides if not a.lstrip("+").startswith("experiment=")]
    try:
        cfg = lm_stages.compose_lm(str(exp), rest)
    except RequestError as e:
        print(f"hrm-doctor: error: {e}", file=sys.stderr)
        return 2
    if args.gpu_type not in cost.GPU_MEMORY_GIB:
        print(f"hrm-doctor: error: --gpu-type {args.gpu_type} is unknown; fix: one of "
              f"{', '.join(cost.GPU_MEMORY_GIB)}", file=sys.stderr)
        return 2
    res = cfg.get("resources") or {}
    world = args.gpus or max(1, int(res.get("gpus") or 1)) * int(res.get("nodes") or 1)
    arch = dict(cfg.get("arch") or {})
    size = arch.pop("size", None)
    meta = lm_stages.data_metadata(Path(str(cfg.get("data_path") or "data/lm")))
    shape = lm_stages.model_shape(cfg, meta)
    if size not in model_sizes() or shape is None:
        print(f"hrm-doctor: error: arch.size={size!r} is not one of hrm.lm.model.SIZES; fix: arch.size=L",
              file=sys.stderr)
        return 2
    try:
        tokens = [int(x) for x in args.batch.split(",")] if args.batch else [
            int(cfg.get("global_batch_size") or 4096) // world]
    except ValueError:
        print(f"hrm-doctor: error: --batch {args.batch!r}: give token counts, e.g. --batch 4096,8192",
              file=sys.stderr)
        return 2
    probe = args.probe or (not args.no_probe and _cuda())
    overrides = {k: v for k, v in arch.items() if k in cost.Shape.__dataclass_fields__ and v is not None}
    rep = lm_memory_report(size, shape["vocab_size"], tokens, world, args.gpu_type, probe, overrides)
    if args.json:
        print(json.dumps(rep, indent=2))
    else:
        print_lm_memory(rep)
    return 0 if all(r["fits"] is not False for r in rep["rows"]) else 1


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
