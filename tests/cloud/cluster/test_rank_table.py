"""HCCL rank tables: hccn.conf generation, merging, ModelArts conversion, validation."""

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from cloud.cluster.rank_table import (RankTableError, convert_modelarts_table, generate_server_table,
                              device_processes, find_own_instance, load_job_table, merge_tables,
                              read_hccn_conf, read_table, server_sort_key, validate_table,
                              write_table)

from tests.paths import FIXTURES as _FIXTURES
FIXTURES = _FIXTURES / "rank_tables"


def fixture(name):
    return json.loads((FIXTURES / name).read_text())


def ranks_by_server(table):
    return [(s["server_id"], [int(d["rank_id"]) for d in s["device"]])
            for s in table["server_list"]]


def assert_all_strings(value):
    if isinstance(value, dict):
        for item in value.values():
            assert_all_strings(item)
    elif isinstance(value, list):
        for item in value:
            assert_all_strings(item)
    else:
        assert isinstance(value, str), value


# --- hccn.conf -------------------------------------------------------------------------------


def test_read_hccn_conf_keeps_only_addresses():
    addresses = read_hccn_conf(FIXTURES / "hccn.conf")
    assert sorted(addresses) == list(range(8))
    assert addresses[0] == "192.1.9.10" and addresses[7] == "192.4.9.11"


def test_generate_server_table_matches_the_fixture():
    table = generate_server_table("10.0.0.9", list(range(8)), FIXTURES / "hccn.conf")
    assert table == fixture("v1_1server_8dev.json")
    validate_table(table, world_size=8, devices_per_node=8)
    assert_all_strings(table)


def test_generate_server_table_for_some_devices():
    table = generate_server_table("10.0.0.9", [4, 5, 6, 7], FIXTURES / "hccn.conf")
    devices = table["server_list"][0]["device"]
    assert [(d["device_id"], d["rank_id"]) for d in devices] == [
        ("4", "0"), ("5", "1"), ("6", "2"), ("7", "3")]
    assert devices[0]["device_ip"] == "192.1.9.11"


@pytest.mark.parametrize("devices, expected", [
    ([0, 8], "no address_8= line for device 8"),
    ([1, 1], "contain duplicates"),
    ([], "no device ids"),
])
def test_generate_server_table_errors(devices, expected):
    with pytest.raises(RankTableError, match=expected):
        generate_server_table("10.0.0.9", devices, FIXTURES / "hccn.conf")


def test_hccn_conf_missing_or_malformed(tmp_path):
    with pytest.raises(RankTableError, match="cannot read .*nothing.conf"):
        read_hccn_conf(tmp_path / "nothing.conf")
    bad = tmp_path / "hccn.conf"
    bad.write_text("address_0=192.1.9.10\naddress_x=192.2.9.10\n")
    with pytest.raises(RankTableError, match=r"hccn.conf:2: expected address_<id>=<ip>"):
        read_hccn_conf(bad)
    bad.write_text("address_0=192.1.9.10\naddress_0=192.2.9.10\n")
    with pytest.raises(RankTableError, match=r"hccn.conf:2: device 0 is listed twice"):
        read_hccn_conf(bad)


# --- merging ---------------------------------------------------------------------------------


def server_table(server_id, octet, devices=range(8)):
    return {"version": "1.0", "server_count": "1", "status": "completed",
            "server_list": [{"server_id": server_id, "host_nic_ip": "reserve", "device": [
                {"device_id": str(d), "device_ip": f"192.{d % 4 + 1}.{octet}.{10 + d // 4}",
                 "rank_id": str(i)} for i, d in enumerate(devices)]}]}


def test_merge_orders_servers_numerically_not_as_given():
    merged = merge_tables([server_table("10.0.0.10", 10), server_table("10.0.0.9", 9)])
    assert merged == fixture("v1_2servers_16dev.json")
    assert ranks_by_server(merged) == [("10.0.0.9", list(range(8))),
                                       ("10.0.0.10", list(range(8, 16)))]
    validate_table(merged, world_size=16, devices_per_node=8)
    assert_all_strings(merged)


