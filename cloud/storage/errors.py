"""Exceptions of the storage layer: one line, actionable, never a secret."""

from __future__ import annotations


class StorageError(RuntimeError):
    """A storage operation failed; the message names the object and the fix."""


class UnsafeKeyError(StorageError):
    """An object key would land outside its destination directory."""

    def __init__(self, key: str, reason: str):
        self.key = key
        self.reason = reason
        super().__init__(f"refusing unsafe object key {key!r}: {reason}")


class URLError(StorageError, ValueError):
    """A malformed storage URL (a user error: the launchers print it as one line)."""


class PreconditionFailed(StorageError):
    """A conditional write found another version of the object (HTTP 412/409)."""
