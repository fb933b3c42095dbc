"""`pack --imagenet`: the official ILSVRC2012 files (and Kaggle's) to packed shards, unpacked never.

The miniature set (bench/imagenet_files.py) has the official structure; its docstring cites
where each format is documented (torchvision's imagenet.py parse_devkit_archive /
parse_train_archive / parse_val_archive, the devkit's meta.mat and ground truth, Kaggle's
LOC_synset_mapping.txt and LOC_val_solution.csv).
"""
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from core.data.imagenet_archives import LocalFiles
from core.data.imagenet_devkit import read_devkit
from core.data.imagenet_pack import damaged_images, pack_imagenet
from core.data.packed import INDEX_NAME, load_packed_split, verify_packed
from core.data.packing import STATE_DIR
from core.data.pipeline import DatasetError
from bench.imagenet_files import IDS, WNIDS, WORDS, devkit, make_kaggle, make_mini_imagenet
from tests.core.data.test_packed import run_pack

from tests.paths import REPO
SHARD_MB, MAX_MB = 0.01, 0.02   # 32 KB pages, a shard fills one: 3 train shards, 1 val shard


@pytest.fixture(scope="session")
def mini(tmp_path_factory):
    return make_mini_imagenet(tmp_path_factory.mktemp("ilsvrc2012"))


@pytest.fixture(scope="session")
def packed(mini, tmp_path_factory):
    dst = tmp_path_factory.mktemp("imagenet-packed")
    pack_imagenet(LocalFiles(mini.root), dst, shard_size_mb=SHARD_MB, max_image_mb=MAX_MB, workers=1)
    return dst


def index_of(root) -> dict:
    return json.loads((Path(root) / INDEX_NAME).read_text())


def rows(root, split):
    import mindspore.dataset as ds
    data = load_packed_split(root, split)
    got = ds.MindDataset(list(data.shards), columns_list=["image", "label", "file_name"], shuffle=False)
    return [(bytes(i), int(l), str(n)) for i, l, n in got.create_tuple_iterator(num_epochs=1, output_numpy=True)]


def test_fixture_meta_mat_reads_as_torchvision_reads_the_real_one(mini):
    """torchvision's parse_meta_mat, verbatim in logic: zip(*synsets)[4] is num_children,
    [:3] are (ILSVRC2012_ID, WNID, words)."""
    import scipy.io
    with tarfile.open(mini.root / "ILSVRC2012_devkit_t12.tar.gz") as tar:
        mat = tar.extractfile("ILSVRC2012_devkit_t12/data/meta.mat").read()
    meta = scipy.io.loadmat(io.BytesIO(mat), squeeze_me=True)["synsets"]
    leaves = [meta[i] for i, n in enumerate(list(zip(*meta))[4]) if n == 0]
    idcs, wnids, classes = list(zip(*leaves))[:3]
    assert dict(zip(idcs, wnids)) == dict(zip(IDS, WNIDS)) and len(meta) == len(WNIDS) + 2
    parsed = read_devkit(open(mini.root / "ILSVRC2012_devkit_t12.tar.gz", "rb"), "devkit")
    assert parsed.wnids == tuple(sorted(WNIDS)) and parsed.words == WORDS
    assert list(IDS) != sorted(IDS)  # IDs not in wnid order: the mapping is exercised


def test_packs_every_image_with_the_devkit_label_and_trains(mini, packed, tmp_path):
    from core.train.metrics import read_metrics
    from core.train.loop import train
    from tests.core_fixtures import tiny_config
    index = index_of(packed)
    assert index["classes"] == sorted(WNIDS) and index["class_words"] == list(WORDS)
    assert [len(index["splits"][s]["shards"]) for s in ("train", "val")] == [3, 1]
    verify_packed(packed)
    val = rows(packed, "val")
    assert sorted(n for _, _, n in val) == sorted(f"{w}/{f}" for f, w in mini.val.items())
    for data, label, name in val:  # every val label against the devkit's mapping
        wnid, file = name.split("/")
        assert index["classes"][label] == wnid == mini.val[file] and data == mini.val_bytes[file]
    train_rows = rows(packed, "train")
    assert {n: d for d, _, n in train_rows} == mini.train  # bytes untouched, nothing lost
    assert all(index["classes"][label] == n.split("/")[0] for _, label, n in train_rows)
    assert damaged_images(index) == [f"train/{mini.special['damaged']}"]
    import mindspore.dataset.vision as vision
    from PIL import Image
    for kind in ("cmyk", "png"):  # decode as the pipeline does, colours as Pillow sees them
        blob = mini.train[mini.special[kind]]
        got = vision.Decode()(np.frombuffer(blob, np.uint8))
        want = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))
        assert got.shape == want.shape and np.abs(got.astype(int) - want).mean() < 3
    out = tmp_path / "run"
    summary = train(tiny_config(packed, out, **{"train.epochs": 1, "data.on_corrupt": "skip"}), out)
    assert summary["final_eval"]["images"] == 10
    assert any(r["type"] == "step" for r in read_metrics(out / "metrics.jsonl"))


