"""bench/train_throughput.py: the harness runs (train and eval, --small, CPU), its JSON is self-consistent, the
analytic FLOP count equals torch's FlopCounterMode, and on a GPU the compiled step agrees with the eager one."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from bench import train_throughput as tt
from hrm.model.losses import IGNORE_LABEL_ID

FIELDS = {"shape", "mode", "small", "batch", "seq_len", "total_seq_len", "vocab_size", "num_puzzle_identifiers",
          "segments_per_step", "arch", "warmup", "steps", "step_ms_all", "step_ms", "step_ms_min", "step_ms_max",
          "step_ms_mean_wall", "samples_per_s", "tokens_per_s", "flops_per_step", "tflops_per_s",
          "matmul_peak_tflops", "matmul_peak_dtype", "fraction_of_matmul_peak", "peak_memory_bytes",
          "peak_memory_source", "attn_backend", "compile", "compile_mode", "optimizer_impl", "timer", "device",
          "device_name", "torch_version", "python_version", "date", "total_seconds", "last_metrics"}


def run_harness(tmp_path, *argv: str) -> dict:
    out = tmp_path / "result.json"
    returned = tt.main(["--small", "--device", "cpu", "--steps", "2", "--warmup", "1", "--json", str(out), *argv])
    result = json.loads(out.read_text())
    assert result == json.loads(json.dumps(returned))
    return result


def check_consistent(r: dict) -> None:
    assert FIELDS <= set(r), FIELDS - set(r)
    assert len(r["step_ms_all"]) == r["steps"] and r["step_ms"] == pytest.approx(statistics.median(r["step_ms_all"]))
    step_s = r["step_ms"] / 1e3
    assert r["samples_per_s"] == pytest.approx(r["batch"] / step_s)
    assert r["tokens_per_s"] == pytest.approx(r["samples_per_s"] * r["seq_len"])
    assert r["tflops_per_s"] == pytest.approx(r["flops_per_step"] / step_s / 1e12)
    assert r["fraction_of_matmul_peak"] == pytest.approx(r["tflops_per_s"] / r["matmul_peak_tflops"])
    assert r["flops_per_step"] > 0 and r["matmul_peak_tflops"] > 0 and r["peak_memory_bytes"] > 0
    assert r["device"] == "cpu" and r["attn_backend"] == "sdpa" and r["compile"] is False
    assert r["torch_version"] == torch.__version__ and r["timer"] == "time.perf_counter"
    assert all(math.isfinite(v) for v in r["last_metrics"].values())


def test_small_training_step_json(tmp_path):
    r = run_harness(tmp_path, "--shape", "sudoku", "--compare-reference")
    check_consistent(r)
    assert r["mode"] == "train" and r["segments_per_step"] == 1 and r["optimizer_impl"] == "foreach"
    assert (r["batch"], r["seq_len"], r["total_seq_len"], r["vocab_size"]) == (tt.SMALL_BATCH, 81, 82, 11)
    assert r["arch"]["hidden_size"] == 64 and r["arch"]["forward_dtype"] == "float32"
    assert r["last_metrics"]["train/lm_loss"] > 0
    comparison = r["reference_comparison"]
    assert comparison["comparable"] is False and "not an H100" in comparison["note"]
    assert comparison["speedup"] == pytest.approx(85.1 / r["step_ms"])


def test_small_eval_json(tmp_path):
    r = run_harness(tmp_path, "--shape", "arc", "--eval")
    check_consistent(r)
    halt = tt.SMALL_ARCH["halt_max_steps"]
    assert r["mode"] == "eval" and r["segments_per_step"] == halt and r["optimizer_impl"] is None
    assert (r["seq_len"], r["vocab_size"], r["num_puzzle_identifiers"]) == (900, 12, 1000)
    assert r["last_metrics"]["eval/steps"] == halt  # every row ran halt_max_steps segments


@pytest.mark.parametrize("shape", ["sudoku", "arc"])
@pytest.mark.parametrize("train", [True, False])
def test_step_flops_match_flop_counter(shape, train):
    """The analytic count equals what FlopCounterMode sees in one harness step (SDPA's math path, so that the
    attention matmuls show up as bmm with exactly 2x in backward). Odd sizes catch swapped terms."""
    arch = {"hidden_size": 32, "num_heads": 2, "H_layers": 1, "L_layers": 2, "H_cycles": 2, "L_cycles": 3,
            "puzzle_emb_ndim": 48, "halt_max_steps": 3}  # 48 / 32 -> a 2-position puzzle prefix
    bench = tt.build(shape, 3, torch.device("cpu"), train=train, small=True, arch_overrides=arch)
    bench.loop()
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        bench.loop()
    assert tt.total_seq_len(bench.config) == tt.SHAPES[shape].seq_len + 2
    assert counter.get_total_flops() == tt.step_flops(bench.config, 3, train=train)


def test_full_sudoku_flops_match_the_issue():
    """~27 TFLOP of matmuls per Sudoku training step at batch 768 (issue 7), ~28 with attention scores."""
    from hrm.model.hrm_act import HRMConfig

    config = HRMConfig(batch_size=768, seq_len=81, vocab_size=11, num_puzzle_identifiers=1)
    assert 27e12 < tt.step_flops(config, 768) < 29e12


def test_default_batches_are_the_experiments_per_gpu_batches():
    assert {s: tt.default_batch(s) for s in tt.SHAPES} == {"sudoku": 768, "maze": 192, "arc": 96}
    for shape, ref in tt.REFERENCE_H100.items():
        assert ref["batch"] == tt.default_batch(shape)


def test_synthetic_arc_rows_follow_the_ignore_convention():
    g = torch.Generator().manual_seed(1)
    b = tt.synthetic_batch("arc", 900, 12, 1000, 16, g)
    assert all(v.dtype == torch.int32 for v in b.values())
    assert torch.equal(b["labels"] == IGNORE_LABEL_ID, b["inputs"] == 0)  # PAD positions are ignored
    assert ((b["inputs"] >= 0) & (b["inputs"] < 12)).all() and (b["labels"] != 0).all()
    assert ((b["puzzle_identifiers"] >= 1) & (b["puzzle_identifiers"] < 1000)).all()
    s = tt.synthetic_batch("sudoku", 81, 11, 1, 16, g)
    assert (s["labels"] != IGNORE_LABEL_ID).all() and (s["puzzle_identifiers"] == 0).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_compiled_full_sudoku_step_matches_eager():
    """At the full model and Sudoku shape, the harness' compiled step gives the eager losses (bf16 tolerance).
    The Q head starts with both logits at -5, so no row halts early and the exploration draws (which differ
    between eager and compiled RNG) cannot change the first steps."""
    losses = {}
    for compiled in (False, True):
        bench = tt.build("sudoku", tt.default_batch("sudoku"), torch.device("cuda"), compile=compiled)
        losses[compiled] = [bench.loop() for _ in range(3)]
        del bench
        torch.cuda.empty_cache()
    for eager, comp in zip(losses[False], losses[True]):
        for key in ("train/lm_loss", "train/q_halt_loss", "train/q_continue_loss"):
            assert comp[key] == pytest.approx(eager[key], rel=2e-2, abs=1e-4), key
