"""Building blocks of HRM: cast-on-call linear/embedding, weightless RMSNorm, RoPE, SwiGLU, attention.

Master weights stay fp32; every call casts them to the activation dtype (the reference's scheme), so
the same module runs in bfloat16 on a GPU and in float32 on a laptop.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

CosSin = tuple[torch.Tensor, torch.Tensor]
ATTN_BACKENDS = ("auto", "fa3", "fa2", "sdpa")


def trunc_normal_init_(tensor: torch.Tensor, std: float = 1.0, lower: float = -2.0, upper: float = 2.0) -> torch.Tensor:
    """JAX/flax-style truncated normal whose *resulting* std equals `std` (not the pre-truncation std).

    Draw by inverse CDF on [lower, upper] in units of sigma, then rescale by the std correction of the
    truncated distribution so the sample std is exactly `std`.
    """
    with torch.no_grad():
        if std == 0:
            return tensor.zero_()
        phi = lambda x: math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)  # noqa: E731
        mass = 0.5 * (math.erf(upper / math.sqrt(2)) - math.erf(lower / math.sqrt(2)))
        var = 1 - (upper * phi(upper) - lower * phi(lower)) / mass - ((phi(lower) - phi(upper)) / mass) ** 2
        corrected = std / math.sqrt(var)
        tensor.uniform_(math.erf(lower / math.sqrt(2)), math.erf(upper / math.sqrt(2)))
        tensor.erfinv_().mul_(math.sqrt(2) * corrected)
        return tensor.clip_(lower * corrected, upper * corrected)


class CastedLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        # LeCun normal: std = 1/sqrt(fan_in).
        self.weight = nn.Parameter(trunc_normal_init_(torch.empty(out_features, in_features), std=in_features**-0.5))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.weight.to(x.dtype), bias)


class CastedEmbedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int, init_std: float, cast_to: torch.dtype):
        super().__init__()
        self.cast_to = cast_to
        self.embedding_weight = nn.Parameter(
            trunc_normal_init_(torch.empty(num_embeddings, embedding_dim), std=init_std))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.embedding_weight.to(self.cast_to))


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm with no learnable scale, computed in fp32."""
    dtype = x.dtype
    x = x.float()
    return (x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)).to(dtype)


