"""configs/lm (cfg_lm.yaml + experiment/*.yaml): composing it and the typed schema of its keys, torch-free.

`hrm-lm train`, `hrm-slurm preview/submit` of an LM experiment and `hrm-doctor memory` compose the same way and
run the same check, so a typo'd key, an unknown experiment or a value of the wrong type is one line naming the
fix before any data is read, directory made or model built. Rules that need the data (the batch against the
context and the ranks) stay in hrm.lm.train.check_config.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from hrm.schema import FREE, Key, check_config, hydra_problem

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "lm"
MODEL_FILE = Path(__file__).resolve().parent / "model.py"


def model_sizes() -> dict[str, dict[str, Any]]:
    """hrm.lm.model.SIZES, read as a literal from the source (importing the module would import torch)."""
    tree = ast.parse(MODEL_FILE.read_text())
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and target.id == "SIZES" and node.value is not None:
            return ast.literal_eval(node.value)
    raise RuntimeError(f"no SIZES literal in {MODEL_FILE}")


def experiments() -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


def _positive_int(null: bool = False, example: str = "1") -> Key:
    return Key(int, ge=1, null=null, example=example)


def _fraction(example: str) -> Key:
    return Key(float, ge=0, le=1, example=example)


def schema() -> dict[str, Key]:
    return {
        "arch.size": Key(str, choices=tuple(model_sizes())),
        "arch.net": Key(str, choices=("hrm", "transformer")),
        "arch.bp_warmup_ratio": _fraction("0.2"),
        "arch.attn_backend": Key(str, choices=("auto", "fa3", "fa2", "flex", "sdpa")),
        "arch.hidden_size": _positive_int(True, "1024"),
        "arch.num_heads": _positive_int(True, "16"),
        "arch.n_layers": _positive_int(True, "8"),
        "arch.expansion": Key(float, gt=0, null=True, example="4"),
        "arch.H_cycles": _positive_int(True, "2"),
        "arch.L_cycles": _positive_int(True, "3"),
        "arch.half_layers": Key(bool, null=True),
        "arch.norm_eps": Key(float, gt=0, null=True, example="1e-5"),
        "arch.rope_theta": Key(float, gt=0, null=True, example="10000"),
        "data_path": Key(str, example="data/hrmtext"),
        "global_batch_size": _positive_int(example="196608"),
        "epochs": _positive_int(example="4"),
        "lr": Key(float, gt=0, example="2.2e-4"),
        "lr_min_ratio": _fraction("1.0"),
        "lr_warmup_steps": Key(int, ge=0, example="2000"),
        "weight_decay": Key(float, ge=0, example="0.1"),
        "beta1": _fraction("0.9"),
        "beta2": _fraction("0.95"),
        "ema": Key(float, ge=0, le=1, null=True, example="0.9999"),
        "seed": Key(int, example="0"),
        "project_name": Key(str, null=True),
        "run_name": Key(str, null=True),
        "checkpoint_path": Key(str, null=True, example="runs/hrmtext"),
        "max_steps": _positive_int(True, "100"),
        "checkpoint_every_steps": Key(int, ge=0, example="1000"),
        "state_every_minutes": Key(float, ge=0, example="30"),
        "keep_checkpoints": Key(int, ge=0, example="2"),  # 0: keep every step_N
        "log_every": _positive_int(example="5"),
        "activation_checkpointing": Key(bool),
        "compile": Key(object, choices=("auto", True, False)),
        "device": Key(str, choices=("auto", "cpu", "cuda")),
        "wandb_mode": Key(str, choices=("auto", "online", "offline", "disabled")),
        "eval": Key(dict, null=True),
        "eval.tasks": FREE,  # a list of lm-eval task names or "public"; hrm-lm eval checks them
        "eval.limit": Key(float, gt=0, null=True, example="100"),
        "eval.include_path": Key(str, null=True, example="tasks"),
        "data": FREE,  # hrm-lm data's flags, checked by its parser
        "resources": FREE,  # the Slurm layer's keys, checked by hrm-slurm
    }


def keys() -> list[str]:
    return [k for k, v in schema().items() if v.kind is not dict]


def check(cfg: Any) -> dict[str, Any]:
    """Every key's type, range and choices (one ConfigError line); the flat values when it passes."""
    from omegaconf import DictConfig, OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    plain.pop("hydra", None)
    if plain.get("eval") is None:
        plain.pop("eval", None)
    spec = {k: v for k, v in schema().items() if k != "eval"}
    return check_config(plain, spec)


def compose(overrides: list[str]) -> Any:
    """cfg_lm.yaml with `overrides` (+experiment=NAME among them), as a DictConfig; ValueError in one line."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            return hydra_compose(config_name="cfg_lm", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as e:
        raise ValueError(hydra_problem(e, list(overrides), keys(), experiments())) from None
    finally:
        GlobalHydra.instance().clear()