def test_pack_command_from_seaweedfs_gives_the_same_shards(s3_server, mini, packed, tmp_path, monkeypatch,
                                                           capsys):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    bucket = s3_server.make_bucket()
    client = s3_server.client()
    for name in os.listdir(mini.root):
        client.upload_file(str(mini.root / name), bucket, f"ilsvrc2012/{name}")
    argv = ["--imagenet", f"s3://{bucket}/ilsvrc2012", "--dst", f"s3://{bucket}/packed",
            "--shard-size-mb", str(SHARD_MB), "--max-image-mb", str(MAX_MB), "--workers", "2",
            "--cache-dir", str(tmp_path / "cache"),
            "--set", f"storage.endpoint={s3_server.endpoint}", "--set", "storage.region=us-east-1"]
    assert run_pack(argv) == 0
    assert f"1 damaged image(s) kept out of training: train/{mini.special['damaged']}\n" in capsys.readouterr().out
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="packed/")["Contents"]}
    assert keys == {f"packed/{name}" for name in os.listdir(packed)}
    remote = json.loads(client.get_object(Bucket=bucket, Key="packed/index.json")["Body"].read())
    assert remote == index_of(packed)  # every shard's sha256: byte-identical to the local pack


def test_imagefolder_layout_and_kaggle_source(mini, packed, tmp_path):
    folder = tmp_path / "folder"
    assert run_pack(["--imagenet", str(mini.root), "--dst", str(folder), "--layout", "imagefolder"]) == 0
    files = {str(p.relative_to(folder / "train")): p.read_bytes() for p in (folder / "train").rglob("*.JPEG")}
    assert files == mini.train
    assert {p.name: p.parent.name for p in (folder / "val").rglob("*.JPEG")} == mini.val
    kaggle = make_kaggle(mini, tmp_path / "kaggle")
    index = pack_imagenet(LocalFiles(kaggle), tmp_path / "k-packed", shard_size_mb=SHARD_MB,
                          max_image_mb=MAX_MB, workers=1)
    assert index["classes"] == index_of(packed)["classes"]
    assert sorted((n, l) for _, l, n in rows(tmp_path / "k-packed", "val")) == \
        sorted((n, l) for _, l, n in rows(packed, "val"))


def test_killed_pack_resumes_to_identical_shards(mini, packed, tmp_path):
    dst = tmp_path / "dst"
    code = (f"import os, signal, sys; sys.path.insert(0, {str(REPO)!r})\n"
            f"import core.data.stream_packing as sp\n"
            f"from core.data.imagenet_archives import LocalFiles\n"
            f"from core.data.imagenet_pack import pack_imagenet\n"
            f"write, done = sp.write_spooled, []\n"
            f"def die_after_two(dst, plan):\n"
            f"    entry = write(dst, plan); done.append(plan)\n"
            f"    if len(done) == 2: os.kill(os.getpid(), signal.SIGKILL)\n"
            f"    return entry\n"
            f"sp.write_spooled = die_after_two\n"
            f"pack_imagenet(LocalFiles({str(mini.root)!r}), {str(dst)!r}, shard_size_mb={SHARD_MB}, "
            f"max_image_mb={MAX_MB}, workers=1)\n")
    # one process (workers=1): nothing is left running after its SIGKILL
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    markers = sorted(m for m in os.listdir(dst / STATE_DIR) if m.endswith(".mindrecord.json"))
    assert markers == ["train-00000.mindrecord.json", "val-00000.mindrecord.json"]
    kept = {m[:-5]: (dst / m[:-5]).stat().st_mtime_ns for m in markers}
    index = pack_imagenet(LocalFiles(mini.root), dst, shard_size_mb=SHARD_MB, max_image_mb=MAX_MB,
                          workers=1)
    assert index == index_of(packed) and sorted(os.listdir(dst)) == sorted(os.listdir(packed))
    assert all((dst / name).stat().st_mtime_ns == t for name, t in kept.items())  # not rewritten
    verify_packed(dst)


def _broken_copy(mini, tmp_path, name, data) -> Path:
    src = tmp_path / "src"
    shutil.copytree(mini.root, src)
    (src / name).write_bytes(data)
    return src


