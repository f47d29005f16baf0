"""AdamATan2, the sparse SignSGD and the lr schedule against independent float64 re-derivations."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import hrm.optim as optim_mod
from hrm.model.puzzle_embedding import CastedSparseEmbedding
from hrm.optim import AdamATan2, SparseEmbeddingSignSGD, cosine_schedule_with_warmup_lr

# torch.compile (impl="fused") imports code that emits this deprecation notice; it is not ours.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")

SHAPES = [(3, 5), (7,), (), (2, 3, 4)]
# Two groups with different betas / weight decay; lr changes every step (warmup-like, starting at 0).
GROUPS = [dict(betas=(0.9, 0.95), weight_decay=0.1), dict(betas=(0.5, 0.999), weight_decay=1.0)]
LRS = [0.0, 0.02, 0.05, 0.01, 0.1, 0.03]


def _make_params(seed: int = 0) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=g).requires_grad_() for s in SHAPES] for _ in GROUPS]


def _make_grads(n_steps: int, seed: int = 1) -> list[list[list[torch.Tensor]]]:
    """grads[step][group][param]; magnitudes spread over decades, some exact zeros."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_steps):
        step = []
        for _ in GROUPS:
            row = []
            for s in SHAPES:
                x = torch.randn(s, generator=g) * 10.0 ** torch.randint(-3, 3, s, generator=g).float()
                row.append(torch.where(torch.rand(s, generator=g) < 0.1, 0.0, x))
            step.append(row)
        out.append(step)
    return out


def _run(impl: str, n_steps: int, params=None, opt=None, grads=None, first_step: int = 0):
    params = params if params is not None else _make_params()
    grads = grads if grads is not None else _make_grads(n_steps + first_step)
    if opt is None:
        opt = AdamATan2([dict(params=p, **cfg) for p, cfg in zip(params, GROUPS)], lr=1.0, impl=impl)
    for k in range(first_step, first_step + n_steps):
        for group, group_params, group_grads in zip(opt.param_groups, params, grads[k]):
            group["lr"] = LRS[k]
            for p, gr in zip(group_params, group_grads):
                p.grad = gr.clone()
        opt.step()
    return params, opt


def _reference_float64(n_steps: int) -> list[list[np.ndarray]]:
    """The spec's formula written out in float64 numpy, one parameter at a time."""
    grads = _make_grads(n_steps)
    result = []
    for gi, (cfg, p0) in enumerate(zip(GROUPS, _make_params())):
        beta1, beta2 = cfg["betas"]
        wd = cfg["weight_decay"]
        group_out = []
        for pi, p in enumerate(p0):
            theta = p.detach().double().numpy().copy()
            m = np.zeros_like(theta)
            v = np.zeros_like(theta)
            for t in range(1, n_steps + 1):
                lr = LRS[t - 1]
                g = grads[t - 1][gi][pi].double().numpy()
                theta = theta * (1 - lr * wd)
                m = beta1 * m + (1 - beta1) * g
                v = beta2 * v + (1 - beta2) * g * g
                bc1 = 1 - beta1**t
                bc2 = 1 - beta2**t
                theta = theta - lr / bc1 * np.arctan2(m, np.sqrt(v) / np.sqrt(bc2))
            group_out.append(theta)
        result.append(group_out)
    return result


@pytest.mark.parametrize("impl", ["loop", "foreach", "fused"])
def test_adam_atan2_matches_float64_reference(impl):
    n = len(LRS)
    params, opt = _run(impl, n)
    ref = _reference_float64(n)
    for group_params, group_ref in zip(params, ref):
        for p, r in zip(group_params, group_ref):
            np.testing.assert_allclose(p.detach().double().numpy(), r, rtol=1e-5, atol=1e-6)
    # State: fp32 step counter on the param's device, moments in the param dtype.
    state = opt.state[params[0][0]]
    assert state["step"].dtype == torch.float32 and state["step"].item() == n
    assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == params[0][0].dtype


