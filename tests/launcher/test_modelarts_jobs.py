"""`launcher/modelarts.py submit|status|logs|stop` against a stand-in for ModelArts' API and a real
S3 server.

The API side is tests/modelarts_api_server.py: a real HTTP server on 127.0.0.1 that stands in for
ModelArts' v2 training-job API (it is not ModelArts; no real account was used). It recomputes
every request's SDK-HMAC-SHA256 signature itself from Huawei's signing guide and refuses bad ones
with the gateway's error JSON, validates the job body, and plays a job through its phases while
its log grows. The code upload goes to SeaweedFS (launcher/seaweedfs.py, started by the
tests/s3_server.py fixtures) through cloud.storage.store.

Sources used for the calls, fields and signing (also listed in tests/modelarts_api_server.py):
* https://support.huaweicloud.com/intl/en-us/api-modelarts/CreateTrainingJob.html
  (POST /v2/{project_id}/training-jobs, body fields);
* https://support.huaweicloud.com/devg-apisign/api-sign-algorithm-001.md (APIG AK/SK signing);
* https://support.huaweicloud.com/intl/en-us/develop-modelarts/develop-modelarts-0023.html
  (resumable training: the output's "Predownload" so a restarted job finds its checkpoints);
* huaweicloudsdkmodelarts / huaweicloudsdkcore 3.1.219 on PyPI: ModelArtsClient's
  create_training_job, show_training_job_details, show_training_job_logs_preview,
  stop_training_job (POST .../actions, action_type "terminate"), show_training_job_flavors; the
  models Job, JobMetadata.annotations ("fault-tolerance/job-retry-num"), Status.phase; and
  huaweicloudsdkcore.signer.Signer (the client side of the signature).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from launcher.modelarts import boot as modelarts, jobs as modelarts_jobs
from launcher.common import run_main
from tests.modelarts_api_server import COMPLETED, FAILED, ModelArtsStandIn

from tests.paths import REPO
PROJECT_ID = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
# Recognisable secrets: they must never show up in any output.
API_SK = f"api-secret-{uuid.uuid4().hex}"
API_AK = "MNV3TESTACCESSKEY0001"
CREDENTIAL_VARS = ("HUAWEICLOUD_SDK_AK", "HUAWEICLOUD_SDK_SK", "HUAWEICLOUD_SDK_SECURITY_TOKEN",
                   "HUAWEICLOUD_PROJECT_ID", "HUAWEICLOUD_SDK_PROJECT_ID", "HUAWEICLOUD_REGION",
                   "HUAWEICLOUD_SDK_REGION", "MODELARTS_ENDPOINT", "OBS_ACCESS_KEY_ID",
                   "OBS_SECRET_ACCESS_KEY", "OBS_SECURITY_TOKEN", "ACCESS_KEY_ID",
                   "SECRET_ACCESS_KEY", "SECURITY_TOKEN", "OBS_ENDPOINT", "OBS_REGION",
                   "S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                   "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE")


@pytest.fixture
def stand_in():
    server = ModelArtsStandIn(ak=API_AK, sk=API_SK, project_id=PROJECT_ID).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def job_env(monkeypatch, stand_in, s3_server):
    """The environment a user sets: API keys and project, OBS endpoint and keys."""
    for name in CREDENTIAL_VARS:
        monkeypatch.delenv(name, raising=False)
    values = {"HUAWEICLOUD_SDK_AK": API_AK, "HUAWEICLOUD_SDK_SK": API_SK,
              "HUAWEICLOUD_PROJECT_ID": PROJECT_ID, "MODELARTS_ENDPOINT": stand_in.endpoint,
              "OBS_ENDPOINT": s3_server.endpoint, "OBS_ACCESS_KEY_ID": s3_server.access_key,
              "OBS_SECRET_ACCESS_KEY": s3_server.secret_key}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


@pytest.fixture
def code_tree(tmp_path, monkeypatch) -> Path:
    """A copy of the project's code that submit uploads (the checkout may change meanwhile)."""
    import shutil
    root = tmp_path / "checkout"
    for rel in modelarts_jobs.code_files(REPO):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, root / rel)
    for junk in ("core/__pycache__/x.cpython-311.pyc", "core/kernels/libx.so", "tests/test_x.py",
                 "runs/demo/last.ckpt", ".git/HEAD"):
        (root / junk).parent.mkdir(parents=True, exist_ok=True)
        (root / junk).write_text("not code")
    monkeypatch.setattr(modelarts_jobs, "REPO_ROOT", root)
    return root


