"""What the ModelArts boot file starts on each kind of node, from the platform's documented
inputs (dry runs: nothing is started), and one real preset-engine style job on CPU.

Fixtures follow the formats as documented and as Huawei's own tools read them:
* `jobstart_hccl.json` (RANK_TABLE_FILE names its folder): `status`, `group_count`,
  `group_list[].{group_name, device_count, instance_count, instance_list[]}`, each instance
  `{pod_name, server_id, devices: [{device_id, device_ip}]}`, `server_id` being the host's IP
  and `device_id` the physical id. Sources: mindspore-lab/mindone
  tools/modelarts/run_ascend/{rank_table.py,fmk.py,common.py} (pods sorted by the index ending
  `pod_name`, a node's own pod found by `pod_name == MA_CURRENT_INSTANCE_NAME`, v1.0 tables by
  `server_id == MA_CURRENT_HOST_IP`, processes get `DEVICE_ID = ASCEND_DEVICE_ID = index`,
  `HCCL_CONNECT_TIMEOUT=1800`), and Wh1isper/davincirunsdk davincirunsdk/rank_table.py (the
  same template in its docstring and tests/k8s_jobstart_hccl.json).
* Preset engine: Huawei Cloud ModelArts docs, "Ascend-Powered-Engine框架启动原理": the boot file
  runs once per card with RANK_TABLE_FILE, ASCEND_DEVICE_ID (logical: always 0 on one card),
  RANK_ID (job-wide) and RANK_SIZE set; MA_RUN_METHOD may select msrun or torchrun.
* Container variables: MA_CURRENT_IP is the container's address, MA_CURRENT_HOST_IP the
  host's, MA_CURRENT_INSTANCE_NAME the pod name, VC_TASK_INDEX the node index.
* How MindSpore 2.10 starts several Ascend ranks: see the msrun section below (its sources).
"""
from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest

from cloud.cluster.rank_table import RankTableError, read_table
from core.config import ConfigError
from launcher.modelarts import args as modelarts_args, boot as modelarts
from launcher.distributed import free_port
from tests.paths import FIXTURES, REPO
from tests.cloud.cluster.test_distributed import checkpoint_files, launched  # noqa: F401 (fixture)
from tests.launcher.test_modelarts import HYPER, PLATFORM_VARS, dry_run, flag, platform  # noqa: F401

JOB = "modelarts-job-5b1f"
EXTRA_VARS = ("MA_CURRENT_HOST_IP", "MA_RUN_METHOD", "ASCEND_DEVICE_ID", "HCCL_CONNECT_TIMEOUT",
              "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE", "MS_TOPO_TIMEOUT")


@pytest.fixture
def clean(platform, monkeypatch):
    for name in EXTRA_VARS:
        monkeypatch.delenv(name, raising=False)
    return platform


def device_ip(host: str, device: int) -> str:
    return f"192.{device % 4 + 1}.{host.split('.')[-1]}.{10 + device}"


def jobstart(folder: Path, pods: list[tuple[str, str, list[int]]]) -> Path:
    """A completed `jobstart_hccl.json` for pods [(pod_name, server_id, physical ids)], in the
    documented template, written in the order given (ModelArts does not sort it)."""
    instances = [{"pod_name": pod, "server_id": host,
                  "devices": [{"device_id": str(d), "device_ip": device_ip(host, d)} for d in ids]}
                 for pod, host, ids in pods]
    data = {"status": "completed", "group_count": "1",
            "group_list": [{"group_name": "job-trainjob",
                            "device_count": str(sum(len(ids) for _, _, ids in pods)),
                            "instance_count": str(len(pods)), "instance_list": instances}]}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "jobstart_hccl.json").write_text(json.dumps(data, indent=4))
    return folder


def pod(index: int) -> str:
    return f"{JOB}-worker-{index}"


def ascend_plan(capsys, tmp_path, *extra) -> dict:
    return dry_run(capsys, "--device_target", "Ascend", "--data_url", tmp_path / "data",
                   "--train_url", tmp_path / "out", "--cache_dir", tmp_path / "cache", *extra)


def table_plan(capsys, tmp_path, *extra) -> dict:
    """The rank-table start-up, which MindSpore deprecated in 2.4: only on request."""
    return ascend_plan(capsys, tmp_path, "--launch", "rank_table", *extra)