def test_adam_atan2_impls_agree():
    n = len(LRS)
    loop, _ = _run("loop", n)
    for impl, atol in (("foreach", 0.0), ("fused", 1e-6)):
        other, _ = _run(impl, n)
        for a_group, b_group in zip(loop, other):
            for a, b in zip(a_group, b_group):
                torch.testing.assert_close(b, a, rtol=0, atol=atol)


@pytest.mark.parametrize("impl", ["loop", "foreach"])
def test_adam_atan2_update_bounded_and_scale_invariant(impl):
    lr, beta1 = 0.1, 0.9
    deltas = []
    for scale in (1.0, 1e6, 1e-12):
        p = torch.zeros(1000, requires_grad=True)
        opt = AdamATan2([p], lr=lr, betas=(beta1, 0.95), weight_decay=0.0, impl=impl)
        g = torch.Generator().manual_seed(3)
        steps = []
        for t in range(1, 5):
            before = p.detach().clone()
            p.grad = torch.randn(1000, generator=g) * scale
            opt.step()
            delta = p.detach() - before
            bound = lr * math.pi / 2 / (1 - beta1**t)
            assert delta.abs().max().item() <= bound * (1 + 1e-6)
            steps.append(delta)
        deltas.append(torch.stack(steps))
    # atan2(c·m, c·sqrt(v)) does not depend on c: no epsilon anywhere.
    torch.testing.assert_close(deltas[1], deltas[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(deltas[2], deltas[0], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("impl", ["loop", "foreach"])
def test_adam_atan2_zero_lr_and_zero_grad_are_safe(impl):
    p = torch.ones(4, requires_grad=True)
    opt = AdamATan2([p], lr=0.0, impl=impl)
    p.grad = torch.zeros(4)
    opt.step()
    assert torch.equal(p.detach(), torch.ones(4))
    opt.param_groups[0]["lr"] = 0.5
    p.grad = torch.zeros(4)
    opt.step()  # m = v = 0: atan2(0, 0) = 0, only the decay acts
    torch.testing.assert_close(p.detach(), torch.full((4,), 1 - 0.5 * 1e-2))


def test_adam_atan2_skips_params_without_grad():
    a, b = torch.ones(2, requires_grad=True), torch.ones(2, requires_grad=True)
    opt = AdamATan2([a, b], lr=0.1, impl="foreach")
    a.grad = torch.ones(2)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(2)) and b not in opt.state
    assert not torch.equal(a.detach(), torch.ones(2))


@pytest.mark.parametrize("impl_saved,impl_loaded", [("loop", "loop"), ("foreach", "foreach"),
                                                    ("foreach", "loop"), ("fused", "foreach")])
def test_adam_atan2_state_dict_round_trip(impl_saved, impl_loaded):
    n, k = len(LRS), 3
    full, _ = _run(impl_loaded, n)

    params, opt = _run(impl_saved, k)
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "params": [[p.detach() for p in g] for g in params]}, buf)
    buf.seek(0)
    saved = torch.load(buf)
    fresh_params = [[p.clone().requires_grad_() for p in g] for g in saved["params"]]
    groups = [dict(params=p, **cfg) for p, cfg in zip(fresh_params, GROUPS)]
    fresh = AdamATan2(groups, lr=1.0, impl=impl_loaded)
    fresh.load_state_dict(saved["opt"])
    assert fresh.impl == impl_loaded
    resumed, _ = _run(impl_loaded, n - k, params=fresh_params, opt=fresh, first_step=k)
    for a_group, b_group in zip(full, resumed):
        for a, b in zip(a_group, b_group):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-6 if "fused" in (impl_saved, impl_loaded) else 0)


