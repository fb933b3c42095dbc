"""Benchmark: eval/inference throughput at 224 px, batch 32, CPU.

Sides (separate processes, alternating rounds, medians):
* project: what `eval` and `predict` run on CPU: core.nn.model in MindSpore GRAPH mode with the
  fused inference graph (core/nn/fuse.py: BN folded; every conv, the pool and the classifier in the
  native kernels with bias, activation and residual fused);
* project-unfused: the custom kxk conv without the fused graph;
* project-native: nn.Conv2d everywhere, no fusion (the original path);
* project ONNX: the project's network exported with core.infer.export (ONNX), run in onnxruntime;
* PyTorch torchvision mobilenet_v3_small (eval, inference_mode; bench/.venv-peers).
Goals (not asserted): project >= 0.8x the project's ONNX export in onnxruntime (issue 17),
>= 0.5x PyTorch. The project/onnxruntime ratio is also taken per round (both sides measured
back to back) and its median recorded: on a shared machine that is steadier than the ratio of
the two medians.

    python bench/bench_infer.py [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from bench_train import LABEL, run_ms, run_torch  # noqa: E402

LABEL = dict(LABEL, onnx="project's ONNX export in onnxruntime")

ONNX_SCRIPT = r"""
import json, sys, time, numpy as np
sys.path.insert(0, sys.argv[1])
import mindspore as ms
ms.set_context(mode=ms.GRAPH_MODE); ms.set_device("CPU"); ms.set_seed(1)
from core.config import Config
from core.infer.export import export_model
from core.nn.model import build_model
cfg = Config(); cfg.export.format = "ONNX"; cfg.export.batch_size = int(sys.argv[3])
cfg.data.image_size = int(sys.argv[4])
net = build_model("mobilenet_v3_small", 1000)
path = export_model(net, cfg, sys.argv[2], [str(i) for i in range(1000)], "CPU")
print(json.dumps({"path": str(path)}))
"""

ORT_SCRIPT = r"""
import json, sys, time, numpy as np, onnxruntime as ort
path, batch, size, steps, warmup = sys.argv[1], *map(int, sys.argv[2:6])
sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
name = sess.get_inputs()[0].name
x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
t = time.perf_counter(); sess.run(None, {name: x}); first = time.perf_counter() - t
for _ in range(warmup): sess.run(None, {name: x})
times = []
for _ in range(max(steps, 60)):
    t = time.perf_counter(); sess.run(None, {name: x}); times.append(time.perf_counter() - t)
    if len(times) >= steps and sum(times) > 4: break
med = float(np.median(times))
print(json.dumps({"model": "onnx", "step_s": med, "images_per_s": batch / med, "step_times": times,
                  "first_call_s": first, "compile_s": first - med}))
"""


def run_py(code: str, *args) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, timeout=1800, cwd=common.ROOT, env=common.child_env())
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--quick", action="store_true")
    common.add_isa_argument(p)
    args = p.parse_args()
    common.set_isa(args.isa)
    if args.quick:
        args.steps, args.warmup, args.repeat = 4, 1, 1
    peers = common.need_peers()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = run_py(ONNX_SCRIPT, common.ROOT, tmp, args.batch, args.size)["path"]
        raw = {s: [] for s in ("project", "project-unfused", "project-native", "onnx")
               + (("torch",) if peers else ())}
        for _ in range(args.repeat):
            raw["project"].append(run_ms("infer", "project", args.size, args.batch, args.steps, args.warmup))
            raw["project-unfused"].append(run_ms("infer", "project-unfused", args.size, args.batch,
                                                 args.steps, args.warmup))
            raw["project-native"].append(run_ms("infer", "project-native", args.size, args.batch,
                                                max(2, args.steps // 2), args.warmup))
            raw["onnx"].append(run_py(ORT_SCRIPT, onnx_path, args.batch, args.size, args.steps, args.warmup))
            if peers:
                raw["torch"].append(run_torch("infer", args.size, args.batch, args.steps, args.warmup))
    ips = {s: common.median([r["images_per_s"] for r in runs]) for s, runs in raw.items() if runs}
    per_round = [p["images_per_s"] / o["images_per_s"] for p, o in zip(raw["project"], raw["onnx"])]
    # fastest batch of each side over all rounds: what a side does when it had the cores, the
    # steadier figure when other work shares the machine (medians then mostly measure the load)
    best = {s: args.batch / min(t for r in runs for t in r["step_times"]) for s, runs in raw.items() if runs}
    what = f"inference, {args.size} px, batch {args.batch}"
    rows = []
    for ours in ("project", "onnx"):
        for peer in [s for s in ips if s not in ("project", ours)] if ours == "project" else \
                [s for s in ("torch",) if s in ips]:
            rows.append({"what": what if ours == "project" else what + " (ONNX export)",
                         "unit": "images/s", "project": ips[ours], "peer": LABEL[peer],
                         "peer_value": ips[peer], "ratio": common.ratio(ips[ours], ips[peer])})
            if ours == "project" and peer == "onnx":
                rows[-1]["ratio_per_round"] = [round(r, 3) for r in per_round]
                rows[-1]["ratio_median_of_rounds"] = round(common.median(per_round), 3)
                rows[-1]["best_batch"] = {"project": round(best["project"], 1), "peer": round(best["onnx"], 1),
                                          "ratio": common.ratio(best["project"], best["onnx"])}
    print(f"{what}: " + ", ".join(f"{s} {v:.1f} img/s" for s, v in ips.items())
          + f"; project/onnxruntime {common.ratio(ips['project'], ips['onnx'])} (per round "
          + ", ".join(f"{r:.2f}" for r in per_round) + f"; fastest batch {best['project']:.0f} vs "
          + f"{best['onnx']:.0f} img/s, {common.ratio(best['project'], best['onnx'])}); project/torch "
          + f"{common.ratio(ips['project'], ips.get('torch'))}")
    path = common.write_result("infer", {
        "title": "CPU inference throughput (fp32)",
        "command": "python bench/bench_infer.py" + (" --quick" if args.quick else ""),
        "rows": rows, "raw": raw,
        "notes": f"median of {args.steps} batches after {args.warmup} warm-up, {args.repeat} alternating "
                 f"round(s); the ONNX row compares the project's exported graph in onnxruntime with "
                 f"PyTorch; goals project >= 0.8x onnxruntime (the project's ONNX export), >= 0.5x "
                 f"PyTorch."})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
