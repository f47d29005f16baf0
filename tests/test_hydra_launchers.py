"""Hydra multirun on Savio (configs/hydra/launcher): what each launcher config sends to sbatch, the time limit
taken from the experiment, and sweep points that resume their own directory when requeued.

The launcher configs are composed the way `hrm-train -m` composes them and instantiated into hydra-submitit's
SlurmLauncher; its parameters go through submitit's own executor and `_make_sbatch_string`. Nothing is
submitted: the requeue test uses hydra/launcher=submitit_local (submitit's local executor, same signal handler).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from hrm.config import ResolverError, config_dir, slurm_minutes, sweep_point_names
from hrm.data.format import DatasetMetadata, write_split

LAUNCHERS = Path(__file__).resolve().parents[1] / "configs" / "hydra" / "launcher"
ENV_VARS = ("SAVIO_ACCOUNT", "HRM_SLURM_ACCOUNT", "SAVIO_QOS", "HRM_SLURM_QOS")
BIN = Path(sys.executable).parent
TINY = ["arch.hidden_size=64", "arch.num_heads=2", "arch.H_layers=1", "arch.L_layers=1", "arch.halt_max_steps=2",
        "arch.H_cycles=1", "arch.L_cycles=1", "arch.forward_dtype=float32", "global_batch_size=16",
        "eval_max_batches=2", "device=cpu", "wandb_mode=disabled"]


@pytest.fixture(autouse=True)
def no_slurm_env(monkeypatch):
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)


def launcher_params(name: str, *overrides: str) -> dict:
    """The parameters hydra-submitit's launcher holds for `hrm-train -m hydra/launcher=NAME OVERRIDES`."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        cfg = compose("cfg_pretrain", overrides=[f"hydra/launcher={name}", *overrides], return_hydra_config=True)
        launcher = instantiate(cfg.hydra.launcher)
    assert type(launcher).__name__ == "PartitionedSlurmLauncher"  # hydra-submitit's, one array per partition
    return launcher.params


def sbatch_script(params: dict, folder: Path, monkeypatch, points: int = 2) -> str:
    """The sbatch file submitit writes for these launcher parameters (an array of `points` jobs)."""
    import submitit
    from submitit.slurm.slurm import SlurmExecutor, _make_sbatch_string

    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 2))  # no srun needed to build it
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=params["max_num_timeout"])
    generic = {"timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes", "name",
               "stderr_to_stdout"}  # hydra-submitit passes these as they are, the rest as slurm_<key>
    executor.update_parameters(**{(k if k in generic else f"slurm_{k}"): v for k, v in params.items()
                                  if k not in ("submitit_folder", "max_num_timeout")})
    return _make_sbatch_string(command="python -m submitit.core._submit x", folder=folder, map_count=points,
                               **executor._executor.parameters)


def sbatch_flags(script: str) -> dict[str, str | bool]:
    flags = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH --"):
            key, _, value = line[len("#SBATCH --"):].partition("=")
            flags[key] = value if value else True
    return flags


# --- the launcher configs --------------------------------------------------------------------------------


def test_launcher_set():
    assert sorted(p.stem for p in LAUNCHERS.glob("*.yaml")) == ["local", "savio3_gpu", "savio4_gpu"]


@pytest.mark.parametrize("name", ["savio4_gpu", "savio3_gpu", "local"])
def test_setup_lines(name):
    setup = launcher_params(name)["setup"]
    assert "export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK" in setup
    assert not any("cuda" in line for line in setup)
    modules = [line for line in setup if line.startswith("module load")]
    assert modules == ([] if name == "local" else ["module load python/3.11.6-gcc-11.4.0"])


def test_savio4_gpu_sends_no_qos_unless_asked(monkeypatch, tmp_path):
    params = launcher_params("savio4_gpu")
    assert params["qos"] is None and params["account"] is None
    flags = sbatch_flags(sbatch_script(params, tmp_path, monkeypatch))
    assert "qos" not in flags and "account" not in flags
    assert flags["partition"] == "savio4_gpu" and flags["gres"] == "gpu:A5000:1" and flags["cpus-per-task"] == "4"
    assert flags["requeue"] is True and flags["signal"] == "USR2@120" and flags["array"] == "0-1%2"
    assert flags["time"] == "60"  # no experiment: the short default
    assert "mem" not in flags  # memory comes with the cores on Savio's GPU partitions

    monkeypatch.setenv("SAVIO_QOS", "savio_lowprio")
    monkeypatch.setenv("SAVIO_ACCOUNT", "fc_lab")
    flags = sbatch_flags(sbatch_script(launcher_params("savio4_gpu"), tmp_path, monkeypatch))
    assert flags["qos"] == "savio_lowprio" and flags["account"] == "fc_lab"


