"""Benchmark: `eval` of a JPEG folder end to end, images/s over a whole pass, 224 px, batch 32.

Project: what `python launcher/local.py eval` runs (launcher.openmp, core.device.configure, the project's
MobileNetV3-Small with the fused inference graph of core.nn.fuse, core.infer.evaluate.evaluate over an
ImageFolder val split: the eval pipeline with data.decoder=auto, i.e. the native decoder of
core/data/jpeg_eval.py, batches of float32 NCHW, loss and top-1/top-5), in its own process, after
one warm-up forward (the graph compile is not timed; pipeline start-up is). Also measured in
that process: the same pipeline alone (no network) and the network alone on a fixed batch.
Peers: the project with MindSpore's ops (data.decoder=mindspore, the path before the native
decoder), and torchvision ImageFolder + DataLoader (Resize 256, CenterCrop 224, ToTensor,
Normalize) with torchvision mobilenet_v3_small in inference_mode (bench/.venv-peers), at its
best of --torch-workers x --torch-omp (OMP_WAIT_POLICY unset or PASSIVE, as the project's
launchers set it). On generated photo-like JPEGs (~500x375, as
bench/bench_pipeline.py makes them, cached in .cache/bench_photos_v2). Goal (not asserted):
project >= 2x torchvision.

    python bench/bench_eval.py            # 1,000 images, 3 alternating runs per side
    python bench/bench_eval.py --quick    # 320 images, 1 run
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from bench_pipeline import DEFAULT_DATA, ensure_dataset  # noqa: E402

PHOTOS = 2000  # the cached set of bench_pipeline.py; eval folders link to its first images


def eval_folder(images: int, classes: int = 10) -> Path:
    """<cache>/eval-<images>/val/<class>/*.jpg: symlinks to the first images/classes photos of
    each class of the cached set (generated once, as bench_pipeline.py does)."""
    train = ensure_dataset(DEFAULT_DATA / str(PHOTOS), PHOTOS, classes)
    root = DEFAULT_DATA / f"eval-{images}"
    stamp = root / ".complete"
    if not stamp.exists():
        for folder in sorted(p for p in train.iterdir() if p.is_dir()):
            dest = root / "val" / folder.name
            dest.mkdir(parents=True, exist_ok=True)
            for f in sorted(folder.glob("*.jpg"))[:images // classes]:
                link = dest / f.name
                if not link.exists():
                    link.symlink_to(f.resolve())
        stamp.write_text("ok\n")
    return root


def project_side(root: str, batch: int, decoder: str, workers: int) -> dict:
    """One whole eval pass as cmd_eval runs it (in this process), plus the pipeline alone and
    the network alone."""
    import launcher.openmp  # noqa: F401 - as the launchers do, before MindSpore loads libgomp
    import mindspore as ms
    import numpy as np
    from core.config import load_config
    from core.data.sources import open_dataset
    from core.device import configure
    from core.infer.evaluate import evaluate
    from core.nn.fuse import fuse_for_inference
    from core.nn.model import build_model
    cfg = load_config(None, {"data.path": root, "data.image_size": 224, "data.eval_resize": 256,
                             "data.batch_size": batch, "data.workers": workers,
                             "data.decoder": decoder, "system.device_target": "CPU"})
    configure(cfg.system)
    common.apply_isa()
    val = open_dataset(root).split(cfg.data.val_dir)
    ms.set_seed(1)
    net = build_model(cfg.model.arch, len(val.classes), cfg.model.width_mult, cfg.model.dropout,
                      depthwise_padding=cfg.model.depthwise_padding,
                      ops_impl=cfg.system.cpu_ops)
    net = fuse_for_inference(net, cfg.system.cpu_ops)
    x = ms.Tensor(np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32))
    net(x).asnumpy()  # compile
    cpu = time.process_time()
    result = evaluate(net, val, cfg.data)
    cpu = time.process_time() - cpu
    start, pipeline_cpu = time.perf_counter(), time.process_time()
    n = sum(image.shape[0] for image, _ in val.eval_pipeline(cfg.data).create_tuple_iterator(
        num_epochs=1, output_numpy=True))
    pipeline, pipeline_cpu = n / (time.perf_counter() - start), time.process_time() - pipeline_cpu
    times, network_cpu = [], time.process_time()
    for _ in range(6):
        t = time.perf_counter()
        net(x).asnumpy()
        times.append(time.perf_counter() - t)
    network_cpu = time.process_time() - network_cpu
    return {"images": result["images"], "seconds": result["seconds"],
            "images_per_s": result["images"] / result["seconds"], "cpu_s_per_image": cpu / result["images"],
            "pipeline_images_per_s": pipeline, "pipeline_cpu_s_per_image": pipeline_cpu / n,
            "network_images_per_s": batch / common.median(times),
            "network_cpu_s_per_image": network_cpu / (6 * batch)}


def run_project(root: Path, batch: int, decoder: str, workers: int) -> dict:
    cmd = [sys.executable, __file__, "--project-side", str(root), "--batch", str(batch),
           "--decoder", decoder, "--workers", str(workers)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=common.ROOT,
                          env=common.child_env())
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peer_configs(args) -> list[tuple[int, str]]:
    """(DataLoader workers, OMP_WAIT_POLICY) pairs tried for torchvision; its best is kept.
    PASSIVE is what the project's launchers set (launcher/openmp.py); on a busy machine
    PyTorch's spinning OpenMP threads otherwise cost it 3x the CPU time."""
    return [(int(w), policy) for w in args.torch_workers.split(",") for policy in args.torch_omp.split(",")]


def run_torch(root: Path, workers: int, policy: str, batch: int) -> dict:
    env = {k: v for k, v in common.peer_env().items() if k != "OMP_WAIT_POLICY"}
    if policy != "default":
        env["OMP_WAIT_POLICY"] = policy
    return common.run_peer("torch_eval.py", [root / "val", "--workers", workers, "--batch", batch], env=env)


def measure(root: Path, args, peers: bool) -> dict:
    """Alternating rounds: project, project with MindSpore's ops, torchvision per configuration."""
    raw = {"project": [], "project_mindspore_ops": [], "torchvision": {}}
    for _ in range(args.repeat):
        raw["project"].append(run_project(root, args.batch, "auto", args.workers))
        raw["project_mindspore_ops"].append(run_project(root, args.batch, "mindspore", args.workers))
        print(f"  project {raw['project'][-1]['images_per_s']:.1f} img/s, with MindSpore's ops "
              f"{raw['project_mindspore_ops'][-1]['images_per_s']:.1f}  (load average "
              f"{os.getloadavg()[0]:.1f})", flush=True)
        for workers, policy in peer_configs(args) if peers else ():
            rate = run_torch(root, workers, policy, args.batch)
            raw["torchvision"].setdefault(f"{workers} workers, OMP {policy}", []).append(rate)
            print(f"  torchvision, {workers} worker(s), OMP_WAIT_POLICY {policy}: "
                  f"{rate['images_per_s']:.1f} img/s, {rate['cpu_s_per_image'] * 1e3:.1f} ms CPU/image", flush=True)
    return raw


def best_peer(raw: dict) -> tuple:
    """(configuration, median images/s, median CPU s per image) of torchvision's fastest one."""
    best = (None, None, None)
    for name, runs in raw["torchvision"].items():
        rate = common.median(r["images_per_s"] for r in runs)
        if best[1] is None or rate > best[1]:
            best = (name, rate, common.median(r["cpu_s_per_image"] for r in runs))
    return best


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeat", type=int, default=3, help="runs per side (alternating); median kept")
    p.add_argument("--workers", type=int, default=2, help="the project's data.workers")
    p.add_argument("--torch-workers", default="0,1,2", help="DataLoader worker counts tried; best kept")
    p.add_argument("--torch-omp", default="default,PASSIVE",
                   help="OMP_WAIT_POLICY values tried for torchvision (default: unset); best kept")
    p.add_argument("--quick", action="store_true", help="320 images, 1 run")
    p.add_argument("--project-side", help=argparse.SUPPRESS)
    p.add_argument("--decoder", default="auto", help=argparse.SUPPRESS)
    common.add_isa_argument(p)
    args = p.parse_args()
    if args.project_side:
        print(json.dumps(project_side(args.project_side, args.batch, args.decoder, args.workers)))
        return
    common.set_isa(args.isa)
    if args.quick:
        args.images, args.repeat = 320, 1
    root = eval_folder(args.images)
    peers = common.need_peers()
    raw = measure(root, args, peers)
    mine = common.median(r["images_per_s"] for r in raw["project"])
    ops = common.median(r["images_per_s"] for r in raw["project_mindspore_ops"])
    cpu = {side: {k: common.median(r[k] for r in raw[side]) for k in
                  ("cpu_s_per_image", "pipeline_cpu_s_per_image", "network_cpu_s_per_image")}
           for side in ("project", "project_mindspore_ops")}
    network = common.median(r["network_images_per_s"] for r in raw["project"])
    pipeline = common.median(r["pipeline_images_per_s"] for r in raw["project"])
    best, other, other_cpu = best_peer(raw)
    what = f"eval of a JPEG folder, whole pass, {args.images} photos, 224 px, batch {args.batch}"
    peer = f"torchvision DataLoader ({best}) + mobilenet_v3_small"
    rows = [{"what": what, "unit": "images/s", "project": mine, "peer": peer, "peer_value": other,
             "ratio": common.ratio(mine, other)},
            {"what": what, "unit": "images/s", "project": mine,
             "peer": "project with MindSpore's ops (data.decoder=mindspore)", "peer_value": ops,
             "ratio": common.ratio(mine, ops)},
            {"what": "same pass, CPU time per image (all threads and worker processes)",
             "unit": "ms (lower is better)", "project": cpu["project"]["cpu_s_per_image"] * 1e3,
             "peer": peer, "peer_value": other_cpu * 1e3 if other_cpu else None,
             "ratio": common.ratio(cpu["project"]["cpu_s_per_image"], other_cpu, higher_is_better=False)}]
    names = {"cpu_s_per_image": "eval", "pipeline_cpu_s_per_image": "pipeline alone",
             "network_cpu_s_per_image": "network alone"}
    ms_cpu = {names[k]: round(v * 1e3, 2) for k, v in cpu["project"].items()}
    ops_cpu = {names[k]: round(v * 1e3, 2) for k, v in cpu["project_mindspore_ops"].items()}
    print(f"project {mine:.1f} img/s (pipeline alone {pipeline:.0f}, network alone {network:.0f}), "
          f"torchvision {other if other is None else round(other, 1)} img/s ({best}), ratio "
          f"{common.ratio(mine, other)} (goal >= 2); with MindSpore's ops {ops:.1f} img/s\n"
          f"CPU ms per image: project {ms_cpu}, with MindSpore's ops {ops_cpu}, torchvision "
          f"{other_cpu if other_cpu is None else round(other_cpu * 1e3, 2)}", flush=True)
    path = common.write_result("eval" if not args.quick else "eval-quick", {
        "title": "Eval of a JPEG folder end to end (224 px)",
        "command": "python bench/bench_eval.py" + (" --quick" if args.quick else ""),
        "rows": rows, "raw": raw, "cpu_ms_per_image": {"project": ms_cpu, "project_mindspore_ops": ops_cpu},
        "project_pipeline_alone_images_per_s": pipeline, "project_network_alone_images_per_s": network,
        "notes": f"{args.images} generated photo-like JPEGs (500x375), resize 256, centre crop 224, "
                 f"batch {args.batch}, one whole pass per run after a warm-up forward, {args.repeat} "
                 f"alternating runs per side; project data.workers={args.workers}; torchvision at its "
                 f"best of workers {args.torch_workers} x OMP_WAIT_POLICY {args.torch_omp}. In the "
                 f"project's process: its pipeline alone {pipeline:.0f} img/s, its network alone (fused "
                 f"graph, fixed batch) {network:.0f} img/s; CPU ms per image {ms_cpu} (with MindSpore's "
                 f"ops {ops_cpu}). Goal >= 2x torchvision."})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
