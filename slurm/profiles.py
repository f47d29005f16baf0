"""Cluster profiles (slurm/clusters/*.yaml plus the user's own) and the check of a resource request.

A profile says what a cluster offers (partitions, GPU types, the CPUs-per-GPU rule, QoS, time limits,
modules, scratch, Service Unit rates), so that a bad request is refused here, in one line that names the
fix, before anything reaches sbatch.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

PACKAGE_CLUSTERS = Path(__file__).with_name("clusters")


class RequestError(ValueError):
    """Bad input from the user: the message is one line that names the problem and the fix."""


QosByKind = dict[str, tuple[str, ...]]  # account kind ("allowance", "condo", "*" for any) -> QoS, preferred first


@dataclass(frozen=True)
class GpuType:
    name: str
    per_node: int
    min_cpus_per_gpu: int = 1  # Savio refuses a job with fewer CPUs per GPU than this
    cores_per_node: int | None = None  # the node's cores: the most a job on one node can have
    qos: QosByKind = field(default_factory=dict)  # narrows the partition's QoS for this type (L40: lowprio)


@dataclass(frozen=True)
class Qos:
    name: str
    max_time_min: int | None = None
    max_nodes: int | None = None
    preemptible: bool = False
    su_factor: float = 1.0  # savio_lowprio costs no SUs


@dataclass(frozen=True)
class Partition:
    name: str
    max_time_min: int | None = None
    cores_per_node: int | None = None
    su_per_core_hour: float = 0.0
    per_node_scheduling: bool = False
    qos: QosByKind = field(default_factory=dict)
    condo_qos_pattern: str | None = None
    gpu_types: dict[str, GpuType] = field(default_factory=dict)
    default_gpu_type: str | None = None
    default: bool = False
    request_mem: bool = True  # per-core partitions give memory with the cores: --mem is not sent
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Cluster:
    name: str
    source: str
    description: str = ""
    slurm_cluster: str | None = None  # the ClusterName sacctmgr reports: associations are read only there
    account_required: bool = False
    account_hint: str = ""
    default_account: str | None = None
    account_kinds: dict[str, tuple[str, ...]] = field(default_factory=dict)  # kind -> account name prefixes
    scratch: str | None = None
    runs_dir: str = "runs"
    data_dir: str | None = None  # where a relative data_path lands (home quotas are small on clusters)
    lmod_init: tuple[str, ...] = ()
    module_use: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()
    build_modules: tuple[str, ...] = ()  # only for compiling flash-attn (envs/)
    qos: dict[str, Qos] = field(default_factory=dict)
    partitions: dict[str, Partition] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    def account_kind(self, account: str | None) -> str | None:
        for kind, prefixes in self.account_kinds.items():
            if account and any(account.startswith(p) for p in prefixes):
                return kind
        return None

    def default_partition(self, gpus: int = 0) -> Partition:
        """The partition used when the user names none: for GPU jobs the first whose default GPU type has
        enough GPUs per node (else the first GPU one), for CPU jobs the default one."""
        parts = list(self.partitions.values())
        if gpus:
            gpu_parts = [p for p in parts if p.gpu_types]
            if not gpu_parts:
                raise RequestError(
                    f"cluster '{self.name}' has no GPU partition; fix: gpus=0 or another cluster="
                )
            fits = [p for p in gpu_parts if p.gpu_types[p.default_gpu_type or ""].per_node >= gpus]
            return (fits or gpu_parts)[0]
        for p in parts:
            if p.default:
                return p
        return parts[0]


@dataclass(frozen=True)
class Request:
    """A resolved, checked request for one job."""

    cluster: str
    partition: str
    nodes: int = 1
    gpus: int = 0  # per node
    gpu_type: str | None = None
    cpus_per_task: int = 1
    tasks_per_node: int = 1
    time_min: int = 60
    mem: str | None = None
    account: str | None = None
    qos: str | None = None

    @property
    def cores(self) -> int:
        return self.nodes * self.tasks_per_node * self.cpus_per_task

    @property
    def gres(self) -> str | None:
        return f"gpu:{self.gpu_type}:{self.gpus}" if self.gpus else None


# --- time -------------------------------------------------------------------------------------------------

_TIME_RE = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_time(value: Any) -> int:
    """Slurm time formats (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S) or an int of minutes -> minutes (ceil)."""
    if isinstance(value, bool):
        raise RequestError(f"time={value!r} is not a time; fix: time=HH:MM:SS or D-HH:MM:SS")
    if isinstance(value, int):
        return value
    text = str(value).strip()
    m = _TIME_RE.match(text)
    if not m:
        raise RequestError(f"time={text!r} is not a Slurm time; fix: time=HH:MM:SS, D-HH:MM:SS or minutes")
    days, a, b, c = m.groups()
    a, b, c = int(a), (int(b) if b else None), (int(c) if c else None)
    if days is not None:
        hours, minutes, seconds = a, b or 0, c or 0
        total_s = ((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds
    elif c is not None:
        total_s = (a * 60 + b) * 60 + c
    elif b is not None:
        total_s = a * 60 + b
    else:
        total_s = a * 60
    return max(1, -(-total_s // 60))


def format_time(minutes: int) -> str:
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    return f"{days}-{hours:02d}:{mins:02d}:00" if days else f"{hours:02d}:{mins:02d}:00"


# --- loading ----------------------------------------------------------------------------------------------


def search_dirs() -> list[Path]:
    """Where profiles come from, lowest priority first: the package, the user's config, HRM_CLUSTERS_DIR."""
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    dirs = [PACKAGE_CLUSTERS, config_home / "hrm-savio" / "clusters"]
    dirs += [Path(p) for p in os.environ.get("HRM_CLUSTERS_DIR", "").split(os.pathsep) if p]
    return dirs


