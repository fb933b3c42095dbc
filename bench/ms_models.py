"""MindSpore side of the train and inference benchmarks, run one measurement per process
(`python bench/ms_models.py train|infer ...`, prints one JSON line): the project's network
(depthwise impl auto = custom CPU operator, or native nn.Conv2d) and MindCV's
mobilenet_v3_small_100, with the trainer's own pieces (loss, RMSProp, TrainOneStepCell)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import launcher.openmp  # noqa: E402,F401  (as the launchers do, before MindSpore)

import numpy as np  # noqa: E402


def build(model: str, num_classes: int):
    import mindspore as ms
    from core.nn import model as core_model
    if model in ("project", "project-unfused", "project-native", "project-custom"):
        impl = {"project": "auto", "project-unfused": "auto", "project-native": "native",
                "project-custom": "custom"}[model]
        return core_model.build_model("mobilenet_v3_small", num_classes, ops_impl=impl)
    if model == "mindcv":
        import mindcv
        return mindcv.create_model("mobilenet_v3_small_100", num_classes=num_classes, pretrained=False)
    raise SystemExit(f"unknown model {model}")


def setup(args):
    import mindspore as ms
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import common
    common.apply_isa()  # bench --isa: the project's operators on that instruction-set build
    if args.threads:
        ms.set_context(runtime_num_threads=args.threads)
    if args.inter_op:
        ms.set_context(inter_op_parallel_num=args.inter_op)
    if args.jit_level:
        ms.set_context(jit_config={"jit_level": args.jit_level})
    if args.graph_kernel:
        ms.set_context(enable_graph_kernel=True)
    ms.set_seed(1)


def train(args) -> dict:
    import mindspore as ms
    from mindspore import nn
    from core.config import Config
    from core.train.loss import LabelSmoothingCrossEntropy
    from core.train.optim import build_optimizer
    from core.train.run import NetWithLoss

    setup(args)
    cfg = Config()
    net = build(args.model, args.classes)
    loss_fn = LabelSmoothingCrossEntropy(args.classes, cfg.train.label_smoothing)
    lr = ms.Tensor(np.full(1000, 0.01, np.float32))
    optimizer = build_optimizer(net.trainable_params(), cfg.optim, lr)
    # as core.train.loop feeds it: uint8 NHWC batches, normalised and transposed in the graph
    from core.data.pipeline import pixel_normalization
    step = nn.TrainOneStepCell(NetWithLoss(net, loss_fn, pixel_normalization(cfg.data)), optimizer)
    step.set_train(True)
    rng = np.random.default_rng(0)
    image = ms.Tensor(rng.integers(0, 256, (args.batch, args.size, args.size, 3), dtype=np.uint8))
    label = ms.Tensor(rng.integers(0, args.classes, args.batch).astype(np.int32))
    start = time.perf_counter()
    loss = step(image, label)
    loss.asnumpy()
    first = time.perf_counter() - start
    # Compile time: the first call minus one ordinary step (measured below).
    for _ in range(args.warmup):
        step(image, label).asnumpy()
    times = []
    while len(times) < args.steps or (sum(times) < args.min_seconds and len(times) < 60):
        t = time.perf_counter()
        step(image, label).asnumpy()
        times.append(time.perf_counter() - t)
    med = float(np.median(times))
    return {"model": args.model, "size": args.size, "batch": args.batch, "step_s": med,
            "images_per_s": args.batch / med, "step_times": times,
            "compile_s": max(0.0, first - med), "first_call_s": first}


def infer(args) -> dict:
    import mindspore as ms
    setup(args)
    net = build(args.model, args.classes)
    net.set_train(False)
    if args.model == "project":  # what eval and predict run: BN folded, fused kernels
        from core.nn.fuse import fuse_for_inference
        net = fuse_for_inference(net)
    image = ms.Tensor(np.random.default_rng(0).standard_normal(
        (args.batch, 3, args.size, args.size)).astype(np.float32))
    start = time.perf_counter()
    net(image).asnumpy()
    first = time.perf_counter() - start
    for _ in range(args.warmup):
        net(image).asnumpy()
    times = []
    while len(times) < args.steps or (sum(times) < args.min_seconds and len(times) < 60):
        t = time.perf_counter()
        net(image).asnumpy()
        times.append(time.perf_counter() - t)
    med = float(np.median(times))
    return {"model": args.model, "size": args.size, "batch": args.batch, "step_s": med,
            "images_per_s": args.batch / med, "step_times": times,
            "compile_s": max(0.0, first - med)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=("train", "infer"))
    p.add_argument("--model", default="project")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--min-seconds", type=float, default=4.0,
                   help="keep timing steps until this much time has passed (at most 60 steps)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--inter-op", type=int, default=0)
    p.add_argument("--jit-level", default="")
    p.add_argument("--graph-kernel", action="store_true")
    args = p.parse_args()
    result = train(args) if args.what == "train" else infer(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