def test_truncated_train_tar_is_one_error_and_a_rerun_resumes(mini, packed, tmp_path):
    full = (mini.root / "ILSVRC2012_img_train.tar").read_bytes()
    src = _broken_copy(mini, tmp_path, "ILSVRC2012_img_train.tar", full[:len(full) * 3 // 4])
    dst = tmp_path / "dst"
    with pytest.raises(DatasetError, match=r"ILSVRC2012_img_train.tar ends early or is damaged "
                                           r"\(.*\) after \d+ images, [\d.]+ of [\d.]+ MB read: "
                                           r"download it again, then rerun"):
        pack_imagenet(LocalFiles(src), dst, shard_size_mb=SHARD_MB, max_image_mb=MAX_MB, workers=1)
    assert (dst / STATE_DIR / "train-00000.mindrecord.json").exists()  # val and a train shard kept
    (src / "ILSVRC2012_img_train.tar").write_bytes(full)
    assert pack_imagenet(LocalFiles(src), dst, shard_size_mb=SHARD_MB, max_image_mb=MAX_MB,
                         workers=1) == index_of(packed)


def test_bad_sources_are_one_line(mini, tmp_path):
    def fails(src, pattern):
        with pytest.raises(DatasetError, match=pattern) as caught:
            pack_imagenet(LocalFiles(src), tmp_path / "out", shard_size_mb=SHARD_MB, max_image_mb=MAX_MB,
                          workers=1)
        assert "\n" not in str(caught.value)
    missing = tmp_path / "missing"
    shutil.copytree(mini.root, missing)
    os.remove(missing / "ILSVRC2012_img_val.tar")
    fails(missing, r"ILSVRC2012_img_val.tar not found: --imagenet expects a folder holding "
                   r"ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar and ILSVRC2012_devkit_t12.tar.gz")
    truth = [IDS[WNIDS.index(w)] for _, w in sorted(mini.val.items())]
    fails(_broken_copy(mini, tmp_path / "a", "ILSVRC2012_devkit_t12.tar.gz", devkit(truth, with_meta=False)),
          r"has no ILSVRC2012_devkit_t12/data/meta.mat; it is not the ILSVRC2012 devkit")
    no_truth = io.BytesIO()
    with tarfile.open(fileobj=no_truth, mode="w:gz") as tar, \
            tarfile.open(mini.root / "ILSVRC2012_devkit_t12.tar.gz") as real:
        for member in real:
            if not member.name.endswith("ground_truth.txt"):
                tar.addfile(member, real.extractfile(member))
    fails(_broken_copy(mini, tmp_path / "g", "ILSVRC2012_devkit_t12.tar.gz", no_truth.getvalue()),
          r"has no ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt; it is not")
    fails(_broken_copy(mini, tmp_path / "b", "ILSVRC2012_devkit_t12.tar.gz", devkit(truth + truth[:1])),
          r"the ground truth labels 11 val images but \S+ILSVRC2012_img_val.tar holds 10: download")
    fails(_broken_copy(mini, tmp_path / "c", "ILSVRC2012_devkit_t12.tar.gz", b"not gzip"),
          r"ILSVRC2012_devkit_t12.tar.gz is not a readable tar.gz")
    with pytest.raises(DatasetError, match=r"ILSVRC2012_val_00000001.JPEG is 0.00\d MB, above the largest image the shards hold "
                                           r"\(0.001 MB\): rerun with a larger --max-image-mb"):
        pack_imagenet(LocalFiles(mini.root), tmp_path / "small", max_image_mb=0.001, workers=1)


def test_s3_stream_resumes_after_a_dropped_connection(s3_server):
    """A connection lost mid-archive: the read goes on from that byte with a ranged GET; an
    error the stream cannot ride out reaches the reader through the read-ahead thread."""
    from cloud.storage.errors import StorageError
    from cloud.storage.store import open_storage
    from cloud.storage.stream import ReadAhead, S3ReadStream, open_stream
    bucket = s3_server.make_bucket()
    blob = os.urandom(3 * 2 ** 20 + 123)
    s3_server.client().put_object(Bucket=bucket, Key="a/big.tar", Body=blob)
    storage = open_storage(f"s3://{bucket}/a", s3_server.settings())
    with open_stream(storage, "big.tar") as stream:
        assert stream.read() == blob
    raw, gets = S3ReadStream(storage, "big.tar"), []
    first_body, get = raw.body, raw._get

    class Drops:
        def read(self, n):
            if raw.position >= 2 ** 20:
                raise ConnectionResetError("connection reset by peer")
            return first_body.read(min(n, 2 ** 20 - raw.position))

        def close(self):
            first_body.close()

    raw.body, raw._get = Drops(), lambda: gets.append(raw.position) or get()
    assert io.BufferedReader(raw).read() == blob and gets == [2 ** 20]

    class Fails(io.RawIOBase):
        def readinto(self, buffer):
            raise StorageError("reading s3://b/k failed at byte 7")
    with pytest.raises(StorageError, match="failed at byte 7"):
        io.BufferedReader(ReadAhead(Fails())).read()


def test_stream_shards_end_on_a_full_page(tmp_path):
    """MindRecord pads a shard's last page: cut shards so that page is full, not 1/3 used."""
    from core.data.stream_packing import pack_records
    blobs = [bytes([i]) * 3000 for i in range(100)]
    index = pack_records(tmp_path, {"train": lambda: ((i % 2, f"c/{i}.JPEG", b) for i, b in enumerate(blobs))},
                         ["a", "b"], shard_size_mb=0.04, max_image_mb=0.02, workers=1)
    layout, shards = index["packed_from"], index["splits"]["train"]["shards"]
    assert layout["page_size"] == 32768  # 10 rows of 3000 bytes a page, 2 pages a shard
    assert [s["samples"] for s in shards] == [20] * 5
    assert all(s["files"][0]["size"] < layout["header_size"] + 2 * layout["page_size"] + 16384
               for s in shards)
