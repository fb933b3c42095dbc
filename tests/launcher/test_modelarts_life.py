"""Issue 24: the whole life of a ModelArts job -- arguments the platform appends, restart
annotations, restarts that resume from OBS, hangs, stops, long logs, disk space.

Each test names the public source its fixture's format comes from.
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.modelarts import boot as modelarts
from tests.cloud.cluster.test_distributed import launched  # noqa: F401 (fixture)
from tests.launcher.test_modelarts import PLATFORM_VARS, dry_run, flag, platform  # noqa: F401 (fixture)

from tests.paths import REPO


# --- 1. arguments the platform adds -------------------------------------------------------------
# Source: ModelArts Troubleshooting, "ModelArts Training Job Failed to Parse Parameters and an Error
# Is Displayed in the Log", https://support.huaweicloud.com/intl/en-us/trouble-modelarts/
# modelarts_13_0012.html: "error: unrecognized arguments: --init_method=tcp://job", "Unknown
# command line flag 'task_index'"; "the system may input parameters that are not defined in the
# Python script ... Replace args = parser.parse_args() with args, unparsed =
# parser.parse_known_args()". Parameters arrive as --name=value.


def test_platform_arguments_are_ignored_in_one_line_and_ours_kept(platform, tmp_path, capsys,
                                                                  caplog):
    platform(VC_TASK_INDEX=0, VC_WORKER_NUM=1, MA_NUM_GPUS=0, MA_VJ_NAME="job-args")
    caplog.set_level(logging.INFO, logger="launcher.modelarts.boot")
    plan = dry_run(capsys, "--device_target=CPU", f"--data_url={tmp_path / 'data'}",
                   f"--train_url={tmp_path / 'out'}", f"--cache_dir={tmp_path / 'cache'}",
                   "--task_index=0", "--some_new_platform_arg=1", "--init_method=tcp://job:6666",
                   "--rank_size", "8", "--train_epochs=5", "--optim_lr=0.3")
    ignored = [r.getMessage() for r in caplog.records if "does not declare" in r.getMessage()]
    assert len(ignored) == 1, ignored
    assert "--task_index --some_new_platform_arg --rank_size" in ignored[0]
    import yaml
    config = yaml.safe_load(Path(flag(plan["processes"][0]["argv"], "--config")).read_text())
    assert config["train"]["epochs"] == 5 and config["optim"]["lr"] == 0.3


def test_a_misspelt_hyperparameter_of_ours_is_still_an_error(tmp_path):
    """As a new user runs it: the boot file's own process, exit 2, one line naming the key."""
    proc = subprocess.run([sys.executable, "launcher/modelarts.py", f"--data_url={tmp_path}",
                           f"--train_url={tmp_path / 'out'}", "--task_index=0",
                           "--train_epoch=5", "--dry-run"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--train_epoch" in errors[0], proc.stderr[-2000:]
    assert "--train_epochs (config key train.epochs)" in errors[0]
    assert not (tmp_path / "out").exists()


# --- 3. fault tolerance as documented ----------------------------------------------------------
# Sources: "Enabling Unconditional Auto Restart", https://support.huaweicloud.com/intl/en-us/
# usermanual-standard-modelarts/develop-modelarts-0041.html (annotations
# "fault-tolerance/job-retry-num" and "fault-tolerance/job-unconditional-retry": "true" in
# metadata.annotations; unconditional restarts at most three consecutive times) and "Training Job
# Restart Upon Suspension", https://support.huaweicloud.com/intl/en-us/usermanual-standard-
# modelarts/develop-modelarts-0043.html ("fault-tolerance/hang-retry"; at most three consecutive
# times). The 1-3 range for job-retry-num is the project's reading of the training docs
# (PLATFORM_NOTES.md); the unconditional-restart page quotes 1-128 for the API.

SPEC = ["--print-job-spec", "--image", "swr.example/org/mnv3:1", "--device_target", "CPU",
        "--data_url", "obs://b/d", "--train_url", "obs://b/o", "--flavor", "f"]


def annotations(capsys, *extra) -> dict:
    assert modelarts.main([*SPEC, *extra]) == 0
    return json.loads(capsys.readouterr().out)["metadata"].get("annotations", {})


def test_restart_annotations_as_documented(platform, capsys):
    assert annotations(capsys, "--max_retries", "1") == {"fault-tolerance/job-retry-num": "1"}
    assert annotations(capsys, "--max_retries", "3", "--unconditional_retry", "--hang_retry") == {
        "fault-tolerance/job-retry-num": "3", "fault-tolerance/job-unconditional-retry": "true",
        "fault-tolerance/hang-retry": "true"}
    assert annotations(capsys, "--max_retries", "0") == {}


@pytest.mark.parametrize("value", ["4", "-1", "128"])
def test_max_retries_outside_1_to_3_is_one_line_before_any_api_call(value, tmp_path, monkeypatch,
                                                                   capsys):
    """`submit` refuses it before it opens the API (no credentials are even needed)."""
    from launcher.modelarts import jobs as modelarts_jobs
    from launcher.common import run_main

    def no_api(args):
        raise AssertionError("the API was opened")
    monkeypatch.setattr(modelarts_jobs, "open_api", no_api)
    code = run_main(modelarts.main, ["submit", *SPEC[1:], "--max_retries", value])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--max_retries" in err[0] and "1-3" in err[0], err
    code = run_main(modelarts.main, ["submit", *SPEC[1:], "--max_retries", "0", "--hang_retry"])
    assert code == 2 and "need --max_retries" in capsys.readouterr().err


# --- 8. disk -----------------------------------------------------------------------------------
# Source for the sizes: PLATFORM_NOTES.md "ModelArts: what a job's life adds" (/cache about 50 GB
# on some CPU flavours); the check itself needs no platform: staging compares the bytes still to
# download with the cache's free space before it writes anything.


def test_staging_more_than_the_cache_holds_stops_before_writing(tmp_path, monkeypatch):
    import shutil as real_shutil

    from cloud.storage.errors import StorageError
    from cloud.storage.store import open_storage
    from cloud.storage.sync import download_tree
    src = tmp_path / "bucket" / "imagenet"
    for i in range(3):
        (src / "train").mkdir(parents=True, exist_ok=True)
        (src / "train" / f"shard-{i}.bin").write_bytes(b"x" * 400_000)
    dest = tmp_path / "cache" / "data"
    usage = real_shutil.disk_usage(tmp_path)
    monkeypatch.setattr(real_shutil, "disk_usage",
                        lambda path: usage._replace(free=1_000_000))  # 1 MB free, 1.2 MB to stage
    with pytest.raises(StorageError) as caught:
        download_tree(open_storage(str(src)), "", str(dest))
    message = str(caught.value)
    assert "\n" not in message
    assert "needs 1.1 MB more" in message and "only 976.6 KB is free" in message
    assert "--cache_dir" in message and "Streaming" in message
    assert not any(p.is_file() for p in dest.rglob("*"))
    # what is already staged counts: with two shards cached, the third one fits
    monkeypatch.setattr(real_shutil, "disk_usage", lambda path: usage)
    download_tree(open_storage(str(src)), "", str(dest))
    (dest / "train" / "shard-2.bin").unlink()
    monkeypatch.setattr(real_shutil, "disk_usage",
                        lambda path: usage._replace(free=500_000))
    download_tree(open_storage(str(src)), "", str(dest))
    assert (dest / "train" / "shard-2.bin").stat().st_size == 400_000


# --- 6. logs -----------------------------------------------------------------------------------
# Sources: API reference "Querying the Logs of a Specified Task in a Given Training Job (Preview)",
# https://support.huaweicloud.com/intl/en-us/api-modelarts/ShowTrainingJobLogsPreview.html
# (content, current_size, full_size), and "Querying the Logs of a Specified Task in a Training Job
# (OBS Link)", https://support.huaweicloud.com/intl/en-us/api-modelarts/
# ShowObsUrlOfTrainingJobLogs.html (GET .../logs/url -> {"obs_url"}, "view the current complete
# logs"); the preview's 5 MB limit: PLATFORM_NOTES.md. The stand-in (tests/modelarts_api_server.py)
# serves both, the preview cut to its last 5 MB.

IMAGE_JOB = ["--image", "swr.example/org/mnv3:1", "--data_url", "obs://bucket/d",
             "--train_url", "obs://bucket/o", "--flavor", "modelarts.vm.cpu.8u",
             "--device_target", "CPU"]


def numbered(first: int, count: int) -> str:
    return "".join(f"step {i:07d} loss 6.9 {'.' * 77}\n" for i in range(first, first + count))


def test_logs_follow_a_job_past_the_5_mb_preview_without_losing_or_repeating(capsys):
    from tests.modelarts_api_server import PREVIEW_LIMIT
    from tests.launcher.test_modelarts_jobs import API_AK, API_SK, PROJECT_ID, CREDENTIAL_VARS
    from launcher.common import run_main
    from tests.modelarts_api_server import ModelArtsStandIn
    stand_in = ModelArtsStandIn(ak=API_AK, sk=API_SK, project_id=PROJECT_ID).start()
    mp = pytest.MonkeyPatch()
    try:
        for name in CREDENTIAL_VARS:
            mp.delenv(name, raising=False)
        for name, value in {"HUAWEICLOUD_SDK_AK": API_AK, "HUAWEICLOUD_SDK_SK": API_SK,
                            "HUAWEICLOUD_PROJECT_ID": PROJECT_ID,
                            "MODELARTS_ENDPOINT": stand_in.endpoint}.items():
            mp.setenv(name, value)
        # 1 MB, then 6 MB more in one poll (the 5 MB preview then misses 0.76 MB), a cut line,
        # the end
        chunks = [numbered(0, 10_000), numbered(10_000, 60_000), "step 70000 lo",
                  "ss 6.8\n" + numbered(70_001, 10) + "done"]
        stand_in.script = [("Creating", ""), ("Running", chunks[0]), ("Running", chunks[1]),
                           ("Running", chunks[2]), ("Completed", chunks[3])]
        whole = "".join(chunks)
        gap = len(chunks[0]) + len(chunks[1]) - PREVIEW_LIMIT - len(chunks[0])
        assert gap > 0
        code = run_main(modelarts.main, ["submit", *IMAGE_JOB, "--poll_s", "0.01"])
        out, err = capsys.readouterr()
        assert code == 0, err[-2000:]
        assert out.split("\n", 1)[1] == whole + "\n"  # after the "job ... created" line
        assert "not in the preview" not in err
        assert (stand_in.log_links, stand_in.log_bytes_read) == (1, gap)
        # `logs JOB` of the finished job: the whole log, the head read through the link
        job_id = next(iter(stand_in.jobs))
        code = run_main(modelarts.main, ["logs", job_id])
        out, err = capsys.readouterr()
        assert code == 0 and out == whole + "\n", err[-2000:]
        assert stand_in.log_bytes_read == gap + len(whole) - PREVIEW_LIMIT
    finally:
        mp.undo()
        stand_in.stop()


# --- 4. hangs ----------------------------------------------------------------------------------
# Source for the platform's side: "Training Job Restart Upon Suspension", https://support.
# huaweicloud.com/intl/en-us/usermanual-standard-modelarts/develop-modelarts-0043.html (the
# platform's own hang detection restarts in place; its rules, MA_HANG_DETECT_TIME, default 30 min:
# PLATFORM_NOTES.md). Ours fires well before: train.hang_timeout_s, default 600 s.


def test_a_rank_blocked_in_training_ends_the_job_and_names_itself(tiny_dataset, tmp_path,
                                                                  launched):
    import time

    from tests.cloud.cluster.test_distributed import TINY, checkpoint_files, hooked
    out, timeout = tmp_path / "run", 10
    proc = launched.start(["launcher/local.py", "train", "--nproc", "2", "--dataset_path",
                           tiny_dataset, "--output_dir", out, "train.epochs=20",
                           "train.eval_at_end=false", f"train.hang_timeout_s={timeout}",
                           "checkpoint.interval_steps=2", *TINY],
                          hooked(MNV3_TEST_HANG_AT="1:3"))
    code = launched.wait(proc, 240)
    ended = time.monotonic()
    output = launched.output()
    hung = launched.first_time("injected hang (MNV3_TEST_HANG_AT) on rank 1 at step 3")
    assert code != 0 and hung is not None, output[-4000:]
    assert "rank 1 hung: no training step completed for" in output and "after step 3, outside" in output, \
        output[-6000:]
    assert "in on_step_end" in output and "train_hooks.py" in output  # rank 1's own stack
    assert ended - hung < timeout + 20, f"the job ended {ended - hung:.0f} s after the hang"
    assert "mobilenetv3-e0000-s00000002.ckpt" in " ".join(checkpoint_files(out)) or \
        any("s00000002" in name for name in checkpoint_files(out)), checkpoint_files(out)
    time.sleep(1)
    assert not launched.tagged(), "ranks outlived the hung job"


def test_watchdog_fires_only_after_the_timeout_and_counts_the_first_step_longer():
    import time

    from launcher.watchdog import EXIT_HUNG, HangWatchdog
    exits = []
    dog = HangWatchdog(0.3, exit=exits.append)
    dog.on_train_begin({"rank": 2, "start_step": 40})
    time.sleep(0.6)                      # compiling: 3 x 0.3 s allowed before the first step
    assert exits == []
    for _ in range(5):
        dog.stop_requested()
        time.sleep(0.1)
    assert exits == [] and dog.step == 45
    time.sleep(0.8)
    assert exits == [EXIT_HUNG]
    off = HangWatchdog(0, exit=exits.append)
    off.on_train_begin({"rank": 0, "start_step": 0})
    assert off._thread is None


# --- 2. a restarted job resumes without prefetch_to_local --------------------------------------
# Sources: API reference "Creating a Training Job", https://support.huaweicloud.com/intl/en-us/
# api-modelarts/CreateTrainingJob.html (the Output table: name, description, local_dir, remote; no
# prefetch_to_local), and huaweicloudsdkmodelarts 3.1.219's Output model (no such field either).
# So a restarted job may find its mounted output folder (train_url, /home/ma-user/modelarts/
# outputs/train_url_0) empty: it reads the checkpoints at the output's OBS URL, which `submit`
# passes as the output_url parameter. The store is SeaweedFS (tests/s3_server.py).


def restart_config(tmp_path, tiny_dataset):
    from launcher.common import load_job_config
    local_out = tmp_path / "outputs" / "train_url_0"
    cfg, _ = load_job_config(None, {"data.path": str(tiny_dataset),
                                    "system.output_dir": str(local_out),
                                    "system.device_target": "CPU"})
    return cfg, local_out


def test_restart_with_an_empty_output_folder_resumes_from_obs(tiny_dataset, tmp_path, s3_server):
    from cloud.storage.checkpoint_store import CheckpointUploader
    from cloud.storage.store import open_storage
    from launcher.distributed import prepare_launch
    bucket = s3_server.make_bucket()
    settings = s3_server.settings()
    store = open_storage(f"s3://{bucket}/out", settings)
    earlier = tmp_path / "first-run"
    earlier.mkdir()
    with CheckpointUploader(store, "checkpoints", keep=3) as uploader:
        for step in (7, 14):
            path = earlier / f"mobilenetv3-e{step // 7:04d}-s{step:08d}.ckpt"
            path.write_bytes(f"checkpoint at {step}".encode() * 1000)
            uploader.submit(str(path), {"epoch": step // 7, "step": step})
    cfg, local_out = restart_config(tmp_path, tiny_dataset)
    launch = prepare_launch(cfg, "auto", cache_dir=tmp_path / "cache", job_id="job-restart",
                            settings=settings, output_url=f"s3://{bucket}/out")
    assert Path(launch.resume).name == "mobilenetv3-e0002-s00000014.ckpt"
    assert Path(launch.resume).read_bytes() == b"checkpoint at 14" * 1000
    # the local folder's own checkpoints win (the platform did download it)
    (local_out / "checkpoints").mkdir(parents=True)
    (local_out / "checkpoints" / "mobilenetv3-e0003-s00000021.ckpt").write_bytes(b"x")
    launch = prepare_launch(cfg, "auto", cache_dir=tmp_path / "cache", job_id="job-restart",
                            settings=settings, output_url=f"s3://{bucket}/out")
    assert Path(launch.resume).name == "mobilenetv3-e0003-s00000021.ckpt"


def test_checkpoints_the_platform_uploaded_without_a_manifest_are_found(tiny_dataset, tmp_path,
                                                                        s3_server):
    from cloud.storage.store import open_storage
    from launcher.distributed import prepare_launch
    bucket = s3_server.make_bucket()
    settings = s3_server.settings()
    store = open_storage(f"s3://{bucket}/out", settings)
    for step in (7, 14):
        store.write_bytes(f"checkpoints/mobilenetv3-e{step // 7:04d}-s{step:08d}.ckpt", b"ck")
    store.write_bytes("metrics.jsonl", b"{}\n")
    cfg, _ = restart_config(tmp_path, tiny_dataset)
    launch = prepare_launch(cfg, "auto", cache_dir=tmp_path / "cache", job_id="job-upl",
                            settings=settings, output_url=f"s3://{bucket}/out")
    assert Path(launch.resume).name == "mobilenetv3-e0002-s00000014.ckpt"


def test_unreadable_checkpoints_on_obs_never_start_from_step_0(tiny_dataset, tmp_path, s3_server,
                                                               capsys):
    """Wrong keys (as a node without the agency would have): one error line, exit 2."""
    from launcher.common import run_main
    bucket = s3_server.make_bucket()
    env = {name: "" for name in PLATFORM_VARS}
    env.update(VC_TASK_INDEX="0", VC_WORKER_NUM="1", MA_NUM_GPUS="0", MA_VJ_NAME="job-denied")
    mp = pytest.MonkeyPatch()
    try:
        for name, value in env.items():
            mp.setenv(name, value)
        mp.setenv("OBS_ENDPOINT", s3_server.endpoint)
        mp.setenv("OBS_ACCESS_KEY_ID", "WRONG")
        mp.setenv("OBS_SECRET_ACCESS_KEY", "WRONG")
        code = run_main(modelarts.main, [
            f"--data_url={tiny_dataset}", f"--train_url={tmp_path / 'out'}",
            f"--output_url=obs://{bucket}/out", f"--cache_dir={tmp_path / 'cache'}",
            "--device_target=CPU", "--storage.addressing_style=path"])
    finally:
        mp.undo()
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1, errors
    assert f"obs://{bucket}/out" in errors[0] and "refusing to start again from step 0" in errors[0]
    assert not (tmp_path / "out" / "summary.json").exists()


# --- 5. stops reach Python -----------------------------------------------------------------------
# Sources: ModelArts' "Boot Command" help, https://support.huaweicloud.com/intl/tr-tr/drawer-
# modelarts/ma_drawer_038.html ("Multiple boot commands can be combined by semicolons (;) and
# ampersands (&&)": a shell runs the command), and "Developing Code for Training Using a Custom
# Image", https://support.huaweicloud.com/intl/en-us/develop-modelarts/develop-modelarts-1416.html
# (with parameters, "the last command in the boot commands runs the training script": they are
# appended to it). The whole stop (SIGTERM to the container's main process as `docker stop` sends
# it, the checkpoint, exit 0 within the grace period) runs in `make docker-test`
# (tests/docker/run_docker_test.sh); here: no shell stays between the platform and Python.


def process_images(command: str) -> set:
    """The executables the process started as `/bin/sh -c COMMAND` runs, sampled until it ends."""
    import os
    import time
    proc = subprocess.Popen(["/bin/sh", "-c", command], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    seen = set()
    while proc.poll() is None:
        try:
            seen.add(os.path.realpath(f"/proc/{proc.pid}/exe"))
        except OSError:
            pass
        time.sleep(0.005)
    assert proc.returncode == 0
    return seen - {f"/proc/{proc.pid}/exe"}  # read after the process ended


def test_the_boot_command_replaces_the_shell_that_runs_it():
    import os
    from launcher.modelarts.spec import CODE_DIR_IN_IMAGE, IMAGE_COMMAND, IMAGE_PYTHON
    here = IMAGE_COMMAND.replace(IMAGE_PYTHON, sys.executable).replace(CODE_DIR_IN_IMAGE, str(REPO))
    python = os.path.realpath(sys.executable)
    shell = os.path.realpath("/bin/sh")
    # as ModelArts runs it (the parameters appended): the shell's process becomes the boot file
    assert python in process_images(here + " --train_epochs=1 --help")
    # without exec, Debian's /bin/sh (dash, also the image's) stays the parent: the signal would
    # stop there (bash would exec a lone command itself; a chained one it would not either)
    if Path(shell).name == "dash":
        without = here.removeprefix("exec ")
        assert process_images(without + " --train_epochs=1 --help") == {shell}
