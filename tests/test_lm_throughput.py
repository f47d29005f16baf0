"""bench/lm_throughput.py and hrm/lm/cost.py: the analytic FLOPs of an HRM-Text training step equal what torch's
FlopCounterMode counts on the real model (no timing is asserted), the activation term of the memory estimate
matches what autograd saves, and the harness runs on CPU at a small size."""

from __future__ import annotations

import json

import pytest
import torch

from bench import lm_throughput as lt
from hrm.lm import cost
from hrm.lm.memory import saved_activation_bytes, synthetic_batch
from hrm.lm.model import build_lm, lm_config


def _model(net: str = "hrm", **kw):
    torch.manual_seed(0)
    cfg = lm_config("tiny", 512, max_seq_len=512, attn_backend="sdpa", net=net, **kw)
    return cfg, build_lm(cfg)


@pytest.mark.parametrize("bp_steps", [2, 5])
def test_analytic_linear_flops_equal_flopcountermode(bp_steps):
    """Matmul FLOPs (every projection and the head, forward and backward) counted op by op equal the formula:
    2 x params per token for each of the 8 forward module steps, 4 x for each of the bp_steps backward steps,
    plus the head (6 x hidden x vocab)."""
    cfg, model = _model()
    batch, _ = synthetic_batch(cfg.vocab_size, 384, mean_len=64)
    counted = lt.counted_flops(model, batch, bp_steps)
    T = batch.input_ids.shape[0]
    f = cost.flops_per_token(cfg, bp_steps=bp_steps)
    if bp_steps < cost.FULL_BP:
        # the first block with gradient gets an input that needs none (its state came from a no_grad step):
        # its gate|q|k|v projection has no input-gradient matmul; the formula charges it
        s = cost.shape_of(cfg)
        f_total = f["total"] - 2 * s.hidden_size * 4 * s.hidden_size
    else:
        f_total = f["total"]
    assert counted["linear"] == pytest.approx(f_total * T, rel=1e-9)
    assert counted["attention"] > 0  # the attention matmuls are counted too, apart


def test_analytic_attention_flops_equal_flopcountermode_for_dense_sdpa():
    """The sdpa backend attends over the whole [T, T] stream with a mask: FlopCounterMode charges T keys per
    query, and so does the formula with attn_keys = T."""
    cfg, model = _model()
    batch, _ = synthetic_batch(cfg.vocab_size, 256, mean_len=64)
    counted = lt.counted_flops(model, batch, cost.FULL_BP)
    T = batch.input_ids.shape[0]
    f = cost.flops_per_token(cfg, attn_keys=lt.dense_attention_keys(batch))
    assert counted["total"] == pytest.approx(f["total"] * T, rel=1e-9)
    assert counted["attention"] == pytest.approx(f["attention"] * T, rel=1e-9)


def test_transformer_baseline_flops_are_one_full_stack_with_full_gradient():
    cfg, model = _model(net="transformer")
    batch, _ = synthetic_batch(cfg.vocab_size, 256, mean_len=64)
    counted = lt.counted_flops(model, batch, cost.FULL_BP)
    T = batch.input_ids.shape[0]
    s = cost.shape_of(cfg)
    want = 6 * (s.n_layers * cost.block_params(s) + s.hidden_size * s.vocab_size)
    assert counted["linear"] == pytest.approx(want * T, rel=1e-9)


def test_mean_attended_keys_is_the_prefixlm_mask_count():
    p, r = 5, 4
    # prefix rows see p keys each; response row i sees p + i + 1
    by_hand = (p * p + sum(p + i + 1 for i in range(r))) / (p + r)
    assert cost.mean_attended_keys(p, r) == pytest.approx(by_hand)


def test_activation_estimate_matches_what_autograd_saves():
    """The per-token, per-block activation term against the bytes the graph really keeps, per module step with
    gradient (the difference between BP budgets, so the logits and the embedding cancel). fp32 on CPU: twice the
    bf16 estimate. CPU SDPA also keeps transposed copies of q/k/v and the rotary outputs that the GPU flash
    kernels do not, so the measured step lies between the estimate and twice it; it must grow linearly."""
    cfg, model = _model()
    batch, _ = synthetic_batch(cfg.vocab_size, 512, mean_len=64)
    got = {bp: saved_activation_bytes(model, batch, bp) for bp in (2, 3, 4, 5)}
    steps = [got[bp] - got[bp - 1] for bp in (3, 4, 5)]
    est = cost.memory_estimate(cfg, 512, 1, bp_steps=3).activations - cost.memory_estimate(
        cfg, 512, 1, bp_steps=2).activations
    want = 2 * est * cost.GIB  # fp32
    assert max(steps) - min(steps) <= 0.02 * max(steps), got  # each further step costs the same
    assert want <= steps[-1] <= 2 * want, (steps, want)


def test_harness_runs_on_cpu_and_reports_consistent_numbers(tmp_path):
    out = tmp_path / "r.json"
    r = lt.main(["--size", "tiny", "--tokens", "256", "--steps", "2", "--warmup", "1", "--device", "cpu",
                 "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(r))
    assert len(r["step_s_all"]) == 2 and r["tokens_per_s"] == pytest.approx(256 / r["step_s"])
    assert r["analytic_flops_per_token_dense_attn"] == pytest.approx(r["counted_flops_per_token"], rel=1e-9)
    assert r["mfu"] is None  # no known peak for a CPU


def test_paper_table_has_the_published_sizes_and_runtimes(capsys):
    rows = lt.paper_rows()
    by = {r["size"]: r for r in rows}
    assert by["XL"]["published"] == {"gpus": 16, "hours": 46.0}
    # the same tokens on twice the GPUs at the same MFU take half the time
    assert by["L"]["hours_60B_16xH100"] == pytest.approx(by["L"]["hours_60B_8xH100"] / 2)
    lt.main(["--paper", "--markdown"])
    assert "| XL |" in capsys.readouterr().out
