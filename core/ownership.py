"""Who owns a run: one writer per run directory and per output URL, one refusal message.

Ownership has two backings: the run directory's lock here (`RunLock`) and the output URL's
lease (cloud.storage.lease.Lease). Both record the owner (`owner_record`), take over only an
owner provably gone, refuse anyone else with the same one-line `OwnedElsewhere` message
(`in_use`), and offer `confirm()`, which a checkpoint store (core.checkpoint_store) calls
before each write.

The run directory: `<run dir>/.run.lock`, held with flock for the run's life.

Two runs started into one directory would interleave metrics.jsonl, train.log and checkpoints.
The lock file records the owner (host, pid, job id, start time). The kernel drops a flock when
its process dies, so on one host a lock we can flock belongs to a dead owner: taken over. A
record naming another host (a shared filesystem whose flock may not reach across hosts) is never
taken over: that owner cannot be proven gone from here. Other ranks of the owner's job share
the lock instead of being refused.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from core.config import ConfigError

LOCK_NAME = ".run.lock"
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
log = logging.getLogger("core.ownership")


def pid_alive(pid) -> bool:
    """False only when no process `pid` exists on this host (provably gone)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, TypeError, ValueError):
        return True  # someone else's process, or no pid recorded: not provably gone
    return True


class OwnedElsewhere(ConfigError):
    """The run directory or output URL belongs to another live run."""


class RunLockError(OwnedElsewhere):
    """The run directory belongs to another live run."""


def owner_record(job_id: str, **extra) -> dict:
    """What an owner writes about itself: host, pid, job and since when."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "job_id": str(job_id),
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra}


def in_use(where: str, owner: dict, instead: str, detail: str = "", hint: str = "") -> str:
    """The one refusal line: what is owned, by whom, since when, and the way out."""
    return (f"{where} is in use by pid {owner.get('pid', '?')} on host {owner.get('host', '?')} "
            f"(job {owner.get('job_id', '?')}) since {owner.get('since', '?')}{detail}: wait for "
            f"it, or use another {instead}{hint}")


class RunDirError(ConfigError):
    """The run directory cannot be made or written (read-only mount, a name too long, no
    permission, a file in the way): one line naming the directory and the reason."""

    def __init__(self, run_dir, exc: OSError):
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(run_dir) else ""
        super().__init__(f"cannot use run directory {run_dir}: {exc.strerror or exc}{where}; "
                         f"choose a writable --output_dir")


class RunLock:
    def __init__(self, run_dir: str | os.PathLike, job_id: str):
        self.path = Path(run_dir) / LOCK_NAME
        self.job_id = str(job_id)
        self.held = False   # True: we hold the flock; False after acquire: our job's holder does
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        """Own the directory, or share our job's lock; RunLockError if another run owns it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(self.path.parent, exc) from None
        flocked = True
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise RunDirError(self.path.parent, exc) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in _NO_FLOCK:  # e.g. some FUSE mounts: the record alone decides
                    log.warning("%s: no flock on this filesystem (%s); checking the owner's pid",
                                self.path, exc.strerror)
                    flocked = False
                    break
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                    raise
                owner = self._owner()
                if owner.get("job_id") == self.job_id:
                    return self  # another rank (or the launcher) of this job holds it
                raise self._refusal(owner)
            if self._same_file(fd):
                break
            os.close(fd)  # the previous owner removed the file between our open and flock
        owner = self._owner()
        if owner and owner.get("host") != socket.gethostname():
            os.close(fd)  # a shared filesystem whose flock does not reach the owner's host
            if owner.get("job_id") == self.job_id:
                return self  # another node of our job owns it
            raise self._refusal(owner, f"; if that run is gone, delete {self.path}")
        if owner and not flocked and owner.get("job_id") != self.job_id and pid_alive(owner.get("pid")):
            os.close(fd)
            raise self._refusal(owner)
        record = owner_record(self.job_id)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        self._fd, self.held = fd, True
        return self

    def confirm(self) -> None:
        """Still ours? RunLockError if the lock file was removed or replaced under us."""
        if self._fd is None:
            return  # our job's holder (another rank, the launcher) owns it
        if not self._same_file(self._fd) or self._owner().get("pid") != os.getpid():
            raise RunLockError(f"this run (job {self.job_id}) no longer owns {self.path.parent}: "
                               f"its lock {self.path} was removed or replaced; not writing there")

    def release(self) -> None:
        """Remove the file while still holding it, then unlock (acquire re-checks the inode)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd, self.held = None, False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _same_file(self, fd: int) -> bool:
        try:
            return os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            return False

    def _owner(self) -> dict:
        try:
            owner = json.loads(self.path.read_text() or "{}")
            return owner if isinstance(owner, dict) else {}
        except (OSError, ValueError):
            return {}

    def _refusal(self, owner: dict, hint: str = "") -> RunLockError:
        return RunLockError(in_use(f"run directory {self.path.parent}", owner, "--output_dir",
                                   hint=hint))
