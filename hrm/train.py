"""`hrm-train`: the reference's training loop (§4) with the reference's Hydra overrides, made resumable.

Runs on CPU, one GPU, `torchrun --nproc-per-node N`, or ranks started by `srun`. Re-running the same
command with the same checkpoint_path resumes from the latest full state; SIGTERM / SIGUSR1 save the
state and exit with code 3 (Slurm's pre-emption and time-limit signals).

Every evaluation that improves `early_stop.metric` is recorded in the run's best.json. Early stopping is off
unless `early_stop.patience` (evaluations without improvement) or `early_stop.train_exact` (train exact accuracy
held for `early_stop.train_exact_steps` steps) is set; a stop saves weights and state, writes status `stopped`
with its reason and exits 0, and re-running the command leaves a stopped run as it is.

As a Hydra multirun (`hrm-train -m`), each sweep point without its own checkpoint_path/run_name trains in
hydra.sweep.dir/<point number>, so that a point hydra-submitit requeues resumes there. Under hydra-submitit,
submitit's preemption signal (USR2) first stops training and saves the state, then goes to submitit's handler
(which requeues the point and exits).
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
import torch.distributed as torch_dist
from omegaconf import DictConfig, OmegaConf

from hrm import dist, runstate
from hrm.config import (
    EARLY_STOP_METRICS,
    auto_names,
    config_dir,
    early_stop_settings,
    preflight,
    resume_differences,
    sweep_point_names,
    to_container,
    validate_config,
)
from hrm.data.format import DatasetError, atomic_write_bytes, atomic_write_json, read_metadata, validate_dataset
from hrm.errors import debug_enabled, one_line, report
from hrm.track import Tracker, console


@dataclass
class Position:
    """Where training stands: `step` optimizer steps done; next batch is `batch` of iteration `iteration`."""

    step: int = 0
    iteration: int = 0
    batch: int = 0


BEST_FILE = "best.json"


class EarlyStop:
    """The best evaluation so far (best.json, always) and early stopping (only when configured).

    Rank 0 sees the metrics and proposes; the caller turns a proposal into a decision with dist.all_reduce_flags,
    so every rank stops at the same step. The counters live in the resumable state (`state_dict`), so a resumed
    run keeps its best, its evaluations without improvement and its run of train steps above train_exact.
    """

    def __init__(self, settings: dict, run_dir: Path, keep_best_weights: bool):
        self.metric = settings["metric"]
        self.set_name, self.name = self.metric.split("/")
        self.higher = EARLY_STOP_METRICS[self.name]
        self.patience, self.train_exact = settings["patience"], settings["train_exact"]
        self.train_exact_steps = settings["train_exact_steps"]
        self.run_dir = run_dir
        self.keep_best_weights = keep_best_weights  # patience on, checkpoint_every_eval off: keep the best step_N
        self.best: dict | None = None  # {"step", "value", "extra"}: extra = weights saved only for being best
        self.previous_best: dict | None = None
        self.evals_since_best = 0
        self.above = 0  # counted train steps in a row with train/exact_accuracy >= train_exact
        self.reason: str | None = None

    # ---------------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {"metric": self.metric, "best": self.best, "evals_since_best": self.evals_since_best,
                "train_exact": self.train_exact, "above": self.above, "reason": self.reason}

    def load_state_dict(self, state: dict | None) -> None:
        """Restore what the saved run knew; a saved stop holds only if today's settings still call for it."""
        if not state:
            return
        if state["metric"] == self.metric:  # another metric: its best starts over
            self.best, self.evals_since_best = state["best"], state["evals_since_best"]
        if state["train_exact"] == self.train_exact:
            self.above = state["above"]
        self.reason = self.patience_reason() if self.patience_exhausted() else None
        if self.reason is None and self.above >= self.train_exact_steps and self.train_exact is not None:
            self.reason = self.train_reason()

    # ---------------------------------------------------------------------------------- train steps
    def observe_train(self, reduced: dict | None) -> bool:
        """Count one step's train metrics (rank 0; None elsewhere); True proposes stopping on train_exact.

        Steps where no sequence halted (train/count == 0) have no exact accuracy: they neither count nor
        break the run."""
        if self.train_exact is None or reduced is None:
            return False
        if reduced.get("train/count", 0) > 0:
            ok = reduced["train/exact_accuracy"] >= self.train_exact
            self.above = self.above + 1 if ok else 0
        return self.above >= self.train_exact_steps

    def train_reason(self) -> str:
        return f"early_stop: train/exact_accuracy >= {self.train_exact} for {self.train_exact_steps} steps"

    # ---------------------------------------------------------------------------------- evaluations
    def observe_eval(self, step: int, eval_metrics: dict | None) -> bool:
        """Record one evaluation (rank 0); True when it is a new best (strictly better; NaN never is)."""
        value = (eval_metrics or {}).get(self.set_name, {}).get(self.name)
        if value is None:
            return False
        value = float(value)
        better = not math.isnan(value) and (
            self.best is None or (value > self.best["value"] if self.higher else value < self.best["value"]))
        if better:
            self.previous_best, self.best = self.best, {"step": step, "value": value, "extra": False}
            self.evals_since_best = 0
        else:
            self.evals_since_best += 1
        return better

    def patience_exhausted(self) -> bool:
        return self.patience is not None and self.best is not None and self.evals_since_best >= self.patience

    def patience_reason(self) -> str:
        return f"early_stop: no improvement of {self.metric} for {self.patience} evaluations"

    def write_best(self) -> None:
        """best.json (rank 0, atomically): the best evaluation's step, metric, value and checkpoint file."""
        if self.best is None:
            return
        ckpt = f"step_{self.best['step']}"
        atomic_write_json(self.run_dir / BEST_FILE, {
            "step": self.best["step"], "metric": self.metric, "value": self.best["value"],
            "higher_is_better": self.higher,
            "checkpoint": ckpt if (self.run_dir / ckpt).is_file() else None})

    def drop_previous_best_weights(self) -> None:
        """With keep_best_weights, the former best's step_N goes once a better one is saved (rank 0)."""
        prev = self.previous_best
        if prev and prev.get("extra") and prev["step"] != self.best["step"]:
            (self.run_dir / f"step_{prev['step']}").unlink(missing_ok=True)
        self.previous_best = None

    def summary(self) -> str:
        if self.best is None:
            return "no evaluation yet"
        return f"best {self.metric} {self.best['value']:.4f} at step {self.best['step']} ({BEST_FILE})"