def _raw_profiles() -> dict[str, list[tuple[dict[str, Any], str]]]:
    """Every profile file by name, lowest priority first: a user's savio.yaml layers over the packaged one."""
    found: dict[str, list[tuple[dict[str, Any], str]]] = {}
    for d in search_dirs():
        if not d.is_dir():
            continue
        for path in sorted(d.glob("*.yaml")):
            try:
                data = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as e:
                raise RequestError(
                    f"cluster profile {path} is not valid YAML ({e.__class__.__name__}); fix the file"
                ) from None
            if not isinstance(data, dict):
                raise RequestError(f"cluster profile {path} must be a mapping; fix the file")
            found.setdefault(str(data.get("name") or path.stem), []).append((data, str(path)))
    return found


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def known_clusters() -> list[str]:
    return sorted(_raw_profiles())


def _flatten(raw: dict[str, list[tuple[dict[str, Any], str]]], name: str, level: int,
             seen: set[tuple[str, int]]) -> dict[str, Any]:
    """The profile `name` as its file at `level` sees it: `extends: X` merges it over X, and a file that
    extends its own name merges over the same-named file below it (~/.config/.../savio.yaml over savio)."""
    data, source = raw[name][level]
    parent = data.get("extends")
    if not parent:
        return data
    parent = str(parent)
    parent_level = level - 1 if parent == name else len(raw.get(parent, [])) - 1
    if parent_level < 0 or (parent, parent_level) in seen:
        raise RequestError(f"cluster profile {source}: cannot extend '{parent}'; fix its 'extends:' key")
    seen.add((parent, parent_level))
    child = {k: v for k, v in data.items() if k != "extends"}
    return _merge(_flatten(raw, parent, parent_level, seen), child)


def load_cluster(name: str) -> Cluster:
    raw = _raw_profiles()
    if name not in raw:
        raise RequestError(
            f"unknown cluster '{name}' (known: {', '.join(sorted(raw))}); "
            f"fix: cluster=NAME, or add {search_dirs()[1]}/{name}.yaml"
        )
    top = len(raw[name]) - 1
    return _build(name, _flatten(raw, name, top, {(name, top)}), raw[name][top][1])


def _opt_time(value: Any) -> int | None:
    return None if value is None else parse_time(value)


def _qos_by_kind(value: Any) -> QosByKind:
    """`{allowance: [a, b], condo: [c]}`, or a plain list that holds for every account kind."""
    if isinstance(value, dict):
        return {str(k): tuple(v or ()) for k, v in value.items()}
    return {"*": tuple(value)} if value else {}


