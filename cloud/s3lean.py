"""Lean single-request S3 transfers: one signed GET or PUT per object, on the standard library.

Staging thousands of small objects through botocore costs about 1 ms of Python per
GetObject on top of the request itself (hooks, endpoint rules, parsing, signing); on 2 cores
that is most of a cold stage. This module sends the same request with less machinery: a
keep-alive ``http.client`` connection per thread, signed by botocore's own SigV4 signer
(``S3SigV4Auth``, ~40 us a request) on a bare ``AWSRequest``. Only the happy path is handled: anything but a 200 answer, or a
connection that fails before the answer, returns False and the caller takes the boto3 path for
that object, which retries, follows the store's errors and explains them. botocore still
decides everything the request depends on: the object URL (endpoint, addressing style, region,
taken once from a presigned URL), the credentials (refreshable ones are asked per request),
TLS verification (``verify_ssl``, botocore's CA bundle) and the timeouts.

Used for objects below the multipart threshold (:class:`cloud.storage._S3Batch`), unless
``storage.engine`` is ``boto3``. Not used when a proxy is configured for the endpoint, without
credentials, or for a signature other than SigV4. Each request is shown to botocore's
``before-send.s3.<Operation>`` handlers first, like botocore's own requests; a handler that
answers instead sends that object down the boto3 path.
"""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
import threading
from typing import Any, Callable
from urllib.parse import urlsplit

log = logging.getLogger("cloud.s3lean")

# After this many fallbacks in a row (no lean request succeeding in between) a batch stops
# trying: a store that refuses every lean request is not worth a wasted request per object.
MAX_FALLBACKS_IN_A_ROW = 16


class LeanStreamBroken(Exception):
    """The answer's body broke off after the 200 (the caller retries through boto3)."""


def _quote_key(key: str) -> str:
    from botocore.utils import percent_encode
    return percent_encode(key, safe="/~")


def unusable_reason(storage: Any) -> str | None:
    """Why lean requests cannot serve ``storage`` (an S3Storage), None when they can."""
    from botocore.utils import get_environ_proxies
    client = storage.client
    if storage.settings.engine == "boto3":
        return "storage.engine is boto3"
    if client.meta.config.signature_version != "s3v4":
        return f"signature {client.meta.config.signature_version}"
    if client._get_credentials() is None:
        return "no credentials (anonymous requests)"
    if get_environ_proxies(client.meta.endpoint_url):
        return "a proxy is configured for the endpoint"
    return None


