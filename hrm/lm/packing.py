"""PrefixLM packing: (instruction, response) samples -> one fixed-length 1-D token stream per rank.

Why a 1-D stream: the token budget, not the sequence count, fixes the batch shape, so compile sees one
shape and no token is wasted on per-row padding. The attention rule the kernels implement is in
`prefixlm_mask` (query i sees key j iff same sample and (j <= i or both are in that sample's prefix)).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, fields, replace

import numpy as np
import torch

IGNORE = -100


@dataclass
class PackedBatch:
    """One rank's packed stream of `T` tokens; side tensors are zero-padded to fixed shapes."""

    input_ids: torch.Tensor  # LongTensor[T], padding 0
    labels: torch.Tensor  # LongTensor[T], -100 where no loss
    positions: torch.Tensor  # LongTensor[T], restart at 0 per sample, padding 0
    prefix_lens: torch.Tensor  # IntTensor[T], one per sample, zero-padded
    causal_lens: torch.Tensor  # IntTensor[T]
    cu_seqlens: torch.Tensor  # IntTensor[T+1], leading 0 then cumulative lengths, zero-padded
    numseqs: int
    total_seqlen: int
    max_seqlen_prefix: int
    max_seqlen_causal: int
    max_seqlen_all: int

    def to(self, device: torch.device | str) -> PackedBatch:
        """Move the tensors; the scalars stay host ints (so nothing syncs or recompiles on them)."""
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self)
                 if isinstance(getattr(self, f.name), torch.Tensor)}
        return replace(self, **moved)

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[0])


