"""core.data.jpeg_check: JPEG headers that would crash MindSpore's decoder are refused before it,
valid JPEGs of every common kind pass, and a training run skips (and names) such a file
instead of dying with a signal."""
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data.pipeline import looks_like_image
from core.data.jpeg_check import jpeg_header_problem, jpeg_problem

from tests.paths import REPO

DECODE_ALL = r"""
import os, sys
import numpy as np
import mindspore.dataset.vision as vision
for name in sorted(os.listdir(sys.argv[1])):
    print(name, flush=True)
    try:
        vision.Decode()(np.fromfile(os.path.join(sys.argv[1], name), np.uint8))
    except Exception:
        pass  # an exception is fine: only a dead process is not
print("ALL DECODED", flush=True)
"""


def photo(size=(120, 90)) -> "Image.Image":
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size[1], 0:size[0]]
    rgb = np.stack([x * 2, y * 2, (x + y)], -1) % 256 + rng.integers(0, 30, (size[1], size[0], 3))
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def jpeg(mode="RGB", **save) -> bytes:
    out = io.BytesIO()
    photo().convert(mode).save(out, "JPEG", **save)
    return out.getvalue()


VALID = {"baseline": {}, "progressive": {"progressive": True}, "optimized": {"optimize": True},
         "4:4:4": {"subsampling": 0}, "4:2:2": {"subsampling": 1}, "quality 100": {"quality": 100},
         "quality 5": {"quality": 5}, "restart markers": {"restart_marker_blocks": 2},
         "icc profile": {"icc_profile": b"\0" * 700}}


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_jpegs_pass(name):
    data = jpeg(**VALID[name])
    assert jpeg_header_problem(data) is None and looks_like_image(data)


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_grayscale_and_cmyk_pass(mode):
    for progressive in (False, True):
        assert jpeg_header_problem(jpeg(mode, progressive=progressive)) is None


def test_the_image_ends_at_its_end_marker_whatever_follows():
    """A progressive JPEG's later scans are walked through to the end marker; bytes after it
    (a second image, as phones append) are fine; a file cut anywhere before it is truncated."""
    data = jpeg(progressive=True)
    assert data.count(b"\xff\xda") > 3
    assert jpeg_problem(data) is None and jpeg_problem(data + jpeg() + b"\x00MPF") is None
    assert jpeg_problem(data[:-2]) == "truncated JPEG: no end-of-image marker"
    last_scan = data.rindex(b"\xff\xda")
    assert jpeg_problem(data[:last_scan + 4]) == "truncated JPEG: a header between scans is cut short or damaged"
    assert jpeg_problem(data[:last_scan] + jpeg()) == "truncated JPEG: another image starts before this one ends"
    assert jpeg_problem(damaged("frame size")) == "damaged JPEG header: zero image size"


def segment(data: bytes, marker: int) -> int:
    """Offset of the first segment with `marker` (its 0xFF byte)."""
    return bytes(data).index(bytes([0xFF, marker]))


def damaged(where: str) -> bytes:
    data = bytearray(jpeg())
    if where == "scan component":
        data[segment(data, 0xDA) + 5] = 0x77
    elif where == "frame size":
        sof = segment(data, 0xC0)
        data[sof + 5:sof + 7] = b"\0\0"
    elif where == "frame sampling":
        data[segment(data, 0xC0) + 11] = 0x09
    elif where == "quant table id":
        data[segment(data, 0xDB) + 4] = 0x07
    elif where == "huffman counts":
        data[segment(data, 0xC4) + 5] = 0xFF
    elif where == "segment length":
        data[segment(data, 0xC4) + 2:segment(data, 0xC4) + 4] = b"\xff\xf0"
    return bytes(data)


@pytest.mark.parametrize("where, problem", [
    ("scan component", "scan names a component the frame does not have"),
    ("frame size", "zero image size"),
    ("frame sampling", "bad component in frame header"),
    ("quant table id", "bad quantisation table header"),
    ("huffman counts", "bad Huffman table size"),
    ("segment length", "bad segment length"),
])
def test_damaged_headers_are_named(where, problem):
    data = damaged(where)
    assert problem in jpeg_header_problem(data)
    assert not looks_like_image(data)


def run_decoder(folder: Path) -> subprocess.CompletedProcess:
    # cwd: MindSpore writes abnormal_image.jpg into the working directory on a decode error
    return subprocess.run([sys.executable, "-c", DECODE_ALL, str(folder)], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, GLOG_v="3"), cwd=folder.parent)


def test_what_the_check_accepts_never_crashes_the_decoder(tmp_path):
    """Random damage to the headers of five kinds of JPEG, a third with random bytes after
    the end marker: what the check refuses includes files that kill MindSpore's decoder (so
    the check matters), and everything it accepts decodes in one process without a crash."""
    sources = [jpeg(), jpeg(progressive=True), jpeg("L"), jpeg("CMYK"), jpeg(subsampling=0)]
    rng = np.random.default_rng(7)
    accepted, refused = tmp_path / "accepted", tmp_path / "refused"
    accepted.mkdir(), refused.mkdir()
    for k in range(200):
        data = bytearray(sources[k % len(sources)])
        header_end = segment(data, 0xDA) + 14
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(2, header_end))
            data[i] = int(rng.integers(0, 256)) if rng.random() < 0.7 else data[i] ^ (1 << int(rng.integers(0, 8)))
        if k % 3 == 0:  # bytes after the end marker, as phones write them, are accepted
            data += bytes(rng.integers(0, 256, int(rng.integers(1, 3000)), np.uint8))
        folder = accepted if looks_like_image(bytes(data)) else refused
        (folder / f"{k:03d}.jpg").write_bytes(bytes(data))
    assert len(os.listdir(accepted)) > 50 and len(os.listdir(refused)) > 20
    result = run_decoder(accepted)
    assert result.returncode == 0 and "ALL DECODED" in result.stdout, \
        f"decoder died (status {result.returncode}) on {result.stdout.split()[-1:]}"
    result = run_decoder(refused)
    assert result.returncode != 0  # at least one refused file takes the decoder down


def test_training_skips_a_damaged_jpeg_instead_of_dying(tiny_dataset, tmp_path):
    import shutil
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    victim = sorted((data / "train").glob("*/*.jpg"))[0]
    raw = bytearray(victim.read_bytes())
    raw[segment(raw, 0xDA) + 5] = 0x77
    victim.write_bytes(bytes(raw))
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(REPO / "launcher" / "local.py"), "train", "--dataset_path", data,
         "--output_dir", out, "data.image_size=32", "data.eval_resize=36", "data.batch_size=8",
         "train.epochs=1", "optim.warmup_epochs=0", "train.eval_at_end=false", "--device_target", "CPU"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, GLOG_v="3"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"skipped 1 unreadable image(s), e.g. {victim}" in result.stdout + result.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["files"] for r in records if r["type"] == "corrupt"] == [[str(victim)]]
    # one epoch numbering (epochs completed at the record's step), as the epoch record has it
    [corrupt] = [r for r in records if r["type"] == "corrupt"]
    [epoch] = [r for r in records if r["type"] == "epoch"]
    assert (corrupt["epoch"], corrupt["step"]) == (epoch["epoch"], epoch["step"]) == (1, epoch["step"])
