"""CastedSparseEmbedding: lookup, where its gradient lands, its buffers, and training with SignSGD."""

from __future__ import annotations

import pytest
import torch

from hrm.model.puzzle_embedding import CastedSparseEmbedding
from hrm.optim import SparseEmbeddingSignSGD


def _emb(num: int = 6, dim: int = 4, batch: int = 3, std: float = 0.5, cast_to=torch.bfloat16):
    torch.manual_seed(0)
    return CastedSparseEmbedding(num, dim, batch_size=batch, init_std=std, cast_to=cast_to)


def test_buffers_names_shapes_dtypes():
    emb = _emb()
    assert emb.weights.shape == (6, 4) and emb.weights.dtype == torch.float32
    assert emb.local_weights.shape == (3, 4) and emb.local_weights.dtype == torch.float32
    assert emb.local_weights.requires_grad and emb.local_weights.is_leaf
    assert emb.local_ids.shape == (3,) and emb.local_ids.dtype == torch.int32
    assert list(dict(emb.named_parameters())) == []  # nothing for AdamATan2
    assert set(dict(emb.named_buffers())) == {"weights", "local_weights", "local_ids"}


def test_zero_init_std_gives_zeros_and_truncation_bounds_otherwise():
    assert torch.count_nonzero(_emb(std=0).weights) == 0
    w = CastedSparseEmbedding(2000, 16, batch_size=1, init_std=0.1, cast_to=torch.float32).weights
    assert w.abs().max() <= 2 * 0.1 * 1.13685 * (1 + 1e-5)  # JAX-style clip at ±2 corrected std
    assert float(w.std()) == pytest.approx(0.1, rel=0.05)


def test_state_dict_holds_only_weights_and_round_trips():
    emb = _emb()
    sd = emb.state_dict()
    assert list(sd) == ["weights"]
    other = _emb(std=0)
    other.load_state_dict(sd)
    assert torch.equal(other.weights, emb.weights)


def test_eval_lookup_casts_and_accepts_any_batch_size():
    emb = _emb().eval()
    ids = torch.tensor([5, 0, 5, 2, 1], dtype=torch.int32)  # 5 rows although batch_size=3
    out = emb(ids)
    assert out.dtype == torch.bfloat16 and out.shape == (5, 4)
    assert torch.equal(out, emb.weights[ids.long()].to(torch.bfloat16))
    assert not out.requires_grad


def test_training_gradient_lands_in_local_weights():
    emb = _emb().train()
    ids = torch.tensor([4, 1, 4], dtype=torch.int32)
    out = emb(ids)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, emb.weights[ids.long()].to(torch.bfloat16))
    assert torch.equal(emb.local_ids, ids)
    assert torch.equal(emb.local_weights.detach(), emb.weights[ids.long()])
    # Values exact in bfloat16, so the cast in the backward pass loses nothing.
    coeff = torch.tensor([[1.0, -2.0, 3.0, 0.5], [0.0, 1.0, -1.0, 2.0], [4.0, 4.0, -0.25, 1.0]])
    (out.float() * coeff).sum().backward()
    assert torch.equal(emb.local_weights.grad, coeff)
    assert emb.weights.grad is None


def test_training_requires_full_batch():
    emb = _emb().train()
    with pytest.raises(ValueError, match="batch_size=3"):
        emb(torch.tensor([0, 1], dtype=torch.int32))


def test_moving_the_module_keeps_local_weights_a_leaf():
    emb = _emb().to(torch.device("cpu")).to(torch.float64)
    assert emb.local_weights.is_leaf and emb.local_weights.requires_grad
    emb.train()(torch.tensor([0, 1, 2]))[0].sum().backward()
    assert emb.local_weights.grad is not None


def test_sign_sgd_training_moves_only_rows_in_the_batch():
    emb = _emb(num=6, dim=2, batch=3, cast_to=torch.float32).train()
    before = emb.weights.clone()
    lr, wd = 0.1, 0.5
    opt = SparseEmbeddingSignSGD(emb.buffers(), lr=lr, weight_decay=wd)
    ids = torch.tensor([2, 5, 2], dtype=torch.int32)
    # d loss / d out = [[1, -1], [-3, 0], [2, 4]]; id 2 sums to [3, 3], id 5 is [-3, 0].
    target = torch.tensor([[1.0, -1.0], [-3.0, 0.0], [2.0, 4.0]])
    (emb(ids) * target).sum().backward()
    opt.step()
    decay = 1 - lr * wd
    torch.testing.assert_close(emb.weights[2], before[2] * decay - lr * torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(emb.weights[5], before[5] * decay - lr * torch.tensor([-1.0, 0.0]))
    for row in (0, 1, 3, 4):
        assert torch.equal(emb.weights[row], before[row])
    # The next forward sees the updated table.
    opt.zero_grad()
    assert torch.equal(emb(ids).detach(), emb.weights[ids.long()])
