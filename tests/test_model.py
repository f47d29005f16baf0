"""The HRM model: reference parameter counts, layer math, the one-step gradient and the ACT wrapper."""

from __future__ import annotations

import math

import pytest
import torch

from hrm.data.format import DatasetMetadata
from hrm.model import build_model, normalize_state_dict, num_params
from hrm.model.hrm_act import HierarchicalReasoningModel_ACTV1, HRMConfig
from hrm.model.layers import (
    apply_rotary_pos_emb,
    attention_function,
    resolve_attn_backend,
    rms_norm,
    swiglu_width,
    trunc_normal_init_,
)

ARCH = {"name": "hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1",
        "loss": {"name": "losses@ACTLossHead", "loss_type": "stablemax_cross_entropy"},
        "halt_exploration_prob": 0.1, "halt_max_steps": 16, "H_cycles": 2, "L_cycles": 2, "H_layers": 4,
        "L_layers": 4, "hidden_size": 512, "num_heads": 8, "expansion": 4, "puzzle_emb_ndim": 512,
        "pos_encodings": "rope", "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "forward_dtype": "bfloat16",
        "attn_backend": "auto"}


def meta(vocab: int, seq_len: int, num_ids: int = 1) -> DatasetMetadata:
    return DatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=vocab, seq_len=seq_len,
                           num_puzzle_identifiers=num_ids, total_groups=1, mean_puzzle_examples=1.0)


def tiny_config(**kw) -> HRMConfig:
    base = dict(batch_size=4, seq_len=9, vocab_size=7, num_puzzle_identifiers=3, puzzle_emb_ndim=32, hidden_size=32,
                num_heads=4, H_layers=1, L_layers=1, halt_max_steps=4, forward_dtype="float32")
    base.update(kw)
    return HRMConfig(**base)


def tiny_batch(cfg: HRMConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"inputs": torch.randint(1, cfg.vocab_size, (cfg.batch_size, cfg.seq_len), generator=g, dtype=torch.int32),
            "labels": torch.randint(1, cfg.vocab_size, (cfg.batch_size, cfg.seq_len), generator=g, dtype=torch.int32),
            "puzzle_identifiers": torch.randint(0, cfg.num_puzzle_identifiers, (cfg.batch_size,), generator=g,
                                                dtype=torch.int32)}


@pytest.mark.parametrize("vocab,seq_len,num_ids,expected", [
    (11, 81, 1, 27_275_266),       # Sudoku
    (12, 900, 5000, 27_276_290),   # ARC (num ids do not count: the puzzle table is a buffer)
    (6, 900, 1, 27_270_146),       # Maze
])
def test_parameter_counts_match_reference(vocab, seq_len, num_ids, expected):
    model = build_model(ARCH, meta(vocab, seq_len, num_ids), batch_size=2, device=torch.device("meta"))
    assert num_params(model) == expected


def test_learned_positions_add_a_table():
    model = build_model({**ARCH, "pos_encodings": "learned"}, meta(11, 81), 2, torch.device("meta"))
    assert num_params(model) == 27_317_250


def test_state_dict_keys_follow_reference_tree():
    model = build_model(ARCH, meta(11, 81), 2, torch.device("meta"))
    keys = set(model.state_dict())
    for key in ("model.inner.embed_tokens.embedding_weight", "model.inner.lm_head.weight", "model.inner.q_head.bias",
                "model.inner.puzzle_emb.weights", "model.inner.H_init", "model.inner.L_init",
                "model.inner.H_level.layers.3.self_attn.qkv_proj.weight",
                "model.inner.L_level.layers.0.mlp.gate_up_proj.weight",
                "model.inner.L_level.layers.0.mlp.down_proj.weight",
                "model.inner.H_level.layers.0.self_attn.o_proj.weight"):
        assert key in keys, key
    assert not any("rotary" in k or "local_" in k for k in keys)  # non-persistent buffers
    assert tuple(model.state_dict()["model.inner.H_level.layers.0.mlp.gate_up_proj.weight"].shape) == (3072, 512)


def test_compiled_prefix_is_stripped():
    sd = {"_orig_mod.model.inner.H_init": torch.zeros(2), "model.inner.L_init": torch.ones(2)}
    assert set(normalize_state_dict(sd)) == {"model.inner.H_init", "model.inner.L_init"}


def test_truncated_normal_has_requested_std_and_clip():
    t = trunc_normal_init_(torch.empty(400_000), std=0.5)
    assert abs(t.std().item() - 0.5) < 0.005
    assert t.abs().max().item() <= 2 * 0.5 * 1.13685 + 1e-4
    assert t.abs().max().item() > 2 * 0.5 * 1.13 - 0.01  # close to the clip, so it is the corrected std
    assert trunc_normal_init_(torch.ones(3), std=0).eq(0).all()