def carry_to_dict(carry) -> dict:
    return {"z_H": carry.inner_carry.z_H.cpu(), "z_L": carry.inner_carry.z_L.cpu(), "steps": carry.steps.cpu(),
            "halted": carry.halted.cpu(), "current_data": {k: v.cpu() for k, v in carry.current_data.items()}}


def carry_from_dict(d: dict, device: torch.device):
    from hrm.model.hrm_act import ACTCarry, InnerCarry

    return ACTCarry(InnerCarry(d["z_H"].to(device), d["z_L"].to(device)), d["steps"].to(device),
                    d["halted"].to(device), {k: v.to(device) for k, v in d["current_data"].items()})


def _should_compile(cfg: DictConfig, device: torch.device) -> bool:
    if cfg.compile == "auto":
        return device.type == "cuda" and not os.environ.get("DISABLE_COMPILE")
    return bool(cfg.compile)


class Reporter:
    """A rich progress bar on a terminal; a plain line every 30 s in batch logs (Slurm)."""

    def __init__(self, enabled: bool, total: int, start: int):
        self.enabled = enabled
        self.live = enabled and console.is_terminal
        self.last_line = 0.0
        self.total = total
        self.t0, self.s0 = time.time(), start
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                     TextColumn("{task.fields[info]}"), console=console)
            self.task = self.progress.add_task("train", total=total, completed=start, info="")
            self.progress.start()

    def samples_per_s(self, step: int, batch: int) -> float:
        return (step - self.s0) * batch / max(time.time() - self.t0, 1e-9)

    def update(self, step: int, metrics: dict, batch: int) -> None:
        if not self.enabled:
            return
        loss, exact = metrics.get("train/lm_loss", float("nan")), metrics.get("train/exact_accuracy", float("nan"))
        info = f"loss {loss:.4f} exact {exact:.3f} {self.samples_per_s(step, batch):.0f} samples/s"
        if self.live:
            self.progress.update(self.task, completed=step, info=info)
        elif time.time() - self.last_line > 30 or step == self.total:
            self.last_line = time.time()
            console.print(f"step {step}/{self.total} {info}")

    def close(self) -> None:
        if self.live:
            self.progress.stop()