def test_savio3_gpu_defaults_to_the_a40_qos(monkeypatch, tmp_path):
    flags = sbatch_flags(sbatch_script(launcher_params("savio3_gpu", "+experiment=maze"), tmp_path, monkeypatch))
    assert flags["qos"] == "a40_gpu3_normal"
    assert flags["partition"] == "savio3_gpu" and flags["gres"] == "gpu:A40:1" and flags["cpus-per-task"] == "8"
    assert flags["time"] == "480"
    monkeypatch.setenv("SAVIO_QOS", "savio_lowprio")  # a condo
    assert launcher_params("savio3_gpu")["qos"] == "savio_lowprio"


def test_local_launcher_uses_the_association_default(monkeypatch, tmp_path):
    params = launcher_params("local")
    assert params["qos"] is None and params["account"] == "fc_test" and params["partition"] == "savio3_htc"
    flags = sbatch_flags(sbatch_script(params, tmp_path, monkeypatch))
    assert "qos" not in flags and "gres" not in flags and flags["account"] == "fc_test"
    monkeypatch.setenv("SAVIO_ACCOUNT", "co_test")
    assert launcher_params("local")["account"] == "co_test"


@pytest.mark.parametrize("name", ["savio4_gpu", "savio3_gpu", "local"])
def test_account_from_savio_account_then_hrm_slurm_account(name, monkeypatch):
    monkeypatch.setenv("HRM_SLURM_ACCOUNT", "fc_old")
    assert launcher_params(name)["account"] == "fc_old"
    monkeypatch.setenv("SAVIO_ACCOUNT", "fc_new")
    assert launcher_params(name)["account"] == "fc_new"
    assert launcher_params(name, "hydra.launcher.account=co_cli")["account"] == "co_cli"


def test_old_qos_variable_still_read(monkeypatch):
    monkeypatch.setenv("HRM_SLURM_QOS", "savio_lowprio")
    assert launcher_params("savio4_gpu")["qos"] == "savio_lowprio"
    monkeypatch.setenv("SAVIO_QOS", "a5k_gpu4_normal")
    assert launcher_params("savio4_gpu")["qos"] == "a5k_gpu4_normal"


@pytest.mark.parametrize("overrides, minutes", [
    ([], 60),
    (["+experiment=sudoku_full"], 360),
    (["+experiment=arc1"], 4320),
    (["+experiment=sudoku_demo"], 30),
    (["+experiment=sudoku_full", "resources.time=1-12:00:00"], 2160),
    (["+experiment=sudoku_full", "resources.time=90"], 90),
])
@pytest.mark.parametrize("name", ["savio4_gpu", "savio3_gpu", "local"])
def test_timeout_follows_the_experiment(name, overrides, minutes, monkeypatch, tmp_path):
    params = launcher_params(name, *overrides)
    assert params["timeout_min"] == minutes
    assert sbatch_flags(sbatch_script(params, tmp_path, monkeypatch))["time"] == str(minutes)


