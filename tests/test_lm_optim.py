"""Adam-atan2 with the built-in EMA (hrm/lm/optim.py): the puzzle optimizer's update, plus the EMA and its swap."""

from __future__ import annotations

import copy

import torch

from hrm.lm.optim import AdamAtan2EMA
from hrm.optim import AdamATan2


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(7, 5, generator=g, dtype=torch.float64)),
            torch.nn.Parameter(torch.randn(11, generator=g, dtype=torch.float64))]


def _grads(step: int, params) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]


def _run(opt, params, steps: range) -> None:
    for s in steps:
        for p, g in zip(params, _grads(s, params)):
            p.grad = g
        opt.step()


def test_update_is_the_puzzle_optimizers_formula():
    a, b = _params(), _params()
    _run(AdamAtan2EMA(a, lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1, ema=None), a, range(6))
    _run(AdamATan2(b, lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1, impl="loop"), b, range(6))
    for x, y, x0 in zip(a, b, _params()):
        assert (x - y).abs().max() < 1e-7  # the puzzle one keeps fp32 step counters: 1e-10-size differences
        assert (x - x0).abs().max() > 1e-3  # and both moved by ~6 x lr


def test_ema_tracks_the_weights_and_swaps_back_and_forth():
    params = _params()
    opt = AdamAtan2EMA(params, lr=1e-2, ema=0.9)
    ema = [p.detach().clone() for p in params]
    for s in range(5):
        _run(opt, params, range(s, s + 1))
        ema = [e + 0.1 * (p.detach() - e) for e, p in zip(ema, params)]
    for p, e in zip(params, ema):
        assert torch.allclose(opt.state[p]["param_ema"], e, atol=1e-12)
    weights = [p.detach().clone() for p in params]
    opt.swap_ema()
    assert all(torch.allclose(p, e, atol=1e-12) for p, e in zip(params, ema))
    opt.swap_ema()
    assert all(torch.equal(p, w) for p, w in zip(params, weights))


def test_state_dict_resume_continues_exactly_and_init_state_is_a_fresh_state():
    straight = _params()
    opt = AdamAtan2EMA(straight, lr=1e-2, ema=0.99)
    _run(opt, straight, range(8))

    first = _params()
    opt1 = AdamAtan2EMA(first, lr=1e-2, ema=0.99)
    _run(opt1, first, range(4))
    saved = copy.deepcopy(opt1.state_dict())
    second = [torch.nn.Parameter(p.detach().clone()) for p in first]
    opt2 = AdamAtan2EMA(second, lr=1e-2, ema=0.99)
    opt2.init_state()  # what a checkpoint load does before filling the state
    opt2.load_state_dict(saved)
    _run(opt2, second, range(4, 8))
    for x, y in zip(straight, second):
        assert torch.equal(x, y)

    fresh, inited = _params(), _params()
    o_fresh, o_init = AdamAtan2EMA(fresh, lr=1e-2), AdamAtan2EMA(inited, lr=1e-2)
    o_init.init_state()
    _run(o_fresh, fresh, range(2))
    _run(o_init, inited, range(2))
    assert all(torch.equal(x, y) for x, y in zip(fresh, inited))


def test_a_parameter_without_gradient_neither_moves_nor_counts_a_step():
    params = _params()
    opt = AdamAtan2EMA(params, lr=1e-2, weight_decay=0.1, ema=0.9)
    assert all(opt.state[p]["step"] == 0 and "param_ema" in opt.state[p] for p in params)  # full state up front
    frozen = params[1].detach().clone()
    for s in range(3):
        params[0].grad, params[1].grad = _grads(s, params)[0], None  # e.g. the embedding at bp_steps=2
        opt.step()
    assert torch.equal(params[1], frozen) and opt.state[params[1]]["step"] == 0
    assert opt.state[params[0]]["step"] == 3
    alone = [torch.nn.Parameter(frozen.clone())]  # its first real step: bias correction of step 1
    o2 = AdamAtan2EMA(alone, lr=1e-2, weight_decay=0.1, ema=0.9)
    params[0].grad, params[1].grad = None, _grads(9, params)[1]
    alone[0].grad = params[1].grad.clone()
    opt.step()
    o2.step()
    assert torch.equal(params[1], alone[0])
