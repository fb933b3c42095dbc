"""Faults from an adversarial pass (issue 27): decompression bombs, OS errors on the run
directory, duplicate recipe keys, an inconsistent pack index, misleading messages.

Real files throughout: a 20000 x 20000 PNG of one grey level (439 KB, 400 Mpx: what
`Image.new('L', (20000, 20000), 7).save(...)` writes, built row by row without the 400 MB
image), a real JPEG whose frame header says 20000 x 20000, real MindSpore pipelines and the
real command line.
"""
from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from core.config import ConfigError, load_config
from core.data.pipeline import DatasetError
from tests.core_fixtures import tiny_config
from tests.fault_tools import REPO, base_env, one_line_error, private_s3  # noqa: F401 - a fixture

LIMIT = 100_000_000
TOO_LARGE = f"too large: 20000 x 20000 pixels, over the limit {LIMIT}; raise data.max_image_pixels"


def bomb_png(width: int = 20000, height: int = 20000, grey: int = 7) -> bytes:
    """A valid PNG of one grey level, compressed row block by row block (never 400 MB in memory)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    z = zlib.compressobj(9)
    block = (b"\0" + bytes([grey]) * width) * 200
    idat = b"".join(z.compress(block) for _ in range(height // 200)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def big_jpeg(width: int = 20000, height: int = 20000) -> bytes:
    """A real JPEG (64 x 48 pixels of data) whose frame header declares width x height: what the
    decoders size their buffers from."""
    from PIL import Image
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (90, 120, 150)).save(out, "JPEG")
    data = bytearray(out.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 7] = height.to_bytes(2, "big")
    data[sof + 7:sof + 9] = width.to_bytes(2, "big")
    return bytes(data)


@pytest.fixture(scope="module")
def bombs():
    return {"png": bomb_png(), "jpeg": big_jpeg()}


# --------------------------------------------------------------------------- 1. pixel limit


def test_the_limit_is_read_from_headers_for_every_format(bombs):
    from PIL import Image

    from core.data.image_formats import image_problem, image_size
    assert image_problem(bombs["png"]) == TOO_LARGE
    assert image_problem(bombs["jpeg"]) == TOO_LARGE
    for fmt in ("PNG", "JPEG", "WEBP", "GIF", "TIFF", "BMP", "PPM"):
        out = io.BytesIO()
        Image.new("RGB", (64, 48)).save(out, fmt)
        data = out.getvalue()
        assert image_size(data) == (64, 48), fmt
        assert image_problem(data) is None, fmt
        assert image_problem(data, 3000) == ("too large: 64 x 48 pixels, over the limit 3000; "
                                             "raise data.max_image_pixels"), fmt
        assert image_problem(data, 3072) is None, fmt


def test_both_decoders_refuse_an_image_over_the_limit(bombs, native_kernels):
    """Past the sources' check too: the native decoder (from the header size it reads, and its
    Pillow fallback) and MindSpore's decode path (core.data.image_formats.for_mindspore)."""
    from core.data.image_formats import for_mindspore
    from core.data.jpeg_augment import DecodeError, TrainAugment, draw_params
    from core.data.jpeg_eval import EvalDecode
    data_cfg = load_config(None, {"data.image_size": 32, "data.eval_resize": 36}).data
    params = draw_params(1, 1, 0, 0)[0]
    for kind, data in bombs.items():
        array = np.frombuffer(data, np.uint8)
        for decode in (lambda a: TrainAugment(data_cfg)(a, params), EvalDecode(data_cfg)):
            with pytest.raises(DecodeError, match="too large: 20000 x 20000 pixels"):
                decode(array)
        with pytest.raises(ValueError, match="too large: 20000 x 20000 pixels"):
            for_mindspore(array)
    small = load_config(None, {"data.image_size": 32, "data.eval_resize": 36,
                               "data.max_image_pixels": 1000}).data
    normal = np.frombuffer(big_jpeg(64, 48), np.uint8)
    assert EvalDecode(data_cfg)(normal).shape == (3, 32, 32)
    with pytest.raises(DecodeError, match="too large: 64 x 48 pixels, over the limit 1000"):
        EvalDecode(small)(normal)


