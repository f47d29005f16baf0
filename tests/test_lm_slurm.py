"""HRM-Text on the Slurm layer: the all-reduce pre-flight, the LM plan and preview (expected wall time, SUs,
memory per GPU), `hrm-doctor memory` for LM configs, and a 2-node LM job on the replica (HRM_TEST_SLURM=1;
savio4_gpu nodes a5k1/a5k2 are fake-GPU nodes running CPU torch with gloo)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest_slurm import describe, slurm_cluster, slurm_home, wait_pipeline  # noqa: F401

from hrm.lm import config as cfg_lm
from hrm.lm import cost
from hrm.lm.config import model_sizes
from slurm import lm_stages, pipeline
from slurm.jobs import Stage, StageRun
from slurm.profiles import RequestError, load_cluster, resolve

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def test_allreduce_check_passes_on_two_gloo_ranks_and_reports_each():
    r = subprocess.run(
        [str(BIN / "torchrun"), "--standalone", "--nproc-per-node=2", "-m", "slurm.allreduce_check", "--mib", "1",
         "--timeout", "60"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    # the two ranks share torchrun's pipe, so their lines may interleave: find the reports, not lines
    ranks = re.findall(r"\[allreduce-check\] ok: rank (\d+/\d+) on ", r.stdout + r.stderr)
    assert sorted(ranks) == ["0/2", "1/2"], r.stdout


def test_allreduce_check_fails_in_one_line_when_the_other_rank_never_comes():
    # world size 2 but only rank 0 starts: the rendezvous times out and says where it waited
    r = subprocess.run(
        [sys.executable, "-m", "slurm.allreduce_check", "--mib", "1", "--timeout", "3"],
        cwd=REPO, env=_env(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="29677"),
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 1
    failed = [x for x in r.stderr.splitlines() if x.startswith("[allreduce-check] FAILED")]
    assert len(failed) == 1 and "rank 0/2" in failed[0] and "127.0.0.1:29677" in failed[0], r.stderr


def _stage(tmp_path: Path, preflight: list[str]) -> Stage:
    req = resolve(load_cluster("local"), partition="savio3_htc", cpus=1, time="00:10:00")
    marker = tmp_path / "ran.txt"
    return Stage("train", [sys.executable, "-c", f"open({str(marker)!r}, 'w').write('trained')"], req,
                 preflight=preflight)


def test_a_failing_preflight_stops_the_stage_before_its_command(tmp_path):
    stage = _stage(tmp_path, [sys.executable, "-c", "import sys; sys.exit(3)"])
    with pytest.raises(RuntimeError, match="pre-flight .* exited with code 3"):
        StageRun(stage)()
    assert not (tmp_path / "ran.txt").exists()


def test_a_passing_preflight_lets_the_stage_run(tmp_path):
    stage = _stage(tmp_path, [sys.executable, "-c", "print('checked')"])
    assert StageRun(stage)()["returncode"] == 0
    assert (tmp_path / "ran.txt").read_text() == "trained"


def test_the_published_sizes_have_the_spec_parameter_counts():
    # spec section 2.2's table (vocab 65,536): non-embedding and total, to 0.1M
    sizes = model_sizes()
    want = {"B": (166.7, 300.9), "L": (526.9, 694.7), "XL": (981.5, 1182.8), "XXL": (3038.8, 3273.7),
            "XXL_wide": (2747.3, 3082.8)}
    for name, (non_emb, total) in want.items():
        shape = {**sizes[name], "vocab_size": 65536}
        assert round(cost.num_params(shape, non_embedding=True) / 1e6, 1) == non_emb, name
        assert round(cost.num_params(shape) / 1e6, 1) == total, name


def test_the_public_runtimes_are_about_forty_percent_mfu_on_paper():
    """60B tokens (paper) on 8 / 16 H100 at 40% MFU land within 10% of the published 50 h / 46 h: the
    analytic FLOPs and the public figures agree."""
    sizes = model_sizes()
    for name, pub in cost.PUBLISHED_RUNS.items():
        hours = cost.hours_for(cost.PUBLISHED_TOKENS, {**sizes[name], "vocab_size": 65536}, pub["gpus"])
        assert hours == pytest.approx(pub["hours"], rel=0.1), (name, hours)


def test_memory_estimate_grows_with_tokens_and_shrinks_with_ranks():
    shape = {**model_sizes()["L"], "vocab_size": 65536}
    a, b = cost.memory_estimate(shape, 4096, 8), cost.memory_estimate(shape, 8192, 8)
    assert b.activations == pytest.approx(2 * a.activations) and b.logits == pytest.approx(2 * a.logits)
    assert cost.memory_estimate(shape, 4096, 16).sharded_state == pytest.approx(a.sharded_state / 2)
    most = cost.max_tokens_per_gpu(shape, 8, 24.0)
    assert cost.memory_estimate(shape, most, 8).fits(24.0)
    assert not cost.memory_estimate(shape, most + 256, 8).fits(24.0)


# --- the plan and the preview ------------------------------------------------------------------------------

needs_lm_configs = pytest.mark.skipif(not cfg_lm.experiments(),
                                      reason="configs/lm/experiment/*.yaml not written yet")


def cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "hrm-slurm"), *args], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


@needs_lm_configs
def test_xl_plan_is_two_nodes_with_the_preflight_and_lm_commands(tmp_path, monkeypatch):
    monkeypatch.setenv("HRM_SLURM_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    p = pipeline.plan(["+experiment=hrmtext_XL", "cluster=savio", "account=fc_x", f"runs_dir={tmp_path}"])
    by = {s.name: s for s in p.stages}
    assert [s.name for s in p.stages] == ["data", "train", "eval", "collect"]
    train = by["train"]
    assert train.argv[:3] == ["hrm-lm", "train", "+experiment=hrmtext_XL"] and train.launcher == "torchrun"
    assert train.request.nodes == 2 and train.request.gpus == 8 and train.request.gpu_type == "A5000"
    assert train.preflight[1:3] == ["-m", "slurm.allreduce_check"] and train.requeue
    assert by["data"].argv[:2] == ["hrm-lm", "data"] and "--train-tokenizer" in by["data"].argv
    assert by["eval"].argv[:2] == ["hrm-lm", "eval"] and by["eval"].argv[-2:] == ["--tasks", "public"]
    # one node: no pre-flight
    one = pipeline.plan(["+experiment=hrmtext_L", "cluster=savio", "account=fc_x", f"runs_dir={tmp_path}"])
    assert next(s for s in one.stages if s.name == "train").preflight == []
    # the demo scores its held-out problems: a relative include_path is a folder of its data
    demo = pipeline.plan(["+experiment=hrmtext_demo", "cluster=savio", "account=fc_x", f"runs_dir={tmp_path}",
                          f"data_path={tmp_path / 'lm'}"])
    ev = next(s for s in demo.stages if s.name == "eval").argv
    assert ev[ev.index("--include-path") + 1] == str(tmp_path / "lm" / "tasks") and "hrmtext_synth" in ev


@needs_lm_configs
def test_preview_shows_expected_wall_time_sus_and_memory_for_l_on_a5000(tmp_path):
    r = cli(["preview", "+experiment=hrmtext_L", "cluster=savio", "account=fc_x", f"runs_dir={tmp_path}"], tmp_path)
    assert r.returncode == 0, r.stderr
    shape = {**model_sizes()["L"], "vocab_size": 65536}
    hours = cost.hours_for(cost.PUBLISHED_TOKENS, shape, 8, "A5000", lm_stages.ASSUMED_MFU)
    line = next(x for x in r.stdout.splitlines() if x.startswith("expected wall time:"))
    assert f"{hours:,.1f} h" in line and "8 x A5000" in line and "SU" in line, line
    su = float(line.split(" = ")[1].split(" SU")[0].replace(",", ""))
    # savio4_gpu: 4.67 SU per core hour, 32 cores for 8 GPUs
    assert su == pytest.approx(hours * 32 * 4.67, rel=0.01)
    mem = next(x for x in r.stdout.splitlines() if x.startswith("memory per GPU:"))
    assert "21,504 tokens per GPU" in mem and "does NOT fit" in mem and "24 GiB A5000" in mem, mem
    assert "694.7M parameters" in r.stdout


@needs_lm_configs
def test_lm_plan_refuses_a_batch_that_does_not_split_over_the_ranks(tmp_path):
    with pytest.raises(RequestError, match="global_batch_size=172032 tokens do not split over the 5 ranks"):
        pipeline.plan(["+experiment=hrmtext_L", "cluster=savio", "account=fc_x", "gpus=5", f"runs_dir={tmp_path}"])


@needs_lm_configs
def test_doctor_memory_for_an_lm_config_gives_the_estimate_and_the_largest_budget():
    r = subprocess.run([str(BIN / "hrm-doctor"), "memory", "+experiment=hrmtext_L", "--gpu-type", "A5000",
                        "--batch", "4096,21504", "--no-probe", "--json"], cwd=REPO, env=_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 1, r.stderr  # 21,504 tokens per GPU does not fit a 24 GB card
    rep = json.loads(r.stdout)
    assert [row["fits"] for row in rep["rows"]] == [True, False]
    assert rep["world_size"] == 8 and rep["gpu_gib"] == 24.0
    shape = {**model_sizes()["L"], "vocab_size": 65536}
    assert rep["max_tokens_per_gpu"] == cost.max_tokens_per_gpu(shape, 8, 24.0)
    bad = subprocess.run([str(BIN / "hrm-doctor"), "memory", "+experiment=hrmtext_L", "--gpu-type", "K80"],
                         cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--gpu-type K80" in bad.stderr


# --- a 2-node LM job on the replica ----------------------------------------------------------------------

TRAIN = ["max_steps=6", "checkpoint_every_steps=3", "global_batch_size=512", "log_every=1"]


def _final_weights(run: Path) -> dict:
    from hrm.lm.checkpoint import load_for_inference

    model, _, _ = load_for_inference(run, use_ema=False)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.slurm
@pytest.mark.slow
@needs_lm_configs
def test_two_node_lm_job_checks_allreduce_then_trains_to_the_weights_of_one_machine(slurm_cluster, slurm_home):  # noqa: F811
    import torch

    data = slurm_home / "data"
    r = subprocess.run([str(BIN / "hrm-lm"), "data", "--source", "synth:300", "--out", str(data),
                        "--train-tokenizer", "512", "--epochs", "2", "--context", "128"],
                       cwd=slurm_home, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    sub = cli(["submit", "+experiment=hrmtext_demo", "cluster=local", "account=fc_test", "partition=savio4_gpu",
               "gpus=1", "nodes=2", "launcher=torchrun", "stages=train", "time=00:30:00", f"data_path={data}",
               f"runs_dir={slurm_home}/runs", *TRAIN], slurm_home)
    assert sub.returncode == 0, sub.stderr
    rec = json.loads(sorted((slurm_home / "home" / "pipelines").glob("*.json"))[-1].read_text())
    (stage,) = [s for s in rec["stages"] if s.get("job_id")]
    # the same training on this machine, 2 ranks under torchrun, uninterrupted
    ref = subprocess.Popen(
        [str(BIN / "torchrun"), "--nproc-per-node=2", "--master-port=29655", "--no-python", str(BIN / "hrm-lm"),
         "train", "+experiment=hrmtext_demo", f"data_path={data}", f"checkpoint_path={slurm_home / 'ref'}", *TRAIN],
        cwd=slurm_home, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        states = wait_pipeline(rec)
        assert ref.wait(timeout=1200) == 0
    finally:
        if ref.poll() is None:
            ref.kill()
    assert states[stage["job_id"]]["state"] == "COMPLETED", describe(rec)
    assert states[stage["job_id"]]["node"] == "a5k[1-2]", states
    logs = "".join(p.read_text(errors="replace") for p in (Path(rec["run_dir"]) / "slurm" / "train").glob("*.out"))
    ok = sorted(x.split("ok: ")[1].split(" (")[0] for x in logs.splitlines() if "[allreduce-check] ok" in x)
    assert ok == ["rank 0/2 on a5k1", "rank 1/2 on a5k2"], logs[-3000:]
    assert logs.index("[allreduce-check] ok") < logs.index("stage train (restart 0)")
    ours, theirs = _final_weights(Path(rec["run_dir"])), _final_weights(slurm_home / "ref")
    assert ours.keys() == theirs.keys()
    for k in ours:
        torch.testing.assert_close(ours[k], theirs[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
