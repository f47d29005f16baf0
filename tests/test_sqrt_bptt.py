"""grad_mode full / sqrt and grad_window: exact gradients through a whole segment, in less memory."""

from __future__ import annotations

import pytest
import torch

from hrm.grad_settings import application_order, num_applications
from hrm.model.hrm_act import HierarchicalReasoningModel_ACTV1, HRMConfig
from hrm.model.losses import ACTLossHead
from hrm.model.sqrt_bptt import (
    choose_stretch,
    estimate_activation_bytes,
    measure_application_bytes,
    plan_for_batch,
)

B = 3


def config(**kw) -> HRMConfig:
    base = dict(batch_size=B, seq_len=6, vocab_size=7, num_puzzle_identifiers=3, puzzle_emb_ndim=16,
                hidden_size=16, num_heads=2, H_layers=1, L_layers=1, H_cycles=2, L_cycles=2, halt_max_steps=3,
                forward_dtype="float32")
    base.update(kw)
    return HRMConfig(**base)


def batch_for(cfg: HRMConfig, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (cfg.batch_size, cfg.seq_len)
    return {"inputs": torch.randint(1, cfg.vocab_size, shape, generator=g, dtype=torch.int32),
            "labels": torch.randint(1, cfg.vocab_size, shape, generator=g, dtype=torch.int32),
            "puzzle_identifiers": torch.randint(0, cfg.num_puzzle_identifiers, (cfg.batch_size,), generator=g,
                                                dtype=torch.int32)}


def inner_model(**kw):
    torch.manual_seed(0)  # same weights for every grad_mode
    return HierarchicalReasoningModel_ACTV1(config(**kw)).inner.train()


def fresh_carry(inner):
    return inner.reset_carry(torch.ones(B, dtype=torch.bool), inner.empty_carry(B))


def segment_grads(inner, batch) -> dict[str, torch.Tensor]:
    """Gradients of a loss on logits and the Q head after one inner segment, incl. the puzzle rows."""
    inner.zero_grad()
    inner.puzzle_emb.local_weights.grad = None
    _, logits, (q_halt, q_cont) = inner(fresh_carry(inner), batch)
    (logits.square().sum() + q_halt.sum() - 2 * q_cont.sum()).backward()
    grads = {n: p.grad.clone() for n, p in inner.named_parameters() if p.grad is not None}
    local = inner.puzzle_emb.local_weights
    grads["puzzle_emb.local_weights"] = torch.zeros_like(local) if local.grad is None else local.grad.clone()
    return grads


def assert_same_grads(got: dict, ref: dict, rtol: float = 1e-5) -> None:
    assert set(got) == set(ref)
    for name, g in ref.items():
        err = (got[name] - g).norm() / g.norm().clamp_min(1e-30)
        assert err <= rtol, f"{name}: relative error {err:.2e}"


def count_calls(inner) -> dict[str, int]:
    calls = {"L": 0, "H": 0}
    inner.L_level.register_forward_pre_hook(lambda *_: calls.__setitem__("L", calls["L"] + 1))
    inner.H_level.register_forward_pre_hook(lambda *_: calls.__setitem__("H", calls["H"] + 1))
    return calls


def test_application_order_is_the_references():
    assert application_order(2, 2) == ["L", "L", "H", "L", "L", "H"]
    assert num_applications(2, 2) == 6 and num_applications(4, 3) == 16 and num_applications(8, 7) == 64
    assert application_order(1, 3) == ["L", "L", "L", "H"]


def test_full_gradient_equals_an_unrolled_computation():
    """The whole segment written out by hand, as spec §1.6 describes it, with the gradient left on."""
    inner = inner_model(H_cycles=3, L_cycles=2, grad_mode="full")
    batch = batch_for(inner.config)
    cos_sin = inner.cos_sin()
    carry = fresh_carry(inner)

    x = inner.input_embeddings(batch["inputs"], batch["puzzle_identifiers"]).detach().requires_grad_(True)
    z_H, z_L = inner.reason(carry.z_H, carry.z_L, x, cos_sin)
    (z_H.square().sum() + z_L.sum()).backward()
    got = {n: p.grad.clone() for n, p in inner.named_parameters() if p.grad is not None}
    got_x = x.grad.clone()

    inner.zero_grad()
    x2 = x.detach().clone().requires_grad_(True)
    z_H, z_L = carry.z_H, carry.z_L
    for h in range(3):
        for _ in range(2):
            z_L = inner.L_level(z_L, z_H + x2, cos_sin)
        if h != 2:
            z_H = inner.H_level(z_H, z_L, cos_sin)
    z_H = inner.H_level(z_H, z_L, cos_sin)  # the final pair's H step (its L step was the loop's last)
    (z_H.square().sum() + z_L.sum()).backward()
    ref = {n: p.grad.clone() for n, p in inner.named_parameters() if p.grad is not None}
    assert set(ref) == {n for n, _ in inner.named_parameters() if "_level" in n}
    assert_same_grads(got, ref, rtol=1e-6)
    torch.testing.assert_close(got_x, x2.grad, rtol=1e-6, atol=0)


def test_full_reaches_x_through_every_L_application():
    """Cutting x out of any one L application changes x's gradient: all of them are differentiated."""
    inner = inner_model(H_cycles=2, L_cycles=2, grad_mode="full")
    cos_sin = inner.cos_sin()
    carry = fresh_carry(inner)
    x = torch.randn(B, inner.total_seq_len, 16)
    kinds = application_order(2, 2)

    def x_grad(cut: int | None) -> torch.Tensor:
        xl = x.clone().requires_grad_(True)
        z_H, z_L = carry.z_H, carry.z_L
        for i, kind in enumerate(kinds):
            if kind == "L":
                z_L = inner.L_level(z_L, z_H + (xl.detach() if i == cut else xl), cos_sin)
            else:
                z_H = inner.H_level(z_H, z_L, cos_sin)
        z_H.sum().backward()
        return xl.grad

    xg = x.clone().requires_grad_(True)
    inner.reason(carry.z_H, carry.z_L, xg, cos_sin)[0].sum().backward()
    torch.testing.assert_close(xg.grad, x_grad(None), rtol=1e-6, atol=0)
    for i, kind in enumerate(kinds):
        if kind == "L":
            assert not torch.allclose(xg.grad, x_grad(i)), f"L application {i} does not reach x"


@pytest.mark.parametrize("impl", ["function", "torch"])  # our autograd.Function / torch.utils.checkpoint
@pytest.mark.parametrize("H_cycles,L_cycles", [(4, 3), (8, 7)])  # T = 16 and T = 64
def test_sqrt_gradient_equals_full(H_cycles, L_cycles, impl, monkeypatch):
    monkeypatch.setattr("hrm.model.sqrt_bptt.CHECKPOINT_IMPL", impl)
    T = num_applications(H_cycles, L_cycles)
    full = inner_model(H_cycles=H_cycles, L_cycles=L_cycles, grad_mode="full")
    sqrt = inner_model(H_cycles=H_cycles, L_cycles=L_cycles, grad_mode="sqrt")
    batch = batch_for(full.config)
    full_calls, sqrt_calls = count_calls(full), count_calls(sqrt)
    ref = segment_grads(full, batch)
    assert_same_grads(segment_grads(sqrt, batch), ref, rtol=1e-5)
    # full runs each application once; sqrt recomputes every stretch but the last (stretch = ceil(sqrt T))
    k = int(T**0.5)
    assert full_calls["L"] + full_calls["H"] == T
    assert sqrt_calls["L"] + sqrt_calls["H"] == 2 * T - k


def test_window_of_two_is_the_one_step_gradient():
    batch = batch_for(config())
    ref = segment_grads(inner_model(grad_mode="one_step"), batch)
    for mode in ("full", "sqrt"):
        assert_same_grads(segment_grads(inner_model(grad_mode=mode, grad_window=2), batch), ref, rtol=1e-6)
    name = "L_level.layers.0.mlp.down_proj.weight"
    assert not torch.equal(segment_grads(inner_model(grad_mode="full"), batch)[name], ref[name])


def test_window_differentiates_only_the_last_k_applications():
    H, L, K = 3, 2, 5
    inner = inner_model(H_cycles=H, L_cycles=L, grad_mode="sqrt", grad_window=K)
    batch = batch_for(inner.config)
    got = segment_grads(inner, batch)

    inner.zero_grad()
    inner.puzzle_emb.local_weights.grad = None
    cos_sin = inner.cos_sin()
    carry = fresh_carry(inner)
    x = inner.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
    kinds = application_order(H, L)
    z_H, z_L = carry.z_H, carry.z_L
    for i, kind in enumerate(kinds):
        with torch.set_grad_enabled(i >= len(kinds) - K):
            if kind == "L":
                z_L = inner.L_level(z_L, z_H + x, cos_sin)
            else:
                z_H = inner.H_level(z_H, z_L, cos_sin)
    logits = inner.lm_head(z_H)[:, inner.puzzle_emb_len:]
    q = inner.q_head(z_H[:, 0])
    (logits.square().sum() + q[:, 0].sum() - 2 * q[:, 1].sum()).backward()
    ref = {n: p.grad.clone() for n, p in inner.named_parameters() if p.grad is not None}
    ref["puzzle_emb.local_weights"] = inner.puzzle_emb.local_weights.grad.clone()
    assert_same_grads(got, ref, rtol=1e-5)

    T = num_applications(H, L)
    batch_full = segment_grads(inner_model(H_cycles=H, L_cycles=L, grad_mode="full"), batch)
    whole = segment_grads(inner_model(H_cycles=H, L_cycles=L, grad_mode="full", grad_window=T), batch)
    assert_same_grads(whole, batch_full, rtol=1e-6)
    only_h = segment_grads(inner_model(H_cycles=H, L_cycles=L, grad_mode="full", grad_window=1), batch)
    assert not any(n.startswith("L_level") for n in only_h)
    assert only_h["puzzle_emb.local_weights"].abs().sum() == 0  # x is read by L steps only
    assert only_h["H_level.layers.0.mlp.down_proj.weight"].abs().sum() > 0


def test_eval_outputs_do_not_depend_on_grad_mode():
    batch = batch_for(config())
    outs = []
    for mode in ("one_step", "full", "sqrt"):
        model = inner_model(grad_mode=mode).eval()
        with torch.no_grad():
            outs.append(model(fresh_carry(model), batch)[1])
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=0)
    torch.testing.assert_close(outs[2], outs[0], rtol=0, atol=0)