def test_adam_atan2_fused_falls_back_to_foreach_when_compile_fails(monkeypatch):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(optim_mod, "_compiled_update", None)
    monkeypatch.setattr(optim_mod, "_compile_failed", False)
    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.warns(UserWarning, match="using impl='foreach'"):
        fused, _ = _run("fused", len(LRS))
    foreach, _ = _run("foreach", len(LRS))
    for a_group, b_group in zip(foreach, fused):
        for a, b in zip(a_group, b_group):
            assert torch.equal(a, b)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_adam_atan2_impls_agree_on_cuda():
    results = {}
    for impl in ("loop", "foreach", "fused"):
        params = [[p.cuda().detach().requires_grad_() for p in g] for g in _make_params()]
        grads = [[[x.cuda() for x in g] for g in step] for step in _make_grads(len(LRS))]
        results[impl], opt = _run(impl, len(LRS), params=params, grads=grads)
        assert opt.state[params[0][0]]["step"].device == params[0][0].device
    for impl in ("foreach", "fused"):
        for a_group, b_group in zip(results["loop"], results[impl]):
            for a, b in zip(a_group, b_group):
                torch.testing.assert_close(b, a, rtol=0, atol=1e-6)


def test_adam_atan2_rejects_bad_arguments():
    p = [torch.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError, match="foreach, fused, loop"):
        AdamATan2(p, impl="cuda")
    with pytest.raises(ValueError):
        AdamATan2(p, lr=-1.0)
    with pytest.raises(ValueError):
        AdamATan2(p, betas=(1.0, 0.9))


# ---------------------------------------------------------------- SparseEmbeddingSignSGD


def _sign_sgd_reference(weights: torch.Tensor, ids: list[int], grads: torch.Tensor, lr: float, wd: float):
    """Row by row in float64: sum the gradient of each distinct id, decay that row, step by the sign."""
    out = weights.double().clone()
    for i in sorted(set(ids)):
        g = sum(grads[j].double() for j, k in enumerate(ids) if k == i)
        out[i] = out[i] * (1 - lr * wd) - lr * torch.sign(g)
    return out


def _embedding_step(emb: CastedSparseEmbedding, opt: SparseEmbeddingSignSGD, ids: torch.Tensor,
                    grad_rows: torch.Tensor) -> None:
    out = emb(ids)
    (out.float() * grad_rows).sum().backward()
    opt.step()
    opt.zero_grad()


def test_sign_sgd_updates_only_touched_rows():
    torch.manual_seed(0)
    emb = CastedSparseEmbedding(8, 4, batch_size=6, init_std=0.5, cast_to=torch.float32).train()
    before = emb.weights.clone()
    lr, wd = 0.01, 0.1
    opt = SparseEmbeddingSignSGD(emb.buffers(), lr=lr, weight_decay=wd)
    ids = torch.tensor([1, 3, 1, 6, 3, 1], dtype=torch.int32)
    grad_rows = torch.randn(6, 4)
    grad_rows[4] = -grad_rows[1]  # id 3: the two rows cancel, so sign(sum) = 0 and only decay acts
    _embedding_step(emb, opt, ids, grad_rows)

    expected = _sign_sgd_reference(before, ids.tolist(), grad_rows, lr, wd)
    torch.testing.assert_close(emb.weights.double(), expected, rtol=1e-6, atol=1e-7)
    untouched = [0, 2, 4, 5, 7]
    assert torch.equal(emb.weights[untouched], before[untouched])
    torch.testing.assert_close(emb.weights[3], before[3] * (1 - lr * wd))
    assert emb.weights.dtype == torch.float32 and emb.local_weights.grad is None  # zero_grad cleared it


def test_sign_sgd_rejects_other_params():
    with pytest.raises(ValueError, match="3 buffers"):
        SparseEmbeddingSignSGD([torch.zeros(3, 2), torch.zeros(2, 2, requires_grad=True)])


B_PER_RANK, NUM_IDS, DIM, LR, WD = 4, 10, 3, 0.05, 0.2
RANK_IDS = [[0, 2, 2, 5], [5, 7, 0, 9]]  # ids 0 and 5 appear on both ranks


