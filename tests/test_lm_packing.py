"""PrefixLM packing and attention: row layout, the mask rule, invariance, leakage, padding, gradients, multipack."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from hrm.lm.attention import attn_meta, prefixlm_attention
from hrm.lm.packing import multipack, pack, prefixlm_mask, sample_rows

RNG = np.random.default_rng(0)


def _sample(n_inst: int, n_resp: int) -> tuple[np.ndarray, np.ndarray]:
    return RNG.integers(1, 100, n_inst), RNG.integers(1, 100, n_resp)


def _naive_mask(lens: list[tuple[int, int]], T: int) -> torch.Tensor:
    """The rule, one pair at a time: same sample and (key <= query or both in the prefix)."""
    m = torch.zeros(T, T, dtype=torch.bool)
    at = 0
    for p, c in lens:
        n = p + c
        for i in range(n):
            for j in range(n):
                m[at + i, at + j] = j <= i or (i < p and j < p)
        at += n
    return m


def test_sample_rows_shift_and_positions():
    inp, lab, pos, p, c = sample_rows(np.array([10, 11, 12]), np.array([20, 21, 22]))
    assert inp.tolist() == [10, 11, 12, 20, 21]
    assert lab.tolist() == [-100, -100, 20, 21, 22]  # EOQ (12) predicts resp[0]
    assert pos.tolist() == [0, 1, 2, 3, 4] and (p, c) == (3, 2)
    assert sample_rows(np.array([1, 2]), np.array([3]))[4] == 0  # prompt-only inference row
    with pytest.raises(ValueError, match="response"):
        sample_rows(np.array([1]), np.array([], dtype=np.int64))


def test_pack_layout_and_overflow():
    b = pack([(np.array([1, 2]), np.array([3, 4, 5])), (np.array([6]), np.array([7, 8]))], 12)
    assert b.input_ids.tolist() == [1, 2, 3, 4, 6, 7] + [0] * 6
    assert b.positions.tolist() == [0, 1, 2, 3, 0, 1] + [0] * 6
    assert b.labels.tolist()[:6] == [-100, 3, 4, 5, 7, 8] and set(b.labels.tolist()[6:]) == {-100}
    assert b.cu_seqlens.tolist()[:3] == [0, 4, 6] and b.cu_seqlens.shape == (13,)
    assert b.prefix_lens.tolist()[:3] == [2, 1, 0] and b.causal_lens.tolist()[:3] == [2, 1, 0]
    assert (b.numseqs, b.total_seqlen, b.max_seqlen_prefix, b.max_seqlen_causal, b.max_seqlen_all) == (2, 6, 2, 2, 4)
    with pytest.raises(ValueError, match="batch_max_length"):
        pack([(np.array([1, 2]), np.array([3, 4, 5]))], 3)


def test_mask_matches_the_rule_pair_by_pair():
    shapes = [(3, 4), (1, 5), (6, 2)]
    samples = [_sample(p, c + 1) for p, c in shapes]
    b = pack(samples, 24)
    assert torch.equal(prefixlm_mask(b), _naive_mask(shapes, 24))


def test_prefix_len_one_is_causal():
    b = pack([_sample(1, 6), _sample(1, 4)], 12)
    m = prefixlm_mask(b)
    causal = torch.block_diag(torch.ones(6, 6).tril(), torch.ones(4, 4).tril(), torch.zeros(2, 2)).bool()
    assert torch.equal(m, causal)


def _qkv(T: int, requires_grad: bool = False) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(T, 2, 8, generator=g, dtype=torch.float64, requires_grad=requires_grad) for _ in range(3)]


def test_packing_invariance_and_no_leakage():
    a, c = _sample(4, 5), _sample(3, 3)
    packed = pack([a, c], 16)
    alone = pack([a], 16)
    q, k, v = _qkv(16)
    out_p = prefixlm_attention(q, k, v, attn_meta(packed, "sdpa"))
    out_a = prefixlm_attention(q, k, v, attn_meta(alone, "sdpa"))
    torch.testing.assert_close(out_p[:8], out_a[:8])  # sample a's rows do not see sample c
    q2, k2, v2 = (t.clone() for t in (q, k, v))
    for t in (q2, k2, v2):
        t[8:13] = torch.randn_like(t[8:13])  # change only sample c
    out_p2 = prefixlm_attention(q2, k2, v2, attn_meta(packed, "sdpa"))
    torch.testing.assert_close(out_p2[:8], out_p[:8])
    assert not torch.allclose(out_p2[8:13], out_p[8:13])


def test_padding_rows_zero_and_get_no_gradient():
    b = pack([_sample(3, 4)], 10)  # 6 real tokens, 4 padding
    q, k, v = _qkv(10, requires_grad=True)
    out = prefixlm_attention(q, k, v, attn_meta(b, "sdpa"))
    assert torch.equal(out[6:], torch.zeros_like(out[6:])) and out[:6].abs().sum() > 0
    out.sum().backward()
    for t in (q, k, v):
        assert torch.equal(t.grad[6:], torch.zeros_like(t.grad[6:]))


def test_gradient_matches_a_naive_per_sample_loop():
    shapes = [(3, 2), (2, 4), (4, 1)]
    b = pack([_sample(p, c + 1) for p, c in shapes], 18)
    q, k, v = _qkv(18, requires_grad=True)
    w = torch.randn(18, 2, 8, dtype=torch.float64)
    (prefixlm_attention(q, k, v, attn_meta(b, "sdpa")) * w).sum().backward()
    got = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    loss, at = 0.0, 0
    for p, c in shapes:  # each sample alone, scores written out with its own mask
        n = p + c
        qs, ks, vs = (t[at:at + n].transpose(0, 1) for t in (q, k, v))
        s = qs @ ks.transpose(1, 2) / 8 ** 0.5
        allowed = _naive_mask([(p, c)], n)
        s = s.masked_fill(~allowed, float("-inf"))
        loss = loss + ((s.softmax(-1) @ vs).transpose(0, 1) * w[at:at + n]).sum()
        at += n
    loss.backward()
    for g, t in zip(got, (q, k, v)):
        torch.testing.assert_close(g, t.grad)


def test_flex_matches_sdpa():
    b = pack([_sample(5, 4), _sample(1, 7), _sample(3, 3)], 24)
    q, k, v = (t.float() for t in _qkv(24))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flex = prefixlm_attention(q, k, v, attn_meta(b, "flex"))
    torch.testing.assert_close(flex, prefixlm_attention(q, k, v, attn_meta(b, "sdpa")), atol=1e-5, rtol=1e-5)


def test_multipack_covers_each_index_once_within_cap():
    lengths = RNG.integers(5, 60, 300)
    start, seen, steps = 0, [], 0
    while True:
        bins, nxt = multipack(lengths, start, 128, 4)
        if any(not b for b in bins):
            break
        assert bins == multipack(lengths, start, 128, 4)[0]  # deterministic: every rank agrees
        assert all(lengths[b].sum() <= 128 for b in bins)
        flat = sorted(i for b in bins for i in b)
        assert flat == list(range(start, nxt))  # a contiguous run, each index once
        seen += flat
        start, steps = nxt, steps + 1
    assert steps > 10 and len(seen) == len(set(seen))
    assert lengths[seen].sum() / (steps * 4 * 128) > 0.8  # LPT packs the token budget well
    assert len(seen) < 300  # the last, partial window was dropped


def test_multipack_rejects_an_oversized_sample():
    with pytest.raises(ValueError, match="context"):
        multipack(np.array([10, 300, 10]), 1, 128, 2)


def _varlen_reference(q, k, v, cu_q, cu_k, max_q, max_k, causal=False):  # noqa: ANN001
    """FlashAttention's documented varlen semantics (causal = bottom-right aligned), written densely."""
    out = torch.zeros_like(q)
    for i in range(cu_q.numel() - 1):
        qs, ks, vs = q[cu_q[i]:cu_q[i + 1]], k[cu_k[i]:cu_k[i + 1]], v[cu_k[i]:cu_k[i + 1]]
        nq, nk = qs.shape[0], ks.shape[0]
        assert nq <= max_q and nk <= max_k
        s = torch.einsum("qhd,khd->hqk", qs, ks) / qs.shape[-1] ** 0.5
        if causal:
            allowed = torch.arange(nk)[None, :] <= torch.arange(nq)[:, None] + (nk - nq)
            s = s.masked_fill(~allowed, float("-inf"))
        out[cu_q[i]:cu_q[i + 1]] = torch.einsum("hqk,khd->qhd", s.softmax(-1), vs)
    return out


def test_flash_two_pass_index_logic_matches_the_dense_mask(monkeypatch):
    """The fa2/fa3 path's gathers and cu_seqlens, checked on CPU with a dense stand-in for the kernel."""
    import hrm.lm.attention as attention

    monkeypatch.setattr(attention, "_varlen", lambda backend: _varlen_reference)
    b = pack([_sample(4, 3), _sample(1, 6), _sample(5, 1), _sample(2, 2)], 24)  # includes a causal_len-0 row
    q, k, v = _qkv(24)
    meta = attn_meta(b, "sdpa")
    two = attn_meta(b, "fa2")
    torch.testing.assert_close(prefixlm_attention(q, k, v, two), prefixlm_attention(q, k, v, meta))
