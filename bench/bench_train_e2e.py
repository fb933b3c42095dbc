"""Benchmark: training from a JPEG folder end to end, 224 px, batch 32, steady-state images/s.

Sides, each in its own process, alternating over --repeat rounds (medians kept):
* project: `python launcher/local.py train` itself (the real training path: ImageFolder split,
  data.decoder=auto i.e. the native decoder, data.workers default, MobileNetV3-Small with the
  custom CPU operator, RMSProp, label smoothing 0.1, GRAPH mode, fp32). Its metrics.jsonl step
  records (one per train.log_interval steps) give the rate; the intervals of the first
  --warmup steps (graph compile, first batches) are left out;
* project train step alone (bench/ms_models.py train, 10 classes, a fixed batch): what the
  step costs without any input pipeline, so project / step-alone is the end-to-end efficiency;
* PyTorch: torchvision ImageFolder + DataLoader (RandomResizedCrop with the project's scale and
  ratio, flip, ColorJitter(0.4, 0.4, 0.4), ToTensor, Normalize; shuffle, drop_last) feeding
  torchvision mobilenet_v3_small with the same RMSProp (alpha 0.9, momentum 0.9, eps 1e-3,
  wd 4e-5) and label-smoothed cross-entropy, in bench/.venv-peers; this file runs itself
  there (--torch-side). The DataLoader runs at each of --torch-workers (0 = loading in the
  training process) and with libgomp's default and PASSIVE wait policies; the best is the peer.
Both train on the same generated photo-like JPEGs (bench/bench_pipeline.py, ~500x375, in
.cache/bench_photos_v2/), 10 classes, and time the same steps (--warmup, then --steps), all
inside the first epoch. Ratios only; nothing is asserted. Goal (not asserted): >= 1.2x.

    python bench/bench_train_e2e.py            # 10 warm-up + 40 timed steps, 2 rounds
    python bench/bench_train_e2e.py --quick    # 10 + 20 steps, 1 round, torch workers 1,2
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

BATCH, SIZE, CLASSES = 32, 224, 10
SCALE, RATIO, JITTER = (0.08, 1.0), (0.75, 1.333333), (0.4, 0.4, 0.4)


# ---- project -----------------------------------------------------------------------------------

def project_e2e(root: Path, warmup: int, steps: int, interval: int) -> dict:
    """`launcher/local.py train` for warmup + steps steps; images/s over the timed intervals."""
    out = Path(tempfile.mkdtemp(prefix="bench-train-e2e-"))
    cmd = [sys.executable, str(common.ROOT / "launcher" / "local.py"), "train",
           "--dataset_path", str(root), "--output_dir", str(out / "run"),
           f"data.image_size={SIZE}", f"data.batch_size={BATCH}", "train.epochs=10",
           f"train.max_steps={warmup + steps}", f"train.log_interval={interval}",
           "train.eval_at_end=false", "checkpoint.interval_epochs=0", "system.device_target=CPU",
           f"system.kernel_isa={os.environ.get(common.ISA_ENV, 'auto')}"]
    try:
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, cwd=common.ROOT,
                              env=common.child_env())
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        records = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    finally:
        shutil.rmtree(out, ignore_errors=True)
    timed = [r for r in records if r.get("type") == "step" and "images_per_sec" in r
             and r["step"] > warmup]
    seconds = [interval * BATCH / r["images_per_sec"] for r in timed]
    return {"images_per_s": len(timed) * interval * BATCH / sum(seconds),
            "interval_images_per_s": [round(r["images_per_sec"], 2) for r in timed],
            "timed_steps": len(timed) * interval, "process_wall_s": round(wall, 1)}


def project_step_alone(steps: int) -> dict:
    cmd = [sys.executable, str(common.BENCH_DIR / "ms_models.py"), "train", "--model", "project",
           "--size", str(SIZE), "--batch", str(BATCH), "--classes", str(CLASSES),
           "--steps", str(steps), "--warmup", "2", "--min-seconds", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=common.ROOT,
                          env=common.child_env())
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- PyTorch (this file, run in bench/.venv-peers with --torch-side) ---------------------------

def torch_side(root: str, workers: int, warmup: int, steps: int) -> dict:
    import torch
    import torchvision
    from torchvision import datasets, transforms
    torch.manual_seed(1)
    tf = transforms.Compose([
        transforms.RandomResizedCrop(SIZE, scale=SCALE, ratio=RATIO),
        transforms.RandomHorizontalFlip(),
        transforms.ColorJitter(*JITTER),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    data = datasets.ImageFolder(root, transform=tf)
    loader = torch.utils.data.DataLoader(data, batch_size=BATCH, shuffle=True, num_workers=workers,
                                         drop_last=True, **({"prefetch_factor": 2} if workers else {}))
    net = torchvision.models.mobilenet_v3_small(num_classes=len(data.classes))
    net.train()
    opt = torch.optim.RMSprop(net.parameters(), lr=0.01, alpha=0.9, eps=1e-3, momentum=0.9,
                              weight_decay=4e-5)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    batches = iter(loader)
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        image, label = next(batches)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(image), label)
        loss.backward()
        opt.step()
    float(loss)
    seconds = time.perf_counter() - start
    return {"workers": workers, "images_per_s": steps * BATCH / seconds, "seconds": seconds,
            "threads": torch.get_num_threads()}


def torch_e2e(root: Path, workers: int, warmup: int, steps: int) -> dict:
    """The best of libgomp's default (spinning) and PASSIVE wait policies (the project's
    launchers set PASSIVE: launcher/openmp.py), so the project's setting never handicaps it."""
    runs = []
    for policy in ("default", "PASSIVE"):
        env = {k: v for k, v in common.peer_env().items() if k != "OMP_WAIT_POLICY"}
        if policy != "default":
            env["OMP_WAIT_POLICY"] = policy
        cmd = [str(common.PEERS_PY), os.path.abspath(__file__), "--torch-side", str(root),
               "--workers", str(workers), "--warmup", str(warmup), "--steps", str(steps)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        runs.append(dict(json.loads(proc.stdout.strip().splitlines()[-1]), omp_wait_policy=policy))
    best = max(runs, key=lambda r: r["images_per_s"])
    return dict(best, alternatives={r["omp_wait_policy"]: round(r["images_per_s"], 2) for r in runs})


# ---- the benchmark -----------------------------------------------------------------------------

def measure(root: Path, args) -> dict:
    peers = common.need_peers()
    workers = [int(w) for w in args.torch_workers.split(",") if w != ""]
    raw = {"project": [], "project_step_alone": [], **{f"torch_w{w}": [] for w in workers if peers}}
    for r in range(args.repeat):  # alternate so load changes hit all sides alike
        raw["project"].append(project_e2e(root, args.warmup, args.steps, args.interval))
        raw["project_step_alone"].append(project_step_alone(args.step_alone_steps))
        line = (f"round {r + 1}: project {raw['project'][-1]['images_per_s']:.1f} img/s, step alone "
                f"{raw['project_step_alone'][-1]['images_per_s']:.1f}")
        for w in workers if peers else ():
            raw[f"torch_w{w}"].append(torch_e2e(root, w, args.warmup, args.steps))
            line += f", torch {w} worker(s) {raw[f'torch_w{w}'][-1]['images_per_s']:.1f}"
        print(f"{line} (load {os.getloadavg()[0]:.2f})", flush=True)
    return raw


def summarise(raw: dict) -> list[dict]:
    ips = {side: common.median([r["images_per_s"] for r in runs]) for side, runs in raw.items() if runs}
    ours = ips["project"]
    what = f"train from a JPEG folder end to end, {SIZE} px, batch {BATCH}, steady state"
    rows = []
    torch_sides = {s: v for s, v in ips.items() if s.startswith("torch_w")}
    if torch_sides:
        best = max(torch_sides, key=torch_sides.get)
        rows.append({"what": what, "unit": "images/s", "project": ours,
                     "peer": f"PyTorch torchvision DataLoader + train loop (best: {best[7:]} worker(s))",
                     "peer_value": torch_sides[best], "ratio": common.ratio(ours, torch_sides[best])})
    rows.append({"what": what, "unit": "images/s", "project": ours,
                 "peer": "project train step alone, no input pipeline (end-to-end efficiency)",
                 "peer_value": ips["project_step_alone"], "ratio": common.ratio(ours, ips["project_step_alone"])})
    print(", ".join(f"{s} {v:.1f} img/s" for s, v in ips.items()) +
          (f"; project / best torch {rows[0]['ratio']} (goal >= 1.2)" if torch_sides else ""), flush=True)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--warmup", type=int, default=10, help="steps left out (compile, first batches)")
    p.add_argument("--steps", type=int, default=40, help="timed steps (within the first epoch)")
    p.add_argument("--interval", type=int, default=5, help="train.log_interval of the project run")
    p.add_argument("--step-alone-steps", type=int, default=10)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--torch-workers", default="0,1,2")
    p.add_argument("--data", default=str(common.ROOT / ".cache" / "bench_photos_v2"))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--torch-side", metavar="ROOT", help=argparse.SUPPRESS)
    p.add_argument("--workers", type=int, default=2, help=argparse.SUPPRESS)
    common.add_isa_argument(p)
    args = p.parse_args()
    if args.torch_side:
        print(json.dumps(torch_side(args.torch_side, args.workers, args.warmup, args.steps)))
        return
    common.set_isa(args.isa)
    if args.quick:
        args.steps, args.repeat, args.torch_workers, args.step_alone_steps = 20, 1, "1,2", 5
    if args.warmup % args.interval or args.steps % args.interval:
        p.error("--warmup and --steps must be multiples of --interval")
    if (args.warmup + args.steps) * BATCH > args.images:
        p.error("the timed steps must fit in the first epoch: raise --images")
    import bench_pipeline  # generates the photo set (MindSpore's encoder): the project's venv only
    root = bench_pipeline.ensure_dataset(Path(args.data) / str(args.images), args.images, CLASSES).parent
    raw = measure(root, args)
    rows = summarise(raw)
    path = common.write_result("train_e2e", {
        "title": "Training from a JPEG folder end to end (224 px, batch 32, CPU)",
        "command": "python bench/bench_train_e2e.py" + (" --quick" if args.quick else ""),
        "rows": rows, "raw": raw,
        "notes": f"{args.images} generated photo-like JPEGs, 10 classes; images/s over steps "
                 f"{args.warmup + 1}-{args.warmup + args.steps} of the first epoch (compile and "
                 f"warm-up left out), median of {args.repeat} alternating round(s) of separate "
                 f"processes; project = `launcher/local.py train`; PyTorch at its best DataLoader "
                 f"worker count ({args.torch_workers}) and OMP wait policy; goal >= 1.2x."})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