def _reduce_train_metrics(metrics: dict, global_batch_size: int, info: dist.DistInfo) -> dict | None:
    keys = sorted(metrics)
    values = torch.stack([metrics[k].detach().to(torch.float32) for k in keys])
    if torch_dist.is_initialized():
        torch_dist.reduce(values, dst=0)
    if not info.is_main:
        return None
    row = dict(zip(keys, values.cpu().tolist()))
    count = max(row["count"], 1)
    return {f"train/{k}": v / (global_batch_size if k.endswith("loss") else count) for k, v in row.items()}


def build_optimizers(model: torch.nn.Module, cfg: DictConfig,
                     world_size: int) -> tuple[list[torch.optim.Optimizer], list[float]]:
    """SignSGD for the sparse puzzle table (when there is one), then AdamATan2, each with its base lr;
    the lrs start at 0 because every step sets them from the schedule."""
    from hrm.optim import AdamATan2, SparseEmbeddingSignSGD

    optimizers, base_lrs = [], []
    if cfg.arch.puzzle_emb_ndim > 0:
        optimizers.append(SparseEmbeddingSignSGD(model.model.puzzle_emb.buffers(), lr=0,
                                                 weight_decay=cfg.puzzle_emb_weight_decay, world_size=world_size))
        base_lrs.append(cfg.puzzle_emb_lr)
    optimizers.append(AdamATan2(model.parameters(), lr=0, weight_decay=cfg.weight_decay,
                                betas=(cfg.beta1, cfg.beta2), impl=cfg.optimizer_impl))
    base_lrs.append(cfg.lr)
    return optimizers, base_lrs


def train_step(step_model: torch.nn.Module, carry, batch: dict[str, torch.Tensor],
               optimizers: list[torch.optim.Optimizer], lrs: list[float], global_batch_size: int) -> tuple:
    """One optimizer step (the reference's train_batch): one ACT segment with its target-Q forward, backward
    of loss / global batch, gradients summed over ranks, then each optimizer at its lr. Returns (carry, metrics).

    A function of its own so that bench/train_throughput.py times exactly this.
    """
    carry, loss, metrics, _, _ = step_model(carry=carry, batch=batch, return_keys=())
    ((1 / global_batch_size) * loss).backward()
    if torch_dist.is_initialized():
        for p in step_model.parameters():
            if p.grad is not None:
                torch_dist.all_reduce(p.grad)
    for opt, lr in zip(optimizers, lrs):
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        opt.zero_grad()
    return carry, metrics