def test_merge_many_servers_and_host_names():
    ids = ["10.0.1.2", "host-b", "10.0.0.100", "9.255.0.1", "host-a", "10.0.0.20"]
    merged = merge_tables([server_table(sid, i, devices=[0]) for i, sid in enumerate(ids)])
    assert [s["server_id"] for s in merged["server_list"]] == [
        "9.255.0.1", "10.0.0.20", "10.0.0.100", "10.0.1.2", "host-a", "host-b"]
    assert merged["server_count"] == "6"
    assert sorted(ids, key=server_sort_key)[0] == "9.255.0.1"


def test_merge_keeps_each_servers_device_order():
    table = server_table("10.0.0.9", 9, devices=[4, 5])
    table["server_list"][0]["device"].reverse()  # rank order, not list order, is kept
    merged = merge_tables([table])
    assert [d["device_id"] for d in merged["server_list"][0]["device"]] == ["4", "5"]


def test_merge_rejects_the_same_server_twice():
    with pytest.raises(RankTableError, match="duplicate server_id '10.0.0.9'"):
        merge_tables([server_table("10.0.0.9", 9), server_table("10.0.0.9", 10)])


def test_merge_rejects_broken_input():
    with pytest.raises(RankTableError, match="table 1: .*duplicate rank_id"):
        merge_tables([server_table("10.0.0.9", 9), fixture("bad_duplicate_rank.json")])
    with pytest.raises(RankTableError, match="no tables"):
        merge_tables([])


# --- ModelArts conversion --------------------------------------------------------------------


def test_convert_one_server():
    table = convert_modelarts_table(FIXTURES / "modelarts_jobstart_1server.json", timeout_s=0)
    assert table["version"] == "1.0" and table["server_count"] == "1"
    assert table["status"] == "completed"
    assert ranks_by_server(table) == [("192.168.0.25", list(range(8)))]
    assert table["server_list"][0]["device"][3] == {
        "device_id": "3", "device_ip": "192.4.25.10", "rank_id": "3"}
    assert_all_strings(table)


def test_convert_two_servers_in_pod_index_order():
    table = convert_modelarts_table(FIXTURES / "modelarts_jobstart_2servers.json", timeout_s=0)
    # pod ...-0 is 10.19.1.142, pod ...-1 is 10.19.1.79: ranks follow VC_TASK_INDEX.
    assert ranks_by_server(table) == [("10.19.1.142", list(range(8))),
                                      ("10.19.1.79", list(range(8, 16)))]
    validate_table(table, world_size=16, devices_per_node=8)


def test_convert_two_servers_in_server_id_order():
    table = convert_modelarts_table(FIXTURES / "modelarts_jobstart_2servers.json", timeout_s=0,
                                    order="server_id")
    assert ranks_by_server(table) == [("10.19.1.79", list(range(8))),
                                      ("10.19.1.142", list(range(8, 16)))]


def test_convert_accepts_the_directory(tmp_path):
    shutil.copy(FIXTURES / "modelarts_jobstart_2servers.json", tmp_path / "jobstart_hccl.json")
    by_dir = convert_modelarts_table(tmp_path, timeout_s=0)
    by_file = convert_modelarts_table(tmp_path / "jobstart_hccl.json", timeout_s=0)
    assert by_dir == by_file and by_dir["server_count"] == "2"


def test_convert_passes_a_v1_table_through_as_strings(tmp_path):
    table = fixture("v1_2servers_16dev.json")
    for server in table["server_list"]:
        for device in server["device"]:
            device["rank_id"] = int(device["rank_id"])  # as the model zoo's merge_hccl writes
    (tmp_path / "jobstart_hccl.json").write_text(json.dumps(table))
    assert convert_modelarts_table(tmp_path, timeout_s=0) == fixture("v1_2servers_16dev.json")


def test_convert_skips_instances_without_devices(tmp_path):
    data = fixture("modelarts_jobstart_1server.json")
    data["group_list"].append({"group_name": "cpu", "device_count": "0", "instance_count": "1",
                               "instance_list": [{"pod_name": "job-cpu-0",
                                                  "server_id": "192.168.0.26", "devices": []}]})
    (tmp_path / "jobstart_hccl.json").write_text(json.dumps(data))
    assert convert_modelarts_table(tmp_path, timeout_s=0)["server_count"] == "1"


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d["group_list"][0]["instance_list"][0]["devices"][2].pop("device_ip"),
     r"instance_list\[0\]\.devices\[2\] has no device_ip"),
    (lambda d: d["group_list"][0]["instance_list"][0].pop("server_id"),
     r"instance_list\[0\] has no server_id"),
    (lambda d: d["group_list"][0]["instance_list"][0]["devices"][1].update(device_id="0"),
     "duplicate device_id '0' in server 192.168.0.25"),
    (lambda d: d.pop("group_list"), "neither group_list"),
])
def test_convert_reports_broken_templates(tmp_path, mutate, expected):
    data = fixture("modelarts_jobstart_1server.json")
    mutate(data)
    (tmp_path / "jobstart_hccl.json").write_text(json.dumps(data))
    with pytest.raises(RankTableError, match=expected):
        convert_modelarts_table(tmp_path, timeout_s=0)