def node_vars(node: int, nodes: int, cards: int, **extra) -> dict:
    """What ModelArts sets in a custom-image container (boot command run once per node)."""
    hosts = ",".join(f"{pod(i)}.{JOB}" for i in range(nodes))
    values = dict(VC_TASK_INDEX=node, VC_WORKER_NUM=nodes, VC_WORKER_HOSTS=hosts, MA_NUM_GPUS=cards,
                  MA_VJ_NAME=JOB, MA_CURRENT_INSTANCE_NAME=pod(node),
                  MA_CURRENT_IP=f"172.16.0.{20 + node}")  # the container's, never a server_id
    values.update(extra)
    return values


# --- custom image: msrun, MindSpore 2.10's documented start-up ---------------------------------
# Sources (read 2026-12-07):
# * MindSpore r2.10.0, "msrun Launching":
#   https://www.mindspore.cn/tutorials/en/r2.10.0/parallel/msrun_launcher.html
#   (https://www.mindspore.cn/tutorials/en/r2.10.0/_sources/parallel/msrun_launcher.md.txt):
#   msrun starts each node's ranks with one command, on Ascend, GPU and CPU, with no
#   configuration file (--worker_num for all nodes, --local_worker_num, --master_addr, --node_rank).
# * "Distributed Parallel Startup Methods", the newest version found (stable; master says the same):
#   https://www.mindspore.cn/tutorials/en/stable/parallel/startup_method.html: msrun (recommended),
#   dynamic cluster, mpirun; "rank_table method has been deprecated in MindSpore 2.4 version".
#   No r2.10.0 version of that page, and no "rank table Startup" page newer than r2.7.2
#   (https://www.mindspore.cn/tutorials/en/r2.7.2/parallel/rank_table.html), was found.
# * MindSpore 2.10.0 itself: `msrun --help` says its --rank_table_file "is not used to initialize
#   distributed job in 'rank table file manner'"; its Ascend collective library creates the HCCL
#   world group from a rank table whenever RANK_TABLE_FILE is set; init() still accepts RANK_ID
#   with RANK_TABLE_FILE (mindspore/communication/management.py), which --launch rank_table and
#   the preset engine's per-card starts rely on.
# * Huawei's ModelArts msrun launcher, mindspore-lab/mindone
#   tools/modelarts/msrun/run_train_modelarts.sh: `unset RANK_TABLE_FILE`, `unset RANK_ID`, then
#   msrun --worker_num=VC_WORKER_NUM x cards --local_worker_num=cards --master_addr=<first of
#   VC_WORKER_HOSTS> --node_rank=VC_TASK_INDEX.


@pytest.mark.parametrize("nodes,node", [(1, 0), (2, 1)], ids=["1-node", "node-1-of-2"])
def test_ascend_cards_start_under_msrun_as_mindspore_2_10_documents(clean, tmp_path, capsys,
                                                                   nodes, node):
    """No rank table is read or written: the job's RANK_TABLE_FILE is a table still being
    filled in (a rank-table plan would wait for it), and msrun's ranks do not inherit it."""
    clean(**node_vars(node, nodes, 8, RANK_TABLE_FILE=FIXTURES / "rank_tables" /
                      "modelarts_jobstart_initializing.json", ASCEND_DEVICE_ID=0))
    plan = ascend_plan(capsys, tmp_path, "--rank_table_timeout", "0.2")
    assert plan["launch"] == "msrun" and plan["rank_table"] is None and "processes" not in plan
    msrun = plan["msrun"]
    assert (msrun["nproc"], msrun["nnodes"], msrun["node_rank"]) == ("8", str(nodes), str(node))
    if nodes > 1:  # the first worker host is the master, msrun's default port
        assert (msrun["master_addr"], msrun["master_port"]) == (f"{pod(0)}.{JOB}", "8118")
        assert msrun["log_dir"].endswith(f"msrun_logs/node{node}")
    else:
        assert msrun["master_addr"] == "127.0.0.1"
    assert msrun["cluster_timeout_s"] == "1800"
    assert ast.literal_eval(msrun["extra_env"]) == {"HCCL_CONNECT_TIMEOUT": "1800"}
    assert set(ast.literal_eval(msrun["unset_env"])) == {
        "RANK_TABLE_FILE", "MINDSPORE_HCCL_CONFIG_PATH", "RANK_ID", "ASCEND_DEVICE_ID"}
    assert "rank_table" not in msrun
    assert not list((tmp_path / "cache").rglob("rank_table.json"))


