"""Compose an experiment's Hydra config in the login-node process, without torch.

The same configs/ tree that `hrm-train` reads gives the data path, the `build:` recipe and the
`resources:` request, so the Slurm layer and the trainer can never disagree about them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from slurm.profiles import RequestError


def config_dir() -> Path:
    env = os.environ.get("HRM_CONFIG_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "configs"


def known_experiments() -> list[str]:
    return sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))


def compose(experiment: str | None, overrides: list[str]) -> dict[str, Any]:
    """The composed config as a plain dict (interpolations resolved where they can be)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    if experiment and experiment not in known_experiments():
        raise RequestError(
            f"unknown experiment '{experiment}' (known: {', '.join(known_experiments()) or 'none'}); "
            f"fix: +experiment=NAME with a file in {config_dir() / 'experiment'}"
        )
    all_overrides = ([f"+experiment={experiment}"] if experiment else []) + list(overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
            cfg = hydra_compose(config_name="cfg_pretrain", overrides=all_overrides)
    except HydraException as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise RequestError(f"bad training override ({first}); fix the key=value arguments") from None
    finally:
        GlobalHydra.instance().clear()
    return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]
