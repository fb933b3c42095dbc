"""Objects read as streams: a 138 GB archive on S3/OBS read front to back without a local copy.

`open_stream` is one GET whose body is read as it arrives; when the connection drops
mid-object, the read goes on from the byte it reached with a ranged GET (`Range: bytes=N-`,
checked against the object's ETag so a replaced object is not spliced), a few times before
giving up with one StorageError line. A thread reads a few chunks ahead (ReadAhead), so the
transfer overlaps the reader's work. `StorageFiles` gives a Storage the shape core's
ImageNet reader wants (core.data.imagenet_archives.SourceFiles).
"""
from __future__ import annotations

import io
import logging
import queue
import threading
import time
from typing import Iterator, Optional

from cloud.storage.errors import StorageError
from cloud.storage.store import S3Storage, Storage

log = logging.getLogger("cloud.storage.stream")
RETRIES = 5


class S3ReadStream(io.RawIOBase):
    """A readable, forward-only stream over one object."""

    def __init__(self, storage: S3Storage, key: str):
        self.storage, self.key, self.position = storage, key, 0
        info = storage.stat(key)
        if info is None:
            raise StorageError(f"{storage.describe(key)} not found")
        self.size, self.etag = info.size, info.version
        self.body = self._get()

    def _get(self):
        if not self.position:
            return self.storage.open_body(self.key)
        return self.storage.open_body(self.key, self.position, if_match=self.etag)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.position >= self.size:
            return 0
        from botocore.exceptions import BotoCoreError
        for attempt in range(RETRIES + 1):
            try:
                data = self.body.read(len(buffer))
                if not data and self.position < self.size:
                    raise OSError("connection closed early")
                break
            except (OSError, BotoCoreError) as exc:
                if attempt == RETRIES:
                    raise StorageError(f"reading {self.storage.describe(self.key)} failed at byte "
                                       f"{self.position} of {self.size} after {RETRIES} retries "
                                       f"({exc}); check the network and rerun") from None
                log.warning("reading %s: %s at byte %d; resuming", self.key, exc, self.position)
                time.sleep(min(2 ** attempt - 1, 30))  # at once, then 1, 3, 7, 15 s
                self.body.close()
                self.body = self._get()
        buffer[:len(data)] = data
        self.position += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self.body.close()
        super().close()


class ReadAhead(io.RawIOBase):
    """Reads `raw` in a thread, up to `depth` chunks ahead, so the network transfer overlaps
    whatever the reader does with the bytes (parsing a tar, writing shards)."""

    def __init__(self, raw: io.RawIOBase, chunk: int = 4 << 20, depth: int = 4):
        self.raw, self.chunk = raw, chunk
        self.queue: queue.Queue = queue.Queue(depth)
        self.pending, self.stop = memoryview(b""), threading.Event()
        self.thread = threading.Thread(target=self._fill, daemon=True, name="s3-read-ahead")
        self.thread.start()

    def _fill(self) -> None:
        try:
            while not self.stop.is_set():
                data = self.raw.read(self.chunk)
                self._put(data)
                if not data:
                    return
        except BaseException as exc:  # handed to the reader, raised there
            self._put(exc)

    def _put(self, item) -> None:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if not self.pending:
            item = self.queue.get()
            if isinstance(item, BaseException):
                raise item
            if not item:
                self._put(item)  # end of stream stays the end
                return 0
            self.pending = memoryview(item)
        n = min(len(buffer), len(self.pending))
        buffer[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n

    def close(self) -> None:
        if not self.closed:
            self.stop.set()
            self.thread.join(timeout=5)
            self.raw.close()
        super().close()


def open_stream(storage: Storage, key: str):
    """A buffered binary stream of one object (local storage: the file itself)."""
    if isinstance(storage, S3Storage):
        return io.BufferedReader(ReadAhead(S3ReadStream(storage, key)), buffer_size=1 << 20)
    return open(storage.path(key), "rb", buffering=1 << 20)


class StorageFiles:
    """A Storage as core.data.imagenet_archives.SourceFiles."""

    def __init__(self, storage: Storage):
        self.storage = storage

    def size(self, name: str) -> Optional[int]:
        info = self.storage.stat(name)
        return None if info is None else info.size

    def open(self, name: str):
        return open_stream(self.storage, name)

    def list(self, prefix: str) -> Iterator[str]:
        return (info.key for info in self.storage.list(prefix))

    def describe(self, name: str = "") -> str:
        return self.storage.describe(name)
