"""Environment detection from realistic variable sets, overrides and contradictions."""

import pytest

from cloud.cluster.environment import (DEFAULT_MASTER_PORT, EnvironmentConfigError, JobEnvironment,
                               detect_environment)

MODELARTS_2X8_NODE1 = {
    "MA_JOB_DIR": "/home/ma-user/modelarts/user-job-dir",
    "MA_MOUNT_PATH": "/home/ma-user/modelarts",
    "MA_LOG_DIR": "/home/ma-user/modelarts/log",
    "MA_CURRENT_IP": "10.19.1.79",
    "MA_NUM_GPUS": "8",
    "MA_NUM_HOSTS": "2",
    "MA_VJ_NAME": "modelarts-job-3f2a1c7e",
    "MA_CURRENT_INSTANCE_NAME": "modelarts-job-3f2a1c7e-worker-1",
    "VC_TASK_INDEX": "1",
    "VC_WORKER_NUM": "2",
    "VC_WORKER_HOSTS": ("modelarts-job-3f2a1c7e-worker-0.modelarts-job-3f2a1c7e,"
                        "modelarts-job-3f2a1c7e-worker-1.modelarts-job-3f2a1c7e"),
    "data_url": "/home/ma-user/modelarts/inputs/data_url_0",
    "train_url": "/home/ma-user/modelarts/outputs/train_url_0",
}

LEGACY_2_NODES_NODE0 = {
    "DLS_TASK_INDEX": "0",
    "DLS_TASK_NUMBER": "2",
    "BATCH_CUSTOM0_HOSTS": "job3f2a1c7e-job-trainjob-0:6666",
    "BATCH_CUSTOM1_HOSTS": "job3f2a1c7e-job-trainjob-1:6666",
    "BATCH_TASK_CURRENT_INSTANCE": "job3f2a1c7e-job-trainjob-0",
    "DLS_DATA_URL": "s3://bucket/imagenet/",
    "DLS_TRAIN_URL": "s3://bucket/output/",
    "JOB_ID": "job3f2a1c7e",
}


def msrun_worker(rank, local_rank, workers=2, **extra):
    """What msrun (MindSpore 2.x, --node_rank given or one node) exports to one worker."""
    env = {"MS_ROLE": "MS_WORKER", "MS_WORKER_NUM": str(workers), "MS_SCHED_HOST": "127.0.0.1",
           "MS_SCHED_PORT": "8118", "MS_TOPO_TIMEOUT": "600", "RANK_SIZE": str(workers),
           "DEVICE_ID": str(local_rank), "MS_NODE_ID": str(rank), "RANK_ID": str(rank)}
    env.update(extra)
    return env


def mpirun_rank(rank, size=4, local_size=2):
    return {"OMPI_COMM_WORLD_RANK": str(rank), "OMPI_COMM_WORLD_SIZE": str(size),
            "OMPI_COMM_WORLD_LOCAL_RANK": str(rank % local_size),
            "OMPI_COMM_WORLD_LOCAL_SIZE": str(local_size)}


def error_for(environ, overrides=None):
    with pytest.raises(EnvironmentConfigError) as caught:
        detect_environment(environ, overrides)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- detection per platform ------------------------------------------------------------------


def test_workstation_defaults():
    env = detect_environment({})
    assert env == JobEnvironment(
        platform="workstation", node_count=1, node_rank=0, devices_per_node=1, rank=0,
        local_rank=0, world_size=1, master_addr="127.0.0.1", master_port=DEFAULT_MASTER_PORT,
        job_id=env.job_id)
    assert env.job_id.startswith("job-")
    assert env.is_primary and env.is_node_primary and not env.is_distributed
    assert "workstation" in env.describe() and "rank 0/1" in env.describe()


def test_reads_only_the_mapping_given(monkeypatch):
    monkeypatch.setenv("RANK_SIZE", "8")
    assert detect_environment({}).world_size == 1
    assert detect_environment().world_size == 8


def test_bare_ascend_server_process():
    env = detect_environment({"DEVICE_ID": "5", "RANK_ID": "5", "RANK_SIZE": "8",
                              "RANK_TABLE_FILE": "/tmp/hccl_8p.json"})
    assert (env.platform, env.rank, env.local_rank, env.world_size) == ("workstation", 5, 5, 8)
    assert (env.device_id, env.devices_per_node, env.rank_table_file) == (5, 8, "/tmp/hccl_8p.json")
    assert not env.is_primary


