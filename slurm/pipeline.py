"""An experiment -> the pipeline data -> train -> eval -> collect, as Slurm jobs chained with afterok.

`plan()` does all the checking and builds every stage (nothing submitted), so `preview` and `submit` show
and send exactly the same thing. A submitted pipeline is recorded as JSON in the run directory and in a
small registry, which `status`, `logs`, `cancel` and `collect` read.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from slurm import profiles, qos
from slurm.jobs import STAGE_NAMES, Stage, StageRun, select_stages, submitit_parameters
from slurm.profiles import Cluster, RequestError

# Keys of `hrm-slurm submit/preview` that are about Slurm; every other key=value goes to training.
SLURM_KEYS = {
    "cluster",
    "partition",
    "gpus",
    "gpu_type",
    "nodes",
    "cpus_per_gpu",
    "cpus",
    "time",
    "mem",
    "account",
    "qos",
    "launcher",
    "max_requeues",
    "venv",
    "runs_dir",
    "data_time",
    "eval_time",
    "data_cpus",
}
DEFAULT_MAX_REQUEUES = 5


@dataclass
class Plan:
    """Everything `submit` would send, already checked."""

    id: str
    cluster: Cluster
    experiment: str | None
    run_dir: Path
    data_path: Path
    stages: list[Stage]
    skipped: dict[str, str] = field(default_factory=dict)  # stage -> why it is not submitted
    venv: str | None = None
    wandb_mode: str | None = None
    notes: list[str] = field(default_factory=list)  # printed by preview (HRM-Text: expected time, memory)

    @property
    def slurm_dir(self) -> Path:
        return self.run_dir / "slurm"

    def parameters(self, stage: Stage, dependency: str | None = None) -> dict[str, Any]:
        return submitit_parameters(self.cluster, stage, self.venv, self.wandb_mode, dependency)

    def service_units(self) -> dict[str, float]:
        return {s.name: profiles.service_units(self.cluster, s.request) for s in self.stages}


# --- arguments --------------------------------------------------------------------------------------------


def split_args(args: list[str]) -> tuple[str | None, dict[str, str], list[str]]:
    """key=value arguments -> (experiment, Slurm options, training overrides). `qos.STAGE=` is a Slurm key."""
    experiment, options, overrides = None, {}, []
    for a in args:
        if "=" not in a:
            raise RequestError(f"argument '{a}' is not key=value; fix: e.g. +experiment=sudoku_demo gpus=1")
        key, value = a.split("=", 1)
        bare = key.lstrip("+~")
        if bare == "experiment":
            experiment = value
        elif key.startswith("qos."):
            if key[4:] not in STAGE_NAMES:
                raise RequestError(
                    f"{key}: no stage '{key[4:]}'; fix: qos.STAGE= with STAGE one of {', '.join(STAGE_NAMES)}"
                )
            options[key] = value
        elif bare in SLURM_KEYS and not key.startswith(("+", "~")):
            options[bare] = value
        else:
            overrides.append(a)
    return experiment, options, overrides


def default_cluster() -> str:
    """HRM_CLUSTER, else savio where Savio's scratch exists, else the local test cluster."""
    if os.environ.get("HRM_CLUSTER"):
        return os.environ["HRM_CLUSTER"]
    return "savio" if Path("/global/scratch/users").is_dir() else "local"


def resolve_data_path(data_path: str, cluster: Cluster) -> Path:
    """A relative data_path lands in the cluster's data_dir (Savio: scratch, not the small home quota)."""
    raw = os.path.expanduser(data_path)
    if cluster.data_dir and not os.path.isabs(raw):
        raw = os.path.join(cluster.data_dir, raw)
    return _expand(raw)


def _expand(path: str) -> Path:
    user = os.environ.get("USER") or getpass.getuser()
    return Path(os.path.expandvars(os.path.expanduser(path.replace("$USER", user)))).absolute()


def _resolve_wandb_mode(mode: str | None) -> str:
    """auto -> online when a key is configured (environment or ~/.netrc), else offline. The key stays put."""
    mode = (mode or "auto").lower()
    if mode != "auto":
        return mode
    netrc = Path.home() / ".netrc"
    has_key = bool(os.environ.get("WANDB_API_KEY")) or (
        netrc.is_file() and "api.wandb.ai" in netrc.read_text()
    )
    return "online" if has_key else "offline"