def _rank_batch(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + rank)
    return torch.tensor(RANK_IDS[rank], dtype=torch.int32), torch.randn(B_PER_RANK, DIM, generator=g)


def _initial_table() -> torch.Tensor:
    return torch.randn(NUM_IDS, DIM, generator=torch.Generator().manual_seed(7))


def _dist_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        emb = CastedSparseEmbedding(NUM_IDS, DIM, batch_size=B_PER_RANK, init_std=0, cast_to=torch.float32)
        emb.weights.copy_(_initial_table())
        opt = SparseEmbeddingSignSGD(emb.buffers(), lr=LR, weight_decay=WD, world_size=world_size)
        ids, grad_rows = _rank_batch(rank)
        _embedding_step(emb.train(), opt, ids, grad_rows)
        torch.save(emb.weights, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_sign_sgd_two_ranks_gloo_equal_single_process_on_concatenated_batch(tmp_path):
    world_size = 2
    mp.spawn(_dist_worker, args=(world_size, str(tmp_path / "pg_init"), str(tmp_path)), nprocs=world_size,
             join=True)
    per_rank = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world_size)]
    assert torch.equal(per_rank[0], per_rank[1])

    # One process, one batch holding both ranks' rows in rank order.
    emb = CastedSparseEmbedding(NUM_IDS, DIM, batch_size=world_size * B_PER_RANK, init_std=0,
                                cast_to=torch.float32).train()
    emb.weights.copy_(_initial_table())
    opt = SparseEmbeddingSignSGD(emb.buffers(), lr=LR, weight_decay=WD)
    batches = [_rank_batch(r) for r in range(world_size)]
    ids = torch.cat([b[0] for b in batches])
    grad_rows = torch.cat([b[1] for b in batches])
    _embedding_step(emb, opt, ids, grad_rows)
    assert torch.equal(per_rank[0], emb.weights)

    expected = _sign_sgd_reference(_initial_table(), ids.tolist(), grad_rows, LR, WD)
    torch.testing.assert_close(per_rank[0].double(), expected, rtol=1e-6, atol=1e-7)
    # Rows seen on one rank only still changed on the other rank.
    assert not torch.equal(per_rank[1][2], _initial_table()[2])


# ---------------------------------------------------------------- schedule


def test_schedule_warmup_is_linear_from_zero():
    assert cosine_schedule_with_warmup_lr(0, 1e-3, 100, 1000) == 0.0
    assert cosine_schedule_with_warmup_lr(1, 1e-3, 100, 1000) == pytest.approx(1e-5)
    assert cosine_schedule_with_warmup_lr(50, 1e-3, 100, 1000) == pytest.approx(5e-4)
    # No warmup: full lr from step 0.
    assert cosine_schedule_with_warmup_lr(0, 1e-3, 0, 1000) == pytest.approx(1e-3)


def test_schedule_constant_after_warmup_with_min_ratio_one():
    for step in (100, 101, 500, 999, 1000, 5000):
        assert cosine_schedule_with_warmup_lr(step, 1e-3, 100, 1000, min_ratio=1.0) == pytest.approx(1e-3)


def test_schedule_cosine_down_to_min_ratio():
    base, W, T, r = 2e-4, 100, 1100, 0.1
    lr = [cosine_schedule_with_warmup_lr(s, base, W, T, min_ratio=r) for s in range(W, T + 1)]
    assert lr[0] == pytest.approx(base)
    assert lr[500] == pytest.approx(base * (r + (1 - r) * 0.5))  # halfway: cos(π/2) = 0
    assert lr[-1] == pytest.approx(r * base)
    assert all(a >= b for a, b in zip(lr, lr[1:]))
    # Past T the half cosine climbs back (as in the reference); the floor max(0, ·) keeps it >= r·base.
    assert cosine_schedule_with_warmup_lr(T + 10, base, W, T, min_ratio=r) >= r * base