def test_modelarts_two_nodes_of_eight_boot_process():
    env = detect_environment(MODELARTS_2X8_NODE1)
    assert env.platform == "modelarts" and env.on_modelarts
    assert (env.node_count, env.node_rank, env.devices_per_node, env.world_size) == (2, 1, 8, 16)
    assert (env.rank, env.local_rank) == (8, 0)
    assert env.master_addr == "modelarts-job-3f2a1c7e-worker-0.modelarts-job-3f2a1c7e"
    assert env.master_port == DEFAULT_MASTER_PORT
    assert env.job_id == "modelarts-job-3f2a1c7e"
    assert env.data_url == "/home/ma-user/modelarts/inputs/data_url_0"
    assert env.train_url == "/home/ma-user/modelarts/outputs/train_url_0"
    assert (env.node_ip, env.instance_name) == ("10.19.1.79", "modelarts-job-3f2a1c7e-worker-1")


def test_modelarts_device_process_started_with_rank_table_variables():
    environ = dict(MODELARTS_2X8_NODE1, DEVICE_ID="3", RANK_ID="11", RANK_SIZE="16",
                   RANK_TABLE_FILE="/cache/rank_table.json")
    env = detect_environment(environ)
    assert (env.rank, env.local_rank, env.node_rank, env.device_id) == (11, 3, 1, 3)
    assert not env.is_primary and not env.is_node_primary


def test_modelarts_cpu_flavour_has_zero_gpus():
    environ = dict(MODELARTS_2X8_NODE1, MA_NUM_GPUS="0")
    env = detect_environment(environ)
    assert (env.devices_per_node, env.world_size, env.rank) == (1, 2, 1)


def test_modelarts_legacy():
    env = detect_environment(LEGACY_2_NODES_NODE0)
    assert env.platform == "modelarts_legacy" and env.on_modelarts
    assert (env.node_count, env.node_rank, env.world_size) == (2, 0, 2)
    assert (env.master_addr, env.master_port) == ("job3f2a1c7e-job-trainjob-0", 6666)
    assert env.job_id == "job3f2a1c7e"
    assert (env.data_url, env.train_url) == ("s3://bucket/imagenet/", "s3://bucket/output/")
    assert env.instance_name == "job3f2a1c7e-job-trainjob-0"


def test_modelarts_legacy_with_eight_device_processes():
    environ = dict(LEGACY_2_NODES_NODE0, DLS_TASK_INDEX="1", RANK_ID="12", RANK_SIZE="16",
                   DEVICE_ID="4")
    env = detect_environment(environ)
    assert (env.devices_per_node, env.node_rank, env.local_rank) == (8, 1, 4)


def test_msrun_workers_on_one_node():
    envs = [detect_environment(msrun_worker(rank, rank)) for rank in range(2)]
    assert [e.platform for e in envs] == ["msrun", "msrun"]
    assert [(e.rank, e.local_rank, e.world_size) for e in envs] == [(0, 0, 2), (1, 1, 2)]
    assert [e.is_primary for e in envs] == [True, False]
    assert envs[0].node_count == 1 and envs[0].devices_per_node == 2
    assert envs[0].job_id == envs[1].job_id
    assert (envs[1].master_addr, envs[1].master_port) == ("127.0.0.1", 8118)


def test_msrun_scheduler_is_not_primary():
    environ = {"MS_ROLE": "MS_SCHED", "MS_WORKER_NUM": "2", "MS_SCHED_HOST": "127.0.0.1",
               "MS_SCHED_PORT": "8118", "RANK_ID": "0", "RANK_SIZE": "2"}
    env = detect_environment(environ)
    assert env.is_scheduler and env.rank == 0
    assert not env.is_primary and not env.is_node_primary
    assert "scheduler" in env.describe()


def test_msrun_second_node_needs_the_per_node_count():
    environ = msrun_worker(rank=1, local_rank=0, workers=2, MS_SCHED_HOST="10.0.0.9")
    message = error_for(environ)
    assert "devices_per_node" in message and "RANK_ID=1" in message
    env = detect_environment(environ, {"devices_per_node": 1})
    assert (env.node_count, env.node_rank, env.local_rank, env.master_addr) == (2, 1, 0, "10.0.0.9")


def test_msrun_on_modelarts_takes_nodes_from_volcano():
    environ = dict(MODELARTS_2X8_NODE1, **msrun_worker(rank=9, local_rank=1, workers=16,
                                                       MS_SCHED_HOST="10.19.1.142"))
    env = detect_environment(environ)
    assert env.platform == "msrun" and env.on_modelarts
    assert (env.node_count, env.node_rank, env.devices_per_node, env.local_rank) == (2, 1, 8, 1)
    assert env.master_addr == "10.19.1.142"


