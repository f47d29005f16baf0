"""`hrm-doctor`: what this machine, this config and this batch size will do, before a run is queued.

    hrm-doctor env [--json]                                  torch / CUDA / attention / NCCL / W&B / modules
    hrm-doctor config +experiment=X [overrides] [--gpus N]   resolved config, batch split, steps, warnings
    hrm-doctor memory +experiment=X --batch 32,64,128        measured peak memory and step time per batch

Starts fast: torch is imported only by `env` and `memory` (and by `config` only when the arch uses
grad_mode settings that must be checked by the model code). `memory` runs each batch size in its own
subprocess, so one size's allocations (or out-of-memory) cannot disturb the next.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

MB = 1024 * 1024
# (vocab_size, seq_len) of each builder's datasets (spec §5), for configs whose dataset is not built yet.
BUILD_SHAPES = {"sudoku": (11, 81), "maze": (6, 900), "arc": (12, 900)}


def _print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    print()


def _table(title: str, rows: list[tuple[str, str]]):
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in rows:
        table.add_row(key, value)
    return table


# --- env ---------------------------------------------------------------------------------------------

def _attention_check(name: str, device, dtype) -> dict:
    """Does `name` resolve here, and does it agree with a plain softmax attention (sdpa) / with sdpa?"""
    import importlib.util

    import torch

    from hrm.model.layers import attention_function, resolve_attn_backend

    module = {"fa3": "flash_attn_interface", "fa2": "flash_attn"}.get(name)
    if module is not None and importlib.util.find_spec(module) is None:
        return {"ok": False, "status": f"not installed ({module})"}
    try:
        resolve_attn_backend(name, device, dtype)
    except ValueError as e:
        return {"ok": False, "status": "unusable here: " + str(e).split(": ", 1)[-1]}
    try:
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(2, 33, 4, 64, generator=g).to(device, dtype) for _ in range(3))
        out = attention_function(name)(q, k, v, False).float()
        if name == "sdpa":  # against the formula, in float64
            q64, k64, v64 = (t.double() for t in (q, k, v))
            scores = torch.einsum("bshd,bthd->bhst", q64, k64) / 8.0
            ref = torch.einsum("bhst,bthd->bshd", scores.softmax(-1), v64).float()
        else:
            ref = attention_function("sdpa")(q, k, v, False).float()
        err = (out - ref).abs().max().item()
    except Exception as e:  # a broken kernel install fails here, not at import
        return {"ok": False, "status": f"fails on a random input: {type(e).__name__}: {e}"}
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    against = "plain attention" if name == "sdpa" else "SDPA"
    return {"ok": err <= tol, "max_abs_err": err,
            "status": f"{'OK' if err <= tol else 'MISMATCH'}: agrees with {against} to {err:.1e} ({dtype})"}


def env_report() -> dict:
    """Everything a run depends on that is a property of this machine and its software stack."""
    import torch
    import torch.distributed as torch_dist

    from hrm.model.layers import resolve_attn_backend
    from hrm.track import resolve_wandb_mode

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    gpus = []
    for i in range(torch.cuda.device_count() if cuda else 0):
        props = torch.cuda.get_device_properties(i)
        gpus.append({"index": i, "name": props.name, "memory_gb": round(props.total_memory / 2**30, 2),
                     "capability": f"{props.major}.{props.minor}"})
    nccl = {"available": bool(torch_dist.is_available() and torch_dist.is_nccl_available())}
    if cuda and nccl["available"]:
        try:
            nccl["version"] = ".".join(map(str, torch.cuda.nccl.version()))
        except Exception as e:
            nccl["version"] = f"unknown ({type(e).__name__})"
    try:
        wandb_mode = resolve_wandb_mode("auto")
    except ValueError as e:
        wandb_mode = f"invalid WANDB_MODE ({e})"
    import importlib.util

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda_available": cuda,
        "cuda_version": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "gpus": gpus,
        "cpu_threads": torch.get_num_threads(),
        "attention": {"device": device.type, "dtype": str(dtype).replace("torch.", ""),
                      "auto_picks": resolve_attn_backend("auto", device, dtype),
                      **{name: _attention_check(name, device, dtype) for name in ("sdpa", "fa2", "fa3")}},
        "nccl": nccl,
        "wandb": {"mode": wandb_mode, "installed": importlib.util.find_spec("wandb") is not None},
        "modules": {key: [p for p in os.environ.get(key, "").split(":") if p]
                    for key in ("LOADEDMODULES", "MODULEPATH")},
        "slurm_job": os.environ.get("SLURM_JOB_ID"),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def print_env(report: dict) -> None:
    from rich.console import Console

    gpus = "; ".join(f"{g['index']}: {g['name']} ({g['memory_gb']} GiB, sm {g['capability']})"
                     for g in report["gpus"]) or "none"
    att = report["attention"]
    rows = [("python", report["python"]), ("platform", report["platform"]), ("torch", report["torch"]),
            ("CUDA", f"{report['cuda_version']} (cuDNN {report['cudnn']})" if report["cuda_available"]
             else f"not available (torch built for CUDA {report['cuda_version']})"),
            ("GPUs", gpus), ("CPU threads", str(report["cpu_threads"])),
            ("attention auto", f"{att['auto_picks']} (on {att['device']}, {att['dtype']})")]
    rows += [(f"attention {name}", att[name]["status"]) for name in ("sdpa", "fa2", "fa3")]
    nccl = report["nccl"]
    rows += [("NCCL", ("available" + (f", {nccl['version']}" if "version" in nccl else ""))
              if nccl["available"] else "not available (multi-GPU runs need it)"),
             ("W&B", f"mode {report['wandb']['mode']} (auto), "
                     f"{'installed' if report['wandb']['installed'] else 'not installed'}"),
             ("LOADEDMODULES", " ".join(report["modules"]["LOADEDMODULES"]) or "-"),
             ("MODULEPATH", " ".join(report["modules"]["MODULEPATH"]) or "-"),
             ("Slurm job", report["slurm_job"] or "-")]
    Console().print(_table("hrm-doctor env", rows))


# --- config ------------------------------------------------------------------------------------------

def compose_config(overrides: list[str]):
    """The trainer's config for these Hydra overrides, without running anything; every key's type and range checked
    (hrm.schema, as hrm-train does): ValueError with one line, a typo'd key answered with the close one."""
    from hrm.config import compose_checked
    from hrm.schema import check_train_config

    cfg = compose_checked(list(overrides))
    check_train_config(cfg)
    return cfg


