"""hrm-doctor: env on this machine, config arithmetic on a small built dataset, measured memory per batch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hrm.data.format import DatasetMetadata, write_split
from hrm.doctor import config_report, env_report, main, memory_report, parse_batches

REPO = Path(__file__).resolve().parents[1]
TINY_ARCH = ["arch.hidden_size=32", "arch.num_heads=2", "arch.H_layers=1", "arch.L_layers=1",
             "arch.H_cycles=1", "arch.L_cycles=2", "arch.puzzle_emb_ndim=0", "arch.expansion=2"]


def make_dataset(root: Path, groups: int = 10, examples: int = 2, seq_len: int = 9, vocab: int = 11) -> Path:
    """`groups` groups of one puzzle with `examples` examples each, in train and test."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        n = groups * examples
        meta = DatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=vocab,
                               seq_len=seq_len, num_puzzle_identifiers=groups + 1, total_groups=groups,
                               mean_puzzle_examples=float(examples))
        arrays = {"inputs": rng.integers(1, vocab, (n, seq_len), dtype=np.uint8),
                  "labels": rng.integers(1, vocab, (n, seq_len), dtype=np.uint8),
                  "puzzle_identifiers": np.arange(1, groups + 1, dtype=np.int32),
                  "puzzle_indices": np.arange(0, n + 1, examples, dtype=np.int32),
                  "group_indices": np.arange(groups + 1, dtype=np.int32)}
        write_split(root / split, meta, arrays)
    (root / "identifiers.json").write_text(json.dumps(["<blank>"] + [f"p{i}" for i in range(groups)]))
    return root