class SubmititSignal:
    """Defers submitit's preemption/time-limit handler until the training state is saved.

    hydra-submitit runs the task in submitit's own job process, where a USR2 (Slurm's --signal, SUBMITIT_PREEMPT_SIGNAL
    to change it) calls submitit's handler at once: it requeues the job and exits, and steps since the last save
    are lost. While training runs, the signal only asks the loop to stop (like SIGUSR1); `forward()` then calls
    submitit's handler. Outside submitit (no handler of its own installed) this does nothing.
    """

    def __init__(self, stop: runstate.StopSignal):
        self.stop = stop
        self.signum: int | None = None
        self.handler = None
        self.received = False
        if "submitit" not in sys.modules:  # submitit installs its handler only after importing itself
            return
        from submitit.core.job_environment import JobEnvironment, SignalHandler

        try:
            signum = JobEnvironment._usr_sig()
        except RuntimeError:
            return
        handler = signal.getsignal(signum)
        if isinstance(getattr(handler, "__self__", None), SignalHandler):
            self.signum, self.handler = signum, handler

    def install(self) -> SubmititSignal:
        if self.handler is not None:
            signal.signal(self.signum, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.received = True
        self.stop.received = signal.Signals(signum).name

    def uninstall(self) -> None:
        if self.handler is not None:
            signal.signal(self.signum, self.handler)

    def forward(self) -> None:
        """Hand a signal caught during training to submitit (requeue and exit), once the state is saved."""
        if self.handler is not None and self.received:
            self.handler(self.signum, None)


def _broadcast_names(cfg: DictConfig, info: dist.DistInfo) -> tuple[str, str, str]:
    names = [auto_names(cfg) if info.is_main else None]
    if torch_dist.is_initialized():
        torch_dist.broadcast_object_list(names, src=0)
    return names[0]


def prepare(cfg: DictConfig, info: dist.DistInfo) -> dict:
    """Every check that can fail on bad input, before a model is built or a file written."""
    validate_config(cfg, info.world_size)
    data_path = Path(cfg.data_path)
    # full: every token must fit the vocabulary, whatever integer dtype the builder wrote (one pass per file)
    validate_dataset(data_path, splits=("train",), full=True)
    has_test = (data_path / "test" / "dataset.json").is_file()
    if has_test:
        validate_dataset(data_path, splits=("test",), full=True)
    meta = read_metadata(data_path / "train")
    early = early_stop_settings(cfg)
    test_sets = read_metadata(data_path / "test").sets if has_test else []
    set_name = early["metric"].split("/")[0]
    if has_test and set_name not in test_sets:
        raise ValueError(f"early_stop.metric={early['metric']!r}: the test split has no set {set_name!r} "
                         f"(it has {', '.join(test_sets)}): use e.g. early_stop.metric={test_sets[0]}/exact_accuracy")
    if not has_test and early["patience"] is not None:
        raise ValueError(f"early_stop.patience={early['patience']} needs evaluations, but {data_path / 'test'} "
                         f"does not exist: build the test split or set early_stop.patience=null")
    project, run_name, ckpt_path = _broadcast_names(cfg, info)
    cfg.project_name, cfg.run_name, cfg.checkpoint_path = project, run_name, ckpt_path
    run_dir = Path(ckpt_path)
    check_writable(run_dir)
    saved_cfg = run_dir / "all_config.yaml"
    if saved_cfg.is_file():
        try:
            saved = to_container(OmegaConf.load(saved_cfg))
        except Exception as e:
            raise ValueError(f"{saved_cfg} is not readable ({' '.join(str(e).split())[:120]}): restore it, or use a "
                             f"new checkpoint_path") from None
        diffs = resume_differences(saved, to_container(cfg))
        if diffs:
            raise ValueError(f"checkpoint_path {run_dir} holds a run with other settings ({'; '.join(diffs[:3])}): "
                             f"use a new checkpoint_path, or the run's own settings to resume it")
    from hrm.model.hrm_act import DTYPES
    from hrm.model.layers import resolve_attn_backend

    if cfg.arch.forward_dtype not in DTYPES:
        raise ValueError(f"arch.forward_dtype={cfg.arch.forward_dtype!r}: use bfloat16 or float32")
    resolve_attn_backend(cfg.arch.attn_backend, info.device, DTYPES[cfg.arch.forward_dtype])
    from hrm.grad_settings import validate_grad_settings

    validate_grad_settings(cfg.arch.get("grad_mode", "one_step"), cfg.arch.get("grad_window"),
                           cfg.arch.get("memory_limit_mb"), cfg.arch.H_cycles, cfg.arch.L_cycles)
    if info.is_main:
        try:  # the last check: from here on a failure is recorded in the run's status.json
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"checkpoint_path {run_dir} cannot be created ({e.strerror}); fix: use a "
                             f"checkpoint_path you can write") from None
    return {"meta": meta, "run_dir": run_dir, "has_test": has_test, "early_stop": early}


