"""PyTorch side of the train/inference benchmarks (runs in bench/.venv-peers): torchvision
mobilenet_v3_small, RMSProp with the project's settings, label-smoothed cross-entropy.
Prints one JSON line."""
import argparse
import json
import time

import numpy as np
import torch
import torchvision


def main():
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=("train", "infer"))
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--min-seconds", type=float, default=4.0,
                   help="keep timing steps until this much time has passed (at most 60 steps)")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    net = torchvision.models.mobilenet_v3_small(num_classes=args.classes)
    g = torch.Generator().manual_seed(0)
    image = torch.randn(args.batch, 3, args.size, args.size, generator=g)
    label = torch.randint(0, args.classes, (args.batch,), generator=g)
    if args.what == "train":
        net.train()
        # The project's RMSProp: decay (alpha) 0.9, momentum 0.9, eps 1e-3, wd 4e-5.
        opt = torch.optim.RMSprop(net.parameters(), lr=0.01, alpha=0.9, eps=1e-3, momentum=0.9,
                                  weight_decay=4e-5)
        loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)

        def step():
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(image), label)
            loss.backward()
            opt.step()
            return float(loss)
    else:
        net.eval()

        def step():
            with torch.inference_mode():
                return float(net(image)[0, 0])
    t = time.perf_counter()
    step()
    first = time.perf_counter() - t
    for _ in range(args.warmup):
        step()
    times = []
    while len(times) < args.steps or (sum(times) < args.min_seconds and len(times) < 60):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    med = float(np.median(times))
    print(json.dumps({"model": "torchvision", "size": args.size, "batch": args.batch, "step_s": med,
                      "images_per_s": args.batch / med, "step_times": times, "first_call_s": first,
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
