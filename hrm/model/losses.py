"""Token losses and the ACT loss head that wraps the model (spec §3).

Each sequence contributes its mean token loss (rows are summed, not averaged: the trainer divides by
the global batch size); the Q-halt head learns to predict whether this step's answer is exactly right.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_LABEL_ID = -100
LOSS_TYPES = ("stablemax_cross_entropy", "softmax_cross_entropy")


def _stablemax_s(x: torch.Tensor, epsilon: float = 1e-30) -> torch.Tensor:
    """s(x) = x + 1 for x >= 0, 1 / (1 - x + eps) for x < 0: positive, monotone, linear growth.

    Each branch sees only its own half-line (clamped), so the unused branch cannot put inf/NaN into
    the gradient; the values are exactly those of the plain formula.
    """
    return torch.where(x < 0, 1 / (1 - x.clamp(max=0) + epsilon), x.clamp(min=0) + 1)


def log_stablemax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """log(s(x_i) / Σ_j s(x_j)) along `dim`."""
    s = _stablemax_s(x)
    return torch.log(s / s.sum(dim=dim, keepdim=True))


def stablemax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                            ignore_index: int = IGNORE_LABEL_ID) -> torch.Tensor:
    """Per-token −log p_label under stablemax, in float64; 0 where labels == ignore_index."""
    logprobs = log_stablemax(logits.to(torch.float64), dim=-1)
    mask = labels != ignore_index
    safe_labels = torch.where(mask, labels, 0).to(torch.int64)
    picked = torch.gather(logprobs, -1, safe_labels.unsqueeze(-1)).squeeze(-1)
    return -torch.where(mask, picked, 0)


def softmax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                          ignore_index: int = IGNORE_LABEL_ID) -> torch.Tensor:
    """Per-token softmax cross-entropy in float32, shaped like `labels` (0 at ignored positions)."""
    flat = F.cross_entropy(logits.to(torch.float32).reshape(-1, logits.shape[-1]),
                           labels.to(torch.int64).reshape(-1), ignore_index=ignore_index, reduction="none")
    return flat.view(labels.shape)


class ACTLossHead(nn.Module):
    """Runs one ACT segment of `self.model` and returns (carry, loss, metrics, preds, all_halted).

    The model is kept as `self.model` so state-dict keys start with `model.` as in reference checkpoints.
    Metrics are sums over rows that halted this step and have at least one labelled token.
    """

    def __init__(self, model: nn.Module, loss_type: str):
        super().__init__()
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type={loss_type!r}: choose one of {', '.join(LOSS_TYPES)}")
        self.model = model
        self.loss_type = loss_type
        self.loss_fn = (stablemax_cross_entropy if loss_type == "stablemax_cross_entropy"
                        else softmax_cross_entropy)

    def initial_carry(self, *args, **kwargs):
        return self.model.initial_carry(*args, **kwargs)

    def forward(self, carry, batch: dict[str, torch.Tensor], return_keys: tuple[str, ...] = ()):
        new_carry, outputs = self.model(carry=carry, batch=batch)
        labels = new_carry.current_data["labels"]
        logits = outputs["logits"]
        q_halt_logits = outputs["q_halt_logits"]

        with torch.no_grad():
            outputs["preds"] = torch.argmax(logits, dim=-1)
            mask = labels != IGNORE_LABEL_ID
            loss_counts = mask.sum(-1)
            loss_divisor = loss_counts.clamp_min(1).unsqueeze(-1)
            is_correct = mask & (outputs["preds"] == labels)
            seq_is_correct = is_correct.sum(-1) == loss_counts

            valid = new_carry.halted & (loss_counts > 0)
            token_accuracy = (is_correct.to(torch.float32) / loss_divisor).sum(-1)
            metrics = {
                "count": valid.sum(),
                "accuracy": torch.where(valid, token_accuracy, 0).sum(),
                "exact_accuracy": (valid & seq_is_correct).sum(),
                "q_halt_accuracy": (valid & ((q_halt_logits >= 0) == seq_is_correct)).sum(),
                "steps": torch.where(valid, new_carry.steps, 0).sum(),
            }

        lm_loss = (self.loss_fn(logits, labels, ignore_index=IGNORE_LABEL_ID) / loss_divisor).sum()
        q_halt_loss = F.binary_cross_entropy_with_logits(
            q_halt_logits, seq_is_correct.to(q_halt_logits.dtype), reduction="sum")
        metrics["lm_loss"] = lm_loss.detach()
        metrics["q_halt_loss"] = q_halt_loss.detach()

        q_continue_loss = 0
        if "target_q_continue" in outputs:
            q_continue_loss = F.binary_cross_entropy_with_logits(
                outputs["q_continue_logits"], outputs["target_q_continue"], reduction="sum")
            metrics["q_continue_loss"] = q_continue_loss.detach()

        total = lm_loss + 0.5 * (q_halt_loss + q_continue_loss)
        preds = {k: outputs[k].detach() for k in return_keys if k in outputs}
        return new_carry, total, metrics, preds, new_carry.halted.all()
