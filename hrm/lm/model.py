"""HRM-Text: a hierarchical recurrent language model over packed PrefixLM streams (+ a same-size transformer).

Two half-depth stacks H and L (pre-norm blocks plus an exit norm each). z_H starts as the scaled token
embedding, z_L as a fixed bf16 vector; per H cycle: L_cycles x z_L <- L(z_L + z_H), then z_H <- H(z_H + z_L).
Gradient flows only through the last `bp_steps` module steps (warmed up from 2 to 5 over training), so
the early steps run under no_grad and keep no activations. Module names match the Hugging Face
`hrm_text` on-disk schema, so export is a rename-free copy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hrm.lm.attention import AttnMeta, attn_meta, prefixlm_attention, resolve_backend
from hrm.lm.packing import PackedBatch
from hrm.model.layers import (
    CastedLinear,
    RotaryEmbedding,
    apply_rotary_pos_emb,
    rms_norm,
    swiglu_width,
    trunc_normal_init_,
)

NETS = ("hrm", "transformer")
BP_MIN = 2

# The public size presets (n_layers is the total; half_layers gives each of H and L n_layers / 2).
SIZES: dict[str, dict] = {
    "tiny": {"hidden_size": 64, "num_heads": 2, "n_layers": 4},
    "B": {"hidden_size": 1024, "num_heads": 8, "n_layers": 12},
    "L": {"hidden_size": 1280, "num_heads": 10, "n_layers": 24},
    "XL": {"hidden_size": 1536, "num_heads": 12, "n_layers": 32},
    "XXL": {"hidden_size": 1792, "num_heads": 14, "n_layers": 72},
    "XXL_wide": {"hidden_size": 2560, "num_heads": 20, "n_layers": 32},
}


@dataclass
class LMConfig:
    vocab_size: int
    hidden_size: int
    num_heads: int
    n_layers: int
    expansion: float = 4.0
    H_cycles: int = 2
    L_cycles: int = 3
    half_layers: bool = True
    norm_eps: float = 1e-6
    rope_theta: float = 1e4
    max_seq_len: int = 4096
    net: str = "hrm"  # "hrm" | "transformer"
    bp_warmup_ratio: float = 0.2
    attn_backend: str = "auto"  # auto|fa3|fa2|flex|sdpa

    def __post_init__(self) -> None:
        if self.net not in NETS:
            raise ValueError(f"net={self.net!r} is not one of {NETS}; fix: arch.net=hrm")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not a multiple of num_heads={self.num_heads}")
        if self.half_layers and self.net == "hrm" and self.n_layers % 2:
            raise ValueError(f"n_layers={self.n_layers} must be even with half_layers=true")
        if self.vocab_size < 1 or self.H_cycles < 1 or self.L_cycles < 1:
            raise ValueError("vocab_size, H_cycles and L_cycles must be >= 1")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def layers_per_stack(self) -> int:
        """Blocks in each of H and L (hrm) or in the single stack (transformer)."""
        if self.net == "transformer":
            return self.n_layers
        return self.n_layers // 2 if self.half_layers else self.n_layers

    @property
    def intermediate_size(self) -> int:
        return swiglu_width(self.hidden_size, self.expansion)

    @property
    def bp_max(self) -> int:
        return self.H_cycles + self.L_cycles


def round_vocab(n: int) -> int:
    """Tokenizer size rounded up to a multiple of 256 (the embedding/head row count)."""
    return -(int(n) // -256) * 256


def lm_config(size: str, vocab_size: int, **overrides) -> LMConfig:
    if size not in SIZES:
        raise ValueError(f"size={size!r} is not one of {sorted(SIZES)}; fix: arch.size=L")
    return LMConfig(vocab_size=int(vocab_size), **{**SIZES[size], **overrides})


def bp_steps_at(step: int, total_steps: int, ratio: float, bp_max: int = 5) -> int:
    """Backprop budget in module steps: 2 at the start, rising linearly to `bp_max` over ratio * total."""
    if ratio <= 0 or total_steps <= 0:
        return bp_max
    progress = min(1.0, step / (ratio * total_steps))
    return BP_MIN + int(progress * (bp_max - BP_MIN))


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 cross-entropy summed over labels != -100, and that count (the caller divides globally)."""
    loss = F.cross_entropy(logits.float(), labels, ignore_index=-100, reduction="sum")
    return loss, (labels != -100).sum()


