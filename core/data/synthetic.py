"""The embedded default dataset: small, deterministic, learnable JPEG ImageFolder.

Generated from this code on first use (nothing is downloaded), so `make demo` and the tests
have real JPEG files to decode. Each class is a visual pattern (shape or texture) drawn with
random colours, position, scale and noise, so a network must learn shape, not colour.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

CLASSES = ("checkerboard", "circle", "cross", "diagonal", "dots", "horizontal", "ring",
           "square", "triangle", "vertical")
VERSION = 1
MARKER = ".synthetic_complete.json"


def _pattern(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask of one class's pattern with random geometry."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = rng.uniform(0.35, 0.65, 2) * size
    radius = rng.uniform(0.22, 0.38) * size
    period = rng.uniform(0.12, 0.22) * size
    phase = rng.uniform(0, period)
    if name == "circle":
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
    if name == "ring":
        dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        return (dist <= radius) & (dist >= radius * 0.6)
    if name == "square":
        return (np.abs(yy - cy) <= radius * 0.85) & (np.abs(xx - cx) <= radius * 0.85)
    if name == "triangle":
        top, height = cy - radius, 2 * radius
        rel = (yy - top) / height
        return (rel >= 0) & (rel <= 1) & (np.abs(xx - cx) <= rel * radius)
    if name == "cross":
        arm = radius * 0.3
        return ((np.abs(yy - cy) <= arm) | (np.abs(xx - cx) <= arm)) & \
               (np.abs(yy - cy) <= radius) & (np.abs(xx - cx) <= radius)
    if name == "horizontal":
        return ((yy + phase) % period) < period / 2
    if name == "vertical":
        return ((xx + phase) % period) < period / 2
    if name == "diagonal":
        return ((xx + yy + phase) % (period * 1.4)) < period * 0.7
    if name == "checkerboard":
        return (((yy + phase) // period + (xx + phase) // period) % 2) == 0
    if name == "dots":
        return (((yy + phase) % period - period / 2) ** 2 + ((xx + phase) % period - period / 2) ** 2
                ) <= (period * 0.3) ** 2
    raise ValueError(f"unknown pattern {name}")


def render(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One RGB uint8 image of class `name`."""
    mask = _pattern(name, size, rng)[..., None]
    background = rng.uniform(0, 255, 3)
    foreground = rng.uniform(0, 255, 3)
    while np.abs(foreground - background).sum() < 150:  # keep the pattern visible
        foreground = rng.uniform(0, 255, 3)
    image = np.where(mask, foreground, background) + rng.normal(0, 12, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _encode_jpeg(image: np.ndarray) -> bytes:
    from mindspore.dataset import vision  # local import: generation is rare, keep import light
    return vision.encode_jpeg(image, quality=90).tobytes()


def generate(root: str | os.PathLike, train_per_class: int = 100, val_per_class: int = 30,
             size: int = 96, seed: int = 0) -> Path:
    """Write `<root>/{train,val}/<class>/*.jpg`; same arguments give the same bytes."""
    root = Path(root)
    for split, count, split_seed in (("train", train_per_class, seed), ("val", val_per_class, seed + 1)):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng([split_seed, label])
            for index in range(count):
                data = _encode_jpeg(render(name, size, rng))
                target = folder / f"{name}_{index:04d}.jpg"
                tmp = target.with_suffix(".tmp")
                tmp.write_bytes(data)
                os.replace(tmp, target)
    return root


def ensure_demo_dataset(root: str | os.PathLike, **kwargs) -> Path:
    """Generate the demo dataset once; a marker records the parameters it was made with."""
    root = Path(root)
    params = {"version": VERSION, "train_per_class": 100, "val_per_class": 30, "size": 96, "seed": 0}
    params.update(kwargs)
    marker = root / MARKER
    if marker.exists():
        try:
            if json.loads(marker.read_text()) == params:
                return root
        except (OSError, ValueError):
            pass
    generate(root, **{k: v for k, v in params.items() if k != "version"})
    marker.write_text(json.dumps(params))
    return root
