"""`hrm-data`: build, generate, check and show datasets.

Each command lives in its own module, which exposes `register(subparsers)` for top-level commands
(check, show, arc-vote) or `register_build(subparsers)` / `register_generate(subparsers)` for the
`build X` / `generate X` families. Every parser sets `func` via set_defaults; `func(args)` returns the
exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that add commands; order is the order shown in --help.
COMMAND_MODULES = (
    "hrm.data.sudoku",
    "hrm.data.maze",
    "hrm.data.logistics",
    "hrm.data.arc",
    "hrm.data.check",
    "hrm.data.show",
    "hrm.data.view",
    "hrm.arc_vote",
)


def build_parser() -> argparse.ArgumentParser:
    from hrm.errors import ShortParser

    parser = ShortParser(prog="hrm-data", description="Build, generate, check and show HRM datasets.")
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    build = top.add_parser("build", help="build a dataset in the reference layout").add_subparsers(
        dest="kind", required=True, metavar="KIND")
    generate = top.add_parser("generate", help="write raw puzzles (CSV) for offline use").add_subparsers(
        dest="kind", required=True, metavar="KIND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        if hasattr(module, "register_build"):
            module.register_build(build)
        if hasattr(module, "register_generate"):
            module.register_generate(generate)
        if hasattr(module, "register"):
            module.register(top)
    return parser


def main(argv: list[str] | None = None) -> int:
    from hrm.data.format import DatasetError
    from hrm.errors import debug_enabled, one_line

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DatasetError as e:
        print(f"hrm-data: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM, SIGHUP: builds have removed their temporary directory
        why = str(e) or "Ctrl-C"
        print(f"hrm-data: interrupted ({why}); nothing was left half-written: run the same command again",
              file=sys.stderr)
        return 130
    except Exception as e:  # a full disk, an unreadable file, a fault: one line (HRM_DEBUG=1: the traceback)
        if debug_enabled():
            raise
        print(f"hrm-data: error: {one_line(e)}", file=sys.stderr)
        return 2 if isinstance(e, OSError | ValueError) else 1


if __name__ == "__main__":
    sys.exit(main())
