"""cloud.storage.sync and cloud.storage.node_lock against SeaweedFS and local directories."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from itertools import chain

import pytest

from cloud.storage.errors import StorageError, UnsafeKeyError
from cloud.storage.node_lock import lock_paths, run_once_per_node
from cloud.storage.store import PART_MARK, ObjectInfo, open_storage
from tests.s3_server import fresh_prefix
from cloud.storage.sync import STATE_NAME, download_tree, upload_tree
from tests.fault_tools import run_spawned

REPO = str(__import__("tests.paths", fromlist=["REPO"]).REPO)




def make_tree(root) -> dict[str, bytes]:
    """Nested dirs, an empty file, a file in an otherwise empty-named dir chain."""
    files = {
        "train/cat/1.jpg": os.urandom(5000),
        "train/cat/2.jpg": os.urandom(100),
        "train/dog/deep/er/3.jpg": os.urandom(7000),
        "val/empty.txt": b"",
        "top.bin": os.urandom(1),
    }
    for rel, data in files.items():
        path = os.path.join(root, *rel.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    return files


def read_tree(root) -> dict[str, bytes]:
    found = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            with open(path, "rb") as f:
                found[rel] = f.read()
    return found


def user_files(tree: dict) -> dict:
    return {k: v for k, v in tree.items() if not os.path.basename(k).startswith(".cloud-")}


ENGINES = ["auto", "boto3"]  # storage.engine: lean requests for small objects, or all botocore


@pytest.fixture(params=["s3", "s3-boto3", "local"])
def remote(request, tmp_path):
    """A fresh Storage: a SeaweedFS bucket prefix (default engine, or every request through
    botocore), or a local directory."""
    if request.param == "local":
        root = tmp_path / "remote"
        root.mkdir()
        return open_storage(str(root), {"workers": 4})
    server = request.getfixturevalue("s3_server")
    engine = "boto3" if request.param == "s3-boto3" else "auto"
    return open_storage(f"{fresh_prefix(request.getfixturevalue('shared_bucket'))}/runs/r1",
                        server.settings(workers=4, engine=engine))


def test_round_trip_and_incremental(remote, tmp_path):
    src = tmp_path / "src"
    files = make_tree(src)
    up = upload_tree(str(src), remote, "data")
    assert (up.files_transferred, up.files_skipped) == (len(files), 0)
    assert up.bytes_transferred == sum(len(v) for v in files.values())

    cache = tmp_path / "cache"
    down = download_tree(remote, "data", str(cache))
    assert (down.files_transferred, down.files_skipped) == (len(files), 0)
    assert user_files(read_tree(cache)) == files
    assert not [n for n in read_tree(cache) if PART_MARK in n]

    again = download_tree(remote, "data/", str(cache))
    assert (again.files_transferred, again.bytes_transferred, again.files_skipped) == (0, 0, len(files))
    assert upload_tree(str(src), remote, "data").files_transferred == 0

    # One changed object, one locally damaged file, one deleted file: exactly those move.
    remote.write_bytes("data/train/cat/2.jpg", b"changed")
    (cache / "top.bin").write_bytes(b"locally modified")
    (cache / "val" / "empty.txt").unlink()
    third = download_tree(remote, "data", str(cache))
    assert third.files_transferred == 3 and third.files_skipped == len(files) - 3
    assert (cache / "train" / "cat" / "2.jpg").read_bytes() == b"changed"
    assert (cache / "top.bin").read_bytes() == files["top.bin"]
    assert (cache / "val" / "empty.txt").read_bytes() == b""


def test_upload_skips_unchanged_and_sends_modified(remote, tmp_path):
    src = tmp_path / "src"
    make_tree(src)
    upload_tree(str(src), remote, "out")
    (src / "top.bin").write_bytes(b"grown file")
    (src / "new.txt").write_bytes(b"new")
    same_size = os.urandom(100)
    (src / "train" / "cat" / "2.jpg").write_bytes(same_size)  # same size, new content
    stats = upload_tree(str(src), remote, "out")
    assert stats.files_transferred == 3
    assert remote.read_bytes("out/top.bin") == b"grown file"
    assert remote.read_bytes("out/train/cat/2.jpg") == same_size


def test_multipart_object_round_trips_byte_identical(s3_server, shared_bucket, tmp_path):
    settings = s3_server.settings(multipart_threshold_mb=5, multipart_chunksize_mb=5, workers=4)
    storage = open_storage(f"{fresh_prefix(shared_bucket)}/big", settings)
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(20 * 1024 * 1024 + 123)
    (src / "blob.bin").write_bytes(data)
    upload_tree(str(src), storage, "")
    etag = storage.stat("blob.bin").version
    assert etag.endswith("-5"), f"expected a 5-part multipart ETag, got {etag}"
    cache = tmp_path / "cache"
    stats = download_tree(storage, "", str(cache))
    assert stats.bytes_transferred == len(data)
    got = (cache / "blob.bin").read_bytes()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert sorted(os.listdir(cache)) == sorted(["blob.bin", STATE_NAME])
    assert upload_tree(str(src), storage, "").files_skipped == 1  # multipart ETag matched


# --------------------------------------------------------------------------- safety


@pytest.mark.parametrize("hostile,engine", [
    ("../x", "auto"), ("/abs", "boto3"), ("a/../../b", "auto"), ("a\\..\\..\\c", "boto3"),
    ("ok/../../../etc/x", "auto"), (".cloud-sync-state.json", "boto3")])
def test_traversal_keys_are_refused_and_nothing_is_written(s3_server, shared_bucket, tmp_path, hostile,
                                                           engine):
    """SeaweedFS normalises such keys on upload, AWS S3 and OBS store them verbatim:
    the hostile key is planted in the listing the sync sees, next to real objects."""
    storage = open_storage(f"{fresh_prefix(shared_bucket)}/pre", s3_server.settings(engine=engine))
    storage.write_bytes("good/file.txt", b"good")
    real_list = storage.list
    storage.list = lambda prefix="": chain(
        real_list(prefix), [ObjectInfo(hostile, 4, "etag", 0.0)])
    workspace = tmp_path / "ws"
    cache = workspace / "cache"
    cache.mkdir(parents=True)
    with pytest.raises(UnsafeKeyError) as info:
        download_tree(storage, "", str(cache))
    assert repr(hostile) in str(info.value) and "nothing was downloaded" in str(info.value)
    assert read_tree(workspace) == {}  # not even the good file; nothing outside either
    assert sorted(os.listdir(tmp_path)) == ["ws"]


@pytest.mark.parametrize("engine", ENGINES)
def test_symlink_in_cache_cannot_redirect_writes(s3_server, shared_bucket, tmp_path, engine):
    storage = open_storage(f"{fresh_prefix(shared_bucket)}/pre", s3_server.settings(engine=engine))
    storage.write_bytes("link/payload", b"evil")
    outside = tmp_path / "outside"
    outside.mkdir()
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "link").symlink_to(outside)
    with pytest.raises(UnsafeKeyError, match="link/payload"):
        download_tree(storage, "", str(cache))
    assert os.listdir(outside) == []


# --------------------------------------------------------------------------- atomicity


class BrokenStream:
    """A response body that dies after ``limit`` bytes, like a dropped connection."""

    def __init__(self, body, limit):
        self._body, self._left = body, limit

    def read(self, amt=None):
        from botocore.exceptions import ResponseStreamingError
        if self._left <= 0:  # what botocore raises when the socket resets mid-body
            raise ResponseStreamingError(error="connection reset by test")
        data = self._body.read(min(amt or self._left, self._left))
        self._left -= len(data)
        return data

    def iter_chunks(self, chunk_size=1024):
        while True:
            chunk = self.read(chunk_size)
            if not chunk:
                return
            yield chunk

    def close(self):
        self._body.close()


class BrokenLeanResponse:
    """A lean GET's answer (cloud.storage.s3lean) whose body dies after ``limit`` bytes."""

    def __init__(self, response, limit):
        self._response, self._left = response, limit
        self.status, self.will_close = response.status, response.will_close
        self.headers, self.length = response.headers, response.length

    def chunks(self):
        for piece in self._response.chunks():
            if self._left <= 0:
                raise ConnectionResetError("connection reset by test")
            piece = piece[:self._left]
            self._left -= len(piece)
            yield piece

    def read(self):
        return self._response.read()