def test_a_one_card_ascend_pod_is_one_rank_on_its_logical_device(clean, tmp_path, capsys):
    clean(**node_vars(0, 1, 1, RANK_TABLE_FILE=jobstart(tmp_path / "rank_table",
                                                        [(pod(0), "10.0.4.11", [3])])))
    plan = ascend_plan(capsys, tmp_path)
    assert (plan["launch"], plan["rule"], plan["rank_table"]) == ("single", "one rank", None)
    assert plan["processes"][0]["env"] == {"DEVICE_ID": "0", "ASCEND_DEVICE_ID": "0"}


def test_msrun_and_its_ranks_do_not_inherit_the_jobs_rank_table(clean, tmp_path, tiny_dataset,
                                                                monkeypatch):
    """The boot file's environment when it starts msrun (which passes it to every rank)."""
    seen = {}

    def fake_msrun(config_path, **kwargs):
        seen.update(environ=dict(os.environ), kwargs=kwargs)
        return 0
    monkeypatch.setattr(modelarts.dist, "launch_msrun", fake_msrun)
    table = jobstart(tmp_path / "rank_table", [(pod(0), "10.0.4.11", [0, 1])])
    clean(**node_vars(0, 1, 2, RANK_TABLE_FILE=table, ASCEND_DEVICE_ID=0,
                      MINDSPORE_HCCL_CONFIG_PATH=table))
    monkeypatch.delenv("RANK_ID", raising=False)
    assert modelarts.main(["--device_target", "Ascend", "--data_url", str(tiny_dataset),
                           "--train_url", str(tmp_path / "out"), "--cache_dir",
                           str(tmp_path / "cache")]) == 0
    assert not {"RANK_TABLE_FILE", "MINDSPORE_HCCL_CONFIG_PATH", "ASCEND_DEVICE_ID"} & \
        set(seen["environ"])
    assert seen["kwargs"]["nproc"] == 2 and "unset_env" not in seen["kwargs"]
    assert seen["kwargs"]["extra_env"]["HCCL_CONNECT_TIMEOUT"] == "1800"


def test_rank_table_start_up_is_ascend_only_and_named_deprecated(clean, tmp_path, capsys, caplog):
    clean(**node_vars(0, 1, 2))
    with pytest.raises(ConfigError, match=r"--launch rank_table: rank-table startup exists only "
                                          r"on Ascend \(this job runs on GPU\)"):
        modelarts.main(["--dry-run", "--device_target", "GPU", "--launch", "rank_table",
                        "--data_url", str(tmp_path), "--train_url", str(tmp_path / "out")])
    table = jobstart(tmp_path / "rank_table", [(pod(0), "10.0.4.11", [0, 1])])
    clean(RANK_TABLE_FILE=table)
    with caplog.at_level("WARNING", logger="launcher.modelarts.plan"):
        plan = table_plan(capsys, tmp_path)
    assert plan["launch"] == "rank_table"
    assert "deprecated since 2.4 (msrun, the default, is the documented way)" in caplog.text


# --- custom image with --launch rank_table: one process per card ---------------------------


@pytest.mark.parametrize("physical", [[3], [4, 5], [4, 5, 6, 7], list(range(8))],
                         ids=["1-card", "2-card", "4-card", "8-card"])
def test_each_flavour_starts_its_cards_with_logical_device_ids(clean, tmp_path, capsys, physical):
    table = jobstart(tmp_path / "rank_table", [(pod(0), "10.0.4.11", physical)])
    clean(**node_vars(0, 1, len(physical), RANK_TABLE_FILE=table))
    plan = table_plan(capsys, tmp_path)
    cards = len(physical)
    processes = plan["processes"]
    assert plan["launch"] == ("single" if cards == 1 else "rank_table")
    assert "pod_name == instance name" in plan["rule"]
    if cards == 1:  # one process, bound to logical device 0 whatever the table's id
        assert processes[0]["env"] == {"DEVICE_ID": "0", "ASCEND_DEVICE_ID": "0"}
        assert flag(processes[0]["argv"], "--nproc_per_node") == "1"
        return
    assert [p["env"]["DEVICE_ID"] for p in processes] == [str(i) for i in range(cards)]
    assert [p["env"]["ASCEND_DEVICE_ID"] for p in processes] == [str(i) for i in range(cards)]
    assert [p["physical_device_id"] for p in processes] == [str(d) for d in physical]
    assert [p["env"]["RANK_ID"] for p in processes] == [str(i) for i in range(cards)]
    assert {p["env"]["RANK_SIZE"] for p in processes} == {str(cards)}
    assert {p["env"]["HCCL_CONNECT_TIMEOUT"] for p in processes} == {"1800"}
    written = read_table(processes[0]["env"]["RANK_TABLE_FILE"])  # HCCL reads physical ids
    assert [d["device_id"] for d in written["server_list"][0]["device"]] == [str(d) for d in physical]
    assert written["server_list"][0]["server_id"] == "10.0.4.11"


