"""Lean single-request S3 transfers: one signed GET or PUT per object (or per byte range of a
large one), on a plain socket.

Staging thousands of small objects through botocore costs about 1 ms of Python per
GetObject on top of the request itself (hooks, endpoint rules, parsing, signing); on 2 cores
that is most of a cold stage. This module sends the same request with less machinery: a
keep-alive socket per thread speaking the few lines of HTTP/1.1 an S3 GET or PUT needs (the
answer's head is split once; the body goes from the socket into a reusable buffer and from
there into the file with ``os.write``/``os.pwrite``), signed by botocore's own SigV4 signer
(``S3SigV4Auth``; a subclass that keeps the day's signing key and builds the signed-header map
without email-header objects, ~25 us a request instead of ~100).

Only the happy path is handled: anything but the expected answer (200, or 206 with the listed
ETag and the asked length for a range), an answer this module does not read (chunked, no
length), or a connection that fails before the answer returns False, and the caller takes the
boto3 path for that object, which retries, follows the store's errors and explains them.
botocore still decides everything the request depends on: the object URL (endpoint,
addressing style, region, taken once from a presigned URL), the credentials (refreshable ones
are asked per request), TLS verification (``verify_ssl``, botocore's CA bundle) and the
timeouts.

Used for objects below the multipart threshold, and for the parts of larger ones whose size
and ETag the listing gave (:class:`cloud.storage.store._S3Batch`), unless ``storage.engine`` is
``boto3``. Not used when a proxy is configured for the endpoint, without credentials, or for a
signature other than SigV4. Each request is shown to botocore's
``before-send.s3.<Operation>`` handlers first, like botocore's own requests; a handler that
answers instead sends that object down the boto3 path.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

log = logging.getLogger("cloud.storage.s3lean")

# After this many fallbacks in a row (no lean request succeeding in between) a batch stops
# trying: a store that refuses every lean request is not worth a wasted request per object.
MAX_FALLBACKS_IN_A_ROW = 16
USER_AGENT = "mnv3-cloud-lean/1"
MAX_HEAD = 64 * 1024  # an answer's status line and headers must fit in this
# Errors of the network (the peer, TLS, a timeout), as opposed to local ones (a full disk).
NETWORK_ERRORS = (ConnectionError, TimeoutError, ssl.SSLError)


class LeanStreamBroken(Exception):
    """The answer's body broke off after the 200 (the caller retries through boto3)."""


class _Unreadable(Exception):
    """An answer this module does not read (the caller falls back)."""


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


# --------------------------------------------------------------------------- signing


class _SignedHeaders(dict):
    """The lower-cased headers to sign, with the one HTTPHeaders method the signer calls."""

    def get_all(self, name: str) -> list[str]:
        return [self[name]]


class _LeanSigning:
    """Mixed into botocore's S3SigV4Auth (whatever ``botocore.auth.S3SigV4Auth`` is when a
    batch starts): the same canonical request, string to sign and Authorization header, with
    two costs cut. The signed-header map is a plain dict (botocore builds an email-message
    HTTPHeaders and splits the URL for the host, twice a request), and the signing key, which
    changes only with the day, region and secret, is derived once."""

    key_cache: dict  # set per LeanS3

    def headers_to_sign(self, request):
        from botocore.auth import SIGNED_HEADERS_BLACKLIST
        signed = _SignedHeaders()
        for name, value in request.headers.items():
            lname = name.lower()
            if lname not in SIGNED_HEADERS_BLACKLIST:
                signed[lname] = value
        return signed

    def signature(self, string_to_sign, request):
        day = request.context["timestamp"][0:8]
        cache_key = (self.credentials.secret_key, day, self._region_name, self._service_name)
        key = self.key_cache.get(cache_key)
        if key is None:
            key = self._sign(f"AWS4{self.credentials.secret_key}".encode(), day)
            for part in (self._region_name, self._service_name, "aws4_request"):
                key = self._sign(key, part)
            if len(self.key_cache) > 8:  # rotated keys: keep only the current ones
                self.key_cache.clear()
            self.key_cache[cache_key] = key
        return self._sign(key, string_to_sign, hex=True)


class _Request:
    """What botocore's signer reads and writes of a request (AWSRequest without the URL and
    header preparation it does for sending)."""

    __slots__ = ("method", "url", "headers", "body", "context", "params", "stream_output")

    def __init__(self, method: str, url: str, headers: dict, body: bytes | None):
        self.method, self.url, self.headers, self.body = method, url, headers, body
        self.context: dict = {}
        self.params: dict = {}
        self.stream_output = False


class _Headers(dict):
    """Request headers as sent; lookups by any capitalisation, like botocore's HTTPHeaders
    (for before-send handlers)."""

    def _name(self, name: str) -> str | None:
        lname = name.lower()
        return next((k for k in self if k.lower() == lname), None)

    def __getitem__(self, name: str) -> str:
        try:
            return dict.__getitem__(self, name)
        except KeyError:
            found = self._name(name)
            if found is None:
                raise
            return dict.__getitem__(self, found)

    def __contains__(self, name: object) -> bool:
        return dict.__contains__(self, name) or (isinstance(name, str)
                                                 and self._name(name) is not None)

    def get(self, name: str, default: Any = None) -> Any:
        return self[name] if name in self else default


