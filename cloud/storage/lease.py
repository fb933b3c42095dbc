"""Who owns an output URL: a lease object `<output>/.lease.json`, checked before every manifest write.

Two runs into one output URL would overwrite each other's manifest. The writing rank takes the
lease (owner id, host, pid, job id, expiry), renews it in the background, and the checkpoint
uploader confirms it before each manifest write: a writer that lost it stops publishing.

Where the store honours conditional writes (S3 `If-None-Match: *` to create, `If-Match: <etag>`
to renew or take over; SeaweedFS 4.48 does, checked by a probe at acquire time) two racing
writers cannot both win. Elsewhere (a local folder, a store that ignores the headers, e.g.
possibly OBS) the lease is read-compare-write: it still stops a second run started later, but
two started within the same second could both pass.

A lease is taken over when it expired (its owner stopped renewing) or when its owner is a
dead process on this host; one held by a live process on this host is refused at once. One
from another host is waited for until its expiry (a restarted job whose old incarnation was
killed without releasing) and refused if it is renewed meanwhile.
"""
from __future__ import annotations

import hashlib
import json
import logging
import socket
import threading
import time
import uuid
from typing import Optional

from cloud.storage.errors import PreconditionFailed, StorageError
from cloud.storage.store import S3Storage, Storage, s3_error_code
from core.ownership import OwnedElsewhere, in_use, owner_record, pid_alive

log = logging.getLogger("cloud.storage.lease")
LEASE_NAME = ".lease.json"
DEFAULT_TTL_S = 90.0


class LeaseError(StorageError, OwnedElsewhere):
    """The output URL belongs to another live run (core.ownership's refusal, as a StorageError)."""


class _Conflict(Exception):
    """A conditional write lost (HTTP 412/409)."""


class Lease:
    def __init__(self, storage: Storage, job_id: str, *, ttl_s: float = DEFAULT_TTL_S,
                 wait_s: Optional[float] = None, key: str = LEASE_NAME):
        self.storage, self.job_id, self.key = storage, str(job_id), key
        self.ttl_s = float(ttl_s)
        self.wait_s = wait_s            # None: until the current owner's lease would expire
        self.owner = uuid.uuid4().hex
        self.conditional = False
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # -- public

    def acquire(self) -> "Lease":
        """Own the output URL; LeaseError naming the owner if another live run does."""
        self.conditional = self._probe_conditional()
        deadline = None if self.wait_s is None else time.time() + self.wait_s
        while True:
            current, etag = self._read()
            try:
                if current is None or current.get("owner") == self.owner or self._gone(current):
                    self._write_if(self._record(), etag=etag)
                    log.info("took the lease %s (%s writes)", self.storage.describe(self.key),
                             "conditional" if self.conditional else "read-compare")
                    return self
            except _Conflict:
                continue  # someone else wrote it meanwhile: look again
            if current.get("host") == socket.gethostname():
                raise self._refusal(current)  # its owner provably lives: no point waiting
            if deadline is None:
                deadline = min(float(current.get("expires", 0)), time.time() + 2 * self.ttl_s) + 1
            if time.time() >= deadline:
                raise self._refusal(current)
            time.sleep(min(1.0, max(0.05, deadline - time.time())))

    def confirm(self) -> None:
        """Still ours? Renew it (conditionally); LeaseError if another run took it."""
        current, etag = self._read()
        if current is None or current.get("owner") != self.owner:
            raise self._lost(current)
        try:
            self._write_if(self._record(), etag=etag)
        except _Conflict:
            raise self._lost(self._read()[0]) from None

    def start_renewing(self) -> "Lease":
        """Renew every ttl/3 in a daemon thread until release()."""
        def renew():
            while not self._stop.wait(self.ttl_s / 3):
                try:
                    self.confirm()
                except StorageError as exc:
                    log.error("%s", exc)
                    if isinstance(exc, LeaseError):
                        return
        self._thread = threading.Thread(target=renew, name="lease-renewer", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        self._stop.set()
        try:
            current, _ = self._read()
            if current and current.get("owner") == self.owner:
                self.storage.delete(self.key)
        except StorageError as exc:
            log.warning("could not release the lease %s: %s", self.storage.describe(self.key), exc)

    # -- internals

    def _record(self) -> dict:
        return owner_record(self.job_id, owner=self.owner, expires=time.time() + self.ttl_s)

    @staticmethod
    def _gone(current: dict) -> bool:
        if float(current.get("expires", 0)) < time.time():
            return True
        return current.get("host") == socket.gethostname() and not pid_alive(current.get("pid"))

    def _read(self) -> tuple[Optional[dict], Optional[str]]:
        """(record, etag), (None, None) when there is no lease."""
        if isinstance(self.storage, S3Storage):
            raw, etag = self.storage.read_versioned(self.key)
            if raw is None:
                return None, None
        else:
            if not self.storage.exists(self.key):
                return None, None
            raw = self.storage.read_bytes(self.key)
            etag = hashlib.sha256(raw).hexdigest()
        try:
            record = json.loads(raw)
        except ValueError:
            record = {}
        return (record if isinstance(record, dict) else {}), etag

    def _write_if(self, record: dict, etag: Optional[str]) -> None:
        """Create (etag None) or replace the version `etag`; _Conflict if the store has another."""
        body = json.dumps(record).encode()
        if self.conditional:
            self._put(self.key, body, etag)
            return
        if self._read()[1] != etag:
            raise _Conflict()
        self.storage.write_bytes(self.key, body)

    def _put(self, key: str, body: bytes, etag: Optional[str] = None) -> None:
        """A conditional put (create, or replace `etag`); _Conflict on 412/409."""
        try:
            self.storage.write_if(key, body, if_match=etag)
        except PreconditionFailed:
            raise _Conflict() from None

    def _probe_conditional(self) -> bool:
        """Does the store refuse a second `If-None-Match: *` create? (Some ignore the header,
        some reject it: both mean read-compare-write.)"""
        if not isinstance(self.storage, S3Storage):
            return False
        probe = f"{self.key}.probe-{self.owner}"
        try:
            self._put(probe, b"")
            self._put(probe, b"")
            supported = False
        except _Conflict:
            supported = True
        except StorageError as exc:
            if s3_error_code(exc) in (None, "KeyTooLongError"):
                raise  # unreachable store, or a key it can never hold: say so, not "unsupported"
            supported = False
        self.storage.delete(probe)
        if not supported:
            log.warning("%s does not honour conditional writes: the lease is read-compare-write",
                        self.storage.describe())
        return supported

    def _refusal(self, owner: dict) -> LeaseError:
        until = time.strftime("%H:%M:%SZ", time.gmtime(float(owner.get("expires", 0))))
        return LeaseError(in_use(f"output {self.storage.describe()}", owner, "output URL",
                                 detail=f", lease renewed until {until}"))

    def _lost(self, owner: Optional[dict]) -> LeaseError:
        who = (f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')} (job "
               f"{owner.get('job_id', '?')})" if owner else "nobody (the lease was removed)")
        return LeaseError(f"this run (job {self.job_id}) no longer owns {self.storage.describe()}: "
                          f"it is now held by {who}; not writing its manifest")
