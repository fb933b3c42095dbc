"""Storage URLs and object keys: parsing and safe mapping onto local paths.

Three forms are accepted:

* ``s3://bucket[/prefix]`` - any S3-compatible store,
* ``obs://bucket[/prefix]`` - Huawei OBS through its S3 API,
* a local path (``/data/x``, ``relative/dir``) or ``file:///data/x``.

Everything that later turns an object key into a file name goes through
:func:`safe_local_path`, so a hostile key (``../x``, ``/etc/passwd``,
``a\\..\\b``) can never make a download land outside its destination.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from cloud.storage.errors import UnsafeKeyError, URLError

REMOTE_SCHEMES = ("s3", "obs")
# S3 bucket naming rules (3-63 chars, lower case letters, digits, dots, hyphens;
# starts and ends with a letter or digit). OBS uses the same rules.
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_EXPECTED = "expected s3://bucket/prefix, obs://bucket/prefix or a local path"


@dataclass(frozen=True)
class StorageURL:
    """A parsed location: ``scheme`` is "s3", "obs" or "file".

    For remote URLs ``prefix`` is the key prefix without leading or trailing
    slash ("" for the bucket root); for local ones ``path`` is absolute.
    """

    scheme: str
    bucket: str = ""
    prefix: str = ""
    path: str = ""

    @property
    def is_remote(self) -> bool:
        return self.scheme in REMOTE_SCHEMES

    def key(self, relative: str) -> str:
        """Full object key of ``relative`` under this URL's prefix."""
        relative = relative.lstrip("/")
        if not self.prefix:
            return relative
        return f"{self.prefix}/{relative}" if relative else self.prefix

    def child(self, relative: str) -> "StorageURL":
        """The URL of ``relative`` below this one."""
        if self.is_remote:
            return StorageURL(self.scheme, self.bucket, self.key(relative).strip("/"))
        return StorageURL("file", path=os.path.join(self.path, relative))

    def __str__(self) -> str:
        if self.is_remote:
            return f"{self.scheme}://{self.bucket}/{self.prefix}" if self.prefix \
                else f"{self.scheme}://{self.bucket}"
        return self.path


def is_remote_url(url) -> bool:
    """True for ``s3://`` and ``obs://`` URLs (the one test of cloud and the launchers); False
    for None, empty strings and local paths."""
    if not url:
        return False
    match = _SCHEME_RE.match(str(url).strip())
    return bool(match) and match.group(1).lower() in REMOTE_SCHEMES


def parse_url(url: str | os.PathLike) -> StorageURL:
    """Parse ``url``; a malformed one raises URLError (a ValueError) naming it and the form."""
    text = os.fspath(url).strip() if url is not None else ""
    if not text:
        raise URLError(f"empty storage URL: {_EXPECTED}")
    match = _SCHEME_RE.match(text)
    if not match:
        return StorageURL("file", path=os.path.abspath(os.path.expanduser(text)))
    scheme = match.group(1).lower()
    rest = text[match.end():]
    if scheme == "file":
        if not rest.startswith("/"):
            raise URLError(f"malformed storage URL {text!r}: file URLs need an absolute "
                           f"path (file:///dir); {_EXPECTED}")
        return StorageURL("file", path=os.path.abspath(rest))
    if scheme not in REMOTE_SCHEMES:
        raise URLError(f"unsupported storage URL {text!r}: {_EXPECTED}")
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise URLError(f"malformed storage URL {text!r}: bad or missing bucket name "
                       f"{bucket!r} (3-63 lower-case letters, digits, '.', '-'); {_EXPECTED}")
    prefix = prefix.strip("/")
    if "\\" in prefix or "//" in prefix or any(p in (".", "..") for p in prefix.split("/")):
        raise URLError(f"malformed storage URL {text!r}: the prefix may not contain "
                       f"'.', '..', '//' or backslashes; {_EXPECTED}")
    return StorageURL(scheme, bucket=bucket, prefix=prefix)


def check_relative_key(key: str) -> str:
    """Return ``key`` if it is a plain relative path, else raise UnsafeKeyError.

    Refused: empty keys, absolute keys, backslashes (a separator on Windows and a
    classic way to smuggle ``..\\``), NUL bytes, drive letters, and any empty,
    ``.`` or ``..`` path segment.
    """
    if not key:
        raise UnsafeKeyError(key, "empty key")
    if key.startswith("/"):
        raise UnsafeKeyError(key, "absolute path")
    if "\\" in key or "\x00" in key:
        raise UnsafeKeyError(key, "backslash or NUL character")
    if re.match(r"^[A-Za-z]:", key):
        raise UnsafeKeyError(key, "drive letter")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise UnsafeKeyError(key, f"path segment {part!r}")
    return key


def safe_local_path(root: str, key: str, real_root: str | None = None) -> str:
    """The local file for ``key`` under ``root``; refuses anything that escapes.

    Besides the lexical checks, the resolved path (symlinks followed) must stay
    inside the resolved ``root``: a pre-existing symlink in the cache cannot be
    used to write elsewhere. Pass ``real_root`` (``os.path.realpath(root)``)
    when mapping many keys, to resolve the root once.
    """
    check_relative_key(key)
    real_root = real_root or os.path.realpath(root)
    target = os.path.realpath(os.path.join(real_root, *key.split("/")))
    if os.path.commonpath([real_root, target]) != real_root or target == real_root:
        raise UnsafeKeyError(key, f"resolves outside {root}")
    return target
