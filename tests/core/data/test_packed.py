"""Packed datasets: ImageFolder -> MindRecord shards -> the same samples, order and augmentations."""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.data.sources import open_dataset
from core.data.imagefolder import ImageFolder, scan_split
from core.data.packed import INDEX_NAME, PackedDataset, is_packed, load_packed_split, verify_packed
from core.data.packing import STATE_DIR, pack_imagefolder
from core.data.pipeline import CorruptImages, DatasetError
from tests.core_fixtures import tiny_config

from tests.paths import REPO
SHARD_MB = 0.02  # ~10 tiny JPEGs a shard: 6 train + 3 val shards


@pytest.fixture(scope="session")
def packed(tiny_dataset, tmp_path_factory):
    """The tiny dataset packed once, by two worker processes."""
    dst = tmp_path_factory.mktemp("packed")
    pack_imagefolder(tiny_dataset, dst, shard_size_mb=SHARD_MB, workers=2)
    return dst


def index_of(root) -> dict:
    return json.loads((Path(root) / INDEX_NAME).read_text())


def batches(dataset):
    return [tuple(a.copy() for a in row)
            for row in dataset.create_tuple_iterator(num_epochs=1, output_numpy=True)]


def assert_same_batches(expected, got):
    assert len(expected) == len(got)
    for (image_a, label_a), (image_b, label_b) in zip(expected, got):
        np.testing.assert_array_equal(label_a, label_b)
        np.testing.assert_array_equal(image_a, image_b)


def test_round_trip_bytes_labels_and_names(tiny_dataset, packed):
    import mindspore.dataset as ds
    index = index_of(packed)
    assert is_packed(packed) and not (packed / STATE_DIR).exists()
    assert [len(index["splits"][s]["shards"]) for s in ("train", "val")] == [6, 3]
    train = scan_split(tiny_dataset / "train")
    assert index["classes"] == list(train.classes)
    for split in ("train", "val"):
        images = scan_split(tiny_dataset / split, train.classes)
        got = load_packed_split(packed, split)
        assert len(got) == len(images) and got.classes == images.classes
        assert got.labels.tolist() == list(images.labels)
        rows = ds.MindDataset(list(got.shards), columns_list=["image", "label", "file_name"],
                              shuffle=False)
        read = list(rows.create_tuple_iterator(num_epochs=1, output_numpy=True))
        assert len(read) == len(images)
        for (data, label, name), path, want in zip(read, images.files, images.labels):
            assert data.tobytes() == Path(path).read_bytes()  # the original JPEG, not re-encoded
            assert int(label) == want
            assert str(name) == os.path.relpath(path, images.root)
    # one layout for all shards: MindDataset refuses shards whose headers differ
    layouts = set()
    for shard in (s for split in index["splits"].values() for s in split["shards"]):
        raw = (packed / shard["name"]).read_bytes()
        header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
        layouts.add((header["page_size"], header["header_size"]))
    assert len(layouts) == 1
    # MindRecord's .db companions are in the index and checked like the data files
    shard = index["splits"]["train"]["shards"][0]
    assert [f["name"] for f in shard["files"]] == [shard["name"], shard["name"] + ".db"]
    assert verify_packed(packed)["files"] == 18


def test_open_dataset_chooses_the_source_by_the_layout(tiny_dataset, packed):
    folder, shards = open_dataset(tiny_dataset), open_dataset(packed)
    assert isinstance(folder, ImageFolder) and isinstance(shards, PackedDataset)
    assert folder.split("val").files == scan_split(tiny_dataset / "val").files
    assert shards.split("val").shards == load_packed_split(packed, "val").shards
    assert shards.has_split("val") and not shards.has_split("test")
    assert folder.has_split("val") and not folder.has_split("test")
    with pytest.raises(DatasetError, match=r"no split 'test' \(it has \['train', 'val'\]\)"):
        shards.split("test")
    assert shards.verify()["files"] == 18 and folder.verify()["files"] == 0


def test_interrupted_pack_resumes_to_the_clean_index(tiny_dataset, packed, tmp_path):
    dst = tmp_path / "dst"
    # A pack process that dies (SIGKILL, no clean-up) right after its second shard.
    code = (f"import os, signal, sys; sys.path.insert(0, {str(REPO)!r})\n"
            f"from core.data.packing import pack_imagefolder\n"
            f"def die(done, total, entry):\n"
            f"    if done >= 2: os.kill(os.getpid(), signal.SIGKILL)\n"
            f"pack_imagefolder({str(tiny_dataset)!r}, {str(dst)!r}, {SHARD_MB}, 2, progress=die)\n")
    log = tmp_path / "pack.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        proc.wait(120)
    finally:
        with_group_killed(proc)  # its pool workers, possibly mid-shard
    assert proc.returncode == -signal.SIGKILL, log.read_text()
    assert not is_packed(dst)
    markers = sorted(m for m in os.listdir(dst / STATE_DIR) if m.endswith(".json"))
    assert 2 <= len(markers) < 9
    # A shard caught mid-write: data file present, no marker. It must be rewritten.
    written = {m[:-len(".json")] for m in markers}
    unfinished = next(name for name in sorted(os.listdir(packed))
                      if name.endswith(".mindrecord") and name not in written)
    (dst / unfinished).write_bytes(b"half a shard")
    before = {m: (dst / m[:-5]).stat().st_mtime_ns for m in markers}

    index = pack_imagefolder(tiny_dataset, dst, shard_size_mb=SHARD_MB, workers=1)
    assert index == index_of(packed) == index_of(dst)
    assert sorted(os.listdir(dst)) == sorted(os.listdir(packed))
    assert all((dst / name[:-5]).stat().st_mtime_ns == t for name, t in before.items())  # kept
    verify_packed(dst)
    # a finished pack run again writes nothing and gives the same index
    assert pack_imagefolder(tiny_dataset, dst, shard_size_mb=SHARD_MB, workers=1) == index
    assert all((dst / name[:-5]).stat().st_mtime_ns == t for name, t in before.items())