def dataset_ready(data_path: Path) -> tuple[bool, str]:
    """Whether the dataset exists and checks out (`hrm-data check`, else dataset.json in train/ and test/)."""
    if not all((data_path / split / "dataset.json").is_file() for split in ("train", "test")):
        return False, f"no dataset at {data_path}"
    exe = shutil.which("hrm-data") or str(Path(sys.executable).with_name("hrm-data"))
    if Path(exe).exists():
        r = subprocess.run([exe, "check", str(data_path)], capture_output=True, text=True)
        if r.returncode == 0:
            return True, f"dataset at {data_path} checks out"
        if "invalid choice" not in r.stderr:  # an hrm-data without `check`: the files are the check
            return (
                False,
                f"dataset at {data_path} does not check out: {(r.stderr or r.stdout).strip()[-200:]}",
            )
    return True, f"dataset at {data_path} exists"


def build_argv(build: dict[str, Any], data_path: Path) -> list[str]:
    """`build: {kind, args}` -> hrm-data build KIND --output-dir PATH --key value ..."""
    if not build or not build.get("kind"):
        raise RequestError(
            f"no dataset at {data_path} and the experiment has no 'build:' recipe; fix: build it first"
        )
    argv = ["hrm-data", "build", str(build["kind"]), "--output-dir", str(data_path)]
    for k, v in (build.get("args") or {}).items():
        flag = "--" + str(k).replace("_", "-")
        if v is True:
            argv.append(flag)
        elif v is not None and v is not False:
            argv += [flag, str(v)]
    return argv


# --- the plan ---------------------------------------------------------------------------------------------


def whole(value: Any, key: str, low: int) -> int:
    """A Slurm count given on the command line or in resources:, as an int >= low; RequestError (one line)."""
    text = str(value).strip()
    if isinstance(value, bool) or not (text.isdigit() or (text.startswith("-") and text[1:].isdigit())) \
            or int(text) < low:
        raise RequestError(f"{key}={value} must be a whole number >= {low}; fix: e.g. {key}={max(low, 1)}")
    return int(text)


def checked_config(experiment: str | None, overrides: list[str]) -> dict[str, Any]:
    """The experiment's training config for these overrides, checked by the trainer's own typed schema and rules
    (hrm.schema, hrm.config: torch-free), so a bad value is refused here, not in the train job."""
    from omegaconf import OmegaConf

    from hrm.config import known_experiments, validate_config
    from hrm.schema import hydra_problem, train_keys
    from slurm.experiment import compose

    try:
        cfg = compose(experiment, overrides)
    except RequestError as e:
        if not str(e).startswith("bad training override"):
            raise
        keys = sorted({*train_keys(), *SLURM_KEYS})
        raise RequestError(hydra_problem(e, overrides, keys, known_experiments())) from None
    try:
        validate_config(OmegaConf.create(cfg), 1)
    except ValueError as e:
        raise RequestError(str(e)) from None
    return cfg


def requested_qos(opt: dict[str, str], stage: str) -> str | None:
    """qos.STAGE= for one stage; qos= (or SAVIO_QOS through the setup script) for the compute stages."""
    return opt.get(f"qos.{stage}") or (opt.get("qos") if stage in ("train", "eval") else None) or None


