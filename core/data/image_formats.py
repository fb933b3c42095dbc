"""Which files are images, whether one can be read, and how each reaches a decoder.

A photo folder holds more than baseline JPEGs: `.JPG` and `.Jpeg` names, WebP from browsers,
TIFF from scanners, PNG screenshots, and JPEGs with data after their end marker. The file
names this runner reads are torchvision ImageFolder's (plus GIF and .jfif, which Pillow reads),
in any case. What a file holds is told by its first bytes, not its name.

MindSpore's decoder reads JPEG, PNG and BMP here (JPEG headers checked first: a damaged one
crashes it, core.data.jpeg_check); every other format is decoded by Pillow, which raises instead of
crashing, and handed on as BMP (`for_mindspore`). The native training decoder sends the same
formats to Pillow itself (core.data.jpeg_augment).

Pixel limit (`data.max_image_pixels`, default 100 million): an image whose header declares more
pixels is refused before any decoder sees it. A 20000 x 20000 PNG of one grey level is a few
hundred KB on disk and 400 MB decoded (1.2 GB as RGB): Pillow's own guard
(`PIL.Image.MAX_IMAGE_PIXELS`, 89.5 Mpx: a warning, an exception at twice that) escaped the
skip path as a traceback, and a JPEG of that size trained at 837 MB RSS. The
size comes from the header (JPEG's frame header, Pillow's header-only readers for the other
formats: no pixel is decoded), so the check costs microseconds. 100 Mpx is a little above
Pillow's threshold, so every image Pillow decodes without complaint still reads; it admits full
resolution from 100-Mpx cameras and 50-Mpx phone modes, while bounding one decoded RGB image at
300 MB. Pillow's threshold is set to the same limit, so it neither warns about nor refuses what
this check lets through.
"""
from __future__ import annotations

import io
from typing import Optional

import numpy as np

from core.data.jpeg_check import jpeg_frame_size, jpeg_problem

# torchvision.datasets.folder.IMG_EXTENSIONS, then what Pillow also reads; compared lower-cased
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
                    ".gif", ".jfif")
MINDSPORE_DECODES = ("jpeg", "png", "bmp")
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000
_max_pixels = DEFAULT_MAX_IMAGE_PIXELS
# Pillow's header-only readers, by the format image_kind names (their constructors read the
# header and never check Pillow's pixel limit; Image.open does, and raises before the size is
# known)
_PILLOW_READERS = {"png": ("PngImagePlugin", "PngImageFile"), "bmp": ("BmpImagePlugin", "BmpImageFile"),
                   "webp": ("WebPImagePlugin", "WebPImageFile"), "gif": ("GifImagePlugin", "GifImageFile"),
                   "tiff": ("TiffImagePlugin", "TiffImageFile"), "pnm": ("PpmImagePlugin", "PpmImageFile"),
                   "jpeg": ("JpegImagePlugin", "JpegImageFile")}


def set_max_image_pixels(limit: Optional[int]) -> None:
    """The limit image_problem applies when it is not given one (the pipelines set it from
    data.max_image_pixels when they are built)."""
    global _max_pixels
    _max_pixels = int(limit) if limit else DEFAULT_MAX_IMAGE_PIXELS


def max_image_pixels() -> int:
    return _max_pixels


def too_large_message(width: int, height: int, limit: int) -> str:
    return (f"too large: {width} x {height} pixels, over the limit {limit}; raise "
            f"data.max_image_pixels")


def image_size(data: bytes, kind: Optional[str] = None) -> Optional[tuple[int, int]]:
    """(width, height) from the file's header, without decoding pixels; None when the header
    does not say (a damaged file: the structure checks name what is wrong)."""
    kind = kind or image_kind(data)
    if kind == "jpeg":
        return jpeg_frame_size(data)
    if kind not in _PILLOW_READERS:
        return None
    import importlib
    module, name = _PILLOW_READERS[kind]
    try:
        reader = getattr(importlib.import_module(f"PIL.{module}"), name)
        with reader(io.BytesIO(data)) as image:
            return tuple(image.size)
    except Exception:  # noqa: BLE001 - Pillow raises many kinds for bad headers
        return None


def size_problem(width: int, height: int, limit: Optional[int] = None) -> Optional[str]:
    limit = limit or _max_pixels
    return too_large_message(width, height, limit) if width * height > limit else None


def has_image_extension(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def image_kind(data: bytes) -> Optional[str]:
    """The format named by the file's first bytes, or None."""
    if data[:2] == b"\xff\xd8":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] in (b"II*\0", b"MM\0*"):
        return "tiff"
    if data[:1] == b"P" and data[1:2] in b"123456" and data[2:3].isspace():
        return "pnm"
    return None


def image_problem(data: bytes, max_pixels: Optional[int] = None) -> Optional[str]:
    """None when the file can be decoded, else why not (a few words).

    The size its header declares is checked first against `max_pixels` (default: the limit
    set by set_max_image_pixels): "too large: W x H pixels, over the limit L; ...". JPEG, PNG
    and BMP are then checked by structure (no decode: tens of microseconds); the formats
    Pillow decodes are decoded once here, so a damaged one is found before the pipeline."""
    if not data:
        return "empty file"
    kind = image_kind(data)
    if kind is None:
        return "not an image: unknown format"
    size = image_size(data, kind)
    if size is not None and (problem := size_problem(*size, max_pixels)):
        return problem
    if kind == "jpeg":
        return jpeg_problem(data)
    if kind == "png":
        return None if data.rfind(b"IEND") > 8 else "truncated PNG: no end chunk"
    if kind == "bmp":
        declared = int.from_bytes(data[2:6], "little")
        return "truncated BMP: shorter than its header says" if declared > len(data) else None
    if kind == "webp" and int.from_bytes(data[4:8], "little") + 8 > len(data):
        return "truncated WebP: shorter than its header says"
    try:
        _pillow_rgb(data, max_pixels)
    except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds for bad files
        return f"damaged {kind.upper()}: {exc}"
    return None


def for_mindspore(data: np.ndarray) -> np.ndarray:
    """Encoded image bytes that MindSpore's Decode reads: JPEG, PNG and BMP as they are, other
    formats decoded by Pillow and re-encoded as BMP (lossless, quick). First op of the eval
    and MindSpore-ops training transforms."""
    kind = image_kind(data[:12].tobytes())
    if kind == "jpeg":  # MindSpore's decoder has no pixel limit of its own
        size = jpeg_frame_size(data.tobytes())
        if size is not None and (problem := size_problem(*size)):
            raise ValueError(problem)
    if kind in MINDSPORE_DECODES:
        if kind != "jpeg":
            size = image_size(data.tobytes(), kind)
            if size is not None and (problem := size_problem(*size)):
                raise ValueError(problem)
        return data
    out = io.BytesIO()
    _pillow_rgb(data.tobytes()).save(out, "BMP")
    return np.frombuffer(out.getvalue(), np.uint8)


def pillow_open(data: bytes, max_pixels: Optional[int] = None):
    """Image.open with this runner's pixel limit: refused above it ("too large: ...", as
    ValueError), Pillow's own bomb threshold set to it so it neither warns nor refuses below."""
    from PIL import Image
    limit = max_pixels or _max_pixels
    size = image_size(data)
    if size is not None and (problem := size_problem(*size, limit)):
        raise ValueError(problem)
    Image.MAX_IMAGE_PIXELS = limit
    return Image.open(io.BytesIO(data))


def _pillow_rgb(data: bytes, max_pixels: Optional[int] = None):
    with pillow_open(data, max_pixels) as image:
        return image.convert("RGB")
