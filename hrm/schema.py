"""The typed schema of the training config, and the one check every entry point runs before any compute.

`hrm-train`, `hrm-evaluate`, `hrm-doctor config`, `hrm-slurm preview/submit` and the setup script (through those
CLIs) all call `check_config(cfg, TRAIN_SCHEMA)`: types, ranges and choices of every key, and unknown keys answered
with "did you mean". Cross-field rules stay in `hrm.config.validate_config`, which calls this first.

Torch-free and cheap (the Slurm layer imports it on a login node). Other config trees (hrm/lm) describe their keys
with `Key` and call `check_config` with their own schema:

    from hrm.schema import Key, check_config
    check_config(cfg, {"lr": Key(float, gt=0, example="1e-4"), "model.layers": Key(int, ge=1)})

A value that is a mapping (`build`, `arch` ...) is described by its dotted keys; `FREE` marks a key whose value is
checked elsewhere (e.g. `build.args`, read by `hrm-data build`'s own parser).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class ConfigError(ValueError):
    """A config key with a bad value or an unknown name; the message is one line with the fix."""


@dataclass(frozen=True)
class Key:
    """What one config key may hold. `kind` is int, float (ints are fine), str, bool, list or dict."""

    kind: type
    ge: float | None = None  # inclusive lower bound
    gt: float | None = None  # exclusive lower bound
    le: float | None = None  # inclusive upper bound
    choices: tuple | None = None  # allowed values (of any type: compile takes auto, true or false)
    null: bool = False  # None is allowed
    example: str | None = None  # a good value for the fix

    def problem(self, value: Any) -> str | None:
        """Why `value` does not fit, as "must be ..." text, or None when it does."""
        if value is None:
            return None if self.null else f"must be set ({self._what()})"
        if self.choices is not None:
            if any(value == c and type(value) is type(c) for c in self.choices):
                return None
            return f"must be one of {', '.join(_show(c) for c in self.choices)}"
        if not _is_kind(value, self.kind):
            return f"must be {self._what()}"
        if self.kind in (int, float):
            if self.ge is not None and value < self.ge:
                return f"must be {self._what()}"
            if self.gt is not None and value <= self.gt:
                return f"must be {self._what()}"
            if self.le is not None and value > self.le:
                return f"must be {self._what()}"
            if value != value:  # NaN
                return f"must be {self._what()}"
        return None

    def _what(self) -> str:
        noun = {int: "a whole number", float: "a number", str: "a string", bool: "true or false",
                list: "a list", dict: "a mapping"}.get(self.kind, self.kind.__name__)
        bounds = []
        if self.ge is not None:
            bounds.append(f">= {self.ge:g}")
        if self.gt is not None:
            bounds.append(f"> {self.gt:g}")
        if self.le is not None:
            bounds.append(f"<= {self.le:g}")
        text = noun + (" " + " and ".join(bounds) if bounds else "")
        return text + (" or null" if self.null else "")


FREE = Key(object, null=True)  # any value: checked by whoever reads it


def _is_kind(value: Any, kind: type) -> bool:
    if kind is object:
        return True
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is list:
        return isinstance(value, list | tuple)
    if kind is dict:
        return isinstance(value, Mapping)
    return isinstance(value, kind)


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _plain(cfg: Any) -> Any:
    """A DictConfig (resolved where it can be) or a dict -> plain containers."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        return cfg
    if isinstance(cfg, DictConfig | ListConfig):
        try:
            return OmegaConf.to_container(cfg, resolve=True)
        except Exception as e:  # an interpolation that does not resolve: name it
            raise ConfigError(f"{' '.join(str(e).split())[:200]}; fix the key it names") from None
    return cfg


