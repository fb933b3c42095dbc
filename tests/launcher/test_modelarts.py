"""The ModelArts boot file: a real one-node training job in a simulated ModelArts environment,
rank-table and msrun plans for simulated Ascend/GPU clusters (dry runs: nothing is started),
hyperparameters, and the training-job definition."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cloud.cluster.rank_table import read_table
from core.config import ConfigError
from launcher.modelarts import boot as modelarts
from tests.cloud.cluster.test_distributed import checkpoint_files, launched  # noqa: F401 (fixture)

from tests.paths import FIXTURES as _FIXTURES
FIXTURES = _FIXTURES / "rank_tables"
PLATFORM_VARS = ("VC_TASK_INDEX", "VC_WORKER_NUM", "VC_WORKER_HOSTS", "MA_VJ_NAME", "MA_NUM_HOSTS",
                 "MA_NUM_GPUS", "MA_JOB_DIR", "MA_CURRENT_IP", "MA_CURRENT_INSTANCE_NAME",
                 "DLS_TASK_INDEX", "DLS_TASK_NUMBER", "BATCH_CUSTOM0_HOSTS",
                 "BATCH_TASK_CURRENT_INSTANCE", "MS_ROLE", "MS_SCHED_HOST", "MS_SCHED_PORT",
                 "MS_WORKER_NUM", "MS_NODE_ID", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
                 "RANK_ID", "RANK_SIZE", "DEVICE_ID", "RANK_TABLE_FILE", "JOB_ID", "data_url",
                 "DATA_URL", "train_url", "TRAIN_URL", "checkpoint_url", "CHECKPOINT_URL")
HYPER = ["--data.image_size=32", "--data.eval_resize=36", "--data.batch_size=8",
         "--data.eval_batch_size=7", "--data.workers=1", "--optim.lr=0.01",
         "--optim.warmup_epochs=0", "--train.log_interval=2", "--train.eval_at_end=false",
         "--device_target=CPU"]


@pytest.fixture
def platform(monkeypatch):
    """A clean environment plus the variables a test sets."""
    for name in PLATFORM_VARS:
        monkeypatch.delenv(name, raising=False)

    def set_vars(**values):
        for name, value in values.items():
            monkeypatch.setenv(name, str(value))
    return set_vars


def dry_run(capsys, *argv) -> dict:
    assert modelarts.main(["--dry-run", *map(str, argv)]) == 0
    return json.loads(capsys.readouterr().out)


def flag(argv: list, name: str) -> str:
    return argv[argv.index(name) + 1]


# --- a real job on one node --------------------------------------------------------------------


def test_one_node_job_trains_into_train_url_and_resumes(tiny_dataset, tmp_path, launched):
    train_url = tmp_path / "outputs" / "train_url_0"
    env = {name: "" for name in PLATFORM_VARS}
    env.update(VC_TASK_INDEX="0", VC_WORKER_NUM="1", MA_NUM_GPUS="0", MA_VJ_NAME="job-test",
               data_url=str(tiny_dataset), train_url=str(train_url))
    proc = launched.start(["launcher/modelarts.py", "--cache_dir", tmp_path / "cache",
                           "--train.epochs=1", *HYPER], env)
    assert launched.wait(proc, 180) == 0, launched.output()[-5000:]
    assert "[rank 0] " in launched.output()
    assert checkpoint_files(train_url) == ["mobilenetv3-e0001-s00000007.ckpt"]
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "train.log",
                 "rank_logs/node0/worker_0.log"):
        assert (train_url / name).is_file(), name
    assert json.loads((train_url / "summary.json").read_text())["status"] == "completed"

    # ModelArts "continue training": same output, more epochs; --resume auto is the default
    proc = launched.start(["launcher/modelarts.py", "--cache_dir", tmp_path / "cache",
                           "--train.epochs=2", *HYPER], env)
    assert launched.wait(proc, 180) == 0, launched.output()[-5000:]
    summary = json.loads((train_url / "summary.json").read_text())
    assert summary["start_step"] == 7 and summary["step"] == 14


# --- plans for clusters (dry runs) -------------------------------------------------------------


def test_ascend_node_converts_the_modelarts_rank_table(platform, tmp_path, capsys):
    table_dir = tmp_path / "rank_table"
    table_dir.mkdir()
    shutil.copy(FIXTURES / "modelarts_jobstart_2servers.json", table_dir / "jobstart_hccl.json")
    platform(VC_TASK_INDEX=1, VC_WORKER_NUM=2, VC_WORKER_HOSTS="job-0.svc,job-1.svc",
             MA_NUM_GPUS=8, MA_CURRENT_IP="10.19.1.79", MA_VJ_NAME="job3f2a",
             RANK_TABLE_FILE=table_dir)
    plan = dry_run(capsys, "--device_target", "Ascend", "--launch", "rank_table", "--data_url",
                   tmp_path / "data", "--train_url", tmp_path / "out", "--cache_dir",
                   tmp_path / "cache", "--train.epochs=5")
    assert plan["launch"] == "rank_table"
    processes = plan["processes"]
    assert [p["rank"] for p in processes] == list(range(8, 16))
    assert [p["env"]["DEVICE_ID"] for p in processes] == [str(d) for d in range(8)]
    assert {p["env"]["RANK_SIZE"] for p in processes} == {"16"}
    table = read_table(processes[0]["env"]["RANK_TABLE_FILE"])  # a valid v1.0 table
    assert [s["server_id"] for s in table["server_list"]] == ["10.19.1.142", "10.19.1.79"]
    for process in processes:
        argv = process["argv"]
        assert argv[1].endswith("launcher/worker.py") and flag(argv, "--node_rank") == "1"
        assert flag(argv, "--nproc_per_node") == "8" and flag(argv, "--nnodes") == "2"
        assert flag(argv, "--job_id") == "job3f2a"
    config = Path(flag(processes[0]["argv"], "--config")).read_text()
    assert "epochs: 5" in config and "device_target: Ascend" in config


def test_bare_ascend_server_generates_its_table_from_hccn_conf(platform, tmp_path, capsys):
    plan = dry_run(capsys, "--device_target", "Ascend", "--launch", "rank_table", "--nproc", 8,
                   "--hccn_conf", FIXTURES / "hccn.conf", "--data_url", tmp_path / "data",
                   "--train_url",
                   tmp_path / "out", "--cache_dir", tmp_path / "cache")
    processes = plan["processes"]
    assert [(p["env"]["RANK_ID"], p["env"]["DEVICE_ID"]) for p in processes] == \
        [(str(i), str(i)) for i in range(8)]
    devices = read_table(plan["rank_table"])["server_list"][0]["device"]
    assert devices[0]["device_ip"] == "192.1.9.10" and devices[7]["device_ip"] == "192.4.9.11"


def test_legacy_ascend_job_takes_its_devices_from_the_rank_table(platform, tmp_path, capsys):
    platform(DLS_TASK_INDEX=0, DLS_TASK_NUMBER=1, RANK_TABLE_FILE=FIXTURES / "v1_1server_8dev.json")
    plan = dry_run(capsys, "--device_target", "Ascend", "--launch", "rank_table",
                   "--data_url", tmp_path / "data",
                   "--train_url", tmp_path / "out", "--cache_dir", tmp_path / "cache")
    assert [p["env"]["RANK_ID"] for p in plan["processes"]] == [str(i) for i in range(8)]
    assert {flag(p["argv"], "--nproc_per_node") for p in plan["processes"]} == {"8"}


def test_rank_table_that_never_completes_is_a_clear_error(platform, tmp_path):
    platform(VC_TASK_INDEX=0, VC_WORKER_NUM=1, MA_NUM_GPUS=8,
             RANK_TABLE_FILE=FIXTURES / "modelarts_jobstart_initializing.json")
    with pytest.raises(Exception, match="not completed after 0.3 s"):
        modelarts.main(["--dry-run", "--device_target", "Ascend", "--launch", "rank_table",
                        "--rank_table_timeout", "0.3",
                        "--data_url", str(tmp_path), "--train_url", str(tmp_path / "out")])


def test_gpu_nodes_use_msrun_with_the_first_worker_host_as_master(platform, tmp_path, capsys):
    platform(VC_TASK_INDEX=1, VC_WORKER_NUM=2, VC_WORKER_HOSTS="10.0.0.5,10.0.0.6",
             MA_NUM_GPUS=8, MA_VJ_NAME="job-gpu")
    plan = dry_run(capsys, "--device_target", "GPU", "--data_url", tmp_path / "data",
                   "--train_url", tmp_path / "out", "--cache_dir", tmp_path / "cache")
    msrun = plan["msrun"]
    assert plan["launch"] == "msrun"
    assert msrun["master_addr"] == "10.0.0.5" and msrun["master_port"] == "8118"
    assert (msrun["nproc"], msrun["nnodes"], msrun["node_rank"]) == ("8", "2", "1")
    assert msrun["log_dir"].endswith("msrun_logs/node1")


def test_checkpoint_url_folder_means_its_newest_checkpoint(platform, tmp_path, capsys):
    from core.checkpoint import save
    folder = tmp_path / "ckpts"
    for step in (3, 12):
        save(folder / f"mobilenetv3-e0001-s{step:08d}.ckpt", [], {"step": step})
    plan = dry_run(capsys, "--device_target", "CPU", "--checkpoint_url", folder,
                   "--data_url", tmp_path / "data", "--train_url", tmp_path / "out")
    assert flag(plan["processes"][0]["argv"], "--resume").endswith("s00000012.ckpt")


def test_dry_run_writes_nothing_into_the_output_folder(platform, tmp_path, capsys):
    """The files a dry run's plan names (node config, rank table) go under the cache's dry-run/
    folder; the output folder (train_url) is not created (it held launch/ before)."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    plan = dry_run(capsys, "--device_target", "CPU", "--data_url", tmp_path / "data",
                   "--train_url", out, "--cache_dir", cache)
    assert not out.exists()
    config = Path(flag(plan["processes"][0]["argv"], "--config"))
    assert config.is_file() and config.parent == cache / "dry-run" / "launch"
    plan = dry_run(capsys, "--device_target", "Ascend", "--launch", "rank_table", "--nproc", 8,
                   "--data_url", tmp_path / "data", "--train_url", out, "--cache_dir", cache,
                   "--hccn_conf", FIXTURES / "hccn.conf")
    assert not out.exists() and Path(plan["rank_table"]).parent == cache / "dry-run" / "launch"


