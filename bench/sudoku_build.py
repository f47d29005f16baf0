"""Benchmark: build the paper's Sudoku 1k-aug-1000 set and compare with the reference builder.

    python -m bench.sudoku_build [--repeats N] [--no-record]

Each build runs `hrm-data build sudoku` in a fresh subprocess (imports included) into a temporary
directory; wall time is measured around it and peak RSS comes from getrusage(RUSAGE_CHILDREN).
Results go to the "## Sudoku builder" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RAW = Path(os.environ.get("HRM_SHARED_DIR", REPO.parent / "shared")) / "data" / "raw" / "sudoku-extreme"
RESULTS = REPO / "bench" / "RESULTS.md"
SECTION = "## Sudoku builder"
# The reference build_sudoku_dataset.py (--subsample-size 1000 --num-aug 1000), same inputs, this machine.
REFERENCE_S, REFERENCE_RSS_GB = 87.0, 3.6


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_once(workdir: Path, i: int) -> float:
    src = workdir / "src"
    out = workdir / f"out{i}"
    cmd = [sys.executable, "-m", "hrm.data.cli", "build", "sudoku", "--source", str(src), "--output-dir",
           str(out), "--subsample-size", "1000", "--num-aug", "1000", "--seed", "0"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, cwd=REPO)
    wall = time.perf_counter() - start
    n = len(np.load(out / "train" / "all__inputs.npy", mmap_mode="r"))
    assert n == 1_001_000, f"unexpected train size {n}"
    return wall


def record(text: str) -> None:
    """Replace (or append) our section of RESULTS.md, leaving other sections alone."""
    body = RESULTS.read_text() if RESULTS.is_file() else "# Benchmarks\n"
    lines = body.splitlines()
    if SECTION in lines:
        start = lines.index(SECTION)
        end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")), len(lines))
        lines[start:end] = text.rstrip("\n").splitlines() + [""]
    else:
        lines += ["", *text.rstrip("\n").splitlines()]
    RESULTS.write_text("\n".join(lines).rstrip("\n") + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-record", action="store_true", help="print only, do not edit bench/RESULTS.md")
    args = parser.parse_args(argv)
    if not (RAW / "train.csv").is_file():
        print(f"{RAW / 'train.csv'} not found: set HRM_SHARED_DIR to the shared folder", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="hrm-bench-sudoku-") as tmp:
        workdir = Path(tmp)
        (workdir / "src").mkdir()
        (workdir / "src" / "train.csv").symlink_to(RAW / "train.csv")
        (workdir / "src" / "test.csv").symlink_to(RAW / "test_standin_tdoku.csv")
        walls = [run_once(workdir, i) for i in range(args.repeats)]
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    best, median = min(walls), statistics.median(walls)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    table = [
        "| builder | wall time (s) | peak RSS (MB) |",
        "|---|---:|---:|",
        f"| reference build_sudoku_dataset.py | {REFERENCE_S:.0f} | {REFERENCE_RSS_GB * 1024:.0f} |",
        f"| hrm-data build sudoku (best of {len(walls)}) | {best:.2f} | {peak_mb:.0f} |",
        f"| hrm-data build sudoku (median) | {median:.2f} | |",
        f"| ratio | **{REFERENCE_S / best:.1f}x faster** | "
        f"**{peak_mb / (REFERENCE_RSS_GB * 1024):.2f}x the memory** |",
    ]
    text = "\n".join([
        SECTION,
        "",
        "`python -m bench.sudoku_build`: the paper's Sudoku-Extreme 1k-aug-1000 set (the 1000 rows of",
        "`raw/sudoku-extreme/train.csv`, `--subsample-size 1000 --num-aug 1000`: 1,001,000 train puzzles;",
        "test = the 10,000-row stand-in CSV). Each build is a fresh `hrm-data` subprocess, imports and",
        "source hashing included; peak RSS counts the memory-mapped output pages. Target: >= 10x faster",
        "than the reference (87 s, 3.6 GB on this machine) with <= 1/4 of its memory.",
        "",
        *table,
        "",
        f"- machine: {os.cpu_count()} CPUs ({cpu_model()}), 1-min load average {load:.2f} at the end",
        f"- python {platform.python_version()}, numpy {np.__version__}",
        f"- date: {datetime.date.today().isoformat()}",
        f"- all wall times (s): {', '.join(f'{w:.2f}' for w in walls)}",
        "",
    ])
    try:
        from rich.console import Console
        from rich.markdown import Markdown

        Console().print(Markdown("\n".join(table)))
    except ImportError:
        print("\n".join(table))
    if not args.no_record:
        record(text)
        print(f"recorded in {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
