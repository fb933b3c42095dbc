"""Issue 25 item 1: training straight from a packed dataset on S3 (data.stream=true), against the
real components: SeaweedFS on 127.0.0.1 (tests/s3_server.py), real JPEG packs written by the pack
command's code, MindSpore's dataset pipeline, and the launcher as a user runs it.

* a streamed run killed (-9) mid-epoch and resumed with --resume auto ends with the weights of
  the same pack trained staged (system.cpu_threads=1: bit-for-bit repeatable runs);
* a shard damaged in the cache or on the store is fetched again; one that stays damaged, and a
  store that stays down, are one error line;
* the node cache stays within a tiny data.cache_limit_gb whatever the sample order (peak bytes
  measured on disk while reading), and reads the same bytes as the staged pack;
* two processes of a node streaming the same pack download each shard file once (GETs counted on
  the wire, botocore's event hooks, in each process);
* a pass starts while its shards are still downloading (samples read by ranged GETs), and a
  sample the store served otherwise than the verified shard holds stops the run with one line.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cloud.storage.shard_cache import ShardCache, open_streamed_pack
from cloud.storage.store import open_storage
from cloud.storage.sync import upload_tree
from core import checkpoint as ckpt
from core.config import load_config
from core.data.packed import PackedDataset
from core.data.packing import pack_imagefolder
from core.data.pipeline import CorruptImages, DatasetError, guarded
from core.train.sample_log import read_sample_log
from tests.fault_tools import LOCAL, TINY, base_env, private_s3, procs, run_spawned  # noqa: F401 (fixtures)
from tests.paths import REPO

HOOKS = REPO / "tests" / "hooks"


@pytest.fixture(scope="module")
def pack(tiny_dataset, tmp_path_factory):
    """tiny_dataset packed in small shards (train 60 images in 8, val 30 in 4)."""
    root = tmp_path_factory.mktemp("stream-pack")
    pack_imagefolder(tiny_dataset, root, shard_size_mb=0.015, workers=1)
    return root


@pytest.fixture(scope="module")
def stored_pack(s3_server, pack):
    """The pack on SeaweedFS: (url, local copy)."""
    bucket = s3_server.make_bucket()
    url = f"s3://{bucket}/packed"
    upload_tree(str(pack), open_storage(url, s3_server.settings()), "")
    return url, pack


def data_cfg(**overrides):
    return load_config(None, {f"data.{k}": v for k, v in overrides.items()}).data


def shard_bytes(pack) -> list[int]:
    index = json.loads((pack / "index.json").read_text())
    return [sum(f["size"] for f in shard["files"]) for split in index["splits"].values()
            for shard in split["shards"]]


def staged_rows(pack, split: str, order: np.ndarray) -> list[tuple[bytes, int]]:
    """What the staged pack reads (core.data.packed: MindDataset over every shard)."""
    rows = PackedDataset(pack).split(split).rows(order, 0, CorruptImages(), 1)
    return [(image.tobytes(), int(label)) for image, label in
            rows.create_tuple_iterator(num_epochs=1, output_numpy=True)]


def streamed_rows(split, order: np.ndarray, corrupt=None) -> list[tuple[bytes, int]]:
    corrupt = corrupt or CorruptImages()
    rows = split.rows(order, 0, corrupt, 1)
    return [(image.tobytes(), int(label)) for image, label in
            guarded(rows.create_tuple_iterator(num_epochs=1, output_numpy=True), corrupt)]


def cache_of(split) -> ShardCache:
    return split.source


# --------------------------------------------------------------------------- training


def weights(path) -> dict:
    return {k: v.asnumpy() for k, v in ckpt.load(path).params.items()}


def test_streamed_run_killed_mid_epoch_resumes_and_equals_the_staged_pack(
        s3_server, stored_pack, tmp_path, procs):
    """Before streaming existed `data.stream` was an unknown key: the run was refused."""
    url, pack = stored_pack
    common = [*TINY, "train.epochs=2", "checkpoint.interval_steps=3", "system.cpu_threads=1",
              "optim.lr=0.02", "data.shuffle_window=2", "data.sample_log=true"]
    staged_out, streamed_out = tmp_path / "staged", tmp_path / "streamed"
    cache = tmp_path / "cache"
    env = base_env(**s3_server.env(), MNV3_CACHE_DIR=cache)
    hang = dict(env, PYTHONPATH=str(HOOKS), MNV3_TEST_HANG_AT="0:5")  # stops for good at step 5
    # the same pack staged (a local copy is what staging verifies into the cache), meanwhile
    reference = procs([LOCAL, "train", "--dataset_path", pack, "--output_dir", staged_out, *common], env)
    streamed = [LOCAL, "train", "--dataset_path", url, "--output_dir", streamed_out, *common,
                "data.stream=true", "data.prefetch_shards=2"]
    first = procs(streamed, hang)
    first.wait_for(lambda: "injected hang" in first.stdout, 300, "the streamed run at step 5")
    first.kill()  # SIGKILL, mid-epoch (7 steps per epoch), its newest checkpoint at step 3
    assert "streamed from" in first.stdout
    saved = sorted(p.name for p in (streamed_out / "checkpoints").glob("*.ckpt"))
    assert saved == ["mobilenetv3-e0000-s00000003.ckpt"], saved
    logged = len((streamed_out / "samples.jsonl").read_text().splitlines())

    second = procs(streamed + ["--resume", "auto"], env)
    assert second.wait(300) == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "at global step 3" in second.stdout
    # the killed run's verified shards were used again: only the val shards (read at the end) came
    downloaded = [line for line in second.stdout.splitlines() if "streamed from" in line]
    assert downloaded and all("shard val-" in line for line in downloaded), downloaded
    # the node cache where msrun's ranks keep theirs too (test_elastic_resume), so a resume on
    # another process count finds the shards: <cache>/stream/<bucket>_<prefix>_<hash>/
    assert len(list((cache / "stream").iterdir())) == 1 and not (cache / "jobs").exists()
    summary = json.loads((streamed_out / "summary.json").read_text())
    assert (summary["start_step"], summary["step"], summary["status"]) == (3, 14, "completed")

    assert reference.wait(300) == 0, reference.stdout[-3000:] + reference.stderr[-3000:]
    final = "mobilenetv3-e0002-s00000014.ckpt"
    ours = weights(streamed_out / "checkpoints" / final)
    theirs = weights(staged_out / "checkpoints" / final)
    assert ours.keys() == theirs.keys()
    worst = max(float(np.max(np.abs(ours[k].astype(np.float64) - theirs[k]))) for k in ours)
    assert worst == 0.0, f"streamed and resumed differs from the staged run by {worst}"
    ref_summary = json.loads((staged_out / "summary.json").read_text())
    timeless = lambda record: {k: v for k, v in record.items() if k != "seconds"}  # noqa: E731
    assert timeless(summary["final_eval"]) == timeless(ref_summary["final_eval"])
    # the sample ledger: the resumed run went on at the next position after its checkpoint
    lines = [json.loads(line) for line in (streamed_out / "samples.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines[:logged]] == list(range(1, logged + 1)) and logged >= 4
    assert [r["step"] for r in lines[logged:]] == list(range(4, 15))
    ours_ledger, _ = read_sample_log(streamed_out / "samples.jsonl")
    theirs_ledger, _ = read_sample_log(staged_out / "samples.jsonl")
    assert ours_ledger == theirs_ledger and len(ours_ledger) == 14  # the same samples, step by step
    assert lines[logged] == theirs_ledger[3]


# --------------------------------------------------------------------------- damaged shards


def test_a_shard_damaged_in_the_cache_or_on_the_store_is_fetched_again(s3_server, stored_pack,
                                                                       tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="cloud.storage.shard_cache")
    url, pack = stored_pack
    settings = s3_server.settings()
    dataset = open_streamed_pack(url, tmp_path / "cache", settings, data_cfg(prefetch_shards=0))
    split = dataset.split("train")
    order = np.arange(len(split))
    expected = staged_rows(pack, "train", order)
    assert streamed_rows(split, order) == expected
    cache = cache_of(split)
    assert cache.stats["downloads"] == 8

    # bytes changed in place in the cache (size and mtime put back): checked again, fetched again
    victim = tmp_path / "cache" / "train-00003.mindrecord"
    stat = victim.stat()
    data = bytearray(victim.read_bytes())
    data[-100] ^= 0xFF
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert streamed_rows(split, order) == expected
    assert cache.stats["downloads"] == 9
    assert "train-00003.mindrecord in the cache" in caplog.text and "fetching it again" in caplog.text

    # a download that arrives damaged (the store or the link flipped a byte): fetched again
    # (no ranged reads: every sample comes from a downloaded shard)
    fresh = open_streamed_pack(url, tmp_path / "cache2", settings,
                               data_cfg(prefetch_shards=0, ranged_reads_mb=0))
    real_get = fresh.source._get
    damaged = []

    def flip_first(files, parts, name):
        real_get(files, parts, name)
        if name == "train-00001.mindrecord" and not damaged:
            damaged.append(name)
            body = bytearray(parts[0].read_bytes())
            body[len(body) // 2] ^= 0x01
            parts[0].write_bytes(bytes(body))
    fresh.source._get = flip_first
    assert streamed_rows(fresh.split("train"), order) == expected
    assert damaged and fresh.source.stats["verify_failures"] == 1
    assert "train-00001.mindrecord" in caplog.text and "download 1 of 3" in caplog.text


def test_a_shard_damaged_on_the_store_for_good_is_one_error_line(s3_server, pack, tmp_path):
    bucket = s3_server.make_bucket()
    url = f"s3://{bucket}/packed"
    upload_tree(str(pack), open_storage(url, s3_server.settings()), "")
    body = bytearray((pack / "train-00002.mindrecord.db").read_bytes())
    body[-1] ^= 0xFF  # same size, other bytes
    s3_server.client().put_object(Bucket=bucket, Key="packed/train-00002.mindrecord.db", Body=bytes(body))
    # downloaded with its shard (no ranged reads), or fetched alone to read samples by range
    for ranged_mb, refusal in ((0, "shard train-00002.mindrecord fails its check against "
                                   "index.json after 3 downloads"),
                               (64, "train-00002.mindrecord.db fails its check against index.json")):
        cache = tmp_path / f"cache-{ranged_mb}"
        dataset = open_streamed_pack(url, cache, s3_server.settings(),
                                     data_cfg(prefetch_shards=1, ranged_reads_mb=ranged_mb))
        split = dataset.split("train")
        with pytest.raises(DatasetError) as caught:
            streamed_rows(split, np.arange(len(split)))
        message = str(caught.value)
        assert "\n" not in message
        assert message.startswith(f"streaming {url}: {refusal}"), message
        assert "train-00002.mindrecord.db has another sha256" in message and "upload" in message
        assert not (cache / "train-00002.mindrecord").exists()  # never under its name


def test_a_store_that_stays_down_stops_the_run_with_one_line(private_s3, pack, tmp_path):
    server = private_s3()
    bucket = server.make_bucket()
    url = f"s3://{bucket}/packed"
    upload_tree(str(pack), open_storage(url, server.settings()), "")  # a new bucket is slow at first
    settings = server.settings(max_attempts=2, stall_timeout_s=2, connect_timeout_s=1)
    dataset = open_streamed_pack(url, tmp_path / "cache", settings, data_cfg(prefetch_shards=0))
    split = dataset.split("train")
    server.kill()
    started = time.monotonic()
    with pytest.raises(DatasetError) as caught:
        streamed_rows(split, np.arange(len(split)))
    message = str(caught.value)
    assert "\n" not in message and time.monotonic() - started < 60
    assert message.startswith(f"streaming {url}: shard train-00000.mindrecord could not be "
                              f"downloaded"), message
    assert "keeps its checkpoints" in message and "--resume auto" in message


# --------------------------------------------------------------------------- before shards arrive


def _first_last_position(split, order) -> int:
    """The first position of `order` that is its shard's last (where the reader waits for it)."""
    firsts = np.array([entry["first"] for entry in split.entries])
    shard_at = np.searchsorted(firsts, order, side="right") - 1
    last = {int(s): p for p, s in enumerate(shard_at)}
    return min(last.values())


