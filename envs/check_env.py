"""Whether this Python already has everything `hrm_savio_setup.sh setup` would install, checked offline.

Usage: VENV/bin/python envs/check_env.py ROOT TORCH_REQUIREMENTS. Exit 0 when it has, else 1 and one line
naming the first thing missing. Set-up runs this before pip, so a complete venv is adopted without a
download (a venv made by hand, or after pyproject.toml changed in a way that needs nothing new).
Standard library only, plus the `packaging` that pip vendors.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import sys
import tomllib
from pathlib import Path

try:
    from packaging.requirements import Requirement
except ImportError:  # a bare venv: pip's own copy
    from pip._vendor.packaging.requirements import Requirement


def requirements(root: Path, torch_file: Path) -> list[str]:
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    lines = [ln.split("#", 1)[0].strip() for ln in torch_file.read_text().splitlines()]
    torch = [ln for ln in lines if ln and not ln.startswith("-")]
    return [*torch, *project["dependencies"], *project.get("optional-dependencies", {}).get("dev", [])]


def missing(root: Path, torch_file: Path) -> str | None:
    for line in requirements(root, torch_file):
        req = Requirement(line)
        if req.marker and not req.marker.evaluate({"extra": ""}):
            continue
        try:
            version = md.version(req.name)
        except md.PackageNotFoundError:
            return f"{req.name} is not installed"
        if not req.specifier.contains(version, prereleases=True):
            return f"{req.name} {version} does not satisfy {req}"
    for package in ("hrm", "slurm"):  # hrm-savio itself, installed editable from this checkout
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.origin or not Path(spec.origin).resolve().is_relative_to(root.resolve()):
            return f"{package} is not installed from {root}"
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    for script in project.get("scripts", {}):
        if not (Path(sys.prefix) / "bin" / script).exists():
            return f"the {script} command is missing"
    return None


if __name__ == "__main__":
    problem = missing(Path(sys.argv[1]), Path(sys.argv[2]))
    if problem:
        print(problem)
    sys.exit(1 if problem else 0)
