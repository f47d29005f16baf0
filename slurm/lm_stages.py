"""HRM-Text experiments (configs/lm/experiment/*.yaml) as Slurm pipelines: data -> train -> eval -> collect.

The same checks, QoS choice, requeue and records as the puzzle pipeline (slurm/pipeline.py calls `plan`
here for an LM experiment); what differs is the commands (`hrm-lm data|train|eval`), the dataset test
(metadata.json + tokens.npy), the pre-flight all-reduce before a multi-node train (slurm/allreduce_check.py,
run inside the train job on its own nodes), and the preview's notes: the expected wall time and SUs from
the analytic FLOPs (hrm/lm/cost.py) at an assumed MFU, and the memory per GPU against the card's.
No torch here: configs and model sizes come from hrm.lm.config, which reads hrm/lm/model.py's SIZES literal.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from hrm.lm import config as cfg_lm
from slurm import profiles, qos
from slurm.jobs import Stage, select_stages
from slurm.profiles import RequestError

ASSUMED_MFU = 0.4  # the planning figure (H100 with FA3); A5000 without FA3 will do less: see guides/HRM_TEXT.md
PREFLIGHT = [sys.executable, "-m", "slurm.allreduce_check", "--mib", "64", "--timeout", "180"]


def is_lm_experiment(experiment: str | None) -> bool:
    return bool(experiment) and experiment in cfg_lm.experiments()


def compose_lm(experiment: str, overrides: list[str]) -> dict[str, Any]:
    """configs/lm/cfg_lm.yaml + the experiment, composed and checked as `hrm-lm train` does, as a plain dict."""
    from omegaconf import OmegaConf

    try:
        cfg = cfg_lm.compose([f"+experiment={experiment}", *overrides])
        cfg_lm.check(cfg)
    except ValueError as e:
        raise RequestError(str(e)) from None
    return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]


def data_metadata(data_path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((data_path / "metadata.json").read_text())
    except (OSError, ValueError):
        return None


def model_shape(cfg: dict[str, Any], meta: dict[str, Any] | None) -> dict[str, Any] | None:
    """The arch the run trains: SIZES[arch.size] under the experiment's own arch keys; the vocabulary from
    the data's tokenizer (rounded up to 256), else the size's or 65,536 (the public tokenizer's)."""
    arch = dict(cfg.get("arch") or {})
    size = arch.get("size")
    try:
        base = dict(cfg_lm.model_sizes().get(size, {})) if size else {}
    except (OSError, RuntimeError, ValueError, SyntaxError):
        base = {}
    shape = {**base, **{k: v for k, v in arch.items() if k != "size" and v is not None}}
    vocab = None
    if meta:
        info = meta.get("tokenizer_info") or {}
        vocab = meta.get("vocab_size") or info.get("vocab_size")
    if vocab:
        shape["vocab_size"] = -(-int(vocab) // 256) * 256
    shape.setdefault("vocab_size", 65536)
    need = ("hidden_size", "num_heads", "n_layers")
    return shape if all(k in shape for k in need) else None


def train_tokens(cfg: dict[str, Any], meta: dict[str, Any] | None, size: str | None) -> tuple[float, str] | None:
    """Tokens the run will train on, and where the figure comes from."""
    epochs = cfg.get("epochs")
    if meta and meta.get("total_length") and epochs:
        return float(epochs) * float(meta["total_length"]), f"{epochs} epochs x the data's tokens per epoch"
    if cfg.get("max_tokens"):
        return float(cfg["max_tokens"]), "max_tokens"
    from hrm.lm import cost

    if size in cost.PUBLISHED_RUNS:
        return cost.PUBLISHED_TOKENS, "the public run's 60B tokens (no data built yet)"
    return None


def notes(cluster: profiles.Cluster, cfg: dict[str, Any], train: Stage, data_path: Path,
          max_requeues: int) -> list[str]:
    """The preview's expected wall time, SUs and memory per GPU for the train stage (planning figures)."""
    from hrm.lm import cost

    req = train.request
    meta = data_metadata(data_path)
    shape = model_shape(cfg, meta)
    size = (cfg.get("arch") or {}).get("size")
    out: list[str] = []
    if shape is None:
        return [f"expected wall time: unknown (arch.size={size!r} is not in hrm/lm/model.py SIZES)"]
    params = cost.num_params(shape)
    world = max(1, req.gpus) * req.nodes
    out.append(f"model: {size or 'custom'} {params / 1e6:,.1f}M parameters "
               f"({cost.flops_per_token(shape)['total'] / 1e9:.2f} GFLOP per trained token)")
    if not req.gpus:
        out.append("expected wall time: not estimated on CPU (a demo: see README)")
        return out
    gpu = req.gpu_type or ""
    toks = train_tokens(cfg, meta, size)
    if gpu in cost.PEAK_TFLOPS and toks:
        hours = cost.hours_for(toks[0], shape, world, gpu, ASSUMED_MFU)
        minutes = int(math.ceil(hours * 60))
        jobs = max(1, math.ceil(minutes / max(1, req.time_min)))
        su = profiles.service_units(cluster, req, minutes=minutes)
        out.append(f"expected wall time: {hours:,.1f} h for {toks[0] / 1e9:,.2f}B tokens ({toks[1]}) on "
                   f"{world} x {gpu} at {ASSUMED_MFU:.0%} MFU = {su:,.0f} SU; that is {jobs} train job(s) of "
                   f"time={profiles.format_time(req.time_min)}"
                   + (f" (over max_requeues={max_requeues}: raise max_requeues= or time=)"
                      if jobs > max_requeues + 1 else ""))
    elif toks is None:
        out.append("expected wall time: unknown until the data is built (metadata.json total_length)")
    gbs = cfg.get("global_batch_size")
    if gbs and gpu in cost.GPU_MEMORY_GIB:
        per_gpu = int(gbs) // world
        est = cost.memory_estimate(shape, per_gpu, world)
        card = cost.GPU_MEMORY_GIB[gpu]
        verdict = "fits" if est.fits(card) else "does NOT fit"
        line = (f"memory per GPU: ~{est.total:.1f} GiB estimated for {per_gpu:,} tokens per GPU on a {card:g} GiB "
                f"{gpu}: {verdict}")
        if not est.fits(card):
            most = cost.max_tokens_per_gpu(shape, world, card)
            line += (f"; at most ~{most:,} tokens per GPU (global_batch_size={most * world}) or more GPUs; "
                     f"check with hrm-doctor memory +experiment=...")
        out.append(line)
    return out


# --- the plan ---------------------------------------------------------------------------------------------


def dataset_ready(data_path: Path) -> tuple[bool, str]:
    if (data_path / "metadata.json").is_file() and (data_path / "tokens.npy").is_file():
        return True, f"token shards at {data_path} exist"
    return False, f"no token shards at {data_path}"


def data_argv(recipe: dict[str, Any], data_path: Path) -> list[str]:
    """`data: {source: ..., epochs: 4, ...}` -> hrm-lm data --out PATH --source ... --epochs 4 ..."""
    if not recipe:
        raise RequestError(f"no token shards at {data_path} and the experiment has no 'data:' recipe; fix: "
                           f"hrm-lm data --source PATH --out {data_path} first")
    argv = ["hrm-lm", "data", "--out", str(data_path)]
    for k, v in recipe.items():
        flag = "--" + str(k).replace("_", "-")
        if v is True:
            argv.append(flag)
        elif v is not None and v is not False:
            argv += [flag, str(v)]
    return argv


def eval_argv(cfg: dict[str, Any], run_dir: Path, data_path: Path) -> list[str] | None:
    """hrm-lm eval RUN --tasks ...; None when the experiment lists no tasks (eval: {tasks: []}). A relative
    eval.include_path is a folder inside data_path (the demo's held-out task)."""
    ev = dict(cfg.get("eval") or {})
    tasks = ev.get("tasks", ["public"])
    if not tasks:
        return None
    argv = ["hrm-lm", "eval", str(run_dir), "--tasks", ",".join(tasks) if isinstance(tasks, list) else str(tasks)]
    if ev.get("limit") is not None:
        argv += ["--limit", str(ev["limit"])]
    if ev.get("include_path"):
        tasks_dir = Path(os.path.expandvars(os.path.expanduser(str(ev["include_path"]))))
        argv += ["--include-path", str(Path(data_path) / tasks_dir)]
    return argv


def plan(args: list[str], *, run_id: str | None = None, stage_names: list[str] | None = None):
    """pipeline.plan for an LM experiment (same arguments, same Plan)."""
    from slurm import pipeline

    experiment, opt, overrides = pipeline.split_args(args)
    cluster = profiles.load_cluster(opt.get("cluster") or pipeline.default_cluster())
    cfg = compose_lm(str(experiment), overrides)
    res = dict(cfg.get("resources") or {})

    def pick(key: str, default: Any = None) -> Any:
        return opt.get(key, res.get(key, default))

    gpus, nodes = pipeline.whole(pick("gpus", 0), "gpus", 0), pipeline.whole(pick("nodes", 1), "nodes", 1)
    launcher = opt.get("launcher") or ("single" if gpus * nodes <= 1 else "torchrun")
    if launcher not in ("single", "torchrun", "srun"):
        raise RequestError(f"launcher={launcher} is unknown; fix: launcher=torchrun or launcher=srun")
    if launcher == "single" and gpus * nodes > 1:
        raise RequestError(f"launcher=single cannot use {gpus * nodes} GPUs; fix: launcher=torchrun")
    if launcher == "single" and nodes > 1:
        raise RequestError(f"launcher=single cannot use {nodes} nodes; fix: launcher=torchrun")
    common = {"account": opt.get("account")}
    train_req = profiles.resolve(
        cluster, partition=pick("partition"), gpus=gpus, gpu_type=pick("gpu_type"), nodes=nodes,
        cpus_per_gpu=pick("cpus_per_gpu"), cpus=pick("cpus", 2), time=pick("time", "01:00:00"), mem=pick("mem"),
        tasks_per_node=gpus if launcher == "srun" else 1, **common,
    )
    ranks = max(1, gpus * nodes)
    if cfg.get("global_batch_size") and int(cfg["global_batch_size"]) % ranks:
        gbs = int(cfg["global_batch_size"])
        raise RequestError(f"global_batch_size={gbs} tokens do not split over the {ranks} ranks of gpus={gpus} "
                           f"nodes={nodes}; fix: global_batch_size={gbs // ranks * ranks or ranks}, or other gpus=")
    cpu_part = cluster.default_partition(0).name
    eval_req = profiles.resolve(
        cluster, partition=train_req.partition if gpus else cpu_part, gpus=1 if gpus else 0,
        gpu_type=train_req.gpu_type, cpus=train_req.cpus_per_task if not gpus else None,
        time=pick("eval_time", "01:00:00"), **common,
    )
    data_req = profiles.resolve(cluster, partition=cpu_part, cpus=int(opt.get("data_cpus", pick("data_cpus", 2))),
                                time=pick("data_time", "01:00:00"), **common)
    collect_req = profiles.resolve(cluster, partition=cpu_part, cpus=1, time="00:15:00", **common)

    run_id = run_id or f"{experiment}-{time.strftime('%Y%m%d-%H%M%S')}"
    runs_dir = pipeline._expand(opt.get("runs_dir") or cluster.runs_dir)
    run_dir = pipeline._expand(str(cfg["checkpoint_path"])) if cfg.get("checkpoint_path") else runs_dir / run_id
    data_path = pipeline.resolve_data_path(str(cfg.get("data_path") or "data/lm"), cluster)
    venv = opt.get("venv") or (sys.prefix if sys.prefix != sys.base_prefix else None)
    max_requeues = int(opt.get("max_requeues", pipeline.DEFAULT_MAX_REQUEUES))
    workdir = str(Path.cwd())
    train_overrides = [a for a in overrides
                       if a.split("=", 1)[0].lstrip("+~") not in ("data_path", "checkpoint_path")]
    train_argv = ["hrm-lm", "train", f"+experiment={experiment}", *train_overrides, f"data_path={data_path}",
                  f"checkpoint_path={run_dir}"]

    stages: list[Stage] = []
    skipped: dict[str, str] = {}
    ready, why = dataset_ready(data_path)
    if ready:
        skipped["data"] = why
    else:
        stages.append(Stage("data", data_argv(dict(cfg.get("data") or {}), data_path), data_req, workdir=workdir))
    train = Stage("train", train_argv, train_req, launcher=launcher, requeue=True, max_requeues=max_requeues,
                  checkpoint_path=str(run_dir), workdir=workdir,
                  preflight=list(PREFLIGHT) if nodes > 1 else [])
    stages.append(train)
    ev = eval_argv(cfg, run_dir, data_path)
    if ev is None:
        skipped["eval"] = "the experiment lists no eval tasks (eval.tasks=[...] to add some)"
    else:
        stages.append(Stage("eval", ev, eval_req, checkpoint_path=str(run_dir), workdir=workdir))
    stages += [
        Stage("collect", [sys.executable, "-m", "slurm.cli", "collect", str(run_dir), "--out",
                          str(run_dir / "results")], collect_req, workdir=workdir),
    ]
    stages = select_stages(stages, stage_names, data_path)
    for s in stages:
        s.request = qos.apply(cluster, s.request, s.name, pipeline.requested_qos(opt, s.name))
        s.preemptible = qos.preemptible(cluster, s.request)
    p = pipeline.Plan(run_id, cluster, experiment, run_dir, data_path, stages, skipped, venv,
                      pipeline._resolve_wandb_mode(str(cfg.get("wandb_mode") or "auto")))
    train_now = next((s for s in stages if s.name == "train"), None)
    if train_now is not None:
        p.notes = notes(cluster, cfg, train_now, data_path, max_requeues)
    return p