def test_a_pass_starts_while_its_shards_are_still_downloading(s3_server, stored_pack, tmp_path):
    url, pack = stored_pack
    dataset = open_streamed_pack(url, tmp_path / "cache", s3_server.settings(),
                                 data_cfg(prefetch_shards=2))
    cache = dataset.source
    real_get, arrive = cache._get, threading.Event()

    def held_back(files, parts, name):  # whole shards (data + .db) wait; a .db alone does not
        if len(files) == 2:
            assert arrive.wait(120), "the test never let the shards arrive"
        real_get(files, parts, name)
    cache._get = held_back
    split = dataset.split("train")
    order = np.random.default_rng(11).permutation(len(split))
    early = _first_last_position(split, order)
    assert early >= 4, "pick another seed: the reader would wait for a shard at once"
    corrupt = CorruptImages()
    rows = guarded(split.rows(order, 0, corrupt, 1).create_tuple_iterator(num_epochs=1,
                                                                           output_numpy=True), corrupt)
    try:
        got = [next(rows) for _ in range(early)]  # every shard download is still held back
        assert cache.stats["downloads"] == 0 and cache.stats["ranged_reads"] >= early
    finally:
        arrive.set()
    got += list(rows)
    assert [(image.tobytes(), int(label)) for image, label in got] == staged_rows(pack, "train", order)
    assert cache.stats["downloads"] == 8  # and each shard still came whole, verified