def _build_command(cfg, data_path: Path) -> str:
    """The experiment's `build:` recipe as a command line (the Slurm layer's translation when present)."""
    from omegaconf import OmegaConf

    build = OmegaConf.to_container(cfg.build, resolve=True) if cfg.get("build") else None
    try:
        from slurm.pipeline import build_argv

        return " ".join(build_argv(build, data_path))
    except Exception:  # no recipe, or no Slurm layer: say what is known
        kind = (build or {}).get("kind", "KIND")
        return f"hrm-data build {kind} --output-dir {data_path} ..."


def _dataset_info(data_path: Path, cfg) -> dict:
    """Metadata and the sampling picture (hrm.data.check) if the dataset is built; else what is known."""
    from hrm.data.format import DatasetError, read_metadata

    info: dict = {"path": str(data_path), "built": (data_path / "train" / "dataset.json").is_file()}
    if not info["built"]:
        info["note"] = f"not built yet: build it with `{_build_command(cfg, data_path)}` or fix data_path"
        return info
    try:
        info["metadata"] = vars(read_metadata(data_path / "train"))
    except DatasetError as e:
        info["built"], info["note"] = False, str(e)
        return info
    try:
        from hrm.data.check import check_dataset
    except ImportError:
        return info
    check = check_dataset(data_path, cfg.global_batch_size, cfg.epochs, cfg.eval_interval,
                          cfg.lr_warmup_steps, full=False)
    info.update(check={k: check.get(k) for k in ("ok", "errors", "warnings", "sampling")})
    return info


def _near_multiples(value: int, n: int) -> str:
    lo = value // n * n
    options = [m for m in (lo, lo + n) if m > 0]
    return " or ".join(str(m) for m in options)


def _grad_settings_problem(arch) -> str | None:
    """Check the grad_mode settings with the model's own rule (imports torch, so only when they are set)."""
    if arch.get("grad_mode", "one_step") == "one_step" and arch.get("grad_window") is None \
            and arch.get("memory_limit_mb") is None:
        return None
    from hrm.grad_settings import validate_grad_settings

    try:
        validate_grad_settings(arch.get("grad_mode", "one_step"), arch.get("grad_window"),
                               arch.get("memory_limit_mb"), arch.H_cycles, arch.L_cycles)
    except ValueError as e:
        return str(e)
    return None


