"""Progress for people at a terminal, log lines for files.

At a TTY a bar redraws in place (carriage return); anywhere else (ModelArts captures stdout to
a file) a plain line is written at most every `interval_s`, since a file full of carriage
returns is unreadable. Log records written to the same terminal first clear the bar line, so
the two do not end up on one line.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Callable, Optional, TextIO

from core.callbacks import Callback

CLEAR_LINE = "\r\x1b[K"
MB = 1024 * 1024


def is_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or fake streams
        return False


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class _ClearBar(logging.Filter):
    """Attached to log handlers that write to the bar's terminal: wipe the bar line first."""

    def __init__(self, bar: "ProgressBar"):
        super().__init__()
        self.bar = bar

    def filter(self, record) -> bool:
        self.bar.clear()
        return True


class ProgressBar:
    """`update(done)` as work advances; `close()` at the end (also a context manager).

    TTY: `label [#####.....]  42% 420/1000 00:12<00:17 extra`, redrawn at most every
    `redraw_s`. Otherwise: the same text as a line at most every `interval_s`, and a last line
    at close. Thread-safe (transfer callbacks arrive from worker threads).
    """

    def __init__(self, total: float, label: str, stream: Optional[TextIO] = None,
                 interval_s: float = 30.0, width: int = 28, redraw_s: float = 0.1,
                 unit_format: Callable[[float], str] = lambda n: f"{n:.0f}",
                 clock: Callable[[], float] = time.monotonic):
        self.total = max(float(total), 0.0)
        self.label = label
        self.stream = stream if stream is not None else sys.stdout
        self.tty = is_tty(self.stream)
        self.interval_s = interval_s if not self.tty else redraw_s
        self.width = width
        self.unit_format = unit_format
        self.clock = clock
        self.started = clock()
        self.done = 0.0
        self.extra = ""
        self._last_draw: Optional[float] = None
        self._drawn = False
        self._dirty = False  # state changed since the last drawing
        self._closed = False
        self._lock = threading.RLock()
        self._handlers: list[logging.Handler] = []
        if self.tty:
            self._guard_log_handlers()

    # ------------------------------------------------------------------ text

    def text(self) -> str:
        elapsed = self.clock() - self.started
        fraction = min(self.done / self.total, 1.0) if self.total else 0.0
        amount = f"{self.unit_format(self.done)}/{self.unit_format(self.total)}"
        if 0 < fraction < 1:
            eta = f"{format_duration(elapsed)}<{format_duration(elapsed / fraction * (1 - fraction))}"
        else:
            eta = format_duration(elapsed)
        parts = [self.label]
        if self.tty:
            filled = int(round(fraction * self.width))
            parts.append("[" + "#" * filled + "." * (self.width - filled) + "]")
        parts += [f"{fraction * 100:3.0f}%", amount, eta]
        if self.extra:
            parts.append(self.extra)
        return " ".join(parts)

    # ------------------------------------------------------------------ updates

    def update(self, done: float, extra: Optional[str] = None, force: bool = False) -> None:
        with self._lock:
            if self._closed:
                return
            self.done = float(done)
            if extra is not None:
                self.extra = extra
            self._dirty = True
            now = self.clock()
            due = self._last_draw is None or now - self._last_draw >= self.interval_s \
                or (self.tty and not self._drawn)  # a log line wiped it: show it again now
            if force or due:
                self._last_draw = now
                self._draw()

    def advance(self, amount: float = 1, extra: Optional[str] = None) -> None:
        with self._lock:
            self.update(self.done + amount, extra)

    def close(self, extra: Optional[str] = None) -> None:
        """Final state: the bar's last drawing ends its line; off a TTY one last log line."""
        with self._lock:
            if self._closed:
                return
            if extra is not None and extra != self.extra:
                self.extra = extra
                self._dirty = True
            if self._dirty or (self.tty and not self._drawn):
                self._draw()
            if self.tty:
                self.stream.write("\n")
                self.stream.flush()
            self._closed = True
            self._release_log_handlers()

    def clear(self) -> None:
        """Wipe the bar line (TTY) so that something else can print a line."""
        with self._lock:
            if self.tty and self._drawn:
                self.stream.write(CLEAR_LINE)
                self.stream.flush()
                self._drawn = False

    def _draw(self) -> None:
        self._dirty = False
        if self.tty:
            self.stream.write(CLEAR_LINE + self.text())
            self._drawn = True
        else:
            self.stream.write(self.text() + "\n")
        self.stream.flush()

    # ------------------------------------------------------------------ logging

    def _guard_log_handlers(self) -> None:
        for handler in logging.getLogger().handlers:
            if getattr(handler, "stream", None) is self.stream:
                handler.addFilter(_ClearBar(self))
                self._handlers.append(handler)

    def _release_log_handlers(self) -> None:
        for handler in self._handlers:
            for f in [f for f in handler.filters if isinstance(f, _ClearBar) and f.bar is self]:
                handler.removeFilter(f)
        self._handlers = []

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class EpochProgress(Callback):
    """One bar per epoch from the trainer's callbacks (rank 0 only).

    The trainer reports at each log interval (train.log_interval), so the bar moves at that
    cadence. Off a TTY it writes a line with overall progress and the time left every
    `interval_s`, which the trainer's own per-interval lines lack.
    """

    def __init__(self, stream: Optional[TextIO] = None, interval_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self.stream = stream
        self.interval_s = interval_s
        self.clock = clock
        self.bar: Optional[ProgressBar] = None
        self.enabled = True
        self.per_epoch = 1
        self.total_steps = 0
        self.start_step = 0
        self.epochs = 1
        self.epoch = -1
        self.started = clock()

    def on_train_begin(self, info: dict) -> None:
        self.enabled = info.get("rank", 0) == 0
        self.per_epoch = max(1, int(info["steps_per_epoch"]))
        self.total_steps = int(info["total_steps"])
        self.start_step = int(info.get("start_step", 0))
        self.epochs = -(-self.total_steps // self.per_epoch)
        self.started = self.clock()

    def _bar_for(self, epoch: int) -> ProgressBar:
        if self.bar is None or epoch != self.epoch:
            if self.bar is not None:
                self.bar.close()
            self.epoch = epoch
            in_epoch = min(self.per_epoch, self.total_steps - epoch * self.per_epoch)
            self.bar = ProgressBar(in_epoch, f"epoch {epoch + 1}/{self.epochs}", self.stream,
                                   interval_s=self.interval_s, clock=self.clock)
        return self.bar

    def on_step_end(self, info: dict) -> None:
        if not self.enabled:
            return
        epoch, step = int(info["epoch"]), int(info["step"])
        bar = self._bar_for(epoch)
        extra = f"loss {info['loss']:.4f} lr {info['lr']:.5f} {info['images_per_sec']:.1f} img/s"
        if not bar.tty:
            extra += f" | run {step}/{self.total_steps} steps, {self._run_eta(step)} left"
        bar.update(step - epoch * self.per_epoch, extra)

    def _run_eta(self, step: int) -> str:
        done = step - self.start_step
        if done <= 0:
            return "?"
        elapsed = self.clock() - self.started
        return format_duration(elapsed / done * (self.total_steps - step))

    def on_epoch_end(self, info: dict) -> None:
        if self.enabled and self.bar is not None and int(info["epoch"]) == self.epoch:
            self.bar.update(int(info["step"]) - self.epoch * self.per_epoch)
            self.bar.close(f"avg loss {info['avg_loss']:.4f}, {info['epoch_time_ms'] / 1000:.1f} s")
            self.bar = None

    def on_train_end(self, summary: dict) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def staging_hook(label: str, stream: Optional[TextIO] = None, interval_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
    """A callable `hook(files_done, total_files, bytes_done, total_bytes)` for a transfer: a
    byte-based bar at a TTY, periodic lines otherwise; `hook.close()` ends it. Call it from
    any thread, as often as bytes arrive; it throttles itself."""
    state: dict = {"bar": None}
    lock = threading.Lock()
    started = clock()

    def hook(files_done: int, total_files: int, bytes_done: int, total_bytes: int) -> None:
        with lock:
            if state["bar"] is None:
                state["bar"] = ProgressBar(total_bytes, label, stream, interval_s=interval_s,
                                           unit_format=lambda n: f"{n / MB:.1f}", clock=clock)
                state["bar"].started = started  # the transfer began before its first bytes
            bar = state["bar"]
        elapsed = max(clock() - bar.started, 1e-9)
        bar.update(bytes_done, f"MB, {files_done}/{total_files} files, {bytes_done / MB / elapsed:.1f} MB/s")

    def close() -> None:
        with lock:
            if state["bar"] is not None:
                state["bar"].close()

    hook.close = close
    return hook