def test_a_sample_the_store_served_otherwise_stops_the_run_with_one_line(s3_server, stored_pack,
                                                                         tmp_path):
    url, _ = stored_pack
    dataset = open_streamed_pack(url, tmp_path / "cache", s3_server.settings(),
                                 data_cfg(prefetch_shards=0))
    cache = dataset.source
    real_read = cache.read_range

    def flipped(name, offset, length):  # a sample's bytes (not the header) of one shard
        data = real_read(name, offset, length)
        if name == "train-00000.mindrecord" and offset > 4096:
            data = data[:-1] + bytes([data[-1] ^ 0x01])
        return data
    cache.read_range = flipped
    split = dataset.split("train")
    with pytest.raises(DatasetError) as caught:
        streamed_rows(split, np.arange(len(split)))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("shard train-00000.mindrecord: sample 0 as read from the store "
                              "before the shard arrived differs from the shard verified"), message
    assert "--resume auto" in message


# --------------------------------------------------------------------------- the cache limit


def test_the_cache_stays_within_a_tiny_limit_whatever_the_order(s3_server, stored_pack, tmp_path):
    url, pack = stored_pack
    sizes = shard_bytes(pack)
    limit = int(2.5 * max(sizes))  # two and a half shards, while prefetch asks for 4 more
    root = tmp_path / "cache #1 ?%"  # a URI of the shards' .db files must quote these
    dataset = open_streamed_pack(url, root, s3_server.settings(),
                                 data_cfg(prefetch_shards=4, cache_limit_gb=limit / 1024 ** 3))
    split = dataset.split("train")
    peak, stop = [0], threading.Event()

    def measure():  # what is on disk in the cache folder, incoming downloads included (not the
        while not stop.is_set():  # shards' small .db copies in names/, kept outside the limit)
            total = 0
            for folder, _, files in os.walk(root):
                if folder.endswith("names"):
                    continue
                for name in files:
                    if ".mindrecord" in name:
                        try:
                            total += os.path.getsize(os.path.join(folder, name))
                        except FileNotFoundError:
                            pass
            peak[0] = max(peak[0], total)
            time.sleep(0.002)
    sampler = threading.Thread(target=measure, daemon=True)
    sampler.start()
    try:
        orders = {"full shuffle": np.random.default_rng(0).permutation(len(split)),
                  "file order": np.arange(len(split))}
        for name, order in orders.items():
            assert streamed_rows(split, order) == staged_rows(pack, "train", order), name
    finally:
        stop.set()
        sampler.join()
    cache = cache_of(split)
    node = cache.node_stats()
    print(f"cache limit {limit} B: peak on disk {peak[0]} B, the cache's own peak "
          f"{node['peak_bytes']} B, {cache.stats['downloads']} downloads of 8 shards, "
          f"{cache.stats['evictions']} evictions")
    assert 0 < peak[0] <= limit and node["peak_bytes"] <= limit
    assert cache.stats["overdraws"] == 0
    assert cache.stats["downloads"] > 8  # a full shuffle through 2.5 shards fetches some again


