"""Callbacks that tests inject into training runs (tests/hooks/sitecustomize.py installs them in
the processes a test starts; in-process tests use the classes directly).

  MNV3_TEST_DUMP_DIR=DIR   each rank writes DIR/rank<R>.npz (its trainable weights after
                           training) and DIR/rank<R>.json (rank, world, summary status and step,
                           and the image files its input pipeline read, per split folder: as a
                           set in "read" and in read order in "order").
  MNV3_TEST_CRASH_AT=R:S   rank R raises RuntimeError at the first progress report at or after
                           global step S (train.log_interval=1 for exactness).
  MNV3_TEST_HANG_AT=R:S    rank R blocks for good (a sleep in the main thread, as a rank stuck
                           in a collective) at the first progress report at or after step S.
  MNV3_TEST_SIGTERM_AT=S   rank 0 sends SIGTERM to the launcher (the nearest of itself and its
                           ancestors running launcher/local.py), as a platform stopping the job
                           would, at the first progress report at or after global step S, then
                           holds its step for 2 s (its peers wait for it in the step's
                           collectives) so the forwarded signal is in every rank before the
                           next step: a stop at a known point of the run.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
from pathlib import Path

from core.train.callbacks import Callback


class CrashAt(Callback):
    """An injected failure, for testing crash propagation."""

    def __init__(self, spec: str):
        try:
            rank, step = (int(part) for part in spec.split(":"))
        except ValueError:
            raise ValueError(f"MNV3_TEST_CRASH_AT={spec!r}: expected RANK:STEP") from None
        self.crash_rank, self.crash_step, self.rank = rank, step, None

    def on_train_begin(self, info):
        self.rank = info["rank"]

    def on_step_end(self, info):
        if self.rank == self.crash_rank and info["step"] >= self.crash_step:
            raise RuntimeError(f"injected crash (MNV3_TEST_CRASH_AT) on rank {self.rank} at "
                               f"step {info['step']}")


class HangAt(CrashAt):
    """An injected hang, for testing the hang watchdog (launcher/watchdog.py)."""

    def on_step_end(self, info):
        if self.rank == self.crash_rank and info["step"] >= self.crash_step:
            import time
            print(f"injected hang (MNV3_TEST_HANG_AT) on rank {self.rank} at step {info['step']}",
                  flush=True)
            while True:
                time.sleep(3600)


class SigtermAt(Callback):
    """An injected SIGTERM to the launcher, for testing a stop at a known step."""

    def __init__(self, spec: str):
        self.step, self.rank, self.sent = int(spec), None, False

    def on_train_begin(self, info):
        self.rank = info["rank"]

    def on_step_end(self, info):
        if self.rank != 0 or self.sent or info["step"] < self.step:
            return
        import signal
        import time

        import psutil
        me = psutil.Process()
        launcher = next((p for p in [me, *me.parents()]
                         if any(arg.endswith("launcher/local.py") for arg in p.cmdline())), me)
        print(f"injected SIGTERM (MNV3_TEST_SIGTERM_AT) to pid {launcher.pid} at step {info['step']}",
              flush=True)
        self.sent = True
        os.kill(launcher.pid, signal.SIGTERM)
        time.sleep(2.0)


class DebugDump(Callback):
    """Per-rank trainable weights and the image files the input pipeline read.

    The trainer hands callbacks no network and the input pipeline reports no files, so while
    `recording()` is active this wraps core.train.run.build_model (keeping the first network) and the
    `open` that core.data.imagefolder reads images with (noting each file opened: what was read, also
    when a resumed epoch starts part-way through its order)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.net = None
        self.order: dict[str, list] = {}
        self.rank, self.world = 0, 1

    @contextlib.contextmanager
    def recording(self):
        import core.data.imagefolder
        import core.train.run
        build = core.train.run.build_model

        def recording_build(*args, **kwargs):
            net = build(*args, **kwargs)
            if self.net is None:
                self.net = net
            return net

        def recording_open(file, *args, **kwargs):
            self.order.setdefault(str(Path(file).parent.parent), []).append(str(file))
            return open(file, *args, **kwargs)

        core.train.run.build_model, core.data.imagefolder.open = recording_build, recording_open
        try:
            yield self
        finally:
            core.train.run.build_model = build
            del core.data.imagefolder.open

    def on_train_begin(self, info):
        self.rank, self.world = info["rank"], info["world"]

    def on_train_end(self, summary):
        import numpy as np
        self.folder.mkdir(parents=True, exist_ok=True)
        weights = {p.name: p.asnumpy() for p in self.net.trainable_params()} if self.net else {}
        np.savez(self.folder / f"rank{self.rank}.npz", **weights)
        record = {"rank": self.rank, "world": self.world, "status": summary.get("status"),
                  "step": summary.get("step"),
                  "read": {root: sorted(set(files)) for root, files in self.order.items()},
                  "order": self.order}
        (self.folder / f"rank{self.rank}.json").write_text(json.dumps(record, indent=1))


def callbacks_from_environ(environ=os.environ) -> list:
    found = []
    if environ.get("MNV3_TEST_CRASH_AT"):
        found.append(CrashAt(environ["MNV3_TEST_CRASH_AT"]))
    if environ.get("MNV3_TEST_HANG_AT"):
        found.append(HangAt(environ["MNV3_TEST_HANG_AT"]))
    if environ.get("MNV3_TEST_SIGTERM_AT"):
        found.append(SigtermAt(environ["MNV3_TEST_SIGTERM_AT"]))
    if environ.get("MNV3_TEST_DUMP_DIR"):
        found.append(DebugDump(environ["MNV3_TEST_DUMP_DIR"]))
    return found


def instrumented(train):
    """core.train.loop.train with the environment's callbacks added to the caller's (and, for a
    DebugDump, recording while it runs)."""
    signature = inspect.signature(train)

    @functools.wraps(train)
    def wrapper(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        hooks = callbacks_from_environ()
        bound.arguments["callbacks"] = (*bound.arguments.get("callbacks", ()), *hooks)
        dump = next((c for c in hooks if isinstance(c, DebugDump)), None)
        with dump.recording() if dump else contextlib.nullcontext():
            return train(*bound.args, **bound.kwargs)

    return wrapper