def test_env_reports_sdpa_ok_on_cpu(capsys):
    report = env_report()
    att = report["attention"]
    assert att["sdpa"]["ok"] and att["sdpa"]["status"].startswith("OK") and att["sdpa"]["max_abs_err"] < 1e-4
    if not report["cuda_available"]:
        assert att["auto_picks"] == "sdpa" and report["gpus"] == []
        assert not att["fa2"]["ok"] and not att["fa3"]["ok"]
    assert report["wandb"]["mode"] in ("online", "offline", "disabled")
    assert set(report["modules"]) == {"LOADEDMODULES", "MODULEPATH"}
    assert main(["env", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["attention"]["sdpa"]["ok"]


def test_help_and_config_do_not_import_torch(tmp_path):
    code = ("import sys; from hrm.doctor import main; main(['config', '+experiment=sudoku_demo', "
            f"'data_path={tmp_path / 'none'}', '--json']); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["dataset"]["built"] is False


def test_config_on_a_built_dataset(tmp_path):
    data = make_dataset(tmp_path / "ds")
    base = ["+experiment=sudoku_demo", f"data_path={data}", "epochs=30", "eval_interval=10",
            "lr_warmup_steps=5"]

    report = config_report(base + ["global_batch_size=6"], gpus=2)
    assert report["dataset"]["built"] and report["dataset"]["metadata"]["total_groups"] == 10
    assert report["total_steps"] == int(30 * 10 * 2 / 6) == 100
    assert report["per_gpu_batch"] == 3 and report["divisible"]
    assert report["regime"] == "traditional"
    assert report["warmup"] == {"steps": 5, "samples": 30, "passes": 1.5}  # 20 examples per epoch
    assert report["errors"] == [] and report["warnings"] == []

    bad = config_report(base + ["global_batch_size=6"], gpus=4)
    assert not bad["divisible"] and bad["per_gpu_batch"] == 1.5
    assert any("not divisible by 4 GPUs" in e and "global_batch_size=4 or 8" in e for e in bad["errors"])

    survey = config_report(base + ["global_batch_size=16"], gpus=1)
    assert survey["regime"] == "survey" and survey["total_steps"] == int(30 * 10 * 2 / 16)
    assert any(w.startswith("survey sampling: global_batch_size=16 > 10 groups") for w in survey["warnings"])

    warm = config_report(base + ["global_batch_size=6", "lr_warmup_steps=500"], gpus=1)
    assert any("lr_warmup_steps 500 >= total_steps 100" in w for w in warm["warnings"])


def test_config_cli_exit_codes_and_unbuilt_dataset(tmp_path, capsys):
    args = ["config", "+experiment=sudoku_demo", f"data_path={tmp_path / 'missing'}"]
    assert main(args + ["--gpus", "3", "--json"]) == 1  # 64 rows do not split over 3 GPUs
    report = json.loads(capsys.readouterr().out)
    assert report["total_steps"] is None and report["warmup"]["passes"] is None
    assert any("not built yet" in w and "hrm-data build sudoku" in w for w in report["warnings"])
    assert main(args + ["--gpus", "0"]) == 2
    assert "--gpus 0" in capsys.readouterr().err
    assert main(args + ["arch.grad_mode=sqrt", "arch.grad_window=99", "--json"]) == 1
    errors = json.loads(capsys.readouterr().out)["errors"]
    assert any("arch.grad_window=99 is outside 1..6" in e for e in errors)  # demo arch: 2x2, T = 6
    assert main(["config", "+experiment=no_such_thing"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown experiment 'no_such_thing'" in err


def test_parse_batches():
    assert parse_batches("64,32, 32") == [32, 64]
    with pytest.raises(ValueError, match="comma-separated"):
        parse_batches("32;64")
    with pytest.raises(ValueError, match="positive"):
        parse_batches("0,8")


def test_memory_grows_with_batch(tmp_path):
    data = make_dataset(tmp_path / "ds", seq_len=64)
    report = memory_report(["+experiment=sudoku_demo", f"data_path={data}", *TINY_ARCH], [4, 128], steps=2,
                           device="cpu")
    small, large = report["rows"]
    assert small["fits"] and large["fits"], report["rows"]
    assert report["seq_len"] == 64 and report["shape_from"].startswith("dataset")
    assert 0 < small["peak_mb"] < large["peak_mb"]
    assert large["peak_mb"] - small["peak_mb"] > 5  # 32x the activations of a 65-token, 32-wide model
    assert small["step_s"] > 0 and report["largest_fitting_batch"] == 128



def test_memory_limit_marks_batches_that_do_not_fit(tmp_path, monkeypatch):
    """The limit check on measured rows (the measuring subprocess is replaced by known numbers)."""
    data = make_dataset(tmp_path / "ds")
    measured = {8: 300.0, 16: 700.0, 32: 1500.0}
    monkeypatch.setattr("hrm.doctor._run_worker", lambda spec, timeout: {
        "batch": spec["batch"], "fits": True, "status": "ok", "peak_mb": measured[spec["batch"]] - 250,
        "process_peak_mb": measured[spec["batch"]]})
    report = memory_report(["+experiment=sudoku_demo", f"data_path={data}"], [8, 16, 32], device="cpu",
                           limit_gb=1.0)
    assert [r["fits"] for r in report["rows"]] == [True, True, False]
    assert "over the 1 GB limit" in report["rows"][2]["status"]
    assert report["largest_fitting_batch"] == 16


def test_config_finds_the_dataset_where_hrm_slurm_puts_it(tmp_path, monkeypatch):
    """On a cluster with a data_dir (Savio: scratch), a relative data_path means the copy under data_dir."""
    (tmp_path / "clusters").mkdir()
    (tmp_path / "clusters" / "mycluster.yaml").write_text(
        f"name: mycluster\nextends: local\ndata_dir: {tmp_path / 'scratch'}\n")
    monkeypatch.setenv("HRM_CLUSTERS_DIR", str(tmp_path / "clusters"))
    monkeypatch.setenv("HRM_CLUSTER", "mycluster")
    monkeypatch.chdir(tmp_path)
    make_dataset(tmp_path / "scratch" / "data" / "toy")
    report = config_report(["+experiment=sudoku_demo", "data_path=data/toy", "global_batch_size=4"], gpus=1)
    assert report["dataset"]["path"] == str(tmp_path / "scratch" / "data" / "toy") and report["dataset"]["built"]
    monkeypatch.setenv("HRM_CLUSTER", "local")  # no data_dir: the working directory, where nothing is built
    report = config_report(["+experiment=sudoku_demo", "data_path=data/toy", "global_batch_size=4"], gpus=1)
    assert report["dataset"]["path"] == str(tmp_path / "data" / "toy") and not report["dataset"]["built"]
