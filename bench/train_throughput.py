"""Training-step throughput of HRM at the paper's shapes, comparable with the reference's H100 numbers.

    python -m bench.train_throughput --shape sudoku|maze|arc [--batch N] [--steps N] [--warmup N]
        [--compile | --no-compile] [--compile-mode M | --cudagraphs] [--optimizer-impl I] [--attn-backend B]
        [--eval] [--small] [--json OUT] [--compare-reference] [--dtype D] [--puzzle-ids N] [--device D] [--threads N]

A timed training step is what hrm-train does for each batch: copy the batch to the device,
`hrm.train.train_step` (one ACT segment with its target-Q forward, backward of loss / global batch,
AdamATan2 + the sparse-embedding SignSGD at the scheduled lr) and the metrics reduction, whose host sync
training pays too. `--eval` times one `hrm.evaluate.evaluate` call on one batch instead: halt_max_steps
segments, no gradient. Batches are synthetic (random tokens of the dataset's vocabulary, the dataset's
ignore convention, puzzle identifiers); the data loader, logging and the multi-GPU gradient all-reduce are
not timed. The model, optimizer settings and per-GPU batch come from configs/ (cfg_pretrain, arch/hrm_v1
and the shape's experiment), so the harness measures what a run would do.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from hrm.config import config_dir, default_config
from hrm.data.format import DatasetMetadata
from hrm.dist import DistInfo
from hrm.model.hrm_act import HRMConfig
from hrm.model.layers import swiglu_width
from hrm.model.losses import IGNORE_LABEL_ID
from hrm.rss import peak_rss


@dataclass(frozen=True)
class Shape:
    seq_len: int
    vocab_size: int
    num_puzzle_identifiers: int
    experiment: str  # configs/experiment/<name>.yaml: optimizer settings, global batch and GPU count


SHAPES = {
    "sudoku": Shape(81, 11, 1, "sudoku_full"),
    "maze": Shape(900, 6, 1, "maze"),
    # ARC-1 with 1000 augmentations has ~876,708 puzzle identifiers; the reference's numbers were taken with
    # 1000. The count only sizes the puzzle table (a buffer that SignSGD updates row-wise), so it changes
    # memory (876k x 512 fp32 = 1.8 GB) but hardly the step time: --puzzle-ids 876708 for the real table.
    "arc": Shape(900, 12, 1000, "arc1"),
}

# The public reference implementation (SDPA), one H100 80GB, torch 2.11 with torch.compile (issue 7).
REFERENCE_H100 = {
    "sudoku": {"batch": 768, "step_ms": 85.1, "samples_per_s": 9029.0, "peak_memory_gb": 10.6},
    "arc": {"batch": 96, "step_ms": 138.7, "samples_per_s": 692.0, "peak_memory_gb": 14.4},
}

# --small: a model that runs a step in well under a second on a laptop CPU (the shape's sequence is kept).
SMALL_ARCH = {"hidden_size": 64, "num_heads": 2, "H_layers": 1, "L_layers": 1, "halt_max_steps": 4}
SMALL_BATCH = 4
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")
SCHEDULE_STEPS = 100_000  # total_steps for the lr schedule: its value changes no cost, only the lr


def experiment_config(shape: str) -> DictConfig:
    """cfg_pretrain + arch/hrm_v1 + the shape's experiment, as `hrm-train +experiment=...` composes them."""
    cfg = default_config()
    return OmegaConf.merge(cfg, OmegaConf.load(config_dir() / "experiment" / f"{SHAPES[shape].experiment}.yaml"))


def experiment_gpus(cfg: DictConfig) -> int:
    return max(1, int((cfg.get("resources") or {}).get("gpus") or 1))


def default_batch(shape: str) -> int:
    """The experiment's per-GPU batch: global_batch_size / GPUs (Sudoku 768/1, Maze 768/4, ARC 768/8)."""
    cfg = experiment_config(shape)
    return cfg.global_batch_size // experiment_gpus(cfg)


