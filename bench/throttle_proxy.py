"""A TCP proxy on 127.0.0.1 that holds a link to a bandwidth (and adds latency): the slow store.

    proxy = ThrottleProxy("127.0.0.1", 8333, rate_mb_s=40, latency_ms=5).start()
    ... endpoint http://127.0.0.1:<proxy.port> ...
    proxy.rate_mb_s = 20          # change the link while it runs
    proxy.stop()

Bytes from the server to the clients share one token bucket (`rate_mb_s`, MB = 2^20 bytes: every
connection together, as one link); each chunk a client sends waits `latency_ms` first (a request's
trip). Bytes move by os.splice through a pipe (Linux), so the proxy costs little CPU (measured:
0.25 s for 100 MB at 40 MB/s, client included). It forwards bytes as they are, so S3 signatures
(which cover the Host the client used: the proxy's) stay valid. Benchmarks use it
(bench/bench_streaming.py); it is no product code.
"""
from __future__ import annotations

import os
import socket
import threading
import time

MB = 1024 * 1024


class TokenBucket:
    """`rate` bytes/s, bursts up to `burst` bytes; take() waits until its bytes are allowed."""

    def __init__(self, rate: float, burst: float):
        self.rate, self.burst = float(rate), float(burst)
        self.tokens = self.burst
        self.stamp = time.monotonic()
        self.lock = threading.Lock()

    def take(self, n: int) -> None:
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            self.tokens -= n
            wait = -self.tokens / self.rate if self.tokens < 0 else 0.0
        if wait > 0:
            time.sleep(wait)


class ThrottleProxy:
    def __init__(self, upstream_host: str, upstream_port: int, rate_mb_s: float | None = None,
                 latency_ms: float = 0.0, chunk: int = 64 * 1024):
        self.upstream = (upstream_host, upstream_port)
        self.latency_s = latency_ms / 1000.0
        self.chunk = chunk
        self._bucket = None
        self.rate_mb_s = rate_mb_s
        self.bytes_down = 0
        self._listener = None
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self.port = 0

    @property
    def rate_mb_s(self) -> float | None:
        return self._rate

    @rate_mb_s.setter
    def rate_mb_s(self, value: float | None) -> None:
        self._rate = value
        # a burst of 1/20 s of the rate (at least a chunk): a link, not a bursty meter
        self._bucket = (TokenBucket(value * MB, max(self.chunk, value * MB / 20))
                        if value else None)

    def start(self) -> "ThrottleProxy":
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port = self._listener.getsockname()[1]
        self._spawn(self._accept)
        return self

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sockets += [client, server]
            self._spawn(self._pump, client, server, False)
            self._spawn(self._pump, server, client, True)

    def _pump(self, src: socket.socket, dst: socket.socket, downstream: bool) -> None:
        """Bytes from src to dst through a pipe with os.splice (the kernel moves them: the
        proxy's CPU must not be what slows the training it measures), metered downstream."""
        r, w = os.pipe()
        try:
            while True:
                n = os.splice(src.fileno(), w, self.chunk)
                if not n:
                    break
                if downstream:
                    bucket = self._bucket
                    if bucket is not None:
                        bucket.take(n)
                    self.bytes_down += n
                elif self.latency_s:
                    time.sleep(self.latency_s)
                while n:
                    n -= os.splice(r, dst.fileno(), n)
        except OSError:
            pass
        finally:
            os.close(r)
            os.close(w)
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        self._stopping.set()
        if self._listener is not None:
            self._listener.close()
        for s in self._sockets:
            try:
                s.close()
            except OSError:
                pass
