"""Benchmark: stage a dataset from a local SeaweedFS into an empty cache.

Times, on one dataset (default 2,000 files of ~110 KB plus 2 files of 200 MB):

* ours: ``cloud.sync.download_tree`` cold, then an unchanged re-sync;
* s5cmd ``cp``, ``aws s3 sync`` (if installed), and a plain boto3
  ``download_file`` loop, each into an empty directory;

then prints each time with its ratio to s5cmd and writes JSON to
bench/results/staging.json. Goals (not asserted): cold staging within 1.3x of
s5cmd, unchanged re-sync under 1 s.

    python bench/bench_staging.py                       # full size
    python bench/bench_staging.py --small 200 --large 1 --large-mb 20   # quick
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cloud.storage import open_storage  # noqa: E402
from cloud.sync import download_tree  # noqa: E402
from launcher.seaweedfs import start_s3_server, stop_s3_server  # noqa: E402

MB = 1024 * 1024


def tool(name: str) -> str | None:
    beside = os.path.join(os.path.dirname(sys.executable), name)
    return beside if os.access(beside, os.X_OK) else shutil.which(name)


def populate(server, bucket: str, small: int, small_kb: int, large: int, large_mb: int,
             workdir: str) -> int:
    """Upload the dataset (random bytes, 20 class directories)."""
    from botocore.config import Config
    client = server.client(Config(max_pool_connections=32))
    rng_block = os.urandom(small_kb * 1024 + 4096)
    total = 0

    def put_small(i: int) -> int:
        size = small_kb * 1024 + (i * 37) % 4096 - 2048  # ~110 KB, varied
        client.put_object(Bucket=bucket, Key=f"data/train/class{i % 20:02d}/img{i:05d}.jpg",
                          Body=rng_block[:size])
        return size

    with ThreadPoolExecutor(16) as pool:
        total += sum(pool.map(put_small, range(small)))
    from boto3.s3.transfer import TransferConfig
    big = os.path.join(workdir, "big.bin")
    for j in range(large):
        with open(big, "wb") as f:
            for _ in range(large_mb):
                f.write(os.urandom(MB))
        client.upload_file(big, bucket, f"data/archives/part{j}.bin",
                           Config=TransferConfig(multipart_threshold=16 * MB, multipart_chunksize=16 * MB))
        total += large_mb * MB
        os.remove(big)
    return total


def dir_bytes(path: str) -> tuple[int, int]:
    files = size = 0
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            if not name.startswith(".cloud-"):
                files += 1
                size += os.path.getsize(os.path.join(dirpath, name))
    return files, size


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def drop_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=2000, help="number of small files")
    parser.add_argument("--small-kb", type=int, default=110, help="size of a small file, KB")
    parser.add_argument("--large", type=int, default=2, help="number of large files")
    parser.add_argument("--large-mb", type=int, default=200, help="size of a large file, MB")
    parser.add_argument("--workers", type=int, default=None, help="our worker threads (default: settings)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds; each round times every tool once, the best is kept")
    parser.add_argument("--skip-peers", action="store_true", help="time only ours")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "results", "staging.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")

    workdir = tempfile.mkdtemp(prefix="bench-staging-")
    server = start_s3_server(os.path.join(workdir, "seaweedfs"))
    results: dict = {}
    try:
        bucket = server.make_bucket("bench")
        t_up = timed(lambda: populate(server, bucket, args.small, args.small_kb, args.large,
                                      args.large_mb, workdir))
        print(f"dataset: {args.small} x {args.small_kb} KB + {args.large} x {args.large_mb} MB "
              f"uploaded in {t_up:.1f} s", flush=True)
        settings = server.settings()
        if args.workers:
            settings["workers"] = args.workers
        storage = open_storage(f"s3://{bucket}/data", settings)
        env = {**os.environ, **server.env()}
        url = f"s3://{bucket}/data"

        runs = {}  # name -> (run, out_dir); timed round-robin so load changes hit all alike

        def add(name, run, out_dir):
            runs[name] = (run, out_dir)

        cache = os.path.join(workdir, "cache")
        add("ours_cold", lambda: download_tree(storage, "", cache, workers=args.workers), cache)
        if not args.skip_peers:
            s5cmd = tool("s5cmd")
            if s5cmd:
                out_s5 = os.path.join(workdir, "s5cmd")
                add("s5cmd", lambda: subprocess.run(
                    [s5cmd, "--endpoint-url", server.endpoint, "cp", f"{url}/*", out_s5 + "/"],
                    env=env, check=True, stdout=subprocess.DEVNULL), out_s5)
            aws = tool("aws")
            if aws:
                out_aws = os.path.join(workdir, "awscli")
                add("aws_s3_sync", lambda: subprocess.run(
                    [aws, "s3", "sync", "--only-show-errors", "--endpoint-url", server.endpoint,
                     url, out_aws], env=env, check=True), out_aws)
            out_loop = os.path.join(workdir, "boto3loop")

            def boto3_loop():
                client = server.client()
                for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="data/"):
                    for obj in page.get("Contents", []):
                        local = os.path.join(out_loop, obj["Key"][len("data/"):])
                        os.makedirs(os.path.dirname(local), exist_ok=True)
                        client.download_file(bucket, obj["Key"], local)
            add("boto3_download_loop", boto3_loop, out_loop)

        for name in runs:
            results[name] = {"all_seconds": []}
        for _round in range(args.repeat):
            for name, (run, out_dir) in runs.items():
                drop_dir(out_dir)
                os.makedirs(out_dir)
                cpu = time.process_time()
                results[name]["all_seconds"].append(round(timed(run), 3))
                if name == "ours_cold":
                    results[name].setdefault("cpu_seconds", []).append(round(time.process_time() - cpu, 3))
                if name == "ours_cold" and _round == args.repeat - 1:
                    resync = [timed(lambda: download_tree(storage, "", cache, workers=args.workers))
                              for _ in range(3)]
                    results["ours_resync_unchanged"] = {"seconds": min(resync),
                                                        "all_seconds": [round(t, 3) for t in resync]}
                files, size = dir_bytes(out_dir)
                results[name].update(files=files, bytes=size)
                if name != "ours_cold":
                    drop_dir(out_dir)
        for name in runs:
            result = results[name]
            result["seconds"] = min(result["all_seconds"])
            print(f"{name:>22}: {result['seconds']:6.2f} s  (best of {args.repeat}; "
                  f"{result['files']} files, {result['bytes'] / MB:.0f} MB)", flush=True)
        print(f"{'ours_resync_unchanged':>22}: {results['ours_resync_unchanged']['seconds']:6.2f} s")
        t_resync = results["ours_resync_unchanged"]["seconds"]

        base = results.get("s5cmd", {}).get("seconds")
        if base:
            print("ratios vs s5cmd:")
            for name, result in results.items():
                result["ratio_vs_s5cmd"] = round(result["seconds"] / base, 2)
                print(f"{name:>22}: {result['ratio_vs_s5cmd']:.2f}x")
        summary = {
            "dataset": {"small_files": args.small, "small_kb": args.small_kb,
                        "large_files": args.large, "large_mb": args.large_mb},
            "settings": {k: v for k, v in storage.settings.__dict__.items()
                         if k not in ("access_key_id", "secret_access_key", "session_token")},
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform(),
                        "load_average_at_end": os.getloadavg()},
            "results": results,
            "goals": {"cold_within_1_3x_s5cmd": bool(base) and
                      results["ours_cold"]["seconds"] <= 1.3 * base,
                      "resync_under_1s": t_resync < 1.0},
        }
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1)
        print(f"wrote {args.out}")
    finally:
        stop_s3_server(server)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