def total_seq_len(config: HRMConfig) -> int:
    """Positions the blocks see: the puzzle-embedding prefix (ceil(puzzle_emb_ndim / D) rows) + the sequence."""
    return config.seq_len + -(config.puzzle_emb_ndim // -config.hidden_size)


def step_flops(config: HRMConfig, batch: int, train: bool = True) -> int:
    """Matmul FLOPs (2 per multiply-add) of one timed step, from the config alone (grad_mode one_step).

    Per block application and token: attention projections 2·D·3D + 2·D·D, attention scores and values
    2·2·S·D (S = sequence plus puzzle prefix), SwiGLU 2·D·2I + 2·I·D. One inner forward applies the L
    blocks H_cycles·L_cycles times and the H blocks H_cycles times, then the LM head (2·D·V on all S
    positions) and the Q head (2·D·2 per row). A training step runs two inner forwards (the segment and
    the target-Q forward) and a backward of twice the forward FLOPs of the differentiated part: the last
    L and H application and both heads. Evaluation runs halt_max_steps inner forwards and no backward.
    Norms, RoPE, softmax, losses and the optimizers are elementwise and not counted; a compiled step may
    also drop the target-Q forward's unused LM head (0.01% of the Sudoku step).
    """
    if config.grad_mode != "one_step":
        raise ValueError(f"step_flops counts grad_mode=one_step only, not {config.grad_mode!r}")
    D, V, S = config.hidden_size, config.vocab_size, total_seq_len(config)
    inter = swiglu_width(D, config.expansion)
    tokens = batch * S
    block = tokens * (2 * D * 3 * D + 2 * D * D + 2 * D * 2 * inter + 2 * inter * D) + batch * 4 * S * S * D
    heads = tokens * 2 * D * V + batch * 2 * D * 2
    applications = config.H_cycles * config.L_cycles * config.L_layers + config.H_cycles * config.H_layers
    forward = applications * block + heads
    if not train:
        return config.halt_max_steps * forward
    differentiated = (config.L_layers + config.H_layers) * block + heads
    return 2 * forward + 2 * differentiated


def synthetic_batch(shape: str, seq_len: int, vocab_size: int, num_ids: int, batch: int,
                    generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Rows as the loader collates them (int32, ignored labels -100); ARC rows are random grids with EOS
    marks and PAD around them, Sudoku and Maze rows are full (tokens 1..vocab-1, 0 is PAD)."""
    def tokens(low: int, size: tuple[int, ...]) -> torch.Tensor:
        return torch.randint(low, vocab_size, size, generator=generator, dtype=torch.int32)

    if shape == "arc":
        side = round(seq_len**0.5)
        h = torch.randint(1, side + 1, (batch, 1, 1), generator=generator)
        w = torch.randint(1, side + 1, (batch, 1, 1), generator=generator)
        r, c = torch.arange(side).view(1, side, 1), torch.arange(side).view(1, 1, side)
        inside = (r < h) & (c < w)
        eos = ((r == h) & (c < w)) | ((c == w) & (r < h))  # the corner (h, w) stays PAD
        inputs = torch.where(inside, tokens(2, (batch, side, side)), torch.where(eos, 1, 0)).to(torch.int32)
        labels = torch.where(inside, tokens(2, (batch, side, side)), torch.where(eos, 1, IGNORE_LABEL_ID))
        inputs, labels = inputs.view(batch, seq_len), labels.to(torch.int32).view(batch, seq_len)
    else:
        inputs, labels = tokens(1, (batch, seq_len)), tokens(1, (batch, seq_len))
    ids = (torch.randint(1, num_ids, (batch,), generator=generator, dtype=torch.int32) if num_ids > 1
           else torch.zeros(batch, dtype=torch.int32))
    return {"inputs": inputs, "labels": labels, "puzzle_identifiers": ids}


class TrainLoop:
    """hrm-train's work per batch, on synthetic batches: copy to the device, train_step, metrics reduction."""

    def __init__(self, model: torch.nn.Module, step_model: torch.nn.Module, cfg: DictConfig,
                 batches: list[dict[str, torch.Tensor]], device: torch.device, global_batch_size: int,
                 cudagraphs: bool = False):
        from hrm.train import build_optimizers

        self.model, self.step_model, self.cfg, self.batches = model, step_model, cfg, batches
        self.device, self.gbs, self.cudagraphs = device, global_batch_size, cudagraphs
        self.optimizers, self.base_lrs = build_optimizers(model, cfg, world_size=1)
        self.info = DistInfo(device=device)
        self.carry, self.step = None, 0

    def __call__(self) -> dict[str, float]:
        from hrm.optim import cosine_schedule_with_warmup_lr
        from hrm.train import _reduce_train_metrics, train_step

        cpu_batch = self.batches[self.step % len(self.batches)]
        batch = {k: v.to(self.device, non_blocking=True) for k, v in cpu_batch.items()}
        if self.carry is None:
            self.carry = self.model.initial_carry(batch)
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        lrs = [cosine_schedule_with_warmup_lr(self.step + 1, base_lr, self.cfg.lr_warmup_steps, SCHEDULE_STEPS,
                                              self.cfg.lr_min_ratio) for base_lr in self.base_lrs]
        self.carry, metrics = train_step(self.step_model, self.carry, batch, self.optimizers, lrs, self.gbs)
        self.step += 1
        return _reduce_train_metrics(metrics, self.gbs, self.info)


class _OneBatch:
    """The part of PuzzleDataset that `evaluate` reads, serving one fixed batch."""

    def __init__(self, metadata: DatasetMetadata, batch: dict[str, torch.Tensor]):
        self.metadata, self.batch = metadata, batch

    def test_batches(self):
        yield "all", self.batch, self.batch["inputs"].shape[0]


class EvalLoop:
    """One `hrm.evaluate.evaluate` call on one batch: halt_max_steps segments without gradient."""

    def __init__(self, step_model: torch.nn.Module, metadata: DatasetMetadata,
                 batches: list[dict[str, torch.Tensor]], device: torch.device):
        self.step_model, self.metadata, self.batches = step_model, metadata, batches
        self.info, self.step = DistInfo(device=device), 0

    def __call__(self) -> dict[str, float]:
        from hrm.evaluate import evaluate

        data = _OneBatch(self.metadata, self.batches[self.step % len(self.batches)])
        self.step += 1
        metrics, _ = evaluate(self.step_model, data, self.info)
        return {f"eval/{k}": v for k, v in metrics["all"].items()}


@dataclass
class Bench:
    loop: TrainLoop | EvalLoop
    config: HRMConfig
    backend: str
    compiled: bool


def build(shape: str, batch: int, device: torch.device, *, train: bool = True, small: bool = False,
          dtype: str | None = None, compile: bool = False, compile_mode: str = "default",
          optimizer_impl: str | None = None, attn_backend: str | None = None, puzzle_ids: int | None = None,
          arch_overrides: dict | None = None, seed: int = 0) -> Bench:
    """The model, optimizers and step of `shape` as a run of its experiment would build them."""
    from hrm.model import build_model

    cfg = experiment_config(shape)
    arch_over = {**(SMALL_ARCH if small else {}), **(arch_overrides or {})}
    arch_over["forward_dtype"] = dtype or ("bfloat16" if device.type == "cuda" else "float32")
    if attn_backend:
        arch_over["attn_backend"] = attn_backend
    cfg = OmegaConf.merge(cfg, {"arch": arch_over})
    if optimizer_impl:
        cfg.optimizer_impl = optimizer_impl
    s = SHAPES[shape]
    meta = DatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=s.vocab_size,
                           seq_len=s.seq_len, num_puzzle_identifiers=puzzle_ids or s.num_puzzle_identifiers,
                           total_groups=1000, mean_puzzle_examples=1.0)
    torch.manual_seed(seed)
    model = build_model(OmegaConf.to_container(cfg.arch, resolve=True), meta, batch, device)
    model.train()
    step_model = model
    if compile:
        step_model = torch.compile(model, dynamic=False, mode=None if compile_mode == "default" else compile_mode)
    g = torch.Generator().manual_seed(seed)
    batches = [synthetic_batch(shape, s.seq_len, s.vocab_size, meta.num_puzzle_identifiers, batch, g)
               for _ in range(4)]
    config = model.model.config
    if train:
        loop = TrainLoop(model, step_model, cfg, batches, device, batch * experiment_gpus(cfg),
                         cudagraphs=compile and compile_mode in CUDAGRAPH_MODES)
    else:
        loop = EvalLoop(step_model, meta, batches, device)
    return Bench(loop, config, model.model.inner.H_level.layers[0].self_attn.backend, compile)


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype, n: int | None = None, repeats: int = 10) -> float:
    """Best TFLOP/s of an n x n x n matmul in `dtype` on `device`: the ceiling the model's rate is set against."""
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for i in range(repeats + 2):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            a @ b
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1e3
        else:
            t0 = time.perf_counter()
            a @ b
            seconds = time.perf_counter() - t0
        if i >= 2:  # the first two calls pick kernels and warm caches
            best = min(best, seconds)
    return 2 * n**3 / best / 1e12


