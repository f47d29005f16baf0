"""hrm_savio_setup.sh and envs/: help, bad input in one line, idempotent set-up, Savio checks, stage actions.

No network and no training: set-up runs against the venv that runs these tests (already complete), Slurm is
a stand-in `sbatch` that records what it is given, Savio is simulated with HRM_CLUSTER=savio.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "hrm_savio_setup.sh"
SECRET = "wandb-setup-secret-0123456789abcdef"
ACTIONS = ["setup", "data", "train", "eval", "both", "status", "logs", "collect", "test", "help"]
EXPERIMENTS = sorted(p.stem for p in (REPO / "configs" / "experiment").glob("*.yaml"))
IN_VENV = sys.prefix != sys.base_prefix
# the variables the script reads, cleared so that the caller's shell (or a Slurm job) cannot change a result
CLEARED = ("SAVIO_ACCOUNT", "SAVIO_QOS", "SAVIO_PARTITION", "SAVIO_EMAIL", "HRM_VENV", "HRM_TORCH", "SLURM_JOB_ID",
           "HRM_PYTHON", "JUPYTER_DATA_DIR", "HRM_FLASH", "HRM_CLUSTERS_DIR", "PIP_CACHE_DIR")


def run(args: list[str], tmp_path: Path, env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: int = 300) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in CLEARED}
    full.update({"HRM_CLUSTER": "local", "HRM_VENV": sys.prefix, "HRM_PYTHON": sys._base_executable,
                 "HRM_SLURM_HOME": str(tmp_path / "home"), "WANDB_API_KEY": SECRET, **(env or {})})
    r = subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd or tmp_path, env=full, capture_output=True,
                       text=True, timeout=timeout)
    assert SECRET not in r.stdout + r.stderr  # the W&B key is never echoed, whatever the action
    return r


def one_error_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode != 0, r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "fix" in lines[0], r.stderr
    return lines[0]


@pytest.fixture
def fake_sbatch(tmp_path):
    """A PATH whose sbatch keeps the scripts it is given and answers like Slurm (nothing runs)."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    (bindir / "sbatch").write_text(
        f'#!/bin/sh\nfor a in "$@"; do case "$a" in *.sh) cat "$a" >> {tmp_path}/sbatch_scripts;; esac; done\n'
        f'echo "$@" >> {tmp_path}/sbatch_calls\necho "Submitted batch job 42"\n'
    )
    (bindir / "sbatch").chmod(0o755)
    (bindir / "sinfo").write_text("#!/bin/sh\necho up\n")  # a controller that answers
    (bindir / "sinfo").chmod(0o755)
    return {"PATH": f"{bindir}:{os.environ['PATH']}"}, tmp_path / "sbatch_calls", tmp_path / "sbatch_scripts"


# --- the script itself ------------------------------------------------------------------------------------


def test_shellcheck_clean():
    if not shutil.which("shellcheck"):
        if os.environ.get("HRM_TEST_SLURM") == "1":
            pytest.fail("shellcheck is missing, but `./hrm_savio_setup.sh test` installs it")
        pytest.skip("shellcheck is not installed")
    files = [str(SCRIPT), *map(str, sorted((REPO / "envs").glob("*.sh")))]
    for cmd in (["shellcheck", *files], ["shellcheck", "-x", str(SCRIPT)]):
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


def help_table(text: str) -> dict[str, list[str]]:
    """Experiments table of the help text: name -> [GPUs, data, runtime] (columns are 2+ spaces apart)."""
    block = text.split("Experiments:")[1].split("\n\n")[0]
    rows = [re.split(r"\s{2,}", line.strip()) for line in block.strip().splitlines()[1:]]
    return {r[0]: r[1:] for r in rows}