def test_cli_prints_the_resolved_launcher(tmp_path):
    """Through the real entry point: the resolver is registered before Hydra composes."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS} | {"SAVIO_QOS": "savio_lowprio"}
    r = subprocess.run([str(BIN / "hrm-train"), "hydra/launcher=savio4_gpu", "+experiment=arc1", "--cfg", "all",
                        "--package", "hydra.launcher", "--resolve"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    launcher = yaml.safe_load(r.stdout)
    assert launcher["timeout_min"] == 4320 and launcher["qos"] == "savio_lowprio" and launcher["account"] is None


def test_cli_bad_time_is_one_line(tmp_path):
    # PATH without srun: were the time accepted, submitit would refuse to submit rather than reach a cluster
    env = {**os.environ, "PATH": str(BIN)}
    r = subprocess.run([str(BIN / "hrm-train"), "-m", "hydra/launcher=savio4_gpu", "+experiment=sudoku_full",
                        "resources.time=6h"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2  # bad input, refused by hrm-train's own check before Hydra starts the sweep
    assert "Traceback" not in r.stderr
    first = r.stderr.splitlines()[0]
    assert "'6h' is not a Slurm time" in first and "fix: resources.time=HH:MM:SS" in first
    assert not (tmp_path / "multirun").exists()  # refused before the sweep started


# --- the time resolver -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value, minutes", [
    ("06:00:00", 360), ("3-00:00:00", 4320), ("90", 90), (45, 45), ("1:30", 2), ("2-12", 3600),
    ("1-2:30", 1590), (" 00:30:00 ", 30), ("0:0:1", 1), ("100:00:00", 6000),
])
def test_slurm_minutes(value, minutes):
    assert slurm_minutes(value) == minutes


@pytest.mark.parametrize("value", ["six hours", "", "1:2:3:4", "06:00:00h", "-5", "0", 0, -3, 1.5, True, None,
                                   "UNLIMITED", "1-"])
def test_slurm_minutes_refuses_garbage(value):
    with pytest.raises(ValueError) as e:
        slurm_minutes(value)
    message = str(e.value)
    assert "\n" not in message and "fix: resources.time=" in message and repr(value) in message


def test_resolver_default_and_error():
    cfg = OmegaConf.create({"resources": None, "t": "${hrm_minutes:${oc.select:resources.time,null},60}",
                            "u": "${hrm_minutes:${oc.select:resources.time,null},02:00:00}"})
    assert cfg.t == 60 and cfg.u == 120
    cfg.resources = {"time": "2-00:00:00"}
    assert cfg.t == 2880
    cfg.resources.time = "soon"
    with pytest.raises(ResolverError, match="'soon' is not a Slurm time; fix: resources.time="):
        _ = cfg.t


# --- one directory per sweep point -----------------------------------------------------------------------


def test_sweep_point_names_are_fixed_by_sweep_and_number(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = sweep_point_names("multirun/2025-01-01/10-00-00", 1)
    assert a == sweep_point_names("multirun/2025-01-01/10-00-00", 1)
    assert a[1] == str(tmp_path / "multirun" / "2025-01-01" / "10-00-00" / "1")
    assert a[0].endswith("10-00-00#1")
    assert sweep_point_names("multirun/2025-01-01/10-00-00", 0)[1] != a[1]
    assert sweep_point_names("multirun/2025-01-01/11-00-00", 1)[1] != a[1]


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory) -> Path:
    """64 training and 16 test rows of a tiny copy-with-offset task, in hrm's dataset format."""
    root = tmp_path_factory.mktemp("data") / "toy"
    rng = np.random.default_rng(1)
    for split, n in (("train", 64), ("test", 16)):
        inputs = rng.integers(1, 5, size=(n, 8), dtype=np.uint8)
        meta = DatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=5, seq_len=8,
                               num_puzzle_identifiers=2, total_groups=n, mean_puzzle_examples=1.0, sets=["all"])
        write_split(root / split, meta, {
            "inputs": inputs, "labels": (inputs % 4 + 1).astype(np.uint8),
            "puzzle_identifiers": np.ones(n, dtype=np.int32),
            "puzzle_indices": np.arange(n + 1, dtype=np.int32), "group_indices": np.arange(n + 1, dtype=np.int32)})
    (root / "identifiers.json").write_text(json.dumps(["<blank>", "a"]))
    return root