def time_steps(step, warmup: int, steps: int, device: torch.device) -> tuple[list[float], float, dict]:
    """Per-step milliseconds (CUDA events on a GPU, perf_counter on CPU), total wall seconds, last metrics."""
    last: dict = {}
    for _ in range(warmup):
        last = step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    ms: list[float] = []
    events = []
    wall0 = time.perf_counter()
    for _ in range(steps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            last = step()
            end.record()
            events.append((start, end))
        else:
            t0 = time.perf_counter()
            last = step()
            ms.append((time.perf_counter() - t0) * 1e3)
    if device.type == "cuda":
        torch.cuda.synchronize()
        ms = [s.elapsed_time(e) for s, e in events]
    return ms, time.perf_counter() - wall0, last


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, what was measured): the allocator's peak on a GPU, the process' peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated"
    return peak_rss()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or "CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def compare_reference(result: dict) -> dict:
    """Ratios against the reference's H100 table, and whether they mean anything on this run."""
    ref = REFERENCE_H100.get(result["shape"])
    if ref is None:
        return {"comparable": False, "note": f"the reference table has no {result['shape']} number"}
    why_not = []
    if "H100" not in result["device_name"]:
        why_not.append(f"device is {result['device_name']}, not an H100")
    if result["mode"] != "train":
        why_not.append("the reference numbers are training steps, this is --eval")
    if result["small"]:
        why_not.append("--small is not the full model")
    if result["batch"] != ref["batch"]:
        why_not.append(f"batch {result['batch']} is not the reference's {ref['batch']}")
    return {
        "reference": ref,
        "speedup": ref["step_ms"] / result["step_ms"],  # > 1: we are faster
        "samples_per_s_ratio": result["samples_per_s"] / ref["samples_per_s"],
        "peak_memory_ratio": result["peak_memory_bytes"] / 1e9 / ref["peak_memory_gb"],
        "comparable": not why_not,
        "note": "; ".join(why_not) + (": the ratios are not meaningful" if why_not else ""),
    }