def test_convert_polls_until_completed(tmp_path):
    target = tmp_path / "jobstart_hccl.json"
    shutil.copy(FIXTURES / "modelarts_jobstart_initializing.json", target)
    completed = (FIXTURES / "modelarts_jobstart_2servers.json").read_text()

    def complete_later():
        time.sleep(0.25)
        target.write_text(completed[:40])  # half written
        time.sleep(0.25)
        target.write_text(completed)

    writer = threading.Thread(target=complete_later)
    started = time.monotonic()
    writer.start()
    table = convert_modelarts_table(tmp_path, timeout_s=5, poll_s=0.05)
    writer.join()
    assert 0.45 <= time.monotonic() - started < 3
    assert table["server_count"] == "2" and len(table["server_list"][1]["device"]) == 8


def test_convert_waits_for_the_file_to_appear(tmp_path):
    target = tmp_path / "jobstart_hccl.json"
    timer = threading.Timer(0.3, shutil.copy, (FIXTURES / "modelarts_jobstart_1server.json",
                                               target))
    timer.start()
    table = convert_modelarts_table(tmp_path, timeout_s=5, poll_s=0.05)
    timer.join()
    assert table["server_count"] == "1"


@pytest.mark.parametrize("name, state", [
    ("modelarts_jobstart_initializing.json", "status is 'initializing'"),
    ("bad_json.json", "not valid JSON yet"),
    (None, "file does not exist"),
])
def test_convert_times_out_with_a_clear_error(tmp_path, name, state):
    if name:
        shutil.copy(FIXTURES / name, tmp_path / "jobstart_hccl.json")
    started = time.monotonic()
    with pytest.raises(RankTableError) as caught:
        convert_modelarts_table(tmp_path, timeout_s=0.3, poll_s=0.05)
    assert time.monotonic() - started < 1.5
    message = str(caught.value)
    assert "jobstart_hccl.json" in message and "not completed after 0.3 s" in message
    assert state in message and "\n" not in message


def test_convert_rejects_bad_arguments(tmp_path):
    with pytest.raises(RankTableError, match="order='ip'"):
        convert_modelarts_table(tmp_path, order="ip")
    with pytest.raises(RankTableError, match="poll_s=0"):
        convert_modelarts_table(tmp_path, poll_s=0)


# --- validation ------------------------------------------------------------------------------


def test_fixtures_validate():
    validate_table(fixture("v1_1server_8dev.json"), world_size=8, devices_per_node=8)
    validate_table(fixture("v1_2servers_16dev.json"), world_size=16, devices_per_node=8)


def test_malformed_fixtures():
    with pytest.raises(RankTableError, match="duplicate rank_id '3'"):
        read_table(FIXTURES / "bad_duplicate_rank.json")
    with pytest.raises(RankTableError, match=r"server 10.0.0.9 device\[2\] is missing device_ip"):
        read_table(FIXTURES / "bad_missing_device_ip.json")
    with pytest.raises(RankTableError, match="bad_json.json: invalid JSON"):
        read_table(FIXTURES / "bad_json.json")
    with pytest.raises(RankTableError, match="cannot read rank table"):
        read_table(FIXTURES / "absent.json")


def edit(change):
    table = fixture("v1_2servers_16dev.json")
    change(table)
    return table


def second_server(table):
    return table["server_list"][1]


