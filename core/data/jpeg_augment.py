"""Training augmentation from JPEG bytes with the project's native operator.

What the training pipeline does per image (random-resized crop, horizontal flip, colour
jitter) in one call into `core/kernels/libmnv3_jpeg.so`, which decodes only the crop's part
of the JPEG with Pillow's SIMD libjpeg-turbo. MindSpore 2.10's dataset engine carries a
libjpeg-turbo built without SIMD, and decoding is most of the pipeline's time (bench/README.md).

Every random number of an epoch belongs to a sample's global position: row p of one stream per
(seed, epoch), `PARAM_COLUMNS` draws a row, reached by jumping the generator ahead
(position_params). An image's augmentation depends only on (seed, epoch, position): not on
thread timing, the rank that reads it or the number of processes, and a resumed epoch starts
at its first unseen batch without decoding the ones before it. The crop follows torchvision's / MindSpore's RandomResizedCrop (10 tries, then
a centre crop); colour jitter applies brightness, contrast and saturation in a random order.
Images that are not plain JPEGs (PNG, BMP, WebP, TIFF, GIF, PPM/PGM, CMYK JPEGs) are decoded
by Pillow and get the same augmentation; bytes after a JPEG's end marker are never read. Without the built library, core.data.sources falls back to MindSpore's own ops.
"""
from __future__ import annotations

import ctypes
import math
import re
from itertools import permutations
from pathlib import Path
from typing import Optional

import numpy as np

from core.data.image_formats import (DEFAULT_MAX_IMAGE_PIXELS, image_size, pillow_open, size_problem,
                                too_large_message)
from core.native import KERNEL_DIR, built_library, open_library


SOURCE = KERNEL_DIR / "jpeg_augment.cc"
LIBRARY = KERNEL_DIR / "libmnv3_jpeg.so"

ATTEMPTS = 10  # RandomResizedCrop tries before its centre-crop fallback
# Columns of one sample's parameter row.
AREA, LOG_RATIO = slice(0, ATTEMPTS), slice(ATTEMPTS, 2 * ATTEMPTS)
TOP, LEFT, FLIP = 2 * ATTEMPTS, 2 * ATTEMPTS + 1, 2 * ATTEMPTS + 2
FACTORS = slice(2 * ATTEMPTS + 3, 2 * ATTEMPTS + 6)
ORDER = 2 * ATTEMPTS + 6
PARAM_COLUMNS = 2 * ATTEMPTS + 7
ORDERS = [np.array(p, np.int32) for p in permutations(range(3))]

_OK, _ERROR, _UNSUPPORTED = 0, 1, 2
_lib = None
_load_error: Optional[str] = None


def jpeg_library_file() -> Optional[str]:
    """The libjpeg Pillow loaded (its wheel's SIMD libjpeg-turbo), found in this process's
    memory map after importing PIL's C module; the Makefile links against the same file."""
    import PIL._imaging  # noqa: F401 - loads libjpeg
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()  # address perms offset dev inode [path]
            if len(fields) >= 6 and re.search(r"/libjpeg[^/]*\.so", fields[-1]):
                return fields[-1]
    return None


def library_path() -> Optional[Path]:
    """The built library if it is current (core.native.built_library)."""
    return built_library(LIBRARY, SOURCE)


def load():
    """The native library (loaded once per process), or None; the reason is kept for
    load_error() (and logged when a built library fails to load)."""
    global _lib, _load_error
    if _lib is not None or _load_error is not None:
        return _lib
    try:
        jpeg_library_file()  # its libjpeg must be in the process before ours resolves against it
    except ImportError as exc:
        _load_error = f"Pillow's libjpeg is not available ({exc})"
        return None
    lib, _load_error = open_library(LIBRARY, SOURCE, "decodes training images with MindSpore's ops")
    if lib is None:
        return None
    p, i, z = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
    lib.mnv3_jpeg_size.argtypes = [p, z, p, p, p, i]
    lib.mnv3_jpeg_augment.argtypes = [p, z, p, i, p, p, i, i, i, p, p, i]
    lib.mnv3_rgb_augment.argtypes = [p, i, i, p, i, p, p, i, i, p]
    lib.mnv3_jpeg_library.argtypes = [p, i]
    _lib = lib
    return _lib


