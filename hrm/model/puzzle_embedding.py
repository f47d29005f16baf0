"""Sparse puzzle-embedding table trained by `hrm.optim.SparseEmbeddingSignSGD` (spec §1.2, §4.2).

The table can be huge (ARC: ~877k rows × 512), so it is a buffer, not a Parameter: AdamATan2 never sees
it, and only the batch's rows get a gradient, through the small `local_weights` buffer.
"""

from __future__ import annotations

import torch
from torch import nn

from hrm.model.layers import trunc_normal_init_


class CastedSparseEmbedding(nn.Module):
    """Embedding lookup whose training gradient lands in `local_weights.grad` (one row per batch slot).

    Buffer names are checkpoint keys of the reference: `weights` (persistent), `local_weights` and
    `local_ids` (non-persistent). Training batches must have exactly `batch_size` rows.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, batch_size: int, init_std: float,
                 cast_to: torch.dtype):
        super().__init__()
        self.cast_to = cast_to
        self.register_buffer("weights", trunc_normal_init_(torch.empty(num_embeddings, embedding_dim),
                                                           std=init_std), persistent=True)
        self.register_buffer("local_weights", torch.zeros(batch_size, embedding_dim, requires_grad=True),
                             persistent=False)
        self.register_buffer("local_ids", torch.zeros(batch_size, dtype=torch.int32), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.weights[ids].to(self.cast_to)
        if ids.shape[0] != self.local_weights.shape[0]:
            raise ValueError(f"CastedSparseEmbedding in training mode needs exactly batch_size="
                             f"{self.local_weights.shape[0]} ids (got {ids.shape[0]}): training batches must "
                             f"be full; use eval mode for other sizes")
        with torch.no_grad():
            self.local_weights.copy_(self.weights[ids])
            self.local_ids.copy_(ids)
        return self.local_weights.to(self.cast_to)

    def _apply(self, fn, recurse: bool = True):
        """Keep `local_weights` a leaf after .to()/.cuda(): a moved buffer would otherwise get a grad_fn
        and its gradient would never reach `.grad`."""
        super()._apply(fn, recurse)
        lw = self.local_weights
        if not lw.is_leaf:
            self.local_weights = lw.detach().requires_grad_(True)
        return self
