"""Benchmark: training input pipeline, images/s with 1 and 2 workers, 224 px, batch 64.

The project's pipeline (an ImageFolder split's train_pipeline, data.decoder=auto, i.e. the native
operator of core/data/jpeg_augment.py: random-resized crop decoded with Pillow's SIMD libjpeg-turbo,
flip, colour jitter (0.4, 0.4, 0.4); uint8 HWC batches, normalised in the training graph) against
torchvision ImageFolder + DataLoader with the same augmentations (RandomResizedCrop, flip,
ColorJitter, ToTensor, Normalize; run in bench/.venv-peers), and against the project's
MindSpore-ops pipeline (data.decoder=mindspore: RandomCropDecodeResize, RandomHorizontalFlip,
RandomColorAdjust), on a JPEG ImageFolder of photo-sized images (~500x375, ~60-120 KB)
generated deterministically: smooth random colour fields, gradients and shapes, encoded with
mindspore.dataset.vision.encode_jpeg. Nothing is downloaded.
Goal (not asserted): project >= 2.5x torchvision per worker count.

    python bench/bench_pipeline.py            # 2,000 images, 20 batches of 64 per run, 3 runs
    python bench/bench_pipeline.py --quick    # 400 images, 5 batches, 2 runs
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

DEFAULT_DATA = common.ROOT / ".cache" / "bench_photos_v2"


def make_photo(rng, width: int = 500, height: int = 375):
    """A photo-like RGB image: upsampled smooth noise + gradient + a few soft shapes + grain."""
    import numpy as np
    from PIL import Image
    coarse = rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base += (xx / width * rng.uniform(-60, 60) + yy / height * rng.uniform(-60, 60))[..., None]
    for _ in range(rng.integers(3, 8)):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(20, 120)
        mask = np.clip(1.5 - np.hypot(xx - cx, yy - cy) / r, 0, 1)[..., None]
        base = base * (1 - mask) + rng.uniform(0, 255, 3) * mask
    base += rng.normal(0, 10, base.shape)  # sensor-like grain: realistic JPEG sizes
    return np.clip(base, 0, 255).astype(np.uint8)


def ensure_dataset(root: Path, images: int, classes: int = 10, seed: int = 0) -> Path:
    """Generate (once) root/train/<class>/*.jpg; returns the train folder."""
    import numpy as np
    from mindspore.dataset import vision
    train = root / "train"
    stamp = root / f".complete-{images}-{classes}-{seed}"
    if stamp.exists():
        return train
    rng = np.random.default_rng(seed)
    for i in range(images):
        folder = train / f"class{i % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        data = vision.encode_jpeg(make_photo(rng), 95)
        (folder / f"img{i:05d}.jpg").write_bytes(np.asarray(data).tobytes())
    stamp.write_text("ok\n")
    return train


def project_rate(train: Path, workers: int, batches: int, batch: int, decoder: str = "auto") -> float:
    from core.config import Config
    from core.data.imagefolder import scan_split
    cfg = Config()
    cfg.data.image_size = 224
    cfg.data.batch_size = batch
    cfg.data.workers = workers
    cfg.data.decoder = decoder
    images = scan_split(train)
    ds = images.train_pipeline(cfg.data, seed=1, epoch=0)
    it = ds.create_tuple_iterator(num_epochs=1, output_numpy=True)
    next(it)  # start-up and the first batch are not timed
    n = 0
    start = time.perf_counter()
    for _ in range(batches):
        image, _ = next(it)
        n += image.shape[0]
    return n / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--batches", type=int, default=20, help="timed batches per run")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3, help="runs per side (alternating); median kept")
    p.add_argument("--workers", default="1,2")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--quick", action="store_true", help="400 images, 5 batches, 2 runs")
    args = p.parse_args()
    if args.quick:
        args.images, args.batches, args.repeat = 400, 5, 2
    args.batches = min(args.batches, args.images // args.batch - 2)
    train = ensure_dataset(Path(args.data) / str(args.images), args.images)
    sizes = [f.stat().st_size for f in sorted(train.rglob("*.jpg"))[:50]]
    peers = common.need_peers()
    cfg_scale, cfg_ratio = "0.08,1.0", "0.75,1.333333"
    rows, raw = [], {}
    for workers in (int(w) for w in args.workers.split(",")):
        ours, theirs, ops = [], [], []
        for _ in range(args.repeat):  # alternate so load changes hit all sides alike
            ours.append(project_rate(train, workers, args.batches, args.batch))
            ops.append(project_rate(train, workers, args.batches, args.batch, "mindspore"))
            if peers:
                theirs.append(common.run_peer("torch_pipeline.py", [
                    train, "--workers", workers, "--batch", args.batch, "--batches", args.batches,
                    "--scale", cfg_scale, "--ratio", cfg_ratio])["images_per_s"])
        raw[f"workers_{workers}"] = {"project": ours, "project_mindspore_ops": ops, "torchvision": theirs}
        mine, with_ops = common.median(ours), common.median(ops)
        other = common.median(theirs) if theirs else None
        what = f"train pipeline, {workers} worker(s), 224 px, batch {args.batch}"
        rows.append({"what": what, "unit": "images/s", "project": mine, "peer": "torchvision DataLoader",
                     "peer_value": other, "ratio": common.ratio(mine, other)})
        rows.append({"what": what, "unit": "images/s", "project": mine,
                     "peer": "project with MindSpore's ops (data.decoder=mindspore)",
                     "peer_value": with_ops, "ratio": common.ratio(mine, with_ops)})
        print(f"{workers} worker(s): project {mine:.1f} img/s, torchvision "
              f"{other if other is None else round(other, 1)} img/s, ratio "
              f"{common.ratio(mine, other)} (goal >= 2.5); with MindSpore's ops {with_ops:.1f} img/s "
              f"(ratio to torchvision {common.ratio(with_ops, other)})", flush=True)
    path = common.write_result("pipeline", {
        "title": "Input pipeline (training augmentations, 224 px)",
        "command": "python bench/bench_pipeline.py" + (" --quick" if args.quick else ""),
        "rows": rows, "raw": raw,
        "dataset": {"images": args.images, "size": "500x375", "mean_kb": round(sum(sizes) / len(sizes) / 1024, 1)},
        "notes": f"{args.images} generated photo-like JPEGs (500x375, mean {sum(sizes) / len(sizes) / 1024:.0f} KB); "
                 f"{args.batches} timed batches per run after the first, {args.repeat} alternating runs per side; "
                 f"goal >= 2.5x torchvision per worker count."})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