def readme_table() -> dict[str, list[str]]:
    section = (REPO / "README.md").read_text().split("## Experiments")[1].split("\n## ")[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| `")]
    return {r[0].strip("`"): r[1:] for r in rows}


def test_help_shows_every_action_and_experiment_consistent_with_configs_and_readme(tmp_path):
    r = run(["help"], tmp_path)
    assert r.returncode == 0 and r.stderr == ""
    assert run([], tmp_path).stdout == r.stdout  # no action: the same help
    listed = re.findall(r"^  ([a-z]+)\b", r.stdout.split("Actions:")[1].split("\n\n")[0], re.M)
    assert listed == ACTIONS
    table = help_table(r.stdout)
    assert sorted(table) == EXPERIMENTS
    readme = readme_table()
    assert sorted(readme) == EXPERIMENTS
    for name, (gpus, _data, runtime) in table.items():
        resources = yaml.safe_load((REPO / "configs" / "experiment" / f"{name}.yaml").read_text())["resources"]
        assert int(gpus) == resources["gpus"], name  # what the Slurm job asks for
        assert readme[name][0] == gpus and readme[name][2] == runtime, name
    for var in ("SAVIO_ACCOUNT", "SAVIO_QOS", "SAVIO_PARTITION", "SAVIO_EMAIL"):
        assert var in r.stdout and f"`{var}`" in (REPO / "README.md").read_text()
    # FCA associations have no savio_debug on the GPU partitions: never offered as the example
    assert "savio_debug" not in r.stdout and "qos.train=" in r.stdout and "$HOME/.venvs/hrm-savio" in r.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["deploy"], "unknown action 'deploy'"),
        (["both", "sudoku_huge"], "unknown experiment 'sudoku_huge'"),
        (["train"], "train needs an EXPERIMENT"),
        (["both", "sudoku_demo", "--fast"], "unknown option '--fast'"),
        (["setup", "arc1"], "setup takes no experiment"),
    ],
)
def test_bad_input_is_one_line_with_the_fix(tmp_path, args, message):
    r = run(args, tmp_path)
    line = one_error_line(r)
    assert message in line and r.stdout == ""
    if "unknown experiment" in message:
        assert all(e in line for e in EXPERIMENTS)  # the line lists what would have been right


# --- set-up -----------------------------------------------------------------------------------------------


def snapshot(venv: Path) -> dict[str, float]:
    """mtimes of the venv's top level, bin/ and site-packages/ entries: what an install would touch."""
    dirs = [venv, venv / "bin", *venv.glob("lib/python3*/site-packages")]
    return {str(p): p.stat().st_mtime_ns for d in dirs for p in d.iterdir()}


@pytest.mark.skipif(not IN_VENV, reason="needs the tests to run from a venv")
def test_second_setup_says_nothing_to_do_and_changes_nothing(tmp_path):
    first = run(["setup"], tmp_path)
    assert first.returncode == 0, first.stderr
    before = snapshot(Path(sys.prefix))
    second = run(["setup"], tmp_path)
    assert second.returncode == 0, second.stderr
    assert "nothing to do" in second.stdout and "install" not in second.stdout
    assert snapshot(Path(sys.prefix)) == before


@pytest.mark.skipif(not IN_VENV, reason="needs the tests to run from a venv")
def test_kernel_registration_points_at_the_venv_and_is_idempotent(tmp_path):
    env = {"JUPYTER_DATA_DIR": str(tmp_path / "jupyter")}
    first = run(["setup", "--kernel"], tmp_path, env)
    assert first.returncode == 0, first.stderr
    spec = json.loads((tmp_path / "jupyter" / "kernels" / "hrm" / "kernel.json").read_text())
    assert spec["argv"][0] == f"{sys.prefix}/bin/python" and spec["display_name"] == "HRM (hrm-savio)"
    again = run(["setup", "--kernel"], tmp_path, env)
    assert "nothing to do" in again.stdout and "registered" not in again.stdout


def test_venv_made_by_another_python_is_refused_untouched(tmp_path):
    venv = tmp_path / "oldvenv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("#!/bin/sh\necho 3.9\n")
    (venv / "bin" / "python").chmod(0o755)
    line = one_error_line(run(["setup"], tmp_path, {"HRM_VENV": str(venv)}))
    assert "made by Python 3.9" in line and f"rm -rf {venv}" in line
    assert sorted(p.name for p in venv.rglob("*")) == ["bin", "python"]


def test_failed_install_leaves_no_half_made_venv(tmp_path):
    venv = tmp_path / "new" / "venv"
    # PIP_NO_INDEX: pip may not download anything, so the torch install fails at once, as offline
    r = run(["setup"], tmp_path, {"HRM_VENV": str(venv), "PIP_NO_INDEX": "1", "HRM_TORCH": "cpu"})
    assert r.returncode != 0
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("[hrm]")]
    assert len(errors) == 1 and "torch install failed" in errors[0] and "fix" in errors[0], r.stderr
    assert "removed the half-made environment" in r.stdout and not venv.exists()


