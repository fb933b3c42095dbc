"""The hang watchdog every rank runs (train.hang_timeout_s).

A rank stuck in a collective (a dead peer, a network partition) or anywhere else would otherwise
wait until ModelArts' hang detection (MA_HANG_DETECT_TIME, 30 min by default) or the job's end.
The trainer asks every callback `stop_requested()` after every step; this callback takes that as
the heartbeat (and every other event: epoch end, validation, checkpoints). When no heartbeat came
for `hang_timeout_s` (three times that before the first step: graph compilation), a thread logs
which rank hung after which step, every thread's stack of this process, and ends the process with
EXIT_HUNG, so the launcher fails the job and the restart policy applies (--max_retries, and
--unconditional_retry for an exit code other than 0). Checkpoints are written atomically and the
watchdog deletes nothing: the last good one stays for the restart.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
import traceback
from typing import Optional

from core.train.callbacks import Callback

log = logging.getLogger("launcher.watchdog")
EXIT_HUNG = 75
FIRST_STEP_FACTOR = 3.0
# A rank whose main thread is inside the compiled training step (its all-reduce waits for the
# others) fires this fraction of the timeout later than one stuck elsewhere: the rank that is
# stuck outside the step names itself first, and the launcher then ends the others.
VICTIM_GRACE = 0.5


def in_training_step(thread_id: Optional[int] = None) -> bool:
    """Whether the (main) thread is inside a MindSpore compiled graph call (a train step)."""
    frame = sys._current_frames().get(thread_id or threading.main_thread().ident)
    while frame is not None:
        code = frame.f_code
        if "mindspore" in code.co_filename and code.co_name in ("_exec_pip", "compile_and_run"):
            return True
        frame = frame.f_back
    return False


class HangWatchdog(Callback):
    def __init__(self, timeout_s: float, rank: int = 0, exit=os._exit):
        self.timeout_s = float(timeout_s)
        self.rank = rank
        self._exit = exit
        self.step: Optional[int] = None     # last completed global step (None: none yet)
        self.start_step = 0
        self.calls = 0
        self.deferred = False
        self.beat = time.monotonic()
        self._done = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # --- heartbeats ------------------------------------------------------------------------
    def on_train_begin(self, info):
        self.rank = int(info.get("rank", self.rank))
        self.start_step = int(info.get("start_step", 0))
        self.beat = time.monotonic()
        if self.timeout_s > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._watch, daemon=True, name="hang-watchdog")
            self._thread.start()

    def stop_requested(self) -> bool:  # asked once after every step
        self.calls += 1
        self.step = max(self.step or 0, self.start_step + self.calls)
        self.beat = time.monotonic()
        self.deferred = False
        return False

    def _alive(self, *_):
        self.beat = time.monotonic()
        self.deferred = False

    on_epoch_end = on_eval = _alive

    def on_step_end(self, info):  # a progress report: names the step exactly
        self.step = int(info.get("step", self.step or 0))
        self._alive()

    def on_checkpoint(self, path, meta):
        self._alive()

    def on_train_end(self, summary):
        self._done.set()

    # --- the watch -------------------------------------------------------------------------
    def limit(self) -> float:
        return self.timeout_s * (FIRST_STEP_FACTOR if self.step is None else 1.0)

    def _watch(self) -> None:
        while not self._done.wait(min(0.5, self.timeout_s / 10)):
            idle = time.monotonic() - self.beat
            limit = self.limit() * (1.0 + VICTIM_GRACE if self.deferred else 1.0)
            if idle <= limit:
                continue
            if not self.deferred and in_training_step():
                # waiting in the step's collectives, most likely for a peer stuck elsewhere:
                # give that peer the time to name itself first
                self.deferred = True
                continue
            self._fire(idle)
            return

    def _fire(self, idle: float) -> None:
        where = (f"after step {self.step}" if self.step is not None
                 else f"before its first step (resumed at step {self.start_step})")
        how = ("inside the training step, waiting in its collectives (a dead peer, a network "
               "partition?)" if in_training_step() else "outside the training step (see the "
               "main thread's stack)")
        log.error("rank %d hung: no training step completed for %.0f s (train.hang_timeout_s=%g), "
                  "%s, %s. Every thread's stack follows; exiting with code %d so the job fails "
                  "and its restart policy applies (the last good checkpoint is kept)",
                  self.rank, idle, self.timeout_s, where, how, EXIT_HUNG)
        frames = sys._current_frames()
        for thread in threading.enumerate():
            frame = frames.get(thread.ident)
            if frame is None or thread is threading.current_thread():
                continue
            stack = "".join(traceback.format_stack(frame))
            log.error("rank %d thread %r stack:\n%s", self.rank, thread.name, stack.rstrip())
        for handler in logging.getLogger().handlers:
            try:
                handler.flush()
            except Exception:  # flushing is best effort on the way out
                pass
        sys.stdout.flush()
        sys.stderr.flush()
        self._exit(EXIT_HUNG)