def two_nodes(tmp_path) -> Path:
    # listed node 1 first, as jobstart_hccl.json may: ranks follow the pod index
    return jobstart(tmp_path / "rank_table", [(pod(1), "10.0.4.12", list(range(8))),
                                              (pod(0), "10.0.4.11", list(range(8)))])


def test_second_of_two_nodes_finds_its_pod_by_name(clean, tmp_path, capsys):
    clean(**node_vars(1, 2, 8, RANK_TABLE_FILE=two_nodes(tmp_path)))
    plan = table_plan(capsys, tmp_path, "--connect_timeout", "900")
    processes = plan["processes"]
    assert plan["rule"] == (f"pod {pod(1)} on 10.0.4.12: pod_name == instance name '{pod(1)}'")
    assert [p["rank"] for p in processes] == list(range(8, 16))
    assert [p["env"]["DEVICE_ID"] for p in processes] == [str(i) for i in range(8)]
    assert {p["env"]["RANK_SIZE"] for p in processes} == {"16"}
    assert {p["env"]["HCCL_CONNECT_TIMEOUT"] for p in processes} == {"900"}
    for process in processes:
        argv = process["argv"]
        assert (flag(argv, "--nnodes"), flag(argv, "--node_rank")) == ("2", "1")
        assert flag(argv, "--job_id") == JOB
    servers = read_table(plan["rank_table"])["server_list"]
    assert [s["server_id"] for s in servers] == ["10.0.4.11", "10.0.4.12"]


def test_container_ip_is_never_taken_for_the_server_id(clean, tmp_path, capsys):
    """Without an instance name, the host IP decides; the container IP (MA_CURRENT_IP) may even
    equal another node's server_id and must not be matched."""
    clean(**node_vars(1, 2, 8, RANK_TABLE_FILE=two_nodes(tmp_path), MA_CURRENT_INSTANCE_NAME="",
                      MA_CURRENT_IP="10.0.4.11", MA_CURRENT_HOST_IP="10.0.4.12"))
    plan = table_plan(capsys, tmp_path)
    assert plan["rule"].endswith("server_id == host IP 10.0.4.12")
    assert [p["rank"] for p in plan["processes"]] == list(range(8, 16))


def test_task_index_is_the_last_resort(clean, tmp_path, capsys):
    clean(**node_vars(1, 2, 8, RANK_TABLE_FILE=two_nodes(tmp_path), MA_CURRENT_INSTANCE_NAME=""))
    plan = table_plan(capsys, tmp_path)
    assert plan["rule"].endswith("pod index == task index 1")
    assert [p["rank"] for p in plan["processes"]] == list(range(8, 16))


def test_two_pods_on_one_host_each_start_only_their_own_cards(clean, tmp_path, capsys):
    table = jobstart(tmp_path / "rank_table", [(pod(0), "10.0.4.11", [0, 1, 2, 3]),
                                               (pod(1), "10.0.4.11", [4, 5, 6, 7])])
    for node in (0, 1):
        clean(**node_vars(node, 2, 4, RANK_TABLE_FILE=table, MA_CURRENT_HOST_IP="10.0.4.11"))
        plan = table_plan(capsys, tmp_path)
        processes = plan["processes"]
        assert f"pod_name == instance name '{pod(node)}'" in plan["rule"]
        assert [p["rank"] for p in processes] == [4 * node + i for i in range(4)]
        assert [p["physical_device_id"] for p in processes] == [str(4 * node + i) for i in range(4)]
        assert [p["env"]["DEVICE_ID"] for p in processes] == ["0", "1", "2", "3"]
        assert {flag(p["argv"], "--node_rank") for p in processes} == {str(node)}
    # without a pod name the shared host IP is ambiguous: the task index decides
    clean(**node_vars(1, 2, 4, RANK_TABLE_FILE=table, MA_CURRENT_HOST_IP="10.0.4.11",
                      MA_CURRENT_INSTANCE_NAME=""))
    plan = table_plan(capsys, tmp_path)
    assert plan["rule"].endswith("pod index == task index 1")
    assert [p["physical_device_id"] for p in plan["processes"]] == ["4", "5", "6", "7"]


