"""What an HRM-Text run costs on paper: parameters, FLOPs per token, memory per GPU, wall time.

Pure Python on purpose (no torch): `hrm-slurm preview` on a login node, `hrm-doctor memory` and
`bench/lm_throughput.py` all read the same numbers from here. The FLOPs follow the public paper's
convention (spec section 4): 2 x params per token for a forward and 4 x for a backward, each counted once
per recurrent module application in that pass (8 forward, `bp_steps` backward), plus the attention
matmuls over the keys each query really sees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# Peak dense bf16 (fp16 where the card has no bf16) tensor throughput per GPU, TFLOP/s, from the vendors'
# data sheets (dense, no sparsity). Used only for expectations, never for a pass/fail.
PEAK_TFLOPS = {
    "H100": 989.0,  # H100 SXM5
    "H200": 989.0,
    "A100": 312.0,
    "L40": 181.0,
    "A40": 149.7,
    "A5000": 111.1,  # RTX A5000 (Ampere GA102): 222.2 with sparsity
    "TITAN": 130.0,  # TITAN RTX fp16
    "V100": 125.0,  # fp16 (no bf16)
    "GTX2080TI": 53.8,  # fp16 with fp16 accumulate; no bf16
}
# Memory per GPU, GiB (vendor figures).
GPU_MEMORY_GIB = {"H100": 80.0, "H200": 141.0, "A100": 80.0, "L40": 48.0, "A40": 48.0, "A5000": 24.0,
                  "TITAN": 24.0, "V100": 32.0, "GTX2080TI": 11.0}
# The published runs (README of sapientinc/HRM-Text): GPUs (H100), hours, trained tokens (paper: 60B).
PUBLISHED_RUNS = {"L": {"gpus": 8, "hours": 50.0}, "XL": {"gpus": 16, "hours": 46.0}}
PUBLISHED_TOKENS = 60e9
FULL_BP = 5  # recurrent module steps with gradient at the end of the BP warmup (spec 2.2)


@dataclass(frozen=True)
class Shape:
    """The numbers the cost depends on; `shape_of` reads them off an LMConfig or a plain dict."""

    vocab_size: int
    hidden_size: int
    num_heads: int
    n_layers: int
    expansion: float = 4.0
    H_cycles: int = 2
    L_cycles: int = 3
    half_layers: bool = True
    net: str = "hrm"

    @property
    def inter(self) -> int:
        """SwiGLU width: expansion x hidden x 2/3, rounded up to a multiple of 256 (spec 2.1)."""
        return 256 * math.ceil(round(self.expansion * self.hidden_size * 2 / 3) / 256)

    @property
    def layers_per_module(self) -> int:
        if self.net == "transformer":
            return self.n_layers
        return self.n_layers // 2 if self.half_layers else self.n_layers

    @property
    def module_steps(self) -> int:
        """Module applications per forward: H x (L + 1) for HRM, 1 for the transformer."""
        return 1 if self.net == "transformer" else self.H_cycles * (self.L_cycles + 1)


def shape_of(cfg: Any) -> Shape:
    get = cfg.get if isinstance(cfg, dict) else (lambda k, d=None: getattr(cfg, k, d))
    fields = {k: get(k) for k in Shape.__dataclass_fields__ if get(k) is not None}
    return Shape(**fields)


def block_params(s: Shape) -> int:
    """Matmul weights of one block: fused gate|q|k|v (4h x h), o_proj (h x h), gate|up (2i x h), down (h x i)."""
    h = s.hidden_size
    return 5 * h * h + 3 * h * s.inter


def num_params(cfg: Any, non_embedding: bool = False) -> int:
    """Trainable parameters (the norms have none; the z_L_init buffer is not counted)."""
    s = shape_of(cfg)
    stacks = 1 if s.net == "transformer" else 2
    body = stacks * s.layers_per_module * block_params(s)
    return body if non_embedding else body + 2 * s.vocab_size * s.hidden_size


def flops_per_token(cfg: Any, bp_steps: int = FULL_BP, attn_keys: float = 0.0) -> dict[str, float]:
    """Training FLOPs per token: {"forward", "backward", "total", "attention"}.

    attn_keys: the mean number of keys a query attends to (0 = leave attention out, as 6ND does; for a dense
    [T, T] SDPA it is T, for PrefixLM-packed samples see `mean_attended_keys`)."""
    s = shape_of(cfg)
    h, n = s.hidden_size, s.layers_per_module
    steps_bwd = s.module_steps if s.net == "transformer" else min(bp_steps, s.module_steps)
    per_block_fwd = 2 * block_params(s) + 4 * attn_keys * h  # QK^T and AV: 2 matmuls of 2 x keys x h
    head_fwd = 2 * h * s.vocab_size
    fwd = s.module_steps * n * per_block_fwd + head_fwd
    bwd = 2 * (steps_bwd * n * per_block_fwd + head_fwd)
    attn = 4 * attn_keys * h * n * (s.module_steps + 2 * steps_bwd)
    return {"forward": float(fwd), "backward": float(bwd), "total": float(fwd + bwd), "attention": float(attn)}


def mean_attended_keys(prefix_len: float, resp_len: float) -> float:
    """Mean keys per query under the PrefixLM mask for one sample (prefix P, response R tokens after the
    shift): the prefix rows see the P prefix keys, response row r sees P + r + 1 keys."""
    p, r = float(prefix_len), float(resp_len)
    total = p * p + r * p + r * (r + 1) / 2
    return total / max(p + r, 1.0)


def tokens_per_second(cfg: Any, gpus: int, gpu_type: str = "H100", mfu: float = 0.4,
                      attn_keys: float = 0.0) -> float:
    """Tokens/s the whole job reaches at a given model-FLOPs utilisation."""
    peak = PEAK_TFLOPS[gpu_type] * 1e12
    return gpus * peak * mfu / flops_per_token(cfg, attn_keys=attn_keys)["total"]


def hours_for(tokens: float, cfg: Any, gpus: int, gpu_type: str = "H100", mfu: float = 0.4,
              attn_keys: float = 0.0) -> float:
    return tokens / tokens_per_second(cfg, gpus, gpu_type, mfu, attn_keys) / 3600.0


@dataclass
class MemoryEstimate:
    """Bytes per GPU at the peak of a training step under FSDP2 (all GiB)."""

    sharded_state: float  # fp32 master weights + grads + Adam m, v + EMA, each 1/world of the model
    gathered_params: float  # bf16 full parameters: reshard_after_forward=False keeps them all gathered
    activations: float  # bf16 saved activations of the blocks that run with grad
    logits: float  # bf16 logits + fp32 copy for the loss + its gradient
    total: float
    tokens_per_gpu: int
    world_size: int

    def fits(self, gib: float, headroom: float = 0.9) -> bool:
        return self.total <= gib * headroom


GIB = float(1 << 30)


def activation_bytes_per_token_block(s: Shape) -> int:
    """bf16 values one block keeps for its backward, per token: the two norm inputs and outputs (4h), gate|q|k|v
    (4h), attention output and gated output (2h), gate|up (2i) and silu(gate) x up (i)."""
    return 2 * (10 * s.hidden_size + 3 * s.inter)


def memory_estimate(cfg: Any, tokens_per_gpu: int, world_size: int, bp_steps: int = FULL_BP,
                    reshard_after_forward: bool = False, checkpoint_blocks: bool = False) -> MemoryEstimate:
    """An analytic estimate (no allocator overheads, no workspace): good to a few GiB, for planning."""
    s = shape_of(cfg)
    p = num_params(s)
    sharded = 20.0 * p / world_size  # 4 bytes each: weights, grads, exp_avg, exp_avg_sq, ema
    root = 2 * s.vocab_size * s.hidden_size  # embedding + head stay gathered with the root group
    gathered = 2.0 * (p if not reshard_after_forward else block_params(s) + root)
    steps = s.module_steps if s.net == "transformer" else min(bp_steps, s.module_steps)
    per_block = activation_bytes_per_token_block(s)
    if checkpoint_blocks:  # only each block's input survives, one block is recomputed at a time
        acts = tokens_per_gpu * (steps * s.layers_per_module * 2 * s.hidden_size + per_block)
    else:
        acts = tokens_per_gpu * steps * s.layers_per_module * per_block
    logits = tokens_per_gpu * s.vocab_size * (2 + 4 + 4)
    total = sharded + gathered + acts + logits
    return MemoryEstimate(sharded / GIB, gathered / GIB, acts / GIB, logits / GIB, total / GIB, tokens_per_gpu,
                          world_size)


def max_tokens_per_gpu(cfg: Any, world_size: int, gib: float, multiple: int = 256, **kw: Any) -> int:
    """The largest per-GPU token budget (a multiple of `multiple`) whose estimate fits 90% of `gib`."""
    lo, hi = 0, 1 << 22
    while hi - lo > multiple:
        mid = (lo + hi) // 2 // multiple * multiple
        if mid <= lo:
            break
        if memory_estimate(cfg, mid, world_size, **kw).fits(gib):
            lo = mid
        else:
            hi = mid
    return lo