def test_profile_reader_matches_pyyaml(tmp_path):
    variants = tmp_path / "variants.yaml"
    variants.write_text(
        "name: 'quoted'  # a comment\nmodules:\n  - \"python/3.11\"   # the interpreter\n\n  - cuda/12.6\n"
        "lmod_init: ['/opt/lmod init/bash', /etc/profile.d/modules.sh]\nmodule_use: []\nscratch: null\n"
        "runs_dir: /scratch/$USER/runs\nbuild_modules:   # only for flash-attn\n  - gcc/11.4.0\n  - 'cuda/12.6.0'\n"
    )
    flow = tmp_path / "flow.yaml"
    flow.write_text("modules: [python/3.11.6-gcc-11.4.0]\nbuild_modules: [gcc/11.4.0, \"cuda/12.6.0\"]  # nvcc\n")
    for path in [*sorted((REPO / "slurm" / "clusters").glob("*.yaml")), variants, flow]:
        data = yaml.safe_load(path.read_text())
        for key in ("name", "modules", "build_modules", "lmod_init", "module_use", "scratch", "runs_dir",
                    "default_qos"):
            r = subprocess.run(["bash", "-c", f'source envs/modules.sh && profile_get "{path}" {key}'], cwd=REPO,
                               capture_output=True, text=True, check=True)
            value = data.get(key)
            expected = [str(v) for v in value] if isinstance(value, list) else ([] if value is None else [str(value)])
            assert r.stdout.splitlines() == expected, (path.name, key)


def test_setup_reads_the_users_profile_override_like_the_jobs_do(tmp_path, monkeypatch):
    from slurm.profiles import load_cluster

    config = tmp_path / "config"
    (config / "hrm-savio" / "clusters").mkdir(parents=True)
    (config / "hrm-savio" / "clusters" / "savio.yaml").write_text(
        "extends: savio\nmodules:\n  - python/3.12  # the lab's build\nbuild_modules: [gcc/13.2.0, cuda/12.8]\n"
        "scratch: /lab/scratch/$USER\n")
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "savio.yaml").write_text("extends: savio\nscratch: /fast/$USER\n")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    for clusters_dir in ("", str(extra)):
        monkeypatch.setenv("HRM_CLUSTERS_DIR", clusters_dir)
        cluster = load_cluster("savio")
        for key in ("modules", "build_modules", "scratch", "lmod_init", "runs_dir"):
            r = subprocess.run(["bash", "-c", f"ROOT={REPO}; source envs/modules.sh && cluster_get savio {key}"],
                               cwd=REPO, capture_output=True, text=True, check=True)
            value = getattr(cluster, key)
            expected = [str(v) for v in value] if isinstance(value, tuple) else [str(value)]
            assert r.stdout.splitlines() == expected, (clusters_dir, key)
    assert cluster.modules == ("python/3.12",) and cluster.build_modules == ("gcc/13.2.0", "cuda/12.8")
    assert cluster.scratch == "/fast/$USER"


def test_modules_from_the_profile_are_loaded_before_python_is_chosen(tmp_path):
    if not Path("/usr/share/lmod/lmod/init/bash").is_file():
        if os.environ.get("HRM_TEST_SLURM") == "1":
            pytest.fail("HRM_TEST_SLURM=1 but Lmod is not installed (slurm_local_start.sh installs it)")
        pytest.skip("Lmod is not installed")
    tree = tmp_path / "modules"
    subprocess.run(["bash", str(REPO / "tests" / "cluster" / "make_fake_lmod.sh"), str(tree)], check=True)
    module_python = tree / "_sw" / "python-3.11.6" / "bin" / "python3.11"
    module_python.symlink_to(sys._base_executable)  # the fake python module's interpreter
    venv = tmp_path / "oldvenv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("#!/bin/sh\necho 3.9\n")
    (venv / "bin" / "python").chmod(0o755)
    clean = {"PATH": f"{Path(shutil.which('bash')).parent}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"),
             "MODULEPATH": str(tree), "HRM_CLUSTER": "savio", "HRM_VENV": str(venv), "HRM_SLURM_HOME": str(tmp_path)}
    r = subprocess.run(["bash", str(SCRIPT), "setup"], cwd=tmp_path, env=clean, capture_output=True, text=True)
    modules = yaml.safe_load((REPO / "slurm" / "clusters" / "savio.yaml").read_text())["modules"]
    assert f"modules loaded: {' '.join(modules)}" in r.stdout, r.stdout + r.stderr
    # the venv check then ran with the module's Python, not the machine's
    assert f"set-up uses Python 3.11 ({module_python})" in one_error_line(r)


