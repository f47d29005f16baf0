"""Benchmark: `hrm-data view` page for 1,000 Sudoku puzzles with predictions: size, write time, load time.

    python bench/viewer_page.py [--puzzles 1000] [--repeats 5]

Builds a generated Sudoku test split, writes hrm-evaluate-format predictions (two ranks, some wrong), writes the
page, then opens it in headless Chromium over the DevTools pipe (the test's client) and reads the page's own
`viewer-ready` performance mark (navigation start to the end of its script: placeholders made, first screen
drawn). Also times a full scroll to the bottom (every puzzle drawn). Prints the rows of bench/RESULTS.md's
"## Viewer page" section.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from test_viewer import CHROMIUM, Browser, corrupt, scroll_through, write_preds  # noqa: E402

from hrm.data import view  # noqa: E402
from hrm.data.cli import main as hrm_data  # noqa: E402
from hrm.data.format import load_split  # noqa: E402


def measure(browser: Browser, page: Path, puzzles: int, repeats: int) -> dict:
    """Load time (the page's viewer-ready mark, and wall time from navigation) and a full scroll-through."""
    ready, walls, scrolls, steps = [], [], [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        browser.open(page)
        walls.append(1000 * (time.perf_counter() - t0))
        ready.append(browser.eval("performance.getEntriesByName('viewer-ready')[0].startTime"))
        assert browser.errors() == [], browser.errors()
        t0 = time.perf_counter()
        seen, counts = scroll_through(browser)
        scrolls.append(time.perf_counter() - t0)
        steps, most = len(counts), max(counts)
        assert len(seen) == puzzles, len(seen)
    return {"ready": ready, "wall": statistics.median(walls), "scroll": statistics.median(scrolls), "steps": steps,
            "most": most}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--puzzles", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if CHROMIUM is None:
        sys.exit("no chromium binary: apt-get install chromium")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        hrm_data(["generate", "sudoku", "--count", "2", "--test-count", str(args.puzzles), "--seed", "3",
                  "--output-dir", str(tmp / "csv")])
        hrm_data(["build", "sudoku", "--source", str(tmp / "csv"), "--output-dir", str(tmp / "ds")])
        datasets = [("Sudoku (generated)", tmp / "ds", 11, 2)]
        maze = REPO.parent / "shared" / "data" / "raw" / "maze-30x30-hard-1k" / "hrm-built"
        if (maze / "test" / "dataset.json").is_file():
            datasets.append(("Maze 30x30 (reference build)", maze, 6, 1))
        browser = Browser(tmp / "profile")
        try:
            for name, data, vocab, lo in datasets:
                labels = np.asarray(load_split(data / "test")["labels"][: args.puzzles])
                pred = corrupt(labels, list(range(0, len(labels), 7)), 2, vocab=vocab, lo=lo)
                keep = np.zeros(len(load_split(data / "test")["labels"]), dtype=bool)
                keep[: len(labels)] = True
                full = np.zeros((len(keep), labels.shape[1]), dtype=np.int64)
                full[: len(labels)] = pred
                prefix = write_preds(tmp / name.split()[0], 100, data, full, keep)
                t0 = time.perf_counter()
                page = view.write_view(data, tmp / f"{name.split()[0]}.html", preds=prefix, limit=args.puzzles)
                write_s = time.perf_counter() - t0
                m = measure(browser, page, len(labels), args.repeats)
                rows.append(f"| {len(labels)} {name}, predictions | {page.stat().st_size / 1e6:.2f} | {write_s:.2f} | "
                            f"{statistics.median(m['ready']):.0f} ({min(m['ready']):.0f}-{max(m['ready']):.0f}) | "
                            f"{m['wall']:.0f} | {m['scroll']:.1f} ({m['steps']} steps) | {m['most']} |")
        finally:
            browser.close()
        version = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True).stdout.strip()
    print("\n".join(rows))
    print(f"- {version}, python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}, "
          f"date {datetime.date.today()}, {args.repeats} loads each")
    return 0


if __name__ == "__main__":
    sys.exit(main())
