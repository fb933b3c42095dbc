"""The pixel normalisation every path shares (training graph, eval pipelines, native decoder),
in one place so none of them can drift from the others."""
from __future__ import annotations


def pixel_normalization(data_cfg) -> tuple[list[float], list[float]]:
    """Per-channel (mean, std) on the 0-255 pixel scale."""
    return [m * 255 for m in data_cfg.mean], [s * 255 for s in data_cfg.std]