def test_msrun_without_node_rank_has_no_rank_yet():
    environ = msrun_worker(rank=0, local_rank=0, workers=16)
    del environ["RANK_ID"], environ["MS_NODE_ID"]
    assert "RANK_ID" in error_for(environ)
    assert detect_environment(environ, {"rank": 8, "devices_per_node": 8}).node_rank == 1


def test_mpirun():
    envs = [detect_environment(mpirun_rank(rank)) for rank in range(4)]
    assert [e.platform for e in envs] == ["mpirun"] * 4
    assert [(e.node_rank, e.local_rank) for e in envs] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert {(e.node_count, e.devices_per_node, e.world_size) for e in envs} == {(2, 2, 4)}


def test_platform_precedence():
    under_mpirun = dict(LEGACY_2_NODES_NODE0, **mpirun_rank(0, 2, 1))
    assert detect_environment(under_mpirun).platform == "mpirun"
    both_modelarts = dict(MODELARTS_2X8_NODE1, **LEGACY_2_NODES_NODE0)
    assert detect_environment(both_modelarts).platform == "modelarts"


# --- overrides -------------------------------------------------------------------------------


def test_every_field_can_be_overridden():
    overrides = {"platform": "workstation", "node_count": 2, "node_rank": 1,
                 "devices_per_node": 4, "rank": 6, "local_rank": 2, "world_size": 8,
                 "master_addr": "10.0.0.1", "master_port": 29500, "job_id": "my-job",
                 "device_id": 2, "rank_table_file": "/x.json", "data_url": "/data",
                 "train_url": "/out", "node_ip": "10.0.0.2", "instance_name": "n1",
                 "on_modelarts": True, "is_scheduler": False}
    env = detect_environment(MODELARTS_2X8_NODE1, overrides)
    assert {name: getattr(env, name) for name in overrides} == overrides


def test_none_override_means_derive():
    env = detect_environment(MODELARTS_2X8_NODE1, {"node_rank": None, "world_size": None})
    assert (env.node_rank, env.world_size) == (1, 16)


def test_overrides_beat_environment_and_rederive():
    env = detect_environment(MODELARTS_2X8_NODE1, {"devices_per_node": "4"})
    assert (env.devices_per_node, env.world_size, env.rank) == (4, 8, 4)


def test_platform_override_changes_the_rules():
    env = detect_environment(LEGACY_2_NODES_NODE0, {"platform": "workstation"})
    assert (env.platform, env.node_count) == ("workstation", 1)
    assert env.master_port == DEFAULT_MASTER_PORT


# --- contradictions --------------------------------------------------------------------------


@pytest.mark.parametrize("environ, overrides, names", [
    ({"RANK_ID": "8", "RANK_SIZE": "8"}, None, ["RANK_ID=8", "RANK_SIZE=8"]),
    ({}, {"rank": 3, "world_size": 2}, ["overrides['rank']=3", "overrides['world_size']=2"]),
    ({**MODELARTS_2X8_NODE1, "VC_TASK_INDEX": "2"}, None, ["VC_TASK_INDEX=2", "VC_WORKER_NUM=2"]),
    ({**MODELARTS_2X8_NODE1, "RANK_SIZE": "12"}, None, ["RANK_SIZE=12", "MA_NUM_GPUS=8"]),
    (MODELARTS_2X8_NODE1, {"world_size": 32}, ["overrides['world_size']=32", "MA_NUM_GPUS=8"]),
    ({"RANK_SIZE": "7"}, {"node_count": 2}, ["RANK_SIZE=7", "overrides['node_count']=2"]),
    ({**MODELARTS_2X8_NODE1, "RANK_ID": "3"}, None, ["RANK_ID=3", "VC_TASK_INDEX=1"]),
    (mpirun_rank(1), {"local_rank": 0}, ["OMPI_COMM_WORLD_RANK=1", "overrides['local_rank']=0"]),
    ({}, {"local_rank": 1}, ["overrides['local_rank']=1", "devices_per_node"]),
    ({}, {"node_rank": 1}, ["overrides['node_rank']=1", "node_count"]),
    ({"RANK_SIZE": "0"}, None, ["RANK_SIZE=0", "at least 1"]),
    ({**MODELARTS_2X8_NODE1, "MA_NUM_HOSTS": "3"}, None, ["VC_WORKER_NUM=2", "MA_NUM_HOSTS=3"]),
    ({**MODELARTS_2X8_NODE1, "VC_WORKER_NUM": "3", "MA_NUM_HOSTS": "3"}, None,
     ["VC_WORKER_HOSTS", "VC_WORKER_NUM=3"]),
    (msrun_worker(0, 0, workers=2, RANK_SIZE="4"), None, ["MS_WORKER_NUM=2", "RANK_SIZE=4"]),
    ({"MS_SCHED_PORT": "70000"}, None, ["MS_SCHED_PORT=70000"]),
    ({"BATCH_CUSTOM0_HOSTS": "host:port"}, None, ["BATCH_CUSTOM0_HOSTS"]),
    ({"MS_ROLE": "MS_SERVER"}, None, ["MS_ROLE"]),
])
def test_contradictions_name_the_variable_or_key(environ, overrides, names):
    message = error_for(environ, overrides)
    for name in names:
        assert name in message, message