def _data_path(data_path: str) -> Path:
    """Where hrm-slurm would put this data_path on this machine's cluster (on Savio: under scratch)."""
    from slurm import pipeline, profiles

    try:
        return pipeline.resolve_data_path(data_path, profiles.load_cluster(pipeline.default_cluster()))
    except profiles.RequestError:
        return Path(data_path)


def config_report(overrides: list[str], gpus: int | None = None) -> dict:
    """What a run of this config will do: batch split, steps, warmup, sampling regime, and warnings."""
    from omegaconf import OmegaConf

    from hrm.config import to_container, validate_config

    cfg = compose_config(overrides)
    warnings: list[str] = []
    errors: list[str] = []
    resources = cfg.get("resources") or {}
    if gpus is None:
        res_gpus = int(resources.get("gpus") or 0)
        gpus, gpus_from = ((res_gpus, "the experiment's resources.gpus") if res_gpus > 0
                           else (1, "default (1 process)"))
    else:
        gpus_from = "--gpus"
    if gpus < 1:
        raise ValueError(f"--gpus {gpus}: give the number of GPUs (ranks) the run will use, at least 1")
    G = int(cfg.global_batch_size)
    report: dict = {"overrides": list(overrides), "config": to_container(cfg), "gpus": gpus,
                    "gpus_from": gpus_from, "global_batch_size": G, "per_gpu_batch": G / gpus,
                    "divisible": G % gpus == 0, "warnings": warnings, "errors": errors}
    try:
        validate_config(cfg, 1)
    except ValueError as e:
        errors.append(str(e))
    if G % gpus:
        errors.append(f"global_batch_size={G} is not divisible by {gpus} GPUs (ranks), so the batch cannot "
                      f"be split evenly and the trainer refuses to start: use global_batch_size="
                      f"{_near_multiples(G, gpus)}, or another --gpus / resources.gpus")
    grad_problem = _grad_settings_problem(cfg.arch)
    if grad_problem:
        errors.append(grad_problem)

    data = _dataset_info(_data_path(str(cfg.data_path)), cfg)
    report["dataset"] = data
    sampling = (data.get("check") or {}).get("sampling") or {}
    if data.get("check"):
        errors.extend(data["check"]["errors"])
        warnings.extend(data["check"]["warnings"])
    if not data["built"]:
        warnings.append(f"dataset {cfg.data_path}: {data['note']}; steps and sampling regime are unknown "
                        f"until then")

    total = sampling.get("total_steps")
    report["total_steps"] = total
    report["steps_to_run"] = min(total, cfg.max_steps) if (total is not None and cfg.max_steps) else total
    warm = int(cfg.lr_warmup_steps)
    per_epoch = sampling.get("examples_per_epoch")
    report["warmup"] = {"steps": warm, "samples": warm * G,
                        "passes": round(warm * G / per_epoch, 3) if per_epoch else None}
    report["regime"] = sampling.get("mode")
    report["groups"] = sampling.get("groups")
    if report["regime"] == "survey":
        warnings.append(f"survey sampling: global_batch_size={G} > {sampling['groups']} groups, so every "
                        f"batch holds repeated groups (other augmentations) and one epoch is less than one "
                        f"batch; "
                        f"expected for small augmented sets, else lower global_batch_size to <= "
                        f"{sampling['groups']}")
    if total and total > 0 and warm > 0 and total > warm > 0.5 * total:
        warnings.append(f"warmup is {warm / total:.0%} of the run ({warm} of {total} steps): the lr is at "
                        f"its base value for a short time only; lower lr_warmup_steps")
    if cfg.max_steps and total is not None and cfg.max_steps < warm:
        warnings.append(f"max_steps={cfg.max_steps} stops before warmup ends ({warm} steps): the run never "
                        f"trains at the full lr; lower lr_warmup_steps for short runs")
    per_gpu = G // gpus
    if per_gpu and resources.get("gpus") and per_gpu < 8:
        warnings.append(f"{per_gpu} rows per GPU leaves the GPU mostly idle: raise global_batch_size or use "
                        f"fewer GPUs")
    report["resolved_yaml"] = OmegaConf.to_yaml(cfg, resolve=True)
    return report