def _flatten(d: Mapping, schema: Mapping[str, Key], prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value, stopping at keys the schema describes as a whole (a dict or FREE value)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        spec = schema.get(key)
        if isinstance(v, Mapping) and v and (spec is None or spec.kind is not dict and spec is not FREE) \
                and any(s.startswith(key + ".") for s in schema):
            out.update(_flatten(v, schema, key + "."))
        else:
            out[key] = v
    return out


def suggest(name: str, known: list[str]) -> str | None:
    """The known key closest to `name` (difflib), also matching on the last dotted part; None if none is close."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return close[0]
    tail = name.rsplit(".", 1)[-1]
    by_tail = {k.rsplit(".", 1)[-1]: k for k in known}
    close = difflib.get_close_matches(tail, list(by_tail), n=1, cutoff=0.7)
    return by_tail[close[0]] if close else None


def unknown_key_message(name: str, known: list[str], value: Any = None) -> str:
    """One line for a key that is not in the config: the close key when there is one."""
    guess = suggest(name, known)
    shown = "VALUE" if value is None else _show(value)
    if guess:
        return f"unknown key '{name}'; fix: did you mean {guess}={shown}?"
    top = sorted({k.split(".")[0] for k in known})
    return f"unknown key '{name}'; fix: use one of the config's keys ({', '.join(top[:12])}, ...)"


def check_config(cfg: Any, schema: Mapping[str, Key], *, allow_unknown: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check every key of `cfg` (a DictConfig or a dict) against `schema`; raise ConfigError with one line.

    Keys under a prefix in `allow_unknown` (e.g. "hydra.") are not checked. Returns the flat dotted values."""
    flat = _flatten(_plain(cfg) or {}, schema)
    known = list(schema)
    for key, value in flat.items():
        if key.startswith(allow_unknown) and allow_unknown:
            continue
        spec = schema.get(key)
        if spec is None:
            parent = next((p for p in _parents(key) if schema.get(p) is FREE or
                           (schema.get(p) is not None and schema[p].kind is dict)), None)
            if parent is not None:
                continue
            raise ConfigError(unknown_key_message(key, known, value))
        problem = spec.problem(value)
        if problem:
            shown = repr(value) if isinstance(value, str) else _show(value)
            if spec.choices is not None:
                fix = f"{key}={_show(spec.choices[0])}"
            elif spec.example:
                fix = f"e.g. {key}={spec.example}"
            else:
                fix = f"give {key} such a value"
            raise ConfigError(f"{key}={shown} {problem}; fix: {fix}")
    return flat


def _parents(key: str) -> list[str]:
    parts = key.split(".")
    return [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]


# --- the training config (configs/cfg_pretrain.yaml + configs/arch/*.yaml) ---------------------------------

_POS = {"gt": 0}
TRAIN_SCHEMA: dict[str, Key] = {
    "data_path": Key(str, example="data/sudoku-demo"),
    "global_batch_size": Key(int, ge=1, example="768"),
    "epochs": Key(int, ge=1, example="20000"),
    "eval_interval": Key(int, ge=1, null=True, example="2000"),
    "checkpoint_every_eval": Key(bool),
    "lr": Key(float, **_POS, example="1e-4"),
    "lr_min_ratio": Key(float, ge=0, le=1, example="1.0"),
    "lr_warmup_steps": Key(int, ge=0, example="2000"),
    "weight_decay": Key(float, ge=0, example="0.1"),
    "beta1": Key(float, ge=0, le=1, example="0.9"),
    "beta2": Key(float, ge=0, le=1, example="0.95"),
    "puzzle_emb_lr": Key(float, ge=0, example="1e-2"),
    "puzzle_emb_weight_decay": Key(float, ge=0, example="0.1"),
    "seed": Key(int, ge=0, example="0"),
    "project_name": Key(str, null=True),
    "run_name": Key(str, null=True),
    "checkpoint_path": Key(str, null=True, example="checkpoints/my-run"),
    "eval_save_outputs": Key(list, example="[inputs,labels,logits]"),
    "wandb_mode": Key(str, choices=("auto", "online", "offline", "disabled")),
    "max_steps": Key(int, ge=1, null=True, example="100"),
    "state_every_minutes": Key(float, **_POS, example="30"),
    "optimizer_impl": Key(str, choices=("foreach", "fused", "loop")),
    "compile": Key(object, choices=("auto", True, False)),
    "device": Key(str, choices=("auto", "cpu", "cuda")),
    "eval_max_batches": Key(int, ge=1, null=True, example="8"),
    "build": Key(dict, null=True),  # the recipe: checked by hrm-data build's parser (and the Slurm layer)
    "resources": Key(dict, null=True),  # the Slurm request: checked with RESOURCES_SCHEMA below
    "early_stop": Key(dict, null=True),  # ranges and cross-field rules: hrm.config.early_stop_settings
    "arch.name": Key(str),
    "arch.loss.name": Key(str),
    "arch.loss.loss_type": Key(str, choices=("stablemax_cross_entropy", "softmax_cross_entropy")),
    "arch.halt_exploration_prob": Key(float, ge=0, le=1, example="0.1"),
    "arch.halt_max_steps": Key(int, ge=1, example="16"),
    "arch.H_cycles": Key(int, ge=1, example="2"),
    "arch.L_cycles": Key(int, ge=1, example="2"),
    "arch.H_layers": Key(int, ge=1, example="4"),
    "arch.L_layers": Key(int, ge=1, example="4"),
    "arch.hidden_size": Key(int, ge=1, example="512"),
    "arch.num_heads": Key(int, ge=1, example="8"),
    "arch.expansion": Key(float, **_POS, example="4"),
    "arch.puzzle_emb_ndim": Key(int, ge=0, example="512"),
    "arch.pos_encodings": Key(str, choices=("rope", "learned")),
    "arch.rms_norm_eps": Key(float, **_POS, example="1e-5"),
    "arch.rope_theta": Key(float, **_POS, example="10000.0"),
    "arch.forward_dtype": Key(str, choices=("bfloat16", "float32")),
    "arch.attn_backend": Key(str, choices=("auto", "fa3", "fa2", "sdpa")),
    "arch.grad_mode": Key(str, choices=("one_step", "full", "sqrt")),
    "arch.grad_window": Key(int, ge=1, null=True, example="8"),
    "arch.memory_limit_mb": Key(float, **_POS, null=True, example="4000"),
}
# early_stop.*: known here (for "did you mean"); values and their rules in hrm.config.early_stop_settings
EARLY_STOP_SCHEMA: dict[str, Key] = {f"early_stop.{k}": Key(object, null=True)
                                     for k in ("metric", "patience", "train_exact", "train_exact_steps")}
# resources: what an experiment asks Slurm for (slurm/pipeline.py reads it; command-line Slurm keys override it)
SLURM_TIME = r"(?:\d+-)?\d+(?::\d+){0,2}"
RESOURCES_SCHEMA: dict[str, Key] = {
    "resources.gpus": Key(int, ge=0, example="1"),
    "resources.nodes": Key(int, ge=1, example="1"),
    "resources.cpus": Key(int, ge=1, example="2"),
    "resources.cpus_per_gpu": Key(int, ge=1, null=True, example="4"),
    "resources.time": Key(object, example="06:00:00"),
    "resources.eval_time": Key(object, null=True, example="01:00:00"),
    "resources.data_time": Key(object, null=True, example="01:00:00"),
    "resources.mem": Key(str, null=True, example="32G"),
    "resources.partition": Key(str, null=True, example="savio4_gpu"),
    "resources.gpu_type": Key(str, null=True, example="A5000"),
}
# what evaluation can save per example (the batch's fields, then the model's outputs): eval_save_outputs picks some
SAVE_OUTPUT_KEYS = ("inputs", "labels", "puzzle_identifiers", "logits", "q_halt_logits", "q_continue_logits",
                    "target_q_continue", "preds")
FULL_TRAIN_SCHEMA = {**TRAIN_SCHEMA, **EARLY_STOP_SCHEMA, **RESOURCES_SCHEMA}
for _k in ("early_stop", "resources"):
    FULL_TRAIN_SCHEMA[_k] = Key(dict, null=True)


def _schema_for_check(schema: Mapping[str, Key]) -> dict[str, Key]:
    """Mappings the schema describes key by key are walked, not accepted whole."""
    out = dict(schema)
    for prefix in {k.split(".")[0] for k in schema if "." in k}:
        if prefix in out and out[prefix].kind is dict:
            out.pop(prefix)
    return out


def check_train_config(cfg: Any) -> dict[str, Any]:
    """The training config's keys, types and ranges (one ConfigError line); the flat values when it passes."""
    plain = _plain(cfg) or {}
    plain = {k: v for k, v in plain.items() if k != "hydra"}
    for key in ("early_stop", "resources"):  # null or absent is fine: nothing to walk
        if plain.get(key) is None:
            plain.pop(key, None)
        elif not isinstance(plain[key], Mapping):
            raise ConfigError(f"{key}={_show(plain[key])} must be a mapping of {key}.* keys; fix: drop it or set "
                              f"keys like {next(k for k in FULL_TRAIN_SCHEMA if k.startswith(key + '.'))}=...")
    flat = check_config(plain, _schema_for_check(FULL_TRAIN_SCHEMA))
    unknown = [k for k in flat.get("eval_save_outputs") or [] if k not in SAVE_OUTPUT_KEYS]
    if unknown:
        guess = difflib.get_close_matches(str(unknown[0]), SAVE_OUTPUT_KEYS, n=1)
        hint = f"did you mean {guess[0]}? " if guess else ""
        raise ConfigError(f"eval_save_outputs names {unknown[0]!r}, which evaluation does not produce; fix: {hint}"
                          f"use some of {', '.join(SAVE_OUTPUT_KEYS)}")
    for key in ("resources.time", "resources.eval_time", "resources.data_time"):
        value = flat.get(key)
        if value is not None and not _slurm_time_ok(value):
            shown = repr(value) if isinstance(value, str) else _show(value)
            raise ConfigError(f"{key}={shown} is not a Slurm time; fix: {key}=HH:MM:SS, D-HH:MM:SS or "
                              f"minutes, e.g. {key}=06:00:00")
    return flat


def _slurm_time_ok(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value > 0
    return isinstance(value, str) and re.fullmatch(SLURM_TIME, value.strip()) is not None


def train_keys() -> list[str]:
    """Every dotted key of the training config (for "did you mean" on command-line overrides)."""
    return [k for k in FULL_TRAIN_SCHEMA if FULL_TRAIN_SCHEMA[k].kind is not dict or "." in k]


def hydra_problem(exc: Exception, overrides: list[str], known_keys: list[str], experiments: list[str]) -> str:
    """Hydra's composition error as our one line: a typo'd key gets the close key instead of Hydra's advice to
    append it with '+'; an unknown experiment gets the close one."""
    text = str(exc)
    values = {o.split("=", 1)[0].lstrip("+~"): o.split("=", 1)[1] for o in overrides if "=" in o}
    m = re.search(r"Could not override '([^']+)'", text) or re.search(r"Key '([^']+)' is not in struct", text)
    if m:
        key = m.group(1)
        return unknown_key_message(key, known_keys, values.get(key))
    m = re.search(r"Could not append to config. An item is already at '([^']+)'", text)
    if m:
        key = m.group(1)
        return f"'{key}' is already in the config, so '+{key}=' cannot add it; fix: {key}={values.get(key, 'VALUE')}"
    m = re.search(r"Could not find '([^'/]+)/([^']+)'", text)
    if m:
        group, name = m.groups()
        names = experiments if group == "experiment" else []
        guess = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
        hint = f"did you mean +{group}={guess[0]}?" if guess else (
            f"use one of {', '.join(names)}" if names else f"use a file in configs/{group}/")
        return f"unknown {group} '{name}'; fix: {hint}"
    m = re.search(r"Could not delete from config. The value of '([^']+)'", text)
    if m:
        return f"~{m.group(1)}= does not match the config's value; fix: ~{m.group(1)} without a value"
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    first = lines[0] if lines else exc.__class__.__name__
    return f"bad override ({first}); fix: key=value arguments, e.g. lr=1e-4 +experiment=sudoku_demo"
