"""Cluster profiles and the request check: no Slurm needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from slurm import profiles
from slurm.profiles import RequestError, load_cluster, parse_time, resolve


@pytest.mark.parametrize(
    "text, minutes",
    [
        ("30", 30),
        ("1:30", 2),
        ("01:00:00", 60),
        ("2-00", 2880),
        ("1-02:03", 1563),
        ("3-00:00:00", 4320),
        (45, 45),
    ],
)
def test_parse_time_accepts_slurm_formats(text, minutes):
    assert parse_time(text) == minutes


@pytest.mark.parametrize("bad", ["soon", "1:2:3:4", "-5", "", True])
def test_parse_time_rejects_garbage(bad):
    with pytest.raises(RequestError, match="time="):
        parse_time(bad)


def test_savio_profile_has_the_gpu_partitions_and_qos():
    savio = load_cluster("savio")
    assert {"savio3_gpu", "savio4_gpu"} <= set(savio.partitions)
    assert any("H100" in p.gpu_types for p in savio.partitions.values())
    assert savio.partitions["savio4_gpu"].gpu_types["A5000"].per_node == 8
    assert {"savio_normal", "savio_debug", "savio_lowprio"} <= set(savio.qos)
    assert savio.qos["savio_debug"].max_time_min == 180
    assert savio.account_required and savio.scratch == "/global/scratch/users/$USER"
    assert "python/3.11.6-gcc-11.4.0" in savio.modules


def test_local_profile_matches_the_test_cluster():
    local = load_cluster("local")
    assert local.default_partition(0).name == "savio3_htc"
    assert local.partitions["savio4_gpu"].gpu_types["A5000"].per_node == 4
    assert local.default_account == "fc_test"
    assert set(local.partitions["savio4_gpu"].qos) == {"savio_normal", "savio_debug"}


def test_resolve_fills_the_partition_rule_and_gres():
    req = resolve(load_cluster("savio"), partition="savio4_gpu", gpus=8, account="fc_x", time="2-00:00:00")
    assert req.gres == "gpu:A5000:8"
    assert req.cpus_per_task == 32  # 4 CPUs per A5000, one torchrun task per node
    assert req.qos == "savio_normal" and req.time_min == 2880
    per_gpu = resolve(load_cluster("savio"), partition="savio4_gpu", gpus=8, tasks_per_node=8, account="fc_x")
    assert per_gpu.cpus_per_task == 4


def test_default_gpu_partition_has_enough_gpus_per_node():
    assert resolve(load_cluster("savio"), gpus=8, account="fc_x").partition == "savio4_gpu"


def test_condo_qos_pattern_is_accepted():
    req = resolve(
        load_cluster("savio"), partition="savio4_gpu", gpus=1, account="co_lab", qos="lab_gpu4_normal"
    )
    assert req.qos == "lab_gpu4_normal"


BAD = [
    ({"cluster": "nowhere"}, "unknown cluster 'nowhere'"),
    ({"partition": "savio9_gpu", "gpus": 1}, "unknown partition 'savio9_gpu'"),
    ({"partition": "savio4_gpu", "gpus": 1, "gpu_type": "V100"}, "unknown GPU type 'V100'"),
    ({"partition": "savio4_gpu", "gpus": 16}, "gpus=16 per node, but a savio4_gpu A5000 node has 8"),
    (
        {"partition": "savio4_gpu", "gpus": 2, "cpus_per_gpu": 16},
        "cpus_per_gpu=16 breaks the savio4_gpu A5000 rule",
    ),
    ({"partition": "savio4_gpu", "gpus": 1, "time": "4-00:00:00"}, "over the savio4_gpu limit"),
    ({"partition": "savio4_gpu", "gpus": 1, "account": None}, "needs an account"),
    ({"partition": "savio4_gpu", "gpus": 1, "qos": "savio_long"}, "QoS 'savio_long' is not allowed"),
    (
        {"partition": "savio4_gpu", "gpus": 1, "qos": "savio_debug", "time": "05:00:00"},
        "over the savio_debug limit",
    ),
    ({"partition": "savio3_htc", "gpus": 1}, "partition 'savio3_htc' has no GPUs"),
    ({"partition": "savio4_gpu", "gpus": 1, "nodes": 30}, "over the savio_normal limit of 24"),
]


@pytest.mark.parametrize("kwargs, message", BAD)
def test_bad_requests_fail_in_one_line_naming_the_fix(kwargs, message):
    kwargs = dict(kwargs)
    cluster = kwargs.pop("cluster", "savio")
    kwargs.setdefault("account", "fc_x")
    with pytest.raises(RequestError) as err:
        resolve(load_cluster(cluster), **kwargs)
    text = str(err.value)
    assert message in text
    assert "fix" in text and "\n" not in text


def test_user_profile_dir_adds_and_extends(tmp_path, monkeypatch):
    (tmp_path / "mysavio.yaml").write_text(
        "name: mysavio\nextends: savio\ndefault_account: fc_mine\nmodules: [python/3.12]\n"
        "partitions:\n  savio4_gpu:\n    max_time: '1-00:00:00'\n"
    )
    monkeypatch.setenv("HRM_CLUSTERS_DIR", str(tmp_path))
    assert "mysavio" in profiles.known_clusters()
    mine = load_cluster("mysavio")
    assert mine.modules == ("python/3.12",)
    assert mine.partitions["savio4_gpu"].max_time_min == 1440
    assert mine.partitions["savio4_gpu"].gpu_types["A5000"].per_node == 8  # kept from savio
    assert resolve(mine, gpus=1).account == "fc_mine"


def test_service_units_follow_the_partition_rate():
    savio = load_cluster("savio")
    req = resolve(savio, partition="savio4_gpu", gpus=8, account="fc_x", time="10:00:00")
    assert profiles.service_units(savio, req) == pytest.approx(32 * 10 * 4.67)
    one = resolve(savio, partition="savio4_gpu", gpus=1, account="fc_x", time="01:00:00")
    assert profiles.service_units(savio, one) == pytest.approx(18.68)  # BRC's "18.68 / GPU" for an A5000


def test_relative_data_path_lands_in_the_cluster_data_dir(tmp_path, monkeypatch):
    """On Savio a relative data_path must not fill the small home quota: it resolves under data_dir."""
    from slurm import pipeline

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("USER", "alice")
    p = pipeline.plan(["+experiment=arc1", "cluster=savio", "account=fc_x"])
    assert p.data_path == Path("/global/scratch/users/alice/hrm-savio/data/arc-aug-1000")
    assert f"data_path={p.data_path}" in p.stages[1].argv
    absolute = pipeline.plan(["+experiment=arc1", "cluster=savio", "account=fc_x", f"data_path={tmp_path}/d"])
    assert absolute.data_path == tmp_path / "d"
    local = pipeline.plan(["+experiment=sudoku_demo", "cluster=local"])  # no data_dir: the working directory
    assert local.data_path == tmp_path / "data" / "sudoku-demo"


def test_a_user_file_can_override_savio_under_its_own_name(tmp_path, monkeypatch):
    """What savio.yaml's header recommends: ~/.config/hrm-savio/clusters/savio.yaml with `extends: savio`."""
    user = tmp_path / "config" / "hrm-savio" / "clusters"
    user.mkdir(parents=True)
    (user / "savio.yaml").write_text("name: savio\nextends: savio\nmodules: [python/3.12.1, cuda/12.8.0]\n")
    (user / "lab.yaml").write_text("name: lab\nextends: savio\ndefault_account: co_lab\n")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    savio = load_cluster("savio")
    assert savio.modules == ("python/3.12.1", "cuda/12.8.0")
    assert savio.partitions["savio4_gpu"].gpu_types["A5000"].per_node == 8  # the rest comes from the package
    assert savio.source.endswith("config/hrm-savio/clusters/savio.yaml")
    lab = load_cluster("lab")  # extends the user's savio, which extends the packaged one
    assert lab.modules == ("python/3.12.1", "cuda/12.8.0") and lab.default_account == "co_lab"
    (user / "loop.yaml").write_text("name: loop\nextends: loop\n")  # nothing below it to extend
    with pytest.raises(RequestError, match="cannot extend 'loop'"):
        load_cluster("loop")