def test_swiglu_width_and_rmsnorm():
    assert swiglu_width(512, 4) == 1536
    x = torch.randn(3, 16, dtype=torch.float64) * 7
    y = rms_norm(x, 1e-5)
    expected = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-5)
    torch.testing.assert_close(y, expected)


def test_rope_is_rotate_half_and_preserves_norm():
    from hrm.model.layers import RotaryEmbedding

    rope = RotaryEmbedding(8, 5, 10000.0)
    cos, sin = rope()
    q = torch.randn(1, 5, 2, 8)
    k = torch.randn(1, 5, 2, 8)
    q2, k2 = apply_rotary_pos_emb(q, k, cos, sin)
    torch.testing.assert_close(q2.norm(dim=-1), q.norm(dim=-1))
    # position 0 is the identity; position t rotates pair (i, i+4) by t * theta^(-2i/8)
    torch.testing.assert_close(q2[:, 0], q[:, 0])
    t, i = 3, 1
    angle = t * 10000.0 ** (-2 * i / 8)
    a, b = q[0, t, 0, i], q[0, t, 0, i + 4]
    assert math.isclose(q2[0, t, 0, i].item(), (a * math.cos(angle) - b * math.sin(angle)).item(), abs_tol=1e-5)
    assert math.isclose(q2[0, t, 0, i + 4].item(), (b * math.cos(angle) + a * math.sin(angle)).item(), abs_tol=1e-5)


def test_attention_backend_choice_and_errors():
    assert resolve_attn_backend("auto", "cpu", torch.bfloat16) == "sdpa"
    assert resolve_attn_backend("sdpa", "cpu", torch.float32) == "sdpa"
    with pytest.raises(ValueError, match="unknown arch.attn_backend='flash'"):
        resolve_attn_backend("flash", "cpu", torch.float32)
    with pytest.raises(ValueError, match="arch.attn_backend=fa2"):
        resolve_attn_backend("fa2", "cpu", torch.float32)


@pytest.mark.parametrize("capability, installed, expected", [
    ((9, 0), ("flash_attn_interface", "flash_attn"), "fa3"),   # H100: FA3 when built
    ((8, 6), ("flash_attn_interface", "flash_attn"), "fa2"),   # A5000 / A40: FA3 would not run
    ((8, 0), ("flash_attn",), "fa2"),
    ((7, 0), ("flash_attn_interface", "flash_attn"), "sdpa"),  # V100: neither FlashAttention runs
    ((7, 5), (), "sdpa"),
])
def test_auto_backend_follows_the_gpu_generation(monkeypatch, capability, installed, expected):
    """No GPU needed: the choice depends only on what imports and the device's compute capability."""
    from hrm.model import layers

    monkeypatch.setattr(layers, "_importable", lambda name: name in installed)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert resolve_attn_backend("auto", "cuda", torch.bfloat16) == expected
    assert resolve_attn_backend("auto", "cuda", torch.float32) == "sdpa"  # FlashAttention is 16-bit only
    if expected == "sdpa" and "flash_attn" in installed:
        with pytest.raises(ValueError, match=r"fa2 needs a GPU of compute capability 8\.0 or newer, this one is 7\.0"):
            resolve_attn_backend("fa2", "cuda", torch.bfloat16)


def _manual_attention(q, k, v):
    scores = torch.einsum("bshd,bthd->bhst", q, k) / math.sqrt(q.shape[-1])
    return torch.einsum("bhst,bthd->bshd", scores.softmax(-1), v)