def hrm_train(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DISABLE_COMPILE": "1"}
    return subprocess.run([str(BIN / "hrm-train"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_multirun_points_resume_their_own_directories(toy_data, tmp_path):
    sweep = ["-m", "hydra/launcher=basic", "hydra.sweep.dir=sweep", f"data_path={toy_data}", *TINY, "epochs=4",
             "eval_interval=2", "lr=1e-4,2e-4"]
    first = hrm_train([*sweep, "max_steps=3"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "resumed" not in first.stdout
    points = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert points == ["0", "1"]
    for num, lr in (("0", 1e-4), ("1", 2e-4)):
        saved = yaml.safe_load((tmp_path / "sweep" / num / "all_config.yaml").read_text())
        assert saved["lr"] == lr and saved["checkpoint_path"] == str(tmp_path / "sweep" / num)
        assert json.loads((tmp_path / "sweep" / num / "status.json").read_text())["step"] == 3

    again = hrm_train([*sweep, "max_steps=6"], tmp_path)  # what a requeued point does: same sweep dir and number
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("resumed at step 3") == 2
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()) == ["0", "1"]
    for num in ("0", "1"):
        rows = [json.loads(line) for line in (tmp_path / "sweep" / num / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows if "train/lm_loss" in r] == [1, 2, 3, 4, 5, 6]
    assert not (tmp_path / "checkpoints").exists()


def test_plain_run_keeps_its_random_name(toy_data, tmp_path):
    r = hrm_train([f"data_path={toy_data}", *TINY, "epochs=4", "eval_interval=2", "max_steps=1"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = [p.name for p in (tmp_path / "checkpoints").glob("*/*")]
    assert len(runs) == 1 and runs[0].startswith("HierarchicalReasoningModel_ACTV1 ") and "#" not in runs[0]


def _submitit_task_pids(folder: Path) -> list[int]:
    """Processes running a submitit job whose folder is under `folder`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"submitit.core._submit" in argv and any(str(folder).encode() in a for a in argv):
            pids.append(int(entry.name))
    return pids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the submitit job through /proc")
def test_submitit_signal_saves_then_requeues_into_the_same_directory(toy_data, tmp_path):
    """submitit's USR2 (time limit or preemption) in a hydra-submitit job: the trainer saves its state, submitit
    requeues the point, and the new attempt resumes that state in the same (time-stamped) sweep directory."""
    cmd = [str(BIN / "hrm-train"), "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5",
           f"data_path={toy_data}", *TINY, "epochs=100", "eval_interval=50"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DISABLE_COMPILE": "1"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, sent = time.time() + 120, False
        while time.time() < deadline and proc.poll() is None:
            metrics = list(tmp_path.glob("multirun/*/*/0/metrics.jsonl"))
            if metrics and len(metrics[0].read_text().splitlines()) >= 5:
                pids = _submitit_task_pids(tmp_path)
                assert len(pids) == 1, pids
                os.kill(pids[0], signal.SIGUSR2)
                sent = True
                break
            time.sleep(0.02)
        assert sent, "the sweep point never started training"
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    run_dirs = list(tmp_path.glob("multirun/*/*/0"))
    assert len(run_dirs) == 1 and not (tmp_path / "checkpoints").exists()
    log = "".join(p.read_text() for p in run_dirs[0].parent.glob(".submitit/*/*_log.out"))
    saved = [line for line in log.splitlines() if "SIGUSR2: state saved at step" in line]
    assert len(saved) == 1, log[-3000:]
    step = int(saved[0].split("state saved at step ")[1].split(";")[0])
    assert step >= 5 and "submitit requeues this point" in saved[0]
    assert log.index(saved[0]) < log.index("Requeued job") < log.index(f"resumed at step {step} ")
    assert json.loads((run_dirs[0] / "status.json").read_text())["state"] == "finished"
    rows = [json.loads(line) for line in (run_dirs[0] / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/lm_loss" in r] == list(range(1, 401))


def test_sweep_points_are_grouped_by_their_launcher_settings():
    from hydra_plugins.hrm_sweep_launcher import groups, launcher_overrides

    assert launcher_overrides(["lr=1e-4", "+resources.partition=savio4_gpu", "resources.qos=savio_lowprio",
                               "resources.time=01:00:00"]) == {"partition": "savio4_gpu", "qos": "savio_lowprio"}
    points = [["+resources.partition=a", "lr=1"], ["+resources.partition=a", "lr=2"],
              ["+resources.partition=b", "lr=1"], ["+resources.partition=a", "lr=3"], ["lr=4"]]
    assert groups(points) == [({"partition": "a"}, [0, 1]), ({"partition": "b"}, [2]), ({"partition": "a"}, [3]),
                              ({}, [4])]
