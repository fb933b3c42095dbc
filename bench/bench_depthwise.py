"""Benchmark: the kxk convolutions of MobileNetV3-Small (stem and depthwise), forward and
forward+backward, on CPU: the custom operator (core.nn.cpu_ops) vs MindSpore's nn.Conv2d vs
PyTorch's conv2d. The evidence behind system.cpu_ops=auto.

    python bench/bench_depthwise.py [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

# (name, in, out, groups, size, kernel, stride) at 224 px, batch 32
SHAPES = [("stem 3->16 3x3 s2", 3, 16, 1, 224, 3, 2),
          ("dw 16 3x3 s2 @112", 16, 16, 16, 112, 3, 2),
          ("dw 72 3x3 s2 @56", 72, 72, 72, 56, 3, 2),
          ("dw 88 3x3 s1 @28", 88, 88, 88, 28, 3, 1),
          ("dw 96 5x5 s2 @28", 96, 96, 96, 28, 5, 2),
          ("dw 240 5x5 s1 @14", 240, 240, 240, 14, 5, 1),
          ("dw 576 5x5 s1 @7", 576, 576, 576, 7, 5, 1)]

TORCH = r"""
import json, sys, time, torch
n, shapes, reps = int(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
out = {}
for name, ci, co, g, s, k, st in shapes:
    x = torch.randn(n, ci, s, s, requires_grad=True); w = torch.randn(co, ci // g, k, k, requires_grad=True)
    f = lambda: torch.nn.functional.conv2d(x, w, stride=st, padding=(k - 1) // 2, groups=g)
    def fb():
        y = f(); y.backward(torch.ones_like(y))
    res = []
    for fn in (f, fb):
        fn(); ts = []
        for _ in range(reps):
            t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
        res.append(sorted(ts)[len(ts) // 2] * 1000)
    out[name] = res
print(json.dumps(out))
"""


def ms_times(batch: int, reps: int) -> dict:
    import mindspore as ms
    import numpy as np
    from mindspore import nn
    from core.nn import cpu_ops
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    from core.nn.kernel_choice import Grad

    def med(fn, *a):
        out = fn(*a)
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            out = fn(*a)
            (out[0][0] if isinstance(out, tuple) else out).asnumpy()
            ts.append(time.perf_counter() - t)
        return sorted(ts)[len(ts) // 2] * 1000

    results = {}
    for name, ci, co, g, s, k, st in SHAPES:
        x = ms.Tensor(np.random.default_rng(0).standard_normal((batch, ci, s, s)).astype(np.float32))
        native = nn.Conv2d(ci, co, k, stride=st, pad_mode="pad", padding=(k - 1) // 2, group=g,
                           has_bias=False)
        custom = cpu_ops.FastConv2d(ci, co, k, st, g)
        custom.weight.set_data(native.weight.data)
        y = native(x)
        dy = ms.Tensor(np.ones(y.shape, np.float32))
        results[name] = {"native": [med(native, x), med(Grad(native), x, dy)],
                         "custom": [med(custom, x), med(Grad(custom), x, dy)]}
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.reps = 3
    from core.nn import cpu_ops
    if not cpu_ops.available():
        raise SystemExit(f"{cpu_ops.library_file()} is not built: run 'make kernels'")
    ms = ms_times(args.batch, args.reps)
    torch = {}
    if common.need_peers():
        proc = subprocess.run([str(common.PEERS_PY), "-c", TORCH, str(args.batch),
                               json.dumps(SHAPES), str(args.reps)], capture_output=True, text=True,
                              env=common.peer_env())
        torch = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {}
    rows = []
    for name, *_ in SHAPES:
        for i, phase in enumerate(("forward", "forward+backward")):
            ours = ms[name]["custom"][i]
            for peer, value in (("MindSpore nn.Conv2d", ms[name]["native"][i]),
                                ("PyTorch conv2d", torch.get(name, [None, None])[i])):
                rows.append({"what": f"{name}, batch {args.batch}, {phase}", "unit": "ms (lower is better)",
                             "project": ours, "peer": peer, "peer_value": value,
                             "ratio": common.ratio(ours, value, higher_is_better=False)})
            print(f"{name} {phase}: custom {ours:.1f} ms, native {ms[name]['native'][i]:.1f} ms, "
                  f"torch {torch.get(name, [None, None])[i]}", flush=True)
    path = common.write_result("depthwise", {
        "title": "kxk convolutions of MobileNetV3-Small: custom CPU operator vs peers",
        "command": "python bench/bench_depthwise.py" + (" --quick" if args.quick else ""),
        "rows": rows, "raw": {"mindspore": ms, "torch": torch},
        "notes": f"median of {args.reps} calls; forward+backward = input and weight gradients."})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