def sample_rows(inst: np.ndarray, resp: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """One sample's rows: inputs = inst ++ resp[:-1]; labels: -100 on the prompt but its last token
    (which predicts resp[0]), then resp. A 1-token response (causal_len 0) is a prompt-only inference
    row; training data drops those (spec 3's zero-causal edge case).
    Returns (inputs, labels, positions, prefix_len, causal_len)."""
    inst = np.asarray(inst, dtype=np.int64)
    resp = np.asarray(resp, dtype=np.int64)
    if inst.size < 1 or resp.size < 1:
        raise ValueError(f"a sample needs >= 1 instruction and >= 1 response token (got {inst.size}, {resp.size}); "
                         "fix: drop empty samples when building the data")
    inputs = np.concatenate([inst, resp[:-1]])
    labels = np.concatenate([np.full(inst.size - 1, IGNORE, dtype=np.int64), resp])
    positions = np.arange(inputs.size, dtype=np.int64)
    return inputs, labels, positions, int(inst.size), int(resp.size - 1)


def pack(samples: list[tuple[np.ndarray, np.ndarray]], batch_max_length: int) -> PackedBatch:
    """Concatenate samples into one stream of exactly `batch_max_length` tokens (tail padded)."""
    T = int(batch_max_length)
    rows = [sample_rows(inst, resp) for inst, resp in samples]
    total = sum(r[0].size for r in rows)
    if total > T:
        raise ValueError(f"{len(rows)} samples hold {total} tokens, more than batch_max_length={T}; "
                         "fix: pack fewer samples (multipack with cap=batch_max_length) or raise the budget")
    if len(rows) > T:
        raise ValueError(f"{len(rows)} samples do not fit {T} side-tensor slots")
    ids = np.zeros(T, np.int64)
    labels = np.full(T, IGNORE, np.int64)
    pos = np.zeros(T, np.int64)
    prefix = np.zeros(T, np.int32)
    causal = np.zeros(T, np.int32)
    cu = np.zeros(T + 1, np.int32)
    at = 0
    for i, (inp, lab, p, pl, cl) in enumerate(rows):
        n = inp.size
        ids[at:at + n], labels[at:at + n], pos[at:at + n] = inp, lab, p
        prefix[i], causal[i] = pl, cl
        at += n
        cu[i + 1] = at
    lens = [r[0].size for r in rows]
    return PackedBatch(
        input_ids=torch.from_numpy(ids), labels=torch.from_numpy(labels), positions=torch.from_numpy(pos),
        prefix_lens=torch.from_numpy(prefix), causal_lens=torch.from_numpy(causal), cu_seqlens=torch.from_numpy(cu),
        numseqs=len(rows), total_seqlen=int(total),
        max_seqlen_prefix=max((r[3] for r in rows), default=0), max_seqlen_causal=max((r[4] for r in rows), default=0),
        max_seqlen_all=max(lens, default=0))


def token_layout(batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per token: sample id (-1 on padding), in-prefix flag, valid flag; all on the batch's device."""
    T = batch.length
    dev = batch.input_ids.device
    idx = torch.arange(T, device=dev)
    ends = batch.cu_seqlens[1:batch.numseqs + 1].to(dev).long()
    seq = torch.searchsorted(ends, idx, right=True)
    valid = idx < batch.total_seqlen
    seq = torch.where(valid, seq, torch.full_like(seq, -1))
    plen = batch.prefix_lens[:batch.numseqs].to(dev).long()
    in_prefix = valid & (batch.positions < plen[seq.clamp(min=0)]) if batch.numseqs else valid
    return seq, in_prefix, valid


def prefixlm_mask(batch: PackedBatch) -> torch.Tensor:
    """The reference dense PrefixLM mask, BoolTensor[T, T] (row = query). Padding rows are all False."""
    seq, in_prefix, valid = token_layout(batch)
    idx = torch.arange(batch.length, device=seq.device)
    same = (seq[:, None] == seq[None, :]) & valid[:, None] & valid[None, :]
    causal = idx[None, :] <= idx[:, None]
    both_prefix = in_prefix[:, None] & in_prefix[None, :]
    return same & (causal | both_prefix)


def _lpt_fits(lengths: np.ndarray, cap: int, bins: int) -> list[list[int]] | None:
    """Longest-processing-time-first into `bins` bins of capacity `cap`; None if some item overflows."""
    order = np.argsort(-lengths, kind="stable")
    heap = [(0, b) for b in range(bins)]
    out: list[list[int]] = [[] for _ in range(bins)]
    for i in order:
        load, b = heapq.heappop(heap)
        if load + int(lengths[i]) > cap:
            return None
        out[b].append(int(i))
        heapq.heappush(heap, (load + int(lengths[i]), b))
    return out


def multipack(lengths: np.ndarray, start: int, cap: int, world_size: int) -> tuple[list[list[int]], int]:
    """Next batch: the longest run of samples from `start` that LPT fits into `world_size` bins of `cap` tokens.

    Deterministic, so every rank computes the same answer. Returns per-rank index lists (absolute
    indices) and the next start; any empty rank list means the epoch is over (the last, partial
    window is dropped like the reference's drop_last_batch).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    n, budget = int(world_size), int(cap) * int(world_size)
    empty: list[list[int]] = [[] for _ in range(n)]
    if start >= lengths.size:
        return empty, int(start)
    if int(lengths[start]) > cap:
        raise ValueError(f"sample {start} has {int(lengths[start])} tokens, more than the per-rank cap {cap}; "
                         "fix: build the data with --context <= the per-rank batch (global_batch_size / world size)")
    csum = np.cumsum(lengths[start:])
    end = int(np.searchsorted(csum, budget, side="right")) + 1  # window just reaches the budget
    if end > lengths.size - start:
        return empty, int(lengths.size)  # not a full window left: end of the epoch
    window = lengths[start:start + end]
    lo, hi, best = 1, end, None
    while lo <= hi:
        mid = (lo + hi) // 2
        fit = _lpt_fits(window[:mid], cap, n)
        if fit is not None:
            lo, best = mid + 1, (mid, fit)
        else:
            hi = mid - 1
    if best is None:
        return empty, int(start)
    m, bins = best
    return [sorted(start + i for i in b) for b in bins], int(start + m)
