"""HRM-Text model: exact sizes, the recurrence and its truncated backprop, the transformer baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hrm.lm.model import SIZES, LMConfig, bp_steps_at, build_lm, lm_config, lm_loss, round_vocab
from hrm.lm.packing import pack


def _expected_params(hidden: int, n_layers: int, inter: int, vocab: int) -> tuple[int, int]:
    block = hidden * 4 * hidden + hidden * hidden + hidden * 2 * inter + inter * hidden
    return n_layers * block, 2 * vocab * hidden


@pytest.mark.parametrize("size,inter,total_m,non_emb_m", [("L", 3584, 694.7, 526.9), ("XL", 4096, 1182.8, 981.5),
                                                          ("B", 2816, 300.9, 166.7)])
def test_param_counts_match_the_public_table(size, inter, total_m, non_emb_m):
    cfg = lm_config(size, 65536)
    assert cfg.intermediate_size == inter and cfg.head_dim == 128
    model = build_lm(cfg, "meta")
    body, emb = _expected_params(cfg.hidden_size, cfg.n_layers, inter, 65536)
    assert model.num_params(non_embedding=True) == body
    assert model.num_params() == body + emb
    assert round(model.num_params() / 1e6, 1) == total_m and round(body / 1e6, 1) == non_emb_m
    assert len(model.blocks()) == cfg.n_layers and len(model.H_module.layers) == cfg.n_layers // 2
    baseline = build_lm(lm_config(size, 65536, net="transformer"), "meta")
    assert baseline.num_params() == model.num_params() and len(baseline.blocks()) == cfg.n_layers


def test_z_L_init_is_a_persistent_bf16_buffer():
    model = build_lm(lm_config("tiny", 256))
    assert model.z_L_init.dtype == torch.bfloat16 and "z_L_init" in model.state_dict()
    assert "z_L_init" not in dict(model.named_parameters())
    assert 0.7 < model.z_L_init.float().std() < 1.3


def test_config_checks_and_vocab_rounding():
    assert (round_vocab(1), round_vocab(256), round_vocab(50257)) == (256, 256, 50432)
    with pytest.raises(ValueError, match="arch.size"):
        lm_config("huge", 256)
    with pytest.raises(ValueError, match="net="):
        LMConfig(vocab_size=256, hidden_size=64, num_heads=2, n_layers=4, net="rnn")
    assert set(SIZES) >= {"tiny", "B", "L", "XL", "XXL", "XXL_wide"}


def test_bp_schedule_warms_up_from_2_to_5():
    total = 1000
    got = [bp_steps_at(s, total, 0.2) for s in range(0, total + 1, 10)]
    assert got[0] == 2 and got[-1] == 5 and got == sorted(got) and set(got) == {2, 3, 4, 5}
    assert bp_steps_at(200, total, 0.2) == 5 and bp_steps_at(199, total, 0.2) == 4
    assert bp_steps_at(0, total, 0.0) == 5


def _batch(vocab: int, T: int = 40) -> tuple:
    rng = np.random.default_rng(3)
    samples = [(rng.integers(1, vocab, 5), rng.integers(1, vocab, 7)),
               (rng.integers(1, vocab, 9), rng.integers(1, vocab, 4))]
    return samples, pack(samples, T)


def _tiny(net: str = "hrm"):
    torch.manual_seed(0)
    return build_lm(lm_config("tiny", 256, attn_backend="sdpa", net=net)).double()


# Which of the 8 module steps (L0 L1 L2 H0 L3 L4 L5 H1) keep gradients, per budget (spec 2.2).
GRAD_STEPS = {2: {"L5", "H1"}, 3: {"H0", "L5", "H1"}, 4: {"H0", "L4", "L5", "H1"}, 5: {"H0", "L3", "L4", "L5", "H1"}}


def _naive_forward(model, batch, bp: int) -> torch.Tensor:
    """The recurrence written out step by step; a no-grad step is a detached output."""
    from hrm.lm.attention import attn_meta

    meta = attn_meta(batch, "sdpa")
    cos, sin = model.rotary()
    cs = (cos[batch.positions], sin[batch.positions])
    z_h = model.embed(batch.input_ids)
    z_l = model.z_L_init.to(z_h.dtype).expand_as(z_h)
    names = iter(["L0", "L1", "L2", "H0", "L3", "L4", "L5", "H1"])
    for _ in range(2):
        for _ in range(3):
            z_l = model.L_module(z_l + z_h, cs, meta)
            z_l = z_l if next(names) in GRAD_STEPS[bp] else z_l.detach()
        z_h = model.H_module(z_h + z_l, cs, meta)
        z_h = z_h if next(names) in GRAD_STEPS[bp] else z_h.detach()
    return model.lm_head(z_h)


@pytest.mark.parametrize("bp", [2, 3, 5])
def test_truncated_backprop_matches_the_step_table(bp):
    model = _tiny()
    _, batch = _batch(256)
    grads = []
    for fwd in (lambda: model(batch, bp_steps=bp), lambda: _naive_forward(model, batch, bp)):
        model.zero_grad(set_to_none=True)
        loss, n = lm_loss(fwd(), batch.labels)
        (loss / n).backward()
        grads.append({k: p.grad.clone() if p.grad is not None else None for k, p in model.named_parameters()})
    for k in grads[0]:
        if grads[1][k] is None:
            assert grads[0][k] is None or not grads[0][k].any(), k
        else:
            torch.testing.assert_close(grads[0][k], grads[1][k])
    # z_H starts as the embedding and is not injected again: with H0 cut off, the embedding gets no gradient.
    assert (grads[0]["embed_tokens"] is None) == (bp == 2)


def test_full_forward_packing_invariance_and_no_grad_equality():
    for net in ("hrm", "transformer"):
        model = _tiny(net)
        samples, batch = _batch(256)
        logits = model(batch)
        assert logits.shape == (40, 256) and torch.isfinite(logits).all()
        alone = model(pack(samples[:1], 40))
        torch.testing.assert_close(logits[:11], alone[:11])  # the other sample changes nothing
        with torch.no_grad():
            torch.testing.assert_close(model(batch), logits.detach())


def test_lm_loss_sums_over_response_tokens():
    _, batch = _batch(256)
    logits = torch.zeros(40, 256)
    loss, n = lm_loss(logits, batch.labels)
    assert int(n) == 7 + 4  # resp tokens of both samples
    torch.testing.assert_close(loss, torch.tensor(11 * np.log(256.0), dtype=torch.float32))


def test_bad_bp_steps_is_rejected():
    model = _tiny()
    _, batch = _batch(256)
    with pytest.raises(ValueError, match="bp_steps"):
        model(batch, bp_steps=9)
    long = pack([(np.arange(1, 200), np.arange(1, 100))], 300)  # tiny's max_seq_len is 4096: fine
    assert model(long).shape == (300, 256)
    model.cfg.max_seq_len = 64
    with pytest.raises(ValueError, match="max_seq_len"):
        model(long)
