"""metrics.jsonl stays strict JSON Lines: non-finite numbers become null, a line cut short by a
kill is skipped and counted by every reader, and the next writer starts on a fresh line."""
from __future__ import annotations

import json

from core.train.metrics import MetricsWriter, read_metrics, read_metrics_counted
from launcher.report import make_report


def _strict(line: str) -> dict:
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(line, parse_constant=refuse)


def test_non_finite_numbers_are_written_as_null(tmp_path):
    path = tmp_path / "metrics.jsonl"
    MetricsWriter(path).write("step", step=3, loss=float("nan"), lr=float("inf"),
                              nested={"x": [1.0, float("-inf")]})
    record = _strict(path.read_text().splitlines()[0])
    assert record["loss"] is None and record["lr"] is None and record["nested"] == {"x": [1.0, None]}
    assert record["step"] == 3


def test_a_writer_after_a_kill_mid_line_starts_on_a_fresh_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"type": "step", "step": 1}) + "\n" + '{"type": "step", "st')
    MetricsWriter(path).write("step", step=2, loss=1.5)  # the resumed run
    records, skipped = read_metrics_counted(path)
    assert [r["step"] for r in records] == [1, 2] and skipped == 1
    assert [r["step"] for r in read_metrics(path)] == [1, 2]


def test_report_reads_a_killed_and_resumed_run_and_counts_the_cut_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(
        json.dumps({"type": "step", "epoch": 0, "step": 2, "loss": 2.0, "lr": 0.1,
                    "images_per_sec": 10.0}) + "\n" + '{"type": "step", "epoch": 0, "st')
    MetricsWriter(run / "metrics.jsonl").write("step", epoch=0, step=4, loss=1.25, lr=0.1,
                                               images_per_sec=10.0)
    text = make_report(str(run), tmp_path / "out", plots=False).read_text()
    assert "Last logged loss 1.2500" in text
    assert "1 partial line" in text


def test_report_of_a_diverged_run_says_non_finite(tmp_path):
    run = tmp_path / "run"
    MetricsWriter(run / "metrics.jsonl").write("step", epoch=0, step=2, loss=float("nan"), lr=0.1,
                                               images_per_sec=10.0)
    text = make_report(str(run), tmp_path / "out", plots=False).read_text()
    assert "Last logged loss non-finite" in text
