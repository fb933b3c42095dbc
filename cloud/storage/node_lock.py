"""One download per node: the first process stages, the others wait for it.

Every process of a job on a node calls :func:`run_once_per_node` with the same
directory and job id. They queue on an ``fcntl.flock`` of a lock file in that
directory; the first to hold it runs the work and writes a completion marker
carrying the job id; each later holder sees the marker and returns at once.

Why this shape:

* ``flock`` dies with its process, so a crashed stager never blocks the node:
  the next waiter gets the lock, finds no marker, and does the work itself.
  A lock *file* left behind (even naming a dead pid) means nothing.
* The marker names the job: one left by an earlier job (a reused cache dir,
  or a /tmp that survived) does not skip this job's download.
* A stager that fails leaves a failure marker: processes that were already
  waiting fail at once with its error instead of each retrying in turn; a
  process that starts later (a restarted job) tries again.
* Waiting is bounded; the timeout error names the holder's pid and the file.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from typing import Callable, TypeVar

from cloud.storage.errors import StorageError

log = logging.getLogger("cloud.storage.node_lock")

T = TypeVar("T")


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_json_atomic(path: str, data: dict) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def lock_paths(directory: str, name: str) -> tuple[str, str]:
    """(lock file, completion marker) for ``name`` in ``directory``."""
    return (os.path.join(directory, f".cloud-{name}.lock"),
            os.path.join(directory, f".cloud-{name}.done"))


def _marker_for(directory: str, name: str, job_id: str, source: str) -> dict:
    marker = _read_json(lock_paths(directory, name)[1])
    if marker.get("job_id") == job_id and marker.get("source", "") == source:
        return marker
    return {}


def run_once_per_node(directory: str, job_id: str, work: Callable[[], T], *,
                      name: str = "stage", source: str = "", timeout_s: float = 3600.0,
                      poll_s: float = 0.2) -> tuple[bool, T | None]:
    """Run ``work`` in one process per (directory, job_id, source); others wait.

    Returns ``(True, result)`` in the process that ran it and ``(False, None)``
    in those that found it done. ``source`` (e.g. the URL being staged) is
    part of the identity, so staging a different URL into the same directory
    is not skipped. An exception in ``work`` propagates; processes that were
    waiting then raise StorageError with its message.
    """
    if not job_id:
        raise ValueError("run_once_per_node needs a job id (the same on every process of the job)")
    os.makedirs(directory, exist_ok=True)
    lock_path, marker_path = lock_paths(directory, name)
    arrived = time.time()
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _acquire(fd, lock_path, timeout_s, poll_s)
        try:
            marker = _marker_for(directory, name, job_id, source)
            if marker.get("status") == "done":
                log.info("%s already staged on this node by job %s; not downloading again",
                         source or directory, job_id)
                return False, None
            if marker.get("status") == "failed" and marker.get("time", 0) >= arrived:
                raise StorageError(f"staging {source or directory} failed in pid {marker.get('pid')} "
                                   f"on this node while this process waited: {marker.get('error')}")
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "job_id": job_id}).encode(), 0)
            record = {"job_id": job_id, "source": source, "pid": os.getpid(),
                      "host": socket.gethostname()}
            try:
                result = work()
            except BaseException as exc:
                _write_json_atomic(marker_path, {**record, "status": "failed", "time": time.time(),
                                                 "error": " ".join(str(exc).split())[:500]})
                raise
            _write_json_atomic(marker_path, {**record, "status": "done", "time": time.time()})
            return True, result
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _acquire(fd: int, lock_path: str, timeout_s: float, poll_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    announced = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        holder = _read_json(lock_path).get("pid", "unknown")
        if not announced:
            log.info("waiting for pid %s on this node to finish staging (%s)", holder, lock_path)
            announced = True
        if time.monotonic() >= deadline:
            raise StorageError(
                f"timed out after {timeout_s:.0f} s waiting for pid {holder} to finish staging "
                f"(lock {lock_path}); raise the staging timeout, or check that process")
        time.sleep(poll_s)