def print_config(report: dict) -> None:
    from rich.console import Console

    console = Console()
    console.print(report.pop("resolved_yaml", ""), markup=False, highlight=False)
    data = report["dataset"]
    meta = data.get("metadata")
    rows = [("data_path", f"{data['path']} ({'built' if data['built'] else 'not built'})")]
    if meta:
        rows.append(("dataset", f"{meta['total_groups']:,} groups, {meta['mean_puzzle_examples']:.4g} "
                                f"examples per puzzle, seq_len {meta['seq_len']}, "
                                f"vocab {meta['vocab_size']}, "
                                f"{meta['num_puzzle_identifiers']:,} puzzle ids"))
    rows += [("GPUs", f"{report['gpus']} ({report['gpus_from']})"),
             ("global batch", f"{report['global_batch_size']:,}"),
             ("per-GPU batch", f"{report['per_gpu_batch']:g}"
              + ("" if report["divisible"] else " (NOT whole)")),
             ("total steps", "unknown (dataset not built)" if report["total_steps"] is None
              else f"{report['total_steps']:,}"
              + (f" (max_steps stops at {report['steps_to_run']:,})"
                 if report["steps_to_run"] != report["total_steps"] else ""))]
    w = report["warmup"]
    passes = f", {w['passes']:g} passes over the data" if w["passes"] is not None else ""
    rows.append(("warmup", f"{w['steps']:,} steps = {w['samples']:,} samples{passes}"))
    if report["regime"]:
        rows.append(("sampling", f"{report['regime']} (global batch {report['global_batch_size']:,} vs "
                                 f"{report['groups']:,} groups)"))
    console.print(_table("hrm-doctor config", rows))
    for line in report["warnings"]:
        console.print(f"[yellow]warning:[/] {line}", highlight=False)
    for line in report["errors"]:
        console.print(f"[red]error:[/] {line}", highlight=False)
    console.print("[green]OK[/]" if not report["errors"] else f"[red]{len(report['errors'])} error(s)[/]")


# --- memory ------------------------------------------------------------------------------------------



def measure_batch(spec: dict) -> dict:
    """One batch size in this process: build, run `steps` training steps, report peak memory and time.

    Memory is counted above what the process held before the model was built (Python, torch, the code):
    model, optimizer state, carry, activations and gradients. On CPU the whole process's peak is
    reported too, because that is what a memory limit sees.
    """
    import time

    import torch

    import hrm.model.hrm_act  # noqa: F401  (imported before the baseline: code is not training memory)
    import hrm.model.losses  # noqa: F401
    from hrm.data.format import DatasetMetadata
    from hrm.model import build_model
    from hrm.model.sqrt_bptt import plan_for_batch
    from hrm.optim import AdamATan2
    from hrm.rss import peak_rss, reset_peak_rss, rss_bytes

    device = torch.device(spec["device"])
    B = spec["batch"]
    meta = DatasetMetadata(**spec["meta"])
    torch.manual_seed(0)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats()

    def used() -> int:
        return torch.cuda.memory_allocated() if cuda else rss_bytes()

    base = used()
    try:
        model = build_model(spec["arch"], meta, B, device).train()
        opt = AdamATan2(model.parameters(), lr=1e-4, weight_decay=0.1)
        g = torch.Generator().manual_seed(0)
        shape = (B, meta.seq_len)
        batch = {"inputs": torch.randint(0, meta.vocab_size, shape, generator=g, dtype=torch.int32),
                 "labels": torch.randint(0, meta.vocab_size, shape, generator=g, dtype=torch.int32),
                 "puzzle_identifiers": torch.randint(0, meta.num_puzzle_identifiers, (B,), generator=g,
                                                     dtype=torch.int32)}
        batch = {k: v.to(device) for k, v in batch.items()}
        plan_for_batch(model, batch)  # grad_mode=sqrt with memory_limit_mb: measure and choose first
        model_bytes = used() - base
        if not cuda:
            reset_peak_rss()
        carry = model.initial_carry(batch)
        times = []
        for _ in range(spec["steps"]):
            t0 = time.perf_counter()
            carry, loss, *_ = model(carry=carry, batch=batch, return_keys=())
            ((1 / B) * loss).backward()
            opt.step()
            opt.zero_grad()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    except torch.cuda.OutOfMemoryError as e:
        return {"batch": B, "fits": False, "status": f"does not fit (CUDA out of memory: {str(e)[:120]})"}
    except MemoryError:
        return {"batch": B, "fits": False, "status": "does not fit (out of host memory)"}
    except ValueError as e:  # e.g. arch.memory_limit_mb below one module application at this batch
        return {"batch": B, "fits": False, "status": f"error: {e}"}
    if cuda:
        peak = process_peak = torch.cuda.max_memory_allocated()
    else:
        process_peak = peak_rss()[0]
        peak = process_peak - base
    # Timing leaves out the first step (allocator warm-up, lazy initialisation) when there are more.
    timed = times[1:] if len(times) > 1 else times
    return {"batch": B, "fits": True, "status": "ok", "peak_mb": round(peak / MB, 2),
            "process_peak_mb": round(process_peak / MB, 2), "model_mb": round(model_bytes / MB, 2),
            "step_s": round(min(timed), 4), "samples_per_s": round(B / min(timed), 1),
            "measure": "cuda max_memory_allocated" if cuda else "peak RSS (VmHWM) above the pre-model RSS"}


