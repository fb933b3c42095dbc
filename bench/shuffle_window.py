"""Shard-window shuffle quality at ImageNet scale: distinct classes per batch (no timing).

A packed ImageNet written in class order (as `pack` writes any ImageFolder): 1,000 classes of
1,281 images, shards of 2,300 images (256 MB at ImageNet's ~110 KB a JPEG), so every shard holds
one or two classes. For each data.shuffle_window, the mean number of distinct classes in a
device batch of 150 and a global batch of 1,200 (8 x 150) over one epoch of the real order
(core.data.pipeline.epoch_order), against the full shuffle's, and the shards a streaming reader
holds (the window's; data.prefetch_shards come on top).

    .venv/bin/python bench/shuffle_window.py [--windows 16,64,128,256] [--epochs 1]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.data.pipeline import epoch_order  # noqa: E402

CLASSES, PER_CLASS, PER_SHARD, SHARD_MB = 1000, 1281, 2300, 256


def distinct_per_batch(labels: np.ndarray, order: np.ndarray, batch: int) -> float:
    steps = len(order) // batch
    batches = np.sort(labels[order[:steps * batch]].reshape(steps, batch), axis=1)
    return float(np.mean(1 + np.count_nonzero(np.diff(batches, axis=1), axis=1)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--windows", default="16,64,128,256")
    p.add_argument("--epochs", type=int, default=1)
    args = p.parse_args(argv)
    labels = np.repeat(np.arange(CLASSES), PER_CLASS)
    total = len(labels)
    sizes = [PER_SHARD] * (total // PER_SHARD) + ([total % PER_SHARD] if total % PER_SHARD else [])
    print(f"{total} images in {len(sizes)} shards of {PER_SHARD} ({SHARD_MB} MB), class order\n")
    print("| data.shuffle_window | shards held (GB) | classes per batch of 150 | of 1,200 |")
    print("|---|---|---|---|")
    rows = [0] + [int(w) for w in args.windows.split(",")]
    full = None
    for window in rows:
        result = []
        for batch in (150, 1200):
            result.append(np.mean([distinct_per_batch(labels, epoch_order(total, 1, e, sizes, window), batch)
                                   for e in range(args.epochs)]))
        if window == 0:
            full = result
            held = f"all {len(sizes)} ({len(sizes) * SHARD_MB / 1024:.0f})"
            name = "0 (full shuffle)"
        else:
            windows = -(-len(sizes) // window)
            largest = -(-len(sizes) // windows)  # windows of at most `window`, sizes within 1
            held = f"{largest} ({largest * SHARD_MB / 1024:.1f})"
            name = str(window)
        cells = [f"{r:.0f}" + ("" if window == 0 else f" ({r / f:.2f}x)") for r, f in zip(result, full)]
        print(f"| {name} | {held} | {cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
