"""What a real photo folder holds: JPEGs with bytes after their end marker (phone and camera
trailers), extensions in any case, WebP and the other formats torchvision's ImageFolder lists,
grey and CMYK JPEGs, stray files that are not images, and damaged files. Every readable file is
trained on and evaluated (native decoder and MindSpore's ops, folder and packed), predicted the
way evaluation sees it; damaged ones are still skipped and named; a one-class folder is one
error line. All files are made with Pillow, as cameras and browsers would write them.
"""
from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data.imagefolder import scan_split
from core.data.packed import load_packed_split
from core.data.packing import pack_imagefolder
from core.data.pipeline import CorruptImages, DatasetError, guarded, looks_like_image
from core.infer.predict import preprocess
from tests.core_fixtures import tiny_config

from tests.paths import REPO


def photo(seed: int, mode: str = "RGB", size=(64, 48)) -> Image.Image:
    """A gradient with noise: compresses like a photo, differs per seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size[1], 0:size[0]]
    rgb = np.stack([x * 3 + seed * 40, y * 4, x + y], -1) % 256 + rng.integers(0, 40, (size[1], size[0], 3))
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).convert(mode)


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def jpeg(seed: int, mode: str = "RGB", **options) -> bytes:
    return encoded(photo(seed, mode), "JPEG", **options)


# After the end-of-image marker, as phones and cameras write them.
TRAILERS = {
    "thumbnail": lambda seed: encoded(photo(seed + 100, size=(16, 12)), "JPEG"),  # MPF second image
    "zeros": lambda seed: b"\0" * 4096,
    "mpf_data": lambda seed: b"MPF\0II*\0" + bytes(np.random.default_rng(seed).integers(0, 256, 3000, np.uint8)),
    "motion_photo_mp4": lambda seed: b"\0\0\0\x18ftypmp42" + bytes(np.random.default_rng(seed).integers(0, 256, 5000, np.uint8)),
    "samsung": lambda seed: b"\0\0SEFH" + b"x" * 100 + b"SEFT",
}


def class_files(seed: int) -> dict[str, bytes]:
    """One class folder's readable images: every name and kind this runner must read."""
    return {
        "plain.jpg": jpeg(seed),
        "IMG_0001.Jpg": jpeg(seed + 1),
        "IMG_0002.JPEG": jpeg(seed + 2),
        "IMG_0003.jpeg": jpeg(seed + 3),
        "IMG_0004.JPG": jpeg(seed + 4) + TRAILERS["thumbnail"](seed),
        "PXL_0005.MP.jpg": jpeg(seed + 5) + TRAILERS["motion_photo_mp4"](seed),
        "DSC_0006.jpg": jpeg(seed + 6) + TRAILERS["mpf_data"](seed),
        "DSC_0007.jpg": jpeg(seed + 7) + TRAILERS["zeros"](seed),
        "SAM_0008.jpg": jpeg(seed + 8) + TRAILERS["samsung"](seed),
        "progressive_trailer.jpg": jpeg(seed + 9, progressive=True) + b"trailing bytes",
        "grey_trailer.jpg": jpeg(seed + 10, "L") + b"\1\2\3" * 50,
        "cmyk.jpg": jpeg(seed + 11, "CMYK"),
        "cmyk_trailer.jpg": jpeg(seed + 12, "CMYK") + b"\xff" * 7 + b"junk",
        "web.webp": encoded(photo(seed + 13), "WEBP"),
        "WEB.WEBP": encoded(photo(seed + 14), "WEBP", lossless=True),
        "screen.png": encoded(photo(seed + 15, "RGBA"), "PNG"),
        "scan.bmp": encoded(photo(seed + 16), "BMP"),
        "scan.TIF": encoded(photo(seed + 17), "TIFF"),
        "scan.tiff": encoded(photo(seed + 18, "L"), "TIFF", compression="tiff_lzw"),
        "image.ppm": encoded(photo(seed + 19), "PPM"),
        "image.pgm": encoded(photo(seed + 20, "L"), "PPM"),
        "anim.gif": encoded(photo(seed + 21), "GIF"),
    }


