"""The training config: where it lives, how it is checked, and how runs are named.

Checks here run before any model is built or any file is written, so bad input costs one line. Importing this
module registers the `hrm_minutes` OmegaConf resolver, which the Hydra launcher configs use for timeout_min.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from hrm.data.format import DatasetMetadata
from hrm.schema import check_train_config

# Keys that may differ when a run is resumed (they do not change what is computed).
RUNTIME_KEYS = {
    "max_steps", "wandb_mode", "device", "compile", "state_every_minutes", "eval_max_batches",
    "resources", "build", "eval_save_outputs", "checkpoint_every_eval", "project_name", "run_name",
    "checkpoint_path", "optimizer_impl", "arch.attn_backend", "arch.memory_limit_mb",
    "early_stop",  # when to stop, not what is computed; a resumed run re-checks its saved decision against it
}
# Evaluation metrics early stopping can watch (logged per test set as "<set>/<name>"): name -> higher is better.
EARLY_STOP_METRICS = {"exact_accuracy": True, "accuracy": True, "q_halt_accuracy": True,
                      "lm_loss": False, "q_halt_loss": False}
EARLY_STOP_DEFAULTS = {"metric": "all/exact_accuracy", "patience": None, "train_exact": None,
                       "train_exact_steps": 1000}
_WORDS_A = ("amber", "brisk", "calm", "daring", "eager", "fuzzy", "gentle", "hidden", "icy", "jolly", "keen",
            "lucky", "mellow", "nimble", "odd", "proud", "quiet", "rapid", "silent", "tidy", "vivid", "witty")
_WORDS_B = ("otter", "falcon", "maple", "comet", "badger", "harbor", "lynx", "meadow", "nebula", "orchid",
            "pebble", "quartz", "raven", "sparrow", "tundra", "walrus", "yak", "zephyr", "cedar", "delta")


def config_dir() -> Path:
    return Path(os.environ.get("HRM_CONFIG_DIR", Path(__file__).resolve().parents[1] / "configs"))


def default_config() -> DictConfig:
    """cfg_pretrain.yaml with the default arch, without Hydra (for hrm-evaluate and reference configs)."""
    base = OmegaConf.load(config_dir() / "cfg_pretrain.yaml")
    base.pop("defaults", None)
    base.pop("hydra", None)
    base.arch = OmegaConf.load(config_dir() / "arch" / "hrm_v1.yaml")
    return base


def to_container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def validate_config(cfg: DictConfig, world_size: int) -> None:
    """Raise ValueError with one line for config mistakes that would otherwise fail mid-run: every key's type and
    range (hrm.schema, the one typed schema), then the rules that tie keys together."""
    check_train_config(cfg)
    if cfg.arch.hidden_size % cfg.arch.num_heads:
        raise ValueError(f"arch.hidden_size={cfg.arch.hidden_size} is not divisible by arch.num_heads="
                         f"{cfg.arch.num_heads}: use a hidden_size that is a multiple of num_heads")
    if cfg.global_batch_size <= 0:
        raise ValueError(f"global_batch_size={cfg.global_batch_size} must be positive")
    if cfg.global_batch_size % world_size:
        raise ValueError(f"global_batch_size={cfg.global_batch_size} is not divisible by the {world_size} ranks: "
                         f"use a multiple of {world_size}")
    if cfg.eval_interval is not None and (cfg.eval_interval <= 0 or cfg.epochs % cfg.eval_interval):
        raise ValueError(f"epochs={cfg.epochs} is not divisible by eval_interval={cfg.eval_interval}: "
                         f"choose eval_interval dividing epochs (or eval_interval=null)")
    if cfg.arch.loss.loss_type not in ("stablemax_cross_entropy", "softmax_cross_entropy"):
        raise ValueError(f"arch.loss.loss_type={cfg.arch.loss.loss_type!r}: use stablemax_cross_entropy "
                         f"or softmax_cross_entropy")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise ValueError(f"max_steps={cfg.max_steps} must be >= 1 (or null)")
    early_stop_settings(cfg)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def early_stop_settings(cfg: DictConfig) -> dict:
    """The early_stop.* keys (defaults for any that are missing), checked; ValueError with one line if bad."""
    given = cfg.get("early_stop") or {}
    es = {k: given.get(k, v) for k, v in EARLY_STOP_DEFAULTS.items()}
    metric = es["metric"]
    names = ", ".join(f"{k} ({'higher' if up else 'lower'} is better)" for k, up in EARLY_STOP_METRICS.items())
    parts = metric.split("/") if isinstance(metric, str) else []
    if len(parts) != 2 or not parts[0] or parts[1] not in EARLY_STOP_METRICS:
        raise ValueError(f"early_stop.metric={metric!r} is not an evaluation metric early stopping can watch: "
                         f"use <set>/<name> with name one of {names}, e.g. early_stop.metric=all/exact_accuracy")
    if es["patience"] is not None and (not _whole(es["patience"]) or es["patience"] < 1):
        raise ValueError(f"early_stop.patience={es['patience']!r} must be a whole number of evaluations >= 1, "
                         f"or null to turn patience off")
    exact = es["train_exact"]
    if exact is not None and (isinstance(exact, bool) or not isinstance(exact, int | float) or not 0 < exact <= 1):
        raise ValueError(f"early_stop.train_exact={exact!r} must be a train exact accuracy in (0, 1], "
                         f"e.g. early_stop.train_exact=0.99, or null to turn it off")
    if not _whole(es["train_exact_steps"]) or es["train_exact_steps"] < 1:
        raise ValueError(f"early_stop.train_exact_steps={es['train_exact_steps']!r} must be a whole number "
                         f"of steps >= 1")
    return es


def check_fits_data(cfg: DictConfig, meta: DatasetMetadata, world_size: int) -> None:
    local = cfg.global_batch_size // world_size
    if local < 1:
        raise ValueError(f"global_batch_size={cfg.global_batch_size} gives no rows per rank with {world_size} ranks")


def auto_names(cfg: DictConfig) -> tuple[str, str, str]:
    """Project, run name and checkpoint path as the reference builds them (with our own word list)."""
    project = cfg.project_name or f"{Path(str(cfg.data_path)).name.capitalize()} ACT-torch"
    run = cfg.run_name or f"HierarchicalReasoningModel_ACTV1 {random.choice(_WORDS_A)}-{random.choice(_WORDS_B)}"
    path = cfg.checkpoint_path or str(Path("checkpoints") / project / run)
    return project, run, path


def sweep_point_names(sweep_dir: str, job_num: int) -> tuple[str, str]:
    """Run name and checkpoint path of point `job_num` of a Hydra multirun, for when neither is set.

    Both follow from the sweep directory and the point's number only, so a point that Slurm/submitit requeues
    (hydra-submitit runs the point again with the same number) resumes its own checkpoint instead of starting
    over under a new random name. The directory is Hydra's own job directory (hydra.sweep.dir/hydra.job.num).
    """
    run_dir = Path(sweep_dir).absolute() / str(job_num)
    return f"HierarchicalReasoningModel_ACTV1 {Path(sweep_dir).name}#{job_num}", str(run_dir)


# Slurm's time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S.
_SLURM_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")


def slurm_minutes(value: Any) -> int:
    """A Slurm time limit (a string in one of Slurm's formats, or an int of minutes) in whole minutes, rounded up."""
    fix = "fix: resources.time=HH:MM:SS, D-HH:MM:SS or minutes, e.g. resources.time=06:00:00"
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"time limit {value!r} is not a Slurm time; {fix}")
    if isinstance(value, int):
        minutes = value
    else:
        m = _SLURM_TIME.fullmatch(value.strip())
        if m is None:
            raise ValueError(f"time limit {value!r} is not a Slurm time; {fix}")
        days, a, b, c = (int(g) if g is not None else None for g in m.groups())
        if days is not None:  # D-H, D-H:M, D-H:M:S
            seconds = ((days * 24 + a) * 60 + (b or 0)) * 60 + (c or 0)
        elif c is not None:  # H:M:S
            seconds = (a * 60 + b) * 60 + c
        elif b is not None:  # M:S
            seconds = a * 60 + b
        else:  # M
            seconds = a * 60
        minutes = -(-seconds // 60)
    if minutes < 1:
        raise ValueError(f"time limit {value!r} is not a positive time; {fix}")
    return minutes


class ResolverError(InterpolationResolutionError, CompactHydraException):
    """Bad input found by one of our resolvers: OmegaConf passes it through as is, and Hydra prints its message
    (and the key it came from) without a traceback."""


def _minutes_resolver(value: Any, default: Any = 60) -> int:
    """${hrm_minutes:TIME,DEFAULT}: TIME in minutes, or DEFAULT (also a Slurm time) when TIME is null or empty."""
    try:
        return slurm_minutes(default if value is None or value == "" else value)
    except ValueError as e:
        raise ResolverError(str(e)) from None


OmegaConf.register_new_resolver("hrm_minutes", _minutes_resolver, replace=True)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def resume_differences(saved: dict, current: dict) -> list[str]:
    """Settings that differ between a saved run and this command (runtime-only keys excluded)."""
    a, b = _flat(saved), _flat(current)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key in RUNTIME_KEYS or key.split(".")[0] in RUNTIME_KEYS:
            continue
        if a.get(key) != b.get(key):
            diffs.append(f"{key}: {a.get(key)!r} -> {b.get(key)!r}")
    return diffs


# hrm-train flags of Hydra's own that take a value, and those that point at another config tree
_HYDRA_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p"}
_OTHER_TREE_FLAGS = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun",
                     "--help", "-h", "--hydra-help", "--info", "-i", "--version", "--shell-completion", "-sc"}


