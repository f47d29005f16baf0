"""Cluster profiles and the request check: no Slurm needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from slurm import profiles, qos
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
    assert "savio5_gpu" not in savio.partitions  # no such partition on Savio (audit finding 5)
    assert not any("H100" in p.gpu_types for p in savio.partitions.values())
    a5000 = savio.partitions["savio4_gpu"].gpu_types["A5000"]
    assert (a5000.per_node, a5000.min_cpus_per_gpu, a5000.cores_per_node) == (8, 4, 32)
    assert savio.partitions["savio3_gpu"].gpu_types["A40"].per_node == 4  # 4-A40 nodes exist (finding 19)
    assert {"savio_normal", "savio_debug", "savio_lowprio", "a5k_gpu4_normal", "a40_gpu3_normal"} <= set(savio.qos)
    assert savio.qos["savio_debug"].max_time_min == 180 and savio.qos["savio_lowprio"].preemptible
    assert savio.account_required and savio.scratch == "/global/scratch/users/$USER"
    assert savio.modules == ("python/3.11.6-gcc-11.4.0",)  # no cuda in jobs (finding 9)
    assert savio.account_kind("fc_lab") == savio.account_kind("ic_x") == "allowance"
    assert savio.account_kind("co_lab") == "condo" and savio.account_kind("lab") is None
    for part in ("savio3_gpu", "savio4_gpu"):  # FCAs have neither on GPU partitions (findings 1, 3)
        assert not {"savio_normal", "savio_debug"} & set(savio.partitions[part].qos["allowance"])


def test_local_profile_matches_the_test_cluster():
    local = load_cluster("local")
    start = (Path(__file__).parent / "cluster" / "slurm_local_start.sh").read_text()
    assert local.default_partition(0).name == "savio3_htc"
    assert local.partitions["savio4_gpu"].gpu_types["A5000"].per_node == 8 and "gpu:A5000:8" in start
    assert local.partitions["savio3_gpu"].gpu_types["A40"].per_node == 2 and "gpu:A40:2" in start
    assert local.default_account == "fc_test" and local.slurm_cluster == "localcluster"
    for qos_name in local.qos:
        assert qos_name in start, qos_name


def test_resolve_fills_the_partition_rule_and_gres():
    req = resolve(load_cluster("savio"), partition="savio4_gpu", gpus=8, account="fc_x", time="2-00:00:00")
    assert req.gres == "gpu:A5000:8"
    assert req.cpus_per_task == 32  # 4 CPUs per A5000, one torchrun task per node
    assert req.time_min == 2880 and req.mem is None  # no --mem on per-core GPU partitions (finding 18)
    per_gpu = resolve(load_cluster("savio"), partition="savio4_gpu", gpus=8, tasks_per_node=8, account="fc_x")
    assert per_gpu.cpus_per_task == 4
    more = resolve(load_cluster("savio"), partition="savio4_gpu", gpus=1, cpus_per_gpu=8, account="fc_x")
    assert more.cpus_per_task == 8  # more than the minimum is allowed (charged per core)


def test_default_gpu_partition_has_enough_gpus_per_node():
    assert resolve(load_cluster("savio"), gpus=8, account="fc_x").partition == "savio4_gpu"


def _qos(account: str, requested: str | None = None, stage: str = "train", **kw) -> str | None:
    savio = load_cluster("savio")
    return qos.apply(savio, resolve(savio, account=account, **kw), stage, requested).qos


def test_qos_follows_account_kind_partition_and_gpu_type_without_sacctmgr():
    """The laptop preview (no association for Savio here): the profile's table, per stage."""
    assert _qos("fc_lab", partition="savio3_htc") == "savio_normal"
    assert _qos("co_lab", partition="savio3_htc") == "savio_lowprio"
    assert _qos("fc_lab", partition="savio4_gpu", gpus=1) == "a5k_gpu4_normal"
    assert _qos("fc_lab", partition="savio4_gpu", gpus=1, gpu_type="L40") == "savio_lowprio"
    assert _qos("fc_lab", partition="savio3_gpu", gpus=1, gpu_type="A40") == "a40_gpu3_normal"
    assert _qos("fc_lab", partition="savio3_gpu", gpus=1, gpu_type="V100") == "v100_gpu3_normal"
    assert _qos("fc_lab", partition="savio3_gpu", gpus=1, gpu_type="TITAN") == "savio_lowprio"
    assert _qos("co_lab", partition="savio4_gpu", gpus=1) == "savio_lowprio"
    assert _qos("co_lab", "lab_gpu4_normal", partition="savio4_gpu", gpus=1) == "lab_gpu4_normal"
    assert _qos("lab", partition="savio4_gpu", gpus=1) is None  # unknown kind: the association's default
    assert _qos("fc_lab", "savio_lowprio", partition="savio4_gpu", gpus=1) == "savio_lowprio"


