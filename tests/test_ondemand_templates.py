"""The Open OnDemand app (guides/ondemand/hrm_jupyter): its ERB files render with real Ruby the way OnDemand
renders them, the scripts pass `bash -n` and shellcheck and do what they say when run with stand-ins for
OnDemand's helpers, submit.yml.erb gives the expected sbatch arguments, and the form's modules and GPU
choices agree with slurm/clusters/savio.yaml."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "guides" / "ondemand" / "hrm_jupyter"
SAVIO = yaml.safe_load((REPO / "slurm" / "clusters" / "savio.yaml").read_text())
FORM = yaml.safe_load((APP / "form.yml").read_text())

# Renders one ERB file as OnDemand does (trim mode "-"). submit.yml.erb sees the form values as plain names
# (OnDemand binds an OpenStruct of them); the templates see them as context.NAME; the view sees the
# connection values (host, port, password) as plain names.
RENDER_RB = r"""
require "erb"
require "json"
path, kind, values_file = ARGV
values = JSON.parse(File.read(values_file))
class Values
  def initialize(h)
    @h = h
  end

  def method_missing(name, *args)
    @h.key?(name.to_s) ? @h[name.to_s] : super
  end

  def respond_to_missing?(name, all = false)
    @h.key?(name.to_s) || super
  end

  def context
    self
  end

  def scope
    binding
  end
