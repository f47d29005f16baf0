"""Model construction and weight loading shared by training and evaluation."""

from __future__ import annotations

import torch

from hrm.data.format import DatasetMetadata


def build_model(arch: dict, meta: DatasetMetadata, batch_size: int, device: torch.device):
    """The ACT loss head around HRM, sized from the dataset's metadata, on `device`."""
    from hrm.model.hrm_act import DTYPES, HierarchicalReasoningModel_ACTV1, HRMConfig
    from hrm.model.layers import resolve_attn_backend
    from hrm.model.losses import ACTLossHead

    dtype = DTYPES.get(arch.get("forward_dtype", "bfloat16"))
    if dtype is None:
        raise ValueError(f"arch.forward_dtype={arch.get('forward_dtype')!r}: use bfloat16 or float32")
    backend = resolve_attn_backend(arch.get("attn_backend", "auto"), device, dtype)
    config = HRMConfig.from_arch({**arch, "attn_backend": backend}, batch_size=batch_size, seq_len=meta.seq_len,
                                 vocab_size=meta.vocab_size, num_puzzle_identifiers=meta.num_puzzle_identifiers)
    with torch.device(device):
        return ACTLossHead(HierarchicalReasoningModel_ACTV1(config), arch["loss"]["loss_type"])


def num_params(model: torch.nn.Module) -> int:
    """Counted as the reference logs it: nn.Parameters only (the sparse puzzle table is a buffer)."""
    return sum(p.numel() for p in model.parameters())


def normalize_state_dict(state_dict: dict) -> dict:
    """Accept checkpoints of a compiled model (keys prefixed `_orig_mod.`), ours or the reference's."""
    prefix = "_orig_mod."
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def load_weights(model: torch.nn.Module, state_dict: dict, source: str) -> None:
    """Load with one clear line for the usual mismatch (a dataset built differently from the checkpoint's)."""
    state_dict = normalize_state_dict(state_dict)
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        raise ValueError(f"{source} does not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]}): "
                         f"use the arch settings the checkpoint was trained with")
    for key, value in state_dict.items():
        if tuple(value.shape) != tuple(own[key].shape):
            vocab = "embed_tokens" in key or "lm_head" in key
            hint = ("the dataset's vocab_size differs from the checkpoint's" if vocab
                    else "the dataset has a different number of puzzle identifiers (built with other settings or "
                         "another identifier order): rebuild it as the checkpoint's was" if "puzzle_emb" in key
                    else "the arch settings differ from the checkpoint's")
            raise ValueError(f"{source}: {key} has shape {tuple(value.shape)} but the model expects "
                             f"{tuple(own[key].shape)}: {hint}")
    model.load_state_dict(state_dict, strict=True)
