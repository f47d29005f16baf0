"""Optimisers and learning-rate schedule of the reference recipe (spec §4.1–4.3).

- `AdamATan2`: Adam whose update is atan2(m, sqrt(v)) instead of m / (sqrt(v) + eps), so there is no
  epsilon and every step is bounded; decoupled weight decay on every parameter.
- `SparseEmbeddingSignSGD`: SignSGD with decoupled decay for the sparse puzzle-embedding table; only rows
  seen in the (global) batch move.
- `cosine_schedule_with_warmup_lr`: linear warmup, then cosine down to `min_ratio` (constant when 1).
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist

ADAM_ATAN2_IMPLS = ("foreach", "fused", "loop")


def _foreach_adam_atan2(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
                        exp_avg_sqs: list[torch.Tensor], steps: list[torch.Tensor], lr: float | torch.Tensor,
                        beta1: float, beta2: float, weight_decay: float) -> None:
    """One AdamATan2 step over same-device, same-dtype lists (eager, or traced by torch.compile).

    `lr` may be a 0-d tensor so that a compiled version does not recompile when the schedule changes it.
    """
    torch._foreach_mul_(params, 1 - lr * weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_lerp_(exp_avg_sqs, torch._foreach_mul(grads, grads), 1 - beta2)
    torch._foreach_add_(steps, 1)

    # step_size = lr / (1 - beta1^t); the step counters live on the parameters' device (no host sync).
    step_size = torch._foreach_pow(beta1, steps)
    torch._foreach_neg_(step_size)
    torch._foreach_add_(step_size, 1)
    torch._foreach_reciprocal_(step_size)
    torch._foreach_mul_(step_size, lr)
    bc2_sqrt = torch._foreach_pow(beta2, steps)
    torch._foreach_neg_(bc2_sqrt)
    torch._foreach_add_(bc2_sqrt, 1)
    torch._foreach_sqrt_(bc2_sqrt)

    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, bc2_sqrt)
    update = [torch.atan2(m, d) for m, d in zip(exp_avgs, denom)]  # there is no _foreach_atan2
    torch._foreach_mul_(update, step_size)
    torch._foreach_sub_(params, update)


def _loop_adam_atan2(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
                     exp_avg_sqs: list[torch.Tensor], steps: list[torch.Tensor], lr: float,
                     beta1: float, beta2: float, weight_decay: float) -> None:
    """The plain per-parameter formula, written as in the spec; the oracle for the other impls."""
    for p, g, m, v, t in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
        p.mul_(1 - lr * weight_decay)
        m.lerp_(g, 1 - beta1)
        v.lerp_(g * g, 1 - beta2)
        t.add_(1)
        bc1 = 1 - beta1**t
        bc2 = 1 - beta2**t
        p.sub_(torch.atan2(m, v.sqrt() / bc2.sqrt()) * (lr / bc1))


_compiled_update: Callable | None = None
_compile_failed = False


def _fused_adam_atan2(params, grads, exp_avgs, exp_avg_sqs, steps, lr, beta1, beta2, weight_decay) -> None:
    """torch.compile'd foreach update (one fused kernel set per group); foreach when compiling fails."""
    global _compiled_update, _compile_failed
    if not _compile_failed:
        try:
            if _compiled_update is None:
                _compiled_update = torch.compile(_foreach_adam_atan2, dynamic=False)
            lr_t = torch.tensor(lr, dtype=torch.float32, device=params[0].device)
            _compiled_update(params, grads, exp_avgs, exp_avg_sqs, steps, lr_t, beta1, beta2, weight_decay)
            return
        except Exception as err:  # a compiler missing or failing must not stop training
            _compile_failed = True
            first_line = str(err).splitlines()[0] if str(err) else ""
            warnings.warn(f"AdamATan2(impl='fused'): torch.compile failed ({type(err).__name__}: "
                          f"{first_line}); using impl='foreach'", stacklevel=3)
    _foreach_adam_atan2(params, grads, exp_avgs, exp_avg_sqs, steps, lr, beta1, beta2, weight_decay)


_IMPL_FUNCS = {"foreach": _foreach_adam_atan2, "fused": _fused_adam_atan2, "loop": _loop_adam_atan2}


