"""Peak activation memory and step time of grad_mode one_step / full / sqrt, for T = 4 ... 256.

    python -m bench.sqrt_memory [--quick] [--hidden 64 --batch 16 --seq-len 32]

Each (mode, T) runs in its own subprocess so that one run's memory cannot hide another's. On a GPU the
peak is torch.cuda.max_memory_allocated over one training step, above what was allocated before it.
On CPU it is the peak resident set size over the step (VmHWM, reset just before through
/proc/self/clear_refs) above the resident size before it, with glibc told to mmap every allocation of
64 KiB or more so that freed activations really leave the process. Writes the
`## Square-root-space gradients` section of bench/RESULTS.md and bench/sqrt_memory.png.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SECTION = "## Square-root-space gradients"
MODES = ("one_step", "full", "sqrt")
CYCLES = {4: (2, 1), 16: (4, 3), 64: (8, 7), 256: (16, 15)}  # T = H*L + H
MB = 1024 * 1024




def worker(args: argparse.Namespace) -> dict:
    """One (mode, T) measurement in this process; returns a JSON-able row."""
    import torch

    from hrm.model.hrm_act import HierarchicalReasoningModel_ACTV1, HRMConfig
    from hrm.model.sqrt_bptt import choose_stretch, estimate_activation_bytes, measure_application_bytes
    from hrm.rss import peak_rss, reset_peak_rss, rss_bytes

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(1)  # CPU time of one thread measures the work, whatever else shares the cores
    H, L = CYCLES[args.T]
    torch.manual_seed(0)
    cfg = HRMConfig(batch_size=args.batch, seq_len=args.seq_len, vocab_size=12, num_puzzle_identifiers=1,
                    puzzle_emb_ndim=0, hidden_size=args.hidden, num_heads=4, H_layers=1, L_layers=1,
                    H_cycles=H, L_cycles=L, forward_dtype="float32", grad_mode=args.mode)
    with torch.device(device):
        inner = HierarchicalReasoningModel_ACTV1(cfg).inner.train()
    g = torch.Generator().manual_seed(0)
    batch = {"inputs": torch.randint(1, 12, (args.batch, args.seq_len), generator=g).to(device),
             "puzzle_identifiers": torch.zeros(args.batch, dtype=torch.int32, device=device)}
    reset = torch.ones(args.batch, dtype=torch.bool, device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    clock = time.perf_counter if device.type == "cuda" else time.process_time

    def step() -> None:
        carry = inner.reset_carry(reset, inner.empty_carry(args.batch, device))
        _, logits, _ = inner(carry, batch)
        logits.square().mean().backward()

    def forward_only(grad: bool = True) -> None:
        """A forward that records the graph (as the recomputation does) and then drops it."""
        with torch.set_grad_enabled(grad):
            inner(inner.reset_carry(reset, inner.empty_carry(args.batch, device)), batch)

    forward_only(grad=False)  # kernels, thread pools, lazy buffers: not part of the step's memory
    for p in inner.parameters():
        p.grad = torch.zeros_like(p)
    sync()
    if args.worker == "time":
        step()  # warm-up
        times, fwd_times = [], []
        for _ in range(args.repeats):
            sync()
            t0 = clock()
            step()
            sync()
            times.append(clock() - t0)
            t0 = clock()
            forward_only()
            sync()
            fwd_times.append(clock() - t0)
        return {"step_s": min(times), "forward_s": min(fwd_times),
                "clock": "wall time" if device.type == "cuda" else "CPU time of 1 thread"}

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        sync()
        peak = torch.cuda.max_memory_allocated() - base
        source = "cuda max_memory_allocated"
    else:
        base = rss_bytes()
        source = "peak RSS (VmHWM)" if reset_peak_rss() else "peak RSS (ru_maxrss, not reset)"
        step()
        peak = peak_rss()[0] - base

    with torch.no_grad():
        x = inner.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
        carry = inner.reset_carry(reset, inner.empty_carry(args.batch, device))
    app = max(measure_application_bytes(inner, carry.z_H, carry.z_L, x, inner.cos_sin()).values())
    state = carry.z_L.numel() * carry.z_L.element_size()
    T = args.T
    if args.mode == "one_step":
        estimate, stretch = 2 * app, None
    elif args.mode == "full":
        estimate, stretch = estimate_activation_bytes(T, T, app, state), None
    else:
        plan = choose_stretch(T, app, state, None)
        estimate, stretch = plan.estimate_bytes, plan.stretch
    return {"mode": args.mode, "T": T, "H_cycles": H, "L_cycles": L, "peak_mb": peak / MB,
            "estimate_mb": estimate / MB, "app_mb": app / MB, "stretch": stretch, "device": device.type,
            "source": source}


def run_one(mode: str, T: int, args: argparse.Namespace) -> dict:
    """Memory in one subprocess (every large block mmapped, so RSS follows the live bytes), time in
    another with the ordinary allocator (mmapping every block would add page faults to the times)."""
    row = {}
    for what in ("memory", "time"):
        env = dict(os.environ)
        if what == "memory":
            env.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
        cmd = [sys.executable, "-m", "bench.sqrt_memory", "--worker", what, "--mode", mode, "--T", str(T),
               "--hidden", str(args.hidden), "--batch", str(args.batch), "--seq-len", str(args.seq_len),
               "--repeats", str(args.repeats)]
        out = subprocess.run(cmd, env=env, cwd=HERE.parent, capture_output=True, text=True, check=False)
        if out.returncode:
            raise RuntimeError(f"{mode} T={T} ({what}) failed:\n{out.stderr[-2000:]}")
        row.update(json.loads(out.stdout.strip().splitlines()[-1]))
    return row


def machine() -> str:
    import torch

    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import psutil

        mem = f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM"
    except ImportError:
        mem = "RAM unknown"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, {mem}, {gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__}; {datetime.date.today().isoformat()}")


def table(rows: list[dict]) -> str:
    lines = ["| T (H x L) | mode | stretch | peak MB (measured) | estimate MB | step s | forward s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['T']} ({r['H_cycles']}x{r['L_cycles']}) | {r['mode']} | {r['stretch'] or '-'} | "
                     f"{r['peak_mb']:.1f} | {r['estimate_mb']:.1f} | {r['step_s']:.3f} | "
                     f"{r['forward_s']:.3f} |")
    return "\n".join(lines)


def summary(rows: list[dict]) -> list[str]:
    by = {(r["mode"], r["T"]): r for r in rows}
    out = []
    if ("full", 16) in by and ("full", 256) in by:
        for mode in ("full", "sqrt"):
            grow = by[(mode, 256)]["peak_mb"] / max(by[(mode, 16)]["peak_mb"], 1e-9)
            out.append(f"- `{mode}`: peak memory T=256 / T=16 = {grow:.1f}x")
    for T in sorted({r["T"] for r in rows}):
        if ("full", T) in by and ("sqrt", T) in by:
            f, s = by[("full", T)], by[("sqrt", T)]
            out.append(f"- T={T}: sqrt uses {s['peak_mb'] / max(f['peak_mb'], 1e-9):.2f}x the memory of "
                       f"full; its step costs {s['step_s'] - f['step_s']:+.3f} s vs full "
                       f"({(s['step_s'] - f['step_s']) / max(f['forward_s'], 1e-9):+.2f} forwards of "
                       f"{f['forward_s']:.3f} s)")
    return out


def write_section(text: str, path: Path) -> None:
    """Replace (or append) only our section of RESULTS.md; other sections are left as they are."""
    old = path.read_text() if path.is_file() else "# Benchmarks\n"
    start = old.find(SECTION)
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = old.find("\n## ", start + len(SECTION))
        new = old[:start] + text + (old[end + 1:] if end >= 0 else "")
    path.write_text(new.rstrip("\n") + "\n")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_m, ax_t) = plt.subplots(1, 2, figsize=(10, 4))
    for mode in MODES:
        rs = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["T"])
        Ts = [r["T"] for r in rs]
        ax_m.plot(Ts, [r["peak_mb"] for r in rs], "o-", label=f"{mode} (measured)")
        ax_m.plot(Ts, [r["estimate_mb"] for r in rs], "x:", color=ax_m.lines[-1].get_color(), alpha=0.6,
                  label=f"{mode} (estimate)")
        ax_t.plot(Ts, [r["step_s"] for r in rs], "o-", label=mode)
    for ax, ylabel in ((ax_m, "peak activation memory (MB)"), (ax_t, "step time (s)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("T = module applications per segment")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("HRM segment gradient: one_step vs full vs sqrt (checkpointed) back-propagation")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sqrt_memory", description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--T", type=int, nargs="*", default=sorted(CYCLES), choices=sorted(CYCLES))
    parser.add_argument("--quick", action="store_true", help="T in {4, 16} only, one repeat (a smoke run)")
    parser.add_argument("--mode", choices=MODES)
    parser.add_argument("--worker", choices=("memory", "time"), help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true",
                        help="print only; do not touch RESULTS.md / the PNG")
    args = parser.parse_args(argv)
    if args.worker:
        args.T = args.T[0] if isinstance(args.T, list) else args.T
        print(json.dumps(worker(args)))
        return
    if args.quick:
        args.T, args.repeats = [4, 16], 1
    rows = []
    for T in args.T:
        for mode in MODES:
            row = run_one(mode, T, args)
            rows.append(row)
            print(f"T={T:4d} {mode:9s} peak {row['peak_mb']:8.1f} MB (estimate {row['estimate_mb']:8.1f}) "
                  f"step {row['step_s']:.3f} s", flush=True)
    text = "\n".join([
        SECTION, "",
        f"`python -m bench.sqrt_memory` (hidden {args.hidden}, batch {args.batch}, seq_len {args.seq_len}, "
        f"1 layer per module, float32, SDPA). Machine: {machine()}.",
        f"Peak = {rows[0]['source']} during one training step (forward + backward of one segment) above the "
        f"memory held before it; estimate = hrm.model.sqrt_bptt's model from the measured saved bytes of one "
        f"module application ({rows[0]['app_mb']:.2f} MB here). Step / forward times: {rows[0]['clock']}, "
        f"best of {args.repeats} (load average {os.getloadavg()[0]:.1f} when done: other jobs shared the "
        f"cores, hence CPU time rather than wall time); forward = one forward of the mode with autograd "
        f"recording (the cost of a recomputation), so sqrt's extra step time is also given in full-mode "
        f"forwards.", "",
        table(rows), "", *summary(rows), "",
        "![peak memory and step time vs T](sqrt_memory.png)", ""])
    print("\n".join(summary(rows)))
    if not args.no_write:
        write_section(text, HERE / "RESULTS.md")
        plot(rows, HERE / "sqrt_memory.png")
        print(f"wrote {HERE / 'RESULTS.md'} and {HERE / 'sqrt_memory.png'}")


if __name__ == "__main__":
    main()