def test_a_host_whose_pods_are_not_neighbours_keeps_each_pods_ranks(clean, tmp_path, capsys):
    """Pods 0 and 2 on one host, pod 1 on another: ranks go pod by pod (as Huawei's launcher
    numbers them), so pod 2 runs ranks 8-11 as node 2, and its host's entry holds 0-3 and 8-11."""
    table = jobstart(tmp_path / "rank_table", [(pod(0), "10.0.4.11", [0, 1, 2, 3]),
                                               (pod(1), "10.0.4.12", [0, 1, 2, 3]),
                                               (pod(2), "10.0.4.11", [4, 5, 6, 7])])
    clean(**node_vars(2, 3, 4, RANK_TABLE_FILE=table))
    plan = table_plan(capsys, tmp_path)
    processes = plan["processes"]
    assert [p["rank"] for p in processes] == [8, 9, 10, 11]
    assert [p["physical_device_id"] for p in processes] == ["4", "5", "6", "7"]
    assert {flag(p["argv"], "--node_rank") for p in processes} == {"2"}
    servers = read_table(plan["rank_table"])["server_list"]
    assert [[d["rank_id"] for d in s["device"]] for s in servers] == \
        [["0", "1", "2", "3", "8", "9", "10", "11"], ["4", "5", "6", "7"]]


def test_a_node_that_cannot_be_placed_is_one_clear_error(clean, tmp_path):
    table = jobstart(tmp_path / "rank_table", [("podA", "10.0.4.11", [0, 1]),
                                               ("podB", "10.0.4.11", [2, 3])])
    clean(RANK_TABLE_FILE=table, MA_NUM_GPUS=2, MA_CURRENT_HOST_IP="10.0.4.11")
    with pytest.raises(RankTableError, match=r"cannot tell which rank-table entry is this node "
                                             r"\(2 entries on host 10.0.4.11.*set "
                                             r"MA_CURRENT_INSTANCE_NAME") as caught:
        modelarts.main(["--dry-run", "--device_target", "Ascend", "--launch", "rank_table",
                        "--data_url", str(tmp_path), "--train_url", str(tmp_path / "out")])
    assert "\n" not in str(caught.value)


def test_legacy_job_with_a_v1_table_takes_its_place_from_the_task_index(clean, tmp_path, capsys):
    fixture = FIXTURES / "rank_tables" / "v1_2servers_16dev.json"
    clean(DLS_TASK_INDEX=1, DLS_TASK_NUMBER=2, BATCH_CUSTOM0_HOSTS="job-trainjob-0:6666",
          BATCH_TASK_CURRENT_INSTANCE="job-trainjob-1", RANK_TABLE_FILE=fixture)
    plan = table_plan(capsys, tmp_path)
    assert plan["rule"].endswith("position 1 (task index) of 2 servers")
    assert [p["rank"] for p in plan["processes"]] == list(range(8, 16))


# --- preset engines: the platform starts one process per card ---------------------------------


def test_preset_engine_invocation_runs_exactly_its_own_rank(clean, tmp_path, capsys):
    table = jobstart(tmp_path / "rank_table", [(pod(1), "10.0.4.12", [4, 5]),
                                               (pod(0), "10.0.4.11", [4, 5])])
    clean(**node_vars(1, 2, 2, RANK_TABLE_FILE=table, RANK_ID=3, RANK_SIZE=4, ASCEND_DEVICE_ID=1))
    plan = ascend_plan(capsys, tmp_path)
    assert plan["launch"] == "platform" and len(plan["processes"]) == 1
    process = plan["processes"][0]
    assert process["rank"] == 3
    assert (process["env"]["DEVICE_ID"], process["env"]["ASCEND_DEVICE_ID"]) == ("1", "1")
    assert process["env"]["HCCL_CONNECT_TIMEOUT"] == "1800"
    assert read_table(process["env"]["RANK_TABLE_FILE"])["server_count"] == "2"
    assert (flag(process["argv"], "--nnodes"), flag(process["argv"], "--node_rank"),
            flag(process["argv"], "--nproc_per_node")) == ("2", "1", "2")
    assert plan["rule"].startswith("started by the platform as rank 3 of 4")
    assert plan["scheduler"] is None  # HCCL needs none