# --------------------------------------------------------------------------- two processes


def _stream_in_process(url, root, settings, order_seed, start_at, results):
    """One process of the node: counts its GETs of shard files on the wire, reads every row."""
    import launcher.openmp  # noqa: F401
    from collections import Counter

    from cloud.storage.s3client import _botocore_session
    gets = Counter()

    def count(request, **_):
        key = request.url.split("?")[0].rsplit("/", 1)[-1]
        if ".mindrecord" in key:  # whole files; samples read by range before their shard came
            gets[key if "Range" not in request.headers else "ranged"] += 1
    _botocore_session(None).register("before-send.s3.GetObject", count)
    dataset = open_streamed_pack(url, root, settings, data_cfg(prefetch_shards=2))
    read = {}
    while time.time() < start_at:  # both start together
        time.sleep(0.005)
    for split_name in ("train", "val"):
        split = dataset.split(split_name)
        order = np.random.default_rng(order_seed).permutation(len(split))
        read[split_name] = [(len(image), label) for image, label in streamed_rows(split, order)]
    results.put({"gets": dict(gets), "downloads": dataset.source.stats["downloads"],
                 "read": read, "pid": os.getpid()})


def test_two_processes_of_a_node_download_each_shard_once(s3_server, stored_pack, tmp_path):
    url, pack = stored_pack
    index = json.loads((pack / "index.json").read_text())
    files = sorted(f["name"] for split in index["splits"].values() for shard in split["shards"]
                   for f in shard["files"])
    settings = s3_server.settings()
    results = run_spawned(_stream_in_process, (url, str(tmp_path / "cache"), settings, 5,
                                               time.time() + 6), 2, 240)
    gets = {}
    for result in results:
        for key, count in result["gets"].items():
            gets[key] = gets.get(key, 0) + count
    print("GETs per process:", [sorted(r["gets"].items()) for r in results])
    ranged = gets.pop("ranged", 0)
    assert ranged > 0  # the first samples of each pass, read before their shards arrived
    # each file downloaded once by the node; a .db may come twice: alone (to read samples of its
    # shard by range) and with its shard
    assert {k: v for k, v in gets.items() if not k.endswith(".db")} == {
        name: 1 for name in files if not name.endswith(".db")}, gets
    assert all(gets.get(name) in (1, 2) for name in files if name.endswith(".db")), gets
    assert sum(r["downloads"] for r in results) == len(files) // 2
    assert results[0]["read"] == results[1]["read"]  # and read the same rows