def _run_worker(spec: dict, timeout: float | None) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    cmd = [sys.executable, "-m", "hrm.doctor", "_measure"]
    try:
        out = subprocess.run(cmd, input=json.dumps(spec), capture_output=True, text=True, env=env,
                             timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"batch": spec["batch"], "fits": False, "status": f"timed out after {timeout:g} s"}
    if out.returncode in (-9, 137):
        return {"batch": spec["batch"], "fits": False, "status": "does not fit (killed: out of host memory)"}
    lines = out.stdout.strip().splitlines()
    if out.returncode or not lines:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return {"batch": spec["batch"], "fits": False, "status": f"failed: {tail}"}
    return json.loads(lines[-1])


def parse_batches(text: str) -> list[int]:
    try:
        batches = sorted({int(b) for b in text.split(",") if b.strip()})
    except ValueError:
        raise ValueError(f"--batch {text!r}: give comma-separated batch sizes, "
                         f"e.g. --batch 32,64,128") from None
    if not batches or batches[0] < 1:
        raise ValueError(f"--batch {text!r}: batch sizes must be positive integers, e.g. --batch 32,64,128")
    return batches


def memory_report(overrides: list[str], batches: list[int], steps: int = 3, limit_gb: float | None = None,
                  device: str = "auto", timeout: float | None = 600) -> dict:
    """Measured peak memory and step time per (per-GPU) batch size, and the largest that fits the limit."""
    import torch
    from omegaconf import OmegaConf

    from hrm.data.format import DatasetError, DatasetMetadata, read_metadata

    if steps < 1:
        raise ValueError(f"--steps {steps}: run at least 1 step per batch size")
    cfg = compose_config(overrides)
    arch = OmegaConf.to_container(cfg.arch, resolve=True)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but no CUDA GPU is visible: use --device cpu (or auto)")
    data_path = Path(cfg.data_path)
    try:
        meta = read_metadata(data_path / "train")
        shape_from = f"dataset {data_path}"
    except DatasetError:
        kind = (cfg.get("build") or {}).get("kind")
        if kind not in BUILD_SHAPES:
            raise ValueError(f"dataset {data_path} is not built and build.kind={kind!r} gives no shape: "
                             f"build it (hrm-data build ...) or set data_path to a built dataset") from None
        vocab, seq_len = BUILD_SHAPES[kind]
        meta = DatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=vocab,
                               seq_len=seq_len, num_puzzle_identifiers=1, total_groups=1,
                               mean_puzzle_examples=1.0)
        shape_from = f"{kind} builder's shape (dataset {data_path} not built yet; puzzle table of 1 row)"
    if limit_gb is None:
        if device == "cuda":
            limit_gb = torch.cuda.get_device_properties(0).total_memory / 2**30
        else:
            import psutil

            limit_gb = psutil.virtual_memory().total / 2**30
    rows = []
    for B in batches:
        spec = {"batch": B, "device": device, "steps": steps, "arch": arch, "meta": vars(meta)}
        row = _run_worker(spec, timeout)
        if row.get("fits") and row["process_peak_mb"] > limit_gb * 1024:
            row.update(fits=False, status=f"over the {limit_gb:g} GB limit")
        rows.append(row)
    fitting = [r["batch"] for r in rows if r.get("fits")]
    return {"overrides": list(overrides), "device": device, "limit_gb": round(limit_gb, 3),
            "shape_from": shape_from, "seq_len": meta.seq_len, "vocab_size": meta.vocab_size,
            "steps": steps, "rows": rows,
            "largest_fitting_batch": max(fitting) if fitting else None,
            "grad_mode": arch.get("grad_mode", "one_step")}


