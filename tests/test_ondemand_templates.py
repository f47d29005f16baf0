"""The Open OnDemand app (guides/ondemand/hrm_jupyter): its ERB files render with real Ruby the way OnDemand
renders them, the scripts pass `bash -n` and shellcheck and do what they say when run with stand-ins for
OnDemand's helpers, submit.yml.erb gives the expected sbatch arguments (the QoS per GPU type and account kind,
Savio's minimum CPUs per GPU), the form's modules and GPU choices agree with slurm/clusters/savio.yaml, the
registered kernel really runs with PYTHONPATH cleared, and the Connect button logs in with a POST."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
import urllib.parse
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

PROFILE_GPUS = {(p, g): t for p, part in SAVIO["partitions"].items() for g, t in (part.get("gpu_types") or {}).items()}
FCA_ONLY_QOS = {"savio_normal", "savio_debug"}  # CPU partitions only: never offered on a GPU partition


def min_cpus_per_gpu(gpu: dict) -> int:
    return gpu.get("min_cpus_per_gpu", gpu.get("cpus_per_gpu"))


def profile_qos(partition: str, gpu_type: str, kind: str) -> str:
    """The profile's preferred QoS for an account kind on a partition and GPU type (the GPU type's list first)."""
    names = (PROFILE_GPUS[(partition, gpu_type)].get("qos") or {}).get(kind)
    return (names or SAVIO["partitions"][partition]["qos"][kind])[0]


def test_form_modules_are_the_cluster_profile_modules():
    modules = FORM["attributes"]["hrm_modules"]["value"].split()
    assert modules == SAVIO["modules"]
    assert not any(m.startswith("cuda/") for m in modules)  # the pip torch wheels bring their own CUDA runtime
    script = (APP / "template" / "script.sh.erb").read_text()
    assert f"for f in {' '.join(SAVIO['lmod_init'])}; do" in script  # the same Lmod init paths


def test_form_gpu_choices_are_the_cluster_profile_gpus():
    choices = {}
    for label, value in FORM["attributes"]["hrm_gpu"]["options"]:
        partition, gpu, cpus, per_node = value.split(":")
        assert label.startswith(f"{partition}: {gpu}") and f", {cpus} CPUs per GPU, " in label
        fca = profile_qos(partition, gpu, "allowance")
        # The label names the QoS an FCA gets; a GPU type with no normal-priority QoS says it is lowprio only.
        assert label.endswith(f"QoS {fca}") if fca != "savio_lowprio" else "savio_lowprio only" in label
        choices[(partition, gpu)] = (int(cpus), int(per_node))
    assert choices == {k: (min_cpus_per_gpu(t), t["per_node"]) for k, t in PROFILE_GPUS.items()}
    assert not any(p == "savio5_gpu" or g == "H100" for p, g in choices)  # no such partition on Savio
    default = FORM["attributes"]["hrm_gpu"]["value"].split(":")
    assert default[:2] == ["savio4_gpu", SAVIO["partitions"]["savio4_gpu"]["default_gpu_type"]]


def test_kernel_is_the_one_setup_registers_and_the_notebooks_ask_for():
    script = (APP / "template" / "script.sh.erb").read_text()
    registered = '--name hrm --display-name "HRM (hrm-savio)"'
    assert f'{registered} --env PYTHONPATH ""' in script
    venv_sh = REPO / "envs" / "venv.sh"
    if venv_sh.is_file():  # setup registers the same kernel, so the two never overwrite each other differently
        assert registered in venv_sh.read_text()
    for nb in (REPO / "guides" / "ondemand").glob("*.ipynb"):
        spec = json.loads(nb.read_text())["metadata"]["kernelspec"]
        assert (spec["name"], spec["display_name"]) == ("hrm", "HRM (hrm-savio)")


def test_manifest_and_form_are_a_batch_connect_app_on_brc():
    manifest = yaml.safe_load((APP / "manifest.yml").read_text())
    assert manifest["role"] == "batch_connect" and manifest["category"] == "Interactive Apps"
    assert set(FORM["form"]) == set(FORM["attributes"])
    assert FORM["cluster"] == "brc"  # BRC's OnDemand cluster id, as its own apps use
    assert FORM["attributes"]["hrm_qos"]["value"] == ""  # chosen per GPU type and account kind
    assert FORM["attributes"]["hrm_venv"]["value"] == "$HOME/.venvs/hrm-savio"
    assert os.access(APP / "template" / "script.sh.erb", os.X_OK)


# --- submit.yml.erb -> sbatch arguments -------------------------------------------------------------------------


def native(changes: dict, tmp_path: Path) -> list[str]:
    submit = yaml.safe_load(rendered("submit.yml.erb", form_values(**changes), tmp_path))
    assert submit["batch_connect"] == {"template": "basic"}
    return submit["script"]["native"]


@pytest.mark.parametrize("changes, expected", [
    ({}, ["--partition=savio4_gpu", "--gres=gpu:A5000:1", "--nodes=1", "--ntasks=1", "--cpus-per-task=4",
          "--time=02:00:00", "--account=fc_yourgroup", "--qos=a5k_gpu4_normal"]),
    ({"hrm_gpu": "savio3_gpu:A40:8:4", "hrm_gpus": "4", "hrm_hours": "72", "hrm_account": "co_yourcondo"},
     ["--partition=savio3_gpu", "--gres=gpu:A40:4", "--nodes=1", "--ntasks=1", "--cpus-per-task=32",
      "--time=72:00:00", "--account=co_yourcondo", "--qos=savio_lowprio"]),
    ({"hrm_gpu": "savio4_gpu:L40:8:8", "hrm_gpus": 8, "hrm_hours": 1, "hrm_account": "ic_course"},
     ["--partition=savio4_gpu", "--gres=gpu:L40:8", "--nodes=1", "--ntasks=1", "--cpus-per-task=64",
      "--time=01:00:00", "--account=ic_course", "--qos=savio_lowprio"]),
    ({"hrm_gpu": "savio3_gpu:V100:4:2", "hrm_qos": "savio_lowprio", "hrm_account": "ac_recharge"},
     ["--partition=savio3_gpu", "--gres=gpu:V100:1", "--nodes=1", "--ntasks=1", "--cpus-per-task=4",
      "--time=02:00:00", "--account=ac_recharge", "--qos=savio_lowprio"]),
    ({"hrm_account": "co_mylab", "hrm_qos": "mylab_gpu4_normal"},  # a condo's own QoS
     ["--partition=savio4_gpu", "--gres=gpu:A5000:1", "--nodes=1", "--ntasks=1", "--cpus-per-task=4",
      "--time=02:00:00", "--account=co_mylab", "--qos=mylab_gpu4_normal"]),
    ({"hrm_account": "lab_other"},  # an account of no known kind: no --qos, its association's default applies
     ["--partition=savio4_gpu", "--gres=gpu:A5000:1", "--nodes=1", "--ntasks=1", "--cpus-per-task=4",
      "--time=02:00:00", "--account=lab_other"]),
])
def test_submit_renders_the_sbatch_arguments(changes, expected, tmp_path):
    assert native(changes, tmp_path) == expected


@pytest.mark.parametrize("account, kind", [("fc_x", "allowance"), ("ic_x", "allowance"), ("ac_x", "allowance"),
                                           ("co_x", "condo")])
def test_submit_picks_the_profile_qos_and_minimum_cpus_for_every_gpu_choice(account, kind, tmp_path):
    for _, value in FORM["attributes"]["hrm_gpu"]["options"]:
        partition, gpu = value.split(":")[:2]
        args = native({"hrm_gpu": value, "hrm_gpus": 2, "hrm_account": account}, tmp_path)
        qos = profile_qos(partition, gpu, kind)
        assert args[-1] == f"--qos={qos}" and qos not in FCA_ONLY_QOS, (value, account)
        assert f"--cpus-per-task={2 * min_cpus_per_gpu(PROFILE_GPUS[(partition, gpu)])}" in args


@pytest.mark.parametrize("changes, message", [
    ({"hrm_account": ""}, "Slurm account is empty"),
    ({"hrm_account": 'fc_x"; rm -rf ~'}, "use letters, digits"),
    ({"hrm_gpus": 5, "hrm_gpu": "savio3_gpu:A40:8:4"}, "GPUs: choose 1 to 4 (a savio3_gpu A40 node has 4)"),
    ({"hrm_hours": 100}, "Hours: choose 1 to 72"),
    ({"hrm_gpu": "savio4_gpu"}, "is not one of the form's choices"),
    ({"hrm_gpu": "savio5_gpu:H100:8:8"}, "is not one of the form's choices"),
    ({"hrm_gpu": "savio4_gpu:A5000:2:8"}, "is not one of the form's choices"),  # fewer CPUs than Savio's minimum
    ({"hrm_qos": "savio_normal"}, "QoS savio_normal is not available on savio4_gpu"),
    ({"hrm_qos": "savio_debug", "hrm_gpu": "savio3_gpu:A40:8:4"}, "QoS savio_debug is not available on savio3_gpu"),
    ({"hrm_qos": "a5k_gpu4_normal", "hrm_gpu": "savio3_gpu:A40:8:4"}, "is for another GPU type, not A40"),
    ({"hrm_qos": "a40_gpu3_normal", "hrm_gpu": "savio4_gpu:L40:8:8"}, "is for another GPU type, not L40"),
    ({"hrm_qos": "mylab_gpu4_normal"}, "an fc_ account on savio4_gpu A5000 uses a5k_gpu4_normal or savio_lowprio"),
    ({"hrm_qos": "mylab_gpu3_normal", "hrm_gpu": "savio3_gpu:TITAN:4:8"}, "savio3_gpu TITAN uses savio_lowprio"),
    ({"hrm_qos": "a5k_gpu4_normal", "hrm_account": "co_lab"}, "a condo uses savio_lowprio or its own condo QoS"),
])
def test_submit_refuses_bad_choices_in_one_line(changes, message, tmp_path):
    r = render("submit.yml.erb", form_values(**changes), tmp_path)
    assert r.returncode != 0 and message in r.stderr, r.stderr


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


def run_before(tmp_path: Path, port: int = 43210) -> tuple[str, str, Path]:
    """before.sh sourced with stand-ins for OnDemand's helpers: (port, password, the Jupyter config it wrote)."""
    before = tmp_path / "before.sh"
    before.write_text(rendered("template/before.sh.erb", form_values(), tmp_path))
    job = tmp_path / "job"
    job.mkdir(exist_ok=True)
    stand_ins = (f'host=node0042; find_port() {{ echo {port}; }}; create_passwd() {{ printf "p%.0s" $(seq "$1"); }}; '
                 f'source {before}; echo "$port $password $HRM_JUPYTER_CONFIG"')
    r = subprocess.run(["bash", "-c", stand_ins], cwd=job, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out_port, password, config = r.stdout.split()
    return out_port, password, Path(config)


def test_before_writes_a_jupyter_config_for_the_proxy(tmp_path):
    tools_or_skip("ruby")
    port, password, config = run_before(tmp_path)
    assert port == "43210" and password == "p" * 32 and config == tmp_path / "job" / "jupyter_config.py"
    assert stat.S_IMODE(os.stat(config).st_mode) == 0o600
    from traitlets.config import Config

    c = Config()
    exec(config.read_text(), {"c": c})
    assert c.ServerApp.port == 43210 and c.ServerApp.base_url == "/node/node0042/43210/"
    assert c.IdentityProvider.token == password and c.ServerApp.open_browser is False
    assert c.ServerApp.disable_check_xsrf is True  # the Connect button's POST comes without Jupyter's XSRF cookie


def fake_venv(tmp_path: Path, log: Path, real_jupyter: bool = False) -> Path:
    """A venv whose activate puts stand-ins first on PATH; they record how they were called. With real_jupyter,
    `python` and `jupyter` (except `jupyter lab`) are this test's interpreter and its jupyter."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    real = Path(sys.executable).parent
    path = f"{venv}/bin:{real}" if real_jupyter else f"{venv}/bin"
    (venv / "bin" / "activate").write_text(f'export PATH="{path}:$PATH"; echo "activate" >> {log}\n')
    tools = {
        "jupyter-lab": f'echo "jupyter-lab $*" >> {log}',
        "jupyter": (f'if [ "$1" = lab ]; then echo "jupyter $* PYTHONPATH=${{PYTHONPATH-unset}}" >> {log}; exit 0; fi\n'
                    + (f'exec {real}/jupyter "$@"' if real_jupyter else
                       f'echo "jupyter $*" >> {log}; [ "$1" = --data-dir ] && echo "$JUPYTER_DATA_DIR"')),
    }
    if not real_jupyter:
        tools["python"] = f'echo "python $*" >> {log}'
    for tool, body in tools.items():
        exe = venv / "bin" / tool
        exe.write_text(f"#!/bin/bash\n{body}\n")
        exe.chmod(0o755)
    return venv


def test_script_loads_modules_activates_the_venv_and_starts_jupyter(tmp_path):
    tools_or_skip("ruby")
    log = tmp_path / "calls.log"
    venv = fake_venv(tmp_path, log)
    checkout = tmp_path / "hrm-savio"
    checkout.mkdir()
    script = tmp_path / "script.sh"
    script.write_text(rendered("template/script.sh.erb", form_values(hrm_dir=str(checkout), hrm_venv=str(venv)),
                               tmp_path))
    data = tmp_path / "data"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HRM_JUPYTER_CONFIG": "/job/jupyter_config.py",
           "JUPYTER_DATA_DIR": str(data), "PYTHONPATH": "/anaconda3/lib/python3.11/site-packages"}
    fake_module = f'module() {{ echo "module $*" >> {log}; }}; export -f module; bash {script}'
    r = subprocess.run(["bash", "-c", fake_module], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert log.read_text().splitlines() == [
        "module load " + " ".join(SAVIO["modules"]),
        "activate",
        "jupyter --data-dir",
        "python -m ipykernel install --user --name hrm --display-name HRM (hrm-savio) --env PYTHONPATH ",
        "python --version",
        "jupyter lab --config=/job/jupyter_config.py PYTHONPATH=unset",  # the server does not see PYTHONPATH
    ]
    # A kernel.json already there (set-up's, or the module-loading one of ONDEMAND.md) is kept.
    (data / "kernels" / "hrm").mkdir(parents=True)
    (data / "kernels" / "hrm" / "kernel.json").write_text("{}")
    log.unlink()
    r = subprocess.run(["bash", "-c", fake_module], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert not any("ipykernel" in line for line in log.read_text().splitlines())
    assert f"keeping the hrm kernel in {data}/kernels/hrm/kernel.json" in r.stdout
    # Without the venv: one line that says how to make it.
    script.write_text(rendered("template/script.sh.erb", form_values(hrm_venv=str(tmp_path / "none")), tmp_path))
    r = subprocess.run(["bash", "-c", fake_module], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "create it on a login node with ./hrm_savio_setup.sh setup" in r.stderr


def test_registered_kernel_runs_with_pythonpath_cleared(tmp_path, monkeypatch):
    """The script registers the real kernel (this interpreter); started from a server environment with a
    leaking PYTHONPATH (anaconda3's, in BRC's Jupyter app), the kernel sees none of it."""
    tools_or_skip("ruby")
    pytest.importorskip("jupyter_client")
    from jupyter_client.manager import start_new_kernel

    log = tmp_path / "calls.log"
    venv = fake_venv(tmp_path, log, real_jupyter=True)
    script = tmp_path / "script.sh"
    script.write_text(rendered("template/script.sh.erb", form_values(hrm_dir=str(tmp_path), hrm_venv=str(venv),
                                                                     hrm_modules=""), tmp_path))
    data, leak = tmp_path / "data", tmp_path / "anaconda3-site-packages"
    leak.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HRM_JUPYTER_CONFIG": "/job/jupyter_config.py",
           "JUPYTER_DATA_DIR": str(data), "PYTHONPATH": str(leak)}
    r = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    spec = json.loads((data / "kernels" / "hrm" / "kernel.json").read_text())
    assert spec["display_name"] == "HRM (hrm-savio)" and spec["env"] == {"PYTHONPATH": ""}

    for name, value in (("JUPYTER_PATH", data), ("JUPYTER_DATA_DIR", data), ("JUPYTER_RUNTIME_DIR", tmp_path / "rt"),
                        ("PYTHONPATH", leak)):
        monkeypatch.setenv(name, str(value))
    km, kc = start_new_kernel(kernel_name="hrm", startup_timeout=60)
    out = []
    try:
        kc.execute_interactive(
            "import os, sys; print(repr(os.environ.get('PYTHONPATH')), any('anaconda3' in p for p in sys.path))",
            output_hook=lambda msg: out.append(msg["content"].get("text", "")), timeout=60)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert "".join(out).split() == ["''", "False"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_view_posts_the_token_to_jupyters_login(tmp_path):
    page = rendered("view.html.erb", {"host": "node0042", "port": 43210, "password": "secret"}, tmp_path)
    assert 'action="/node/node0042/43210/login" method="post"' in page
    assert 'name="password" value="secret"' in page and "token=" not in page  # never in a URL


def test_connect_button_logs_in_to_a_real_jupyter_server(tmp_path):
    """The form the view draws, posted to a Jupyter server started with before.sh's config, gives the login
    cookie and lands in JupyterLab. Needs jupyter_server (the `ondemand` extra)."""
    tools_or_skip("ruby")
    pytest.importorskip("jupyter_server")
    from html.parser import HTMLParser
    from http.client import HTTPConnection

    port = free_port()
    _, password, config = run_before(tmp_path, port)

    class Form(HTMLParser):
        action, fields = "", {}

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "form":
                self.action, self.method = a["action"], a["method"]
            elif tag == "input":
                self.fields[a["name"]] = a["value"]

    form = Form()
    form.feed(rendered("view.html.erb", {"host": "node0042", "port": port, "password": password}, tmp_path))
    assert form.method == "post"
    env = {**os.environ, "HOME": str(tmp_path), "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"),
           "JUPYTER_DATA_DIR": str(tmp_path / "data"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")}
    server = subprocess.Popen([sys.executable, "-m", "jupyter_server", f"--config={config}", "--allow-root"],
                              cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(1000):  # until the server listens (or dies); generous for a busy machine
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None:
                    pytest.fail(f"jupyter_server exited: {server.stderr.read().decode()[-2000:]}")
                time.sleep(0.3)
        else:
            pytest.fail("jupyter_server did not listen within 1000 tries")

        def request(method, path, body=None, headers=None):
            conn = HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            resp.read()
            conn.close()
            return resp

        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        resp = request("POST", form.action, urllib.parse.urlencode(form.fields), headers)
        assert resp.status == 302 and resp.getheader("Location").endswith(f"/node/node0042/{port}/lab")
        cookie = resp.getheader("Set-Cookie").split(";")[0]
        status = f"/node/node0042/{port}/api/status"
        assert request("GET", status, headers={"Cookie": cookie}).status == 200
        assert request("GET", status).status == 403  # without the login cookie: refused
        wrong = urllib.parse.urlencode({**form.fields, "password": "wrong"})
        assert request("POST", form.action, wrong, headers).status == 401
    finally:
        server.terminate()
        server.wait(timeout=30)
