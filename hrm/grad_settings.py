"""The grad_mode settings rule, kept free of torch so the doctor and config checks can use it."""

from __future__ import annotations

GRAD_MODES = ("one_step", "full", "sqrt")


def num_applications(H_cycles: int, L_cycles: int) -> int:
    """Module applications in one segment: every L step plus one H step per H cycle."""
    return H_cycles * L_cycles + H_cycles


def application_order(H_cycles: int, L_cycles: int) -> list[str]:
    """The reference's order: per H cycle, L_cycles L steps then one H step (the last pair included)."""
    return (["L"] * L_cycles + ["H"]) * H_cycles


def validate_grad_settings(grad_mode: str, grad_window: int | None, memory_limit_mb: float | None,
                           H_cycles: int, L_cycles: int) -> None:
    """One clear line for each bad combination, raised when the model config is checked."""
    if grad_mode not in GRAD_MODES:
        raise ValueError(f"arch.grad_mode={grad_mode!r} is unknown: use one_step, full or sqrt")
    T = num_applications(H_cycles, L_cycles)
    if grad_window is not None:
        if isinstance(grad_window, bool) or not isinstance(grad_window, int):
            raise ValueError(f"arch.grad_window={grad_window!r} must be an integer number of module "
                             f"applications (1..{T}) or null")
        if grad_mode == "one_step":
            raise ValueError(f"arch.grad_window={grad_window} needs arch.grad_mode=full or sqrt (one_step "
                             f"always differentiates the final L and H pair): add arch.grad_mode=full")
        if not 1 <= grad_window <= T:
            raise ValueError(f"arch.grad_window={grad_window} is outside 1..{T}: a segment has "
                             f"T = H_cycles*L_cycles + H_cycles = {T} module applications; "
                             f"use 1..{T} or null for all of them")
    if memory_limit_mb is not None:
        if grad_mode != "sqrt":
            raise ValueError(f"arch.memory_limit_mb={memory_limit_mb} only applies to arch.grad_mode=sqrt "
                             f"(got {grad_mode}): add arch.grad_mode=sqrt or drop memory_limit_mb")
        number = isinstance(memory_limit_mb, int | float) and not isinstance(memory_limit_mb, bool)
        if not number or memory_limit_mb <= 0:
            raise ValueError(f"arch.memory_limit_mb={memory_limit_mb!r} must be a positive number of MB "
                             f"or null")
