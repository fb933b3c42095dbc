"""core.progress and launcher.progress: a tqdm bar at a terminal, plain periodic lines in files."""
from __future__ import annotations

import io
import logging
import sys
import threading

from core.progress import Progress, format_duration
from launcher.progress import EpochProgress


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def lines(stream):
    return [line for line in stream.getvalue().split("\n") if line]


def test_tty_bar_redraws_in_place_and_ends_its_line():
    out = FakeTTY()
    bar = Progress(10, "stage", out, redraw_s=0)
    for i in range(1, 11):
        bar.update(i, extra=f"item {i}")
    bar.close()
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")  # one line, rewritten in place
    assert text.count("\r") >= 10
    last = text.rsplit("\r", 1)[1]
    assert last.startswith("stage 100%|") and "10/10" in last and "item 10" in last
    assert any("50%|" in part and "5/10" in part for part in text.split("\r"))


def test_file_output_is_periodic_plain_lines():
    out, clock = io.StringIO(), Clock()
    bar = Progress(100, "download", out, interval_s=30, clock=clock)
    for i in range(1, 101):
        clock.now += 1
        bar.update(i)
    bar.close()
    got = lines(out)
    assert "\r" not in out.getvalue() and "|" not in out.getvalue()
    assert got[0] == "download   1% 1/100 00:01<01:39"
    assert len(got) == 5  # at 1, 31, 61, 91 s, and the final line
    assert got[-1] == "download 100% 100/100 01:40"


def test_plain_lines_can_go_to_a_logger_and_count_bytes():
    got, clock = [], Clock()
    bar = Progress(8_000_000, "upload s3://b/x", io.StringIO(), interval_s=0, unit="B",
                   write=got.append, clock=clock)
    clock.now += 2
    bar.add(4_000_000, "4/8 files")
    assert got == ["upload s3://b/x  50% 4.00M/8.00M 00:02<00:02, 2.00MB/s, 4/8 files"]


def test_log_records_at_a_terminal_get_their_own_line(monkeypatch):
    out = FakeTTY()
    monkeypatch.setattr(sys, "stdout", out)
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stdout)  # a console handler, as launcher.common sets up
    root.addHandler(handler)
    try:
        bar = Progress(4, "epoch 1/1", redraw_s=0)
        bar.update(1)
        logging.getLogger("core.train.loop").warning("a log line")
        bar.update(2)
        bar.close()
        assert handler in root.handlers  # the redirect ends with the bar
    finally:
        root.removeHandler(handler)
    text = out.getvalue()
    before, after = text.split("a log line\n")
    assert "epoch 1/1" in before and before.endswith("\r")  # the bar was wiped first
    assert after.startswith("\repoch 1/1")  # and drawn again below the log line


def run_callback(stream, clock):
    cb = EpochProgress(stream, interval_s=60, clock=clock)
    cb.on_train_begin({"rank": 0, "world": 1, "steps_per_epoch": 4, "start_step": 0, "total_steps": 8})
    for step in range(1, 9):
        clock.now += 10
        epoch = (step - 1) // 4
        cb.on_step_end({"epoch": epoch, "step": step, "loss": 2.0 / step, "lr": 0.01,
                        "images_per_sec": 12.5})
        if step % 4 == 0:
            cb.on_epoch_end({"epoch": epoch, "step": step, "avg_loss": 1.0, "epoch_time_ms": 40000,
                             "per_step_ms": 10000})
    cb.on_train_end({"status": "completed"})


def test_epoch_callback_at_a_terminal_draws_one_bar_per_epoch():
    out = FakeTTY()
    run_callback(out, Clock())
    finished = out.getvalue().split("\n")
    assert len(finished) == 3 and finished[2] == ""  # two completed epoch lines
    assert finished[0].rsplit("\r", 1)[1].startswith("epoch 1/2 100%|")
    assert "4/4" in finished[0] and "avg loss 1.0000, 40.0 s" in finished[0]
    assert "avg loss 1.0000, 40.0 s" in finished[1]


def test_epoch_callback_in_a_log_file_writes_lines_with_time_left():
    out = io.StringIO()
    run_callback(out, Clock())
    got = lines(out)
    assert "\r" not in out.getvalue()
    # timed from the epoch's start, not from its first report (was: 00:00<?, and mid-epoch
    # lines stuck at 00:00<00:00 when the first report came with the first line)
    assert got[0] == ("epoch 1/2  25% 1/4 00:10<00:30, loss 2.0000 lr 0.01000 12.5 img/s"
                      " | run 1/8 steps, 01:10 left")
    assert got[1].startswith("epoch 1/2 100% 4/4") and got[1].endswith("avg loss 1.0000, 40.0 s")
    assert len(got) == 4


def test_other_ranks_stay_quiet():
    out = FakeTTY()
    cb = EpochProgress(out)
    cb.on_train_begin({"rank": 1, "world": 2, "steps_per_epoch": 4, "start_step": 0, "total_steps": 8})
    cb.on_step_end({"epoch": 0, "step": 1, "loss": 1.0, "lr": 0.1, "images_per_sec": 1.0})
    cb.on_train_end({})
    assert out.getvalue() == ""


def test_updates_from_threads_are_all_counted():
    out, clock = io.StringIO(), Clock()
    bar = Progress(800, "stage", out, interval_s=0, clock=clock)
    threads = [threading.Thread(target=lambda: [bar.add(1) for _ in range(100)]) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bar.close()
    assert bar.done == 800 and lines(out)[-1].startswith("stage 100% 800/800")


def test_format_duration():
    assert format_duration(5) == "00:05" and format_duration(3725) == "1:02:05"


def test_a_resumed_epoch_counts_only_the_steps_it_ran():
    """Resumed at step 6 of an 8-step epoch: the rate comes from the steps run since."""
    out, clock = io.StringIO(), Clock()
    cb = EpochProgress(out, interval_s=60, clock=clock)
    cb.on_train_begin({"rank": 0, "world": 1, "steps_per_epoch": 8, "start_step": 6, "total_steps": 8})
    clock.now += 10
    cb.on_step_end({"epoch": 0, "step": 7, "loss": 1.0, "lr": 0.01, "images_per_sec": 3.2})
    assert lines(out)[0].startswith("epoch 1/1  88% 7/8 00:10<00:10, loss 1.0000"), lines(out)
