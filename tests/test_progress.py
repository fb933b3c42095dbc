"""launcher.progress: a redrawn bar at a terminal, plain periodic lines in log files."""
from __future__ import annotations

import io
import logging
import threading

from launcher.progress import CLEAR_LINE, EpochProgress, ProgressBar, format_duration, staging_hook


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
    out, clock = FakeTTY(), Clock()
    bar = ProgressBar(10, "stage", out, width=10, clock=clock)
    for i in range(1, 11):
        clock.now += 1
        bar.update(i, extra=f"item {i}")
    bar.close()
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")  # one line, rewritten in place
    assert text.count(CLEAR_LINE) == 10
    last = text.rsplit(CLEAR_LINE, 1)[1]
    assert last.startswith("stage [##########] 100% 10/10 00:10 item 10")
    middle = text.split(CLEAR_LINE)[5]
    assert "[#####.....]  50% 5/10 00:05<00:05 item 5" in middle  # elapsed<remaining


def test_tty_redraws_are_throttled():
    out, clock = FakeTTY(), Clock()
    bar = ProgressBar(1000, "x", out, clock=clock, redraw_s=0.5)
    for i in range(100):
        clock.now += 0.01
        bar.update(i)
    assert out.getvalue().count(CLEAR_LINE) == 2  # t=0.01 and t=0.51


def test_file_output_is_periodic_plain_lines():
    out, clock = io.StringIO(), Clock()
    bar = ProgressBar(100, "download", out, interval_s=30, clock=clock)
    for i in range(1, 101):
        clock.now += 1
        bar.update(i)
    bar.close()
    got = lines(out)
    assert "\r" not in out.getvalue() and "[" not in out.getvalue()
    assert got[0] == "download   1% 1/100 00:01<01:39"
    assert len(got) == 5  # at 1, 31, 61, 91 s, and the final line
    assert got[-1] == "download 100% 100/100 01:40"


def test_log_records_clear_the_bar_first():
    out = FakeTTY()
    root = logging.getLogger()
    handler = logging.StreamHandler(out)
    root.addHandler(handler)
    try:
        bar = ProgressBar(4, "epoch 1/1", out, clock=Clock())
        bar.update(1)
        logging.getLogger("core.train").warning("a log line")
        bar.update(2)  # drawn again at once, although within the redraw interval
        bar.close()
        assert not handler.filters  # released at close
    finally:
        root.removeHandler(handler)
    text = out.getvalue()
    before, after = text.split("a log line\n")
    assert before.endswith(CLEAR_LINE) and "epoch 1/1" in before
    assert after.startswith(CLEAR_LINE + "epoch 1/1")
    assert "1/4" not in after.split("\n")[0].split(CLEAR_LINE)[-1]


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
    assert finished[0].rsplit(CLEAR_LINE, 1)[1].startswith("epoch 1/2 [" + "#" * 28 + "] 100% 4/4")
    assert "avg loss 1.0000, 40.0 s" in finished[1]
    assert "loss 0.6667 lr 0.01000 12.5 img/s" in finished[0]  # step 3's report


def test_epoch_callback_in_a_log_file_writes_lines_with_time_left():
    out = io.StringIO()
    run_callback(out, Clock())
    got = lines(out)
    assert "\r" not in out.getvalue()
    assert got[0] == ("epoch 1/2  25% 1/4 00:00<00:00 loss 2.0000 lr 0.01000 12.5 img/s"
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


def test_staging_hook_from_threads():
    out, clock = io.StringIO(), Clock()
    hook = staging_hook("stage s3://b/data", out, interval_s=0, clock=clock)
    total = 8 * 1024 * 1024
    done = {"bytes": 0, "files": 0}
    lock = threading.Lock()

    def worker():
        for _ in range(4):
            with lock:
                clock.now += 0.5
                done["bytes"] += 1024 * 1024
                done["files"] += 1
                hook(done["files"], 8, done["bytes"], total)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    hook.close()
    got = lines(out)
    assert got[-1].startswith("stage s3://b/data 100% 8.0/8.0 00:04 MB, 8/8 files, 2.0 MB/s")
    assert len(got) == 8  # interval 0: every call; close adds nothing new


def test_format_duration():
    assert format_duration(5) == "00:05" and format_duration(3725) == "1:02:05"