def test_preset_engine_rank_that_the_table_does_not_hold_is_refused(clean, tmp_path):
    table = jobstart(tmp_path / "rank_table", [(pod(0), "10.0.4.11", [0, 1]),
                                               (pod(1), "10.0.4.12", [0, 1]),
                                               (pod(2), "10.0.4.13", [0, 1])])
    clean(**node_vars(1, 2, 2, RANK_TABLE_FILE=table, RANK_ID=3, RANK_SIZE=4, ASCEND_DEVICE_ID=1))
    with pytest.raises(ConfigError, match=r"RANK_ID=3, RANK_SIZE=4 do not match the rank table "
                                          r"\(pod .*-worker-1 on 10.0.4.12 holds ranks \[2, 3\] "
                                          r"of 6\)"):
        modelarts.main(["--dry-run", "--device_target", "Ascend", "--data_url", str(tmp_path),
                        "--train_url", str(tmp_path / "out")])


def test_mpirun_and_msrun_started_ranks_are_run_as_they_are(clean, tmp_path, capsys):
    clean(**node_vars(0, 1, 4), OMPI_COMM_WORLD_RANK=2, OMPI_COMM_WORLD_SIZE=4,
          OMPI_COMM_WORLD_LOCAL_RANK=2, OMPI_COMM_WORLD_LOCAL_SIZE=4)
    plan = dry_run(capsys, "--device_target", "GPU", "--data_url", tmp_path / "data",
                   "--train_url", tmp_path / "out", "--cache_dir", tmp_path / "cache")
    assert plan["launch"] == "platform" and [p["rank"] for p in plan["processes"]] == [2]
    assert "MS_ROLE" not in plan["processes"][0]["env"] and plan["scheduler"] is None
    clean(OMPI_COMM_WORLD_RANK="", OMPI_COMM_WORLD_SIZE="", MA_RUN_METHOD="msrun",
          MS_ROLE="MS_WORKER", MS_WORKER_NUM=4, MS_SCHED_HOST="127.0.0.1", MS_SCHED_PORT=8118,
          RANK_ID=1, RANK_SIZE=4, DEVICE_ID=1)
    plan = dry_run(capsys, "--device_target", "GPU", "--data_url", tmp_path / "data",
                   "--train_url", tmp_path / "out", "--cache_dir", tmp_path / "cache")
    assert plan["launch"] == "platform" and [p["rank"] for p in plan["processes"]] == [1]
    assert plan["scheduler"] is None  # msrun runs its own


def test_torchrun_run_method_is_refused(clean, tmp_path):
    clean(**node_vars(0, 1, 8), MA_RUN_METHOD="torchrun")
    with pytest.raises(ConfigError, match="MA_RUN_METHOD=torchrun .* cannot start MindSpore"):
        modelarts.main(["--dry-run", "--device_target", "Ascend", "--data_url", str(tmp_path),
                        "--train_url", str(tmp_path / "out")])


def test_gpu_nodes_wait_the_connect_timeout_for_each_other(clean, tmp_path, capsys):
    clean(**node_vars(1, 2, 8))
    plan = dry_run(capsys, "--device_target", "GPU", "--data_url", tmp_path / "data",
                   "--train_url", tmp_path / "out", "--cache_dir", tmp_path / "cache")
    assert plan["launch"] == "msrun" and plan["msrun"]["cluster_timeout_s"] == "1800"