def test_sqrt_equals_full_through_the_act_loss_head_over_two_steps():
    cfg = dict(H_cycles=3, L_cycles=3, halt_exploration_prob=0.0)
    batch = batch_for(config())
    grads = []
    for mode in ("full", "sqrt"):
        torch.manual_seed(0)
        model = HierarchicalReasoningModel_ACTV1(config(grad_mode=mode, **cfg))
        head = ACTLossHead(model, "stablemax_cross_entropy").train()
        carry = head.initial_carry(batch)
        for _ in range(2):
            carry, loss, *_ = head(carry=carry, batch=batch)
            loss.backward()
        grads.append({n: p.grad.clone() for n, p in head.named_parameters() if p.grad is not None})
    assert_same_grads(grads[1], grads[0], rtol=1e-5)


@pytest.mark.parametrize("kw,match", [
    (dict(grad_mode="all"), "arch.grad_mode='all' is unknown: use one_step, full or sqrt"),
    (dict(grad_mode="full", grad_window=0), r"arch.grad_window=0 is outside 1..6"),
    (dict(grad_mode="sqrt", grad_window=7), r"arch.grad_window=7 is outside 1..6"),
    (dict(grad_window=2), "needs arch.grad_mode=full or sqrt"),
    (dict(grad_mode="full", memory_limit_mb=100), "only applies to arch.grad_mode=sqrt"),
    (dict(grad_mode="sqrt", memory_limit_mb=-1), "must be a positive number"),
])
def test_bad_grad_settings_give_one_line(kw, match):
    with pytest.raises(ValueError, match=match):
        HierarchicalReasoningModel_ACTV1(config(**kw))