def print_memory(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"hrm-doctor memory on {report['device']} (limit {report['limit_gb']:g} GB, "
                        f"grad_mode {report['grad_mode']}, {report['steps']} steps each)",
                  title_justify="left")
    for col in ("per-GPU batch", "peak MB", "process peak MB", "model MB", "step s", "samples/s", "status"):
        table.add_column(col, justify="left" if col == "status" else "right")
    for r in report["rows"]:
        table.add_row(str(r["batch"]), f"{r['peak_mb']:,.1f}" if "peak_mb" in r else "-",
                      f"{r['process_peak_mb']:,.1f}" if "process_peak_mb" in r else "-",
                      f"{r['model_mb']:,.1f}" if "model_mb" in r else "-",
                      f"{r['step_s']:.3f}" if "step_s" in r else "-",
                      f"{r['samples_per_s']:,.0f}" if "samples_per_s" in r else "-", r["status"])
    console.print(table)
    console.print(f"shape: seq_len {report['seq_len']}, vocab {report['vocab_size']} "
                  f"from {report['shape_from']}", highlight=False)
    best = report["largest_fitting_batch"]
    console.print(f"largest batch that fits: {best}" if best else "[red]no batch size fits[/]",
                  highlight=False)


# --- CLI ---------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from hrm.errors import ShortParser

    parser = ShortParser(prog="hrm-doctor", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("env", help="torch, CUDA, GPUs, attention backends, NCCL, W&B mode, modules")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("config", help="the resolved config and what a run of it will do")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. +experiment=sudoku_demo lr=1e-3")
    p.add_argument("--gpus", type=int, default=None, help="GPUs (ranks) of the run (default: resources.gpus)")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("memory", help="measured peak memory and step time per batch size")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. +experiment=sudoku_demo")
    p.add_argument("--batch", required=True, help="per-GPU batch sizes, comma-separated: 32,64,128")
    p.add_argument("--steps", type=int, default=3, help="training steps per batch size (default 3)")
    p.add_argument("--limit-gb", type=float, default=None, help="memory limit (default: the GPU's, or RAM)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--timeout", type=float, default=600, help="seconds per batch size (default 600)")
    p.add_argument("--json", action="store_true")
    return parser


def _lm_experiment(args: list[str]) -> bool:
    from slurm.lm_stages import is_lm_experiment

    exp = next((a.split("=", 1)[1] for a in args if a.lstrip("+").startswith("experiment=")), None)
    return is_lm_experiment(exp)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_measure"]:  # the memory probe's child process; internal, so not in --help
        print(json.dumps(measure_batch(json.loads(sys.stdin.read()))))
        return 0
    if argv[:1] == ["memory"] and _lm_experiment(argv[1:]):  # HRM-Text: its own estimate and probe
        from hrm.lm.memory import main as lm_memory

        return lm_memory(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        if args.command == "env":
            report = env_report()
            if args.json:
                _print_json(report)
            else:
                print_env(report)
            return 0
        if args.command == "config":
            report = config_report(args.overrides, args.gpus)
            if args.json:
                report.pop("resolved_yaml", None)
                _print_json(report)
            else:
                print_config(report)
            return 1 if report["errors"] else 0
        report = memory_report(args.overrides, parse_batches(args.batch), args.steps, args.limit_gb,
                               args.device, args.timeout)
        if args.json:
            _print_json(report)
        else:
            print_memory(report)
        return 0 if report["largest_fitting_batch"] else 1
    except ValueError as e:
        print(f"hrm-doctor: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hrm-doctor: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    except Exception as e:  # a fault: one line (HRM_DEBUG=1: the traceback)
        from hrm.errors import debug_enabled, one_line

        if debug_enabled():
            raise
        print(f"hrm-doctor: error: {one_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
