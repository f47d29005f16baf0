"""Back-propagation through a whole HRM segment, in full or in square-root memory (`arch.grad_mode`).

The reference differentiates only the final L and H application of a segment (the one-step gradient,
spec §1.6). `full` differentiates all T = H_cycles*L_cycles + H_cycles applications, in the reference's
order (for 2x2: L, L, H, L, L, H); the incoming carry stays detached. `sqrt` gives the same gradient
while keeping only the states at stretch boundaries: each stretch of about sqrt(T) applications is
recomputed in the backward pass (torch.utils.checkpoint, non-reentrant). Module applications have no
dropout or other randomness, so the recomputation is exact. `grad_window=K` differentiates only the
last K applications (K=2 is the one-step gradient), and `memory_limit_mb` picks the stretch length
from the measured cost of one application on the real batch shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from hrm.grad_settings import application_order, num_applications

MB = 1024 * 1024


def differentiated_count(config) -> int:
    """How many of the segment's last applications get a gradient (full/sqrt modes)."""
    T = num_applications(config.H_cycles, config.L_cycles)
    return T if config.grad_window is None else config.grad_window


def apply_module(inner, kind: str, z_H: torch.Tensor, z_L: torch.Tensor, x: torch.Tensor,
                 cos_sin) -> tuple[torch.Tensor, torch.Tensor]:
    """One application: L reads the H state plus the input embedding, H reads the L state."""
    if kind == "L":
        return z_H, inner.L_level(z_L, z_H + x, cos_sin)
    return inner.H_level(z_H, z_L, cos_sin), z_L


def apply_all(inner, kinds: list[str], z_H: torch.Tensor, z_L: torch.Tensor, x: torch.Tensor,
              cos_sin) -> tuple[torch.Tensor, torch.Tensor]:
    for kind in kinds:
        z_H, z_L = apply_module(inner, kind, z_H, z_L, x, cos_sin)
    return z_H, z_L


class _Stretch(torch.autograd.Function):
    """A stretch of applications run without a graph; its backward re-runs it with one.

    Only the stretch's input states (and x, the parameters) are kept. Gradients for the parameters are
    returned like any input's, so the engine accumulates them as usual. Cheaper per op than
    torch.utils.checkpoint's saved-tensor hooks; used whenever the code is not being compiled.
    """

    @staticmethod
    def forward(ctx, run, z_H, z_L, x, *params):
        ctx.run = run
        ctx.save_for_backward(z_H, z_L, x, *params)
        with torch.no_grad():
            out_H, out_L = run(z_H, z_L, x)
        # An output must be a new tensor (an L-only stretch leaves z_H as it was).
        return (out_H.clone() if out_H is z_H else out_H), (out_L.clone() if out_L is z_L else out_L)

    @staticmethod
    def backward(ctx, g_H, g_L):
        z_H, z_L, x, *params = ctx.saved_tensors
        needs = ctx.needs_input_grad[1:]
        inputs = [t.detach().requires_grad_(need) for t, need in zip((z_H, z_L, x), needs)]
        with torch.enable_grad():
            outs = ctx.run(*inputs)
        pairs = [(o, g) for o, g in zip(outs, (g_H, g_L)) if g is not None and o.requires_grad]
        wrt = [t for t, need in zip(inputs + params, needs) if need]
        grads = iter(torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True)
                     if pairs and wrt else [None] * len(wrt))
        return (None, *[next(grads) if need else None for need in needs])


# auto: _Stretch when eager, torch.utils.checkpoint (traceable) under torch.compile; or "function" / "torch".
CHECKPOINT_IMPL = "auto"