# --------------------------------------------------------------------------- answers


class _Answer:
    """One answer: status, headers (lower-case names) and its body, read from the socket into
    the thread's buffer (each piece valid until the next is read)."""

    __slots__ = ("status", "headers", "length", "will_close", "_sock", "_view", "_start", "_end")

    def chunks(self) -> Iterator[memoryview]:
        left = self.length
        if self._end > self._start:
            first = min(self._end - self._start, left)
            left -= first
            yield self._view[self._start:self._start + first]
        view, sock = self._view, self._sock
        while left > 0:
            n = sock.recv_into(view, min(left, len(view)))
            if not n:
                raise ConnectionResetError("the connection closed mid-body")
            left -= n
            yield view[:n]

    def read(self) -> bytes:
        return b"".join(bytes(piece) for piece in self.chunks())


def _read_answer(sock, raw: bytearray, view: memoryview) -> _Answer:
    """Receive an answer's head into ``raw`` and parse it; the body stays on the socket (and
    in ``raw`` after the head)."""
    got = 0
    while True:
        n = sock.recv_into(view[got:])
        if not n:
            raise ConnectionResetError("the connection closed before an answer")
        end = raw.find(b"\r\n\r\n", max(0, got - 3), got + n)
        got += n
        if end >= 0:
            break
        if got >= MAX_HEAD:
            raise _Unreadable("answer head too large")
    lines = bytes(raw[:end]).decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    answer = _Answer()
    answer.status = int(rest[:3])
    headers = answer.headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    connection = headers.get("connection", "").lower()
    answer.will_close = "close" in connection or (version == "HTTP/1.0" and "keep-alive" not in connection)
    if "chunked" in headers.get("transfer-encoding", "").lower() or answer.status < 200:
        raise _Unreadable(f"answer {answer.status} {headers.get('transfer-encoding', '')}")
    length = headers.get("content-length")
    if length is None or not length.isdigit():
        raise _Unreadable("answer without a length")
    answer.length = int(length)
    answer._sock, answer._view, answer._start, answer._end = sock, view, end + 4, got
    if got - end - 4 > answer.length:
        answer.will_close = True  # more than the body: do not reuse the connection
    return answer


def _write_all(fd: int, piece: memoryview, offset: int | None) -> None:
    while piece:
        n = os.write(fd, piece) if offset is None else os.pwrite(fd, piece, offset)
        piece = piece[n:]
        if offset is not None:
            offset += n


# --------------------------------------------------------------------------- requests