def test_preset_engine_simulation_trains_two_ranks_checkpoints_once_and_resumes(
        tiny_dataset, tmp_path, launched):
    """The boot file started twice, once per "card", with the per-process variables a preset
    engine sets (RANK_ID, DEVICE_ID, RANK_SIZE) and no msrun: it trains as 2 ranks, only rank 0
    writes checkpoints, and a second start (the platform's restart) resumes."""
    train_url = tmp_path / "outputs" / "train_url_0"
    base = {name: "" for name in PLATFORM_VARS + EXTRA_VARS}
    base.update(VC_TASK_INDEX="0", VC_WORKER_NUM="1", MA_NUM_GPUS="2", MA_VJ_NAME="job-preset",
                RANK_SIZE="2", data_url=str(tiny_dataset), train_url=str(train_url))

    def start_both(epochs: int) -> None:
        # a fresh scheduler port per start: the first start's may still be held (TIME_WAIT)
        # when the second binds it, and MindSpore's scheduler then fails to start
        port = str(free_port())
        procs = [launched.start(["launcher/modelarts.py", "--cache_dir", tmp_path / "cache",
                                 f"--train_epochs={epochs}", *HYPER],
                                dict(base, MS_SCHED_PORT=port, RANK_ID=str(rank), DEVICE_ID=str(rank)))
                 for rank in (0, 1)]
        for proc in procs:
            assert launched.wait(proc, 240) == 0, launched.output()[-5000:]

    start_both(1)
    output = launched.output()
    assert "launch platform (started by the platform as rank 0 of 2)" in output
    assert "launch platform (started by the platform as rank 1 of 2)" in output
    assert "rank 1/2 reads shard 1 of 2" in output
    first = json.loads((train_url / "summary.json").read_text())
    assert (first["world"], first["status"]) == (2, "completed")
    assert checkpoint_files(train_url) == [f"mobilenetv3-e0001-s{first['step']:08d}.ckpt"]
    start_both(2)
    second = json.loads((train_url / "summary.json").read_text())
    assert second["start_step"] == first["step"] and second["step"] == 2 * first["step"]
    assert len(checkpoint_files(train_url)) == 2


# --- hyperparameter names --------------------------------------------------------------------


def test_every_config_key_has_a_valid_modelarts_parameter_name_that_maps_back():
    """ModelArts allows only letters, digits, '-' and '_' in parameter names: `train_epochs`
    is how `train.epochs` travels, and the boot file must map each such name to one key."""
    import re
    keys = sorted(set(modelarts_args.known_keys()) |
                  {f"storage.{name}" for name in modelarts_args.storage_fields()})
    names = {key: key.replace(".", "_", 1) for key in keys}
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", name) for name in names.values())
    assert len(set(names.values())) == len(keys)  # no two keys share a name
    argv = [a for i, name in enumerate(names.values()) for a in
            ([f"--{name}=7"] if i % 2 else [f"--{name}", "7"])]
    rest, found = modelarts.split_hyperparameters(argv)
    assert rest == [] and sorted(found) == keys


@pytest.mark.parametrize("command", [
    ["launcher/modelarts.py", "--data_url", "{tmp}/data", "--train_url", "{tmp}/out"],
    ["launcher/local.py", "train", "--dataset_path", "{tmp}/data", "--output_dir", "{tmp}/out"]],
    ids=["boot-file", "local-train"])
def test_gpu_job_without_cuda_11_is_one_error_line(tmp_path, command):
    """This machine has no CUDA 11 / cuDNN 8 and no NVIDIA driver: the entry points say so in
    one line before staging anything, instead of MindSpore's plugin stack trace."""
    import subprocess
    import sys
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LD_LIBRARY_PATH": str(tmp_path)}
    argv = [part.format(tmp=tmp_path) for part in command] + ["--device_target", "GPU"]
    done = subprocess.run([sys.executable, *argv], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode != 0 and len(errors) == 1, done.stderr[-3000:]
    assert "device_target=GPU cannot run: missing libcudart.so.11.0" in errors[0]
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


def test_job_spec_defaults_to_the_custom_image_and_knows_the_preset_engines(clean, capsys):
    assert modelarts.main(["--print-job-spec", "--device_target", "Ascend"]) == 0
    captured = capsys.readouterr()
    algorithm = json.loads(captured.out)["algorithm"]
    assert "image_url" in algorithm["engine"] and "boot_file" not in algorithm
    assert "note: fill in --image" in captured.err
    with pytest.raises(ConfigError, match="'MindSpore' is not a ModelArts preset engine .* "
                                          "Ascend-Powered-Engine, MPI, MindSpore-GPU"):
        modelarts.main(["--print-job-spec", "--engine", "MindSpore:2.x"])