def fake_venv(path: Path) -> tuple[Path, Path]:
    """A venv whose python is the tests' own, except that pip and `import flash_attn` are stand-ins: a pip
    install records what it saw (loaded modules, nvcc, pip's cache) in LOG and makes flash_attn importable."""
    log = path.parent / f"{path.name}.log"
    (path / "bin").mkdir(parents=True)
    (path / "pyvenv.cfg").write_text(f"home = {Path(sys._base_executable).parent}\n")
    (path / "bin" / "python").write_text(
        "#!/bin/bash\n"
        'case "$*" in\n'
        f'  *"pip install"*flash-attn*) echo "pip-install modules=${{LOADEDMODULES:-}} nvcc=$(command -v nvcc)'
        f' cache=${{PIP_CACHE_DIR:-}}" >> {log}; touch {path}/flash_ok ;;\n'
        f'  *"pip uninstall"*) echo uninstall >> {log} ;;\n'
        f'  *"import flash_attn"*) echo "import modules=${{LOADEDMODULES:-}}" >> {log}; [ -f {path}/flash_ok ] ;;\n'
        f'  *) exec {sys.executable} "$@" ;;\n'
        "esac\n"
    )
    (path / "bin" / "python").chmod(0o755)
    return path, log


def profile_override(tmp_path: Path, text: str) -> dict[str, str]:
    """HRM_CLUSTERS_DIR with a savio.yaml over the package's (only the keys it sets change)."""
    d = tmp_path / "clusters"
    d.mkdir(exist_ok=True)
    (d / "savio.yaml").write_text("extends: savio\n" + text)
    return {"HRM_CLUSTERS_DIR": str(d), "XDG_CONFIG_HOME": str(tmp_path / "config")}


def source_envs(snippet: str, env: dict[str, str], cluster: str = "savio", inherit: bool = True
                ) -> subprocess.CompletedProcess:
    """Run `snippet` with envs/modules.sh and envs/venv.sh sourced, as hrm_savio_setup.sh sources them (in
    `env`, over this process's environment unless inherit=False)."""
    script = (f"set -euo pipefail; ROOT={REPO}; START_DIR={REPO}; CLUSTER={cluster}; KERNEL=0; STEP=\n"
              'say() { echo "[hrm] $*"; }; die() { echo "[hrm] error: $*" >&2; exit 1; }\n'
              "source envs/modules.sh; source envs/venv.sh\n" + snippet)
    full = {k: v for k, v in os.environ.items() if k not in CLEARED} if inherit else {}
    return subprocess.run(["bash", "-c", script], cwd=REPO, env={**full, **env}, capture_output=True, text=True)


def test_flash_attn_waits_for_a_gpu_job_on_a_cluster_login_node(tmp_path):
    venv, log = fake_venv(tmp_path / "venv")
    scratch = tmp_path / "scratch" / "me"
    scratch.mkdir(parents=True)
    env = {**profile_override(tmp_path, f"build_modules: []\nscratch: {tmp_path}/scratch/$USER\n"),
           "USER": "me", "SAVIO_ACCOUNT": "fc_lab"}
    # a Savio login node: not built, one line with the srun that builds it in a job, pip never runs
    r = source_envs(f"try_flash_attn {venv}", env)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    recipe = (f"HRM_FLASH=1 srun -A fc_lab -p savio4_gpu --gres=gpu:A5000:1 -c 4 -q a5k_gpu4_normal -t 1:00:00 "
              f"{REPO}/hrm_savio_setup.sh setup")
    assert r.stdout.splitlines() == [
        "[hrm] flash-attn not built on this login node (up to 30 min of compiling; attention uses PyTorch SDPA); "
        f"to build it in a GPU job: {recipe}"]
    assert not log.exists()
    # HRM_FLASH=0 skips it silently; HRM_FLASH=1 builds it even here; in a job it is built by default
    r = source_envs(f"try_flash_attn {venv}", {**env, "HRM_FLASH": "0"})
    assert r.returncode == 0 and r.stdout == "" and not log.exists()
    for extra in ({"HRM_FLASH": "1"}, {"SLURM_JOB_ID": "4242"}):
        (venv / "flash_ok").unlink(missing_ok=True)
        log.unlink(missing_ok=True)
        r = source_envs(f"try_flash_attn {venv}", {**env, **extra})
        assert r.returncode == 0 and "[hrm] flash-attn installed" in r.stdout, r.stdout + r.stderr
        # pip's ~5 GB wheel cache goes to the profile's scratch, not to the home quota
        assert f"cache={scratch}/.cache/pip" in log.read_text().splitlines()[0], extra
    # a PIP_CACHE_DIR of the user's own is kept; locally pip's default is left alone
    log.unlink()
    r = source_envs(f"try_flash_attn {venv}", {**env, "SLURM_JOB_ID": "1", "PIP_CACHE_DIR": str(tmp_path / "mine")})
    assert f"cache={tmp_path / 'mine'}" in log.read_text()
    log.unlink()
    r = source_envs(f"try_flash_attn {venv}", env, cluster="local")
    assert "flash-attn installed" in r.stdout and log.read_text().splitlines()[0].endswith(" cache=")


