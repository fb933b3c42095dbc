"""Run every benchmark of the suite, one after the other, and rebuild bench/results/README.md.

    python bench/run_all.py            # full sizes (tens of minutes on 2 cores)
    python bench/run_all.py --quick    # small sizes (a few minutes)
    python bench/run_all.py --only pipeline,train

Each benchmark is its own command (listed below) and writes bench/results/<name>.json; the
project's figure, each peer's figure and the ratio are printed and tabulated with the machine
description. PyTorch/torchvision peers run in bench/.venv-peers (see bench/README.md); without
it those peers are skipped. Nothing here asserts a time.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

BENCHMARKS = {
    # name: (script, full args, quick args)
    "pipeline": ("bench_pipeline.py", [], ["--quick"]),
    "train": ("bench_train.py", [], ["--quick"]),
    "infer": ("bench_infer.py", [], ["--quick"]),
    "eval": ("bench_eval.py", [], ["--quick"]),
    "train_e2e": ("bench_train_e2e.py", [], ["--quick"]),
    "depthwise": ("bench_depthwise.py", [], ["--quick"]),
    "staging": ("bench_staging.py", [], ["--small", "200", "--large", "1", "--large-mb", "20",
                                         "--repeat", "1", "--out",
                                         str(common.RESULTS / "staging-quick.json")]),
    "packed": ("bench_packed.py", [], ["--images", "1000", "--unique", "200", "--batches", "10",
                                       "--shard-size-mb", "32", "--out",
                                       str(common.RESULTS / "packed-quick.json")]),
    "streaming": ("bench_streaming.py", [], ["--images", "3000", "--shard-size-mb", "8",
                                             "--steps", "60", "--warmup", "20", "--repeat", "1",
                                             "--no-slow-staging", "--cache-limit-gb", "0.1",
                                             "--result-name", "streaming-quick"]),
}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes for every benchmark")
    p.add_argument("--only", default="", help="comma-separated subset of " + ",".join(BENCHMARKS))
    args = p.parse_args()
    names = [n for n in (args.only.split(",") if args.only else BENCHMARKS) if n]
    failed = []
    for name in names:
        script, full, quick = BENCHMARKS[name]
        cmd = [sys.executable, str(common.BENCH_DIR / script)] + (quick if args.quick else full)
        print(f"== {name}: {' '.join(cmd[1:])}  (load average {os.getloadavg()[0]:.2f})", flush=True)
        start = time.time()
        rc = subprocess.call(cmd, cwd=common.ROOT)
        print(f"== {name}: exit {rc} in {time.time() - start:.0f} s", flush=True)
        if rc != 0:
            failed.append(name)
    path = common.update_readme()
    print(f"results table: {path}")
    if failed:
        print(f"failed: {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