# --- arguments and the job definition ----------------------------------------------------------


def test_hyperparameters_become_config_overrides():
    rest, found = modelarts.split_hyperparameters(
        ["--train.epochs=3", "--data_batch_size", "64", "--config", "c.yaml",
         "--init_method=tcp://x:1", "optim.lr=0.1"])
    assert found == {"train.epochs": 3, "data.batch_size": 64}
    assert rest == ["--config", "c.yaml", "optim.lr=0.1"]
    with pytest.raises(ConfigError, match="has no value"):
        modelarts.split_hyperparameters(["--train.epochs"])


def test_print_job_spec_has_what_modelarts_needs(platform, capsys):
    assert modelarts.main(["--print-job-spec", "--config", "configs/ascend_8p.yaml",
                           "--code_dir", "obs://bucket/code/mnv3", "--engine", "Ascend-Powered-Engine:mindspore_2.x",
                           "--data_url", "obs://bucket/imagenet", "--train_url", "obs://bucket/out",
                           "--flavor", "modelarts.kat1.8xlarge", "--node_count", "2",
                           "--pool_id", "pool-abc", "--log_url", "obs://bucket/logs",
                           "--env", "HCCL_CONNECT_TIMEOUT=600", "--env", "MY_FLAG=1",
                           "--max_retries", "2", "--pre_trained", "obs://bucket/w.ckpt",
                           "--train.epochs=300", "--optim.lr=0.4"]) == 0
    captured = capsys.readouterr()
    spec = json.loads(captured.out)
    algorithm = spec["algorithm"]
    assert spec["kind"] == "job" and spec["metadata"]["name"] == "mobilenetv3-small"
    assert spec["metadata"]["annotations"] == {"fault-tolerance/job-retry-num": "2"}
    assert algorithm["code_dir"] == "/bucket/code/mnv3/"
    assert algorithm["boot_file"] == "/bucket/code/mnv3/launcher/modelarts.py"
    assert algorithm["engine"] == {"engine_name": "Ascend-Powered-Engine",
                                   "engine_version": "mindspore_2.x"}
    assert algorithm["inputs"] == [{"name": "data_url", "access_method": "parameter",
                                    "local_dir": "/home/ma-user/modelarts/inputs/data_url_0",
                                    "remote": {"obs": {"obs_url": "/bucket/imagenet/"}}}]
    # The output folder is downloaded before a (re)start, so --resume auto finds its checkpoints.
    assert algorithm["outputs"] == [{"name": "train_url", "access_method": "parameter",
                                     "local_dir": "/home/ma-user/modelarts/outputs/train_url_0",
                                     "prefetch_to_local": True,
                                     "remote": {"obs": {"obs_url": "/bucket/out/"}}}]
    parameters = {p["name"]: p["value"] for p in algorithm["parameters"]}
    assert parameters == {"config": "configs/ascend_8p.yaml", "train_epochs": "300",
                          "optim_lr": "0.4", "pre_trained": "obs://bucket/w.ckpt",
                          "connect_timeout": "1800", "resume": "auto",
                          "output_url": "obs://bucket/out/"}
    assert algorithm["environments"] == {"HCCL_CONNECT_TIMEOUT": "600", "MY_FLAG": "1"}
    assert spec["spec"] == {"resource": {"flavor_id": "modelarts.kat1.8xlarge", "node_count": 2,
                                         "pool_id": "pool-abc"},
                            "log_export_path": {"obs_url": "obs://bucket/logs/"}}
    assert captured.err == ""  # nothing left to fill in
    # What ModelArts passes back (--name=value) is what the boot file turns into config again.
    argv = [f"--{name}={value}" for name, value in parameters.items()]
    rest, hyper = modelarts.split_hyperparameters(argv)
    assert hyper == {"train.epochs": 300, "optim.lr": 0.4}
    assert rest == ["--config=configs/ascend_8p.yaml", "--pre_trained=obs://bucket/w.ckpt",
                    "--connect_timeout=1800", "--resume=auto", "--output_url=obs://bucket/out/"]
    boot = modelarts.parser().parse_args(rest)
    assert (boot.connect_timeout, boot.pre_trained) == (1800, "obs://bucket/w.ckpt")
    assert (Path(modelarts.REPO_ROOT) / "launcher" / "modelarts.py").is_file()