def check_writable(run_dir: Path) -> None:
    """The run directory can be made and written: one line now rather than an OSError after the model is built."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"checkpoint_path {run_dir} is a file, not a run directory: use another checkpoint_path")
    existing = next(p for p in (run_dir, *run_dir.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        what = "is not a directory" if not existing.is_dir() else "is not writable"
        raise ValueError(f"checkpoint_path {run_dir}: {existing} {what}; fix: use a checkpoint_path you can write")


def train(cfg: DictConfig) -> int:
    """Train (or resume) one run; bad input answers in one line (exit 2), a fault in one line (exit 1) with the
    run's status.json set to failed and its reason (a traceback only with HRM_DEBUG=1)."""
    try:
        info = dist.setup(cfg.device)
        prep = prepare(cfg, info)
    except (ValueError, DatasetError, OSError) as e:
        report("hrm-train", one_line(e))
        dist.teardown()
        return 2
    except KeyboardInterrupt:
        report("hrm-train", "interrupted (Ctrl-C) while checking the config and data; nothing was written")
        return 130
    except Exception as e:  # a fault while checking (an attention backend probe, a file system): one line
        if debug_enabled():
            raise
        report("hrm-train", one_line(e))
        return 1
    if info.is_main and not prep["has_test"]:
        console.print(f"note: {Path(cfg.data_path) / 'test'} does not exist: training without evaluation "
                      f"(build the test split to evaluate)", highlight=False)
    try:
        return _train(cfg, info, prep)
    except BaseException as e:
        if isinstance(e, SystemExit):
            raise
        reason = ("interrupted (Ctrl-C) outside a training step, so no state was saved now; run the same command "
                  "to resume from the last saved state" if isinstance(e, KeyboardInterrupt) else one_line(e))
        run_dir = prep["run_dir"]
        if run_dir.is_dir():
            runstate.mark_failed(run_dir, reason)
        if debug_enabled():
            raise
        report("hrm-train", reason if isinstance(e, KeyboardInterrupt) else f"{reason} (run {run_dir})")
        return 130 if isinstance(e, KeyboardInterrupt) else 1


