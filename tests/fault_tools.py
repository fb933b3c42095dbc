"""Helpers shared by the reliability, bad-input and security tests: launcher processes that are
always killed by pid, a private SeaweedFS that can be stopped and restarted on the same ports
and data, and snapshots of folders to prove nothing was changed."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from launcher.seaweedfs import _wait_ready, start_s3_server, stop_s3_server

REPO = Path(__file__).resolve().parent.parent
LOCAL = str(REPO / "launcher" / "local.py")
DRIVER = str(REPO / "tests" / "fault_driver.py")
TINY = ["data.image_size=32", "data.eval_resize=36", "data.batch_size=8", "data.eval_batch_size=7",
        "data.workers=1", "optim.warmup_epochs=0", "train.log_interval=1", "--device_target", "CPU"]


def run_spawned(target, args: tuple, count: int, timeout_s: float) -> list:
    """Run target(*args, results_queue) in `count` spawned processes and return what each put on
    the queue (arrival order). Every process is joined, or killed by pid, before this returns;
    all must exit 0."""
    import multiprocessing
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    processes = [ctx.Process(target=target, args=(*args, results)) for _ in range(count)]
    for p in processes:
        p.start()
    try:
        out = [results.get(timeout=timeout_s) for _ in processes]
    finally:
        for p in processes:
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join()
    assert all(p.exitcode == 0 for p in processes), [p.exitcode for p in processes]
    return out


def base_env(**extra) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", GLOG_v="3")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "S3_ENDPOINT",
                 "AWS_ENDPOINT_URL", "OBS_ACCESS_KEY_ID", "OBS_SECRET_ACCESS_KEY", "ACCESS_KEY_ID",
                 "SECRET_ACCESS_KEY", "OBS_ENDPOINT", "FAULT_PLAN"):
        env.pop(name, None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Proc:
    """A launcher process in its own session; output collected with arrival times."""

    def __init__(self, argv, env, cwd=REPO):
        self.argv = [str(a) for a in argv]
        self.popen = subprocess.Popen([sys.executable, *self.argv], cwd=cwd, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        self.out: list[tuple[float, str]] = []
        self.err: list[str] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._read, args=(self.popen.stdout, True), daemon=True),
                         threading.Thread(target=self._read, args=(self.popen.stderr, False), daemon=True)]
        for t in self._threads:
            t.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _read(self, stream, is_out):
        for raw in iter(stream.readline, b""):
            text = raw.decode("utf-8", "replace").rstrip("\n")
            with self._lock:
                (self.out.append((time.time(), text)) if is_out else self.err.append(text))

    @property
    def stdout(self) -> str:
        with self._lock:
            return "\n".join(t for _, t in self.out)

    @property
    def stderr(self) -> str:
        with self._lock:
            return "\n".join(self.err)

    def wait_for(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = predicate()
            if found:
                return found
            if self.popen.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{what}: not seen (exit {self.popen.poll()})\n{self.stdout[-4000:]}\n"
                             f"{self.stderr[-3000:]}")

    def wait(self, timeout: float) -> int:
        try:
            code = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"still running after {timeout} s\n{self.stdout[-4000:]}\n{self.stderr[-3000:]}")
        for t in self._threads:
            t.join(5)
        return code

    def kill(self):
        """SIGKILL the whole session (the launcher and anything it started)."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.popen.wait(30)
        except subprocess.TimeoutExpired:
            pass


@pytest.fixture
def procs():
    """Start launcher processes through this; every one is killed (by session) at the end."""
    started: list[Proc] = []

    def start(argv, env) -> Proc:
        proc = Proc(argv, env)
        started.append(proc)
        return proc
    yield start
    for proc in started:
        proc.kill()


# --------------------------------------------------------------------------- S3 outages


class RestartableServer:
    """A private SeaweedFS that a test can kill and bring back on the same data and ports."""

    def __init__(self, root: Path, **keys):
        root.mkdir(parents=True, exist_ok=True)
        self.server = start_s3_server(str(root), **keys)
        self.log_path = os.path.join(self.server.root, "weed.log")

    def __getattr__(self, name):
        return getattr(self.server, name)

    def kill(self) -> None:
        """Stop serving at once (SIGKILL, as a crashed or unplugged store)."""
        process = self.server.process
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def restart(self, timeout_s: float = 90.0, probe: tuple[str, str] | None = None) -> None:
        """Start it again on the same data and ports. The S3 gateway answers listings before
        the volume server has re-registered (GETs then fail with InternalError for a few
        seconds): with `probe` (bucket, key of an object stored before), wait until it reads."""
        self.kill()
        with open(self.log_path, "ab") as log:
            process = subprocess.Popen(self.server.process.args, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, cwd=self.server.root,
                                       start_new_session=True)
        self.server.process, self.server.pid = process, process.pid
        deadline = time.monotonic() + timeout_s
        _wait_ready(self.server, self.log_path, timeout_s)
        while probe:
            try:
                self.server.client().get_object(Bucket=probe[0], Key=probe[1])["Body"].read()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        stop_s3_server(self.server)


@pytest.fixture
def private_s3(tmp_path):
    """A SeaweedFS of this test alone (it may be killed and restarted); stopped by pid at the end."""
    servers = []

    def start(**keys) -> RestartableServer:
        server = RestartableServer(tmp_path / f"weed{len(servers)}", **keys)
        servers.append(server)
        return server
    yield start
    for server in servers:
        server.stop()


def read_object(server, bucket: str, key: str) -> bytes:
    return server.client().get_object(Bucket=bucket, Key=key)["Body"].read()


def manifest_of(server, bucket: str, prefix: str):
    try:
        return json.loads(read_object(server, bucket, f"{prefix}/checkpoints/latest.json"))
    except Exception:
        return None


def listed(server, bucket: str, prefix: str = "") -> dict:
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}


# --------------------------------------------------------------------------- files


def snapshot(*roots) -> dict:
    """path -> (sha256, size, mtime_ns) of every file (symlinks: their target text) under roots."""
    found = {}
    for root in roots:
        for dirpath, dirs, files in os.walk(root):
            for name in files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
                path = os.path.join(dirpath, name)
                if os.path.islink(path):
                    found[path] = ("link", os.readlink(path))
                    continue
                st = os.stat(path)
                with open(path, "rb") as f:
                    found[path] = (hashlib.sha256(f.read()).hexdigest(), st.st_size, st.st_mtime_ns)
    return found


def changed(before: dict, after: dict) -> list[str]:
    """Files of `before` that are gone or differ in `after` (new files are not listed)."""
    return sorted(p for p, v in before.items() if after.get(p) != v)


def one_line_error(result_stderr: str) -> str:
    lines = [l for l in result_stderr.strip().splitlines() if l.strip()]
    return lines[-1] if lines else ""
