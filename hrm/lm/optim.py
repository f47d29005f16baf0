"""Adam-atan2 with a built-in EMA of the weights (spec section 4); the LR schedule is hrm.optim's.

The update is hrm.optim.AdamATan2's formula; what differs is where the numbers live so that it runs on FSDP2
DTensor shards: the step counter is a CPU scalar and the bias corrections are host floats, so every op is a
DTensor-with-DTensor (or -with-Python-number) op, and the EMA (`param_ema`) sits in the optimizer state,
sharded like its parameter and saved with it by torch.distributed.checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


class AdamAtan2EMA(torch.optim.Optimizer):
    """θ ← θ(1 − lr·wd); m ← lerp(m, g, 1−β1); v ← lerp(v, g², 1−β2); θ ← θ − lr/bc1 · atan2(m, √v/√bc2);
    then ema ← lerp(ema, θ, 1−ema_decay). No epsilon, no clipping, decay on every parameter."""

    def __init__(self, params: Iterable, lr: float = 2.2e-4, betas: tuple[float, float] = (0.9, 0.95),
                 weight_decay: float = 0.1, ema: float | None = 0.9999):
        if lr < 0 or weight_decay < 0:
            raise ValueError(f"lr={lr} and weight_decay={weight_decay} must be >= 0")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas={tuple(betas)} must lie in [0, 1)")
        if ema is not None and not 0.0 <= ema < 1.0:
            raise ValueError(f"ema={ema} must lie in [0, 1) (or null for no EMA)")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, ema=ema))
        self.init_state()  # every parameter has its state from the start, so every checkpoint holds all of it

    def _init_state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)  # CPU: read on the host, never synced
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
            state["param_ema"] = p.detach().clone()
        return state

    @torch.no_grad()
    def init_state(self) -> None:
        """Create every parameter's state (zeros, EMA = the weights) where it is missing: a checkpoint holds
        and a load needs the full state even for parameters that have had no gradient yet."""
        for group in self.param_groups:
            for p in group["params"]:
                self._init_state(p)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            lr, wd, ema = float(group["lr"]), group["weight_decay"], group["ema"]
            beta1, beta2 = group["betas"]
            # a parameter without a gradient this step neither moves nor counts a step (the embedding at
            # bp_steps=2: z_H = x runs under no_grad), so step counts may differ: one bucket per count
            buckets: dict[float, list[torch.Tensor]] = {}
            for p in params:
                state = self._init_state(p)
                state["step"] += 1
                buckets.setdefault(float(state["step"]), []).append(p)
            for t, ps in buckets.items():
                self._update(ps, lr, wd, ema, beta1, beta2, t)
        return loss

    def _update(self, params: list[torch.Tensor], lr: float, wd: float, ema: float | None, beta1: float,
                beta2: float, t: float) -> None:
        states = [self.state[p] for p in params]
        bc1, bc2 = 1 - beta1**t, 1 - beta2**t
        grads = [p.grad for p in params]
        m = [s["exp_avg"] for s in states]
        v = [s["exp_avg_sq"] for s in states]
        if wd:
            torch._foreach_mul_(params, 1 - lr * wd)
        torch._foreach_lerp_(m, grads, 1 - beta1)
        torch._foreach_lerp_(v, torch._foreach_mul(grads, grads), 1 - beta2)
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, math.sqrt(bc2))
        update = [torch.atan2(a, b) for a, b in zip(m, denom)]  # there is no _foreach_atan2
        torch._foreach_add_(params, update, alpha=-lr / bc1)
        if ema is not None:
            torch._foreach_lerp_([s["param_ema"] for s in states], params, 1 - ema)

    @torch.no_grad()
    def swap_ema(self) -> None:
        """Swap every parameter with its EMA (call again to swap back): eval and export use the EMA."""
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if state and "param_ema" in state:
                    tmp = p.detach().clone()
                    p.copy_(state["param_ema"])
                    state["param_ema"].copy_(tmp)