def apply_checkpointed(inner, kinds: list[str], stretch: int, z_H: torch.Tensor, z_L: torch.Tensor,
                       x: torch.Tensor, cos_sin) -> tuple[torch.Tensor, torch.Tensor]:
    """Stretches of `stretch` applications keep only their input states; all but the last are recomputed.

    The last stretch is not checkpointed: its activations would be rebuilt at once by the backward
    pass, so keeping them costs no extra peak memory and saves that recomputation.
    """
    impl = CHECKPOINT_IMPL
    if impl == "auto":
        impl = "torch" if torch.compiler.is_compiling() else "function"
    params = [p for p in (*inner.L_level.parameters(), *inner.H_level.parameters()) if p.requires_grad]
    starts = list(range(0, len(kinds), stretch))
    for start in starts[:-1]:
        part = kinds[start:start + stretch]

        def run(h, lo, inj, part=part):
            return apply_all(inner, part, h, lo, inj, cos_sin)

        if impl == "torch":
            z_H, z_L = checkpoint(run, z_H, z_L, x, use_reentrant=False)
        else:
            z_H, z_L = _Stretch.apply(run, z_H, z_L, x, *params)
    return apply_all(inner, kinds[starts[-1]:], z_H, z_L, x, cos_sin)


def reason_segment(inner, z_H: torch.Tensor, z_L: torch.Tensor, x: torch.Tensor,
                   cos_sin) -> tuple[torch.Tensor, torch.Tensor]:
    """HRMInner.reason() for grad_mode full / sqrt (with an optional grad_window)."""
    cfg = inner.config
    kinds = application_order(cfg.H_cycles, cfg.L_cycles)
    if not torch.is_grad_enabled():  # evaluation and the Q-target forward: nothing to store
        return apply_all(inner, kinds, z_H, z_L, x, cos_sin)
    split = len(kinds) - differentiated_count(cfg)
    with torch.no_grad():
        z_H, z_L = apply_all(inner, kinds[:split], z_H, z_L, x, cos_sin)
    z_H, z_L = z_H.detach(), z_L.detach()  # the gradient stops at the segment's start (or window)
    grad_kinds = kinds[split:]
    if cfg.grad_mode == "full":
        return apply_all(inner, grad_kinds, z_H, z_L, x, cos_sin)
    stretch = stretch_for(inner, len(grad_kinds), z_H, z_L, x, cos_sin)
    return apply_checkpointed(inner, grad_kinds, stretch, z_H, z_L, x, cos_sin)


# --- choosing the stretch length --------------------------------------------------------------------

@dataclass
class StretchPlan:
    """Why a stretch length was chosen: the measured costs and the resulting estimate."""

    applications: int      # differentiated module applications per segment
    stretch: int           # applications per stretch (== applications: nothing is recomputed)
    app_bytes: int         # saved-activation bytes of one module application (max of L and H), measured
    state_bytes: int       # one [B, S, D] state
    estimate_bytes: int    # estimated activation memory of the segment with this stretch
    limit_bytes: float | None

    @property
    def stretches(self) -> int:
        return math.ceil(self.applications / self.stretch)

    def describe(self) -> str:
        limit = f" of memory_limit_mb={self.limit_bytes / MB:g}" if self.limit_bytes else ""
        return (f"grad_mode=sqrt: {self.applications} differentiated applications in "
                f"{self.stretches} stretch(es) of {self.stretch}; estimated activations "
                f"{self.estimate_bytes / MB:.1f} MB{limit} "
                f"(one application saves {self.app_bytes / MB:.2f} MB, measured)")


def default_stretch(applications: int) -> int:
    return max(1, math.ceil(math.sqrt(applications)))


def estimate_activation_bytes(applications: int, stretch: int, app_bytes: int, state_bytes: int) -> int:
    """Peak activation memory of one differentiated segment.

    Without recomputation (stretch >= applications) every application's saved tensors stay alive.
    With stretches, each stretch keeps its two input states (z_H, z_L) until the backward pass, and the
    stretch being back-propagated holds its own recomputed activations on top.
    """
    if stretch >= applications:
        return applications * app_bytes
    return math.ceil(applications / stretch) * 2 * state_bytes + stretch * app_bytes


