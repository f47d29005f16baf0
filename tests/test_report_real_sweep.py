"""The report on real training: a tiny model trained as a 3-seed Hydra sweep (`hrm-train -m seed=0,1,2`), each
run evaluated four times during training, then `hrm-slurm collect`; report.md's best/last lines and the
sweep's mean ± sd must be what evals.csv says."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from test_collect_report import best_last, read_evals, report_lines, summary_table
from test_train import TINY, make_dataset

from slurm import collect

SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("sweep")
    data = make_dataset(tmp / "toy")
    args = ["-m", "hydra/launcher=basic", f"hydra.sweep.dir={tmp / 'sweep'}", f"data_path={data}",
            *[t for t in TINY if not t.startswith("seed=")], "epochs=8", "eval_interval=2",
            f"seed={','.join(map(str, SEEDS))}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DISABLE_COMPILE": "1"}
    r = subprocess.run([sys.executable, "-m", "hrm.train", *args], cwd=tmp, env=env, capture_output=True, text=True,
                       timeout=1200)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return tmp / "sweep"


def test_a_real_seed_sweep_reports_what_its_evaluations_say(sweep, tmp_path):
    out = tmp_path / "results"
    collect.collect([sweep], out)
    evals = read_evals(out)
    lines = report_lines(out)
    assert set(lines) == {f"sweep/{s}" for s in SEEDS}
    bests, lasts = [], []
    for seed in SEEDS:
        run = f"sweep/{seed}"
        steps = sorted({int(e["step"]) for e in evals if e["run"] == run and e["metric"] == "exact_accuracy"})
        assert steps == [16, 32, 48, 64], steps  # 8 batches per epoch, evaluated every 2 epochs
        (bs, bv), (ls, lv) = best_last(evals, run, "all", "exact_accuracy")
        line = lines[run]
        assert (int(line["bs"]), int(line["ls"]), line["metric"]) == (bs, ls, "exact_accuracy")
        assert float(line["bv"]) == pytest.approx(100 * bv, abs=0.005)
        assert float(line["lv"]) == pytest.approx(100 * lv, abs=0.005)
        bests.append(bv)
        lasts.append(lv)
    (row,) = summary_table(out)  # the three seeds are one sweep
    assert row["n"] == "3" and row["seeds"] == "0, 1, 2"
    for col, values in (("best", bests), ("last", lasts)):
        mean, sd = re.fullmatch(r"([\d.]+)% ± ([\d.]+)", row[col]).groups()
        assert float(mean) == pytest.approx(100 * statistics.mean(values), abs=0.005)
        assert float(sd) == pytest.approx(100 * statistics.stdev(values), abs=0.005)
    assert (out / "training_curves.png").is_file() and all((out / f"curves_sweep_{s}.png").is_file() for s in SEEDS)