def _train(cfg: DictConfig, info: dist.DistInfo, prep: dict) -> int:
    from hrm.data.loader import PuzzleDataset
    from hrm.data.loader import total_steps as compute_total_steps
    from hrm.evaluate import evaluate, metrics_table
    from hrm.model import build_model, num_params
    from hrm.optim import cosine_schedule_with_warmup_lr

    meta, run_dir = prep["meta"], prep["run_dir"]
    gbs, local_bs = cfg.global_batch_size, cfg.global_batch_size // info.world_size
    epochs_per_iter = cfg.eval_interval or cfg.epochs
    total_iters = cfg.epochs // epochs_per_iter
    total_steps = compute_total_steps(meta, cfg.epochs, gbs)
    train_ds = PuzzleDataset(cfg.data_path, "train", gbs, rank=info.rank, world_size=info.world_size,
                             seed=cfg.seed, epochs_per_iter=epochs_per_iter)
    eval_ds = (PuzzleDataset(cfg.data_path, "test", gbs, rank=info.rank, world_size=info.world_size,
                             seed=cfg.seed, test_set_mode=True) if prep["has_test"] else None)

    torch.random.manual_seed(cfg.seed + info.rank)
    arch = OmegaConf.to_container(cfg.arch, resolve=True)
    model = build_model(arch, meta, local_bs, info.device)
    if arch.get("memory_limit_mb"):
        from hrm.model.sqrt_bptt import plan_for_batch

        try:  # measure one application on a real batch and choose the stretch, before anything is written
            _, first, _ = next(iter(train_ds.train_iteration(1)))
            plan_for_batch(model, {k: v.to(info.device) for k, v in first.items()})
        except ValueError as e:
            report("hrm-train", one_line(e))
            if info.is_main and not any(run_dir.iterdir()):
                run_dir.rmdir()  # made by prepare() for this run only: nothing left behind
            dist.teardown()
            return 2
    if torch_dist.is_initialized():
        with torch.no_grad():
            for t in list(model.parameters()) + list(model.buffers()):
                torch_dist.broadcast(t, src=0)
    optimizers, base_lrs = build_optimizers(model, cfg, info.world_size)

    pos, carry = Position(), None
    early = EarlyStop(prep["early_stop"], run_dir,
                      keep_best_weights=prep["early_stop"]["patience"] is not None and not cfg.checkpoint_every_eval)
    state = runstate.load_state(run_dir, info, map_location=info.device)
    if state is not None:
        common, mine = state
        model.load_state_dict(common["model"])
        for opt, sd in zip(optimizers, common["optimizers"]):
            opt.load_state_dict(sd)
        pos = Position(**common["position"])
        early.load_state_dict(common.get("early_stop"))  # the same on every rank: one common state
        if info.is_main:
            early.write_best()  # best.json agrees with the state resumed from (a kill may have come between)
        if mine is not None:
            carry = carry_from_dict(mine["carry"], info.device) if mine["carry"] is not None else None
            runstate.set_rng_state(mine["rng"], info.device)
    elif info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(run_dir / "all_config.yaml", OmegaConf.to_yaml(cfg, resolve=True).encode())
    dist.barrier()

    step_model = torch.compile(model, dynamic=False) if _should_compile(cfg, info.device) else model
    tracker = Tracker(run_dir, to_container(cfg), cfg.project_name, cfg.run_name, cfg.wandb_mode,
                      enabled=info.is_main, resume_step=pos.step if state is not None else None)
    n_params = num_params(model)
    if info.is_main:
        backend = model.model.inner.H_level.layers[0].self_attn.backend
        console.print(f"[bold]hrm-train[/] {cfg.run_name} -> {run_dir}")
        console.print(f"  device {info.device} x{info.world_size}, attention {backend}, dtype {arch['forward_dtype']}, "
                      f"compile {step_model is not model}, W&B {tracker.mode}")
        console.print(f"  {n_params:,} parameters; data {cfg.data_path}: {meta.total_groups} groups, "
                      f"{total_steps} total steps, {total_iters} iteration(s) of {epochs_per_iter} epochs")
        if state is not None:
            console.print(f"  resumed at step {pos.step} (iteration {pos.iteration}, batch {pos.batch})")
        else:
            tracker.log({"num_params": n_params}, step=0)

    limit = min(total_steps, cfg.max_steps) if cfg.max_steps else total_steps
    stop = runstate.StopSignal().install()
    submitit_signal = SubmititSignal(stop).install()
    last_state_time = time.time()
    reporter = Reporter(info.is_main, limit, pos.step)

    def save_state() -> None:
        common = {"model": model.state_dict(), "optimizers": [o.state_dict() for o in optimizers],
                  "position": vars(pos).copy(), "total_steps": total_steps, "early_stop": early.state_dict()}
        mine = {"carry": carry_to_dict(carry) if carry is not None else None, "rng": runstate.rng_state(info.device)}
        runstate.save_state(run_dir, pos.step, common, mine, info)

    def status(state_name: str, **extra) -> None:
        if info.is_main:
            runstate.write_status(run_dir, state_name, pos.step, total_steps, limit=limit,
                                  samples_per_s=round(reporter.samples_per_s(pos.step, gbs), 2), **extra)

    status("running")
    interrupted = False
    try:
        while pos.iteration < total_iters and pos.step < limit and not interrupted and early.reason is None:
            for _set_name, batch, _ in train_ds.train_iteration(pos.iteration + 1, pos.batch):
                batch = {k: v.to(info.device, non_blocking=True) for k, v in batch.items()}
                if carry is None:
                    carry = model.initial_carry(batch)
                lrs = [cosine_schedule_with_warmup_lr(pos.step + 1, base_lr, cfg.lr_warmup_steps, total_steps,
                                                      cfg.lr_min_ratio) for base_lr in base_lrs]
                carry, metrics = train_step(step_model, carry, batch, optimizers, lrs, gbs)
                pos.step += 1
                pos.batch += 1
                reduced = _reduce_train_metrics(metrics, gbs, info)
                if reduced is not None:
                    reduced["train/lr"] = lrs[-1]
                    tracker.log(reduced, step=pos.step)
                    reporter.update(pos.step, reduced, gbs)
                due = time.time() - last_state_time > 60 * cfg.state_every_minutes
                stop_now, save_now, train_exact_now = dist.all_reduce_flags(
                    [stop.requested, due, early.observe_train(reduced)], info.device)
                if train_exact_now:  # evaluated, saved and reported below, like the end of a run
                    early.reason = early.train_reason()
                    break
                if stop_now:
                    interrupted = True
                    break
                if save_now:  # every rank at the same step, whichever rank's clock said so
                    save_state()
                    last_state_time = time.time()
                if pos.step >= limit:
                    break
            if interrupted:
                break
            finished_iteration = ((pos.step < limit and early.reason is None)
                                  or pos.batch >= train_ds.num_train_batches(pos.iteration + 1))
            improved = False
            if eval_ds is not None:
                eval_metrics, outputs = evaluate(model, eval_ds, info, list(cfg.eval_save_outputs),
                                                 cfg.eval_max_batches)
                if outputs:
                    runstate.atomic_torch_save(outputs, run_dir / f"step_{pos.step}_all_preds.{info.rank}")
                if info.is_main:
                    tracker.log(eval_metrics, step=pos.step)
                    console.print(metrics_table(eval_metrics, f"evaluation at step {pos.step}"))
                    improved = early.observe_eval(pos.step, eval_metrics)
                (patience_now,) = dist.all_reduce_flags([info.is_main and early.patience_exhausted()], info.device)
                if patience_now and early.reason is None:
                    early.reason = early.patience_reason()
            if finished_iteration:
                pos.iteration += 1
                pos.batch = 0
            last = pos.iteration >= total_iters or pos.step >= limit or early.reason is not None
            if info.is_main:
                best_only = improved and early.keep_best_weights and not (cfg.checkpoint_every_eval or last)
                if cfg.checkpoint_every_eval or last or best_only:
                    runstate.save_weights(run_dir, pos.step, model.state_dict())
                if improved:
                    early.best["extra"] = best_only
                    early.drop_previous_best_weights()
                    early.write_best()
            save_state()
            last_state_time = time.time()
    finally:
        reporter.close()
        submitit_signal.uninstall()
        stop.uninstall()
    if interrupted:
        save_state()
        status("interrupted")
        if info.is_main:
            then = "submitit requeues this point" if submitit_signal.received else "run the same command to resume"
            console.print(f"[yellow]{stop.received}: state saved at step {pos.step}; {then}[/]")
        tracker.finish()
        dist.teardown()
        submitit_signal.forward()  # under hydra-submitit: requeue this point and exit
        return runstate.EXIT_INTERRUPTED
    if pos.iteration >= total_iters or pos.step >= total_steps:  # the schedule is done, whatever else said stop
        status("finished")
        if info.is_main:
            console.print(f"done at step {pos.step}/{total_steps}; weights in {run_dir}")
    elif early.reason is not None:
        if info.is_main and not (run_dir / f"step_{pos.step}").is_file():  # a stop found on resume, mid-iteration
            runstate.save_weights(run_dir, pos.step, model.state_dict())
        status("stopped", reason=early.reason)
        if info.is_main:
            why = early.reason.removeprefix("early_stop: ")
            console.print(f"stopped early at step {pos.step}/{total_steps}: {why}; {early.summary()}", soft_wrap=True)
    else:
        status("stopped", reason=f"max_steps={cfg.max_steps}")
        if info.is_main:
            console.print(f"stopped at step {pos.step}/{total_steps} (max_steps={cfg.max_steps}); "
                          f"weights in {run_dir}")
    tracker.finish()
    dist.teardown()
    return 0


@hydra.main(config_path=str(config_dir()), config_name="cfg_pretrain", version_base=None)
def _hydra_entry(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN and cfg.checkpoint_path is None and cfg.run_name is None:
        cfg.run_name, cfg.checkpoint_path = sweep_point_names(hc.sweep.dir, hc.job.num)
    code = train(cfg)
    if code:
        sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """hrm-train: the command line is checked first (one line, exit 2), then Hydra runs (`argv` replaces the
    process's own arguments, for tests)."""
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    try:
        problem = preflight(sys.argv[1:])
    except KeyboardInterrupt:
        problem = "interrupted (Ctrl-C) while checking the config; nothing was written"
    if problem:
        report("hrm-train", problem)
        sys.exit(2)
    _hydra_entry()


if __name__ == "__main__":
    main()
