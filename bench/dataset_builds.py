"""Dataset build time and peak memory: our Maze and ARC builders vs a per-example Python loop.

Each build runs in a fresh subprocess; a sampler sums the RSS of that process and its workers every
50 ms (peak "tree RSS", shared pages of forked workers counted once per process, so an upper bound).
The baseline is a straightforward builder written here: one Python iteration per trial and per
example, every row kept in a Python list until the end, then stacked and saved (the reference's
shape of work). It is run at a smaller --num-aug, since at 1000 it would need ~20 GB of RAM.

    .venv/bin/python bench/dataset_builds.py --raw-dir ../shared/data/raw --num-aug 100 1000 \
        --baseline-num-aug 100
prints a Markdown table for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


def run_measured(code: str) -> tuple[float, float, float]:
    """(wall seconds, peak tree RSS in MB, CPU seconds of the process and its workers) of `python -c code`.

    CPU seconds matter on a shared machine: wall time stretches when other work competes for cores.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in procs if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    proc.communicate()
    wall = time.perf_counter() - start
    done.set()
    thread.join()
    if proc.returncode:
        raise SystemExit(f"benchmark command failed ({proc.returncode}):\n{code}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, peak / 2**20, cpu


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------------------
# The per-example baseline (runs inside the measured subprocess)

BASELINE = r'''
import hashlib, json, sys
from pathlib import Path
import numpy as np
from hrm.data.arc import load_tasks
from hrm.data.augment import dihedral

dirs, out, num_aug, seed = json.loads(ARGS)
rng = np.random.default_rng(seed)
tasks, _, _ = load_tasks([Path(d) for d in dirs])

def task_hash(pairs):
    parts = sorted(hashlib.sha256(bytes(i.shape) + i.tobytes() + bytes(o.shape) + o.tobytes()).digest()
                   for i, o in pairs)
    return hashlib.sha256(b"".join(parts)).digest()

def to_seq(grid, pr, pc):
    canvas = np.zeros((30, 30), dtype=np.uint8)
    h, w = grid.shape
    canvas[pr:pr + h, pc:pc + w] = grid + 2
    if pr + h < 30:
        canvas[pr + h, pc:pc + w] = 1
    if pc + w < 30:
        canvas[pr:pr + h, pc + w] = 1
    return canvas.ravel()

rows = {"train": ([], []), "test": ([], [])}
for task in tasks:
    pairs = task.train + task.test
    variants = [(0, np.arange(10, dtype=np.uint8))]
    seen = {task_hash(pairs)}
    for _ in range(5 * num_aug):
        if len(variants) > num_aug:
            break
        t = int(rng.integers(8))
        m = np.concatenate([[0], rng.permutation(9) + 1]).astype(np.uint8)
        h = task_hash([(dihedral(m[i], t), dihedral(m[o], t)) for i, o in pairs])
        if h not in seen:
            seen.add(h)
            variants.append((t, m))
    for split in ("train", "test"):
        ex = task.split_pairs(split)
        for t, m in variants:
            keep = int(rng.integers(len(ex))) if ex else 0
            for e, (i, o) in enumerate(ex):
                i, o = dihedral(m[i], t), dihedral(m[o], t)
                pr = pc = 0
                if split == "train" and e != keep:
                    pr = int(rng.integers(0, 31 - max(i.shape[0], o.shape[0])))
                    pc = int(rng.integers(0, 31 - max(i.shape[1], o.shape[1])))
                rows[split][0].append(to_seq(i, pr, pc))
                rows[split][1].append(to_seq(o, pr, pc))
for split, (ins, labs) in rows.items():
    d = Path(out) / split
    d.mkdir(parents=True, exist_ok=True)
    np.save(d / "all__inputs.npy", np.stack(ins))
    np.save(d / "all__labels.npy", np.stack(labs))
    print(split, len(ins))
'''


def bench_arc(raw: Path, work: Path, num_aug: int, baseline: bool) -> dict:
    dirs = [str(raw / "ARC-AGI" / "data"), str(raw / "ConceptARC" / "corpus")]
    out = work / f"arc1-{'baseline' if baseline else 'ours'}-{num_aug}"
    shutil.rmtree(out, ignore_errors=True)
    if baseline:
        code = f"ARGS = {json.dumps(json.dumps([dirs, str(out), num_aug, 42]))}\n" + BASELINE
    else:
        code = ("from hrm.data.arc import build_arc\n"
                f"build_arc({dirs!r}, {str(out)!r}, num_aug={num_aug}, seed=42, quiet=True)")
    wall, rss, cpu = run_measured(code)
    examples = sum(_rows(out / s / "all__inputs.npy") for s in ("train", "test"))
    size = dir_bytes(out)
    shutil.rmtree(out, ignore_errors=True)
    return {"what": f"arc1 --num-aug {num_aug}", "builder": "baseline loop" if baseline else "hrm-data",
            "wall_s": wall, "cpu_s": cpu, "peak_rss_mb": rss, "examples": examples, "output_gb": size / 1e9}


def _rows(npy: Path) -> int:
    import numpy as np

    return int(np.load(npy, mmap_mode="r").shape[0])


def bench_maze(raw: Path, work: Path) -> list[dict]:
    out = work / "maze"
    shutil.rmtree(out, ignore_errors=True)
    src = raw / "maze-30x30-hard-1k"
    code = "from hrm.data.maze import build_maze\n"
    wall, rss, cpu = run_measured(code + f"build_maze({str(src)!r}, {str(out)!r})")
    size = dir_bytes(out)
    gen = work / "maze-gen"
    shutil.rmtree(gen, ignore_errors=True)
    gwall, grss, gcpu = run_measured("from hrm.data.maze import generate_maze_csvs\n"
                                  f"generate_maze_csvs({str(gen)!r}, count=1000, test_count=1000, seed=0)")
    digest = hashlib.sha256((gen / "train.csv").read_bytes()).hexdigest()[:12]
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(gen, ignore_errors=True)
    return [{"what": "maze 30x30 hard 1k (train+test)", "builder": "hrm-data", "wall_s": wall, "cpu_s": cpu,
             "peak_rss_mb": rss, "examples": 2000, "output_gb": size / 1e9},
            {"what": f"generate maze 1000+1000 (train.csv {digest})", "builder": "hrm-data", "wall_s": gwall,
             "cpu_s": gcpu, "peak_rss_mb": grss, "examples": 2000, "output_gb": 0.0}]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--raw-dir", default=str(REPO.parent / "shared" / "data" / "raw"))
    p.add_argument("--work-dir", default="/tmp/hrm-bench-builds")
    p.add_argument("--num-aug", type=int, nargs="*", default=[100, 1000])
    p.add_argument("--baseline-num-aug", type=int, nargs="*", default=[100])
    p.add_argument("--skip-maze", action="store_true")
    args = p.parse_args()
    raw, work = Path(args.raw_dir), Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    results = [] if args.skip_maze else bench_maze(raw, work)
    for n in args.baseline_num_aug:
        results.append(bench_arc(raw, work, n, baseline=True))
        print(results[-1], file=sys.stderr)
    for n in args.num_aug:
        results.append(bench_arc(raw, work, n, baseline=False))
        print(results[-1], file=sys.stderr)
    load = os.getloadavg()[0]
    print(f"\n{os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, load {load:.1f}\n")
    print("| build | builder | wall (s) | CPU (s) | peak RSS (MB) | examples | output (GB) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['what']} | {r['builder']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
              f"{r['peak_rss_mb']:.0f} | {r['examples']:,} | {r['output_gb']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
