"""Evaluation preprocessing from image bytes with the project's native operator.

What `eval` and `predict` do per image (resize the shorter side to data.eval_resize, centre crop
data.image_size, normalise, CHW) in one call into `core/kernels/libmnv3_jpeg.so`
(core.data.jpeg_augment loads it): the JPEG is decoded with Pillow's SIMD libjpeg-turbo, only the
rows and iMCU columns under the crop, and the crop's pixels of the resized image are computed
and written normalised into the batch. MindSpore's ops (core.data.pipeline.eval_transforms) decode
with a libjpeg-turbo built without SIMD and resize the whole image before cropping.

The geometry is MindSpore's: Resize(n) makes the shorter side n and the longer one
int(longer * n / shorter); CenterCrop's offset is floor((resized - crop) / 2). The resize is
bilinear with half-pixel centres clamped at the image's edges (OpenCV's INTER_LINEAR), rounded to
uint8 before (v - mean) / std, so a batch equals the MindSpore path's within one grey level
(OpenCV rounds fixed-point weights; tests/core/data/test_eval_decoder.py).

DCT scaling (allow_scaling=True): a JPEG at least twice the resized size on both sides is decoded
at 1/2, 1/4 or 1/8 scale (the largest reduction that keeps it at least the resized size) and
resized from there. It is off in eval and predict: no scale but 8/8 keeps the result within one
grey level of the MindSpore path. Measured on photo-like JPEGs at eval_resize 256 / crop 224, it
changes pixels by a mean 3.1-3.7 and at most 22-29 grey levels (a low-pass before the bilinear
resize, where the MindSpore path aliases) and saves only 12-34% of the decode time (grainy photos
spend it in entropy decoding, which scaling does not reduce). ImageNet-sized photos (~500x375)
are never scaled at eval_resize 256 anyway.

Images that are not plain JPEGs (PNG, BMP, WebP, TIFF, GIF, PPM/PGM, CMYK JPEGs) are decoded by
Pillow and go through the same resize and crop; bytes after a JPEG's end marker are never read.
Batches are float32 NCHW: the inference graphs (core.nn.fuse, exported MINDIR) take normalised
input, and normalising on the host here costs a few microseconds per image, against ~0.5 ms in
a MindSpore graph on CPU.
"""
from __future__ import annotations

import ctypes
from typing import Optional

import numpy as np

from core.data import jpeg_augment
from core.data.jpeg_augment import DecodeError, as_uint8, decode_with_pillow  # noqa: F401 - re-exported
from core.data.image_formats import too_large_message
from core.data.normalization import pixel_normalization

_OK, _UNSUPPORTED = 0, 2
_configured = False


def load():
    """The native library with the eval entry points declared, or None (jpeg_augment.load_error)."""
    global _configured
    lib = jpeg_augment.load()
    if lib is not None and not _configured:
        p, i, z = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
        lib.mnv3_jpeg_eval.argtypes = [p, z, i, i, i, i, i, i, i, p, p, p, p, i]
        lib.mnv3_rgb_eval.argtypes = [p, i, i, i, i, i, i, i, i, p, p, p]
        _configured = True
    return lib


def available() -> bool:
    return load() is not None


def eval_geometry(width: int, height: int, resize: int, crop: int) -> tuple[int, int, int, int]:
    """(resized width, resized height, left, top): MindSpore's Resize(resize) (shorter side) and
    CenterCrop(crop) offsets, checked against MindSpore on random sizes by the tests."""
    if width <= height:
        resized_w, resized_h = resize, int(height * resize / width)
    else:
        resized_w, resized_h = int(width * resize / height), resize
    return resized_w, resized_h, (resized_w - crop) // 2, (resized_h - crop) // 2


class EvalDecode:
    """One image: encoded bytes -> float32 (3, S, S), normalised (or uint8 (S, S, 3) with
    normalize=False). ctypes releases the GIL around the native call, so the pipeline's worker
    threads decode in parallel."""

    def __init__(self, data_cfg, allow_scaling: bool = False, normalize: bool = True):
        lib = load()
        if lib is None:
            raise RuntimeError(f"native decoder unavailable: {jpeg_augment.load_error()}")
        self.lib = lib
        self.size = int(data_cfg.image_size)
        self.resize = int(data_cfg.eval_resize)
        self.allow_scaling = int(allow_scaling)
        self.max_pixels = jpeg_augment.max_pixels_of(data_cfg)
        mean, std = pixel_normalization(data_cfg)
        self.mean = np.asarray(mean, np.float32) if normalize else None
        self.std = np.asarray(std, np.float32) if normalize else None

    @property
    def shape(self) -> tuple[int, int, int]:
        s = self.size
        return (3, s, s) if self.mean is not None else (s, s, 3)

    @property
    def dtype(self):
        return np.float32 if self.mean is not None else np.uint8

    def _norm(self):
        if self.mean is None:
            return None, None
        return self.mean.ctypes.data, self.std.ctypes.data

    def __call__(self, data, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Into `out` (C-contiguous, self.shape, self.dtype) when given, else a new array."""
        data = as_uint8(data)
        if out is None:
            out = np.empty(self.shape, self.dtype)
        mean, std = self._norm()
        message = ctypes.create_string_buffer(256)
        status = jpeg_augment._ERROR
        width, height = ctypes.c_int(), ctypes.c_int()
        if data[:2].tobytes() == b"\xff\xd8":
            status = self.lib.mnv3_jpeg_size(data.ctypes.data, data.size, ctypes.addressof(width),
                                             ctypes.addressof(height), message, len(message))
        if status == _OK and width.value * height.value > self.max_pixels:
            raise DecodeError(too_large_message(width.value, height.value, self.max_pixels))
        if status == _OK:
            geometry = eval_geometry(width.value, height.value, self.resize, self.size)
            status = self.lib.mnv3_jpeg_eval(data.ctypes.data, data.size, *geometry, self.size,
                                             self.size, self.allow_scaling, mean, std,
                                             out.ctypes.data, message, len(message))
        if status != _OK:  # another format, a CMYK JPEG, or a JPEG libjpeg refuses: try Pillow
            rgb = decode_with_pillow(data, message.value.decode(errors="replace"), self.max_pixels)
            geometry = eval_geometry(rgb.shape[1], rgb.shape[0], self.resize, self.size)
            self.lib.mnv3_rgb_eval(rgb.ctypes.data, rgb.shape[0], rgb.shape[1], *geometry,
                                   self.size, self.size, mean, std, out.ctypes.data)
        return out


class BatchEval:
    """batch(per_batch_map=...) operation: a batch's image bytes -> float32 NCHW, normalised."""

    def __init__(self, data_cfg):
        self.decode = EvalDecode(data_cfg)

    def __call__(self, images, batch_info):
        out = np.empty((len(images),) + self.decode.shape, self.decode.dtype)
        for i, data in enumerate(images):
            self.decode(data, out[i])
        return (out,)