class LMAttention(nn.Module):
    """Gated MHA: one projection to [gate | q | k | v], RoPE on q/k, output x sigmoid(gate), o_proj."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.gqkv_proj = CastedLinear(cfg.hidden_size, 4 * cfg.hidden_size, bias=False)
        self.o_proj = CastedLinear(cfg.hidden_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor], meta: AttnMeta) -> torch.Tensor:
        T = x.shape[0]
        gate, q, k, v = self.gqkv_proj(x).view(T, 4, self.num_heads, self.head_dim).unbind(1)
        q, k = apply_rotary_pos_emb(q, k, *cos_sin)
        out = prefixlm_attention(q, k, v, meta) * torch.sigmoid(gate)
        return self.o_proj(out.reshape(T, -1))


class LMMLP(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        inter = cfg.intermediate_size
        self.gate_up_proj = CastedLinear(cfg.hidden_size, 2 * inter, bias=False)
        self.down_proj = CastedLinear(inter, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class LMBlock(nn.Module):
    """Pre-norm block with parameterless RMSNorm; the unit FSDP2 shards."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.eps = cfg.norm_eps
        self.attn = LMAttention(cfg)
        self.mlp = LMMLP(cfg)

    def forward(self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor], meta: AttnMeta) -> torch.Tensor:
        x = x + self.attn(rms_norm(x, self.eps), cos_sin, meta)
        return x + self.mlp(rms_norm(x, self.eps))


class LMStack(nn.Module):
    """n blocks then an exit norm ("MagicNorm": bounds the recurrent state's scale)."""

    def __init__(self, cfg: LMConfig, n: int):
        super().__init__()
        self.eps = cfg.norm_eps
        self.layers = nn.ModuleList(LMBlock(cfg) for _ in range(n))

    def forward(self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor], meta: AttnMeta) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, cos_sin, meta)
        return rms_norm(x, self.eps)


class LMModel(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden_size
        self.embed_tokens = nn.Parameter(trunc_normal_init_(torch.empty(cfg.vocab_size, h), std=h ** -0.5))
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        if cfg.net == "hrm":
            self.H_module = LMStack(cfg, cfg.layers_per_stack)
            self.L_module = LMStack(cfg, cfg.layers_per_stack)
            self.register_buffer("z_L_init", trunc_normal_init_(torch.empty(h), std=1.0).to(torch.bfloat16),
                                 persistent=True)
        else:
            self.stack = LMStack(cfg, cfg.layers_per_stack)
        self.lm_head = CastedLinear(h, cfg.vocab_size, bias=False)

    def blocks(self) -> list[nn.Module]:
        stacks = [self.H_module, self.L_module] if self.cfg.net == "hrm" else [self.stack]
        return [b for s in stacks for b in s.layers]

    def num_params(self, non_embedding: bool = False) -> int:
        skip = {"embed_tokens", "lm_head.weight"} if non_embedding else set()
        return sum(p.numel() for n, p in self.named_parameters() if n not in skip)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.embed_tokens) * math.sqrt(self.cfg.hidden_size)

    def forward(self, batch: PackedBatch, bp_steps: int | None = None) -> torch.Tensor:
        """Logits [T, V] for the packed stream; `bp_steps` (hrm only) = module steps that keep gradients."""
        cfg = self.cfg
        x = self.embed(batch.input_ids)
        meta = attn_meta(batch, resolve_backend(cfg.attn_backend, x.device))
        if batch.max_seqlen_all > cfg.max_seq_len:
            raise ValueError(f"a packed sample has {batch.max_seqlen_all} tokens, more than max_seq_len="
                             f"{cfg.max_seq_len}; fix: arch.max_seq_len={batch.max_seqlen_all} or shorter samples")
        cos, sin = self.rotary()
        cos_sin = (cos[batch.positions], sin[batch.positions])
        if cfg.net == "transformer":
            return self.lm_head(self.stack(x, cos_sin, meta))
        bp = cfg.bp_max if bp_steps is None else int(bp_steps)
        if not BP_MIN - 1 <= bp <= cfg.bp_max:
            raise ValueError(f"bp_steps={bp} must be in [{BP_MIN - 1}, {cfg.bp_max}]")
        h_share = min(cfg.H_cycles, bp - 1)
        l_share = bp - h_share
        n_l = cfg.H_cycles * cfg.L_cycles
        z_h = x
        z_l = self.z_L_init.to(x.dtype).expand_as(x)
        for h in range(cfg.H_cycles):
            for j in range(cfg.L_cycles):
                k = h * cfg.L_cycles + j
                with torch.set_grad_enabled(torch.is_grad_enabled() and k >= n_l - l_share):
                    z_l = self.L_module(z_l + z_h, cos_sin, meta)
            with torch.set_grad_enabled(torch.is_grad_enabled() and h >= cfg.H_cycles - h_share):
                z_h = self.H_module(z_h + z_l, cos_sin, meta)
        return self.lm_head(z_h)


def build_lm(cfg: LMConfig, device: torch.device | str | None = None) -> LMModel:
    """Construct on `device` (use "meta" to count parameters of big sizes without memory)."""
    with torch.device(device or "cpu"):
        return LMModel(cfg)
