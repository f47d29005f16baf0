"""`hrm-slurm`: submit / preview / status / logs / cancel / collect HRM pipelines on Slurm.

Start-up matters on a login node: this module imports only the standard library at the top; hydra,
submitit and rich are imported by the commands that need them, and torch never.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

USAGE_KEYS = """\
Slurm keys (everything else is a training override passed to hrm-train, e.g. lr=7e-5):
  cluster=savio|local|NAME   partition=NAME   gpus=N (per node)   gpu_type=A5000   nodes=N
  cpus_per_gpu=N   cpus=N (CPU-only training)   time=D-HH:MM:SS   mem=32G
  account=fc_x   launcher=torchrun|srun
  qos=NAME (train and eval; default: chosen per stage from the account, partition and GPU type)
  qos.data=|qos.train=|qos.eval=|qos.collect=NAME (one stage)
  max_requeues=N   venv=PATH   runs_dir=DIR   data_time=...   eval_time=...
  stages=data,train,eval,collect (only these; default all)   mail=you@berkeley.edu (on failure and at the end)
"""


def _console():
    from rich.console import Console

    # In a log or a pipe, keep long paths (logs, run directories) on one line instead of 80 columns.
    return Console() if sys.stdout.isatty() else Console(width=250)


def _error(msg: str) -> int:
    print(f"hrm-slurm: error: {msg}", file=sys.stderr)
    return 2


# --- submit / preview -------------------------------------------------------------------------------------


def _plan(overrides: list[str]):
    """pipeline.plan, plus the keys handled here: stages= (submit only those) and mail=."""
    from slurm import pipeline
    from slurm.jobs import add_mail, stage_keys

    rest, names, mail = stage_keys(overrides)
    keys = {a.split("=", 1)[0].lstrip("+~") for a in rest}
    if names and "train" not in names and "checkpoint_path" not in keys:
        rest += _last_run(rest)  # eval/collect on their own: the experiment's last run, not a new directory
    p = pipeline.plan(rest, stage_names=names)
    add_mail(p.stages, mail)
    return p


def _last_run(args: list[str]) -> list[str]:
    from slurm import pipeline

    experiment = pipeline.split_args(args)[0]
    runs = [r["run_dir"] for r in pipeline.load_records() if r.get("experiment") == experiment]
    return [f"checkpoint_path={runs[0]}"] if runs else []


def cmd_preview(args: argparse.Namespace) -> int:
    from rich.table import Table

    from slurm import pipeline
    from slurm.jobs import sbatch_text

    p = _plan(args.overrides)
    console = _console()
    for name, why in p.skipped.items():
        print(f"# stage {name}: skipped ({why})")
    previous = None
    for i, stage in enumerate(p.stages):
        dep = f"afterok:<{previous} job id>" if previous else None
        params = p.parameters(stage, dep)
        print(f"# ===== stage {stage.name} ({i + 1}/{len(p.stages)}) =====")
        print(
            f"# runs: {' '.join(stage.argv)}"
            + (f"  [launcher: {stage.launcher}]" if stage.launcher != "single" else "")
        )
        if stage.preflight:
            print(f"# first, on the same nodes: {' '.join(stage.preflight)}")
        print("# submitit parameters:")
        print(json.dumps(params, indent=2))
        print("# sbatch script:")
        print(sbatch_text(p.slurm_dir / stage.name, params))
        previous = stage.name
    table = Table(title=f"Service Units (upper bound: the full time limit) on {p.cluster.name}")
    for col in ("stage", "partition", "nodes", "GPUs", "cores", "time (min)", "SU"):
        table.add_column(col, justify="right" if col not in ("stage", "partition") else "left")
    total = 0.0
    for stage in p.stages:
        r = stage.request
        su = pipeline.profiles.service_units(p.cluster, r)
        total += su
        table.add_row(
            stage.name,
            r.partition,
            str(r.nodes),
            f"{r.gpus * r.nodes} {r.gpu_type or ''}".strip(),
            str(r.cores),
            str(r.time_min),
            f"{su:,.1f}",
        )
    table.add_row("total", "", "", "", "", "", f"{total:,.1f}", style="bold")
    console.print(table)
    account = next((s.request.account for s in p.stages if s.request.account), None)
    if p.cluster.account_kind(account) == "allowance" and total > 0:
        # Savio's banking plugin reserves the whole request at submission and refunds what is not used
        print(f"FCA: needs {total:,.0f} SUs available now; check with check_usage.sh -a {account}")
    for note in p.notes:
        print(note)
    print(f"Nothing submitted. Run directory would be {p.run_dir}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from rich.table import Table

    from slurm import pipeline

    p = _plan(args.overrides)
    if not p.stages:
        for name, why in p.skipped.items():
            print(f"stage {name}: skipped ({why})")
        print("nothing to submit")
        return 0
    record = pipeline.submit(p)
    table = Table(title=f"pipeline {record['id']} on {p.cluster.name}")
    for col in ("stage", "job id", "log"):
        table.add_column(col, overflow="fold")
    for s in record["stages"]:
        table.add_row(s["name"], s["job_id"] or f"skipped: {s['skipped']}", s["log"] or "")
    _console().print(table)
    print(f"run directory: {p.run_dir}")
    return 0


# --- status / logs / cancel -------------------------------------------------------------------------------


def _restarts_from_run(record: dict) -> str:
    path = Path(record["run_dir"]) / "slurm_restarts.txt"
    return path.read_text().strip() if path.is_file() else ""


def cmd_status(args: argparse.Namespace) -> int:
    from rich.table import Table

    from slurm import pipeline, queue

    records = pipeline.load_records(args.pipeline, limit=None if args.all or args.pipeline else 5)
    if not records:
        print("no pipelines recorded yet (hrm-slurm submit ...)")
        return 0
    console = _console()
    for rec in records:
        states = queue.job_states([s["job_id"] for s in rec["stages"] if s.get("job_id")])
        table = Table(title=f"{rec['id']}  ({rec.get('experiment')}, {rec['cluster']}, {rec['created']})")
        for col in ("stage", "job id", "state", "elapsed", "requeues", "log"):
            table.add_column(col, overflow="fold")
        for s in rec["stages"]:
            if not s.get("job_id"):
                table.add_row(s["name"], "-", "SKIPPED", "", "", s.get("skipped") or "")
                continue
            st = states.get(s["job_id"], {})
            restarts = st.get("restarts")
            if restarts is None and s["name"] == "train":
                restarts = _restarts_from_run(rec)
            state = st.get("state") or "UNKNOWN"
            if st.get("reason") and st.get("state") == "PENDING":
                state += f" {st['reason']}"
            table.add_row(
                s["name"],
                s["job_id"],
                state,
                st.get("elapsed", ""),
                str(restarts or 0) if s["name"] == "train" else "",
                s.get("log") or "",
            )
        console.print(table)
        for s in rec["stages"]:  # a job that ended badly: what happened, in one line
            st = states.get(s.get("job_id") or "", {})
            if queue.is_done(st.get("state", "")) and st.get("state") != "COMPLETED":
                print(f"{s['name']} {s['job_id']}: {st['state']} after {st.get('elapsed') or '?'} on "
                      f"{st.get('node') or '?'}: {queue.why(s.get('log'))}")
    return 0


def _stage_of(args: argparse.Namespace) -> tuple[dict, dict]:
    from slurm import pipeline
    from slurm.profiles import RequestError

    records = pipeline.load_records(args.pipeline, limit=1)
    if not records:
        raise RequestError("no pipelines recorded yet; fix: hrm-slurm submit +experiment=NAME")
    rec = records[0]
    for s in rec["stages"]:
        if s["name"] == args.stage:
            if not s.get("job_id"):
                raise RequestError(f"stage {args.stage} of {rec['id']} was skipped ({s.get('skipped')})")
            return rec, s
    names = ", ".join(s["name"] for s in rec["stages"])
    raise RequestError(f"no stage '{args.stage}' in {rec['id']} (stages: {names}); fix: hrm-slurm logs STAGE")


def cmd_logs(args: argparse.Namespace) -> int:
    from slurm import queue

    _, stage = _stage_of(args)
    path = Path(stage["log"])
    pos = 0
    while True:
        if path.is_file():
            with path.open("rb") as f:
                f.seek(pos)
                chunk = f.read()
                pos += len(chunk)
            if chunk:
                sys.stdout.write(chunk.decode(errors="replace"))
                sys.stdout.flush()
        elif not args.follow:
            print(f"(no log yet at {path}; the job may still be pending)")
        if not args.follow:
            return 0
        state = queue.job_states([stage["job_id"]]).get(stage["job_id"], {}).get("state", "")
        if queue.is_done(state):
            print(f"[hrm-slurm] job {stage['job_id']} is {state}")
            return 0
        time.sleep(1.0)


def cmd_cancel(args: argparse.Namespace) -> int:
    import subprocess

    from slurm import pipeline

    records = pipeline.load_records(args.pipeline, limit=1)
    if not records:
        return _error("no pipelines recorded yet")
    rec = records[0]
    ids = [
        s["job_id"] for s in rec["stages"] if s.get("job_id") and (not args.stage or s["name"] == args.stage)
    ]
    if not ids:
        return _error(f"nothing to cancel in {rec['id']}")
    subprocess.run(["scancel", *ids], check=False)
    print(f"cancelled {rec['id']}: jobs {', '.join(ids)}")
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    from slurm import collect, pipeline

    runs = [Path(r) for r in args.runs] or [Path(r["run_dir"]) for r in pipeline.load_records()]
    out = Path(args.out) if args.out else Path("results")
    rows = collect.collect(runs, out)
    collect.print_table(rows, _console())
    print(f"wrote {out / 'results.csv'}, {out / 'results.md'} and plots in {out}")
    return 0


# --- parser -----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from hrm.errors import ShortParser

    parser = ShortParser(
        prog="hrm-slurm",
        description="Run HRM experiments as Slurm pipelines (data -> train -> eval -> collect).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Examples:\n  hrm-slurm preview +experiment=arc1 cluster=savio account=fc_x gpus=8\n"
        "  hrm-slurm submit +experiment=sudoku_demo cluster=local\n  hrm-slurm status\n"
        "  hrm-slurm logs -f train\n\n" + USAGE_KEYS,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, func, help_ in (
        ("submit", cmd_submit, "submit the pipeline and print its jobs"),
        ("preview", cmd_preview, "show the exact sbatch scripts and the SU cost; submit nothing"),
    ):
        p = sub.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=USAGE_KEYS,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument(
            "overrides",
            nargs="*",
            metavar="KEY=VALUE",
            help="+experiment=NAME, Slurm keys, training overrides",
        )
        p.set_defaults(func=func)
    p = sub.add_parser("run-local", help="run the same pipeline's stages as processes on this machine (no Slurm)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="+experiment=NAME and training overrides")
    p.set_defaults(func=lambda a: __import__("slurm.local", fromlist=["run_local"]).run_local(a.overrides))
    p = sub.add_parser("status", help="squeue/sacct state of recorded pipelines")
    p.add_argument(
        "pipeline", nargs="?", help="pipeline id (or prefix) or run directory; default: the last 5"
    )
    p.add_argument("--all", action="store_true", help="all recorded pipelines")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("logs", help="print (or follow) a stage's log")
    p.add_argument("stage", help="data, train, eval or collect")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    p.add_argument("--pipeline", help="pipeline id or run directory; default: the latest")
    p.set_defaults(func=cmd_logs)
    p = sub.add_parser("cancel", help="scancel a pipeline's jobs")
    p.add_argument("pipeline", nargs="?", help="pipeline id or run directory; default: the latest")
    p.add_argument("--stage", help="cancel only this stage")
    p.set_defaults(func=cmd_cancel)
    p = sub.add_parser("collect", help="gather metrics and evaluations into a table, CSV, Markdown and plots")
    p.add_argument("runs", nargs="*", help="run directories; default: every recorded pipeline's")
    p.add_argument("--out", help="output directory (default: ./results)")
    p.set_defaults(func=cmd_collect)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from hrm.errors import debug_enabled, one_line
    from slurm.profiles import RequestError

    try:
        return int(args.func(args) or 0)
    except RequestError as e:
        return _error(str(e))
    except KeyboardInterrupt:
        print("hrm-slurm: interrupted (Ctrl-C); nothing more was sent", file=sys.stderr)
        return 130
    except Exception as e:  # a fault (or an OSError: unwritable --out, full disk): one line unless HRM_DEBUG=1
        if debug_enabled():
            raise
        _error(one_line(e))
        return 2 if isinstance(e, OSError | ValueError) else 1


if __name__ == "__main__":
    sys.exit(main())
