"""City-logistics dataset: generation, build and linter time and peak memory (`hrm-data ... logistics`).

Each step runs in a fresh subprocess (imports included), measured by `dataset_builds.run_measured` (wall
seconds, CPU seconds, peak RSS of the process tree). The sizes are the two experiments' recipes:
`logistics` (1000 train, 500 val, 1000 test cities of 30x30; train x 4 vehicles x 8 dihedral) and
`logistics_demo` (1000 train, 200 test cities of 10x10).

    .venv/bin/python bench/logistics_build.py [--only demo]
prints a Markdown table for the "City-logistics builder" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dataset_builds import dir_bytes, run_measured  # noqa: E402

RECIPES = {  # name: (train, val, test, side), as in configs/experiment/logistics*.yaml
    "logistics": (1000, 500, 1000, 30),
    "demo": (1000, 0, 200, 10),
}


def _cli(*args: str) -> str:
    return f"import sys; from hrm.data.cli import main; sys.exit(main({list(args)!r}))"


def bench(name: str, work: Path) -> list[tuple[str, float, float, float, int, float]]:
    train, val, test, side = RECIPES[name]
    csv, out = work / f"{name}-csv", work / f"{name}-ds"
    gen = ["generate", "logistics", "--out", str(csv), "--num-train", str(train), "--num-test", str(test),
           "--num-val", str(val), "--grid-size", str(side), "--seed", "0"]
    rows = []
    wall, rss, cpu = run_measured(_cli(*gen))
    rows.append((f"generate {side}x{side} {train}+{val}+{test} cities", wall, cpu, rss,
                 4 * (train + val + test), dir_bytes(csv) / 1e9))
    wall, rss, cpu = run_measured(_cli("build", "logistics", "--source", str(csv), "--output-dir", str(out)))
    examples = sum(len(np.load(p, mmap_mode="r")) for p in out.glob("*/all__inputs.npy"))
    rows.append((f"build {side}x{side} (train x 32)", wall, cpu, rss, examples, dir_bytes(out) / 1e9))
    wall, rss, cpu = run_measured(_cli("check", str(out), "--global-batch-size", "32"))
    rows.append((f"check {side}x{side} (linter, 1000 re-solved per split)", wall, cpu, rss, examples, 0.0))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(RECIPES), default=None)
    args = parser.parse_args(argv)
    names = [args.only] if args.only else list(RECIPES)
    with tempfile.TemporaryDirectory(prefix="hrm-bench-logistics-") as tmp:
        rows = [r for name in names for r in bench(name, Path(tmp))]
    print("| step | wall (s) | CPU (s) | peak RSS (MB) | examples | output (GB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for what, wall, cpu, rss, n, gb in rows:
        print(f"| {what} | {wall:.1f} | {cpu:.1f} | {rss:.0f} | {n:,} | {gb:.3f} |")
    print(f"\n- {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), 1-min load average "
          f"{os.getloadavg()[0]:.2f} at the end; python {platform.python_version()}, numpy {np.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
