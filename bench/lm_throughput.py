"""HRM-Text training throughput on paper and measured: FLOPs per token, tokens/s, MFU.

    python -m bench.lm_throughput [--size L|XL|tiny|...] [--tokens N] [--steps N] [--warmup N] [--bp-steps N]
        [--device cpu|cuda] [--dtype float32|bfloat16] [--compile] [--attn-backend B] [--json OUT] [--markdown]
    python -m bench.lm_throughput --paper [--markdown]     # the analytic table only (no torch model built)

On paper (`--paper`): the analytic training FLOPs per token of every size (hrm.lm.cost: 2 x params per token
per forward module step, 4 x per backward step, 8 forward and 5 backward module steps at the full BP
budget, plus the attention matmuls over the keys a PrefixLM query sees), and the tokens/s and hours that
40% MFU gives on 8 and 16 H100 (989 TFLOP/s dense bf16) next to the public runtimes.

Measured: one training step as the trainer does it on one rank, on a synthetic packed batch (random token
ids; samples of random prefix/response lengths packed into one stream of --tokens tokens): forward, fp32
summed CE over the response tokens, backward, an optimizer step. The FLOPs of that very step are counted
with torch's FlopCounterMode once (before timing) and compared with the analytic count; tokens/s counts
every slot of the stream (padding included), as the global batch does.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from hrm.lm import cost
from hrm.lm.memory import synthetic_batch

PAPER_SIZES = ("B", "L", "XL", "XXL", "XXL_wide")
DEFAULT_ATTN_KEYS = 1024.0  # a typical mean of keys per query in 4096-token PrefixLM packs (planning figure)


# --- on paper ---------------------------------------------------------------------------------------------


def paper_rows(mfu: float = 0.4, attn_keys: float = DEFAULT_ATTN_KEYS) -> list[dict[str, Any]]:
    from hrm.lm.model import SIZES

    rows = []
    for name in PAPER_SIZES:
        shape = cost.shape_of({**SIZES[name], "vocab_size": 65536})
        f6 = cost.flops_per_token(shape)
        fa = cost.flops_per_token(shape, attn_keys=attn_keys)
        row: dict[str, Any] = {
            "size": name,
            "params_total": cost.num_params(shape),
            "params_non_embedding": cost.num_params(shape, non_embedding=True),
            "gflops_per_token": f6["total"] / 1e9,
            "gflops_per_token_with_attn": fa["total"] / 1e9,
        }
        for gpus in (8, 16):
            tps = cost.tokens_per_second(shape, gpus, "H100", mfu)
            row[f"tokens_per_s_{gpus}xH100"] = tps
            row[f"hours_60B_{gpus}xH100"] = cost.PUBLISHED_TOKENS / tps / 3600
            row[f"hours_60B_{gpus}xH100_with_attn"] = cost.hours_for(cost.PUBLISHED_TOKENS, shape, gpus, "H100",
                                                                      mfu, attn_keys)
            row[f"hours_60B_{gpus}xA5000"] = cost.hours_for(cost.PUBLISHED_TOKENS, shape, gpus, "A5000", mfu)
        pub = cost.PUBLISHED_RUNS.get(name)
        if pub:
            row["published"] = pub
            # the MFU the public runtime implies, if 60B tokens were trained
            row["implied_mfu"] = (cost.PUBLISHED_TOKENS * f6["total"]) / (pub["hours"] * 3600 * pub["gpus"]
                                                                          * cost.PEAK_TFLOPS["H100"] * 1e12)
        rows.append(row)
    return rows


def paper_markdown(rows: list[dict[str, Any]], mfu: float = 0.4) -> str:
    lines = [
        f"| size | params (non-emb.) | GFLOP/token (6ND-style / +attn) | tok/s @{mfu:.0%} MFU 8xH100 | "
        "16xH100 | h for 60B tok, 8xH100 | 16xH100 | published | implied MFU | h for 60B, 16xA5000 |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        pub = r.get("published")
        published = f"{pub['hours']:.0f} h on {pub['gpus']}xH100" if pub else "-"
        implied = f"{r['implied_mfu']:.0%}" if pub else "-"
        lines.append(
            f"| {r['size']} | {r['params_total'] / 1e6:,.1f}M ({r['params_non_embedding'] / 1e6:,.1f}M) | "
            f"{r['gflops_per_token']:.2f} / {r['gflops_per_token_with_attn']:.2f} | "
            f"{r['tokens_per_s_8xH100']:,.0f} | {r['tokens_per_s_16xH100']:,.0f} | "
            f"{r['hours_60B_8xH100']:.1f} | {r['hours_60B_16xH100']:.1f} | {published} | {implied} | "
            f"{r['hours_60B_16xA5000']:,.0f} |"
        )
    return "\n".join(lines)


# --- measured ---------------------------------------------------------------------------------------------


def counted_flops(model: Any, batch: Any, bp_steps: int) -> dict[str, int]:
    """FlopCounterMode over one forward + loss + backward: {"total", "linear" (mm/addmm), "attention" (the
    rest: sdpa / bmm / flex)}."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from hrm.lm.model import lm_loss

    model.zero_grad(set_to_none=True)
    # the math kernel is spelled out in bmm's that FlopCounterMode counts; the fused CPU kernel is not counted
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        loss, _ = lm_loss(model(batch, bp_steps=bp_steps), batch.labels)
        loss.backward()
    by_op = counter.get_flop_counts().get("Global", {})
    linear = sum(int(v) for k, v in by_op.items() if str(k).split(".")[1] in ("mm", "addmm"))
    total = int(counter.get_total_flops())
    model.zero_grad(set_to_none=True)
    del loss
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return {"total": total, "linear": linear, "attention": total - linear}


