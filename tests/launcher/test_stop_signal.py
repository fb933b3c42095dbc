"""Ctrl-C (SIGINT) stops a run like SIGTERM, and the log names the signal that arrived."""
from __future__ import annotations

import logging
import os
import signal
import sys
import time

from launcher.distributed import Supervisor
from launcher.signals import StopOnSignal


def test_sigint_requests_a_checkpointed_stop_and_the_log_names_sigint(caplog):
    stop = StopOnSignal().install()
    try:
        with caplog.at_level(logging.WARNING, logger="launcher.signals"):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler runs between bytecodes of the main thread
    finally:
        stop.uninstall()
    assert stop.stop_requested()
    assert "stop on SIGINT" in caplog.text and "SIGTERM" not in caplog.text


def test_a_second_sigint_interrupts_at_once():
    stop = StopOnSignal().install()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert stop.requested
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
        except KeyboardInterrupt:
            interrupted = True
        else:
            interrupted = False
    finally:
        stop.uninstall()
    assert interrupted


RANK = ("import signal, sys, time\n"
        "def on(s, f):\n"
        "    print('got', signal.Signals(s).name, flush=True); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, on); signal.signal(signal.SIGINT, on)\n"
        "print('ready', flush=True); time.sleep(30)\n")


class _Lines:
    def __init__(self):
        self.lines = []

    def line(self, label, text):
        self.lines.append(text.strip())


def test_the_launcher_forwards_the_signal_that_arrived_to_every_rank():
    sup = Supervisor(grace_s=20, console=_Lines())
    sup.start([sys.executable, "-c", RANK], dict(os.environ), "rank 0")
    deadline = time.monotonic() + 20
    while "ready" not in sup.console.lines and time.monotonic() < deadline:
        time.sleep(0.05)
    sup._on_signal(signal.SIGINT, None)  # Ctrl-C at the launcher
    assert sup.wait() == 0
    assert "got SIGINT" in sup.console.lines
    assert "stopped on SIGINT" in sup.outcome()