def marker_for(flavor: str) -> str:
    """What set-up writes into a venv it completed (envs/venv.sh, setup_env)."""
    files = subprocess.run(f"cat pyproject.toml envs/torch-{flavor}.txt | cksum", shell=True, cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()[0]
    return f"python={sys.version_info[0]}.{sys.version_info[1]} torch={flavor} files={files}\n"


@pytest.mark.skipif(not IN_VENV, reason="needs the tests to run from a venv")
def test_hrm_flash_1_builds_flash_attn_into_a_complete_venv_and_only_then(tmp_path):
    """After a login-node set-up skipped flash-attn, HRM_FLASH=1 in a job builds just that; without
    HRM_FLASH the second set-up stays "nothing to do" without even looking for flash-attn."""
    venv, log = fake_venv(tmp_path / "venv")
    (venv / ".hrm-setup-complete").write_text(marker_for("cu126"))
    spec = tmp_path / "jupyter" / "kernels" / "hrm" / "kernel.json"
    spec.parent.mkdir(parents=True)
    spec.write_text(json.dumps({"argv": [f"{venv}/bin/python", "-m", "ipykernel_launcher"]}))  # registered
    env = {**profile_override(tmp_path, "modules: []\nbuild_modules: []\n"), "HRM_CLUSTER": "savio",
           "HRM_VENV": str(venv), "HRM_TORCH": "cu126", "JUPYTER_DATA_DIR": str(tmp_path / "jupyter")}
    r = run(["setup"], tmp_path, env)
    assert r.returncode == 0 and "nothing to do" in r.stdout, r.stdout + r.stderr
    assert not log.exists()
    r = run(["setup"], tmp_path, {**env, "HRM_FLASH": "1", "SLURM_JOB_ID": "4242"})
    assert r.returncode == 0, r.stderr
    assert "[hrm] flash-attn installed" in r.stdout and "environment ready" in r.stdout
    assert [ln.split()[0] for ln in log.read_text().splitlines()] == ["import", "pip-install", "import"]
    r = run(["setup"], tmp_path, {**env, "HRM_FLASH": "1", "SLURM_JOB_ID": "4242"})
    assert "nothing to do" in r.stdout and "flash-attn" not in r.stdout
    line = one_error_line(run(["setup"], tmp_path, {**env, "HRM_FLASH": "yes"}))
    assert "HRM_FLASH=yes is not 0 or 1" in line


@pytest.mark.parametrize("damage", ["hrm gone", "python gone"])
def test_a_marked_venv_that_no_longer_works_is_made_again(tmp_path, damage):
    """The marker alone is not trusted: a venv whose files were partly purged is rebuilt, one line says why."""
    venv = tmp_path / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (venv / ".hrm-setup-complete").write_text(marker_for("cpu"))
    (venv / "stale-file").write_text("from before the purge")
    if damage == "python gone":
        (venv / "bin" / "python").unlink()
        (venv / "bin" / "python").symlink_to(tmp_path / "purged" / "python3")
    # PIP_NO_INDEX: the new venv's torch install then fails at once, as offline, after the rebuild started
    r = run(["setup"], tmp_path, {"HRM_VENV": str(venv), "PIP_NO_INDEX": "1", "HRM_TORCH": "cpu"})
    why = ("its Python cannot import hrm and slurm (ModuleNotFoundError: No module named 'hrm')"
           if damage == "hrm gone" else "its bin/python is missing, or the Python it points to is gone")
    lines = r.stdout.splitlines()
    assert [ln for ln in lines if "rebuilding" in ln] == [
        f"[hrm] rebuilding {venv}: set-up had completed it, but now {why}"], r.stdout
    assert lines[lines.index(f"[hrm] rebuilding {venv}: set-up had completed it, but now {why}") + 1].startswith(
        f"[hrm] creating venv {venv} with ")
    assert "nothing to do" not in r.stdout and "torch install failed" in r.stderr and not venv.exists()


def test_venv_defaults_to_home_on_a_cluster_and_names_the_old_one_on_scratch(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    for cluster, expected in (("savio", home / ".venvs" / "hrm-savio"), ("local", REPO / ".venv")):
        r = source_envs("venv_path", {"HOME": str(home)}, cluster=cluster)
        assert r.stdout.strip() == str(expected), r.stderr
    r = source_envs("venv_path", {"HOME": str(home), "HRM_VENV": "rel/venv"})
    assert r.stdout.strip() == f"{REPO}/rel/venv"  # relative to where the script was started
    # a complete venv at the old default ($scratch/hrm-savio/venv) is named, with the way to keep it
    old = tmp_path / "scratch" / "me" / "hrm-savio" / "venv"
    old.mkdir(parents=True)
    (old / ".hrm-setup-complete").write_text("python=3.11 torch=cu126 files=1\n")
    env = {**profile_override(tmp_path, f"modules: []\nscratch: {tmp_path}/scratch/$USER\n"), "USER": "me",
           "HOME": str(home), "HRM_CLUSTER": "savio", "HRM_VENV": ""}
    line = one_error_line(run(["status"], tmp_path, env))
    assert f"no complete environment at {home}/.venvs/hrm-savio" in line and f"export HRM_VENV={old}" in line
    r = run(["setup"], tmp_path, {**env, "PIP_NO_INDEX": "1", "HRM_TORCH": "cpu"})
    assert (f"[hrm] the venv's default is now {home}/.venvs/hrm-savio (home: backed up, never purged), so set-up "
            f"makes it there; to keep {old} instead: export HRM_VENV={old} (else rm -rf {old})") in r.stdout
    # pip's wheel cache goes to scratch on a cluster; the old venv is never touched
    assert f"[hrm] pip's cache: {tmp_path}/scratch/me/.cache/pip (scratch, not the home quota)" in r.stdout
    assert sorted(p.name for p in old.iterdir()) == [".hrm-setup-complete"]


def hierarchical_lmod(tree: Path) -> None:
    """Savio's layout as the audit suspects it: cuda/12.6.0 is visible only once gcc/11.4.0 is loaded."""
    (tree / "gcc").mkdir(parents=True)
    (tree / "python").mkdir()
    (tree / "_gcc11" / "cuda").mkdir(parents=True)
    (tree / "_sw" / "cuda" / "bin").mkdir(parents=True)
    (tree / "_sw" / "cuda" / "bin" / "nvcc").write_text("#!/bin/sh\necho fake nvcc\n")
    (tree / "_sw" / "cuda" / "bin" / "nvcc").chmod(0o755)
    (tree / "gcc" / "11.4.0.lua").write_text(f'family("compiler")\nprepend_path("MODULEPATH", "{tree}/_gcc11")\n')
    (tree / "python" / "3.11.6-gcc-11.4.0.lua").write_text('setenv("FAKE_PYTHON_MODULE", "3.11.6")\n')
    (tree / "_gcc11" / "cuda" / "12.6.0.lua").write_text(f'prepend_path("PATH", "{tree}/_sw/cuda/bin")\n')


@pytest.mark.parametrize("build_modules", [None, "[cuda/12.6.0]"])
def test_flash_attn_build_loads_the_build_modules_for_that_step_only(tmp_path, build_modules):
    if not Path("/usr/share/lmod/lmod/init/bash").is_file():
        if os.environ.get("HRM_TEST_SLURM") == "1":
            pytest.fail("HRM_TEST_SLURM=1 but Lmod is not installed (slurm_local_start.sh installs it)")
        pytest.skip("Lmod is not installed")
    tree = tmp_path / "modules"
    hierarchical_lmod(tree)
    venv, log = fake_venv(tmp_path / "venv")
    clean = {"PATH": f"{Path(shutil.which('bash')).parent}:/usr/bin:/bin", "HOME": str(tmp_path),
             "MODULEPATH": str(tree), "SLURM_JOB_ID": "4242", "XDG_CONFIG_HOME": str(tmp_path / "config")}
    if build_modules:  # a profile that forgets gcc: cuda is not found, and flash-attn is not tried
        clean.update(profile_override(tmp_path, f"build_modules: {build_modules}\n"))
    snippet = (f'load_cluster_modules savio; try_flash_attn {venv}; echo "after: $LOADEDMODULES"; '
               'command -v nvcc || echo "no nvcc after"')
    r = source_envs(snippet, clean, inherit=False)
    assert r.returncode == 0, r.stdout + r.stderr
    savio = yaml.safe_load((REPO / "slurm" / "clusters" / "savio.yaml").read_text())
    lines = r.stdout.splitlines()
    # jobs' modules for the whole set-up, the build modules only around the build, and gone again afterwards
    assert f"[hrm] modules loaded: {' '.join(savio['modules'])}" in lines
    assert lines[-2:] == [f"after: {':'.join(savio['modules'])}", "no nvcc after"], r.stdout
    if build_modules is None:
        assert savio["build_modules"] == ["gcc/11.4.0", "cuda/12.6.0"]
        assert "[hrm] build modules loaded for this step only: gcc/11.4.0 cuda/12.6.0" in lines
        build, imported = log.read_text().splitlines()
        assert build.startswith("pip-install modules=") and f"nvcc={tree}/_sw/cuda/bin/nvcc" in build
        assert all(m in build for m in ("gcc/11.4.0", "cuda/12.6.0"))
        assert "cuda" not in imported  # the built flash-attn is checked the way a job imports it
        assert "[hrm] flash-attn installed" in lines
    else:
        assert not log.exists()  # pip never ran
        assert [ln for ln in lines if "flash-attn" in ln] == [
            "[hrm] flash-attn not tried (attention uses PyTorch SDPA): module load cuda/12.6.0 failed; fix: put the "
            "right names (module spider cuda) in build_modules: of ~/.config/hrm-savio/clusters/savio.yaml "
            "(extends: savio)"]


def test_torch_requirement_files_agree_with_each_other_and_the_cuda_build_module():
    def pin(name: str) -> str:
        lines = (REPO / "envs" / name).read_text().splitlines()
        return next(ln for ln in lines if ln.startswith("torch=="))

    cpu, cuda = pin("torch-cpu.txt"), pin("torch-cu126.txt")
    assert cuda.split("+")[0] == cpu.split("+")[0] and cuda.endswith("+cu126") and cpu.endswith("+cpu")
    savio = yaml.safe_load((REPO / "slurm" / "clusters" / "savio.yaml").read_text())
    # jobs load no cuda module (the wheels bring their CUDA runtime); the flash-attn build loads the matching one
    assert not any(m.startswith("cuda/") for m in savio["modules"])
    assert any(m.startswith("cuda/12.6") for m in savio["build_modules"])


# --- Savio checks and the pipeline actions ----------------------------------------------------------------


def test_missing_savio_account_is_refused_before_anything(tmp_path, fake_sbatch):
    env, calls, _ = fake_sbatch
    venv = tmp_path / "venv"
    r = run(["both", "arc1"], tmp_path, {**env, "HRM_CLUSTER": "savio", "HRM_VENV": str(venv)})
    assert "SAVIO_ACCOUNT" in one_error_line(r) and r.stdout == ""  # not even the modules were loaded
    assert not calls.exists() and not venv.exists()


def test_installed_but_silent_slurm_runs_here_instead_of_submitting(tmp_path, fake_sbatch):
    """slurm-wlm installed, controller down (a CI box after its tests): nothing goes to sbatch."""
    env, calls, _ = fake_sbatch
    (tmp_path / "fakebin" / "sinfo").write_text("#!/bin/sh\necho 'slurm_load_partitions: Unable to contact' >&2\n"
                                               "exit 1\n")
    r = run(["collect"], tmp_path, env, cwd=tmp_path)
    assert "the Slurm controller does not answer (sinfo failed); running on this machine" in r.stdout
    assert not calls.exists()


@pytest.mark.parametrize("args", [["train", "arc1", "--local"], ["both", "sudoku_demo", "--local"]])
def test_login_node_refuses_to_run_a_job_in_process(tmp_path, args):
    venv = tmp_path / "venv"
    line = one_error_line(run(args, tmp_path, {"HRM_CLUSTER": "savio", "HRM_VENV": str(venv)}))
    assert "login node" in line and "srun" in line and "without --local" in line
    assert "-p savio4_gpu --gres=gpu:A5000:1 -c 4 -q a5k_gpu4_normal" in line  # an FCA's QoS there
    assert not venv.exists()


def sbatch_scripts(path: Path) -> dict[str, str]:
    """The scripts the stand-in sbatch was given, by job name."""
    scripts = ["#!/bin/bash" + t for t in path.read_text().split("#!/bin/bash")[1:]]
    return {re.search(r"#SBATCH --job-name=(\S+)", t).group(1): t for t in scripts}


@pytest.mark.skipif(not IN_VENV, reason="needs the tests to run from a venv")
def test_slurm_actions_submit_their_stages_with_the_savio_settings(tmp_path, fake_sbatch):
    env, calls, scripts = fake_sbatch
    env = {**env, "SAVIO_ACCOUNT": "fc_test", "SAVIO_QOS": "savio_lowprio", "SAVIO_PARTITION": "savio4_gpu",
           "SAVIO_EMAIL": "me@berkeley.edu"}
    where = [f"data_path={tmp_path / 'd'}", f"runs_dir={tmp_path / 'runs'}"]
    r = run(["data", "sudoku_demo", *where], tmp_path, env)
    assert r.returncode == 0, r.stderr
    jobs = sbatch_scripts(scripts)
    assert list(jobs) == ["hrm-data"] and len(calls.read_text().splitlines()) == 1
    for line in ("--account=fc_test", "--mail-user=me@berkeley.edu", "--mail-type=END,FAIL"):
        assert f"#SBATCH {line}" in jobs["hrm-data"]
    assert "--qos=savio_lowprio" not in jobs["hrm-data"]  # SAVIO_QOS is the train and eval stages' QoS
    # train on its own needs the dataset first: refused by hrm-slurm, the step named, nothing sent
    calls.unlink()
    scripts.unlink()
    r = run(["train", "sudoku_demo", *where], tmp_path, env)
    assert r.returncode != 0 and "no dataset at" in r.stderr and 'step "submit train sudoku_demo"' in r.stderr
    assert not calls.exists()
    # both: the whole chain; the partition is the training job's, the end mail the last job's. sudoku_demo
    # evaluates on savio3_htc (no GPU), where an FCA has no savio_lowprio: qos.eval= sets that stage's own
    r = run(["both", "sudoku_demo", *where, "qos.eval=savio_normal"], tmp_path, env)
    assert r.returncode == 0, r.stderr
    jobs = sbatch_scripts(scripts)
    assert list(jobs) == ["hrm-data", "hrm-train", "hrm-eval", "hrm-collect"]
    assert "#SBATCH --partition=savio4_gpu" in jobs["hrm-train"]
    assert [("#SBATCH --qos=savio_lowprio" in t) for t in jobs.values()] == [False, True, False, False]
    assert "#SBATCH --qos=savio_normal" in jobs["hrm-eval"]
    assert [("--mail-type=END,FAIL" in t) for t in jobs.values()] == [False, False, False, True]
    assert all("#SBATCH --account=fc_test" in t for t in jobs.values())
    assert SECRET not in scripts.read_text()


@pytest.mark.skipif(not IN_VENV, reason="needs the tests to run from a venv")
@pytest.mark.parametrize("action", ["train", "eval"])
def test_local_stage_actions_run_through_run_local(tmp_path, action):
    # with --local (or without sbatch) the stage runs here, from the same plan; without its dataset it is
    # refused before anything runs
    r = run([action, "sudoku_demo", "--local", f"data_path={tmp_path / 'd'}"], tmp_path)
    assert f"running {action} sudoku_demo on this machine" in r.stdout
    assert r.returncode != 0 and "hrm-slurm: error: no dataset at" in r.stderr
    assert f"stage {action}:" not in r.stdout


@pytest.mark.skipif(not IN_VENV, reason="needs the tests to run from a venv")
def test_status_and_logs_delegate_to_hrm_slurm(tmp_path):
    r = run(["status"], tmp_path)
    assert r.returncode == 0 and "no pipelines recorded yet" in r.stdout
    r = run(["logs"], tmp_path)
    assert r.returncode != 0 and "hrm-slurm: error: no pipelines recorded yet" in r.stderr