def test_training_skips_and_names_images_over_the_limit(tiny_dataset, tmp_path, bombs,
                                                        native_kernels, caplog):
    """The PNG bomb escaped the skip path as DecompressionBombError (exit 1) and the big JPEG
    was decoded (837 MB RSS): now both are skipped and named, with the reason. The check is the
    source's, before either decoder (data.decoder=mindspore passes the same source; the
    decoders' own checks are test_both_decoders_refuse_an_image_over_the_limit)."""
    import shutil

    from core.train.loop import train
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    folder = sorted(p for p in (data / "train").iterdir() if p.is_dir())[0]
    (folder / "bomb.png").write_bytes(bombs["png"])
    (folder / "huge.jpg").write_bytes(bombs["jpeg"])
    out = tmp_path / "run"
    cfg = tiny_config(data, out, **{"train.epochs": 1, "train.max_steps": 7, "data.batch_size": 9,
                                    "train.eval_at_end": False, "data.decoder": "native"})
    with caplog.at_level("WARNING"):
        train(cfg, out)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    skipped = [f for r in records if r["type"] == "corrupt" for f in r["files"]]
    assert sorted(Path(f).name for f in skipped) == ["bomb.png", "huge.jpg"], skipped
    assert "too large: 20000 x 20000 pixels" in caplog.text


def _Logits():
    import mindspore as ms

    class Logits(ms.nn.Cell):  # the first 10 pixel values as scores: the error comes first
        def construct(self, x):
            return x.reshape(x.shape[0], -1)[:, :10]
    return Logits()


def test_eval_and_predict_say_too_large_not_damaged(tiny_dataset, tmp_path, bombs):
    import shutil

    from core.infer.evaluate import evaluate
    from core.data.imagefolder import scan_split
    from core.infer.predict import preprocess
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    bomb = sorted(p for p in (data / "val").iterdir() if p.is_dir())[0] / "bomb.png"
    bomb.write_bytes(bombs["png"])
    cfg = tiny_config(data, tmp_path / "run")
    with pytest.raises(DatasetError) as caught:
        evaluate(_Logits(), scan_split(data / "val"), cfg.data, 0.0)
    assert str(caught.value) == f"{bomb}: {TOO_LARGE}"
    for data_bytes in bombs.values():
        with pytest.raises(DatasetError) as caught:
            preprocess(data_bytes, cfg.data, "x.img")
        assert str(caught.value) == f"x.img: {TOO_LARGE}"


def test_pack_keeps_images_over_the_limit_out_and_names_them(tiny_dataset, tmp_path, bombs, caplog):
    import shutil

    from core.data.packed import load_packed_split
    from core.data.packing import pack_imagefolder
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    folder = sorted(p for p in (data / "train").iterdir() if p.is_dir())[0]
    (folder / "bomb.png").write_bytes(bombs["png"])
    with caplog.at_level("WARNING"):
        index = pack_imagefolder(data, tmp_path / "packed", workers=1)
    shard = index["splits"]["train"]["shards"][0]
    name = f"{folder.name}/bomb.png"
    assert [n for _, n in shard["corrupt"]] == [name]
    assert f"{name}: {TOO_LARGE}" in caplog.text and "unreadable" not in caplog.text
    split = load_packed_split(tmp_path / "packed", "train")
    assert list(split.corrupt.values()) == [f"{tmp_path / 'packed' / shard['name']}:{name}"]
    # raised, the limit lets it in
    index = pack_imagefolder(data, tmp_path / "packed2", workers=1, max_pixels=400_000_000)
    assert index["splits"]["train"]["shards"][0]["corrupt"] == []


# --------------------------------------------------------------------------- 2. OS errors


def _local(args: list, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "launcher" / "local.py"), *map(str, args)],
                          capture_output=True, text=True, env=base_env(), cwd=REPO, timeout=timeout)