@pytest.mark.parametrize("engine", ENGINES)
def test_failed_download_leaves_no_partial_file(s3_server, shared_bucket, tmp_path, monkeypatch,
                                                engine):
    from cloud.storage.s3lean import LeanS3
    settings = s3_server.settings(multipart_threshold_mb=1, multipart_chunksize_mb=1, workers=2,
                                  engine=engine)
    storage = open_storage(f"{fresh_prefix(shared_bucket)}/pre", settings)
    storage.write_bytes("ok.txt", b"fine")
    storage.write_bytes("small.bin", os.urandom(200_000))
    storage.write_bytes("large.bin", os.urandom(3 * 1024 * 1024))

    calls, lean_calls = [], []

    def remember_key(params, context, **kwargs):
        context["test_key"] = params.get("Key", "")

    def sabotage(parsed, context, **kwargs):
        if "Body" in parsed and not context.get("test_key", "").endswith("ok.txt"):
            calls.append(context["test_key"])
            parsed["Body"] = BrokenStream(parsed["Body"], 1000)
    events = storage.client.meta.events
    events.register("before-parameter-build.s3.GetObject", remember_key)
    events.register("after-call.s3.GetObject", sabotage)
    real_exchange = LeanS3._exchange

    def lean_sabotage(self, method, path, headers, body):
        response = real_exchange(self, method, path, headers, body)
        if response is None or method != "GET" or path.endswith("ok.txt"):
            return response
        lean_calls.append(path)
        return BrokenLeanResponse(response, 1000)
    monkeypatch.setattr(LeanS3, "_exchange", lean_sabotage)
    cache = tmp_path / "cache"
    with pytest.raises(StorageError) as info:
        download_tree(storage, "", str(cache))
    message = str(info.value)
    assert "2 of 3 downloads" in message and ("small.bin" in message or "large.bin" in message)
    assert "connection reset by test" in message and "gave up after retries" in message
    assert sorted(read_tree(cache)) == [STATE_NAME, "ok.txt"]  # no partial, no temp
    state = json.loads((cache / STATE_NAME).read_text())
    assert sorted(state["files"]) == ["ok.txt"]
    # One direct GET (lean, or botocore's), then the manager's 2 attempts (num_download_attempts:
    # a body cut mid-stream gets one more; storage.stall_timeout_s bounds each); the large
    # object: lean ranged GETs of its 1 MB parts (the parts not yet started when one broke are
    # not asked for), then the manager's.
    if engine == "boto3":
        assert calls.count(storage.url.key("small.bin")) == 3 and not lean_calls
    else:
        assert calls.count(storage.url.key("small.bin")) == 2
        assert calls.count(storage.url.key("large.bin")) >= 2
        lean_path = f"/{storage.bucket}/{storage.url.key('%s')}"
        assert lean_calls.count(lean_path % "small.bin") == 1
        assert 1 <= lean_calls.count(lean_path % "large.bin") <= 3
        assert len(lean_calls) == 1 + lean_calls.count(lean_path % "large.bin")

    events.unregister("after-call.s3.GetObject", sabotage)
    monkeypatch.setattr(LeanS3, "_exchange", real_exchange)
    retry = download_tree(storage, "", str(cache))
    assert (retry.files_transferred, retry.files_skipped) == (2, 1)