class LeanS3:
    """Signed GETs and PUTs of whole objects of one bucket, one connection per thread."""

    def __init__(self, storage: Any):
        from botocore.httpsession import get_cert_path
        self._client = storage.client
        self._settings = storage.settings
        self._credentials = self._client._get_credentials()
        self._region = self._client.meta.region_name
        probe = storage.url.key("probe")
        url = self._client.generate_presigned_url(
            "get_object", Params={"Bucket": storage.bucket, "Key": probe}, ExpiresIn=60)
        base = url.split("?", 1)[0]
        quoted = _quote_key(probe)
        if not base.endswith(quoted):
            raise ValueError(f"unexpected object URL layout {base!r}")
        parts = urlsplit(base[:-len(quoted)])
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)
        default = parts.port is None or parts.port == (443 if self._https else 80)
        self._host_header = parts.hostname if default else f"{parts.hostname}:{parts.port}"
        self._url_base = f"{parts.scheme}://{self._host_header}"
        self._path_base = parts.path  # "/bucket/" (path style) or "/" (virtual)
        self._ssl = None
        if self._https:
            verify = self._settings.verify_ssl
            if verify is False:
                self._ssl = ssl._create_unverified_context()
            else:
                self._ssl = ssl.create_default_context(cafile=get_cert_path(verify))
        self._local = threading.local()
        self._connections: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._fallbacks_in_a_row = 0
        self.enabled = True

    # ------------------------------------------------------------------ plumbing

    def _connection(self, fresh: bool = False) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is not None and not fresh:
            return conn
        if conn is not None:
            conn.close()
        s = self._settings
        if self._https:
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=s.connect_timeout_s,
                                               context=self._ssl)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=s.connect_timeout_s)
        conn.connect()
        conn.sock.settimeout(s.read_timeout_s)
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._local.conn = conn
        with self._lock:
            self._connections.append(conn)
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _signed(self, method: str, operation: str, full_key: str, body: bytes | None = None
                ) -> tuple[str, dict[str, str]] | None:
        """(path, headers) of a request signed by botocore's S3 SigV4 signer, or None when a
        botocore before-send handler (fault injection and request counting in tests, user hooks)
        answered it. The payload is signed (its SHA-256), as botocore signs a PutObject without a
        checksum header, even over TLS: some S3-compatible stores refuse UNSIGNED-PAYLOAD."""
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest
        path = self._path_base + _quote_key(full_key)
        headers = {"User-Agent": "mnv3-cloud-lean/1"}
        if body is not None:
            headers["Content-Length"] = str(len(body))
        request = AWSRequest(method=method, url=self._url_base + path, data=body, headers=headers)
        S3SigV4Auth(self._credentials.get_frozen_credentials(), "s3", self._region).add_auth(request)
        prepared = request.prepare()
        _handler, answer = self._client.meta.events.emit_until_response(
            f"before-send.s3.{operation}", request=prepared)
        if answer is not None:
            return None
        return path, dict(prepared.headers)

    def _exchange(self, method: str, path: str, headers: dict, body: bytes | None):
        """Send and read the status line and headers. A kept-alive connection the server closed
        meanwhile is retried once on a fresh one; None when the request could not be made."""
        for attempt in (0, 1):
            try:
                conn = self._connection(fresh=attempt == 1)
                conn.request(method, path, body=body, headers=headers)
                return conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                self._drop_connection()
                if attempt == 1 or not isinstance(exc, (http.client.RemoteDisconnected,
                                                        ConnectionResetError, BrokenPipeError)):
                    log.debug("lean %s failed before an answer: %s", method, type(exc).__name__)
                    return None
        return None

    def _fallback(self, why: str) -> bool:
        with self._lock:
            self._fallbacks_in_a_row += 1
            if self._fallbacks_in_a_row >= MAX_FALLBACKS_IN_A_ROW and self.enabled:
                self.enabled = False
                log.info("lean S3 requests stopped after %d fallbacks in a row (last: %s); the "
                         "rest of this batch goes through boto3", self._fallbacks_in_a_row, why)
        return False

    def _succeeded(self) -> bool:
        self._fallbacks_in_a_row = 0
        return True

    def _refused(self, response, method: str) -> bool:
        """Read a non-200 answer to the end (the connection stays usable) and fall back."""
        try:
            response.read()
        except (OSError, http.client.HTTPException):
            self._drop_connection()
        if response.will_close:
            self._drop_connection()
        return self._fallback(f"{method} answered {response.status}")

    # ------------------------------------------------------------------ transfers

    def _answer(self, method: str, operation: str, full_key: str, body: bytes | None = None):
        """The 200 answer to one signed request, or None: a botocore handler answered it, or the
        store did not (a fallback, counted); the caller then takes the boto3 path."""
        signed = self._signed(method, operation, full_key, body)
        if signed is None:
            return None
        response = self._exchange(method, *signed, body)
        if response is None:
            return self._fallback("no answer") or None
        if response.status != 200:
            return self._refused(response, method) or None
        return response

    def _finished(self, response) -> bool:
        """The answer was read to its end: keep the connection unless the server closes it."""
        if response.will_close:
            self._drop_connection()
        return self._succeeded()

    def get_to_file(self, full_key: str, file, chunk_size: int,
                    on_bytes: Callable[[int], None] | None) -> bool:
        """Write the object into the open binary ``file``. False: not done (nothing written),
        take the boto3 path. LeanStreamBroken: the body broke off after some bytes."""
        response = self._answer("GET", "GetObject", full_key)
        if response is None:
            return False
        buffer = getattr(self._local, "buffer", None)
        if buffer is None or len(buffer) < chunk_size:
            buffer = self._local.buffer = memoryview(bytearray(chunk_size))
        view = buffer[:chunk_size]
        try:
            while n := response.readinto(view):
                file.write(view[:n])
                if on_bytes:
                    on_bytes(n)
        except (OSError, http.client.HTTPException) as exc:
            self._drop_connection()
            if isinstance(exc, OSError) and not isinstance(exc, (ConnectionError, TimeoutError)):
                raise  # a local failure (disk full) is not the network's
            raise LeanStreamBroken(f"{type(exc).__name__}: {exc}") from exc
        return self._finished(response)

    def put_bytes(self, full_key: str, data: bytes) -> bool:
        """PutObject of ``data``. False: not stored by this path, take the boto3 path."""
        response = self._answer("PUT", "PutObject", full_key, data)
        if response is None:
            return False
        try:
            response.read()
        except (OSError, http.client.HTTPException):
            self._drop_connection()
        return self._finished(response)

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()


def lean_for(storage: Any) -> LeanS3 | None:
    """A LeanS3 for ``storage``, or None (with the reason at debug level) when it cannot serve it."""
    reason = unusable_reason(storage)
    if reason is None:
        try:
            return LeanS3(storage)
        except (ValueError, OSError, ssl.SSLError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # botocore could not presign: let the boto3 path say why
            reason = f"{type(exc).__name__}"
    log.debug("lean S3 requests not used for %s: %s", storage.describe(), reason)
    return None