def available() -> bool:
    return load() is not None


def load_error() -> Optional[str]:
    load()
    return _load_error


def linked_jpeg_library() -> str:
    """The file that provides libjpeg to the native library (a check that it is Pillow's)."""
    lib = load()
    buf = ctypes.create_string_buffer(4096)
    if lib is None or lib.mnv3_jpeg_library(buf, len(buf)) != _OK:
        return ""
    return buf.value.decode()


# The stream of an epoch's draws: keyed as the single-process draws always were (rank slot 0),
# so a one-process run keeps the augmentations it had before draws followed global positions.
_DRAW_KEY = (0, 11)


def position_params(seed: int, epoch: int, positions) -> np.ndarray:
    """Uniform [0, 1) draws of the samples at global positions `positions` of epoch `epoch`:
    float64 [len(positions), PARAM_COLUMNS], row p of one PCG64 stream per (seed, epoch), so
    the same whoever reads position p. Each run of consecutive positions costs one jump of
    the generator (PCG64.advance) and its own rows, never the rows before it."""
    positions = np.asarray(positions, np.int64).reshape(-1)
    out = np.empty((len(positions), PARAM_COLUMNS))
    if not len(positions):
        return out
    cuts = np.flatnonzero(np.diff(positions) != 1) + 1
    for first, stop in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [len(positions)]])):
        rng = np.random.default_rng([seed, epoch, *_DRAW_KEY])
        rng.bit_generator.advance(int(positions[first]) * PARAM_COLUMNS)  # one 64-bit draw a double
        out[first:stop] = rng.random((int(stop - first), PARAM_COLUMNS))
    return out


def draw_params(count: int, seed: int, epoch: int, start: int = 0) -> np.ndarray:
    """The draws of positions start..count-1 of an epoch (position_params): float64
    [count - start, PARAM_COLUMNS], the same rows whatever `start` (a resume's first position)."""
    return position_params(seed, epoch, np.arange(start, count))


def crop_box(width: int, height: int, u: np.ndarray, scale, ratio) -> tuple[int, int, int, int]:
    """(left, top, width, height) of the random-resized crop for draws `u` (one params row):
    torchvision's RandomResizedCrop.get_params, with the draws given instead of made."""
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for k in range(ATTEMPTS):
        target = area * (scale[0] + (scale[1] - scale[0]) * u[AREA][k])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[LOG_RATIO][k])
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(u[TOP] * (height - h + 1))
            left = int(u[LEFT] * (width - w + 1))
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


class DecodeError(ValueError):
    """An image that neither the native decoder nor Pillow can read."""