def job_args(bucket: str, *extra: str) -> list[str]:
    """A preset-engine job; SeaweedFS on an IP address needs path-style addressing."""
    return ["--code_dir", f"obs://{bucket}/code/mnv3", "--engine", "MPI:mindspore_2.10.0",
            "--data_url", f"obs://{bucket}/imagenet", "--train_url", f"obs://{bucket}/out",
            "--flavor", "modelarts.vm.cpu.8u", "--device_target", "CPU",
            "--storage.addressing_style=path", "--train_epochs=5", "--data_batch_size=32", *extra]


def run(capsys, *argv) -> tuple[int, str, str]:
    code = run_main(modelarts.main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def objects(s3_server, bucket: str, prefix: str = "") -> dict:
    client = s3_server.client()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: o for page in pages for o in page.get("Contents", [])}


def calls(stand_in, method: str, suffix: str) -> list:
    return [r for r in stand_in.requests if r[0] == method and r[1].endswith(suffix)]


# --- submit, end to end --------------------------------------------------------------------------


def test_submit_uploads_code_creates_the_job_and_follows_it_to_completion(
        stand_in, job_env, s3_server, code_tree, capsys):
    bucket = s3_server.make_bucket()
    code, out, err = run(capsys, "submit", *job_args(bucket), "--poll_s", "0.01")
    assert code == 0, err
    # The log, each line once and in order, including the line split across two polls.
    assert out.splitlines()[1:] == ["step 1 loss 6.9", "step 2 loss 6.8", "step 3 loss 6.7",
                                    "epoch 1 top1 0.1", "training done"]
    job_id = next(iter(stand_in.jobs))
    assert out.splitlines()[0].startswith(f"job {job_id} created (mobilenetv3-small)")
    for phase in ("Creating", "Pending", "Running", "Completed"):
        assert f"job {job_id}: {phase}" in err
    assert error_lines(err) == []
    # Status polled to the end: one read per step of the job's script, the last one Completed.
    assert len(calls(stand_in, "GET", f"/training-jobs/{job_id}")) == len(COMPLETED)
    assert stand_in.jobs[job_id].phase == "Completed"
    assert stand_in.rejected == []  # every request was signed right

    # The code is in the bucket: the code directories and requirements, no caches or builds.
    keys = objects(s3_server, bucket, "code/mnv3/")
    names = {k[len("code/mnv3/"):] for k in keys}
    assert {"launcher/modelarts.py", "launcher/modelarts/spec.py", "cloud/storage/store.py",
            "core/config.py", "requirements.txt"} <= names
    assert {"configs/" + p.name for p in (REPO / "configs").glob("*.yaml")} <= names
    assert names == set(modelarts_jobs.code_files(code_tree))
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".so"))]
    assert not [n for n in names if n.startswith(("tests/", ".venv/", "runs/", ".git/"))]
    body = s3_server.client().get_object(Bucket=bucket, Key="code/mnv3/launcher/modelarts.py")
    assert body["Body"].read() == (code_tree / "launcher" / "modelarts.py").read_bytes()

    # The job created is exactly what --print-job-spec prints for the same options.
    [(_, _, headers, sent, _)] = calls(stand_in, "POST", f"/v2/{PROJECT_ID}/training-jobs")
    printed = run(capsys, "--print-job-spec", *job_args(bucket))[1]
    assert printed == json.dumps(sent, indent=2) + "\n"
    assert sent["algorithm"]["boot_file"] == f"/{bucket}/code/mnv3/launcher/modelarts.py"
    assert {"name": "train_epochs", "value": "5"} in sent["algorithm"]["parameters"]
    assert headers["Authorization"].startswith(f"SDK-HMAC-SHA256 Access={API_AK}, ")

    # Again, without waiting: nothing re-uploaded, the new job's id printed, no log.
    first_upload = {k: v["LastModified"] for k, v in keys.items()}
    code, out, err = run(capsys, "submit", *job_args(bucket), "--no-wait")
    assert code == 0, err
    assert "code -> " in err and " 0 files (0.0 MB) transferred" in err
    assert {k: v["LastModified"] for k, v in objects(s3_server, bucket, "code/mnv3/").items()} \
        == first_upload
    [second] = [j for j in stand_in.jobs if j != job_id]
    assert out == f"job {second} created (mobilenetv3-small): Creating\n"
    assert API_SK not in out + err and API_AK not in out + err
    # One file edited: that one is sent again.
    edited = code_tree / "configs" / "cpu_demo.yaml"
    edited.write_text(edited.read_text() + "# edited\n")
    code, _, err = run(capsys, "submit", *job_args(bucket), "--no-wait")
    assert code == 0 and " 1 files (0.0 MB) transferred, " in err
    assert s3_server.client().get_object(Bucket=bucket, Key="code/mnv3/configs/cpu_demo.yaml")[
        "Body"].read() == edited.read_bytes()