def plan(args: list[str], *, run_id: str | None = None, stage_names: list[str] | None = None) -> Plan:
    """Check everything and build the stages (only `stage_names` when given). Raises RequestError (one line)
    on bad input: the QoS of each stage is checked only for the stages that are sent."""
    from hrm.config import slurm_minutes

    experiment, opt, overrides = split_args(args)
    from slurm import lm_stages

    if lm_stages.is_lm_experiment(experiment):  # HRM-Text (configs/lm): its own commands, the same checks
        return lm_stages.plan(args, run_id=run_id, stage_names=stage_names)
    cluster = profiles.load_cluster(opt.get("cluster") or default_cluster())
    cfg = checked_config(experiment, overrides)
    res = dict(cfg.get("resources") or {})

    def pick(key: str, default: Any = None) -> Any:
        return opt.get(key, res.get(key, default))

    gpus, nodes = whole(pick("gpus", 0), "gpus", 0), whole(pick("nodes", 1), "nodes", 1)
    for key, low in (("cpus_per_gpu", 1), ("max_requeues", 0), ("data_cpus", 1), ("cpus", 1)):
        if pick(key) is not None:
            whole(pick(key), key, low)
    launcher = opt.get("launcher") or ("single" if gpus * nodes <= 1 else "torchrun")
    if launcher not in ("single", "torchrun", "srun"):
        raise RequestError(f"launcher={launcher} is unknown; fix: launcher=torchrun or launcher=srun")
    if launcher == "single" and gpus * nodes > 1:
        raise RequestError(
            f"launcher=single cannot use {gpus * nodes} GPUs; fix: launcher=torchrun or launcher=srun"
        )
    common = {"account": opt.get("account")}
    train_req = profiles.resolve(
        cluster,
        partition=pick("partition"),
        gpus=gpus,
        gpu_type=pick("gpu_type"),
        nodes=nodes,
        cpus_per_gpu=pick("cpus_per_gpu"),
        cpus=pick("cpus", 2),
        time=pick("time", "01:00:00"),
        mem=pick("mem"),
        tasks_per_node=gpus if launcher == "srun" else 1,
        **common,
    )
    for key in ("time", "data_time", "eval_time"):  # time=0 (Slurm: no limit) or a typo, before any stage is built
        if opt.get(key) is not None:
            try:
                slurm_minutes(opt[key])
            except ValueError:
                raise RequestError(f"{key}={opt[key]} is not a positive Slurm time limit; fix: {key}=HH:MM:SS, "
                                   f"D-HH:MM:SS or minutes, e.g. {key}=01:00:00") from None
    mem = pick("mem")
    if mem is not None and not re.fullmatch(r"\d+[KMGT]?B?", str(mem).strip(), re.IGNORECASE):
        raise RequestError(f"mem={mem} is not a Slurm memory size; fix: e.g. mem=32G (K, M, G or T)")
    ranks = max(1, gpus * nodes)  # what the cluster can give is checked first, then whether the batch splits
    if cfg.get("global_batch_size") and int(cfg["global_batch_size"]) % ranks:
        gbs = int(cfg["global_batch_size"])
        raise RequestError(f"global_batch_size={gbs} is not divisible by the {ranks} ranks of gpus={gpus} "
                           f"nodes={nodes}; fix: global_batch_size={gbs // ranks * ranks or ranks}, or other gpus=")
    cpu_part = cluster.default_partition(0).name
    eval_req = profiles.resolve(
        cluster,
        partition=train_req.partition if gpus else cpu_part,
        gpus=1 if gpus else 0,
        gpu_type=train_req.gpu_type,
        cpus=train_req.cpus_per_task if not gpus else None,
        time=pick("eval_time", "01:00:00"),
        **common,
    )
    data_req = profiles.resolve(
        cluster,
        partition=cpu_part,
        cpus=int(opt.get("data_cpus", 2)),
        time=pick("data_time", "01:00:00"),
        **common,
    )
    collect_req = profiles.resolve(cluster, partition=cpu_part, cpus=1, time="00:15:00", **common)

    run_id = run_id or f"{experiment or 'run'}-{time.strftime('%Y%m%d-%H%M%S')}"
    runs_dir = _expand(opt.get("runs_dir") or cluster.runs_dir)
    run_dir = _expand(str(cfg["checkpoint_path"])) if cfg.get("checkpoint_path") else runs_dir / run_id
    data_path = resolve_data_path(str(cfg.get("data_path") or "data"), cluster)
    venv = opt.get("venv") or (sys.prefix if sys.prefix != sys.base_prefix else None)
    if opt.get("venv") and not (_expand(opt["venv"]) / "bin" / "activate").is_file():
        raise RequestError(f"venv={opt['venv']} is not a virtual environment (no bin/activate); fix: venv=PATH of "
                           f"one made by ./hrm_savio_setup.sh setup, or drop venv=")
    parent = next(q for q in (run_dir, *run_dir.parents) if q.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise RequestError(f"run directory {run_dir} cannot be made ({parent} is not a writable directory); fix: "
                           f"runs_dir= or checkpoint_path= somewhere you can write")
    max_requeues = int(opt.get("max_requeues", DEFAULT_MAX_REQUEUES))
    workdir = str(Path.cwd())

    train_overrides = [
        a for a in overrides if a.split("=", 1)[0].lstrip("+~") not in ("data_path", "checkpoint_path")
    ]
    exp = [f"+experiment={experiment}"] if experiment else []
    train_argv = ["hrm-train", *exp, *train_overrides, f"data_path={data_path}", f"checkpoint_path={run_dir}"]

    # ARC is scored per task over the augmented variants (pass@k), not per example: vote after evaluating
    arc_vote = ["arc_vote=true"] if (cfg.get("build") or {}).get("kind") == "arc" else []
    stages: list[Stage] = []
    skipped: dict[str, str] = {}
    ready, why = dataset_ready(data_path)
    if ready:
        skipped["data"] = why
    else:
        stages.append(Stage("data", build_argv(cfg.get("build") or {}, data_path), data_req, workdir=workdir))
    stages += [
        Stage(
            "train",
            train_argv,
            train_req,
            launcher=launcher,
            requeue=True,
            max_requeues=max_requeues,
            checkpoint_path=str(run_dir),
            workdir=workdir,
        ),
        Stage(
            "eval",
            ["hrm-evaluate", f"checkpoint={run_dir}", *arc_vote],  # every step_N not evaluated yet
            eval_req,
            checkpoint_path=str(run_dir),
            workdir=workdir,
        ),
        Stage(
            "collect",
            [sys.executable, "-m", "slurm.cli", "collect", str(run_dir), "--out", str(run_dir / "results")],
            collect_req,
            workdir=workdir,
        ),
    ]
    stages = select_stages(stages, stage_names, data_path)
    for s in stages:
        s.request = qos.apply(cluster, s.request, s.name, requested_qos(opt, s.name))
        # a preempted stage on a preemptible QoS is requeued by Slurm, not lost with the chain behind it
        s.preemptible = qos.preemptible(cluster, s.request)
    return Plan(
        run_id,
        cluster,
        experiment,
        run_dir,
        data_path,
        stages,
        skipped,
        venv,
        _resolve_wandb_mode(str(cfg.get("wandb_mode") or "auto")),
    )


# --- submission and the record ----------------------------------------------------------------------------


def registry_dir() -> Path:
    base = os.environ.get("HRM_SLURM_HOME") or os.path.join(
        os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share", "hrm-savio"
    )
    return Path(base) / "pipelines"


def submit(p: Plan) -> dict[str, Any]:
    """Submit the stages in order, each afterok the previous one; on a refusal, cancel what was sent."""
    import submitit

    record: dict[str, Any] = {
        "id": p.id,
        "experiment": p.experiment,
        "cluster": p.cluster.name,
        "run_dir": str(p.run_dir),
        "data_path": str(p.data_path),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "stages": [],
    }
    for name, why in p.skipped.items():
        record["stages"].append({"name": name, "job_id": None, "log": None, "skipped": why})
    previous: str | None = None
    submitted: list[str] = []
    for stage in p.stages:
        folder = p.slurm_dir / stage.name
        # submitit's own timeout countdown is one more than ours, so that our clearer message stops it
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=max(stage.max_requeues, 0) + 1)
        executor.update_parameters(**p.parameters(stage, f"afterok:{previous}" if previous else None))
        try:
            job = executor.submit(StageRun(stage))
        except Exception as e:  # sbatch refused: say why in one line, leave nothing half-submitted
            if submitted:
                subprocess.run(["scancel", *submitted], check=False)
            msg = " ".join(str(e).split())
            raise RequestError(f"sbatch refused the {stage.name} job: {msg[-300:]}") from None
        submitted.append(job.job_id)
        previous = job.job_id
        record["stages"].append(
            {
                "name": stage.name,
                "job_id": job.job_id,
                "log": str(job.paths.stdout),
                "partition": stage.request.partition,
                "request": asdict(stage.request),
            }
        )
    save_record(record)
    return record


def save_record(record: dict[str, Any]) -> None:
    text = json.dumps(record, indent=2)
    for path in (
        Path(record["run_dir"]) / "slurm" / "pipeline.json",
        registry_dir() / f"{record['id']}.json",
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)


def load_records(pipeline: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Recorded pipelines, newest first; `pipeline` is an id, an id prefix or a run directory."""
    if pipeline and Path(pipeline, "slurm", "pipeline.json").is_file():
        return [json.loads(Path(pipeline, "slurm", "pipeline.json").read_text())]
    paths = sorted(registry_dir().glob("*.json"), key=lambda q: q.stat().st_mtime, reverse=True)
    records = [json.loads(q.read_text()) for q in paths]
    if pipeline:
        records = [r for r in records if r["id"] == pipeline] or [
            r for r in records if r["id"].startswith(pipeline)
        ]
        if not records:
            raise RequestError(f"no pipeline '{pipeline}'; fix: see `hrm-slurm status --all` for ids")
    return records[:limit] if limit else records