CRASHING_CHILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {repo!r})
    from cloud.storage.store import open_storage
    from cloud.storage.sync import download_tree
    storage = open_storage({url!r}, {settings!r})

    def slow_body(parsed, **kwargs):
        body = parsed.get("Body")
        if body is not None:
            read = body.read
            def slow_read(amt=None):
                time.sleep(0.05)
                return read(amt)
            body.read = slow_read
    storage.client.meta.events.register("after-call.s3.GetObject", slow_body)
    from cloud.storage import s3lean  # the lean path reads the body piece by piece
    lean_chunks = s3lean._Answer.chunks
    def slow_chunks(self):
        for piece in lean_chunks(self):
            time.sleep(0.05)
            yield piece
    s3lean._Answer.chunks = slow_chunks
    download_tree(storage, "", {cache!r})
""")


@pytest.mark.parametrize("engine", ENGINES)
def test_killed_download_never_leaves_a_half_file_under_the_final_name(s3_server, shared_bucket,
                                                                       tmp_path, engine):
    settings = s3_server.settings(io_chunksize_kb=64, workers=1, engine=engine)
    url = f"{fresh_prefix(shared_bucket)}/pre"
    storage = open_storage(url, settings)
    data = os.urandom(4 * 1024 * 1024)
    storage.write_bytes("model.bin", data)
    cache = tmp_path / "cache"
    script = CRASHING_CHILD.format(repo=REPO, url=url, settings=settings, cache=str(cache))
    child = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            parts = [n for n in (os.listdir(cache) if cache.exists() else []) if PART_MARK in n]
            if parts and os.path.getsize(cache / parts[0]) > 0:
                break
            time.sleep(0.02)
        else:
            pytest.fail("the child never started writing")
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert not (cache / "model.bin").exists()
    assert [n for n in os.listdir(cache) if PART_MARK in n]  # the crash left its temp...
    stats = download_tree(storage, "", str(cache))  # ...which the next sync removes
    assert stats.files_transferred == 1
    assert (cache / "model.bin").read_bytes() == data
    assert sorted(os.listdir(cache)) == [STATE_NAME, "model.bin"]


# --------------------------------------------------------------------------- one per node


def _stage_worker(url, settings, cache, job_id, results):
    storage = open_storage(url, settings)
    stats = download_tree(storage, "", cache, job_id=job_id, lock_timeout_s=60)
    results.put((os.getpid(), stats.files_transferred, stats.staged_by_peer))


def _run_stagers(count, url, settings, cache, job_id):
    return run_spawned(_stage_worker, (url, settings, cache, job_id), count, timeout_s=60)


def test_four_processes_stage_once(s3_server, shared_bucket, tmp_path):
    url = f"{fresh_prefix(shared_bucket)}/ds"
    settings = s3_server.settings(workers=4)
    storage = open_storage(url, settings)
    for i in range(30):
        storage.write_bytes(f"c{i % 3}/{i}.jpg", os.urandom(2000))
    cache = str(tmp_path / "cache")
    out = _run_stagers(4, url, settings, cache, "job-1")
    transferred = sorted(n for _pid, n, _peer in out)
    assert transferred == [0, 0, 0, 30]
    assert sum(peer for *_, peer in out) == 3

    # A marker left by another job does not skip: delete the files, keep the marker.
    for name in os.listdir(cache):
        if not name.startswith(".cloud-stage"):
            path = os.path.join(cache, name)
            subprocess.run(["rm", "-rf", path], check=True)
    marker = json.loads(open(lock_paths(cache, "stage")[1]).read())
    assert (marker["job_id"], marker["status"]) == ("job-1", "done")
    # (on the other engine: the processes above used the default one)
    boto3_only = open_storage(url, dict(settings, engine="boto3"))
    stats = download_tree(boto3_only, "", cache, job_id="job-2")
    assert stats.files_transferred == 30 and not stats.staged_by_peer
    # The same job again is a no-op.
    assert download_tree(boto3_only, "", cache, job_id="job-2").staged_by_peer


def _hold_lock_forever(directory, ready):
    def work():
        ready.set()
        time.sleep(600)
    run_once_per_node(directory, "job-x", work)


def test_stale_and_dead_holders_do_not_block(tmp_path):
    directory = str(tmp_path)
    lock_path, _marker = lock_paths(directory, "stage")
    with open(lock_path, "w") as f:
        json.dump({"pid": 999999, "job_id": "old"}, f)  # a leftover naming a dead pid
    assert run_once_per_node(directory, "job-a", lambda: "ran") == (True, "ran")
    assert run_once_per_node(directory, "job-a", lambda: "again") == (False, None)

    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_lock_forever, args=(directory, ready))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(StorageError) as info:
            run_once_per_node(directory, "job-x", lambda: None, timeout_s=0.5)
        assert f"pid {holder.pid}" in str(info.value) and "timed out" in str(info.value)
        os.kill(holder.pid, signal.SIGKILL)  # the stager dies mid-work...
    finally:
        holder.kill()
        holder.join()
    # ...and the next process takes over instead of waiting forever.
    assert run_once_per_node(directory, "job-x", lambda: "took over", timeout_s=5) == (True, "took over")


def test_a_failed_stage_fails_its_waiters_fast_and_a_later_run_retries(tmp_path):
    directory = str(tmp_path)
    started = threading.Event()

    def boom():
        started.set()
        time.sleep(0.3)
        raise RuntimeError("network down")
    waiter_error = []

    def waiter():
        started.wait(10)
        try:
            run_once_per_node(directory, "job", lambda: "should not run", timeout_s=10)
        except StorageError as exc:
            waiter_error.append(str(exc))
    thread = threading.Thread(target=waiter)
    thread.start()
    with pytest.raises(RuntimeError):
        run_once_per_node(directory, "job", boom)
    thread.join(10)
    assert len(waiter_error) == 1 and "network down" in waiter_error[0]
    assert run_once_per_node(directory, "job", lambda: 1) == (True, 1)  # arrived later: retries


def test_progress_lines_and_summary_are_logged(remote, tmp_path, caplog):
    import logging
    caplog.set_level(logging.DEBUG, logger="cloud")
    src = tmp_path / "src"
    make_tree(src)
    upload_tree(str(src), remote, "d", progress_interval_s=0)
    download_tree(remote, "d", str(tmp_path / "cache"), progress_interval_s=0)
    text = caplog.text
    assert "100%" in text and "5/5 files" in text and "B/s" in text  # progress lines
    assert "5 files" in text and "transferred" in text
    secret = getattr(remote.settings, "secret_access_key", None)
    assert not secret or secret not in text  # on every engine, even at debug level