class LeanS3:
    """Signed GETs and PUTs of whole objects (and GETs of ranges) of one bucket, one
    connection and one buffer per thread."""

    def __init__(self, storage: Any):
        from botocore import auth
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
        self._ssl = self._ssl_context() if self._https else None
        # botocore's signer as it is now (tests and users may replace it), with our two cuts
        self._signer = type("LeanS3SigV4Auth", (_LeanSigning, auth.S3SigV4Auth),
                            {"key_cache": {}})
        self._buffer_size = max(256 * 1024, self._settings.io_chunksize_kb * 1024)
        self._local = threading.local()
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()
        self._fallbacks_in_a_row = 0
        self.enabled = True

    def _ssl_context(self) -> ssl.SSLContext:
        from botocore.httpsession import get_cert_path
        verify = self._settings.verify_ssl
        if verify is False:
            return ssl._create_unverified_context()
        return ssl.create_default_context(cafile=get_cert_path(verify))

    # ------------------------------------------------------------------ plumbing

    def _connection(self, fresh: bool = False) -> tuple[socket.socket, bool]:
        """(this thread's socket, whether it was just opened)."""
        sock = getattr(self._local, "sock", None)
        if sock is not None and not fresh:
            return sock, False
        self._drop_connection()
        s = self._settings
        sock = socket.create_connection((self._host, self._port),
                                        timeout=min(s.connect_timeout_s, s.attempt_timeout_s))
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl is not None:
                sock = self._ssl.wrap_socket(sock, server_hostname=self._host)
            sock.settimeout(s.attempt_timeout_s)  # bounded by storage.stall_timeout_s
        except BaseException:
            sock.close()
            raise
        self._local.sock = sock
        with self._lock:
            self._connections.append(sock)
        return sock, True

    def _drop_connection(self) -> None:
        sock = getattr(self._local, "sock", None)
        if sock is not None:
            sock.close()
            self._local.sock = None

    def _buffers(self) -> tuple[bytearray, memoryview]:
        buffers = getattr(self._local, "buffers", None)
        if buffers is None:
            raw = bytearray(self._buffer_size)
            buffers = self._local.buffers = (raw, memoryview(raw))
        return buffers

    def _signed(self, method: str, operation: str, full_key: str, body: bytes | None = None,
                extra: dict | None = None) -> tuple[str, dict[str, str]] | None:
        """(path, headers) of a request signed by botocore's S3 SigV4 signer, or None when a
        botocore before-send handler (fault injection and request counting in tests, user hooks)
        answered it. The payload is signed (its SHA-256), as botocore signs a PutObject without a
        checksum header, even over TLS: some S3-compatible stores refuse UNSIGNED-PAYLOAD."""
        from botocore.awsrequest import AWSPreparedRequest
        path = self._path_base + _quote_key(full_key)
        headers = _Headers(Host=self._host_header, **{"User-Agent": USER_AGENT})
        if body is not None:
            headers["Content-Length"] = str(len(body))
        if extra:
            headers.update(extra)
        request = _Request(method, self._url_base + path, headers, body)
        signer = self._signer(self._credentials.get_frozen_credentials(), "s3", self._region)
        signer.add_auth(request)
        prepared = AWSPreparedRequest(method, request.url, headers, body, False)
        _handler, answer = self._client.meta.events.emit_until_response(
            f"before-send.s3.{operation}", request=prepared)
        if answer is not None:
            return None
        return path, headers

    def _send(self, sock, method: str, path: str, headers: dict, body: bytes | None) -> None:
        head = "".join([f"{method} {path} HTTP/1.1\r\n",
                        *(f"{k}: {v}\r\n" for k, v in headers.items()), "\r\n"]).encode("latin-1")
        if body and len(body) <= 64 * 1024:
            sock.sendall(head + body)
        else:
            sock.sendall(head)
            if body:
                sock.sendall(body)

    def _exchange(self, method: str, path: str, headers: dict, body: bytes | None):
        """Send and read the answer's head. A kept-alive connection the server closed
        meanwhile is retried once on a fresh one; None when the request could not be made or
        the answer is not one this module reads."""
        for attempt in (0, 1):
            fresh = True
            try:
                sock, fresh = self._connection(fresh=attempt == 1)
                self._send(sock, method, path, headers, body)
                raw, view = self._buffers()
                return _read_answer(sock, raw, view)
            except (OSError, ValueError, _Unreadable) as exc:
                self._drop_connection()
                if fresh or not isinstance(exc, (ConnectionResetError, BrokenPipeError)):
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

    def _refused(self, response, why: str) -> bool:
        """Read an unwanted answer to the end if it is short (the connection stays usable),
        else drop the connection, and fall back."""
        try:
            if response.length > 1024 * 1024:
                raise ConnectionResetError("not reading a long unwanted body")
            response.read()
        except OSError:
            self._drop_connection()
        if response.will_close:
            self._drop_connection()
        return self._fallback(why)

    # ------------------------------------------------------------------ transfers

    def _answer(self, method: str, operation: str, full_key: str, body: bytes | None = None,
                extra: dict | None = None):
        """The answer to one signed request, or None: a botocore handler answered it, or the
        store did not (a fallback, counted); the caller then takes the boto3 path."""
        signed = self._signed(method, operation, full_key, body, extra)
        if signed is None:
            return None
        response = self._exchange(method, *signed, body)
        if response is None:
            return self._fallback("no answer") or None
        return response

    def _finished(self, response) -> bool:
        """The answer was read to its end: keep the connection unless the server closes it."""
        if response.will_close:
            self._drop_connection()
        return self._succeeded()

    def get_to_fd(self, full_key: str, fd: int, on_bytes: Callable[[int], None] | None = None,
                  *, start: int = 0, length: int | None = None, etag: str | None = None) -> bool:
        """Write the object into the open file ``fd`` (at its position), or with ``length``
        its bytes ``start``..``start+length-1`` at that offset, checking the answer's ETag
        against ``etag`` (the listing's: a range of a newer upload must not be mixed in).
        False: not done (nothing written), take the boto3 path. LeanStreamBroken: the body
        broke off after some bytes."""
        ranged = length is not None
        extra = {"Range": f"bytes={start}-{start + length - 1}"} if ranged else None
        response = self._answer("GET", "GetObject", full_key, extra=extra)
        if response is None:
            return False
        if response.status != (206 if ranged else 200):
            return self._refused(response, f"GET answered {response.status}")
        if ranged and (response.length != length or
                       response.headers.get("etag", "").strip('"') != etag):
            return self._refused(response, "a range of another version or length")
        offset = start if ranged else None
        try:
            for piece in response.chunks():
                _write_all(fd, piece, offset)
                if offset is not None:
                    offset += len(piece)
                if on_bytes:
                    on_bytes(len(piece))
        except OSError as exc:
            self._drop_connection()
            if not isinstance(exc, NETWORK_ERRORS):
                raise  # a local failure (disk full) is not the network's
            raise LeanStreamBroken(f"{type(exc).__name__}: {exc}") from exc
        return self._finished(response)

    def put_bytes(self, full_key: str, data: bytes) -> bool:
        """PutObject of ``data``. False: not stored by this path, take the boto3 path."""
        response = self._answer("PUT", "PutObject", full_key, data)
        if response is None:
            return False
        if response.status != 200:
            return self._refused(response, f"PUT answered {response.status}")
        try:
            response.read()
        except OSError:
            self._drop_connection()
        return self._finished(response)

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for sock in connections:
            sock.close()


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