end
erb = ERB.new(File.read(path), trim_mode: "-")
erb.filename = path
print erb.result(Values.new(values).scope)
"""


def tools_or_skip(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if not missing:
        return
    if os.environ.get("HRM_TEST_SLURM") == "1":  # the test command installs them: missing there is a failure
        pytest.fail(f"{', '.join(missing)} not found, but HRM_TEST_SLURM=1 (the test command installs them)")
    pytest.skip(f"{', '.join(missing)} not installed (apt-get install ruby shellcheck)")


def form_values(**changes) -> dict:
    values = {name: (a.get("value") if isinstance(a, dict) else a) for name, a in FORM["attributes"].items()}
    values["hrm_account"] = "fc_yourgroup"
    values.update(changes)
    return values


def render(name: str, values: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    tools_or_skip("ruby")
    script, data = tmp_path / "render.rb", tmp_path / "values.json"
    script.write_text(RENDER_RB)
    data.write_text(json.dumps(values))
    return subprocess.run(["ruby", str(script), str(APP / name), "erb", str(data)], capture_output=True, text=True,
                          timeout=60)


def rendered(name: str, values: dict, tmp_path: Path) -> str:
    r = render(name, values, tmp_path)
    assert r.returncode == 0, r.stderr
    return r.stdout


# --- the form agrees with the cluster profile (no Ruby needed) --------------------------------------------------


def test_form_modules_are_the_cluster_profile_modules():
    assert FORM["attributes"]["hrm_modules"]["value"].split() == SAVIO["modules"]
    script = (APP / "template" / "script.sh.erb").read_text()
    assert f"for f in {' '.join(SAVIO['lmod_init'])}; do" in script  # the same Lmod init paths


def test_form_gpu_choices_are_the_cluster_profile_gpus():
    choices = {}
    for label, value in FORM["attributes"]["hrm_gpu"]["options"]:
        partition, gpu, cpus, per_node = value.split(":")
        assert label.startswith(f"{partition}: {gpu}, {cpus} CPUs per GPU")
        choices[(partition, gpu)] = (int(cpus), int(per_node))
    profile = {(p, g): (t["cpus_per_gpu"], t["per_node"])
               for p, part in SAVIO["partitions"].items() for g, t in (part.get("gpu_types") or {}).items()}
    assert choices == profile
    default = FORM["attributes"]["hrm_gpu"]["value"].split(":")
    assert default[:2] == ["savio4_gpu", SAVIO["partitions"]["savio4_gpu"]["default_gpu_type"]]


def test_kernel_is_the_one_setup_registers_and_the_notebooks_ask_for():
    script = (APP / "template" / "script.sh.erb").read_text()
    registered = '--name hrm --display-name "HRM (hrm-savio)"'
    assert registered in script
    venv_sh = REPO / "envs" / "venv.sh"
    if venv_sh.is_file():  # setup registers the same kernel, so the two never overwrite each other differently
        assert registered in venv_sh.read_text()
    for nb in (REPO / "guides" / "ondemand").glob("*.ipynb"):
        spec = json.loads(nb.read_text())["metadata"]["kernelspec"]
        assert (spec["name"], spec["display_name"]) == ("hrm", "HRM (hrm-savio)")


def test_manifest_and_form_are_a_batch_connect_app():
    manifest = yaml.safe_load((APP / "manifest.yml").read_text())
    assert manifest["role"] == "batch_connect" and manifest["category"] == "Interactive Apps"
    assert set(FORM["form"]) == set(FORM["attributes"]) and FORM["cluster"]
    assert FORM["attributes"]["hrm_qos"]["value"] == SAVIO["default_qos"]
    assert os.access(APP / "template" / "script.sh.erb", os.X_OK)


# --- submit.yml.erb -> sbatch arguments -------------------------------------------------------------------------


@pytest.mark.parametrize("changes, expected", [
    ({}, ["--partition=savio4_gpu", "--gres=gpu:A5000:1", "--nodes=1", "--ntasks=1", "--cpus-per-task=4",
          "--time=02:00:00", "--account=fc_yourgroup", "--qos=savio_normal"]),
    ({"hrm_gpu": "savio3_gpu:A40:8:2", "hrm_gpus": "2", "hrm_hours": "72", "hrm_account": "co_yourcondo",
      "hrm_qos": "savio_lowprio"},
     ["--partition=savio3_gpu", "--gres=gpu:A40:2", "--nodes=1", "--ntasks=1", "--cpus-per-task=16",
      "--time=72:00:00", "--account=co_yourcondo", "--qos=savio_lowprio"]),
    ({"hrm_gpu": "savio5_gpu:H100:8:8", "hrm_gpus": 8, "hrm_hours": 1, "hrm_qos": ""},
     ["--partition=savio5_gpu", "--gres=gpu:H100:8", "--nodes=1", "--ntasks=1", "--cpus-per-task=64",
      "--time=01:00:00", "--account=fc_yourgroup"]),
])
def test_submit_renders_the_sbatch_arguments(changes, expected, tmp_path):
    submit = yaml.safe_load(rendered("submit.yml.erb", form_values(**changes), tmp_path))
    assert submit["batch_connect"] == {"template": "basic"}
    assert submit["script"]["native"] == expected


@pytest.mark.parametrize("changes, message", [
    ({"hrm_account": ""}, "Slurm account is empty"),
    ({"hrm_account": 'fc_x"; rm -rf ~'}, "use letters, digits"),
    ({"hrm_gpus": 3, "hrm_gpu": "savio3_gpu:A40:8:2"}, "GPUs: choose 1 to 2 (a savio3_gpu A40 node has 2)"),
    ({"hrm_hours": 100}, "Hours: choose 1 to 72"),
    ({"hrm_gpu": "savio4_gpu"}, "is not one of the form's choices"),
])
def test_submit_refuses_bad_choices_in_one_line(changes, message, tmp_path):
    r = render("submit.yml.erb", form_values(**changes), tmp_path)
    assert r.returncode != 0 and message in r.stderr


# --- the job's scripts ------------------------------------------------------------------------------------------


def test_scripts_pass_bash_n_and_shellcheck(tmp_path):
    tools_or_skip("ruby", "shellcheck")
    for name in ("before.sh", "script.sh"):
        path = tmp_path / name
        path.write_text(rendered(f"template/{name}.erb", form_values(), tmp_path))
        r = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        r = subprocess.run(["shellcheck", "-s", "bash", str(path)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


def test_script_refuses_values_that_could_run_code(tmp_path):
    r = render("template/script.sh.erb", form_values(hrm_dir="$(touch /tmp/x)"), tmp_path)
    assert r.returncode != 0 and "hrm-savio checkout '$(touch /tmp/x)'" in r.stderr


def test_before_writes_a_jupyter_config_for_the_proxy(tmp_path):
    tools_or_skip("ruby")
    before = tmp_path / "before.sh"
    before.write_text(rendered("template/before.sh.erb", form_values(), tmp_path))
    job = tmp_path / "job"
    job.mkdir()
    stand_ins = ('host=node0042; find_port() { echo 43210; }; create_passwd() { printf "p%.0s" $(seq "$1"); }; '
                 f'source {before}; echo "$port $password $HRM_JUPYTER_CONFIG"')
    r = subprocess.run(["bash", "-c", stand_ins], cwd=job, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    port, password, config = r.stdout.split()
    assert port == "43210" and password == "p" * 32 and config == str(job / "jupyter_config.py")
    assert stat.S_IMODE(os.stat(config).st_mode) == 0o600
    from traitlets.config import Config

    c = Config()
    exec(Path(config).read_text(), {"c": c})
    assert c.ServerApp.port == 43210 and c.ServerApp.base_url == "/node/node0042/43210/"
    assert c.IdentityProvider.token == password and c.ServerApp.open_browser is False


def test_script_loads_modules_activates_the_venv_and_starts_jupyter(tmp_path):
    tools_or_skip("ruby")
    venv, log = tmp_path / "venv", tmp_path / "calls.log"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text(f'export PATH="{venv}/bin:$PATH"; echo "activate" >> {log}\n')
    for tool in ("python", "jupyter", "jupyter-lab"):  # stand-ins that record how they were called
        exe = venv / "bin" / tool
        exe.write_text(f'#!/bin/bash\necho "{tool} $*" >> {log}\n')
        exe.chmod(0o755)
    checkout = tmp_path / "hrm-savio"
    checkout.mkdir()
    script = tmp_path / "script.sh"
    script.write_text(rendered("template/script.sh.erb", form_values(hrm_dir=str(checkout), hrm_venv=str(venv)),
                               tmp_path))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HRM_JUPYTER_CONFIG": "/job/jupyter_config.py"}
    fake_module = f'module() {{ echo "module $*" >> {log}; }}; export -f module; bash {script}'
    r = subprocess.run(["bash", "-c", fake_module], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert log.read_text().splitlines() == [
        "module load " + " ".join(SAVIO["modules"]),
        "activate",
        "python -m ipykernel install --user --name hrm --display-name HRM (hrm-savio)",
        "python --version",
        "jupyter lab --config=/job/jupyter_config.py",
    ]
    # Without the venv: one line that says how to make it.
    script.write_text(rendered("template/script.sh.erb", form_values(hrm_venv=str(tmp_path / "none")), tmp_path))
    r = subprocess.run(["bash", "-c", fake_module], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "create it on a login node with ./hrm_savio_setup.sh setup" in r.stderr


def test_view_links_to_jupyterlab_through_the_proxy(tmp_path):
    page = rendered("view.html.erb", {"host": "node0042", "port": 43210, "password": "secret"}, tmp_path)
    assert 'action="/node/node0042/43210/lab"' in page and 'name="token" value="secret"' in page
