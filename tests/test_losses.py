"""Token losses against hand-written float64 formulas, and every ACTLossHead output against hand values."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from hrm.model.losses import IGNORE_LABEL_ID, ACTLossHead, softmax_cross_entropy, stablemax_cross_entropy

IGN = IGNORE_LABEL_ID


def _s(x: float) -> float:
    return x + 1 if x >= 0 else 1 / (1 - x + 1e-30)


def test_ignore_label_id():
    assert IGNORE_LABEL_ID == -100


def test_stablemax_matches_manual_float64_formula():
    logits = torch.tensor([[[0.0, 1.5, -2.0, 3.0], [-0.5, -0.5, 0.25, 7.0], [1.0, 2.0, 3.0, 4.0]],
                           [[-9.0, 0.0, 2.5, -1.0], [0.0, 0.0, 0.0, 0.0], [5.0, -5.0, 0.5, -0.5]]])
    labels = torch.tensor([[1, 2, IGN], [0, 3, 3]])
    loss = stablemax_cross_entropy(logits, labels)
    assert loss.dtype == torch.float64 and loss.shape == labels.shape
    for b in range(2):
        for t in range(3):
            label = int(labels[b, t])
            if label == IGN:
                assert loss[b, t].item() == 0.0
                continue
            s = [_s(float(x)) for x in logits[b, t]]
            assert loss[b, t].item() == pytest.approx(-math.log(s[label] / sum(s)), rel=1e-12)


def test_stablemax_computes_in_float64_from_bfloat16_logits():
    logits = torch.tensor([[3.0, -1.0, 0.5]], dtype=torch.bfloat16)
    loss = stablemax_cross_entropy(logits, torch.tensor([2]))
    # s = [4, 0.5, 1.5], sum 6
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(-math.log(1.5 / 6.0), rel=1e-14)


@pytest.mark.parametrize("big", [1e4, 1e30])
def test_stablemax_gradient_finite_for_large_negative_logits(big):
    logits = torch.tensor([[-big, -big, 0.0, 2.0], [-big, -big, -big, -big], [-big, 5.0, -1.0, 0.0]],
                          requires_grad=True)
    labels = torch.tensor([0, 1, IGN])
    loss = stablemax_cross_entropy(logits, labels)
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert torch.equal(logits.grad[2], torch.zeros(4))  # ignored position: no gradient
    # Row 1: four equal logits, a uniform distribution.
    assert loss[1].item() == pytest.approx(math.log(4), rel=1e-6)


def test_stablemax_gradient_matches_float64_finite_differences():
    logits = torch.tensor([[0.3, -1.2, 2.0, -0.1]], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([2])
    stablemax_cross_entropy(logits, labels).sum().backward()
    eps = 1e-6
    for j in range(4):
        up, down = logits.detach()[0].tolist(), logits.detach()[0].tolist()
        up[j] += eps
        down[j] -= eps
        f = lambda v: -math.log(_s(v[2]) / sum(_s(x) for x in v))  # noqa: E731
        assert logits.grad[0, j].item() == pytest.approx((f(up) - f(down)) / (2 * eps), rel=1e-6, abs=1e-9)


def test_softmax_cross_entropy_matches_manual_formula():
    logits = torch.tensor([[[2.0, -1.0, 0.5], [0.0, 0.0, 3.0]], [[1.0, 1.0, 1.0], [-2.0, 4.0, 0.0]]],
                          dtype=torch.bfloat16)
    labels = torch.tensor([[0, IGN], [2, 1]])
    loss = softmax_cross_entropy(logits, labels)
    assert loss.dtype == torch.float32 and loss.shape == labels.shape
    for b in range(2):
        for t in range(2):
            label = int(labels[b, t])
            xs = [float(x) for x in logits[b, t]]
            want = 0.0 if label == IGN else math.log(sum(math.exp(x) for x in xs)) - xs[label]
            assert loss[b, t].item() == pytest.approx(want, rel=1e-6, abs=1e-7)


# ---------------------------------------------------------------- ACTLossHead with a fake model


@dataclass
class FakeCarry:
    halted: torch.Tensor
    steps: torch.Tensor
    current_data: dict


class FakeModel(nn.Module):
    """Returns fixed logits/Q values; labels come back through the carry, as with the real model."""

    def __init__(self, logits, q_halt, q_continue, halted, steps, target_q_continue=None):
        super().__init__()
        self.logits = nn.Parameter(logits)
        self.q_halt = nn.Parameter(q_halt)
        self.q_continue = nn.Parameter(q_continue)
        self.halted, self.steps, self.target = halted, steps, target_q_continue

    def initial_carry(self, batch, tag=None):
        return ("initial", batch["labels"].shape[0], tag)

    def forward(self, carry, batch):
        outputs = {"logits": self.logits * 1, "q_halt_logits": self.q_halt * 1,
                   "q_continue_logits": self.q_continue * 1}
        if self.target is not None:
            outputs["target_q_continue"] = self.target
        return FakeCarry(self.halted, self.steps, {"labels": batch["labels"]}), outputs


V = 3
LABELS = torch.tensor([[0, 1, 2, IGN],      # all 3 labelled tokens predicted right
                       [2, 2, IGN, IGN],    # 1 of 2 right
                       [IGN, IGN, IGN, IGN],  # nothing labelled: never valid, counts as "exact" for Q
                       [1, 0, 1, 1]])       # 2 of 4 right, not halted
PREDS = torch.tensor([[0, 1, 2, 0], [2, 0, 1, 1], [1, 1, 1, 1], [1, 0, 0, 0]])
HALTED = torch.tensor([True, True, True, False])
STEPS = torch.tensor([3, 5, 2, 7], dtype=torch.int32)
Q_HALT = torch.tensor([0.5, 0.0, -1.0, 2.0])
Q_CONT = torch.tensor([-1.0, 0.3, 2.0, 0.0])
TARGET = torch.tensor([0.2, 0.9, 0.5, 0.1])


def _head(loss_type: str, with_target: bool = True, halted=HALTED) -> ACTLossHead:
    logits = 2.0 * nn.functional.one_hot(PREDS, V).float()  # argmax = PREDS; the other logits are 0
    model = FakeModel(logits, Q_HALT.clone(), Q_CONT.clone(), halted, STEPS, TARGET if with_target else None)
    return ACTLossHead(model, loss_type)


def _bce(x: float, y: float) -> float:
    sig = 1 / (1 + math.exp(-x))
    return -(y * math.log(sig) + (1 - y) * math.log(1 - sig))


def _expected_lm_loss(p_right: float, p_wrong: float) -> float:
    right, wrong = -math.log(p_right), -math.log(p_wrong)
    return right + (right + wrong) / 2 + 0.0 + (2 * right + 2 * wrong) / 4


@pytest.mark.parametrize("loss_type", ["stablemax_cross_entropy", "softmax_cross_entropy"])
def test_act_loss_head_losses_and_metrics_by_hand(loss_type):
    head = _head(loss_type)
    keys = ("preds", "q_halt_logits", "nope")
    carry, loss, metrics, preds, all_halted = head(None, {"labels": LABELS}, return_keys=keys)

    if loss_type == "stablemax_cross_entropy":
        p_right, p_wrong = 3 / 5, 1 / 5  # s(2) = 3, s(0) = 1
    else:
        z = math.exp(2) + 2
        p_right, p_wrong = math.exp(2) / z, 1 / z
    lm = _expected_lm_loss(p_right, p_wrong)
    seq_correct = [1.0, 0.0, 1.0, 0.0]
    q_halt = sum(_bce(float(x), y) for x, y in zip(Q_HALT, seq_correct))
    q_cont = sum(_bce(float(x), float(y)) for x, y in zip(Q_CONT, TARGET))

    assert metrics["lm_loss"].item() == pytest.approx(lm, rel=1e-6)
    assert metrics["q_halt_loss"].item() == pytest.approx(q_halt, rel=1e-6)
    assert metrics["q_continue_loss"].item() == pytest.approx(q_cont, rel=1e-6)
    assert loss.item() == pytest.approx(lm + 0.5 * (q_halt + q_cont), rel=1e-6)

    # Valid rows: 0 and 1 (row 2 has no labels, row 3 did not halt).
    assert metrics["count"].item() == 2
    assert metrics["accuracy"].item() == pytest.approx(1.0 + 0.5)
    assert metrics["exact_accuracy"].item() == 1
    # (q >= 0) = [T, T, F, T] vs exact = [T, F, T, F]: agree on row 0 only among valid rows.
    assert metrics["q_halt_accuracy"].item() == 1
    assert metrics["steps"].item() == 3 + 5
    assert all(not v.requires_grad for v in metrics.values())

    assert set(preds) == {"preds", "q_halt_logits"}
    assert torch.equal(preds["preds"], PREDS)
    assert torch.equal(preds["q_halt_logits"], Q_HALT) and not preds["q_halt_logits"].requires_grad
    assert all_halted.dtype == torch.bool and not all_halted.item()
    assert carry.halted is HALTED


def test_act_loss_head_ignored_tokens_get_no_gradient_and_rows_are_means():
    head = _head("stablemax_cross_entropy")
    _, loss, *_ = head(None, {"labels": LABELS})
    loss.backward()
    grad = head.model.logits.grad
    ignored = LABELS == IGN
    assert torch.equal(grad[ignored], torch.zeros_like(grad[ignored]))
    assert (grad[~ignored].abs().sum(-1) > 0).all()
    # d lm / d logit[label] of a correct token is -(1/count)·(1/s_label - 1/Σs) = -(1/count)·(1/3 - 1/5).
    assert grad[0, 0, 0].item() == pytest.approx(-(1 / 3) * (1 / 3 - 1 / 5), rel=1e-6)
    assert grad[1, 0, 2].item() == pytest.approx(-(1 / 2) * (1 / 3 - 1 / 5), rel=1e-6)


def test_act_loss_head_without_q_continue_target():
    head = _head("stablemax_cross_entropy", with_target=False, halted=torch.ones(4, dtype=torch.bool))
    _, loss, metrics, preds, all_halted = head(None, {"labels": LABELS})
    assert "q_continue_loss" not in metrics
    assert loss.item() == pytest.approx(metrics["lm_loss"].item() + 0.5 * metrics["q_halt_loss"].item())
    assert preds == {}
    assert all_halted.item()
    # All rows halted now; row 3 (2/4 right, q >= 0 but wrong) joins, row 2 still has no labels.
    assert metrics["count"].item() == 3
    assert metrics["accuracy"].item() == pytest.approx(2.0)
    assert metrics["q_halt_accuracy"].item() == 1
    assert metrics["steps"].item() == 3 + 5 + 7


def test_act_loss_head_wiring():
    head = _head("softmax_cross_entropy")
    assert head.initial_carry({"labels": LABELS}, tag="x") == ("initial", 4, "x")
    assert all(k.startswith("model.") for k in head.state_dict())
    with pytest.raises(ValueError, match="stablemax_cross_entropy, softmax_cross_entropy"):
        ACTLossHead(head.model, "cross_entropy")
