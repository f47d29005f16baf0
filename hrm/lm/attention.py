"""PrefixLM attention over a packed 1-D stream, behind one switch: sdpa (dense mask) | flex | fa2 | fa3.

All backends compute the rule of `packing.prefixlm_mask`; the dense SDPA path *is* that mask and is
the reference the others are tested against. GPU libraries import lazily so CPU import never fails.
Padding rows attend to nothing: their outputs (and so their gradients) are zero.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hrm.lm.packing import PackedBatch, prefixlm_mask, token_layout

LM_ATTN_BACKENDS = ("auto", "fa3", "fa2", "flex", "sdpa")


@functools.cache
def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
        return True
    except Exception:  # noqa: BLE001 - a broken CUDA extension raises more than ImportError
        return False


def resolve_backend(name: str, device: torch.device | str) -> str:
    """auto: fa3 on Hopper with flash_attn_interface, fa2 on Ampere+ with flash_attn, else flex on CUDA, else sdpa."""
    if name not in LM_ATTN_BACKENDS:
        raise ValueError(f"attn_backend={name!r} is not one of {LM_ATTN_BACKENDS}; fix: arch.attn_backend=auto")
    dev = torch.device(device)
    if name == "auto":
        if dev.type != "cuda":
            return "sdpa"
        major = torch.cuda.get_device_capability(dev)[0]
        if major == 9 and _importable("flash_attn_interface"):
            return "fa3"
        if major >= 8 and _importable("flash_attn"):
            return "fa2"
        return "flex"
    if name in ("fa2", "fa3"):
        mod = "flash_attn_interface" if name == "fa3" else "flash_attn"
        if dev.type != "cuda" or not _importable(mod):
            raise ValueError(f"attn_backend={name} needs a CUDA device and the `{mod}` package; "
                             "fix: arch.attn_backend=sdpa (or flex on a GPU)")
    return name


@dataclass
class AttnMeta:
    """What every layer of one forward shares: built once per batch."""

    backend: str
    valid: torch.Tensor  # BoolTensor[T]
    mask: torch.Tensor | None = None  # sdpa: BoolTensor[T, T]
    block_mask: object | None = None  # flex
    prefix_idx: torch.Tensor | None = None  # fa2/fa3: token indices of prefix rows
    resp_idx: torch.Tensor | None = None  # token indices of response rows
    cu_prefix: torch.Tensor | None = None
    cu_resp_q: torch.Tensor | None = None
    cu_all: torch.Tensor | None = None
    max_prefix: int = 0
    max_causal: int = 0
    max_all: int = 0


@torch.compiler.disable
def attn_meta(batch: PackedBatch, backend: str) -> AttnMeta:
    """Host-side, data-dependent set-up; kept out of compiled graphs (it depends on numseqs/total_seqlen)."""
    seq, in_prefix, valid = token_layout(batch)
    if backend == "sdpa":
        mask = prefixlm_mask(batch)
        mask = mask | torch.diag(~valid)  # padding rows see themselves only (no NaN); zeroed afterwards
        return AttnMeta(backend, valid, mask=mask)
    if backend == "flex":
        from torch.nn.attention.flex_attention import create_block_mask

        def mask_mod(b, h, q, k):  # noqa: ANN001 - flex's signature
            same = (seq[q] == seq[k]) & (seq[q] >= 0)
            return same & ((k <= q) | (in_prefix[q] & in_prefix[k]))

        T = batch.length
        bm = create_block_mask(mask_mod, None, None, T, T, device=str(seq.device))
        return AttnMeta(backend, valid, block_mask=bm)
    n = batch.numseqs
    plen = batch.prefix_lens[:n].to(seq.device).int()
    clen = batch.causal_lens[:n].to(seq.device).int()
    zero = torch.zeros(1, dtype=torch.int32, device=seq.device)
    return AttnMeta(
        backend, valid, prefix_idx=in_prefix.nonzero().squeeze(1), resp_idx=(valid & ~in_prefix).nonzero().squeeze(1),
        cu_prefix=torch.cat([zero, plen.cumsum(0, dtype=torch.int32)]),
        cu_resp_q=torch.cat([zero, clen.cumsum(0, dtype=torch.int32)]),
        cu_all=batch.cu_seqlens[:n + 1].to(seq.device).int(),
        max_prefix=batch.max_seqlen_prefix, max_causal=batch.max_seqlen_causal, max_all=batch.max_seqlen_all)


def _varlen(backend: str):  # noqa: ANN202
    if backend == "fa3":
        return importlib.import_module("flash_attn_interface").flash_attn_varlen_func
    return importlib.import_module("flash_attn").flash_attn_varlen_func


@torch.compiler.disable
def _two_pass(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttnMeta) -> torch.Tensor:
    """FlashAttention realisation: prefix rows attend bidirectionally within the prefix; response rows
    attend causally (bottom-right aligned) over the whole sample. The two row sets are disjoint.
    UNVERIFIED on a GPU from this CPU box (FA is not installable here)."""
    fn = _varlen(meta.backend)
    out = torch.zeros_like(q)
    pi, ri = meta.prefix_idx, meta.resp_idx
    if pi.numel():
        o = fn(q[pi], k[pi], v[pi], meta.cu_prefix, meta.cu_prefix, meta.max_prefix, meta.max_prefix, causal=False)
        out = out.index_copy(0, pi, o[0] if isinstance(o, tuple) else o)
    if ri.numel():
        o = fn(q[ri], k, v, meta.cu_resp_q, meta.cu_all, meta.max_causal, meta.max_all, causal=True)
        out = out.index_copy(0, ri, o[0] if isinstance(o, tuple) else o)
    return out


def prefixlm_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttnMeta) -> torch.Tensor:
    """q, k, v: [T, H, D] -> [T, H, D]."""
    if meta.backend in ("fa2", "fa3"):
        return _two_pass(q, k, v, meta)
    qh, kh, vh = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))  # [1, H, T, D]
    if meta.backend == "flex":
        from torch.nn.attention.flex_attention import flex_attention

        out = flex_attention(qh, kh, vh, block_mask=meta.block_mask)
    else:
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=meta.mask)
    out = out.squeeze(0).transpose(0, 1)
    return out * meta.valid[:, None, None].to(out.dtype)
