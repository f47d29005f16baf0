"""A Hydra multirun whose points may go to different partitions (or GPU types, QoS, ...).

hydra-submitit-launcher sends every point of a sweep as one job array with one set of Slurm parameters, and
Hydra does not sweep its own hydra.launcher.* keys. This launcher (the `_target_` of configs/hydra/launcher/
*.yaml) reads the sweep keys `resources.partition`, `resources.gres`, `resources.qos`, `resources.account`
(e.g. `+resources.partition=savio3_htc,savio4_gpu`), groups consecutive points that share them, and sends one
array per group with those parameters; then it waits for all of them. Loaded by Hydra only: hrm-slurm's
start-up never imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import OmegaConf

SWEEP_KEYS = ("partition", "gres", "qos", "account")  # resources.KEY -> the launcher's KEY


def launcher_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """The `resources.KEY=VALUE` items of one point that set launcher parameters."""
    out: dict[str, Any] = {}
    for item in overrides:
        key, _, value = item.partition("=")
        parts = key.lstrip("+~").split(".")
        if len(parts) == 2 and parts[0] == "resources" and parts[1] in SWEEP_KEYS:
            out[parts[1]] = yaml.safe_load(value) if value else None
    return out


def groups(job_overrides: Sequence[Sequence[str]]) -> list[tuple[dict[str, Any], list[int]]]:
    """Runs of consecutive points with the same launcher settings: (settings, point indices)."""
    out: list[tuple[dict[str, Any], list[int]]] = []
    for i, overrides in enumerate(job_overrides):
        params = launcher_overrides(overrides)
        if out and out[-1][0] == params:
            out[-1][1].append(i)
        else:
            out.append((params, [i]))
    return out


class PartitionedSlurmLauncher(SlurmLauncher):
    def _executor(self, params: dict[str, Any]) -> Any:
        import submitit

        folder = params["submitit_folder"]
        executor = submitit.AutoExecutor(
            cluster="slurm", folder=folder, slurm_max_num_timeout=params["max_num_timeout"]
        )
        common = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{
            k if k in common else f"slurm_{k}": v
            for k, v in params.items()
            if k not in ("submitit_folder", "max_num_timeout")
        })
        return executor

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and job_overrides
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        submitted: list[tuple[list[int], list[Any]]] = []
        for params, indices in groups(job_overrides):
            executor = self._executor({**self.params, **params})
            args = []
            for i in indices:
                num = initial_job_idx + i
                print(f"[hrm] sweep point #{num}: {' '.join(filter_overrides(job_overrides[i]))} -> partition "
                      f"{params.get('partition', self.params.get('partition'))}", flush=True)
                args.append((list(job_overrides[i]), "hydra.sweep.dir", num, f"job_id_for_{num}",
                             Singleton.get_state()))
            submitted.append((indices, executor.map_array(self, *zip(*args))))
        results: list[Any] = [None] * len(job_overrides)
        for indices, jobs in submitted:
            for i, job in zip(indices, jobs):
                results[i] = job.results()[0]
        return results
