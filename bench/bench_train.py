"""Benchmark: CPU train-step throughput, MobileNetV3-Small, at 224 px batch 32 and 64 px batch 64.

Sides, each in its own process, alternating over --repeat rounds (medians kept):
* project: core.nn.model (kxk convs on the custom CPU operator, system.cpu_ops=auto) with the
  trainer's loss, RMSProp and TrainOneStepCell (GRAPH mode, fp32);
* project-native: the same with nn.Conv2d everywhere (ops_impl=native, the old path);
* MindCV mobilenet_v3_small_100 with the same loss/optimizer/TrainOneStepCell;
* PyTorch torchvision mobilenet_v3_small, RMSprop(alpha 0.9, momentum 0.9, eps 1e-3), label
  smoothing 0.1 (bench/.venv-peers).
Images/s = batch / median step time after warm-up; compile = first call minus one step; the
MindSpore sides also report the median CPU time of a step (all threads of the process).
Goal (not asserted): project >= 0.5x PyTorch at both sizes.

    python bench/bench_train.py             # 6 timed steps per run, 2 rounds
    python bench/bench_train.py --quick     # 3 timed steps, 1 round
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

MS_SIDES = ("project", "project-native", "mindcv")
LABEL = {"project": "project (MindSpore, custom kxk conv)",
         "project-unfused": "project, custom kxk conv, BN not folded",
         "project-native": "project, native nn.Conv2d (before)",
         "mindcv": "MindCV mobilenet_v3_small_100", "torch": "PyTorch torchvision"}


def run_ms(what: str, side: str, size: int, batch: int, steps: int, warmup: int, extra=()) -> dict:
    """One bench/ms_models.py measurement in its own process; train runs go through
    cpu_timed_child, which adds the CPU time of every timed step (all threads)."""
    args = [what, "--model", side, "--size", str(size), "--batch", str(batch), "--steps", str(steps),
            "--warmup", str(warmup), *extra]
    if what == "train":
        cmd = [sys.executable, str(common.BENCH_DIR / "bench_train.py"), "--cpu-child", *args]
    else:
        cmd = [sys.executable, str(common.BENCH_DIR / "ms_models.py"), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=common.ROOT,
                          env=common.child_env())
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cpu_timed_child(argv: list) -> None:
    """`bench_train.py --cpu-child ARGS`: bench/ms_models.py ARGS in this process, its clock
    (time.perf_counter) also reading the process CPU time (all threads, time.process_time) at
    each call. ms_models times step i between two consecutive calls, the timed steps last, so
    the last 2 * steps readings give each timed step's CPU time; its JSON line gets
    cpu_step_times and cpu_step_s."""
    import time as real_time

    import ms_models  # first: sets OMP_WAIT_POLICY before MindSpore loads libgomp

    cpu_at_call = []

    class Clock:
        def __getattr__(self, name):
            return getattr(real_time, name)

        @staticmethod
        def perf_counter():
            cpu_at_call.append(real_time.process_time())
            return real_time.perf_counter()

    real_train = ms_models.train

    def train(args):
        result = real_train(args)
        steps = len(result["step_times"])
        timed = cpu_at_call[-2 * steps:]
        result["cpu_step_times"] = [timed[2 * i + 1] - timed[2 * i] for i in range(steps)]
        result["cpu_step_s"] = common.median(result["cpu_step_times"])
        return result

    ms_models.time, ms_models.train = Clock(), train
    sys.argv = ["ms_models.py", *argv]
    ms_models.main()  # prints the result line


def run_torch(what: str, size: int, batch: int, steps: int, warmup: int) -> dict:
    """PyTorch measured twice, with libgomp's default (spinning) idle threads and with
    OMP_WAIT_POLICY=PASSIVE (the project's launchers set it, see launcher/openmp.py); the faster
    is the peer's figure, so the project's setting never handicaps the peer."""
    runs = []
    for policy in ("default", "PASSIVE"):
        env = {k: v for k, v in common.peer_env().items() if k != "OMP_WAIT_POLICY"}
        if policy != "default":
            env["OMP_WAIT_POLICY"] = policy
        run = common.run_peer("torch_models.py", [what, "--size", size, "--batch", batch,
                                                  "--steps", steps, "--warmup", warmup], env=env)
        runs.append(dict(run, omp_wait_policy=policy))
    best = max(runs, key=lambda r: r["images_per_s"])
    return dict(best, alternatives={r["omp_wait_policy"]: r["images_per_s"] for r in runs})


def measure(what: str, configs, sides, steps: int, warmup: int, repeat: int) -> tuple[list, dict]:
    peers = common.need_peers()
    raw = {}
    for size, batch in configs:
        key = f"{size}px_b{batch}"
        raw[key] = {s: [] for s in sides + (("torch",) if peers else ())}
        for _ in range(repeat):
            for side in sides:
                n = steps if not (side == "project-native" and size >= 224) else max(2, steps // 2)
                raw[key][side].append(run_ms(what, side, size, batch, n, warmup))
            if peers:
                raw[key]["torch"].append(run_torch(what, size, batch, steps, warmup))
    return raw


def summarise(raw: dict, what: str, unit_what: str) -> list[dict]:
    rows = []
    for key, by_side in raw.items():
        size, batch = key.split("px_b")
        ips = {s: common.median([r["images_per_s"] for r in runs]) for s, runs in by_side.items() if runs}
        compile_s = {s: common.median([r.get("compile_s", r.get("first_call_s", 0)) for r in runs])
                     for s, runs in by_side.items() if runs}
        ours = ips["project"]
        for peer in [s for s in ips if s != "project"]:
            rows.append({"what": f"{unit_what}, {size} px, batch {batch}", "unit": "images/s",
                         "project": ours, "peer": LABEL[peer], "peer_value": ips[peer],
                         "ratio": common.ratio(ours, ips[peer])})
        for peer in [s for s in compile_s if s != "project"]:
            if peer == "torch":
                continue
            rows.append({"what": f"{unit_what} graph compile, {size} px", "unit": "s (lower is better)",
                         "project": compile_s["project"], "peer": LABEL[peer],
                         "peer_value": compile_s[peer],
                         "ratio": common.ratio(compile_s["project"], compile_s[peer], higher_is_better=False)})
        cpu = {s: common.median([r["cpu_step_s"] for r in runs]) for s, runs in by_side.items()
               if runs and all("cpu_step_s" in r for r in runs)}
        line = ", ".join(f"{s} {v:.1f} img/s" + (f" (CPU {cpu[s] * 1e3:.0f} ms/step)" if s in cpu else "")
                         for s, v in ips.items())
        print(f"{what} {size} px batch {batch}: {line}; project/torch "
              f"{common.ratio(ours, ips.get('torch'))}", flush=True)
    return rows


def main():
    if sys.argv[1:2] == ["--cpu-child"]:
        return cpu_timed_child(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--sides", default=",".join(MS_SIDES))
    p.add_argument("--quick", action="store_true")
    common.add_isa_argument(p)
    args = p.parse_args()
    common.set_isa(args.isa)
    if args.quick:
        args.steps, args.warmup, args.repeat = 3, 1, 1
    sides = tuple(s for s in args.sides.split(",") if s)
    raw = measure("train", [(224, 32), (64, 64)], sides, args.steps, args.warmup, args.repeat)
    rows = summarise(raw, "train", "train step")
    path = common.write_result("train", {
        "title": "CPU train-step throughput (fp32, GRAPH mode vs PyTorch eager)",
        "command": "python bench/bench_train.py" + (" --quick" if args.quick else ""),
        "rows": rows, "raw": raw,
        "notes": f"median of {args.steps} steps after {args.warmup} warm-up, {args.repeat} alternating "
                 f"round(s) of separate processes; goal project >= 0.5x PyTorch."})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
