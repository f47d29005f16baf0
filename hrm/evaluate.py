"""Evaluation (§7.1): every test batch runs halt_max_steps segments; `hrm-evaluate checkpoint=PATH`.

`hrm-evaluate` reads `all_config.yaml` beside the checkpoint (ours or the reference's), evaluates on the
test split and writes `step_N_all_preds.{rank}` with the reference's keys, plus `step_N_eval.json`.

`checkpoint=RUN_DIR` (a run directory) evaluates every `step_N` there that has no `step_N_eval.json` yet,
in step order; `eval_steps=last|best|all|N,M,...` picks which (best: the step in the run's best.json).
Each result is written atomically once its checkpoint is done, so a run killed midway continues with the
remaining checkpoints when started again. With `arc_vote=true` every checkpoint is also voted (pass@k in
`step_N_arc_vote.json`, per task, and its summary under "arc" in `step_N_eval.json`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as torch_dist
from omegaconf import OmegaConf
from rich.table import Table

from hrm import dist
from hrm.track import console

REFERENCE_SAVE_OUTPUTS = ["inputs", "labels", "puzzle_identifiers", "logits", "q_halt_logits", "q_continue_logits"]
STEP_NAME = re.compile(r"step_(\d+)")
BEST_FILE = "best.json"
EXIT_INTERRUPTED = 3  # a run-directory evaluation stopped on a signal; run the same command to continue


def evaluate(model: torch.nn.Module, dataset, info: dist.DistInfo, save_outputs: list[str] | tuple = (),
             max_batches: int | None = None, on_batch: Callable[[int], None] | None = None,
             ) -> tuple[dict | None, dict[str, torch.Tensor]]:
    """Metrics per set ({set: {metric: value}}, on rank 0; None elsewhere) and this rank's saved outputs.

    `on_batch(i)` is called after batch i (for progress and time estimates)."""
    sets = list(dataset.metadata.sets)
    keys: list[str] | None = None
    totals = None
    saved: dict[str, list[torch.Tensor]] = {}
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for i, (set_name, batch, _) in enumerate(dataset.test_batches()):
            if max_batches is not None and i >= max_batches:
                break
            batch = {k: v.to(info.device, non_blocking=True) for k, v in batch.items()}
            carry = model.initial_carry(batch)
            while True:
                carry, _, metrics, preds, all_halted = model(carry=carry, batch=batch, return_keys=tuple(save_outputs))
                if all_halted:
                    break
            for source in (batch, preds):
                for k, v in source.items():
                    if k in save_outputs:
                        saved.setdefault(k, []).append(v.cpu())
            if keys is None:
                keys = sorted(metrics)
                totals = torch.zeros(len(sets), len(keys), dtype=torch.float64, device=info.device)
            totals[sets.index(set_name)] += torch.stack([metrics[k].to(torch.float64) for k in keys])
            if on_batch is not None:
                on_batch(i)
    model.train(was_training)
    outputs = {k: torch.cat(v) for k, v in saved.items()}
    if totals is None:
        return ({} if info.is_main else None), outputs
    if torch_dist.is_initialized():
        torch_dist.reduce(totals, dst=0)
    if not info.is_main:
        return None, outputs
    result = {}
    for s, set_name in enumerate(sets):
        row = dict(zip(keys, totals[s].tolist()))
        count = max(row["count"], 1)
        result[set_name] = {k: v / count for k, v in row.items()}
    return result, outputs


def metrics_table(metrics: dict, title: str) -> Table:
    table = Table(title=title)
    table.add_column("set")
    names = sorted({k for v in metrics.values() for k in v})
    for name in names:
        table.add_column(name, justify="right")
    for set_name, values in metrics.items():
        table.add_row(set_name, *(f"{values.get(n, float('nan')):.4f}" for n in names))
    return table


def _parse_args(argv: list[str]) -> dict:
    if any(a in ("-h", "--help") for a in argv):
        print("usage: hrm-evaluate checkpoint=RUN_DIR/step_N|RUN_DIR [eval_steps=all|last|best|N,M,...] "
              "[data_path=...] [global_batch_size=...] [device=cpu|cuda] [eval_max_batches=N] "
              "[eval_save_outputs=[...]] [arc_vote=true]")
        sys.exit(0)
    bad = [a for a in argv if "=" not in a]
    if bad:
        raise ValueError(f"argument {bad[0]!r} is not key=value: use hrm-evaluate checkpoint=PATH [key=value ...]")
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist(argv))
    except Exception as e:
        raise ValueError(f"arguments not understood ({' '.join(str(e).split())[:150]}); fix: key=value, e.g. "
                         f"checkpoint=RUN_DIR eval_steps=last") from None


# --- which checkpoints of a run directory -----------------------------------------------------------------


def checkpoint_steps(run_dir: Path) -> list[int]:
    """The steps N of the `step_N` weight files in a run directory, ascending."""
    return sorted(int(m.group(1)) for p in Path(run_dir).iterdir()
                  if (m := STEP_NAME.fullmatch(p.name)) and p.is_file())


def _names(steps: list[int], most: int = 6) -> str:
    names = [f"step_{s}" for s in steps]
    return ", ".join(names if len(names) <= most else [*names[:3], "...", *names[-2:]])


def _parse_step_list(spec) -> list[int] | None:
    """160 / [160, 320] / "160,320" / "step_160,step_320" -> [160, 320]; None when it is not such a list."""
    if isinstance(spec, bool):
        return None
    if isinstance(spec, int):
        return [spec] if spec >= 0 else None
    tokens = spec if isinstance(spec, list) else str(spec).split(",") if isinstance(spec, str) else None
    if not tokens:
        return None
    steps = []
    for t in tokens:
        if isinstance(t, bool):
            return None
        m = re.fullmatch(r"(?:step_)?(\d+)", str(t).strip())
        if not m:
            return None
        steps.append(int(m.group(1)))
    return steps


def _best_step(run_dir: Path) -> int:
    path = run_dir / BEST_FILE
    if not path.is_file():
        raise ValueError(f"no {BEST_FILE} in {run_dir} yet (training writes it when it evaluates): "
                         f"use eval_steps=last, all or N,M,...")
    try:
        step = json.loads(path.read_text())["step"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path} has no readable \"step\": expected {{\"step\": N, \"metric\": ..., "
                         f"\"value\": ...}}; delete it or use eval_steps=last") from None
    if isinstance(step, bool) or not isinstance(step, int):
        raise ValueError(f"{path}: \"step\" is {step!r}, not a step number; delete it or use eval_steps=last")
    return step


def select_steps(run_dir: Path, spec) -> list[int]:
    """The checkpoints `eval_steps` names (all when None), ascending; ValueError (one line) on bad input."""
    steps = checkpoint_steps(run_dir)
    if not steps:
        raise ValueError(f"no step_N checkpoint in {run_dir}: train first (checkpoint_every_eval=true keeps one "
                         f"per evaluation), or pass checkpoint=RUN_DIR/step_N")
    word = spec.strip().lower() if isinstance(spec, str) else spec
    if word is None or word == "all":
        return steps
    if word == "last":
        return steps[-1:]
    if word == "best":
        chosen, source = [_best_step(run_dir)], f"{run_dir / BEST_FILE} names"
    else:
        parsed = _parse_step_list(spec)
        if parsed is None:
            raise ValueError(f"eval_steps={spec!r} is not understood: use all, last, best, or steps like "
                             f"eval_steps={steps[-1]} or eval_steps={','.join(map(str, steps[-2:]))}")
        chosen, source = sorted(set(parsed)), "eval_steps names"
    missing = [s for s in chosen if s not in steps]
    if missing:
        raise ValueError(f"{source} step_{missing[0]} but {run_dir} has no such checkpoint (it has "
                         f"{_names(steps)}): pick one of those")
    return chosen


def _eval_record(run_dir: Path, step: int) -> dict | None:
    path = run_dir / f"step_{step}_eval.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # absent, or cut short by a crash before atomic writes: evaluate again


def _preds_files(run_dir: Path, step: int) -> list[Path]:
    return [p for p in run_dir.glob(f"step_{step}_all_preds.*") if re.fullmatch(r"\d+", p.name.rsplit(".", 1)[1])]


def plan_run_dir(run_dir: Path, steps: list[int], arc_vote: bool) -> tuple[dict[int, str], list[int]]:
    """({step: "evaluate" | "vote" | "arc-file"} for the steps with work left, the steps already done).

    A step is done when it has a step_N_eval.json (and, with arc_vote, an "arc" summary in it). One without the
    summary is voted from its saved predictions ("vote"), or takes the summary of an existing
    step_N_arc_vote.json ("arc-file"), or is evaluated again when neither is there."""
    todo, done = {}, []
    for step in steps:
        record = _eval_record(run_dir, step)
        if record is None:
            todo[step] = "evaluate"
        elif arc_vote and "arc" not in record:
            if (run_dir / f"step_{step}_arc_vote.json").is_file():
                todo[step] = "arc-file"
            elif _preds_files(run_dir, step):
                todo[step] = "vote"
            else:
                todo[step] = "evaluate"
        else:
            done.append(step)
    return todo, done


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.2g} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _test_batches(data_path: str, sets: list[str], global_batch_size: int, max_batches: int | None) -> int:
    from hrm.data.format import load_split

    n = sum(-(-len(load_split(Path(data_path) / "test", s)["inputs"]) // global_batch_size) for s in sets)
    return min(n, max_batches) if max_batches is not None else n


class _Stopped(BaseException):
    """A BaseException so that no `except Exception` on the way (a checkpoint load) mistakes the stop for damage."""


def _raise_stopped(signum, frame) -> None:
    raise _Stopped(signal.Signals(signum).name)


# --- the command ------------------------------------------------------------------------------------------


def _load_config(run_dir: Path, args: dict):
    from hrm.config import default_config
    from hrm.schema import check_train_config, unknown_key_message

    config_file = run_dir / "all_config.yaml"
    if not config_file.is_file():
        raise ValueError(f"{config_file} not found: hrm-evaluate needs the run's all_config.yaml beside the checkpoint")
    unknown = [k for k in args if k not in EVAL_KEYS]
    if unknown:
        raise ValueError(unknown_key_message(unknown[0], [*EVAL_KEYS, "checkpoint", "eval_steps", "arc_vote"],
                                             args[unknown[0]]))
    try:
        saved = OmegaConf.load(config_file)
    except Exception as e:
        raise ValueError(f"{config_file} is not readable ({' '.join(str(e).split())[:120]}): restore it from the "
                         f"run, or retrain") from None
    # the arguments' types and ranges (the saved config passed the same check when the run started)
    check_train_config(OmegaConf.merge(default_config(), OmegaConf.create(args)))
    return OmegaConf.merge(default_config(), saved, OmegaConf.create(args))


# Keys of the run's config that an evaluation may change (the rest is what the checkpoint was trained with).
EVAL_KEYS = ("data_path", "global_batch_size", "device", "eval_max_batches", "eval_save_outputs")


def check_checkpoint_file(path: Path) -> None:
    """A step_N file that a kill or a full disk cut short, named before any model is built."""
    import zipfile

    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is truncated or not a checkpoint (no complete zip archive): delete it (training "
                         f"writes it again at that evaluation) or evaluate another step")


def _arc_summary(result: dict) -> dict:
    return {k: v for k, v in result.items() if k.startswith("pass@") or k in ("tasks", "correct")}


class Evaluator:
    """The dataset and model of a run, built once; `step(N)` evaluates step_N and writes its files."""

    def __init__(self, run_dir: Path, cfg, info: dist.DistInfo, save_outputs: list[str]):
        from hrm.data.format import validate_dataset
        from hrm.data.loader import PuzzleDataset
        from hrm.model import build_model

        self.run_dir, self.cfg, self.info = run_dir, cfg, info
        self.save_outputs = save_outputs
        validate_dataset(Path(cfg.data_path), splits=("test",))
        self.dataset = PuzzleDataset(cfg.data_path, "test", cfg.global_batch_size, rank=info.rank,
                                     world_size=info.world_size, seed=cfg.seed, test_set_mode=True)
        arch = OmegaConf.to_container(cfg.arch, resolve=True)
        self.model = build_model(arch, self.dataset.metadata, cfg.global_batch_size // info.world_size, info.device)

    @property
    def backend(self) -> str:
        return self.model.model.inner.H_level.layers[0].self_attn.backend

    def load(self, ckpt: Path) -> None:
        from hrm.model import load_weights

        try:
            weights = torch.load(ckpt, map_location=self.info.device, weights_only=True)
        except Exception as e:
            raise ValueError(f"{ckpt} is truncated or unreadable ({type(e).__name__}): delete it (training writes "
                             f"it again at that evaluation) or evaluate another step") from None
        load_weights(self.model, weights, str(ckpt))

    def step(self, step: int, on_batch: Callable[[int], None] | None = None) -> tuple[dict | None, float]:
        """Evaluate the loaded weights as step `step`: (metrics on rank 0, seconds); writes preds and eval.json."""
        from hrm.data.format import atomic_write_json
        from hrm.runstate import atomic_torch_save

        t0 = time.time()
        metrics, outputs = evaluate(self.model, self.dataset, self.info, self.save_outputs,
                                    self.cfg.eval_max_batches, on_batch)
        if outputs:
            atomic_torch_save(outputs, self.run_dir / f"step_{step}_all_preds.{self.info.rank}")
        dist.barrier()
        seconds = time.time() - t0
        if self.info.is_main:
            if outputs:  # files of ranks beyond this world size are from an older evaluation: they would be voted
                for p in _preds_files(self.run_dir, step):
                    if int(p.name.rsplit(".", 1)[1]) >= self.info.world_size:
                        p.unlink()
            from hrm.data.logistics_metrics import evaluation_hook

            task = evaluation_hook(self.cfg.data_path, self.run_dir, step) if outputs else {}  # route metrics
            atomic_write_json(self.run_dir / f"step_{step}_eval.json",
                              {"step": step, "metrics": metrics, "seconds": round(seconds, 3), **task})
        return metrics, seconds


def vote_step(run_dir: Path, data_path: str, step: int, from_file: bool = False) -> dict:
    """pass@k of step_N (rank 0 only): voted from its predictions into step_N_arc_vote.json, or, with `from_file`,
    read from an existing step_N_arc_vote.json; the summary is then added to step_N_eval.json under "arc"."""
    from hrm.arc_vote import vote
    from hrm.data.format import atomic_write_json

    vote_file = run_dir / f"step_{step}_arc_vote.json"
    summary = None
    if from_file:
        try:
            summary = _arc_summary(json.loads(vote_file.read_text())["summary"])
        except (OSError, ValueError, KeyError, TypeError):
            summary = None  # unreadable: vote again
    if summary is None:
        summary = _arc_summary(vote(run_dir / f"step_{step}_all_preds", data_path, output_json=vote_file))
    record = _eval_record(run_dir, step) or {"step": step}
    record["arc"] = summary
    atomic_write_json(run_dir / f"step_{step}_eval.json", record)
    return summary


def _check_vote_outputs(arc_vote: bool, save_outputs: list[str]) -> None:
    from hrm.arc_vote import REQUIRED_KEYS

    missing = [k for k in REQUIRED_KEYS if k not in save_outputs]
    if arc_vote and missing:
        raise ValueError(f"arc_vote=true needs {', '.join(missing)} in eval_save_outputs: leave eval_save_outputs "
                         f"unset (all of the reference's keys) or add them")


def run_single(ckpt: Path, args: dict, arc_vote: bool) -> int:
    """One checkpoint file, evaluated even when it has been before (the reference's evaluate.py)."""
    cfg = _load_config(ckpt.parent, args)
    save_outputs = list(args.get("eval_save_outputs") or REFERENCE_SAVE_OUTPUTS)
    _check_vote_outputs(arc_vote, save_outputs)
    check_checkpoint_file(ckpt)
    info = dist.setup(cfg.device)
    if cfg.global_batch_size % info.world_size:
        raise ValueError(f"global_batch_size={cfg.global_batch_size} is not divisible by {info.world_size} ranks")
    ev = Evaluator(ckpt.parent, cfg, info, save_outputs)
    ev.load(ckpt)
    match = STEP_NAME.fullmatch(ckpt.name)
    step = int(match.group(1)) if match else 0
    if info.is_main:
        console.print(f"evaluating {ckpt} on {cfg.data_path} (test) with {info.world_size} rank(s) on "
                      f"{info.device}, attention {ev.backend}")
    metrics, _ = ev.step(step)
    if info.is_main:
        console.print(metrics_table(metrics, f"evaluation of {ckpt.name}"))
        if arc_vote:
            vote_step(ckpt.parent, cfg.data_path, step)
    dist.teardown()
    return 0


def steps_table(run_dir: Path, steps: list[int]) -> Table:
    """One row per evaluated checkpoint: exact_accuracy and accuracy per set, and pass@k for ARC."""
    records = {s: r for s in steps if (r := _eval_record(run_dir, s)) is not None}
    sets = list(dict.fromkeys(k for r in records.values() for k in (r.get("metrics") or {})))
    ks = list(dict.fromkeys(k for r in records.values() for k in (r.get("arc") or {}) if k.startswith("pass@")))
    table = Table(title=f"checkpoints of {run_dir.name}")
    table.add_column("step", justify="right")
    cols = [(s, m) for s in sets for m in ("exact_accuracy", "accuracy")]
    for s, m in cols:
        table.add_column(f"{s}/{m}", justify="right")
    for k in ks:
        table.add_column(f"arc/{k}", justify="right")
    for step, r in records.items():
        vals = [(r.get("metrics") or {}).get(s, {}).get(m) for s, m in cols] + [(r.get("arc") or {}).get(k)
                                                                                for k in ks]
        table.add_row(str(step), *("" if v is None else f"{v:.4f}" for v in vals))
    return table


def _first_batches_estimate(info: dist.DistInfo, batches: int, checkpoints: int,
                            t0: float) -> Callable[[int], None]:
    """An on_batch callback that prints, once, how long a checkpoint and all of them will roughly take: from the
    second batch's time (the first one also pays for warm-up), or from the first when there is only one."""
    marks: list[float] = []

    def on_batch(i: int) -> None:
        if i > 1 or (i == 1 and len(marks) != 1):
            return
        if info.device.type == "cuda":
            torch.cuda.synchronize(info.device)
        marks.append(time.time())
        if i == 0 and batches > 1:
            return
        per_batch = marks[-1] - (marks[0] if i == 1 else t0)
        each = (marks[0] - t0) + per_batch * (batches - 1) if i == 1 else per_batch
        print(f"hrm-evaluate: {_duration(per_batch)} per test batch: about {_duration(each)} per checkpoint, "
              f"{_duration(each * checkpoints)} for all {checkpoints}", flush=True)

    return on_batch


def run_dir_mode(run_dir: Path, args: dict, arc_vote: bool, eval_steps) -> int:
    """Every selected step_N of a run directory without an evaluation yet, in step order, resumable."""
    steps = select_steps(run_dir, eval_steps)
    todo, done = plan_run_dir(run_dir, steps, arc_vote)
    if not todo:
        print(f"hrm-evaluate: nothing new to evaluate in {run_dir}: {_names(done)} already "
              f"{'evaluated and voted' if arc_vote else 'evaluated'} (delete a step_N_eval.json to evaluate "
              f"that checkpoint again)", flush=True)
        return 0
    cfg = _load_config(run_dir, args)
    save_outputs = list(args.get("eval_save_outputs") or REFERENCE_SAVE_OUTPUTS)
    _check_vote_outputs(arc_vote, save_outputs)
    to_evaluate = [s for s, a in todo.items() if a == "evaluate"]
    for s in to_evaluate:
        check_checkpoint_file(run_dir / f"step_{s}")
    info = dist.setup(cfg.device)
    if cfg.global_batch_size % info.world_size:
        raise ValueError(f"global_batch_size={cfg.global_batch_size} is not divisible by {info.world_size} ranks")
    ev = Evaluator(run_dir, cfg, info, save_outputs) if to_evaluate else None
    batches = 0
    if ev is not None:
        batches = _test_batches(cfg.data_path, list(ev.dataset.metadata.sets), cfg.global_batch_size,
                                cfg.eval_max_batches)
    if info.is_main:
        parts = [f"{len(to_evaluate)} of {len(steps)} checkpoint(s) of {run_dir} to evaluate"
                 + (f" ({_names(to_evaluate)})" if to_evaluate else "")]
        if len(todo) > len(to_evaluate):
            parts.append(f"{len(todo) - len(to_evaluate)} to vote from saved predictions")
        if done:
            parts.append(f"{len(done)} already done")
        if ev is not None:
            parts.append(f"{batches} test batch(es) of {cfg.global_batch_size}, {info.world_size} rank(s) on "
                         f"{info.device}, attention {ev.backend}")
            earlier = [r["seconds"] for s in done
                       if isinstance((r := _eval_record(run_dir, s) or {}).get("seconds"), int | float)]
            if earlier:
                each = sum(earlier) / len(earlier)
                parts.append(f"about {_duration(each)} each from earlier evaluations, "
                             f"{_duration(each * len(to_evaluate))} in all")
            else:
                parts.append("time estimate after the first batches")
        print("hrm-evaluate: " + "; ".join(parts), flush=True)

    previous = {s: signal.signal(s, _raise_stopped) for s in (signal.SIGTERM, signal.SIGUSR1)}
    finished: list[int] = []
    timings: list[float] = []
    try:
        for step, action in todo.items():
            t0 = time.time()
            if action == "evaluate":
                ev.load(run_dir / f"step_{step}")
                on_batch = None
                if info.is_main and not timings:
                    on_batch = _first_batches_estimate(info, batches, len(to_evaluate), t0)
                metrics, _ = ev.step(step, on_batch)
                if info.is_main:
                    console.print(metrics_table(metrics, f"evaluation of step_{step}"))
            if arc_vote and info.is_main:
                summary = vote_step(run_dir, cfg.data_path, step, from_file=action == "arc-file")
                print(f"hrm-evaluate: step_{step} ARC " + ", ".join(
                    f"{k} {100 * v:.2f}%" for k, v in summary.items() if k.startswith("pass@")), flush=True)
            dist.barrier()
            seconds = time.time() - t0
            finished.append(step)
            if action == "evaluate":
                timings.append(seconds)
            if info.is_main:
                left = [s for s in todo if s not in finished]
                eta = ""
                if left and timings:
                    n_eval = sum(todo[s] == "evaluate" for s in left)
                    eta = f"; about {_duration(n_eval * sum(timings) / len(timings))} left for {len(left)} more"
                print(f"hrm-evaluate: step_{step} done in {_duration(seconds)} ({len(finished)}/{len(todo)}){eta}",
                      flush=True)
    except _Stopped as e:
        for tmp in run_dir.glob(f".step_*.tmp-{os.getpid()}"):
            tmp.unlink(missing_ok=True)  # the file that was being written when the signal came
        if info.is_main:
            left = list(plan_run_dir(run_dir, list(todo), arc_vote)[0])  # what is on disk, whenever the signal came
            print(f"hrm-evaluate: {e}: stopped with {len(todo) - len(left)} of {len(todo)} done; run the same "
                  f"command to continue with the remaining {len(left)} ({_names(left)})", flush=True)
        dist.teardown()
        return EXIT_INTERRUPTED
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if info.is_main:
        console.print(steps_table(run_dir, steps))
    dist.teardown()
    return 0


def run(argv: list[str]) -> int:
    args = _parse_args(argv)
    ckpt = args.pop("checkpoint", None)
    arc_vote = args.pop("arc_vote", False)
    if not isinstance(arc_vote, bool):
        raise ValueError(f"arc_vote={arc_vote!r} must be true or false; fix: arc_vote=true")
    eval_steps = args.pop("eval_steps", None)
    if not ckpt:
        raise ValueError("missing checkpoint=PATH: point it at a run directory or a step_N file inside one")
    ckpt = Path(str(ckpt))
    if ckpt.is_dir():
        return run_dir_mode(ckpt, args, arc_vote, eval_steps)
    if not ckpt.is_file():
        raise ValueError(f"checkpoint {ckpt} not found: pass a run directory or one of its step_N files")
    if eval_steps is not None:
        raise ValueError(f"eval_steps= picks checkpoints of a run directory, but {ckpt} is one file: pass "
                         f"checkpoint={ckpt.parent}, or drop eval_steps")
    return run_single(ckpt, args, arc_vote)


def main(argv: list[str] | None = None) -> int:
    from hrm.errors import debug_enabled, one_line, report

    try:
        return run(sys.argv[1:] if argv is None else argv)
    except ValueError as e:  # bad input (DatasetError and ConfigError too): one line
        if debug_enabled():
            raise
        report("hrm-evaluate", one_line(e))
        return 2
    except KeyboardInterrupt:
        report("hrm-evaluate", "interrupted (Ctrl-C); run the same command to continue")
        return 130
    except Exception as e:
        if debug_enabled():
            raise
        report("hrm-evaluate", one_line(e))
        return 1


if __name__ == "__main__":
    sys.exit(main())