def dense_attention_keys(batch: Any) -> float:
    """Keys per query that a mask-agnostic count (dense SDPA on the whole stream) charges: the stream length."""
    return float(batch.input_ids.shape[0])


def masked_attention_keys(samples: list[tuple[Any, Any]], tokens: int) -> float:
    """Mean keys per stream slot that the PrefixLM mask lets a query see (padding sees none)."""
    total = 0.0
    for inst, resp in samples:
        p, r = len(inst), len(resp) - 1
        total += cost.mean_attended_keys(p, r) * (p + r)
    return total / tokens


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from hrm.lm.model import build_lm, lm_config, lm_loss, round_vocab

    torch.manual_seed(0)
    device = torch.device(args.device)
    overrides: dict[str, Any] = {"max_seq_len": max(4096, args.tokens)}
    if args.attn_backend:
        overrides["attn_backend"] = args.attn_backend
    if args.layers:
        overrides["n_layers"] = args.layers
    cfg = lm_config(args.size, round_vocab(args.vocab), **overrides)
    model = build_lm(cfg, device=device)
    dtype = getattr(torch, args.dtype)
    if dtype != torch.float32:
        model = model.to(dtype)
    batch, samples = synthetic_batch(cfg.vocab_size, args.tokens, mean_len=args.mean_len)
    batch = batch.to(device)
    analytic_dense = cost.flops_per_token(cfg, bp_steps=args.bp_steps, attn_keys=dense_attention_keys(batch))
    analytic_masked = cost.flops_per_token(cfg, bp_steps=args.bp_steps,
                                           attn_keys=masked_attention_keys(samples, args.tokens))
    counted = counted_flops(model, batch, args.bp_steps) if not args.no_count else None
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=False)

    def step() -> float:
        loss, n = lm_loss(model(batch, bp_steps=args.bp_steps), batch.labels)
        (loss / n.clamp(min=1)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    run = torch.compile(step) if args.compile else step
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        run()
    sync()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    flops_step = analytic_masked["total"] * args.tokens
    peak_name = next((k for k in cost.PEAK_TFLOPS if device.type == "cuda" and k in torch.cuda.get_device_name()),
                     None)
    result: dict[str, Any] = {
        "size": args.size,
        "config": {k: getattr(cfg, k) for k in ("vocab_size", "hidden_size", "num_heads", "n_layers", "H_cycles",
                                                "L_cycles", "attn_backend")},
        "params": cost.num_params(cfg),
        "tokens_per_step": args.tokens,
        "bp_steps": args.bp_steps,
        "steps": args.steps,
        "warmup": args.warmup,
        "step_s_all": times,
        "step_s": step_s,
        "tokens_per_s": args.tokens / step_s,
        "analytic_flops_per_token_dense_attn": analytic_dense["total"],
        "analytic_flops_per_token": analytic_masked["total"],
        "counted_flops_per_token": counted["total"] / args.tokens if counted else None,
        "counted_linear_flops_per_token": counted["linear"] / args.tokens if counted else None,
        "achieved_tflops_per_s": flops_step / step_s / 1e12,
        "mfu": (flops_step / step_s / (cost.PEAK_TFLOPS[peak_name] * 1e12)) if peak_name else None,
        "peak_memory_gib": (torch.cuda.max_memory_allocated() / cost.GIB) if device.type == "cuda" else None,
        "device": str(device),
        "device_name": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "compile": bool(args.compile),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "cpus": os.cpu_count(),
        "date": datetime.date.today().isoformat(),
    }
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.lm_throughput", description=__doc__.splitlines()[0])
    p.add_argument("--paper", action="store_true", help="print the analytic table only")
    p.add_argument("--size", default="tiny", help="a hrm.lm.model.SIZES name (default tiny)")
    p.add_argument("--layers", type=int, default=None, help="override n_layers (a cut-down L on CPU)")
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--tokens", type=int, default=2048, help="tokens in the packed stream (batch_max_length)")
    p.add_argument("--mean-len", type=int, default=256, help="mean packed sample length of the synthetic batch")
    p.add_argument("--bp-steps", type=int, default=cost.FULL_BP)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--attn-backend", default=None)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--no-count", action="store_true", help="skip the FlopCounterMode pass (large configs)")
    p.add_argument("--mfu", type=float, default=0.4)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--markdown", action="store_true")
    return p


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.paper:
        rows = paper_rows(args.mfu)
        print(paper_markdown(rows, args.mfu) if args.markdown else json.dumps(rows, indent=2))
        result: dict[str, Any] = {"paper": rows}
    else:
        result = measure(args)
        print(json.dumps(result, indent=2))
    if args.json:
        tmp = args.json.with_name(f".{args.json.name}.tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(args.json)
    return result


if __name__ == "__main__":
    main()
