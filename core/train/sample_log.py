"""samples.jsonl, the sample ledger (data.sample_log=true): which samples each global step trained on.

Rank 0 appends one JSON line per global step, `{"step": S, "epoch": E, "samples": [...]}`: S and E
as in metrics.jsonl (S the global step reached, E the epochs completed at it), and the step's
global batch in order (rank 0's slice first, then rank 1's, ...), each sample named by its file
path relative to the split ('<class>/<file>', the same for an ImageFolder and its pack). The names
come from the epoch's sample order (core.data.pipeline.epoch_order), which every rank shares, so
rank 0 names the whole global batch without asking the others; an unreadable image is listed
under its own name (what replaced it is in metrics.jsonl's "corrupt" record).

Like metrics.jsonl, the file is appended to: a killed run may leave a partial last line (the
next writer starts a fresh line first, readers skip it), and a resumed run appends the steps it
runs. Steps after the resumed checkpoint that a killed run had already logged appear again; a
reader keeps the newest branch: a line whose step is not past the one before it replaces every
earlier line from its step on (read_sample_log).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from core.train.metrics import ends_mid_line, read_metrics_counted

SAMPLES_NAME = "samples.jsonl"


class SampleLedger:
    """Rank 0's writer of samples.jsonl for one run (open between `open` and `close`)."""

    def __init__(self, path: Path, split, data_cfg, seed: int, global_batch: int, per_epoch: int):
        self.path = Path(path)
        self.split = split
        self.data_cfg = data_cfg
        self.seed = seed
        self.global_batch = global_batch
        self.per_epoch = per_epoch
        self._epoch: Optional[int] = None
        self._order: Optional[np.ndarray] = None
        self._file = None

    def open(self) -> "SampleLedger":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh_line = ends_mid_line(self.path)  # a killed run's partial line stays on its own
        self._file = open(self.path, "a", encoding="utf-8")
        if fresh_line:
            self._file.write("\n")
        return self

    def samples(self, step: int) -> list[str]:
        """The names of global step `step`'s samples (the step that brings the count to
        `step`), in global-batch order."""
        epoch, within = divmod(step - 1, self.per_epoch)
        if epoch != self._epoch:
            self._order = self.split.epoch_order(self.data_cfg, self.seed, epoch)
            self._epoch = epoch
        first = within * self.global_batch
        return self.split.sample_names(self._order[first:first + self.global_batch])

    def write(self, step: int) -> None:
        """The line of global step `step`, written through (a kill loses at most this line)."""
        record = {"step": step, "epoch": step // self.per_epoch, "samples": self.samples(step)}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_sample_log(path: str | Path) -> tuple[list[dict], int]:
    """(records of the live branch in step order, partial lines skipped). A record whose step is
    not past its predecessor's (a resumed run re-running steps a killed run had logged, or a
    resume from an older checkpoint) drops every earlier record from its step on."""
    records, skipped = read_metrics_counted(path)
    live: list[dict] = []
    for record in records:
        step = record.get("step")
        if not isinstance(step, int):
            skipped += 1
            continue
        while live and live[-1]["step"] >= step:
            live.pop()
        live.append(record)
    return live, skipped