def run(args: argparse.Namespace) -> dict:
    """Build, warm up, time; returns the JSON-able result."""
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    compile_mode = "reduce-overhead" if args.cudagraphs else args.compile_mode
    auto_compile = device.type == "cuda" and not args.eval and not os.environ.get("DISABLE_COMPILE")
    compile = args.compile if args.compile is not None else (compile_mode != "default" or auto_compile)
    dtype_name = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype_name]
    batch = args.batch or (SMALL_BATCH if args.small else default_batch(args.shape))

    peak_tflops = matmul_peak_tflops(device, dtype)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    bench = build(args.shape, batch, device, train=not args.eval, small=args.small, dtype=dtype_name,
                  compile=compile, compile_mode=compile_mode, optimizer_impl=args.optimizer_impl,
                  attn_backend=args.attn_backend, puzzle_ids=args.puzzle_ids)
    t0 = time.perf_counter()
    ms, wall, last = time_steps(bench.loop, args.warmup, args.steps, device)
    total_s = time.perf_counter() - t0
    mem_bytes, mem_source = peak_memory(device)

    config = bench.config
    step_ms = statistics.median(ms)
    samples_per_s = batch / (step_ms / 1e3)
    flops = step_flops(config, batch, train=not args.eval)
    tflops_per_s = flops / (step_ms / 1e3) / 1e12
    result = {
        "shape": args.shape, "mode": "eval" if args.eval else "train", "small": args.small,
        "batch": batch, "seq_len": config.seq_len, "total_seq_len": total_seq_len(config),
        "vocab_size": config.vocab_size, "num_puzzle_identifiers": config.num_puzzle_identifiers,
        "segments_per_step": config.halt_max_steps if args.eval else 1,
        "arch": {k: getattr(config, k) for k in ("hidden_size", "num_heads", "H_layers", "L_layers", "H_cycles",
                                                  "L_cycles", "halt_max_steps", "expansion", "puzzle_emb_ndim",
                                                  "forward_dtype", "grad_mode")},
        "warmup": args.warmup, "steps": args.steps, "step_ms_all": ms,
        "step_ms": step_ms, "step_ms_min": min(ms), "step_ms_max": max(ms),
        "step_ms_mean_wall": wall / args.steps * 1e3,
        "samples_per_s": samples_per_s, "tokens_per_s": samples_per_s * config.seq_len,
        "flops_per_step": flops, "tflops_per_s": tflops_per_s,
        "matmul_peak_tflops": peak_tflops, "matmul_peak_dtype": dtype_name,
        "fraction_of_matmul_peak": tflops_per_s / peak_tflops,
        "peak_memory_bytes": mem_bytes, "peak_memory_source": mem_source,
        "attn_backend": bench.backend, "compile": bench.compiled, "compile_mode": compile_mode if compile else None,
        "optimizer_impl": bench.loop.cfg.optimizer_impl if isinstance(bench.loop, TrainLoop) else None,
        "timer": "CUDA events" if device.type == "cuda" else "time.perf_counter",
        "device": device.type, "device_name": device_name(device), "torch_version": torch.__version__,
        "python_version": platform.python_version(), "date": datetime.date.today().isoformat(),
        "total_seconds": total_s, "last_metrics": {k: float(v) for k, v in last.items()},
    }
    if device.type == "cpu":
        result["load_average_1min"] = os.getloadavg()[0]
    else:  # what the caching allocator held at most (nvidia-smi shows this plus the CUDA context)
        result["peak_memory_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
    if args.compare_reference:
        result["reference_comparison"] = compare_reference(result)
    return result


def print_result(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"HRM {result['mode']} step, {result['shape']}{' (--small)' if result['small'] else ''}")
    table.add_column("")
    table.add_column("value", justify="right")
    rows = [
        ("device", result["device_name"]),
        ("torch", result["torch_version"]),
        ("attention / compile", f"{result['attn_backend']} / "
                                f"{result['compile_mode'] if result['compile'] else 'eager'}"),
        ("batch x seq (+ puzzle prefix)",
         f"{result['batch']} x {result['seq_len']} (+{result['total_seq_len'] - result['seq_len']})"),
        ("segments per step", str(result["segments_per_step"])),
        ("step ms (median [min, max])", f"{result['step_ms']:.2f} [{result['step_ms_min']:.2f}, "
                                        f"{result['step_ms_max']:.2f}] over {result['steps']}"),
        ("samples/s", f"{result['samples_per_s']:,.1f}"),
        ("tokens/s", f"{result['tokens_per_s']:,.0f}"),
        ("model TFLOP per step", f"{result['flops_per_step'] / 1e12:.4g}"),
        ("model TFLOP/s", f"{result['tflops_per_s']:.4g}"),
        (f"matmul peak TFLOP/s ({result['matmul_peak_dtype']})", f"{result['matmul_peak_tflops']:.4g}"),
        ("fraction of matmul peak", f"{result['fraction_of_matmul_peak']:.1%}"),
        (f"peak memory ({result['peak_memory_source']})", f"{result['peak_memory_bytes'] / 1e9:.2f} GB"),
    ]
    for name, value in rows:
        table.add_row(Text(name), Text(value))  # Text: no rich markup, so "[...]" prints as written
    console = Console(highlight=False)
    console.print(table)
    comparison = result.get("reference_comparison")
    if comparison:
        ref = comparison.get("reference")
        if ref:
            console.print(f"reference (H100, SDPA, compiled): {ref['step_ms']} ms/step, {ref['samples_per_s']:,.0f} "
                          f"samples/s, {ref['peak_memory_gb']} GB at batch {ref['batch']}; ours: "
                          f"{comparison['speedup']:.2f}x its speed, {comparison['peak_memory_ratio']:.2f}x its memory")
        if not comparison["comparable"]:
            console.print(Text(comparison["note"], style="yellow"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.train_throughput", description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="sudoku")
    p.add_argument("--batch", type=int, help="per-GPU batch (default: the experiment's, or 4 with --small)")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the step (default: as hrm-train, on CUDA for training; evaluation is eager)")
    p.add_argument("--compile-mode", choices=COMPILE_MODES, default="default", help="torch.compile mode")
    p.add_argument("--cudagraphs", action="store_true", help="same as --compile-mode reduce-overhead")
    p.add_argument("--optimizer-impl", choices=("foreach", "fused", "loop"),
                   help="AdamATan2 implementation (default: the config's)")
    p.add_argument("--attn-backend", choices=("auto", "fa3", "fa2", "sdpa"), help="default: the config's (auto)")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--puzzle-ids", type=int, help="number of puzzle identifiers (default: the shape's)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's); 1 is steadier on a shared VM")
    p.add_argument("--eval", action="store_true", help="time evaluation: halt_max_steps segments, no gradient")
    p.add_argument("--small", action="store_true", help="a tiny model that runs in seconds on CPU")
    p.add_argument("--json", type=Path, help="write the result here")
    p.add_argument("--compare-reference", action="store_true",
                   help="ratios against the reference's H100 numbers (meaningful on an H100 only)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    if args.batch is not None and args.batch < 1:
        p.error("--batch must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    result = run(args)
    print_result(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
