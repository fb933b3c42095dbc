"""metrics.jsonl: one JSON object per line (step, epoch, eval records) for tools and reports."""
from __future__ import annotations

import json
import time
from pathlib import Path


class MetricsWriter:
    """Appends records; only the writing rank opens the file, so ranks never interleave."""

    def __init__(self, path: Path | None):
        self.path = Path(path) if path else None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record_type: str, **fields) -> None:
        if not self.path:
            return
        record = {"type": record_type, "time": round(time.time(), 3), **fields}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")


def read_metrics(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
