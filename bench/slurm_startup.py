"""Start-up time of the login-node CLI: `import slurm`, `hrm-slurm --help`, and a preview.

Each command runs N times in a fresh interpreter; we report the median and the spread of wall time, next
to a bare `python -c pass`, and check that torch was never imported. Usage:
    python bench/slurm_startup.py [--repeat 15] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(argv: list[str], repeat: int, env: dict[str, str], cwd: str) -> list[float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(
            argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True
        )
        times.append(time.perf_counter() - t0)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table for bench/RESULTS.md")
    args = parser.parse_args()

    py = sys.executable
    cli = shutil.which("hrm-slurm") or str(Path(py).with_name("hrm-slurm"))
    work = tempfile.mkdtemp(prefix="slurm-startup-")
    env = {**os.environ, "HRM_SLURM_HOME": work}
    cases = [
        ("python -c pass", [py, "-c", "pass"]),
        ("python -c 'import slurm'", [py, "-c", "import slurm"]),
        ("python -c 'import slurm.cli'", [py, "-c", "import slurm.cli"]),
        ("hrm-slurm --help", [cli, "--help"]),
        ("hrm-slurm status (none recorded)", [cli, "status"]),
        (
            "hrm-slurm preview +experiment=sudoku_demo cluster=local",
            [cli, "preview", "+experiment=sudoku_demo", "cluster=local"],
        ),
    ]
    torch_check = subprocess.run(
        [py, "-c", "import sys, slurm.cli, slurm.pipeline, slurm.jobs; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=work,
    ).stdout.strip()
    rows = []
    for name, argv in cases:
        t = timed(argv, args.repeat, env, work)
        rows.append((name, statistics.median(t) * 1000, min(t) * 1000, max(t) * 1000))
    if args.markdown:
        print("| command | median (ms) | min (ms) | max (ms) |\n|---|---:|---:|---:|")
        for name, med, lo, hi in rows:
            print(f"| `{name}` | {med:.0f} | {lo:.0f} | {hi:.0f} |")
    else:
        for name, med, lo, hi in rows:
            print(f"{name:60s} median {med:7.1f} ms  (min {lo:.1f}, max {hi:.1f})")
    print(
        f"\ntorch imported by slurm.cli/pipeline/jobs: {torch_check}; {args.repeat} runs each; "
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    )
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