def test_print_job_spec_for_a_custom_image(platform, capsys):
    assert modelarts.main(["--print-job-spec", "--image", "swr.example/org/mnv3:1",
                           "--device_target", "CPU"]) == 0
    captured = capsys.readouterr()
    spec = json.loads(captured.out)
    algorithm = spec["algorithm"]
    assert algorithm["engine"] == {"image_url": "swr.example/org/mnv3:1"}
    # The image's own interpreter, exec'd by the shell ModelArts runs the command in (so that its
    # SIGTERM reaches Python); ModelArts appends the parameters to this command.
    assert algorithm["command"] == ("exec /opt/mnv3/venv/bin/python "
                                    "/home/ma-user/mnv3/launcher/modelarts.py")
    assert "code_dir" not in algorithm and "boot_file" not in algorithm
    assert algorithm["environments"] == {}
    assert spec["metadata"]["annotations"] == {"fault-tolerance/job-retry-num": "3"}
    assert spec["spec"] == {"resource": {"flavor_id": "modelarts.vm.cpu.8u", "node_count": 1}}
    assert "note: fill in --data_url" in captured.err and "note: fill in --flavor" in captured.err
    # A dedicated pool brings its own flavours: no default one; prefetch can be turned off.
    assert modelarts.main(["--print-job-spec", "--image", "swr.example/org/mnv3:1",
                           "--device_target", "CPU", "--pool_id", "pool-1",
                           "--no_prefetch_output"]) == 0
    captured = capsys.readouterr()
    spec = json.loads(captured.out)
    assert spec["spec"]["resource"] == {"node_count": 1, "pool_id": "pool-1"}
    assert "prefetch_to_local" not in spec["algorithm"]["outputs"][0]
    assert "--flavor" not in captured.err
