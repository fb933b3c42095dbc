"""metrics.jsonl: one JSON object per line (step, epoch, eval records) for tools and reports.

The file stays strict JSON Lines: non-finite numbers (a diverged loss) are written as null,
since NaN/Infinity are not JSON. A run killed mid-write leaves a partial last line: readers
skip and count it, and the next writer (the resumed run) starts on a fresh line first.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

log = logging.getLogger("core.train.metrics")


def finite_or_null(value):
    """`value` with every non-finite float (also inside lists and dicts) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


class MetricsWriter:
    """Appends records; only the writing rank opens the file, so ranks never interleave."""

    def __init__(self, path: Path | None):
        self.path = Path(path) if path else None
        self._checked_end = False
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record_type: str, **fields) -> None:
        if not self.path:
            return
        record = finite_or_null({"type": record_type, "time": round(time.time(), 3), **fields})
        text = json.dumps(record, allow_nan=False) + "\n"
        if not self._checked_end:  # once per run: after a kill mid-line, start a fresh line
            text = ("\n" if ends_mid_line(self.path) else "") + text
            self._checked_end = True
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(text)


def ends_mid_line(path: Path) -> bool:
    """Whether a JSON Lines file was cut short inside its last line (a kill mid-write)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            if fh.tell() == 0:
                return False
            fh.seek(-1, 2)
            return fh.read(1) != b"\n"
    except FileNotFoundError:
        return False


def read_metrics_counted(path: str | Path) -> tuple[list[dict], int]:
    """(records, lines skipped): a line that is not a JSON object (cut short by a kill) is
    skipped and counted, never fatal."""
    records, skipped = [], 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict):
                records.append(record)
            else:
                skipped += 1
    return records, skipped


def read_metrics(path: str | Path) -> list[dict]:
    """The records of metrics.jsonl; partial lines are skipped with a warning."""
    records, skipped = read_metrics_counted(path)
    if skipped:
        log.warning("%s: skipped %d partial line(s) (a run killed mid-write)", path, skipped)
    return records