def test_memory_limit_below_one_application_is_refused_before_training():
    inner = inner_model(H_cycles=4, L_cycles=3, grad_mode="sqrt", memory_limit_mb=1e-3)
    with pytest.raises(ValueError, match=r"memory_limit_mb=0.001 is below .* one module application alone"):
        plan_for_batch(inner, batch_for(inner.config))


def test_application_cost_is_measured_and_scales_with_batch():
    sizes = []
    for b in (2, 4):
        torch.manual_seed(0)
        inner = HierarchicalReasoningModel_ACTV1(config(batch_size=b, puzzle_emb_ndim=0)).inner
        z = inner.reset_carry(torch.ones(b, dtype=torch.bool), inner.empty_carry(b))
        x = torch.randn(b, inner.total_seq_len, 16)
        sizes.append(measure_application_bytes(inner, z.z_H, z.z_L, x, inner.cos_sin()))
    assert sizes[0]["L"] > 10 * (2 * 6 * 16 * 4)  # many state-sized tensors are saved per application
    assert sizes[1]["L"] == 2 * sizes[0]["L"] and sizes[1]["H"] == 2 * sizes[0]["H"]


def test_memory_limit_picks_the_stretch_and_logs_once(capsys):
    probe = inner_model(H_cycles=4, L_cycles=3, grad_mode="sqrt", memory_limit_mb=1e6)
    batch = batch_for(probe.config)
    plan = plan_for_batch(probe, batch)
    assert plan.stretch == 16  # everything fits: no recomputation
    calls = count_calls(probe)
    segment_grads(probe, batch)
    assert calls["L"] + calls["H"] == 16

    tight = (plan.app_bytes * 5 + 8 * plan.state_bytes) / 2**20  # room for a stretch of about 5
    inner = inner_model(H_cycles=4, L_cycles=3, grad_mode="sqrt", memory_limit_mb=tight)
    capsys.readouterr()
    plan = plan_for_batch(inner, batch)
    assert 1 < plan.stretch < 16 and plan.estimate_bytes <= tight * 2**20
    assert estimate_activation_bytes(16, plan.stretch + 1, plan.app_bytes, plan.state_bytes) > tight * 2**20
    ref = segment_grads(inner_model(H_cycles=4, L_cycles=3, grad_mode="full"), batch)
    assert_same_grads(segment_grads(inner, batch), ref)
    segment_grads(inner, batch)
    log = capsys.readouterr().out.strip().splitlines()
    assert len(log) == 1 and f"stretch(es) of {plan.stretch}" in log[0] and "measured" in log[0]


def test_choose_stretch_without_limit_is_ceil_sqrt():
    assert choose_stretch(64, 1000, 10, None).stretch == 8
    assert choose_stretch(17, 1000, 10, None).stretch == 5
    assert choose_stretch(1, 1000, 10, None).stretch == 1