def test_failed_job_exits_nonzero_with_one_error_line(stand_in, job_env, s3_server, capsys):
    stand_in.script = list(FAILED)
    code, out, err = run(capsys, "submit", *job_args(s3_server.make_bucket()), "--poll_s", "0.01")
    job_id = next(iter(stand_in.jobs))
    assert code == 1
    assert "RuntimeError: boom" in out
    [line] = error_lines(err)
    assert f"job {job_id} ended Failed" in line and f"logs {job_id}" in line


def test_custom_image_job_uploads_nothing_and_runs_the_image_interpreter(
        stand_in, job_env, s3_server, capsys):
    bucket = s3_server.make_bucket()
    code, out, err = run(capsys, "submit", "--image", "swr.example/org/mnv3:1",
                         "--data_url", f"obs://{bucket}/imagenet", "--train_url",
                         f"obs://{bucket}/out", "--flavor", "modelarts.vm.cpu.8u",
                         "--device_target", "CPU", "--no-wait")
    assert code == 0, err
    assert objects(s3_server, bucket) == {}
    [(_, _, _, sent, _)] = calls(stand_in, "POST", "/training-jobs")
    assert sent["algorithm"]["command"] == ("exec /opt/mnv3/venv/bin/python "
                                            "/home/ma-user/mnv3/launcher/modelarts.py")


# --- errors: one line each -----------------------------------------------------------------------


def test_bad_credentials_are_one_error_line_and_nothing_is_uploaded(
        stand_in, job_env, s3_server, monkeypatch, capsys):
    wrong = f"wrong-secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("HUAWEICLOUD_SDK_SK", wrong)
    bucket = s3_server.make_bucket()
    code, out, err = run(capsys, "submit", *job_args(bucket))
    assert code == 2
    [line] = error_lines(err)
    assert "HTTP 401 APIGW.0301" in line and "HUAWEICLOUD_SDK_AK" in line
    assert wrong not in out + err and API_SK not in out + err
    assert stand_in.rejected and stand_in.jobs == {}
    assert objects(s3_server, bucket) == {}