@pytest.fixture
def read_only_dir(tmp_path):
    """A read-only tmpfs (EROFS, as a read-only mount gives): mounting needs root, as the
    disk-full test's tmpfs does."""
    mount = tmp_path / "ro"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode:
        pytest.fail(f"cannot mount a read-only tmpfs ({result.stderr.strip()}); run as root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_os_errors_on_the_run_directory_are_one_line(read_only_dir, tmp_path, learned_run):
    _, run_dir, _, _, root = learned_run
    checkpoint = run_dir / "checkpoints" / "best.ckpt"
    long_name = tmp_path / ("n" * 300) / "run"
    cases = {
        "train-ro": (["train", "--dataset_path", tiny_data_of(root), "--output_dir",
                      read_only_dir / "run", "train.max_steps=1", "--device_target", "CPU"],
                     f"cannot use run directory {read_only_dir / 'run'}: Read-only file system"),
        "train-long": (["train", "--dataset_path", tiny_data_of(root), "--output_dir", long_name,
                        "train.max_steps=1", "--device_target", "CPU"],
                       "File name too long"),
        "eval-ro": (["eval", "--checkpoint_path", checkpoint, "--dataset_path", root,
                     "--output_dir", read_only_dir / "run", "--device_target", "CPU"],
                    f"cannot use run directory {read_only_dir / 'run'}: Read-only file system"),
        "eval-long": (["eval", "--checkpoint_path", checkpoint, "--dataset_path", root,
                       "--output_dir", long_name, "--device_target", "CPU"],
                      "File name too long"),
    }
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(2) as pool:
        results = dict(zip(cases, pool.map(lambda c: _local(c[0]), cases.values())))
    for name, result in results.items():
        assert result.returncode == 2, (name, result.stderr[-2000:])
        assert "Traceback" not in result.stderr, (name, result.stderr[-2000:])
        line = one_line_error(result.stderr)
        assert line.startswith("error: ") and cases[name][1] in line, (name, line)
        if name.endswith("long"):
            assert "n" * 300 in line, line  # names the path
    assert list(read_only_dir.iterdir()) == []


def tiny_data_of(root: Path) -> Path:
    return root


# --------------------------------------------------------------------------- 5. duplicate keys


def test_a_duplicate_key_in_a_recipe_names_the_key_and_both_lines(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("train:\n  epochs: 3\n  seed: 2\n  epochs: 30\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(recipe))
    assert str(caught.value) == (f"config file {recipe}: duplicate key 'epochs' at lines 2 and 4; "
                                 f"keep one of them")
    recipe.write_text("train:\n  epochs: 3\ndata:\n  workers: 1\ntrain:\n  seed: 4\n")
    with pytest.raises(ConfigError, match="duplicate key 'train' at lines 1 and 5"):
        load_config(str(recipe))
    recipe.write_text("train:\n  epochs: 3\ndata:\n  epochs: 3\n")  # same name, other sections
    with pytest.raises(ConfigError, match="unknown config key 'data.epochs'"):
        load_config(str(recipe))


# --------------------------------------------------------------------------- 6. pack index


@pytest.fixture(scope="module")
def packed_tiny(tmp_path_factory):
    from core.data.packing import pack_imagefolder
    from core.data.synthetic import generate
    root = tmp_path_factory.mktemp("packed-tiny")
    data = generate(root / "data", train_per_class=4, val_per_class=2, size=24, seed=5)
    pack_imagefolder(data, root / "packed", shard_size_mb=0.02, workers=1)
    return root / "packed"


def _edit_index(src: Path, dst: Path, edit) -> Path:
    import shutil
    shutil.copytree(src, dst)
    index = json.loads((dst / "index.json").read_text())
    edit(index)
    (dst / "index.json").write_text(json.dumps(index))
    return dst


@pytest.mark.parametrize("damage, message", [
    (lambda ix: ix["splits"]["train"]["shards"][0].update(samples=ix["splits"]["train"]["shards"][0]["samples"] + 1),
     "shard train-00000.mindrecord: {n} samples but its label runs count {m}"),
    (lambda ix: ix["splits"]["train"]["shards"][0]["label_runs"][0].__setitem__(1, 99),
     "samples but its label runs count"),
    (lambda ix: ix["splits"]["train"].update(samples=ix["splits"]["train"]["samples"] - 1),
     "split train lists"),
    (lambda ix: ix["splits"]["train"]["shards"][1].update(first=0),
     "shard train-00001.mindrecord: starts at sample 0"),
    (lambda ix: ix["splits"]["val"]["shards"][0]["label_runs"][0].__setitem__(0, 10),
     "a label run names a label outside the 10 classes"),
    (lambda ix: ix["splits"]["val"]["shards"][0].pop("label_runs"),
     "a field is missing or malformed"),
])
def test_an_inconsistent_index_is_refused_when_the_pack_is_opened(packed_tiny, tmp_path, damage, message):
    from core.data.sources import open_dataset
    index = json.loads((packed_tiny / "index.json").read_text())
    assert len(index["splits"]["train"]["shards"]) > 1, "the test needs several shards"
    first = index["splits"]["train"]["shards"][0]
    message = message.format(n=first["samples"] + 1, m=first["samples"])
    root = _edit_index(packed_tiny, tmp_path / "p", damage)
    with pytest.raises(DatasetError) as caught:
        open_dataset(str(root)).split("train")
    assert message in str(caught.value) and "re-pack the dataset" in str(caught.value), str(caught.value)
    assert str(caught.value).startswith(f"{root / 'index.json'} is inconsistent: ")


# --------------------------------------------------------------------------- 7. messages


def test_a_too_long_key_says_so_once_and_does_not_blame_conditional_writes(s3_server, shared_bucket, caplog):
    """Was: a warning that the store ignores conditional writes (the probe's KeyTooLongError
    read as "unsupported"), then the lease write failing with KeyTooLongError."""
    from cloud.storage.errors import StorageError
    from cloud.storage.lease import Lease
    from cloud.storage.store import open_storage
    prefix = "/".join(["p" * 99] * 10)  # 999 characters: every key the run writes is longer
    storage = open_storage(f"s3://{shared_bucket}/{prefix}", s3_server.settings())
    with caplog.at_level("WARNING"), pytest.raises(StorageError) as caught:
        Lease(storage, "job-long", wait_s=0).acquire()
    message = str(caught.value)
    assert "KeyTooLongError" in message and "longer than the store allows" in message, message
    assert "shorten the URL's prefix" in message
    assert "conditional" not in caplog.text and "conditional" not in message


def test_an_unreadable_pre_trained_file_gets_advice_for_weights(tiny_dataset, tmp_path):
    from core import checkpoint as ckpt
    from core.checkpoint import CheckpointError
    from core.train.run import build_run
    junk = tmp_path / "weights.ckpt"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    cfg = tiny_config(tiny_dataset, tmp_path / "run")
    with pytest.raises(CheckpointError) as caught:
        build_run(cfg, pretrained=str(junk))
    message = str(caught.value)
    assert message.startswith(f"checkpoint {junk} is unreadable or corrupt")
    assert "earlier checkpoint" not in message and ckpt.PRETRAINED_ADVICE in message
    with pytest.raises(CheckpointError, match="use an earlier checkpoint"):
        ckpt.load(junk)  # a resume's advice stays


def test_a_class_name_with_a_newline_keeps_the_prediction_table_one_row_per_class():
    from core.infer.predict import Prediction, format_predictions
    p = Prediction("dir/a\nb.jpg", [("cats\nand dogs", 0.75), ("tab\there", 0.25)], np.zeros(2))
    table = format_predictions([p])
    assert table.splitlines() == ["dir/a\\nb.jpg", "  1. cats\\nand dogs   75.00%",
                                  "  2. tab\\there        25.00%"]


# --------------------------------------------------------------------------- 4. verified mark


def test_a_staged_shard_damaged_in_place_with_size_and_mtime_restored_is_caught(packed_tiny, tmp_path):
    """Bit rot (or a stray write) that keeps the size and puts the mtime back with os.utime:
    the reuse record matched on size and mtime alone and trusted the shard."""
    import os
    import shutil

    from core.data.packed import verify_packed
    root = tmp_path / "staged"
    shutil.copytree(packed_tiny, root)
    assert verify_packed(root, reuse=True)["files"] > 0
    shard = sorted(root.glob("train-*.mindrecord"))[0]
    before = shard.stat()
    with open(shard, "r+b") as fh:
        fh.seek(before.st_size // 2)
        byte = fh.read(1)
        fh.seek(before.st_size // 2)
        fh.write(bytes([byte[0] ^ 0x5A]))
    os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = shard.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    with pytest.raises(DatasetError, match=f"{shard.name} fails its sha256 check"):
        verify_packed(root, reuse=True)
    shutil.copyfile(packed_tiny / shard.name, shard)  # repaired: verifies again (and re-records)
    verify_packed(root, reuse=True)
    verify_packed(root, reuse=True)


# --------------------------------------------------------------------------- 3. a stalled store


def _stopped(server):
    """SIGSTOP the SeaweedFS process group (a hung store: connections are accepted by the
    kernel, nothing answers); always SIGCONT on the way out."""
    import contextlib
    import os
    import signal

    @contextlib.contextmanager
    def stopped():
        os.killpg(server.process.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.killpg(server.process.pid, signal.SIGCONT)
    return stopped()


STALLED = "the store stopped answering (no data for 2 s over 2 attempts; storage.stall_timeout_s)"


def test_a_stalled_store_warns_and_gives_up_after_the_stall_timeout(private_s3, tmp_path, caplog):
    """Reads, staging (listing, small objects through the lean path, a multipart object through
    boto3's transfer manager) and uploads against a SIGSTOPped SeaweedFS: a warning line per
    attempt that got nothing, then one StorageError within about storage.stall_timeout_s
    (was: silence for read_timeout_s x max_attempts, 5 minutes by default)."""
    import os
    import time

    from cloud.storage.errors import StorageError
    from cloud.storage.store import open_storage
    from cloud.storage.sync import download_tree
    server = private_s3()
    bucket = server.make_bucket()
    # the objects are written with the default timeouts: a busy machine's SeaweedFS may take
    # more than the test's 1 s attempts to answer while it is running
    setup = open_storage(f"s3://{bucket}/d", server.settings())
    for i in range(3):
        setup.write_bytes(f"small/f{i}.bin", os.urandom(1000))
    setup.write_bytes("big.bin", os.urandom(3 << 20))
    storage = open_storage(f"s3://{bucket}/d", server.settings(stall_timeout_s=2, max_attempts=2,
                                                               multipart_threshold_mb=1))
    local = tmp_path / "ckpt.bin"
    local.write_bytes(os.urandom(2000))

    def small_batch():
        errors = []
        with storage.batch() as batch:
            for i in range(3):
                batch.download(f"small/f{i}.bin", str(tmp_path / f"g{i}"), size=1000,
                               on_done=errors.append)
        if any(errors):
            raise next(e for e in errors if e)

    operations = {"read": lambda: storage.read_bytes("small/f0.bin"),
                  "staging": lambda: download_tree(storage, "", str(tmp_path / "staged")),
                  "small objects": small_batch,
                  "multipart": lambda: storage.download_file("big.bin", str(tmp_path / "big")),
                  "upload": lambda: storage.upload_file(str(local), "checkpoints/c.ckpt")}
    with _stopped(server), caplog.at_level("WARNING"):
        for name, operation in operations.items():
            caplog.clear()
            started = time.monotonic()
            with pytest.raises(StorageError) as caught:
                operation()
            took = time.monotonic() - started
            assert STALLED in str(caught.value), (name, str(caught.value))
            assert took < 2 * 2 + 5, (name, took)  # two transfer attempts of 2 s, plus backoff
            warned = [r.getMessage() for r in caplog.records if "no answer from" in r.getMessage()]
            assert warned and "giving up after about 2 s (storage.stall_timeout_s)" in warned[0], name
    # back after SIGCONT (with the default stall timeout: SeaweedFS first catches up on the
    # heartbeats it missed, which can take longer than this test's 1 s attempts)
    assert open_storage(f"s3://{bucket}/d", server.settings()).read_bytes("small/f0.bin")


def test_resume_auto_from_a_stalled_store_is_one_error_line(private_s3, tmp_path):
    import time
    server = private_s3()
    bucket = server.make_bucket()
    server.client().put_object(Bucket=bucket, Key="run/checkpoints/latest.json", Body=b"{}")
    env = base_env(MNV3_CACHE_DIR=tmp_path / "cache", AWS_EC2_METADATA_DISABLED="true", **server.env())
    argv = [sys.executable, str(REPO / "launcher" / "local.py"), "train", "--output_dir",
            f"s3://{bucket}/run", "--resume", "auto", "--device_target", "CPU",
            "storage.stall_timeout_s=2", "storage.max_attempts=2"]
    with _stopped(server):
        started = time.monotonic()
        result = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=240)
        took = time.monotonic() - started
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    line = one_line_error(result.stderr)
    assert line.startswith("error: ") and STALLED in line, line
    assert "no answer from" in result.stdout + result.stderr
    assert took < 60, took
    assert server.env()["AWS_SECRET_ACCESS_KEY"] not in result.stdout + result.stderr


# --------------------------------------------------------------------------- lease after a stop


def test_a_writer_stopped_past_its_lease_uploads_nothing_when_it_continues(private_s3, tmp_path):
    """The writer is SIGSTOPped past its lease; another run takes the output over and writes
    its manifest; SIGCONT: the old writer's next checkpoint, manifest and run-directory publish
    all stay off the store."""
    import os
    import signal
    import time

    from cloud.storage.checkpoint_store import CheckpointUploader
    from core.checkpoint_store import CheckpointStore
    from cloud.storage.lease import Lease
    from cloud.storage.store import open_storage
    server = private_s3()
    bucket = server.make_bucket()
    url = f"s3://{bucket}/out"
    run = tmp_path / "old-run"
    run.mkdir()
    writer = subprocess.Popen([sys.executable, str(REPO / "tests" / "lease_writer.py"), url, str(run), "2"],
                              env=base_env(**server.env()), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "ready").exists():
            assert writer.poll() is None and time.monotonic() < deadline, writer.communicate()
            time.sleep(0.05)
        storage = open_storage(url, server.settings())
        os.kill(writer.pid, signal.SIGSTOP)
        try:
            time.sleep(3.0)  # past the 2 s lease
            lease = Lease(storage, "job-new", ttl_s=60, wait_s=10).acquire()
            mine = tmp_path / "m-e0001-s00000002.ckpt"
            mine.write_bytes(os.urandom(1000))
            uploader = CheckpointUploader(storage, "checkpoints", keep=3, retries=0, lease=lease)
            uploader.submit(str(mine), {"epoch": 1, "step": 2})
            assert uploader.close(60).ok
        finally:
            os.kill(writer.pid, signal.SIGCONT)
        (run / "go").write_text("")
        out, err = writer.communicate(timeout=120)
    finally:
        if writer.poll() is None:
            os.kill(writer.pid, signal.SIGKILL)
            writer.wait()
    assert writer.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["failed"] and "no longer owns" in result["failed"][0], result
    assert result["publish_error"] and "could not be published" in result["publish_error"], result
    keys = sorted(o.key.split("/out/", 1)[-1] if "/out/" in o.key else o.key for o in storage.list(""))
    assert not any("s00000003" in k for k in keys), keys
    assert "train.log" not in keys and "ready" not in keys, keys
    assert CheckpointStore(storage, "checkpoints").manifest()["step"] == 2
    lease.release()
