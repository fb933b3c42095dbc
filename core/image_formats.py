"""Which files are images, whether one can be read, and how each reaches a decoder.

A photo folder holds more than baseline JPEGs: `.JPG` and `.Jpeg` names, WebP from browsers,
TIFF from scanners, PNG screenshots, and JPEGs with data after their end marker. The file
names this runner reads are torchvision ImageFolder's (plus GIF and .jfif, which Pillow reads),
in any case. What a file holds is told by its first bytes, not its name.

MindSpore's decoder reads JPEG, PNG and BMP here (JPEG headers checked first: a damaged one
crashes it, core.jpeg_check); every other format is decoded by Pillow, which raises instead of
crashing, and handed on as BMP (`for_mindspore`). The native training decoder sends the same
formats to Pillow itself (core.jpeg_augment).
"""
from __future__ import annotations

import io
from typing import Optional

import numpy as np

from core.jpeg_check import jpeg_problem

# torchvision.datasets.folder.IMG_EXTENSIONS, then what Pillow also reads; compared lower-cased
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
                    ".gif", ".jfif")
MINDSPORE_DECODES = ("jpeg", "png", "bmp")


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


def image_problem(data: bytes) -> Optional[str]:
    """None when the file can be decoded, else why not (a few words).

    JPEG, PNG and BMP are checked by structure (no decode: tens of microseconds); the formats
    Pillow decodes are decoded once here, so a damaged one is found before the pipeline."""
    if not data:
        return "empty file"
    kind = image_kind(data)
    if kind is None:
        return "not an image: unknown format"
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
        _pillow_rgb(data)
    except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds for bad files
        return f"damaged {kind.upper()}: {exc}"
    return None


def for_mindspore(data: np.ndarray) -> np.ndarray:
    """Encoded image bytes that MindSpore's Decode reads: JPEG, PNG and BMP as they are, other
    formats decoded by Pillow and re-encoded as BMP (lossless, quick). First op of the eval
    and MindSpore-ops training transforms."""
    if image_kind(data[:12].tobytes()) in MINDSPORE_DECODES:
        return data
    out = io.BytesIO()
    _pillow_rgb(data.tobytes()).save(out, "BMP")
    return np.frombuffer(out.getvalue(), np.uint8)


def _pillow_rgb(data: bytes):
    from PIL import Image
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")
