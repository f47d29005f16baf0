"""Export an LMModel to a Hugging Face folder of the native `hrm_text` type (HrmTextForCausalLM, transformers >= 5.9).

No modeling code is written: recent Transformers carry the class. Our module names already follow the
fused on-disk schema ([gate|q|k|v] and [gate|up] rows), so export is a prefix rename. Two fixes over
the public converter, settled by reading transformers' `configuration_hrm_text.py` (5.24.0):
`num_hidden_layers` there is the *per-stack* count on first construction (it is then inflated to
per_stack * H * (L + 1) KV-cache slots and kept beside `num_layers_per_stack`), and the training-time
key is `L_bp_cycles`, not `L_bp_steps`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import torch

from hrm.lm.model import LMConfig, LMModel

TOKENIZER_FILES = ("tokenizer.json",)


def l_bp_cycles(cfg: LMConfig) -> list[int]:
    """Per H cycle, how many trailing L steps keep gradients at the full budget (e.g. [0, 3] for H2 L3)."""
    l_share = cfg.bp_max - min(cfg.H_cycles, cfg.bp_max - 1)
    out = []
    for _ in range(cfg.H_cycles):
        take = min(cfg.L_cycles, l_share)
        out.append(take)
        l_share -= take
    return out[::-1]


def hf_config(cfg: LMConfig, ids: dict[str, int | None]) -> dict:
    per_stack = cfg.layers_per_stack
    return {
        "model_type": "hrm_text", "architectures": ["HrmTextForCausalLM"],
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
        # the round-trip pair transformers itself writes: inflated KV-cache slots + the real per-stack depth
        "num_hidden_layers": per_stack * cfg.H_cycles * (cfg.L_cycles + 1), "num_layers_per_stack": per_stack,
        "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_heads, "head_dim": cfg.head_dim,
        "hidden_act": "silu", "H_cycles": cfg.H_cycles, "L_cycles": cfg.L_cycles, "L_bp_cycles": l_bp_cycles(cfg),
        "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": False, "initializer_range": cfg.hidden_size ** -0.5,
        "embedding_scale": math.sqrt(cfg.hidden_size), "prefix_lm": True, "attention_bias": False,
        "mlp_bias": False, "use_cache": True,
        "pad_token_id": ids.get("pad"), "bos_token_id": ids.get("bos"), "eos_token_id": ids.get("eos"),
    }


def hf_state_dict(model: LMModel, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Our names -> the on-disk hrm_text names (`model.` prefix except lm_head); rotary tables are not saved."""
    out = {}
    for name, t in model.state_dict().items():
        if name.startswith("rotary."):
            continue
        key = "lm_head.weight" if name == "lm_head.weight" else f"model.{name}"
        key = "model.embed_tokens.weight" if name == "embed_tokens" else key
        out[key] = t.detach().to("cpu", dtype).contiguous()
    return out


def _token_ids(tokenizer_dir: Path | None, special: dict) -> tuple[dict[str, int | None], dict[str, str | None]]:
    """bos = BOQ, eos = EOA, pad = <|PAD|> (else 0); `special` holds token strings (tokenizer_info) or ids."""
    tok = None
    if tokenizer_dir is not None:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    ids: dict[str, int | None] = {}
    names: dict[str, str | None] = {}
    for role, key, default in (("bos", "boq", None), ("eos", "eoa", None), ("pad", "pad", "<|PAD|>")):
        value = special.get(key, special.get(role, default))
        if isinstance(value, int) or value is None:
            ids[role] = value
            names[role] = tok.id_to_token(value) if tok is not None and value is not None else None
        elif tok is not None and tok.token_to_id(value) is not None:
            ids[role], names[role] = int(tok.token_to_id(value)), value
        else:
            ids[role], names[role] = None, None
    if ids["pad"] is None:
        ids["pad"] = 0
    return ids, names


def export_hf(model: LMModel, cfg: LMConfig, out_dir: Path, tokenizer_dir: Path | None, special: dict,
              dtype: torch.dtype = torch.bfloat16) -> None:
    """Write config.json, model.safetensors (+ tokenizer) into out_dir, atomically (temp folder + rename)."""
    from safetensors.torch import save_file

    if cfg.net != "hrm":
        raise ValueError(f"net={cfg.net!r} has no Hugging Face hrm_text form; fix: export an arch.net=hrm run")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ValueError(f"{out_dir} exists and is not empty; fix: pick a new OUT_DIR or remove it")
    if tokenizer_dir is not None and not (Path(tokenizer_dir) / "tokenizer.json").is_file():
        raise ValueError(f"no tokenizer.json in {tokenizer_dir}; fix: pass the run's tokenizer/ folder")
    ids, names = _token_ids(tokenizer_dir, special)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "config.json").write_text(json.dumps(hf_config(cfg, ids), indent=2) + "\n")
    (tmp / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": ids["bos"], "eos_token_id": ids["eos"], "pad_token_id": ids["pad"]}, indent=2) + "\n")
    save_file(hf_state_dict(model, dtype), str(tmp / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer_dir is not None:
        for f in TOKENIZER_FILES:
            shutil.copy2(Path(tokenizer_dir) / f, tmp / f)
        tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": cfg.max_seq_len,
                   "bos_token": names["bos"], "eos_token": names["eos"], "pad_token": names["pad"]}
        (tmp / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
    if out_dir.exists():
        out_dir.rmdir()
    os.replace(tmp, out_dir)