class AdamATan2(torch.optim.Optimizer):
    """Adam with atan2 in place of division (no epsilon), bias correction 1 outside the atan2 (spec §4.1).

    Per parameter, with fp32 step counter t, bc1 = 1 - beta1^t and bc2 = 1 - beta2^t:
    θ ← θ(1 − lr·wd); m ← lerp(m, g, 1−β1); v ← lerp(v, g², 1−β2); θ ← θ − lr/bc1 · atan2(m, √v/√bc2).
    `impl` selects how, not what: "loop" (per parameter), "foreach" (torch._foreach_*), "fused"
    (torch.compile of the foreach version, falling back to foreach with a warning).
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 weight_decay: float = 1e-2, impl: str = "foreach"):
        if impl not in ADAM_ATAN2_IMPLS:
            raise ValueError(f"AdamATan2 impl={impl!r}: choose one of {', '.join(ADAM_ATAN2_IMPLS)}")
        if lr < 0:
            raise ValueError(f"AdamATan2 lr={lr} must be >= 0")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"AdamATan2 betas={betas} must lie in [0, 1)")
        if weight_decay < 0:
            raise ValueError(f"AdamATan2 weight_decay={weight_decay} must be >= 0")
        # impl is an attribute, not a group default, so loading a state_dict never switches it.
        self.impl = impl
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        update = _IMPL_FUNCS[self.impl]
        for group in self.param_groups:
            buckets: dict[tuple, list[list[torch.Tensor]]] = defaultdict(lambda: [[], [], [], [], []])
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdamATan2 does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                lists = buckets[(p.device, p.dtype)]
                for lst, t in zip(lists, (p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"])):
                    lst.append(t)
            beta1, beta2 = group["betas"]
            for lists in buckets.values():
                update(*lists, lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"])
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        """As torch's, plus: step counters go back to their parameter's device as fp32 (foreach needs it)."""
        super().load_state_dict(state_dict)
        for p, state in self.state.items():
            if "step" in state:
                step = state["step"]
                step = step if torch.is_tensor(step) else torch.tensor(float(step))
                state["step"] = step.to(dtype=torch.float32, device=p.device)


def _all_gather_cat(t: torch.Tensor, world_size: int) -> torch.Tensor:
    """Concatenate every rank's `t` along dim 0, in rank order (works on gloo and nccl)."""
    parts = [torch.empty_like(t) for _ in range(world_size)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


class SparseEmbeddingSignSGD(torch.optim.Optimizer):
    """SignSGD with decoupled decay on the rows of a sparse embedding table touched by the batch (§4.2).

    The param group holds the three buffers of `CastedSparseEmbedding` (weights, local_weights with its
    gradient, local_ids). With world_size > 1 the batch rows of all ranks are gathered first, so every
    rank applies the same update. Gradients of repeated ids are summed before the sign; rows not in the
    batch neither move nor decay.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, weight_decay: float = 1e-2, world_size: int = 1):
        if lr < 0:
            raise ValueError(f"SparseEmbeddingSignSGD lr={lr} must be >= 0")
        if world_size < 1:
            raise ValueError(f"SparseEmbeddingSignSGD world_size={world_size} must be >= 1")
        # world_size is not a group default: a checkpoint must load under any number of ranks.
        self.world_size = world_size
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay))
        for group in self.param_groups:
            self._split(group)

    @staticmethod
    def _split(group: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(weights, local_weights, local_ids), told apart by requires_grad and ndim."""
        local_weights = [p for p in group["params"] if p.requires_grad]
        local_ids = [p for p in group["params"] if not p.requires_grad and p.ndim == 1]
        weights = [p for p in group["params"] if not p.requires_grad and p.ndim == 2]
        if not (len(group["params"]) == 3 and len(local_weights) == len(local_ids) == len(weights) == 1):
            raise ValueError("SparseEmbeddingSignSGD expects each param group to be the 3 buffers of a "
                             "CastedSparseEmbedding: weights [N, D], local_weights [B, D] (requires_grad), "
                             "local_ids [B]")
        return weights[0], local_weights[0], local_ids[0]

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            weights, local_weights, local_ids = self._split(group)
            grad = local_weights.grad
            if grad is None:
                continue
            ids = local_ids
            if self.world_size > 1:
                grad = _all_gather_cat(grad, self.world_size)
                ids = _all_gather_cat(ids, self.world_size)
            unique_ids, inverse = torch.unique(ids.long(), return_inverse=True)
            grad_sum = torch.zeros((unique_ids.numel(), grad.shape[1]), dtype=grad.dtype, device=grad.device)
            grad_sum.index_add_(0, inverse, grad)
            lr, wd = group["lr"], group["weight_decay"]
            rows = weights[unique_ids]
            rows.mul_(1 - lr * wd).add_(torch.sign(grad_sum), alpha=-lr)
            weights[unique_ids] = rows.to(weights.dtype)
        return loss


def cosine_schedule_with_warmup_lr(step: int, base_lr: float, warmup_steps: int, total_steps: int,
                                   min_ratio: float = 1.0, num_cycles: float = 0.5) -> float:
    """Linear warmup from 0, then cosine from base_lr down to min_ratio·base_lr at total_steps (§4.3).

    With min_ratio = 1 (the reference default) the lr is constant after warmup.
    """
    if step < warmup_steps:
        return base_lr * float(step) / float(max(1, warmup_steps))
    progress = float(step - warmup_steps) / float(max(1, total_steps - warmup_steps))
    cosine = (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * 2.0 * num_cycles * progress))
    return base_lr * (min_ratio + max(0.0, cosine))