def test_sdpa_matches_manual_attention():
    q, k, v = (torch.randn(2, 7, 3, 16, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(attention_function("sdpa")(q, k, v, False), _manual_attention(q, k, v))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["fa3", "fa2"])
def test_flash_backends_match_sdpa(backend):
    try:
        resolve_attn_backend(backend, "cuda", torch.bfloat16)
    except ValueError as e:
        pytest.skip(str(e))
    q, k, v = (torch.randn(4, 82, 8, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    ref = attention_function("sdpa")(q, k, v, False).float()
    out = attention_function(backend)(q, k, v, False).float()
    torch.testing.assert_close(out, ref, atol=2e-2, rtol=2e-2)


def test_inner_forward_shapes_and_dtypes():
    cfg = tiny_config(forward_dtype="bfloat16")
    model = HierarchicalReasoningModel_ACTV1(cfg)
    batch = tiny_batch(cfg)
    carry = model.initial_carry(batch)
    carry, out = model(carry, batch)
    assert out["logits"].shape == (4, 9, 7) and out["logits"].dtype == torch.bfloat16
    assert out["q_halt_logits"].dtype == torch.float32
    assert carry.inner_carry.z_H.shape == (4, 10, 32) and carry.inner_carry.z_H.dtype == torch.bfloat16
    # q head starts at -5 for both logits
    torch.testing.assert_close(out["q_halt_logits"], torch.full((4,), -5.0))


def test_one_step_gradient_equals_last_two_applications():
    """Only the final L and H applications are differentiated: the gradient equals that of a model
    whose earlier updates are computed separately and fed in as constants."""
    torch.manual_seed(0)
    cfg = tiny_config()
    model = HierarchicalReasoningModel_ACTV1(cfg).inner
    model.train()
    batch = tiny_batch(cfg)
    carry = model.reset_carry(torch.ones(4, dtype=torch.bool), model.empty_carry(4))
    _, logits, _ = model(carry, batch)
    logits.float().square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    model.zero_grad()
    cos_sin = model.cos_sin()
    x = model.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
    with torch.no_grad():
        z_H, z_L = carry.z_H, carry.z_L
        z_L = model.L_level(z_L, z_H + x, cos_sin)   # L
        z_L = model.L_level(z_L, z_H + x, cos_sin)   # L
        z_H = model.H_level(z_H, z_L, cos_sin)       # H
        z_L = model.L_level(z_L, z_H + x, cos_sin)   # L  (no-grad sequence for 2x2: L, L, H, L)
    z_L = model.L_level(z_L, z_H + x, cos_sin)
    z_H = model.H_level(z_H, z_L, cos_sin)
    model.lm_head(z_H)[:, model.puzzle_emb_len:].float().square().sum().backward()
    for name, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[name], p.grad, msg=name)
    assert "H_init" not in dict(model.named_parameters())


def test_act_eval_runs_exactly_halt_max_steps():
    cfg = tiny_config(halt_max_steps=5)
    model = HierarchicalReasoningModel_ACTV1(cfg).eval()
    batch = tiny_batch(cfg)
    carry = model.initial_carry(batch)
    with torch.no_grad():
        for step in range(1, 6):
            carry, out = model(carry, batch)
            assert "target_q_continue" not in out
            assert carry.halted.all().item() == (step == 5)
            assert (carry.steps == step).all()


def test_act_training_refills_only_halted_rows():
    torch.manual_seed(1)
    cfg = tiny_config(halt_max_steps=3, halt_exploration_prob=0.0)
    model = HierarchicalReasoningModel_ACTV1(cfg).train()
    b1, b2 = tiny_batch(cfg, 1), tiny_batch(cfg, 2)
    carry = model.initial_carry(b1)
    carry, out = model(carry, b1)  # everyone reset at first
    assert torch.equal(carry.current_data["inputs"], b1["inputs"])
    assert "target_q_continue" in out and out["target_q_continue"].shape == (4,)
    # q head at init: halt == continue logits, strict '>' means nobody halts before the limit
    assert not carry.halted.any()
    carry.halted = torch.tensor([True, False, True, False])
    carry, _ = model(carry, b2)
    assert torch.equal(carry.current_data["inputs"][[0, 2]], b2["inputs"][[0, 2]])
    assert torch.equal(carry.current_data["inputs"][[1, 3]], b1["inputs"][[1, 3]])
    assert carry.steps.tolist() == [1, 2, 1, 2]


def test_act_target_q_uses_halt_logit_on_last_step():
    torch.manual_seed(2)
    cfg = tiny_config(halt_max_steps=2, halt_exploration_prob=0.0)
    model = HierarchicalReasoningModel_ACTV1(cfg).train()
    with torch.no_grad():
        model.inner.q_head.bias.copy_(torch.tensor([0.3, 1.7]))
    batch = tiny_batch(cfg)
    carry = model.initial_carry(batch)
    carry, out = model(carry, batch)  # step 1: not last -> sigmoid(max(0.3, 1.7))
    torch.testing.assert_close(out["target_q_continue"], torch.sigmoid(torch.full((4,), 1.7)))
    carry.halted = torch.zeros(4, dtype=torch.bool)
    carry, out = model(carry, batch)  # step 2 = last -> sigmoid(q_halt) = sigmoid(0.3)
    torch.testing.assert_close(out["target_q_continue"], torch.sigmoid(torch.full((4,), 0.3)))
    assert carry.halted.all()


def test_forward_dtype_float32_is_honoured():
    cfg = tiny_config(forward_dtype="float32")
    model = HierarchicalReasoningModel_ACTV1(cfg)
    batch = tiny_batch(cfg)
    _, out = model(model.initial_carry(batch), batch)
    assert out["logits"].dtype == torch.float32
    assert model.inner.H_init.dtype == torch.float32


def test_bad_arch_values_give_one_line():
    with pytest.raises(ValueError, match="pos_encodings"):
        HierarchicalReasoningModel_ACTV1(tiny_config(pos_encodings="alibi"))
    with pytest.raises(ValueError, match="not divisible by arch.num_heads"):
        HierarchicalReasoningModel_ACTV1(tiny_config(num_heads=5))