STRAYS = {"notes.txt": b"shot on a phone", "meta.json": b"{}", ".DS_Store": b"\0\0\0\1Bud1",
          "._IMG_0001.Jpg": b"\0\5\26\7AppleDouble"}


def damaged_files() -> dict[str, bytes]:
    good = jpeg(50)
    return {"zz_header_cut.jpg": good[:150], "zz_random.jpg": bytes(np.random.default_rng(1).integers(0, 256, 2000, np.uint8)),
            "zz_half.jpg": good[:len(good) // 2], "zz_cut.png": encoded(photo(51), "PNG")[:300],
            "zz_cut.webp": encoded(photo(52), "WEBP")[:200], "zz_empty.jpeg": b""}


def write(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """train/ and val/ with two classes of every readable kind, plus stray files."""
    root = tmp_path_factory.mktemp("photos")
    for split, offset in (("train", 0), ("val", 500)):
        for k, name in enumerate(("cats", "dogs")):
            write(root / split / name, class_files(offset + 200 * k))
    write(root / "train" / "cats", STRAYS)
    (root / "train" / "cats" / "edited").mkdir()
    (root / "train" / "README.txt").write_text("my photos")
    return root


READABLE = len(class_files(0))


def small_config(root, tmp_path, **overrides):
    return tiny_config(root, tmp_path, **{"data.batch_size": 4, "data.eval_batch_size": 5,
                                          "data.workers": 1, **overrides})


def every_batch(dataset) -> list:
    return [tuple(a.copy() for a in row) for row in dataset.create_tuple_iterator(num_epochs=1, output_numpy=True)]


# ------------------------------------------------------------------ item 1: bytes after EOI


@pytest.mark.parametrize("trailer", sorted(TRAILERS))
def test_jpegs_with_bytes_after_the_end_marker_are_readable(trailer):
    for data in (jpeg(1) + TRAILERS[trailer](1), jpeg(2, progressive=True) + TRAILERS[trailer](2),
                 jpeg(3, "L") + TRAILERS[trailer](3), jpeg(4, "CMYK") + TRAILERS[trailer](4)):
        assert looks_like_image(data)


def test_damaged_files_stay_unreadable():
    for name, data in damaged_files().items():
        assert not looks_like_image(data), name


# ------------------------------------------------------------------ item 2: extensions, formats


def test_extensions_match_in_any_case_and_stray_files_are_reported_once(photos, caplog):
    with caplog.at_level(logging.WARNING):
        train = scan_split(photos / "train")
    assert len(train) == 2 * READABLE
    names = {Path(f).name for f in train.files}
    assert {"IMG_0001.Jpg", "IMG_0002.JPEG", "WEB.WEBP", "scan.TIF", "anim.gif"} <= names
    assert not names & set(STRAYS)
    warnings = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert warnings == [f"{photos / 'train'}: ignored 6 entries: 2 with unsupported extensions "
                        f"(.json, .txt), 2 hidden (name starts with '.'), 1 outside the class "
                        f"folders, 1 folder inside a class folder (not searched)"]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        scan_split(photos / "val", train.classes)
    assert not [r for r in caplog.records if "ignored" in r.getMessage()]


def test_a_class_folder_of_unreadable_kinds_names_them(tmp_path):
    write(tmp_path / "train" / "cats", {"a.heic": b"x", "b.HEIC": b"x", "notes.txt": b"x"})
    with pytest.raises(DatasetError, match=r"class folder .*cats holds no images \(3 files with other "
                                           r"extensions: \.heic, \.txt\)"):
        scan_split(tmp_path / "train")


@pytest.mark.parametrize("decoder", ["native", "mindspore"])
def test_every_readable_file_trains_and_evaluates(photos, tmp_path, decoder):
    cfg = small_config(photos, tmp_path, **{"data.decoder": decoder})
    train = scan_split(photos / "train")
    corrupt = CorruptImages()
    batches = every_batch(train.train_pipeline(cfg.data, seed=1, epoch=0, corrupt=corrupt))
    assert corrupt.files == []
    assert len(batches) == len(train) // 4 and batches[0][0].shape == (4, 32, 32, 3)
    val = scan_split(photos / "val", train.classes)
    seen = every_batch(val.eval_pipeline(cfg.data))  # fails fast on any unreadable file
    assert sum(len(labels) for _, labels in seen) == len(val) == 2 * READABLE


def test_predict_reads_what_evaluation_reads(photos, tmp_path):
    cfg = small_config(photos, tmp_path)
    val = scan_split(photos / "val")
    evaluated = np.concatenate([images for images, _ in every_batch(val.eval_pipeline(cfg.data))])
    for i, path in enumerate(val.files):
        np.testing.assert_array_equal(preprocess(Path(path).read_bytes(), cfg.data, path), evaluated[i])
    with pytest.raises(DatasetError, match=r"cannot decode zz_cut\.webp: truncated WebP"):
        preprocess(damaged_files()["zz_cut.webp"], cfg.data, "zz_cut.webp")


def test_packed_photo_folder_reads_like_the_folder(photos, tmp_path):
    """Pack stores every readable file as it is; both decoders train on it as on the folder."""
    pack_imagefolder(photos, tmp_path / "packed", shard_size_mb=0.05, workers=1)
    splits = {name: (scan_split(photos / name), load_packed_split(tmp_path / "packed", name))
              for name in ("train", "val")}
    for folder, packed in splits.values():
        assert packed.corrupt == {} and len(packed) == len(folder) == 2 * READABLE
    folder, packed = splits["train"]
    for decoder in ("native", "mindspore"):
        cfg = small_config(photos, tmp_path, **{"data.decoder": decoder})
        expected, got = every_batch(folder.train_pipeline(cfg.data, 1, 0)), every_batch(packed.train_pipeline(cfg.data, 1, 0))
        assert len(expected) == len(got) == len(folder) // 4
        for a, b in zip(expected, got):
            np.testing.assert_array_equal(a[0], b[0])
    folder, packed = splits["val"]
    expected, got = every_batch(folder.eval_pipeline(cfg.data)), every_batch(packed.eval_pipeline(cfg.data))
    assert sum(len(labels) for _, labels in got) == len(folder)
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(a[0], b[0])


# ------------------------------------------------------------------ damaged files


@pytest.mark.parametrize("decoder", ["native", "mindspore"])
def test_damaged_files_are_skipped_and_named_in_training(photos, tmp_path, decoder):
    root = tmp_path / "data"
    write(root / "train" / "cats", {**class_files(0), **damaged_files()})
    write(root / "train" / "dogs", class_files(1))
    cfg = small_config(root, tmp_path, **{"data.decoder": decoder})
    train = scan_split(root / "train")
    corrupt = CorruptImages()
    every_batch(train.train_pipeline(cfg.data, seed=1, epoch=0, corrupt=corrupt))
    assert sorted(Path(f).name for f in corrupt.files) == sorted(damaged_files())
    failing = CorruptImages(fail_fast=True)  # what evaluation uses
    with pytest.raises(DatasetError, match=r"corrupt or non-image file .*zz_cut\.png \(truncated PNG: no end chunk\); "):
        list(guarded(train.eval_pipeline(cfg.data, corrupt=failing).create_tuple_iterator(num_epochs=1), failing))


# ------------------------------------------------------------------ item 3: one class folder


def test_one_class_folder_is_one_error_line(tmp_path):
    write(tmp_path / "data" / "train" / "cats", {f"{k}.jpg": jpeg(k) for k in range(4)})
    result = subprocess.run(
        [sys.executable, str(REPO / "launcher" / "local.py"), "train", "--dataset_path",
         str(tmp_path / "data"), "--output_dir", str(tmp_path / "run"), "--device_target", "CPU",
         "data.batch_size=2", "data.image_size=32"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, GLOG_v="3"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {tmp_path / 'data' / 'train'} has one class folder ('cats'); "
                      f"classification needs at least 2: add a folder per class"]