def _build(name: str, d: dict[str, Any], source: str) -> Cluster:
    qos = {
        q: Qos(
            q,
            _opt_time((v or {}).get("max_time")),
            (v or {}).get("max_nodes"),
            bool((v or {}).get("preemptible")),
            float((v or {}).get("su_factor", 1.0)),
        )
        for q, v in (d.get("qos") or {}).items()
    }
    parts: dict[str, Partition] = {}
    for p, v in (d.get("partitions") or {}).items():
        v = v or {}
        gpus = {
            t: GpuType(
                t,
                int(g["per_node"]),
                int(g.get("min_cpus_per_gpu") or g.get("cpus_per_gpu") or 1),
                g.get("cores_per_node"),
                _qos_by_kind(g.get("qos")),
            )
            for t, g in (v.get("gpu_types") or {}).items()
        }
        parts[p] = Partition(
            name=p,
            max_time_min=_opt_time(v.get("max_time")),
            cores_per_node=v.get("cores_per_node"),
            su_per_core_hour=float(v.get("su_per_core_hour") or 0.0),
            per_node_scheduling=bool(v.get("per_node_scheduling")),
            qos=_qos_by_kind(v.get("qos") if "qos" in v else list(qos)),
            condo_qos_pattern=v.get("condo_qos_pattern"),
            gpu_types=gpus,
            default_gpu_type=v.get("default_gpu_type") or (next(iter(gpus)) if gpus else None),
            default=bool(v.get("default")),
            request_mem=bool(v.get("request_mem", True)),
            env={str(k): str(x) for k, x in (v.get("env") or {}).items()},
        )
    if not parts:
        raise RequestError(
            f"cluster profile {source} defines no partitions; fix: add a 'partitions:' mapping"
        )
    kinds = {str(k): tuple(v or ()) for k, v in (d.get("account_kinds") or {}).items()}
    return Cluster(
        name=name,
        source=source,
        description=d.get("description", ""),
        slurm_cluster=d.get("slurm_cluster"),
        account_required=bool(d.get("account_required")),
        account_hint=d.get("account_hint", ""),
        default_account=d.get("default_account"),
        account_kinds=kinds,
        scratch=d.get("scratch"),
        runs_dir=d.get("runs_dir") or "runs",
        data_dir=d.get("data_dir"),
        lmod_init=tuple(d.get("lmod_init") or ()),
        module_use=tuple(d.get("module_use") or ()),
        modules=tuple(d.get("modules") or ()),
        build_modules=tuple(d.get("build_modules") or ()),
        qos=qos,
        partitions=parts,
        env={str(k): str(v) for k, v in (d.get("env") or {}).items()},
    )


# --- the check --------------------------------------------------------------------------------------------