def test_sample_names_come_from_the_shards_index_files_alone(s3_server, stored_pack, tiny_dataset,
                                                            tmp_path, monkeypatch):
    """The sample ledger (data.sample_log) names a streamed sample as the folder it was packed
    from does, reading only the shards' small .db files, each checked against the index once
    (the ledger asks every step), and again only when the file changed."""
    import cloud.storage.shard_cache as shard_cache
    hashed = []
    real_hash = shard_cache.sha256_file
    monkeypatch.setattr(shard_cache, "sha256_file", lambda path: hashed.append(path) or real_hash(path))
    from core.data.imagefolder import scan_split
    url, _ = stored_pack
    dataset = open_streamed_pack(url, tmp_path / "cache", s3_server.settings(), data_cfg())
    split = dataset.split("train")
    folder = scan_split(Path(tiny_dataset) / "train")
    expected = [os.path.relpath(path, folder.root).replace(os.sep, "/") for path in folder.files]
    picks = np.random.default_rng(3).permutation(len(split))[:25]
    assert split.sample_names(picks) == [expected[i] for i in picks]
    assert not list((tmp_path / "cache").glob("*.mindrecord"))  # no shard was fetched for it
    shards = {split.entries[int(np.searchsorted([e["first"] for e in split.entries], i, "right")) - 1]
              ["name"] for i in picks}
    assert len(hashed) == len(shards)  # each .db fetched and checked once
    assert split.sample_names(picks) == [expected[i] for i in picks] and len(hashed) == len(shards)
    (touched,) = (tmp_path / "cache" / ".cloud-stream" / "names").glob(f"{sorted(shards)[0]}.db")
    os.utime(touched)  # changed since it was checked: checked again
    split.sample_names(picks)
    assert len(hashed) == len(shards) + 1 and Path(hashed[-1]) == touched