def known_experiments() -> list[str]:
    return sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))


def compose_checked(overrides: list[str]) -> DictConfig:
    """The training config for these (non-sweep) overrides, composed without running Hydra's app; ValueError with
    one line on a bad override (a typo'd key answered with the close key)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from hrm.schema import hydra_problem, train_keys

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
            return compose(config_name="cfg_pretrain", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as e:
        raise ValueError(hydra_problem(e, list(overrides), train_keys(), known_experiments())) from None
    finally:
        GlobalHydra.instance().clear()


def preflight(argv: list[str]) -> str | None:
    """hrm-train's command line, checked before Hydra starts (and so before a sweep is sent to Slurm): overrides,
    every key's type and range, cross-field rules. The one-line problem, or None when it passes (or when the
    command is not a plain training run: another config tree, --help). A sweep is checked at its first point."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    overrides, args = [], iter(argv)
    for a in args:
        if a.split("=", 1)[0] in _OTHER_TREE_FLAGS:
            return None
        if a in _HYDRA_VALUE_FLAGS:
            next(args, None)
        elif not a.startswith("-"):
            overrides.append(a)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"bad override ({first}); fix: key=value arguments, e.g. lr=1e-4"
    plain, more = [], []  # more: (key, other values of a value sweep)
    for o in parsed:
        if o.key_or_group.startswith("hydra"):
            continue
        if o.is_sweep_override():
            try:
                first = next(iter(o.sweep_string_iterator()))
            except Exception:  # a glob or an odd sweep: Hydra expands it
                continue
            plain.append(f"{o.get_key_element()}={first}")
            if "/" not in o.key_or_group and not (config_dir() / o.key_or_group).is_dir():
                try:
                    more.append((o.key_or_group, list(o.sweep_iterator())[1:]))
                except Exception:
                    pass
        else:
            plain.append(o.input_line)
    try:
        cfg = compose_checked(plain)
        validate_config(cfg, 1)
        for key, values in more:
            for value in values:
                point = cfg.copy()
                OmegaConf.update(point, key, value, force_add=True)
                validate_config(point, 1)
    except ValueError as e:
        if "${hydra" in str(e) or "hydra" in str(e).split(";")[0].lower() and "resolve" in str(e).lower():
            return None  # needs Hydra's running app to resolve: checked again inside the run
        return str(e)
    return None