def resolve(
    cluster: Cluster,
    *,
    partition: str | None = None,
    gpus: int = 0,
    gpu_type: str | None = None,
    nodes: int = 1,
    cpus_per_gpu: int | None = None,
    cpus: int | None = None,
    tasks_per_node: int | None = None,
    time: Any = "01:00:00",
    mem: str | None = None,
    account: str | None = None,
) -> Request:
    """Check the shape of a request against the profile and fill in defaults (the QoS is chosen later, per
    stage and account: slurm/qos.py). Raises RequestError with one line."""
    gpus, nodes = int(gpus or 0), int(nodes or 1)
    if gpus < 0 or nodes < 1:
        raise RequestError(f"gpus={gpus} nodes={nodes}: need gpus >= 0 and nodes >= 1")
    part = cluster.partitions.get(partition) if partition else cluster.default_partition(gpus)
    if part is None:
        raise RequestError(
            f"unknown partition '{partition}' on cluster '{cluster.name}' "
            f"(known: {', '.join(cluster.partitions)}); fix: partition=NAME"
        )
    time_min = parse_time(time)
    cpus_per_task = int(cpus or 1)
    ntasks = int(tasks_per_node or 1)
    if gpus:
        if not part.gpu_types:
            gpu_parts = [p.name for p in cluster.partitions.values() if p.gpu_types] or ["NAME"]
            msg = f"partition '{part.name}' has no GPUs; fix: partition={gpu_parts[0]} or gpus=0"
            raise RequestError(msg)
        gt = gpu_type_of(part, gpu_type)
        if gpus > gt.per_node:
            raise RequestError(
                f"gpus={gpus} per node, but a {part.name} {gt.name} node has {gt.per_node}; "
                f"fix: gpus={gt.per_node} nodes={-(-gpus // gt.per_node) * nodes}"
            )
        cpg = int(cpus_per_gpu or gt.min_cpus_per_gpu)
        if cpg < gt.min_cpus_per_gpu:
            raise RequestError(
                f"cpus_per_gpu={cpg} is under the {part.name} {gt.name} minimum of {gt.min_cpus_per_gpu} "
                f"CPUs per GPU (Savio refuses the job); fix: cpus_per_gpu={gt.min_cpus_per_gpu}"
            )
        if gt.cores_per_node and cpg * gpus > gt.cores_per_node:
            most = gt.cores_per_node // gpus
            raise RequestError(
                f"cpus_per_gpu={cpg} x gpus={gpus} is {cpg * gpus} CPUs, but a {part.name} {gt.name} node "
                f"has {gt.cores_per_node}; fix: cpus_per_gpu={most}"
            )
        if cpg * gpus % ntasks:
            raise RequestError(
                f"{cpg * gpus} CPUs do not split over {ntasks} tasks per node; fix: cpus_per_gpu={gt.min_cpus_per_gpu}"
            )
        gpu_type = gt.name
        # one task per node (torchrun) gets all the node's cores, or one task per GPU gets its share
        cpus_per_task = cpg * gpus // ntasks
    else:
        if gpu_type:
            raise RequestError(f"gpu_type={gpu_type} but gpus=0; fix: gpus=N, or drop gpu_type")
        if part.cores_per_node and cpus_per_task * ntasks > part.cores_per_node:
            raise RequestError(
                f"cpus={cpus_per_task * ntasks} per node, but a {part.name} node has {part.cores_per_node}; "
                f"fix: cpus={part.cores_per_node}"
            )
    if part.max_time_min is not None and time_min > part.max_time_min:
        raise RequestError(
            f"time={format_time(time_min)} is over the {part.name} limit of "
            f"{format_time(part.max_time_min)}; "
            f"fix: time={format_time(part.max_time_min)}"
        )
    account = account or cluster.default_account
    if cluster.account_required and not account:
        raise RequestError(
            f"cluster '{cluster.name}' needs an account; fix: {cluster.account_hint or 'account=NAME'}"
        )
    return Request(
        cluster=cluster.name,
        partition=part.name,
        nodes=nodes,
        gpus=gpus,
        gpu_type=gpu_type,
        cpus_per_task=cpus_per_task,
        tasks_per_node=ntasks,
        time_min=time_min,
        mem=mem if part.request_mem else None,
        account=account,
    )


def gpu_type_of(part: Partition, name: str | None) -> GpuType:
    gname = name or part.default_gpu_type
    gt = next((g for g in part.gpu_types.values() if g.name.lower() == str(gname).lower()), None)
    if gt is None:
        raise RequestError(
            f"unknown GPU type '{gname}' on partition '{part.name}' "
            f"(known: {', '.join(part.gpu_types)}); fix: gpu_type=NAME"
        )
    return gt


def service_units(cluster: Cluster, req: Request, minutes: int | None = None) -> float:
    """Upper bound of the SUs a job costs: cores x hours x the partition's rate (whole nodes if per-node),
    times the QoS's factor (0 for savio_lowprio)."""
    part = cluster.partitions[req.partition]
    cores = req.cores
    if part.per_node_scheduling and part.cores_per_node:
        cores = req.nodes * part.cores_per_node
    q = cluster.qos.get(req.qos or "")
    factor = q.su_factor if q else 1.0
    return cores * (minutes if minutes is not None else req.time_min) / 60.0 * part.su_per_core_hour * factor


def with_time(req: Request, minutes: int) -> Request:
    return replace(req, time_min=minutes)