@pytest.mark.parametrize("variable", ["RANK_ID", "RANK_SIZE", "DEVICE_ID", "VC_TASK_INDEX",
                                      "DLS_TASK_NUMBER", "MA_NUM_GPUS", "OMPI_COMM_WORLD_SIZE",
                                      "MS_WORKER_NUM", "MS_SCHED_PORT"])
@pytest.mark.parametrize("value", ["eight", "1.5", "-1"])
def test_bad_integer_variables(variable, value):
    environ = {"MS_ROLE": "MS_WORKER"} if variable == "MS_WORKER_NUM" else {}
    environ[variable] = value
    message = error_for(environ)
    assert f"{variable}=" in message
    assert ("negative" if value == "-1" else "not an integer") in message


@pytest.mark.parametrize("overrides, expected", [
    ({"rank": -1}, "overrides['rank']=-1 is negative"),
    ({"rank": "two"}, "overrides['rank']='two' is not an integer"),
    ({"world_size": True}, "overrides['world_size']=True"),
    ({"world_size": 2.5}, "overrides['world_size']=2.5"),
    ({"ranks": 2}, "overrides['ranks'] is not a JobEnvironment field"),
    ({"platform": "slurm"}, "overrides['platform']='slurm' is unknown"),
    ({"master_addr": ""}, "overrides['master_addr']=''"),
    ({"on_modelarts": "yes"}, "overrides['on_modelarts']='yes'"),
    ({"node_count": 0}, "overrides['node_count']=0 must be at least 1"),
])
def test_bad_overrides(overrides, expected):
    assert expected in error_for({}, overrides)


def test_empty_variables_count_as_unset():
    env = detect_environment({"RANK_ID": "", "RANK_SIZE": " ", "VC_TASK_INDEX": ""})
    assert (env.platform, env.rank, env.world_size) == ("workstation", 0, 1)


def test_job_id_is_the_same_on_every_node_without_a_name():
    node0 = detect_environment({**LEGACY_2_NODES_NODE0, "JOB_ID": ""})
    node1 = detect_environment({**LEGACY_2_NODES_NODE0, "JOB_ID": "", "DLS_TASK_INDEX": "1"})
    assert node0.job_id == node1.job_id
    other = detect_environment({**LEGACY_2_NODES_NODE0, "JOB_ID": "",
                                "BATCH_CUSTOM0_HOSTS": "otherjob-0:6666"})
    assert other.job_id != node0.job_id


def test_environment_is_frozen():
    env = detect_environment({})
    with pytest.raises(AttributeError):
        env.rank = 3


def test_explicit_data_url_wins_over_legacy_variables():
    env = detect_environment({**LEGACY_2_NODES_NODE0, "data_url": "/cache/data"})
    assert (env.data_url, env.train_url) == ("/cache/data", "s3://bucket/output/")


def test_preset_engine_process_takes_the_logical_device_id():
    """Ascend-Powered-Engine: ASCEND_DEVICE_ID is the logical id inside the container (Huawei
    Cloud docs, "Ascend-Powered-Engine框架启动原理"); a DEVICE_ID naming the physical one does
    not override it."""
    environ = dict(MODELARTS_2X8_NODE1, ASCEND_DEVICE_ID="3", DEVICE_ID="7", RANK_ID="11",
                   RANK_SIZE="16", RANK_TABLE_FILE="/user/config", MA_CURRENT_HOST_IP="10.0.4.12",
                   MA_RUN_METHOD="msrun")
    env = detect_environment(environ)
    assert (env.device_id, env.rank, env.local_rank) == (3, 11, 3)
    assert env.launched_rank and (env.host_ip, env.run_method) == ("10.0.4.12", "msrun")
    assert not detect_environment(MODELARTS_2X8_NODE1).launched_rank  # one boot per node
