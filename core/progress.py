"""Progress for people at a terminal, plain lines for files (tqdm does the drawing).

At a terminal a tqdm bar redraws in place, and while it is open the console's log records go
through tqdm's logging redirect, so a log line never lands on the bar. Anywhere else
(ModelArts captures stdout to a file) a plain line, tqdm's text without the bar, is written
at most every `interval_s`, and one at the end: a file full of carriage returns is unreadable.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Callable, Optional, TextIO

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

PLAIN_FORMAT = "{desc} {percentage:3.0f}% {n_fmt}/{total_fmt} {elapsed}<{remaining}{postfix}"
FINISHED_FORMAT = "{desc} {percentage:3.0f}% {n_fmt}/{total_fmt} {elapsed}{postfix}"
BAR_FORMAT = "{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"

format_duration = tqdm.format_interval


def is_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or fake streams
        return False


class Progress:
    """`update(done)` or `add(amount)` as work advances, `close()` at the end (also a context
    manager). Thread-safe: transfer callbacks arrive from worker threads.

    `write` takes the plain lines (default: the stream); `unit="B"` counts bytes (shown in
    KB/MB/GB, with a rate); `clock` times the plain lines (tests pass a fake one).
    """

    def __init__(self, total: float, label: str, stream: Optional[TextIO] = None,
                 interval_s: float = 30.0, unit: str = "", redraw_s: float = 0.1,
                 write: Optional[Callable[[str], None]] = None,
                 clock: Callable[[], float] = time.monotonic, started: Optional[float] = None,
                 initial: float = 0.0):
        self.total = max(float(total), 0.0)
        self.label = label
        self.stream = stream if stream is not None else sys.stdout
        self.tty = is_tty(self.stream)
        self.interval_s = interval_s
        self.unit = unit
        self.write = write or self._write_line
        self.clock = clock
        # the work may have begun before the bar (an epoch's first steps run before their first
        # report): `started` is when it began, `initial` what was already done then (a resumed
        # epoch), so elapsed time and rate describe the work, not the bar
        self.started = clock() if started is None else started
        self.initial = float(initial)
        self.done = self.initial
        self.extra = ""
        self._last_line: Optional[float] = None
        self._dirty = False
        self._closed = False
        self.lock = threading.RLock()  # callers may hold it to update related counters
        self._bar: Optional[tqdm] = None
        self._redirect = None
        if self.tty:
            self._redirect = logging_redirect_tqdm()
            self._redirect.__enter__()
            self._bar = tqdm(total=_number(self.total), desc=label, file=self.stream, mininterval=redraw_s,
                             bar_format=BAR_FORMAT, dynamic_ncols=True, initial=_number(self.initial),
                             **self._units())
            self._bar.start_t -= clock() - self.started  # tqdm's own clock, moved back as far

    def _units(self) -> dict:
        if self.unit == "B":
            return {"unit": "B", "unit_scale": True}  # decimal (MB = 10**6), as tqdm's rate
        return {"unit": self.unit or "it"}

    def text(self, finished: bool = False) -> str:
        """The plain line: label, percentage, amount, elapsed<remaining (elapsed at the end)."""
        elapsed = self.clock() - self.started
        fmt = FINISHED_FORMAT if finished or self.done >= self.total else PLAIN_FORMAT
        if self.unit == "B":  # transfers: the rate too
            fmt = fmt.replace("{postfix}", ", {rate_fmt}{postfix}")
        return tqdm.format_meter(_number(self.done), _number(self.total), elapsed, prefix=self.label,
                                 bar_format=fmt, postfix=self.extra or None,
                                 initial=_number(self.initial), **self._units())

    def update(self, done: float, extra: Optional[str] = None) -> None:
        with self.lock:
            if self._closed:
                return
            if extra is not None:
                self.extra = extra
            if self._bar is not None:
                self._bar.set_postfix_str(self.extra, refresh=False)
                self._bar.update(_number(float(done) - self.done))
                self.done = float(done)
                return
            self.done = float(done)
            self._dirty = True
            now = self.clock()
            if self._last_line is None or now - self._last_line >= self.interval_s:
                self._last_line = now
                self._line()

    def add(self, amount: float = 1, extra: Optional[str] = None) -> None:
        with self.lock:
            self.update(self.done + amount, extra)

    def close(self, extra: Optional[str] = None) -> None:
        """Final state: the bar's last drawing ends its line; off a terminal one last line."""
        with self.lock:
            if self._closed:
                return
            self._closed = True
            if extra is not None and extra != self.extra:
                self.extra = extra
                self._dirty = True
            if self._bar is not None:
                self._bar.set_postfix_str(self.extra, refresh=False)
                self._bar.close()
                self._redirect.__exit__(None, None, None)
            elif self._dirty:
                self._line(finished=True)

    def _line(self, finished: bool = False) -> None:
        self._dirty = False
        self.write(self.text(finished))

    def _write_line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _number(value: float):
    """Whole counts print as 42, not 42.0."""
    return int(value) if float(value).is_integer() else value
