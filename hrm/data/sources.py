"""Where builders get their raw inputs: a local folder, a Hugging Face dataset repo, or a pinned git commit.

Compute nodes often have no internet, so every network path fails fast with one line that says how to
work offline (a local folder via --source DIR, or `hrm-data generate`).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path
from urllib.parse import urlparse

from hrm.data.format import DatasetError

OFFLINE_HINT = "pass a local folder with --source DIR or use `hrm-data generate`"


def _hub_host() -> str:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    return urlparse(endpoint).hostname or "huggingface.co"


def _offline_env() -> bool:
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """True when a TCP connection to the hub opens within `timeout_s`.

    DNS lookups ignore socket timeouts, so the probe runs in a daemon thread that we stop waiting for.
    """
    if _offline_env():
        return False
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((_hub_host(), 443), timeout=timeout_s):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return bool(result and result[0])


def _looks_like_path(source: str) -> bool:
    # A hub repo id is exactly "owner/name"; anything else that is not an existing directory is a path.
    if source.startswith(("/", ".", "~")) or source.count("/") != 1 or "\\" in source:
        return True
    return Path(source).exists()


def _check_local(folder: Path, filenames: tuple[str, ...]) -> Path:
    for name in filenames:
        if not (folder / name).is_file():
            raise DatasetError(f"{folder / name} not found: the source folder must hold "
                               f"{', '.join(filenames)}")
    return folder


def resolve_csv_source(source: str, filenames: tuple[str, ...] = ("train.csv", "test.csv"),
                       timeout_s: float = 5.0) -> Path:
    """Return a directory holding `filenames`: `source` itself if it is a folder, else a hub download."""
    path = Path(source).expanduser()
    if path.is_dir():
        return _check_local(path, filenames)
    if path.exists():
        raise DatasetError(f"source {source} is a file, not a folder: pass the folder that holds "
                           f"{', '.join(filenames)}")
    if _looks_like_path(source):
        raise DatasetError(f"source folder {source} does not exist: pass an existing folder with "
                           f"--source DIR or a Hugging Face dataset id such as sapientinc/sudoku-extreme")
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise DatasetError(f"huggingface_hub is not installed, so {source} cannot be downloaded: "
                           f"pip install huggingface_hub, or {OFFLINE_HINT}") from None

    local_only = not hub_reachable(timeout_s)  # the cache may still hold the files
    folders = []
    for name in filenames:
        try:
            got = hf_hub_download(source, name, repo_type="dataset", etag_timeout=timeout_s,
                                  local_files_only=local_only)
        except LocalEntryNotFoundError:
            raise DatasetError(f"no internet and {source}/{name} is not in the local hub cache: "
                               f"{OFFLINE_HINT}") from None
        except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError):
            raise DatasetError(f"dataset {source} was not found on the Hugging Face hub: check the name, "
                               f"or {OFFLINE_HINT}") from None
        except EntryNotFoundError:
            raise DatasetError(f"dataset {source} has no file {name}: check the name, "
                               f"or {OFFLINE_HINT}") from None
        except Exception as e:  # connection errors come from several libraries (requests, httpx, ssl)
            raise DatasetError(f"no internet: could not download {source}/{name} ({type(e).__name__}); "
                               f"{OFFLINE_HINT}") from None
        folders.append(Path(got).parent)
    folder = folders[0]
    if any(f != folder for f in folders):  # defensive: the hub cache keeps one snapshot folder per revision
        raise DatasetError(f"downloaded files of {source} landed in different folders: clear the hub cache")
    return _check_local(folder, filenames)


def _git(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0")
    try:
        return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    except FileNotFoundError:
        raise DatasetError("git is not installed: install git, or copy the repository by hand and pass "
                           "its folder") from None


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in (proc.stderr or proc.stdout or "").strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else f"git exited with {proc.returncode}"


def _resolve_commit(repo: Path, commit: str) -> str | None:
    proc = _git(["rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"], cwd=repo)
    return proc.stdout.strip() if proc.returncode == 0 else None


def _checkout(repo: Path, url: str, commit: str) -> None:
    full = _resolve_commit(repo, commit)
    if full is None:  # not in the clone yet (e.g. a reused old clone): fetch it, then all refs
        _git(["fetch", "--quiet", "origin", commit], cwd=repo)
        full = _resolve_commit(repo, commit)
        if full is None:
            proc = _git(["fetch", "--quiet", "--tags", "origin"], cwd=repo)
            full = _resolve_commit(repo, commit)
            if full is None:
                why = "" if proc.returncode == 0 else f" ({_last_line(proc)})"
                raise DatasetError(f"commit {commit} not found in {url}{why}: check the pinned commit")
    proc = _git(["checkout", "--quiet", "--detach", full], cwd=repo)
    if proc.returncode != 0:
        raise DatasetError(f"git checkout {commit} failed in {repo} ({_last_line(proc)}): "
                           f"remove {repo} and retry")


def git_checkout(url: str, commit: str, dest: Path) -> Path:
    """Clone `url` at `commit` into `dest`, or move an existing clone there to `commit`.

    A fresh clone goes to a temporary sibling that is renamed into place only once checked out, so an
    interrupted clone never looks like a usable one.
    """
    dest = Path(dest)
    if dest.exists():
        if not (dest / ".git").exists():
            raise DatasetError(f"{dest} exists but is not a git clone: remove it or choose another folder")
        head = _git(["rev-parse", "HEAD"], cwd=dest).stdout.strip()
        if head and head == _resolve_commit(dest, commit):
            return dest
        if _git(["status", "--porcelain"], cwd=dest).stdout.strip():
            raise DatasetError(f"{dest} has local changes, so it cannot be moved to commit {commit}: "
                               f"commit or discard them, or remove {dest}")
        _checkout(dest, url, commit)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        proc = _git(["clone", "--quiet", "--no-checkout", url, str(tmp)])
        if proc.returncode != 0:
            raise DatasetError(f"git clone {url} failed ({_last_line(proc)}): check the URL and your "
                               f"internet, or {OFFLINE_HINT}")
        _checkout(tmp, url, commit)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