def test_missing_credentials_are_one_error_line_before_any_request(
        stand_in, job_env, s3_server, monkeypatch, capsys):
    for name in ("HUAWEICLOUD_SDK_AK", "HUAWEICLOUD_SDK_SK", "OBS_ACCESS_KEY_ID",
                 "OBS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    code, _, err = run(capsys, "submit", *job_args(s3_server.make_bucket()))
    assert code == 2
    [line] = error_lines(err)
    assert "export HUAWEICLOUD_SDK_AK and HUAWEICLOUD_SDK_SK" in line
    assert stand_in.requests == []
    monkeypatch.setenv("HUAWEICLOUD_SDK_AK", API_AK)
    code, _, err = run(capsys, "status", "some-job")
    [line] = error_lines(err)
    assert code == 2 and "HUAWEICLOUD_SDK_AK is set but HUAWEICLOUD_SDK_SK is not" in line


def test_unknown_flavour_is_one_error_line(stand_in, job_env, s3_server, capsys):
    bucket = s3_server.make_bucket()
    argv = job_args(bucket)
    argv[argv.index("--flavor") + 1] = "modelarts.vm.gpu.nope"
    code, _, err = run(capsys, "submit", *argv)
    assert code == 2
    [line] = error_lines(err)
    assert "'modelarts.vm.gpu.nope' is not offered" in line and "modelarts.vm.cpu.8u" in line
    assert calls(stand_in, "POST", "/training-jobs") == [] and objects(s3_server, bucket) == {}
    # Unchecked, the API itself refuses it: still one line, with the API's code and message.
    code, _, err = run(capsys, "submit", *argv, "--skip_flavor_check")
    [line] = error_lines(err)
    assert code == 2 and "HTTP 400 ModelArts.2701: flavor modelarts.vm.gpu.nope not found" in line


def test_api_errors_are_one_error_line(stand_in, job_env, s3_server, capsys):
    bucket = s3_server.make_bucket()
    stand_in.fail_next = [(500, "ModelArts.0010", "internal error, please retry")]
    code, _, err = run(capsys, "submit", *job_args(bucket))
    [line] = error_lines(err)
    assert code == 2 and "HTTP 500 ModelArts.0010: internal error, please retry" in line
    assert "retry later" in line
    code, _, err = run(capsys, "status", "no-such-job")
    [line] = error_lines(err)
    assert code == 2 and "cannot read job no-such-job: HTTP 404 ModelArts.2762" in line
    # Nobody listening: the endpoint is named.
    port = stand_in.server.server_address[1]
    stand_in.stop()
    code, _, err = run(capsys, "status", "x", "--timeout_s", "2")
    [line] = error_lines(err)
    assert code == 2 and f"no answer from http://127.0.0.1:{port}" in line


def test_bad_job_options_are_one_error_line(job_env, capsys):
    for option, expected in ((["--env", "OBS_SECRET_ACCESS_KEY=x"], "looks like a credential"),
                             (["--env", "1BAD=x"], "expected NAME=VALUE"),
                             (["--job_name", "my job"], "--job_name 'my job'"),
                             (["--storage.secret_access_key=abc"], "leave it out"),
                             (["--train_url", "s3://b/out"], "give obs://BUCKET/PATH")):
        code, _, err = run(capsys, "--print-job-spec", "--image", "i", "--device_target", "CPU",
                           *option)
        [line] = error_lines(err)
        assert code == 2 and expected in line, line
    code, _, err = run(capsys, "submit", "--image", "i", "--device_target", "CPU",
                       "--flavor", "modelarts.vm.cpu.8u")
    [line] = error_lines(err)
    assert code == 2 and "incomplete: give --data_url" in line


# --- status, logs, stop --------------------------------------------------------------------------


def test_status_logs_and_stop(stand_in, job_env, s3_server, capsys):
    stand_in.script = [("Creating", ""), ("Running", "one\n"), ("Running", "two\n")] + \
        [("Running", "")] * 50
    code, out, err = run(capsys, "submit", *job_args(s3_server.make_bucket()), "--no-wait")
    assert code == 0, err
    job_id = out.split()[1]
    code, out, _ = run(capsys, "status", job_id)
    assert code == 0 and out == f"job {job_id} (mobilenetv3-small): Creating; tasks worker-0\n"
    run(capsys, "status", job_id)
    run(capsys, "status", job_id)
    code, out, _ = run(capsys, "logs", job_id)
    assert code == 0 and out == "one\ntwo\n"
    code, out, _ = run(capsys, "stop", job_id)
    assert code == 0 and out == f"job {job_id}: Terminated, 3 s\n"
    [(_, _, _, sent, _)] = calls(stand_in, "POST", f"/training-jobs/{job_id}/actions")
    assert sent == {"action_type": "terminate"}
    code, out, err = run(capsys, "logs", job_id, "--follow", "--poll_s", "0.01")
    [line] = error_lines(err)
    assert code == 1 and f"job {job_id} ended Terminated" in line and out == "one\ntwo\n"
    assert stand_in.rejected == []


def test_watching_rides_out_transient_api_errors(stand_in, job_env, s3_server, capsys):
    code, out, err = run(capsys, "submit", *job_args(s3_server.make_bucket()), "--no-wait")
    job_id = out.split()[1]
    stand_in.fail_next = [(503, "APIGW.0201", "Service temporarily unavailable")] * 2
    code, out, err = run(capsys, "logs", job_id, "--follow", "--poll_s", "0.01")
    assert code == 0, err
    assert out.splitlines()[-1] == "training done"
    assert err.count("HTTP 503 APIGW.0201") == 2 and "still watching" in err
    assert error_lines(err) == []
    # Not transient (403), or transient for too long: one error line.
    code, out, err = run(capsys, "submit", *job_args(s3_server.make_bucket()), "--no-wait")
    job_id = out.split()[1]
    stand_in.fail_next = [(403, "ModelArts.0203", "no permission")]
    code, _, err = run(capsys, "logs", job_id, "--follow", "--poll_s", "0.01")
    [line] = error_lines(err)
    assert code == 2 and "HTTP 403 ModelArts.0203: no permission" in line
    assert "lacks ModelArts permissions" in line
    stand_in.fail_next = [(500, "ModelArts.0010", "internal error")] * 20
    code, _, err = run(capsys, "logs", job_id, "--follow", "--poll_s", "0.001")
    [line] = error_lines(err)
    assert code == 2 and "HTTP 500 ModelArts.0010" in line and err.count("still watching") == 8


def test_log_follower_prints_new_lines_once(capsys):
    follower = modelarts_jobs.LogFollower()
    follower.feed("a\nb", 3, 3)
    follower.feed("a\nb\nc\n", 6, 6)
    # The preview keeps only the tail: 4 bytes went by unseen.
    follower.feed("f\ng\n", 4, 14)
    follower.feed("x\n", 2, 2)          # smaller than before: the log started over
    follower.feed("x\ny", 3, 3, final=True)
    out, err = capsys.readouterr()
    assert out == "a\nb\nc\nf\ng\nx\ny\n"
    assert "4 bytes of the log are not in the preview" in err and "started again" in err


# --- the signature check is real -----------------------------------------------------------------


def test_stand_in_refuses_a_tampered_request(stand_in, job_env, s3_server, capsys):
    code, _, err = run(capsys, "submit", *job_args(s3_server.make_bucket()), "--no-wait")
    assert code == 0, err
    method, path, headers, _, raw = calls(stand_in, "POST", "/training-jobs")[0]

    def replay(payload: bytes, **changed) -> tuple[int, dict]:
        sent = {k: v for k, v in headers.items() if k.lower() != "content-length"}
        sent.update(changed)
        request = urllib.request.Request(stand_in.endpoint + path, data=payload, method=method,
                                         headers=sent)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)

    # The very bytes and headers the SDK sent pass; one byte changed, or an old date, do not.
    status, answer = replay(raw)
    assert status == 201 and answer["metadata"]["name"] == "mobilenetv3-small"
    status, answer = replay(raw.replace(b"mobilenetv3-small", b"mobilenetv3-smalL"))
    assert status == 401 and answer["error_code"] == "APIGW.0301"
    assert "verify aksk signature fail" in answer["error_msg"]
    status, answer = replay(raw, **{"X-Sdk-Date": "20200101T000000Z"})
    assert status == 401 and "expired" in answer["error_msg"]
    assert len(stand_in.jobs) == 2


# --- a real process: Ctrl-C stops watching, not the job; no secret anywhere ----------------------


def test_interrupted_submit_leaves_the_job_running_and_prints_no_secret(
        stand_in, job_env, s3_server):
    stand_in.script = [("Creating", "")] + [("Running", "tick\n")] * 10_000
    env = {k: v for k, v in os.environ.items() if k not in CREDENTIAL_VARS}
    env.update(job_env)
    command = [sys.executable, str(REPO / "launcher" / "modelarts.py"), "submit",
               *job_args(s3_server.make_bucket()), "--poll_s", "0.05"]
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        # Watching: the job runs and its log has been read (and printed) a few times.
        while len(calls(stand_in, "GET", "/logs/preview")) < 3:
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        with open(f"/proc/{process.pid}/cmdline", "rb") as fh:
            assert API_SK.encode() not in fh.read()
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, err
    [job] = stand_in.jobs.values()
    assert f"job {job.id} keeps running on ModelArts" in err and f"stop {job.id}" in err
    assert job.phase == "Running" and calls(stand_in, "POST", "/actions") == []
    assert "tick" in out
    for secret in (API_SK, API_AK, s3_server.secret_key):
        assert secret not in out and secret not in err
