"""How every CLI answers a failure: one line naming the problem and the fix, a traceback only with HRM_DEBUG=1.

Ranks of one torchrun job that hit the same error print it once: the first rank to claim the message (an exclusive
file named by the message's hash, in a directory of the job) prints it, the others stay quiet.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import os
import shutil
import sys
import tempfile
import traceback
from pathlib import Path


def debug_enabled() -> bool:
    return os.environ.get("HRM_DEBUG", "") not in ("", "0")


def one_line(exc: BaseException, limit: int = 400) -> str:
    """The exception as one line: our own errors as they are; others with their type and where they came from."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        where = f" writing {exc.filename}" if exc.filename else ""
        return f"no space left on the device{where}; fix: free space (df -h) or write elsewhere"
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EROFS) and exc.filename:
        return f"cannot write {exc.filename} ({exc.strerror}); fix: choose a writable path"
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    if not isinstance(exc, ValueError):  # ValueError is our one-line bad input; anything else is a fault
        frames = traceback.extract_tb(exc.__traceback__)
        ours = [f for f in frames if "/hrm/" in f.filename or "/slurm/" in f.filename]
        at = f" (at {Path(ours[-1].filename).name}:{ours[-1].lineno})" if ours else ""
        text = f"{type(exc).__name__}: {text}{at}; rerun with HRM_DEBUG=1 for the traceback"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _job_key() -> str | None:
    """Names the ranks of one launch on this node (their parent: torchrun's agent or slurmstepd), or None."""
    env = os.environ
    if "TORCHELASTIC_RUN_ID" in env:
        return f"{env['TORCHELASTIC_RUN_ID']}-{env.get('MASTER_PORT', '')}-{os.getppid()}"
    if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return f"slurm-{env['SLURM_JOB_ID']}-{env.get('SLURM_STEP_ID', '')}-{os.getppid()}"
    return None


def _drop_old_markers(base: Path, prefix: str) -> None:
    """Marker folders of launches whose parent process is gone (nothing is left behind for long)."""
    for folder in base.glob(f"{prefix}*"):
        tail = folder.name.rsplit("-", 1)[-1]
        if tail.isdigit() and int(tail) != os.getppid():
            try:
                os.kill(int(tail), 0)
            except ProcessLookupError:
                shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                pass


def report(prog: str, message: str) -> None:
    """Print `prog: error: message` to stderr; under torchrun or srun, once per distinct message."""
    key = _job_key()
    if key is not None:
        base, prefix = Path(tempfile.gettempdir()), f"hrm-errors-{os.getuid()}-"
        _drop_old_markers(base, prefix)
        folder = base / f"{prefix}{key}"
        digest = hashlib.sha1(message.encode()).hexdigest()[:16]
        try:
            folder.mkdir(exist_ok=True)
            fd = os.open(folder / digest, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            os.close(fd)
        except FileExistsError:
            return  # another rank said it
        except OSError:
            pass  # no temp dir to share: say it anyway
        rank = os.environ.get("RANK") or os.environ.get("SLURM_PROCID")
        message = f"[rank {rank}] {message}" if rank not in (None, "0") else message
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)


class ShortParser(argparse.ArgumentParser):
    """argparse whose errors are one line, the problem and where the help is (not the whole usage block);
    sub-commands made with add_subparsers inherit it."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; fix: see {self.prog} --help\n")
