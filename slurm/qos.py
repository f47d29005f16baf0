"""Which QoS each job is sent with, and the refusal of one the account does not have.

On Savio the QoS a job may use depends on the account kind (FCA `fc_*` or condo `co_*`), the partition and
the GPU type: an FCA uses savio_normal on savio3_htc but a5k_gpu4_normal on savio4_gpu and a40_gpu3_normal
for an A40, a condo savio_lowprio or its own QoS. So the QoS is chosen per stage. Where `sacctmgr` answers
for the profile's cluster, the account's real associations decide; elsewhere (a laptop preview) the profile.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, replace
from functools import cache

from slurm.profiles import Cluster, Partition, Request, RequestError, format_time, gpu_type_of


@dataclass(frozen=True)
class Association:
    partition: str  # "" = the account-wide association (every partition without a row of its own)
    qos: tuple[str, ...]
    default_qos: str | None


def _user() -> str:
    return os.environ.get("USER") or getpass.getuser()


def _sacctmgr(*args: str) -> list[list[str]] | None:
    try:
        r = subprocess.run(["sacctmgr", "-nP", *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0:
        return None
    return [line.split("|") for line in r.stdout.splitlines() if line.strip()]


@cache
def user_associations(slurm_cluster: str, user: str) -> tuple[tuple[str, Association], ...] | None:
    """(account, association) of `user` on `slurm_cluster`, or None where sacctmgr cannot tell (no Slurm, no
    accounting, or another cluster: a Savio preview on a laptop)."""
    if not shutil.which("sacctmgr"):
        return None
    clusters = _sacctmgr("list", "cluster", "format=cluster")
    if clusters is None or [slurm_cluster] not in clusters:
        return None
    rows = _sacctmgr(
        "show", "assoc", "where", f"user={user}", f"cluster={slurm_cluster}", "format=account,partition,qos,defaultqos"
    )
    if rows is None:
        return None
    out = []
    for row in rows:
        account, partition, qos, default = (row + ["", "", "", ""])[:4]
        out.append((account, Association(partition, tuple(q for q in qos.split(",") if q), default or None)))
    return tuple(out)


def associations(cluster: Cluster, account: str) -> list[Association] | None:
    """The account's associations for this user, None when unknown; refuses an account the user lacks."""
    if not cluster.slurm_cluster:
        return None
    found = user_associations(cluster.slurm_cluster, _user())
    if not found:  # no answer, or a user with no association at all (sbatch will say so)
        return None
    mine = [a for acc, a in found if acc == account]
    if not mine:
        accounts = sorted({acc for acc, _ in found}) or ["(none)"]
        raise RequestError(
            f"account '{account}' has no association for user {_user()} on {cluster.slurm_cluster}; "
            f"fix: account= one of: {', '.join(accounts)}"
        )
    return mine


def allowed_by(assocs: list[Association], partition: str) -> tuple[tuple[str, ...], str | None]:
    """The QoS (and the default) an account has on a partition: its row there, else the account-wide one."""
    rows = [a for a in assocs if a.partition == partition] or [a for a in assocs if not a.partition]
    qos: list[str] = []
    for a in rows:
        qos += [q for q in a.qos if q not in qos]
    return tuple(qos), next((a.default_qos for a in rows if a.default_qos), None)


def preferred(cluster: Cluster, part: Partition, gpu_type: str | None, kind: str | None) -> tuple[str, ...]:
    """The profile's QoS for this account kind on this partition and GPU type, the preferred first."""
    by_kind = part.qos
    if gpu_type:
        gt = gpu_type_of(part, gpu_type)
        by_kind = {**by_kind, **gt.qos} if gt.qos else by_kind
    if kind is not None:
        return by_kind.get(kind) or by_kind.get("*") or ()
    out: list[str] = []
    for names in by_kind.values():
        out += [q for q in names if q not in out]
    return tuple(out)


def _is_condo_qos(part: Partition, q: str) -> bool:
    return bool(part.condo_qos_pattern and re.match(part.condo_qos_pattern, q))


def choose(cluster: Cluster, req: Request, stage: str, requested: str | None) -> str | None:
    """The QoS for one stage: the one asked for (checked), else the best the account has there."""
    part = cluster.partitions[req.partition]
    kind = cluster.account_kind(req.account)
    prefs = preferred(cluster, part, req.gpu_type, kind)
    assocs = associations(cluster, req.account) if req.account else None
    where = f"{req.partition}" + (f" {req.gpu_type}" if req.gpu_type else "")
    if assocs is not None:
        allowed, default = allowed_by(assocs, req.partition)
        if not allowed and default is None:
            raise RequestError(
                f"account '{req.account}' cannot submit to {req.partition} (no association there); "
                f"fix: another partition= or account="
            )
        if requested:
            if requested not in allowed:
                fit = [q for q in prefs if q in allowed] or list(allowed)
                raise RequestError(
                    f"QoS '{requested}' for the {stage} job is not one account '{req.account}' has on {where} "
                    f"(it has: {', '.join(allowed) or 'none'}); fix: qos.{stage}={fit[0] if fit else 'NAME'}"
                )
            return requested
        usable = [q for q in prefs if q in allowed]
        condo = [q for q in allowed if _is_condo_qos(part, q)]
        firm = [q for q in usable if not _preemptible(cluster, q)]
        for pick in (firm, condo, usable):
            if pick:
                return pick[0]
        raise RequestError(
            f"account '{req.account}' has no QoS for {where} (it has: {', '.join(allowed) or 'none'}; this GPU "
            f"type needs one of: {', '.join(prefs) or 'none'}); fix: another gpu_type=, partition= or account="
        )
    if requested:
        ok = requested in prefs or (kind != "allowance" and _is_condo_qos(part, requested))
        if not ok:
            pattern = f" or a condo QoS like {part.condo_qos_pattern}" if part.condo_qos_pattern else ""
            raise RequestError(
                f"QoS '{requested}' for the {stage} job is not offered to {kind or 'this'} accounts on {where} "
                f"(offered: {', '.join(prefs) or 'none'}{pattern}); fix: qos.{stage}={prefs[0] if prefs else 'NAME'}"
            )
        return requested
    return prefs[0] if kind is not None and prefs else None  # unknown kind: the association's default


def _preemptible(cluster: Cluster, q: str) -> bool:
    return bool(cluster.qos.get(q) and cluster.qos[q].preemptible)


def preemptible(cluster: Cluster, req: Request) -> bool:
    return bool(req.qos) and _preemptible(cluster, req.qos or "")


def apply(cluster: Cluster, req: Request, stage: str, requested: str | None) -> Request:
    """`req` with its QoS chosen, checked against the QoS's own limits."""
    q = choose(cluster, req, stage, requested)
    limits = cluster.qos.get(q or "")
    if limits and limits.max_time_min is not None and req.time_min > limits.max_time_min:
        key = {"data": "data_time", "eval": "eval_time"}.get(stage, "time")
        raise RequestError(
            f"{key}={format_time(req.time_min)} for the {stage} job is over the {q} limit of "
            f"{format_time(limits.max_time_min)}; fix: {key}={format_time(limits.max_time_min)} or another qos="
        )
    if limits and limits.max_nodes is not None and req.nodes > limits.max_nodes:
        raise RequestError(
            f"nodes={req.nodes} is over the {q} limit of {limits.max_nodes}; fix: nodes={limits.max_nodes}"
        )
    return replace(req, qos=q)