def test_qos_from_associations_when_sacctmgr_answers(monkeypatch):
    savio = load_cluster("savio")
    rows = (
        ("fc_lab", qos.Association("savio3_htc", ("savio_debug", "savio_normal"), "savio_normal")),
        ("fc_lab", qos.Association("savio3_gpu", ("a40_gpu3_normal", "gtx2080_gpu3_normal"), "gtx2080_gpu3_normal")),
        ("co_lab", qos.Association("savio4_gpu", ("lab_gpu4_normal", "savio_lowprio"), "lab_gpu4_normal")),
        ("co_lab", qos.Association("", ("savio_lowprio",), "savio_lowprio")),
    )
    monkeypatch.setattr(qos, "user_associations", lambda cluster, user: rows)
    a40 = resolve(savio, account="fc_lab", partition="savio3_gpu", gpus=1, gpu_type="A40")
    assert qos.apply(savio, a40, "train", None).qos == "a40_gpu3_normal"  # not the Def QOS gtx2080
    condo = resolve(savio, account="co_lab", partition="savio4_gpu", gpus=1)
    assert qos.apply(savio, condo, "train", None).qos == "lab_gpu4_normal"  # its own nodes, not preemptible
    htc = resolve(savio, account="co_lab", partition="savio3_htc")
    assert qos.apply(savio, htc, "data", None).qos == "savio_lowprio"  # the account-wide association
    with pytest.raises(RequestError, match=r"it has: savio_debug, savio_normal\); fix: qos.data=savio_normal"):
        qos.apply(savio, resolve(savio, account="fc_lab", partition="savio3_htc"), "data", "savio_lowprio")
    with pytest.raises(RequestError, match="account 'fc_other' has no association.*one of: co_lab, fc_lab"):
        qos.apply(savio, resolve(savio, account="fc_other", partition="savio3_htc"), "data", None)
    with pytest.raises(RequestError, match="cannot submit to savio4_gpu"):
        qos.apply(savio, resolve(savio, account="fc_lab", partition="savio4_gpu", gpus=1), "train", None)


def test_service_units_are_zero_on_a_free_qos():
    savio = load_cluster("savio")
    req = qos.apply(savio, resolve(savio, partition="savio4_gpu", gpus=1, account="fc_x"), "train", "savio_lowprio")
    assert profiles.service_units(savio, req) == 0


BAD = [
    ({"cluster": "nowhere"}, "unknown cluster 'nowhere'"),
    ({"partition": "savio9_gpu", "gpus": 1}, "unknown partition 'savio9_gpu'"),
    ({"partition": "savio5_gpu", "gpus": 1}, "unknown partition 'savio5_gpu'"),
    ({"partition": "savio4_gpu", "gpus": 1, "gpu_type": "V100"}, "unknown GPU type 'V100'"),
    ({"partition": "savio4_gpu", "gpus": 16}, "gpus=16 per node, but a savio4_gpu A5000 node has 8"),
    (
        {"partition": "savio4_gpu", "gpus": 1, "cpus_per_gpu": 2},
        "cpus_per_gpu=2 is under the savio4_gpu A5000 minimum of 4",
    ),
    ({"partition": "savio4_gpu", "gpus": 8, "cpus_per_gpu": 8}, "but a savio4_gpu A5000 node has 32"),
    ({"partition": "savio4_gpu", "gpus": 1, "time": "4-00:00:00"}, "over the savio4_gpu limit"),
    ({"partition": "savio4_gpu", "gpus": 1, "account": None}, "needs an account"),
    ({"partition": "savio4_gpu", "gpus": 1, "qos": "savio_long"}, "QoS 'savio_long' for the train job"),
    ({"partition": "savio4_gpu", "gpus": 1, "qos": "savio_normal"}, "not offered to allowance accounts"),
    ({"partition": "savio4_gpu", "gpus": 1, "qos": "savio_debug"}, "fix: qos.train=a5k_gpu4_normal"),
    ({"partition": "savio4_gpu", "gpus": 1, "gpu_type": "L40", "qos": "a5k_gpu4_normal"}, "offered: savio_lowprio"),
    ({"partition": "savio3_htc", "qos": "savio_debug", "time": "05:00:00"}, "over the savio_debug limit"),
    ({"partition": "savio3_htc", "gpus": 1}, "partition 'savio3_htc' has no GPUs"),
    ({"partition": "savio3_htc", "nodes": 30}, "over the savio_normal limit of 24"),
]


@pytest.mark.parametrize("kwargs, message", BAD)
def test_bad_requests_fail_in_one_line_naming_the_fix(kwargs, message):
    kwargs = dict(kwargs)
    name = kwargs.pop("cluster", "savio")
    requested = kwargs.pop("qos", None)
    kwargs.setdefault("account", "fc_x")
    with pytest.raises(RequestError) as err:
        cluster = load_cluster(name)
        qos.apply(cluster, resolve(cluster, **kwargs), "train", requested)
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
    assert local.data_path == tmp_path / "data" / "sudoku-demo-6blanks"


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