class TrainAugment:
    """One training image: (encoded image bytes, params row) -> uint8 HWC of image_size.

    ctypes releases the GIL around the native call, so the pipeline's worker threads decode
    in parallel."""

    def __init__(self, data_cfg, allow_scaling: bool = True):
        lib = load()
        if lib is None:
            raise RuntimeError(f"native augmentation unavailable: {load_error()}")
        self.lib = lib
        self.size = int(data_cfg.image_size)
        self.scale = tuple(data_cfg.crop_scale)
        self.ratio = tuple(data_cfg.crop_ratio)
        self.hflip = float(data_cfg.hflip)
        jitter = [float(j) for j in data_cfg.color_jitter]
        self.jitter = any(jitter)
        # factor ranges [max(0, 1 - j), 1 + j], as MindSpore's RandomColorAdjust and ColorJitter
        self.lowest = np.array([max(0.0, 1 - j) for j in jitter])
        self.span = np.array([1 + j for j in jitter]) - self.lowest
        self.allow_scaling = int(allow_scaling)
        self.max_pixels = max_pixels_of(data_cfg)

    def factors(self, u: np.ndarray) -> Optional[np.ndarray]:
        if not self.jitter:
            return None
        return (self.lowest + self.span * u[FACTORS]).astype(np.float32)

    def __call__(self, data: np.ndarray, u: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Into `out` (C-contiguous, size x size x 3 uint8) when given, else a new array."""
        data = as_uint8(data)
        if out is None:
            out = np.empty((self.size, self.size, 3), np.uint8)
        flip = int(u[FLIP] < self.hflip)
        factors = self.factors(u)
        order = ORDERS[min(int(u[ORDER] * 6), 5)]
        fptr = factors.ctypes.data if factors is not None else None
        optr = order.ctypes.data if factors is not None else None
        message = ctypes.create_string_buffer(256)
        width, height = ctypes.c_int(), ctypes.c_int()
        status = _ERROR
        if data[:2].tobytes() == b"\xff\xd8":
            status = self.lib.mnv3_jpeg_size(data.ctypes.data, data.size, ctypes.addressof(width),
                                             ctypes.addressof(height), message, len(message))
        if status == _OK and width.value * height.value > self.max_pixels:
            raise DecodeError(too_large_message(width.value, height.value, self.max_pixels))
        if status == _OK:
            box = np.array(crop_box(width.value, height.value, u, self.scale, self.ratio), np.float64)
            status = self.lib.mnv3_jpeg_augment(data.ctypes.data, data.size, box.ctypes.data, flip,
                                                fptr, optr, self.size, self.size,
                                                self.allow_scaling, out.ctypes.data, message,
                                                len(message))
        if status != _OK:  # another format, a CMYK JPEG, or a JPEG libjpeg refuses: try Pillow
            rgb = decode_with_pillow(data, message.value.decode(errors="replace"), self.max_pixels)
            box = np.array(crop_box(rgb.shape[1], rgb.shape[0], u, self.scale, self.ratio), np.float64)
            self.lib.mnv3_rgb_augment(rgb.ctypes.data, rgb.shape[0], rgb.shape[1], box.ctypes.data,
                                      flip, fptr, optr, self.size, self.size, out.ctypes.data)
        return out


class BatchAugment:
    """batch(per_batch_map=...) operation: a batch's image bytes -> uint8 NHWC. Batch k of the
    pipeline holds the samples at global positions positions[k * batch_size:][:batch_size]
    and gets their draws (position_params)."""

    def __init__(self, data_cfg, seed: int, epoch: int, positions: np.ndarray):
        self.augment = TrainAugment(data_cfg)
        self.seed, self.epoch = int(seed), int(epoch)
        self.positions = np.asarray(positions, np.int64)
        self.batch_size = int(data_cfg.batch_size)

    def __call__(self, images, batch_info):
        first = batch_info.get_batch_num() * self.batch_size
        params = position_params(self.seed, self.epoch, self.positions[first:first + len(images)])
        size = self.augment.size
        out = np.empty((len(images), size, size, 3), np.uint8)
        for i, data in enumerate(images):
            self.augment(data, params[i], out[i])
        return (out,)


def as_uint8(data) -> np.ndarray:
    """Encoded image bytes as a flat uint8 array: GeneratorDataset rows are uint8 arrays,
    MindDataset's bytes columns arrive as numpy bytes."""
    if isinstance(data, np.ndarray) and data.dtype == np.uint8:
        return np.ascontiguousarray(data.reshape(-1))
    return np.frombuffer(np.asarray(data).tobytes(), np.uint8)


def max_pixels_of(data_cfg) -> int:
    return int(getattr(data_cfg, "max_image_pixels", None) or DEFAULT_MAX_IMAGE_PIXELS)


def decode_with_pillow(data: np.ndarray, native_message: str = "",
                       max_pixels: Optional[int] = None) -> np.ndarray:
    raw = data.tobytes()
    size = image_size(raw)
    if size is not None and (problem := size_problem(*size, max_pixels)):
        raise DecodeError(problem)
    try:
        with pillow_open(raw, max_pixels) as image:
            return np.ascontiguousarray(np.asarray(image.convert("RGB")))
    except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds for bad files
        detail = f"libjpeg: {native_message}; " if native_message else ""
        raise DecodeError(f"undecodable image ({detail}Pillow: {exc}); remove or replace it") from None
