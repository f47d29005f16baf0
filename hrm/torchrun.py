"""`python -m hrm.torchrun ARGS`: torchrun (same arguments), with its failure report cut to one line.

When a rank fails, torchrun itself prints a Python traceback and a 25-line ChildFailedError box around the rank's
own one-line error. Our ranks print their error themselves (once per distinct message, hrm.errors.report), so here
torchrun's report is one line naming the first rank that failed and its exit code; its exit code is passed on.
HRM_DEBUG=1 shows torchrun's own report.
"""

from __future__ import annotations

import logging
import sys

from hrm.errors import debug_enabled


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if not debug_enabled():  # "Sending process N closing signal SIGTERM", "failed (exitcode: 2) ..."
        for name in ("torch.distributed.elastic", "torch.distributed.run"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    args = get_args_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run(args)
    except ChildFailedError as e:
        _drop_markers()
        if debug_enabled():
            raise
        rank, failure = e.get_first_failure()
        code = failure.exitcode
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        print(f"torchrun: rank {rank} {how} (its error is above); the other ranks were stopped",
              file=sys.stderr, flush=True)
        return code if code > 0 else 1
    except KeyboardInterrupt:
        return 130
    finally:
        _drop_markers()
    return 0


def _drop_markers() -> None:
    """The folder where this launch's ranks claimed their messages (hrm.errors.report): ours to remove."""
    import os
    import shutil
    import tempfile
    from pathlib import Path

    for folder in Path(tempfile.gettempdir()).glob(f"hrm-errors-{os.getuid()}-*-{os.getpid()}"):
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