@pytest.mark.parametrize("table, kwargs, expected", [
    (edit(lambda t: second_server(t)["device"][0].update(rank_id="0")), {},
     "duplicate rank_id '0'"),
    (edit(lambda t: second_server(t)["device"][1].update(device_id="0")), {},
     "duplicate device_id '0' in server 10.0.0.10"),
    (edit(lambda t: second_server(t).update(server_id="10.0.0.9")), {},
     "duplicate server_id '10.0.0.9'"),
    (edit(lambda t: second_server(t)["device"][7].update(rank_id="16")), {},
     r"rank_ids are not 0..15 \(missing \[15\]\)"),
    (edit(lambda t: t.update(server_count="3")), {},
     "server_count is '3' but server_list has 2 servers"),
    (edit(lambda t: t.pop("version")), {}, "missing 'version'"),
    (edit(lambda t: t.update(status="initializing")), {}, "status is 'initializing'"),
    (edit(lambda t: second_server(t)["device"][0].pop("rank_id")), {},
     r"server 10.0.0.10 device\[0\] is missing rank_id"),
    (edit(lambda t: second_server(t).pop("server_id")), {}, r"server_list\[1\] has no server_id"),
    (edit(lambda t: second_server(t).update(device=[])), {}, "server 10.0.0.10 has no devices"),
    (edit(lambda t: second_server(t)["device"][0].update(rank_id=8)), {},
     "rank_id is 8; values must be strings"),
    (edit(lambda t: second_server(t)["device"][0].update(device_ip="192.1.9.10")), {},
     "duplicate device_ip '192.1.9.10'"),
    (fixture("v1_2servers_16dev.json"), {"world_size": 8},
     "lists 16 devices but the world size is 8"),
    (fixture("v1_2servers_16dev.json"), {"devices_per_node": 4},
     "server 10.0.0.9 has 8 devices, expected 4 per node"),
    ([], {}, "is not a JSON object"),
])
def test_validation_errors(table, kwargs, expected):
    with pytest.raises(RankTableError, match=expected) as caught:
        validate_table(table, **kwargs)
    assert str(caught.value).startswith("rank table: ") and "\n" not in str(caught.value)


# --- files and processes ---------------------------------------------------------------------


def test_write_table_is_atomic_and_readable(tmp_path):
    path = tmp_path / "sub" / "rank_table.json"
    table = fixture("v1_2servers_16dev.json")
    assert write_table(table, path) == path
    assert read_table(path) == table
    assert os.stat(path).st_mode & 0o777 == 0o644
    write_table(fixture("v1_1server_8dev.json"), path)
    assert read_table(path)["server_count"] == "1"
    assert [p.name for p in path.parent.iterdir()] == ["rank_table.json"]


def test_write_table_leaves_no_temporary_file_on_failure(tmp_path):
    with pytest.raises(TypeError):
        write_table({"bad": object()}, tmp_path / "t.json")
    assert list(tmp_path.iterdir()) == []


def test_device_processes_keep_physical_ids_in_the_table_and_give_logical_ones(tmp_path):
    """A 2-card pod listed with devices 5 and 4 (physical): ranks follow the table, the
    processes see the container's numbering 0..n-1 by physical id."""
    data = fixture("modelarts_jobstart_1server.json")
    instance = data["group_list"][0]["instance_list"][0]
    instance["devices"] = [instance["devices"][5], instance["devices"][4]]
    (tmp_path / "jobstart_hccl.json").write_text(json.dumps(data))
    job = load_job_table(tmp_path, timeout_s=0)
    own, rule = find_own_instance(job, instance_name=instance["pod_name"])
    assert rule == f"pod_name == instance name {instance['pod_name']!r}"
    processes = device_processes(own, job.world, "/cache/rank_table.json")
    assert [(env["RANK_ID"], env["DEVICE_ID"], env["ASCEND_DEVICE_ID"], physical)
            for env, physical in processes] == [("0", "0", "0", "4"), ("1", "1", "1", "5")]
    assert {env["RANK_SIZE"] for env, _ in processes} == {"2"}
    assert [d["device_id"] for d in job.table["server_list"][0]["device"]] == ["4", "5"]


def test_v1_tables_are_one_entry_per_server():
    job = load_job_table(FIXTURES / "v1_2servers_16dev.json", timeout_s=0)
    assert [pod.pod_name for pod in job.instances] == [None, None] and job.world == 16
    own, rule = find_own_instance(job, host_ip="10.0.0.10")
    assert rule == "server_id == host IP 10.0.0.10"
    assert [d["rank_id"] for d in own.devices] == [str(r) for r in range(8, 16)]
    with pytest.raises(RankTableError, match="cannot tell which rank-table entry"):
        find_own_instance(job, host_ip="172.16.0.3")  # a container IP matches nothing