def choose_stretch(applications: int, app_bytes: int, state_bytes: int,
                   limit_bytes: float | None) -> StretchPlan:
    """The longest stretch whose estimate fits the limit (fewest boundaries; no recomputation if all fit)."""
    if limit_bytes is None:
        k = default_stretch(applications)
        return StretchPlan(applications, k, app_bytes, state_bytes,
                           estimate_activation_bytes(applications, k, app_bytes, state_bytes), None)
    estimates = {k: estimate_activation_bytes(applications, k, app_bytes, state_bytes)
                 for k in range(1, applications + 1)}
    fitting = [k for k, est in estimates.items() if est <= limit_bytes]
    if not fitting:
        k_min = min(estimates, key=estimates.get)
        need, one = estimates[k_min] / MB, app_bytes / MB
        raise ValueError(f"arch.memory_limit_mb={limit_bytes / MB:g} is below the {need:.2f} MB that the "
                         f"leanest plan needs ({applications} applications, stretch {k_min}; one module "
                         f"application alone saves {one:.2f} MB on this batch, measured): raise "
                         f"arch.memory_limit_mb, or lower the batch size or arch.grad_window")
    k = max(fitting)
    return StretchPlan(applications, k, app_bytes, state_bytes, estimates[k], limit_bytes)


def saved_bytes(fn, exclude: set[int] = frozenset()) -> int:
    """Bytes of the distinct storages autograd saves for backward while running `fn()`.

    Storages in `exclude` (parameters, buffers) are not activations and are not counted.
    """
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in exclude:
            seen[ptr] = max(seen.get(ptr, 0), storage.nbytes())
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


@torch.compiler.disable
def measure_application_bytes(inner, z_H: torch.Tensor, z_L: torch.Tensor, x: torch.Tensor,
                              cos_sin) -> dict[str, int]:
    """Saved-activation bytes of one L and one H application on these (real) tensors."""
    own = {t.untyped_storage().data_ptr() for t in list(inner.parameters()) + list(inner.buffers())}
    z_H, z_L, x = z_H.detach(), z_L.detach(), x.detach()
    return {kind: saved_bytes(lambda kind=kind: apply_module(inner, kind, z_H, z_L, x, cos_sin), own)
            for kind in ("L", "H")}


@torch.compiler.disable
def plan_stretch(inner, applications: int, z_H: torch.Tensor, z_L: torch.Tensor, x: torch.Tensor,
                 cos_sin) -> StretchPlan:
    """Measure once per batch shape and choose; the choice is logged (one line) and cached on `inner`."""
    from hrm.track import console

    key = (tuple(z_L.shape), z_L.dtype, z_L.device.type, applications)
    plans = inner.__dict__.setdefault("_stretch_plans", {})
    if key not in plans:
        limit = inner.config.memory_limit_mb
        app = measure_application_bytes(inner, z_H, z_L, x, cos_sin)
        state_bytes = z_L.numel() * z_L.element_size()
        plans[key] = choose_stretch(applications, max(app.values()), state_bytes,
                                    None if limit is None else limit * MB)
        console.print(plans[key].describe(), soft_wrap=True)
    return plans[key]


def stretch_for(inner, applications: int, z_H: torch.Tensor, z_L: torch.Tensor, x: torch.Tensor,
                cos_sin) -> int:
    if inner.config.memory_limit_mb is None:
        return default_stretch(applications)
    return plan_stretch(inner, applications, z_H, z_L, x, cos_sin).stretch


def find_inner(model):
    """HRMInner inside an ACTLossHead, an ACT wrapper or itself (compiled models included)."""
    model = getattr(model, "_orig_mod", model)
    for attr in ("model", "inner"):
        if hasattr(model, attr) and not hasattr(model, "L_level"):
            model = getattr(model, attr)
    return model


def plan_for_batch(model, batch: dict[str, torch.Tensor]) -> StretchPlan | None:
    """Measure and choose before training starts (raises the ValueError early); None if not sqrt+limit.

    Call it once with a real (or synthetic, same shape) batch after building the model; training then
    reuses the cached plan.
    """
    inner = find_inner(model)
    cfg = inner.config
    if cfg.grad_mode != "sqrt" or cfg.memory_limit_mb is None:
        return None
    with torch.no_grad():
        x = inner.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
        carry = inner.reset_carry(torch.ones(x.shape[0], dtype=torch.bool, device=x.device),
                                  inner.empty_carry(x.shape[0], x.device))
    return plan_stretch(inner, differentiated_count(cfg), carry.z_H, carry.z_L, x, inner.cos_sin())