class RotaryEmbedding(nn.Module):
    def __init__(self, dim: int, max_position_embeddings: int, base: float):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        t = torch.arange(max_position_embeddings, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos_cached", emb.cos(), persistent=False)
        self.register_buffer("sin_cached", emb.sin(), persistent=False)

    def forward(self) -> CosSin:
        return self.cos_cached, self.sin_cached


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
                         sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k: [B, S, H, D]; cos, sin: [S, D] (broadcast over heads). Rotation done in fp32."""
    dtype = q.dtype
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    q32, k32 = q.float(), k.float()
    q_out = q32 * cos + rotate_half(q32) * sin
    k_out = k32 * cos + rotate_half(k32) * sin
    return q_out.to(dtype), k_out.to(dtype)


# --- attention backends: all take and return [B, S, H, D] ---------------------------------------

def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal)
    return out.transpose(1, 2)


def _flash(module_name: str) -> Callable:
    fn = importlib.import_module(module_name).flash_attn_func

    def attend(q, k, v, causal):
        out = fn(q, k, v, causal=causal)
        return out[0] if isinstance(out, tuple) else out  # FA3 may return (out, lse)

    return attend


def _importable(module_name: str) -> bool:
    try:
        importlib.import_module(module_name)
        return True
    except Exception:  # a broken flash-attn install raises ImportError, OSError or RuntimeError
        return False


# FlashAttention 3 is Hopper-only; FlashAttention 2 needs Ampere or newer (Savio's V100 and 2080 Ti are older).
FLASH_MIN_CAPABILITY = {"fa3": (9, 0), "fa2": (8, 0)}


def _capability(device: torch.device) -> tuple[int, int]:
    return tuple(torch.cuda.get_device_capability(device)) if device.type == "cuda" else (0, 0)


def resolve_attn_backend(name: str, device: torch.device | str, dtype: torch.dtype) -> str:
    """Pick the backend: `auto` takes FA3, then FA2, then SDPA, each only where it imports and the GPU
    generation supports it; FlashAttention needs CUDA and 16-bit."""
    if name not in ATTN_BACKENDS:
        raise ValueError(f"unknown arch.attn_backend={name!r}: choose one of {', '.join(ATTN_BACKENDS)}")
    device = torch.device(device)
    flash_ok = device.type == "cuda" and dtype in (torch.bfloat16, torch.float16)
    modules = {"fa3": "flash_attn_interface", "fa2": "flash_attn"}
    if name == "auto":
        cc = _capability(device) if flash_ok else (0, 0)
        for flash in ("fa3", "fa2"):
            if flash_ok and cc >= FLASH_MIN_CAPABILITY[flash] and _importable(modules[flash]):
                return flash
        return "sdpa"
    if name in modules:
        how = "3: build hopper/ from the flash-attention repo" if name == "fa3" else "2: pip install flash-attn"
        if not _importable(modules[name]):
            raise ValueError(f"arch.attn_backend={name} but `{modules[name]}` does not import: install "
                             f"FlashAttention ({how}) or use arch.attn_backend=sdpa")
        if not flash_ok:
            raise ValueError(f"arch.attn_backend={name} needs a CUDA device and arch.forward_dtype=bfloat16: "
                             f"use arch.attn_backend=sdpa on {device.type} / {dtype}")
        cc, need = _capability(device), FLASH_MIN_CAPABILITY[name]
        if cc < need:
            raise ValueError(f"arch.attn_backend={name} needs a GPU of compute capability {need[0]}.{need[1]} or "
                             f"newer, this one is {cc[0]}.{cc[1]}: use arch.attn_backend=auto or sdpa")
    return name


def attention_function(backend: str) -> Callable:
    return _sdpa if backend == "sdpa" else _flash({"fa3": "flash_attn_interface", "fa2": "flash_attn"}[backend])


class Attention(nn.Module):
    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_key_value_heads: int,
                 causal: bool = False, backend: str = "sdpa"):
        super().__init__()
        self.head_dim = head_dim
        self.num_heads = num_heads
        self.num_key_value_heads = num_key_value_heads
        self.causal = causal
        self.backend = backend
        self._attend = attention_function(backend)
        self.qkv_proj = CastedLinear(hidden_size, (num_heads + 2 * num_key_value_heads) * head_dim, bias=False)
        self.o_proj = CastedLinear(num_heads * head_dim, hidden_size, bias=False)

    def forward(self, cos_sin: CosSin | None, hidden_states: torch.Tensor) -> torch.Tensor:
        B, S, _ = hidden_states.shape
        qkv = self.qkv_proj(hidden_states).view(B, S, self.num_heads + 2 * self.num_key_value_heads, self.head_dim)
        q = qkv[:, :, : self.num_heads]
        k = qkv[:, :, self.num_heads : self.num_heads + self.num_key_value_heads]
        v = qkv[:, :, self.num_heads + self.num_key_value_heads :]
        if cos_sin is not None:
            q, k = apply_rotary_pos_emb(q, k, *cos_sin)
        out = self._attend(q, k, v, self.causal)
        return self.o_proj(out.reshape(B, S, self.num_heads * self.head_dim))


def swiglu_width(hidden_size: int, expansion: float) -> int:
    inter = round(expansion * hidden_size * 2 / 3)
    return -(inter // -256) * 256  # round up to a multiple of 256


class SwiGLU(nn.Module):
    def __init__(self, hidden_size: int, expansion: float):
        super().__init__()
        inter = swiglu_width(hidden_size, expansion)
        self.gate_up_proj = CastedLinear(hidden_size, inter * 2, bias=False)
        self.down_proj = CastedLinear(inter, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)
