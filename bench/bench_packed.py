"""Benchmark: an ImageFolder of small JPEGs against its packed MindRecord form.

On one dataset (default 20,000 JPEGs of ~110 KB, 500x375, in 100 classes):

* pack: time of core.data.packing.pack_imagefolder;
* staging from a local SeaweedFS into an empty cache with cloud.storage.sync.download_tree, each
  timed with its request count (HTTP requests, and objects): the ImageFolder (one object per
  image), the packed dataset (shards, .db files, index.json; then verify_packed), and the
  same bytes as ONE large object (the floor for moving that many bytes);
* input pipeline: images/s of the training pipeline (train transforms, 224 px) reading the
  folder and the shards, with 1 and 2 workers.

Prints ratios and writes bench/results/packed.json. Goals (not asserted): packed staging
within 1.2x of the one-object copy, and at least 5x faster than the ImageFolder staging.

    python bench/bench_packed.py                                  # full size (several minutes)
    python bench/bench_packed.py --images 2000 --batches 20       # quick
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cloud.storage.store import open_storage  # noqa: E402
from cloud.storage.sync import download_tree, upload_tree  # noqa: E402
from core.data.packed import verify_packed  # noqa: E402
from core.data.packing import pack_imagefolder  # noqa: E402
from launcher.seaweedfs import start_s3_server, stop_s3_server  # noqa: E402

MB = 1024 * 1024


# --------------------------------------------------------------------------- dataset


def photo_like(rng: np.random.Generator, sigma: float, height: int = 375, width: int = 500) -> np.ndarray:
    """Blocks of colour plus noise: decodes like a photo, and its JPEG size follows sigma."""
    base = rng.uniform(0, 255, (height // 25 + 1, width // 25 + 1, 3))
    image = np.kron(base, np.ones((25, 25, 1)))[:height, :width]
    return np.clip(image + rng.normal(0, sigma, image.shape), 0, 255).astype(np.uint8)


def encode(image: np.ndarray) -> bytes:
    from mindspore.dataset import vision
    return vision.encode_jpeg(image, quality=90).tobytes()


def noise_for(target_kb: float) -> float:
    """The noise level whose JPEGs average target_kb (bisection on a few samples)."""
    low, high = 0.0, 80.0
    for _ in range(12):
        sigma = (low + high) / 2
        rng = np.random.default_rng(1)
        size = np.mean([len(encode(photo_like(rng, sigma))) for _ in range(3)]) / 1024
        low, high = (sigma, high) if size < target_kb else (low, sigma)
    return (low + high) / 2


def _unique_images(args) -> list[bytes]:
    seed, count, sigma = args
    rng = np.random.default_rng(seed)
    return [encode(photo_like(rng, sigma)) for _ in range(count)]


def with_comment(jpeg: bytes, text: str) -> bytes:
    """The same picture as distinct bytes: a JPEG comment (COM) segment after SOI."""
    payload = text.encode()
    return jpeg[:2] + b"\xff\xfe" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def make_folder(root: str, images: int, classes: int, unique: int, kb: float, workers: int) -> int:
    """`root/train/classNNN/imgNNNNNN.jpg` (all in train/: the benchmark reads one split)."""
    sigma = noise_for(kb)
    chunks = [(seed, unique // workers + (seed < unique % workers), sigma) for seed in range(workers)]
    with ProcessPoolExecutor(workers) as pool:
        bases = [jpeg for chunk in pool.map(_unique_images, chunks) for jpeg in chunk]
    total = 0
    for i in range(images):
        folder = os.path.join(root, "train", f"class{i % classes:03d}")
        os.makedirs(folder, exist_ok=True)
        data = with_comment(bases[i % len(bases)], f"image {i}")
        with open(os.path.join(folder, f"img{i:06d}.jpg"), "wb") as fh:
            fh.write(data)
        total += len(data)
    return total


def concatenate(src_dir: str, target: str) -> int:
    """Every file of src_dir in one file: the same bytes as one object."""
    with open(target, "wb") as out:
        for dirpath, dirs, files in os.walk(src_dir):
            dirs.sort()
            for name in sorted(files):
                with open(os.path.join(dirpath, name), "rb") as fh:
                    shutil.copyfileobj(fh, out, 16 * MB)
    return os.path.getsize(target)


# --------------------------------------------------------------------------- measurements


def stage(storage, cache: str) -> dict:
    """download_tree into an empty cache: seconds, HTTP requests, objects, bytes."""
    shutil.rmtree(cache, ignore_errors=True)
    requests = [0]

    def count(**_):
        requests[0] += 1
    storage.client.meta.events.register("before-send.s3", count)
    try:
        started = time.perf_counter()
        stats = download_tree(storage, "", cache)
        seconds = time.perf_counter() - started
    finally:
        storage.client.meta.events.unregister("before-send.s3", count)
    return {"seconds": round(seconds, 3), "requests": requests[0], "objects": stats.files_transferred,
            "bytes": stats.bytes_transferred, "mb_per_s": round(stats.mb_per_s, 1)}


def pipeline_rate(dataset, batch_size: int, batches: int) -> dict:
    """Images/s over up to `batches` batches, the first (pipeline start-up) not timed."""
    started = time.perf_counter()
    iterator = dataset.create_tuple_iterator(num_epochs=1, output_numpy=True)
    next(iterator)
    first = time.perf_counter() - started
    started, seen = time.perf_counter(), 0
    for _ in range(batches - 1):
        try:
            next(iterator)
        except StopIteration:
            break
        seen += batch_size
    seconds = time.perf_counter() - started
    return {"images": seen, "seconds": round(seconds, 2), "images_per_s": round(seen / seconds, 1),
            "first_batch_s": round(first, 2)}


def data_config(workers: int, batch_size: int):
    from core.config import load_config
    return load_config(None, {"data.image_size": 224, "data.batch_size": batch_size,
                              "data.workers": workers}).data


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20000, help="number of JPEGs")
    parser.add_argument("--kb", type=float, default=110, help="average JPEG size, KB")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--unique", type=int, default=1000,
                        help="distinct pictures (the rest differ by a JPEG comment)")
    parser.add_argument("--shard-size-mb", type=float, default=256)
    parser.add_argument("--pack-workers", type=int, default=None, help="default: CPUs")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=150, help="pipeline batches timed, at most")
    parser.add_argument("--pipeline-workers", default="1,2", help="comma-separated")
    parser.add_argument("--repeat", type=int, default=1, help="staging runs each; the best is kept")
    parser.add_argument("--workdir", help="scratch folder (default: a temporary one, removed)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "results", "packed.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    from core.data.sources import open_dataset

    workdir = args.workdir or tempfile.mkdtemp(prefix="bench-packed-")
    owns = not args.workdir
    folder, packed = os.path.join(workdir, "folder"), os.path.join(workdir, "packed")
    results: dict = {}
    server = None
    try:
        t = time.perf_counter()
        payload = make_folder(folder, args.images, args.classes, args.unique, args.kb, os.cpu_count() or 1)
        print(f"dataset: {args.images} JPEGs, {payload / MB:.0f} MB "
              f"({payload / args.images / 1024:.0f} KB each), made in {time.perf_counter() - t:.0f} s",
              flush=True)
        t = time.perf_counter()
        index = pack_imagefolder(folder, packed, args.shard_size_mb, args.pack_workers)
        shards = len(index["splits"]["train"]["shards"])
        packed_bytes = sum(f["size"] for s in index["splits"]["train"]["shards"] for f in s["files"])
        results["pack"] = {"seconds": round(time.perf_counter() - t, 2), "shards": shards,
                           "bytes": packed_bytes, "overhead": round(packed_bytes / payload - 1, 4)}
        print(f"packed: {shards} shards, {packed_bytes / MB:.0f} MB "
              f"(+{100 * (packed_bytes / payload - 1):.1f}%), in {results['pack']['seconds']:.0f} s",
              flush=True)

        server = start_s3_server(os.path.join(workdir, "seaweedfs"))
        bucket = server.make_bucket("bench")
        settings = server.settings()
        t = time.perf_counter()
        upload_tree(folder, open_storage(f"s3://{bucket}/folder", settings), "")
        upload_tree(packed, open_storage(f"s3://{bucket}/packed", settings), "")
        big = os.path.join(workdir, "big")
        os.makedirs(big)
        big_bytes = concatenate(packed, os.path.join(big, "all.bin"))
        upload_tree(big, open_storage(f"s3://{bucket}/big", settings), "")
        shutil.rmtree(big)
        print(f"uploaded to SeaweedFS in {time.perf_counter() - t:.0f} s", flush=True)

        cache = os.path.join(workdir, "cache")
        for name, prefix in (("stage_one_object", "big"), ("stage_packed", "packed"),
                             ("stage_imagefolder", "folder")):
            storage = open_storage(f"s3://{bucket}/{prefix}", settings)
            runs = [stage(storage, os.path.join(cache, name)) for _ in range(args.repeat)]
            best = min(runs, key=lambda r: r["seconds"])
            results[name] = dict(best, all_seconds=[r["seconds"] for r in runs])
            if name == "stage_packed":
                results["verify_packed"] = verify_packed(os.path.join(cache, name))
            print(f"{name:>18}: {best['seconds']:7.2f} s, {best['requests']:6d} requests, "
                  f"{best['objects']:6d} objects, {best['bytes'] / MB:.0f} MB "
                  f"({best['mb_per_s']:.0f} MB/s)", flush=True)
        print(f"{'verify_packed':>18}: {results['verify_packed']['seconds']:7.2f} s (sha256 of "
              f"{results['verify_packed']['files']} files)", flush=True)
        stop_s3_server(server)
        server = None

        images = open_dataset(os.path.join(cache, "stage_imagefolder")).split("train")
        split = open_dataset(os.path.join(cache, "stage_packed")).split("train")
        for workers in (int(w) for w in args.pipeline_workers.split(",")):
            cfg = data_config(workers, args.batch_size)
            for name, source in (("imagefolder", images), ("packed", split)):
                started = time.perf_counter()
                dataset = source.train_pipeline(cfg, seed=0, epoch=0)
                built = time.perf_counter() - started
                rate = dict(pipeline_rate(dataset, args.batch_size, args.batches), build_s=round(built, 2))
                results[f"pipeline_{name}_{workers}w"] = rate
                print(f"pipeline {name:>11}, {workers} worker(s): {rate['images_per_s']:7.1f} images/s "
                      f"({rate['images']} images)", flush=True)

        one, pk, fo = (results[k]["seconds"] for k in ("stage_one_object", "stage_packed",
                                                        "stage_imagefolder"))
        ratios = {"packed_vs_one_object": round(pk / one, 2), "imagefolder_vs_packed": round(fo / pk, 1),
                  "requests_imagefolder_vs_packed": round(results["stage_imagefolder"]["requests"] /
                                                          results["stage_packed"]["requests"], 1)}
        print(f"packed staging / one-object copy: {ratios['packed_vs_one_object']:.2f}x (goal <= 1.2)")
        print(f"ImageFolder staging / packed staging: {ratios['imagefolder_vs_packed']:.1f}x (goal >= 5)")
        print(f"requests, ImageFolder / packed: {ratios['requests_imagefolder_vs_packed']:.0f}x")
        summary = {
            "dataset": {"images": args.images, "avg_kb": round(payload / args.images / 1024, 1),
                        "classes": args.classes, "unique_pictures": args.unique,
                        "payload_bytes": payload, "one_object_bytes": big_bytes,
                        "shard_size_mb": args.shard_size_mb},
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform()},
            "results": results,
            "ratios": ratios,
            "goals": {"packed_within_1_2x_one_object": ratios["packed_vs_one_object"] <= 1.2,
                      "packed_5x_faster_than_imagefolder": ratios["imagefolder_vs_packed"] >= 5},
        }
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as fh:
            json.dump(summary, fh, indent=1)
        print(f"wrote {args.out}")
    finally:
        if server is not None:
            stop_s3_server(server)
        if owns:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
