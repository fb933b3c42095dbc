"""Benchmark: `pack --imagenet` from the official archives against the shell route.

On one generated set in the official structure (default 50 classes x 100 train JPEGs of
~110 KB, 500x375, in a tar of per-class tars; 1,000 flat val JPEGs; a devkit whose meta.mat
and ground truth are written like the real ones, bench/imagenet_files.py):

* archives: core.data.imagenet_pack.pack_imagenet reading the three files in place;
* archives over S3: the same, reading them from a local SeaweedFS (streaming GETs);
* shell route: `tar -xf` the train tar, `tar -xf` each inner tar (then delete it), untar the
  val tar and sort its images into class folders by the ground truth (what valprep.sh does),
  then core.data.packing.pack_imagefolder on the folder; each step timed.

Prints and writes bench/results/imagenet_pack.json: median seconds of `--repeats` interleaved
runs, images/s and MB/s of archive data, extra disk each route needs, and the ratios (measured
in the same run). Same shard size, same worker count for both routes.

    python bench/bench_imagenet_pack.py                       # ~600 MB, a few minutes
    python bench/bench_imagenet_pack.py --classes 10 --per-class 50 --val 200   # quick
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.bench_packed import _unique_images, noise_for, with_comment  # noqa: E402
from bench.common import Timer, median, write_result  # noqa: E402
from core.data.imagenet_archives import LocalFiles  # noqa: E402
from core.data.imagenet_pack import pack_imagenet  # noqa: E402
from core.data.packing import pack_imagefolder  # noqa: E402
from bench.imagenet_files import devkit  # noqa: E402

MB = 1024 * 1024


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 1_336_000_000, 0o644
    tar.addfile(info, io.BytesIO(data))


def make_archives(root: str, classes: int, per_class: int, val: int, kb: float, workers: int) -> dict:
    """The three official files in `root`, written as streams (nothing held whole)."""
    sigma = noise_for(kb)
    unique = 64
    with ProcessPoolExecutor(workers) as pool:
        bases = [j for chunk in pool.map(_unique_images, [(s, unique // workers, sigma)
                                                          for s in range(workers)]) for j in chunk]
    wnids = [f"n02{c:06d}" for c in range(classes)]
    ids = [(c * 7919) % classes + 1 for c in range(classes)]     # not in wnid order
    payload, count = 0, 0
    with tarfile.open(os.path.join(root, "ILSVRC2012_img_train.tar"), "w") as outer:
        for c, wnid in enumerate(wnids):
            inner_bytes = io.BytesIO()
            with tarfile.open(fileobj=inner_bytes, mode="w") as inner:
                for k in range(per_class):
                    data = with_comment(bases[count % len(bases)], f"train {count}")
                    _add(inner, f"{wnid}_{k}.JPEG", data)
                    payload, count = payload + len(data), count + 1
            _add(outer, f"{wnid}.tar", inner_bytes.getvalue())
    truth = [(i * 31) % classes for i in range(val)]
    with tarfile.open(os.path.join(root, "ILSVRC2012_img_val.tar"), "w") as tar:
        for i in range(val):
            data = with_comment(bases[i % len(bases)], f"val {i}")
            _add(tar, f"ILSVRC2012_val_{i + 1:08d}.JPEG", data)
            payload += len(data)
    with open(os.path.join(root, "ILSVRC2012_devkit_t12.tar.gz"), "wb") as fh:
        fh.write(devkit([ids[c] for c in truth], wnids=wnids, words=[f"class {w}" for w in wnids],
                        ids=ids))
    return {"images": count + val, "payload_mb": payload / MB, "wnids": wnids, "truth": truth,
            "archive_mb": sum(os.path.getsize(os.path.join(root, f)) for f in os.listdir(root)) / MB}


def shell_route(src: str, folder: str, dst: str, wnids: list[str], truth: list[int],
                shard_mb: float, workers: int) -> dict:
    """untar, untar the inner tars, sort val, pack the folder; seconds per step."""
    steps = {}
    train, val = os.path.join(folder, "train"), os.path.join(folder, "val")
    os.makedirs(train), os.makedirs(val)
    with Timer() as t:
        subprocess.run(["tar", "-xf", os.path.join(src, "ILSVRC2012_img_train.tar"), "-C", train], check=True)
    steps["untar_train"] = t.seconds
    with Timer() as t:
        for name in sorted(os.listdir(train)):
            target = os.path.join(train, name[:-4])
            os.makedirs(target)
            subprocess.run(["tar", "-xf", os.path.join(train, name), "-C", target], check=True)
            os.remove(os.path.join(train, name))
    steps["untar_inner"] = t.seconds
    with Timer() as t:
        subprocess.run(["tar", "-xf", os.path.join(src, "ILSVRC2012_img_val.tar"), "-C", val], check=True)
        for i, c in enumerate(truth, 1):
            os.makedirs(os.path.join(val, wnids[c]), exist_ok=True)
            name = f"ILSVRC2012_val_{i:08d}.JPEG"
            os.replace(os.path.join(val, name), os.path.join(val, wnids[c], name))
    steps["untar_sort_val"] = t.seconds
    with Timer() as t:
        pack_imagefolder(folder, dst, shard_size_mb=shard_mb, workers=workers)
    steps["pack_folder"] = t.seconds
    return steps


def disk_mb(path: str) -> float:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs) / MB


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=50)
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--val", type=int, default=1000)
    ap.add_argument("--kb", type=float, default=110)
    ap.add_argument("--shard-mb", type=float, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-s3", action="store_true", help="skip the SeaweedFS run")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each route (median kept)")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench-imagenet-")
    src = os.path.join(workdir, "ilsvrc2012")
    os.makedirs(src, exist_ok=True)
    server = None
    try:
        with Timer() as t:
            data = make_archives(src, args.classes, args.per_class, args.val, args.kb, args.workers)
        print(f"made {data['images']} images, {data['archive_mb']:.0f} MB of archives in {t.seconds:.0f} s")
        timings: dict[str, list] = {"archives": [], "shell": []}
        files = None
        if not args.no_s3:
            from cloud.storage.store import open_storage
            from cloud.storage.stream import StorageFiles
            from launcher.seaweedfs import start_s3_server
            server = start_s3_server(os.path.join(workdir, "seaweedfs"))
            bucket = server.make_bucket("bench")
            for name in os.listdir(src):
                server.client().upload_file(os.path.join(src, name), bucket, f"ilsvrc/{name}")
            files = StorageFiles(open_storage(f"s3://{bucket}/ilsvrc", server.settings()))
            timings["archives_s3"] = []
        disk, reference = {}, None
        for _ in range(args.repeats):  # interleaved: a busy neighbour slows every route alike
            for route in timings:
                out = os.path.join(workdir, f"out-{route}")
                with Timer() as t:
                    if route == "shell":
                        folder = os.path.join(workdir, "folder")
                        steps = shell_route(src, folder, out, data["wnids"], data["truth"],
                                            args.shard_mb, args.workers)
                        disk[route] = disk_mb(folder) + disk_mb(out)
                        shutil.rmtree(folder)
                    else:
                        index = pack_imagenet(files if route == "archives_s3" else LocalFiles(src), out,
                                              shard_size_mb=args.shard_mb, workers=args.workers)
                        reference = reference or index
                        assert index == reference, "packing over S3 gave other shards than locally"
                if route != "shell":
                    disk[route] = disk_mb(out)
                timings[route].append(steps if route == "shell" else t.seconds)
                shutil.rmtree(out)
        runs = {}
        for route, values in timings.items():
            seconds = [sum(v.values()) if isinstance(v, dict) else v for v in values]
            runs[route] = {"seconds": median(seconds), "all_seconds": seconds,
                           "extra_disk_mb": disk[route]}
            if route == "shell":
                runs[route]["steps"] = {k: median([v[k] for v in values]) for k in values[0]}
            runs[route]["images_per_s"] = data["images"] / runs[route]["seconds"]
            runs[route]["archive_mb_per_s"] = data["archive_mb"] / runs[route]["seconds"]
        result = {"dataset": {k: data[k] for k in ("images", "payload_mb", "archive_mb")} |
                  {"classes": args.classes, "per_class": args.per_class, "val": args.val},
                  "shard_mb": args.shard_mb, "workers": args.workers, "repeats": args.repeats,
                  "runs": runs,
                  "speedup_vs_shell": runs["shell"]["seconds"] / runs["archives"]["seconds"],
                  "speedup_s3_vs_shell": (runs["shell"]["seconds"] / runs["archives_s3"]["seconds"]
                                          if "archives_s3" in runs else None)}
        print(json.dumps(result, indent=2))
        print(f"wrote {write_result('imagenet_pack', result)}")
    finally:
        if server is not None:
            from launcher.seaweedfs import stop_s3_server
            stop_s3_server(server)
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    t0 = time.time()
    code = main()
    print(f"total {time.time() - t0:.0f} s")
    sys.exit(code)
