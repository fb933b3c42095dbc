"""Storage settings: one small object the launchers fill from their config.

Every field has a default that works on this project's targets; launchers pass
a dict (e.g. the ``storage:`` section of a YAML config), a namespace, or an
instance. Environment variables are read later, when a client is built
(see :mod:`cloud.storage.s3client`), so a settings object stays a plain value.
Secrets are excluded from ``repr`` so a logged settings object leaks nothing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

MB = 1024 * 1024
ENGINES = ("auto", "boto3")


@dataclass
class StorageSettings:
    """How to reach an object store and how hard to push it.

    endpoint            URL of the S3 API (``https://obs.cn-north-4.myhuaweicloud.com``,
                        ``http://127.0.0.1:8333``); None: from the environment.
    region              signing region; None: from the environment or the endpoint.
    access_key_id, secret_access_key, session_token
                        explicit credentials; None: the credential chain.
    profile             a profile of ~/.aws/config to use instead of the default.
    metadata_url        temporary keys of the node's IAM agency from this instance-metadata
                        URL (Huawei Cloud: http://169.254.169.254/openstack/latest/securitykey),
                        refreshed before they expire; None: not used.
    addressing_style    "virtual", "path" or "auto"; None: virtual for obs://,
                        path for s3:// with a custom endpoint, auto on AWS.
    retry_mode          botocore retry mode, "standard" or "adaptive".
    max_attempts        botocore attempts per request, first one included.
    workers             parallel transfers (threads); also sizes the HTTP pool.
    multipart_threshold_mb, multipart_chunksize_mb
                        objects at least this big move in parts of this size,
                        through boto3's transfer manager.
    io_chunksize_kb     read/write block size of the transfer manager.
    engine              what carries objects below the multipart threshold: "auto" (one lean
                        signed request per object, cloud.storage.s3lean, falling back to boto3 for
                        that object on any other answer; boto3 wherever it cannot be used, e.g.
                        behind a proxy) or "boto3" (every request through botocore).
                        Multipart objects always go through boto3's transfer manager.
    progress_interval_s seconds between progress lines of a sync.
    stall_timeout_s     a store that sends nothing (stopped, hung, a dead link) is given up on
                        after about this long, with one error line; each request attempt
                        waits at most stall_timeout_s / max_attempts for a byte (never more
                        than read_timeout_s), and every attempt that got nothing is a
                        warning line meanwhile.
    upload_retries, upload_retry_delay_s
                        a checkpoint upload that failed (after botocore's attempts) is
                        tried again this many times, after the delay, 3x and 9x it,
                        unless a newer checkpoint supersedes it (see CheckpointUploader).
    """

    endpoint: str | None = None
    region: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    profile: str | None = None
    metadata_url: str | None = None
    addressing_style: str | None = None
    retry_mode: str = "standard"
    max_attempts: int = 5
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    verify_ssl: bool | str = True
    workers: int = 16
    multipart_threshold_mb: float = 16.0
    multipart_chunksize_mb: float = 16.0
    io_chunksize_kb: int = 1024
    engine: str = "auto"
    progress_interval_s: float = 10.0
    upload_retries: int = 3
    upload_retry_delay_s: float = 10.0
    stall_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if self.retry_mode not in ("standard", "adaptive", "legacy"):
            raise ValueError(f"storage retry_mode {self.retry_mode!r}: expected 'standard' or 'adaptive'")
        if self.addressing_style not in (None, "auto", "path", "virtual"):
            raise ValueError(f"storage addressing_style {self.addressing_style!r}: "
                             "expected 'virtual', 'path' or 'auto'")
        if self.engine not in ENGINES:
            raise ValueError(f"storage engine {self.engine!r}: expected one of {', '.join(ENGINES)}")
        if int(self.workers) < 1 or int(self.max_attempts) < 1:
            raise ValueError("storage workers and max_attempts must be at least 1")
        if int(self.upload_retries) < 0 or float(self.upload_retry_delay_s) < 0:
            raise ValueError("storage upload_retries and upload_retry_delay_s must not be negative")
        if float(self.stall_timeout_s) <= 0:
            raise ValueError("storage stall_timeout_s must be greater than 0")
        self.stall_timeout_s = float(self.stall_timeout_s)
        self.upload_retries = int(self.upload_retries)
        self.upload_retry_delay_s = float(self.upload_retry_delay_s)
        self.workers = int(self.workers)
        self.max_attempts = int(self.max_attempts)

    @property
    def attempt_timeout_s(self) -> float:
        """Seconds one request attempt may wait without a byte (connect, or a read): the
        stall timeout shared by the attempts, so a store that stops answering fails within
        about stall_timeout_s (plus backoff), not read_timeout_s x max_attempts."""
        return max(1.0, min(float(self.read_timeout_s), self.stall_timeout_s / self.max_attempts))

    @property
    def multipart_threshold(self) -> int:
        return int(self.multipart_threshold_mb * MB)

    @property
    def multipart_chunksize(self) -> int:
        return int(self.multipart_chunksize_mb * MB)

    def replace(self, **changes: Any) -> "StorageSettings":
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}"
                          for f in dataclasses.fields(self) if f.repr)
        has_keys = "set" if self.access_key_id or self.secret_access_key else "unset"
        return f"StorageSettings({shown}, credentials={has_keys})"

    __str__ = __repr__


_FIELDS = {f.name for f in dataclasses.fields(StorageSettings)}
_INTS = ("max_attempts", "workers", "io_chunksize_kb", "upload_retries")
_FLOATS = ("connect_timeout_s", "read_timeout_s", "multipart_threshold_mb", "multipart_chunksize_mb",
           "progress_interval_s", "upload_retry_delay_s", "stall_timeout_s")


def _typed(name: str, value: Any) -> Any:
    """A config value checked against its field's type (ints and floats as YAML or the command
    line give them; "4x" for workers is named as the key it was given for)."""
    expected = "int" if name in _INTS else "number" if name in _FLOATS else None
    if name == "verify_ssl":
        if not isinstance(value, (bool, str)):
            raise ValueError(f"config key 'storage.verify_ssl' expects true, false or a CA bundle "
                             f"path, got {type(value).__name__} {value!r}")
        return value
    if expected is None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # a region or profile that YAML read as a number
        if not isinstance(value, str):
            raise ValueError(f"config key 'storage.{name}' expects a string, got "
                             f"{type(value).__name__} {value!r}")
        return value
    ok = (isinstance(value, int) if expected == "int" else isinstance(value, (int, float)))
    if isinstance(value, bool) or not ok:
        raise ValueError(f"config key 'storage.{name}' expects {expected}, got "
                         f"{type(value).__name__} {value!r}")
    return value


def to_settings(value: "StorageSettings | Mapping[str, Any] | Any | None" = None,
                **overrides: Any) -> StorageSettings:
    """Coerce None, a mapping, a namespace or a StorageSettings into settings.

    Unknown mapping keys raise ValueError (a typo in a config should not be
    silently ignored); for other objects only known attribute names are read.
    """
    if isinstance(value, StorageSettings):
        base = value
    elif value is None:
        base = StorageSettings()
    elif isinstance(value, Mapping):
        unknown = sorted(set(value) - _FIELDS)
        if unknown:
            raise ValueError(f"unknown storage settings {unknown}; known: {sorted(_FIELDS)}")
        base = StorageSettings(**{k: _typed(k, v) for k, v in value.items() if v is not None})
    else:
        base = StorageSettings(**{name: getattr(value, name) for name in _FIELDS
                                  if getattr(value, name, None) is not None})
    return base.replace(**overrides) if overrides else base
