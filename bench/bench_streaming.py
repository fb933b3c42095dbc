"""Benchmark: training straight from a packed dataset on S3 (data.stream=true) against staging it.

On a packed dataset of at least 2 GB in at least 40 shards (default: 19,500 photo-like JPEGs of
~110 KB, 500x375, in 100 classes, bench/bench_packed.py's generator; packed by core.data.packing,
the `local.py pack` code, in shards of 48 MB) on a local SeaweedFS, each side is
`launcher/local.py train` as a user runs it (224 px, batch 32, the native decoder, fp32 on CPU,
data.shuffle_window for both sides: the same sample order), in its own process with a fresh cache:

* time from process start to the first training step (the first step record of metrics.jsonl,
  log interval 1): staging (download every shard, verify it, then train) against streaming;
* steady images/s after --warmup steps, streamed against the same pack staged;
* the store's bandwidth held low by a throttling proxy on 127.0.0.1 (bench/throttle_proxy.py):
  at 2x what training consumes (measured in the staged run: images/s x bytes per image) the
  prefetch should hide the link; at 0.5x training waits for it (shown for the contrast);
* the streaming cache's bytes on disk, sampled every 10 ms (and the cache's own accounting),
  against data.cache_limit_gb plus the shards in flight (2 background fetches + 1 demanded);
* the input pipeline alone (this process, no training): the staged pack, the same order streamed
  into an empty cache, and again from the warm cache (the streamed reader's own cost);
* CPU seconds of each training process, of the store (SeaweedFS shares the cores) and of this
  process (the proxy and the sampler), so a shortfall can be told from contention.

Goals (issue 25; not asserted): first step streaming / staging <= 0.1x; steady images/s streamed /
staged >= 0.95x; throttled above consumption, streamed >= 0.95x of staged; peak cache bytes <=
limit + shards in flight. Writes bench/results/streaming.json.

    python bench/bench_streaming.py                      # ~25 min on 2 cores, ~9 GB of scratch disk
    python bench/bench_streaming.py --images 3000 --shard-size-mb 8 --steps 60 --warmup 20 \
        --repeat 1 --no-slow-staging --cache-limit-gb 0.1 --result-name streaming-quick   # ~7 min
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from bench_packed import make_folder  # noqa: E402
from throttle_proxy import ThrottleProxy  # noqa: E402

MB, GB = 1024 ** 2, 1024 ** 3
BATCH, SIZE = 32, 224
IN_FLIGHT = 3  # shards a process may be downloading at once (2 background fetches + 1 needed now)


def dir_bytes(root: Path) -> int:
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            if ".mindrecord" in name:
                try:
                    total += os.path.getsize(os.path.join(folder, name))
                except OSError:
                    pass
    return total


class PeakSampler:
    """Bytes of shard files under a folder (downloads in progress included), every 10 ms."""

    def __init__(self, root: Path):
        self.root, self.peak, self.samples = root, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, dir_bytes(self.root))
            self.samples += 1
            time.sleep(0.01)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def train_run(name: str, url: str, endpoint: str, server, workdir: Path, args, stream: bool,
              steps: int) -> dict:
    """One `local.py train` process with a fresh cache; what it took and how fast it went."""
    cache = workdir / f"cache-{name}"
    out = workdir / f"run-{name}"
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, str(common.ROOT / "launcher" / "local.py"), "train",
           "--dataset_path", url, "--output_dir", str(out),
           f"data.image_size={SIZE}", f"data.batch_size={BATCH}", "train.epochs=100",
           f"train.max_steps={steps}", "train.log_interval=1", "train.eval_at_end=false",
           "checkpoint.interval_epochs=0", "system.device_target=CPU", "optim.warmup_epochs=0",
           f"data.shuffle_window={args.window}",
           f"system.kernel_isa={os.environ.get(common.ISA_ENV, 'auto')}"]
    if stream:
        cmd += ["data.stream=true", f"data.prefetch_shards={args.prefetch}",
                f"data.ranged_reads_mb={args.ranged_mb}",
                f"data.cache_limit_gb={args.cache_limit_gb}"]
    env = common.child_env({**server.env(), "S3_ENDPOINT": endpoint, "AWS_ENDPOINT_URL": endpoint,
                            "MNV3_CACHE_DIR": str(cache), "PYTHONUNBUFFERED": "1"})
    wall0 = time.time()
    store_cpu0, children0 = cpu_seconds(server.pid), resource.getrusage(resource.RUSAGE_CHILDREN)
    bench_cpu0 = time.process_time()
    with PeakSampler(cache / "stream") as sampler:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=7200, cwd=common.ROOT,
                              env=env)
    wall = time.time() - wall0
    bench_cpu = time.process_time() - bench_cpu0  # the proxy and the peak sampler
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    train_cpu = (children.ru_utime - children0.ru_utime) + (children.ru_stime - children0.ru_stime)
    store_cpu = cpu_seconds(server.pid) - store_cpu0
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: {' '.join(cmd)} failed:\n{proc.stderr[-3000:]}\n{proc.stdout[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps_seen = [r for r in records if r.get("type") == "step"]
    first = steps_seen[0]
    result = {"first_step_s": round(first["time"] - wall0, 2), "process_wall_s": round(wall, 1),
              "steps": steps_seen[-1]["step"], "train_process_cpu_s": round(train_cpu, 1),
              "store_cpu_s": round(store_cpu, 1), "bench_process_cpu_s": round(bench_cpu, 1),
              "load_average": round(os.getloadavg()[0], 2)}
    timed = [r for r in steps_seen if r["step"] >= args.warmup]
    if len(timed) >= 2:
        seconds = timed[-1]["time"] - timed[0]["time"]
        images = (timed[-1]["step"] - timed[0]["step"]) * BATCH
        result.update(images_per_s=round(images / seconds, 1), timed_steps=images // BATCH)
    text = proc.stdout + proc.stderr
    result["shard_downloads"] = text.count("streamed from")
    waits = re.findall(r"streamed train: \d+ samples from \d+ shard openings; waited ([\d.]+) s", text)
    if waits:  # the reader's own account: seconds training waited for shards (first window included)
        result["waited_for_shards_s"] = sum(float(w) for w in waits)
    ranged_mb = re.findall(r"\d+ samples \(([\d.]+) MB\) read from the store before", text)
    if ranged_mb:
        result["ranged_read_mb"] = round(sum(float(m) for m in ranged_mb), 1)
    if stream:
        state = next((cache / "stream").glob("*/.cloud-stream/state.json"), None)
        accounted = json.loads(state.read_text())["peak_bytes"] if state else None
        result.update(peak_cache_bytes=sampler.peak, peak_cache_accounted_bytes=accounted,
                      peak_samples=sampler.samples)
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    print(f"{name:>24}: first step {result['first_step_s']:6.1f} s, "
          f"{result.get('images_per_s', float('nan')):6.1f} img/s"
          + (f", peak cache {sampler.peak / MB:.0f} MB, {result['shard_downloads']} shard downloads, "
             f"waited {result.get('waited_for_shards_s', float('nan')):.1f} s for shards"
             if stream else "") + f" (load {os.getloadavg()[0]:.2f})", flush=True)
    return result


def pipeline_rates(url: str, settings, store_pid: int, packed: Path, workdir: Path, args) -> dict:
    """The input pipeline alone (decode + augment, 224 px, batch 32, this process): the staged
    pack, then the same order streamed into an empty cache (downloads on the same cores), then
    again from the warm cache (the reader alone)."""
    from cloud.storage.shard_cache import open_streamed_pack
    from core.config import load_config
    from core.data.packed import PackedDataset
    cfg = load_config(None, {"data.image_size": SIZE, "data.batch_size": BATCH,
                             "data.shuffle_window": args.window,
                             "data.prefetch_shards": args.prefetch,
                             "data.cache_limit_gb": 4.0}).data
    root = workdir / "cache-pipeline"
    shutil.rmtree(root, ignore_errors=True)
    streamed = open_streamed_pack(url, root, settings, cfg).split("train")
    sides = (("staged", PackedDataset(packed).split("train")), ("streamed, empty cache", streamed),
             ("streamed, warm cache", streamed))
    out = {}
    for name, split in sides:
        store0, cpu0 = cpu_seconds(store_pid), time.process_time()
        iterator = split.train_pipeline(cfg, seed=1, epoch=0).create_tuple_iterator(
            num_epochs=1, output_numpy=True)
        next(iterator)
        started = time.perf_counter()
        for _ in range(args.pipeline_batches):
            next(iterator)
        seconds = time.perf_counter() - started
        del iterator
        out[name] = {"images_per_s": round(args.pipeline_batches * BATCH / seconds, 1),
                     "process_cpu_s": round(time.process_time() - cpu0, 1),
                     "store_cpu_s": round(cpu_seconds(store_pid) - store0, 1)}
        print(f"pipeline alone, {name:>22}: {out[name]['images_per_s']:6.1f} img/s "
              f"(load {os.getloadavg()[0]:.2f})", flush=True)
    shutil.rmtree(root, ignore_errors=True)
    return out


def median_of(runs: list[dict], key: str) -> float:
    return common.median([r[key] for r in runs if key in r])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=19500)
    parser.add_argument("--kb", type=float, default=110)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--unique", type=int, default=1000)
    parser.add_argument("--shard-size-mb", type=float, default=48)
    parser.add_argument("--window", type=int, default=4, help="data.shuffle_window (both sides)")
    parser.add_argument("--prefetch", type=int, default=4, help="data.prefetch_shards")
    parser.add_argument("--ranged-mb", type=float, default=64,
                        help="data.ranged_reads_mb: samples read by range before their shards arrive")
    parser.add_argument("--cache-limit-gb", type=float, default=0.75)
    parser.add_argument("--warmup", type=int, default=40, help="steps left out of images/s")
    parser.add_argument("--steps", type=int, default=280, help="steps per run in all")
    parser.add_argument("--repeat", type=int, default=2, help="rounds of staged/streamed, direct")
    parser.add_argument("--pipeline-batches", type=int, default=100,
                        help="batches timed by the input-pipeline-alone comparison")
    parser.add_argument("--latency-ms", type=float, default=5.0, help="throttled runs: per request")
    parser.add_argument("--links", default="auto",
                        help="throttled links HIGH,LOW in MB/s; auto: 2x and 0.5x of what the "
                             "staged runs consumed (on a machine whose load changes, give them)")
    parser.add_argument("--no-slow-staging", dest="slow_staging", action="store_false",
                        help="skip staging through the link below consumption (minutes)")
    parser.add_argument("--workdir", help="scratch folder (default: a temporary one, removed)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--result-name", default="streaming",
                        help="bench/results/<name>.json (run_all --quick: streaming-quick)")
    common.add_isa_argument(parser)
    args = parser.parse_args(argv)
    common.set_isa(args.isa)

    from cloud.storage.store import open_storage
    from cloud.storage.sync import upload_tree
    from core.config import known_keys
    from core.data.packing import pack_imagefolder
    from launcher.seaweedfs import start_s3_server, stop_s3_server
    if "data.shuffle_window" not in known_keys():
        raise SystemExit("this benchmark compares both sides on the shard-window shuffle "
                         "(data.shuffle_window, issue 25 item 2), which this tree lacks")

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-streaming-"))
    workdir.mkdir(parents=True, exist_ok=True)
    server = proxy = None
    results: dict = {}
    try:
        packed = workdir / "packed"
        if not (packed / "index.json").exists():
            folder = workdir / "folder"
            t = time.perf_counter()
            payload = make_folder(str(folder), args.images, args.classes, args.unique, args.kb,
                                  os.cpu_count() or 1)
            print(f"dataset: {args.images} JPEGs, {payload / MB:.0f} MB, made in "
                  f"{time.perf_counter() - t:.0f} s", flush=True)
            t = time.perf_counter()
            pack_imagefolder(folder, packed, args.shard_size_mb, None, splits=("train",))
            print(f"packed in {time.perf_counter() - t:.0f} s", flush=True)
            shutil.rmtree(folder)
        index = json.loads((packed / "index.json").read_text())
        shards = index["splits"]["train"]["shards"]
        sizes = [sum(f["size"] for f in s["files"]) for s in shards]
        images = index["splits"]["train"]["samples"]
        pack_bytes = sum(sizes)
        bytes_per_image = pack_bytes / images
        results["dataset"] = {"images": images, "bytes": pack_bytes, "shards": len(shards),
                              "largest_shard_bytes": max(sizes),
                              "bytes_per_image": round(bytes_per_image)}
        print(f"pack: {len(shards)} shards, {pack_bytes / GB:.2f} GB, {images} images", flush=True)
        if pack_bytes < 2 * GB or len(shards) < 40:
            print("note: smaller than the issue's >= 2 GB in >= 40 shards", flush=True)

        shutil.rmtree(workdir / "seaweedfs", ignore_errors=True)  # a fresh store each run
        (workdir / "seaweedfs").mkdir()
        server = start_s3_server(str(workdir / "seaweedfs"))
        bucket = server.make_bucket("bench")
        url = f"s3://{bucket}/packed"
        t = time.perf_counter()
        upload_tree(str(packed), open_storage(url, server.settings()), "")
        print(f"uploaded to SeaweedFS in {time.perf_counter() - t:.0f} s", flush=True)
        proxy = ThrottleProxy("127.0.0.1", int(server.endpoint.rsplit(":", 1)[1]),
                              latency_ms=args.latency_ms).start()

        results["pipeline_alone"] = pipeline_rates(
            url, server.settings(), server.pid, packed, workdir, args)
        direct = {"staged": [], "streamed": []}
        for round_ in range(args.repeat):  # alternate so load changes hit both sides
            for side in (("staged", "streamed") if round_ % 2 == 0 else ("streamed", "staged")):
                direct[side].append(train_run(f"{side} #{round_ + 1}", url, server.endpoint, server,
                                              workdir, args, side == "streamed", args.steps))
        results["direct"] = direct
        staged_ips = median_of(direct["staged"], "images_per_s")
        consumption = staged_ips * bytes_per_image / MB
        high, low = round(2 * consumption, 1), round(0.5 * consumption, 1)
        if args.links != "auto":
            high, low = (float(v) for v in args.links.split(","))
        print(f"training consumes {consumption:.1f} MB/s ({staged_ips:.1f} img/s x "
              f"{bytes_per_image / 1024:.0f} KB): link at {high} and {low} MB/s", flush=True)
        results["consumption_mb_s"] = round(consumption, 2)

        proxy.rate_mb_s = high
        runs = [train_run(f"streamed, link 2x #{i + 1}", url, proxy.endpoint, server, workdir,
                          args, True, args.steps) for i in range(args.repeat)]
        throttled = {"rate_mb_s": high, "streamed_runs": runs,
                     "streamed": {"first_step_s": median_of(runs, "first_step_s"),
                                  "images_per_s": median_of(runs, "images_per_s"),
                                  "peak_cache_bytes": max(r["peak_cache_bytes"] for r in runs)},
                     "staged": train_run("staged, link 2x", url, proxy.endpoint, server, workdir,
                                         args, False, args.warmup)}
        results["throttled_above"] = throttled
        proxy.rate_mb_s = low
        slow = {"rate_mb_s": low,
                "streamed": train_run("streamed, link 0.5x", url, proxy.endpoint, server, workdir,
                                      args, True, args.steps)}
        if args.slow_staging:
            slow["staged"] = train_run("staged, link 0.5x", url, proxy.endpoint, server, workdir,
                                       args, False, 2)
        results["throttled_below"] = slow
        proxy.rate_mb_s = None

        # ---- figures and goals
        streamed_ips = median_of(direct["streamed"], "images_per_s")
        first = {"direct": (median_of(direct["streamed"], "first_step_s"),
                            median_of(direct["staged"], "first_step_s")),
                 "link 2x": (throttled["streamed"]["first_step_s"], throttled["staged"]["first_step_s"])}
        if "staged" in slow:
            first["link 0.5x"] = (slow["streamed"]["first_step_s"], slow["staged"]["first_step_s"])
        limit = args.cache_limit_gb * GB
        bound = limit + IN_FLIGHT * max(sizes)
        peaks = [r["peak_cache_bytes"] for r in direct["streamed"]] + \
                [throttled["streamed"]["peak_cache_bytes"], slow["streamed"]["peak_cache_bytes"]]
        ratios = {
            **{f"first_step_streamed_vs_staged_{k.replace(' ', '_').replace('.', '')}":
               round(a / b, 3) for k, (a, b) in first.items()},
            "images_per_s_streamed_vs_staged": round(streamed_ips / staged_ips, 3),
            "images_per_s_link_2x_vs_staged_direct": round(
                throttled["streamed"]["images_per_s"] / staged_ips, 3),
            "images_per_s_link_0_5x_vs_staged_direct": round(
                slow["streamed"]["images_per_s"] / staged_ips, 3),
            "peak_cache_vs_limit": round(max(peaks) / limit, 3)}
        goals = {
            "first_step_le_0_1x": {k: v <= 0.1 for k, v in ratios.items() if k.startswith("first_step")},
            "steady_ge_0_95x": ratios["images_per_s_streamed_vs_staged"] >= 0.95,
            "link_above_consumption_ge_0_95x": ratios["images_per_s_link_2x_vs_staged_direct"] >= 0.95,
            "peak_le_limit_plus_in_flight": max(peaks) <= bound}
        for key, value in ratios.items():
            print(f"{key}: {value}", flush=True)
        print(f"goals: {json.dumps(goals)}", flush=True)

        rows = [
            {"what": "first training step, loopback (process start to step 1)", "unit": "s (lower is better)",
             "project": first["direct"][0], "peer": "staging first", "peer_value": first["direct"][1],
             "ratio": common.ratio(first["direct"][0], first["direct"][1], higher_is_better=False)},
            {"what": f"first training step, link {high} MB/s ({high / consumption:.1f}x consumption)", "unit": "s (lower is better)",
             "project": first["link 2x"][0], "peer": "staging first", "peer_value": first["link 2x"][1],
             "ratio": common.ratio(first["link 2x"][0], first["link 2x"][1], higher_is_better=False)},
            {"what": f"steady training, {SIZE} px batch {BATCH}, loopback", "unit": "images/s",
             "project": streamed_ips, "peer": "same pack staged", "peer_value": staged_ips,
             "ratio": common.ratio(streamed_ips, staged_ips)},
            {"what": f"steady training, link {high} MB/s ({high / consumption:.1f}x consumption)", "unit": "images/s",
             "project": throttled["streamed"]["images_per_s"], "peer": "same pack staged, loopback",
             "peer_value": staged_ips, "ratio": common.ratio(throttled["streamed"]["images_per_s"], staged_ips)},
            {"what": f"steady training, link {low} MB/s ({low / consumption:.1f}x consumption)", "unit": "images/s",
             "project": slow["streamed"]["images_per_s"], "peer": "same pack staged, loopback",
             "peer_value": staged_ips, "ratio": common.ratio(slow["streamed"]["images_per_s"], staged_ips)},
            {"what": f"peak streaming cache, limit {args.cache_limit_gb} GB", "unit": "MB (lower is better)",
             "project": round(max(peaks) / MB, 1), "peer": "limit + 3 shards in flight",
             "peer_value": round(bound / MB, 1), "ratio": common.ratio(max(peaks), bound, False)},
        ]
        alone = results["pipeline_alone"]
        for name in ("streamed, warm cache", "streamed, empty cache"):
            rows.append({"what": f"input pipeline alone ({SIZE} px, batch {BATCH}), {name}",
                         "unit": "images/s", "project": alone[name]["images_per_s"],
                         "peer": "staged pack", "peer_value": alone["staged"]["images_per_s"],
                         "ratio": common.ratio(alone[name]["images_per_s"],
                                               alone["staged"]["images_per_s"])})
        if "link 0.5x" in first:
            rows.insert(2, {"what": f"first training step, link {low} MB/s ({low / consumption:.1f}x consumption)",
                            "unit": "s (lower is better)", "project": first["link 0.5x"][0],
                            "peer": "staging first", "peer_value": first["link 0.5x"][1],
                            "ratio": common.ratio(first["link 0.5x"][0], first["link 0.5x"][1], False)})
        given = list(argv if argv is not None else sys.argv[1:])
        for i, arg in reversed(list(enumerate(given))):  # write_result names a forced --isa itself
            if arg == "--isa":
                del given[i:i + 2]
            elif arg.startswith("--isa="):
                del given[i]
        command = "python bench/bench_streaming.py " + " ".join(given)
        written = common.write_result(args.result_name, {
            "title": "Training from S3 while streaming shards vs staging them first",
            "command": command.strip(), "rows": rows, "results": results, "ratios": ratios,
            "goals": goals, "settings": {k: v for k, v in vars(args).items() if k != "workdir"},
            "notes": (f"SeaweedFS on 127.0.0.1; the link is a TCP proxy in the benchmark's "
                      f"process (os.splice; its CPU shares the cores with training) adding "
                      f"{args.latency_ms} ms per request; both sides data.shuffle_window="
                      f"{args.window}; streaming data.prefetch_shards={args.prefetch}, "
                      f"data.ranged_reads_mb={args.ranged_mb:g}.")})
        print(f"wrote {written}", flush=True)
    finally:
        if proxy is not None:
            proxy.stop()
        if server is not None:
            stop_s3_server(server)
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