def with_group_killed(proc):
    """Kill what is left of the process group started for `proc` (its pool workers)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if proc.poll() is None:
        proc.wait(30)


def test_repack_with_another_shard_size_leaves_no_stale_shards(tiny_dataset, packed, tmp_path):
    dst = tmp_path / "dst"
    shutil.copytree(packed, dst)
    index = pack_imagefolder(tiny_dataset, dst, shard_size_mb=0.05, workers=1)
    names = {f["name"] for s in index["splits"].values() for sh in s["shards"] for f in sh["files"]}
    assert len(index["splits"]["train"]["shards"]) == 3
    assert set(os.listdir(dst)) == names | {INDEX_NAME}
    verify_packed(dst)


@pytest.mark.parametrize("decoder", ["native", "mindspore"])
def test_train_pipeline_matches_the_imagefolder(tiny_dataset, packed, tmp_path, decoder):
    cfg = tiny_config(tiny_dataset, tmp_path, **{"data.decoder": decoder})
    folder, split = scan_split(tiny_dataset / "train"), load_packed_split(packed, "train")
    for kwargs in ({"seed": 1, "epoch": 0}, {"seed": 1, "epoch": 3, "rank": 1, "world": 2}):
        expected = batches(folder.train_pipeline(cfg.data, **kwargs))
        got = batches(split.train_pipeline(cfg.data, **kwargs))
        assert_same_batches(expected, got)
    # skip_batches: the remaining batches of a resumed epoch, augmentations included
    full = batches(split.train_pipeline(cfg.data, seed=1, epoch=0))
    resumed = batches(split.train_pipeline(cfg.data, seed=1, epoch=0, skip_batches=3))
    assert_same_batches(full[3:], resumed)


def test_eval_pipeline_covers_every_sample_once(tiny_dataset, packed, tmp_path):
    cfg = tiny_config(tiny_dataset, tmp_path)
    train = scan_split(tiny_dataset / "train")
    folder = scan_split(tiny_dataset / "val", train.classes)
    split = load_packed_split(packed, "val", train.classes)
    assert_same_batches(batches(folder.eval_pipeline(cfg.data)),
                        batches(split.eval_pipeline(cfg.data)))
    labels = [np.concatenate([b[1] for b in batches(split.eval_pipeline(cfg.data, r, 3))])
              for r in range(3)]
    assert sum(map(len, labels)) == len(folder)
    assert sorted(np.concatenate(labels).tolist()) == sorted(folder.labels)


def test_labels_follow_a_different_class_list(tiny_dataset, packed, tmp_path):
    cfg = tiny_config(tiny_dataset, tmp_path)
    stored = index_of(packed)["classes"]
    classes = list(reversed(stored)) + ["zebra"]  # e.g. a checkpoint's class list
    split = load_packed_split(packed, "val", classes)
    folder = scan_split(tiny_dataset / "val", classes)
    assert split.labels.tolist() == list(folder.labels)
    got = np.concatenate([b[1] for b in batches(split.eval_pipeline(cfg.data))])
    assert got.tolist() == list(folder.labels)
    with pytest.raises(DatasetError, match=r"class\(es\) \['checkerboard'\] that the training set lacks"):
        load_packed_split(packed, "val", stored[1:])


@pytest.mark.parametrize("decoder", ["native", "mindspore"])
def test_corrupt_images_are_replaced_as_in_the_imagefolder(tmp_path, decoder, caplog):
    from core.data.synthetic import generate
    root = generate(tmp_path / "folder", train_per_class=2, val_per_class=1, size=24)
    good = (root / "train" / "circle" / "circle_0000.jpg").read_bytes()
    (root / "train" / "circle" / "zz_truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "train" / "square" / "zz_notes.jpg").write_text("not an image at all")
    (root / "val" / "ring" / "zz_empty.jpg").write_bytes(b"")
    with caplog.at_level("WARNING", logger="core.data.packing"):
        pack_imagefolder(root, tmp_path / "packed", shard_size_mb=SHARD_MB, workers=1)
    train_line, val_line = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert train_line.startswith("train: 2 unreadable file(s)")  # said once per split, by name
    assert train_line.endswith(": circle/zz_truncated.jpg, square/zz_notes.jpg")
    assert val_line.startswith("val: 1 unreadable") and val_line.endswith(": ring/zz_empty.jpg")
    cfg = tiny_config(root, tmp_path, **{"data.batch_size": 2, "data.decoder": decoder})
    folder, split = scan_split(root / "train"), load_packed_split(tmp_path / "packed", "train")
    assert sorted(name.rsplit("/", 1)[-1] for name in split.corrupt.values()) == [
        "zz_notes.jpg", "zz_truncated.jpg"]
    seen_folder, seen_packed = CorruptImages(), CorruptImages()
    assert_same_batches(batches(folder.train_pipeline(cfg.data, 1, 0, corrupt=seen_folder)),
                        batches(split.train_pipeline(cfg.data, 1, 0, corrupt=seen_packed)))
    assert len(seen_packed.files) == len(seen_folder.files) == 2
    with pytest.raises(DatasetError, match=r"corrupt or non-image file .*:square/zz_notes\.jpg"):
        split.train_pipeline(cfg.data, 1, 0, corrupt=CorruptImages(fail_fast=True))
    with pytest.raises(DatasetError, match=r"corrupt or non-image file .*:ring/zz_empty\.jpg"):
        load_packed_split(tmp_path / "packed", "val").eval_pipeline(cfg.data)


def test_verify_names_a_flipped_byte_and_a_truncated_shard(packed, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(packed, dst)
    shard = dst / "train-00002.mindrecord"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"shard train-00002\.mindrecord: .* sha256 check"):
        verify_packed(dst)
    shutil.copy2(packed / shard.name, shard)
    db = dst / "val-00001.mindrecord.db"
    db.write_bytes(db.read_bytes()[:-100])
    with pytest.raises(DatasetError, match=r"shard val-00001\.mindrecord: val-00001\.mindrecord\.db "
                                           r"has \d+ bytes, the index says \d+"):
        verify_packed(dst)
    shutil.copy2(packed / db.name, db)
    assert verify_packed(dst, reuse=True)["files"] == 18
    assert verify_packed(dst, reuse=True)["files"] == 18  # from the record this time
    shard.write_bytes(bytes(data))  # a rewrite changes the mtime: hashed again
    with pytest.raises(DatasetError, match="sha256"):
        verify_packed(dst, reuse=True)


def test_pack_refuses_bad_input(tmp_path):
    with pytest.raises(DatasetError, match=r"train not found: pack expects an ImageFolder root"):
        pack_imagefolder(tmp_path, tmp_path / "out")
    with pytest.raises(DatasetError, match="not a packed dataset"):
        load_packed_split(tmp_path, "train")


def run_pack(argv) -> int:
    from launcher import cmd_pack
    top = argparse.ArgumentParser()
    cmd_pack.add_parser(top.add_subparsers(dest="command"))
    args = top.parse_args(["pack", *argv])
    return args.func(args)


def test_pack_command_through_s3(s3_server, tiny_dataset, packed, tmp_path, monkeypatch):
    from cloud.storage.store import open_storage
    from cloud.storage.sync import download_tree, upload_tree
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    bucket = s3_server.make_bucket()
    upload_tree(str(tiny_dataset), open_storage(f"s3://{bucket}/folder", s3_server.settings()), "")
    # a stale shard of an earlier pack under the destination: removed on publish
    s3_server.client().put_object(Bucket=bucket, Key="packed/train-00042.mindrecord", Body=b"old")
    argv = ["--src", f"s3://{bucket}/folder", "--dst", f"s3://{bucket}/packed",
            "--shard-size-mb", str(SHARD_MB), "--workers", "1", "--cache-dir", str(tmp_path / "cache"),
            "--set", f"storage.endpoint={s3_server.endpoint}", "--set", "storage.region=us-east-1"]
    assert run_pack(argv) == 0
    keys = {o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket, Prefix="packed/")["Contents"]}
    assert keys == {f"packed/{name}" for name in os.listdir(packed)}
    staged = tmp_path / "staged"
    download_tree(open_storage(f"s3://{bucket}/packed", s3_server.settings()), "", str(staged))
    assert index_of(staged) == index_of(packed)
    verify_packed(staged)
    # unchanged: a second run uploads nothing new and keeps the same index
    assert run_pack(argv) == 0
    assert json.loads(s3_server.client().get_object(Bucket=bucket, Key="packed/index.json")["Body"]
                      .read()) == index_of(packed)


def test_pack_command_errors_are_one_line(tmp_path):
    from cloud.storage.errors import StorageError
    with pytest.raises(DatasetError, match=r"^\S+/train not found: pack expects an ImageFolder root"):
        run_pack(["--src", str(tmp_path / "nowhere"), "--dst", str(tmp_path / "out")])
    with pytest.raises(StorageError, match="malformed storage URL 's3://A_B/x'"):
        run_pack(["--src", "s3://A_B/x", "--dst", str(tmp_path / "out")])
