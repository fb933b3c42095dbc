"""torchvision ImageFolder + DataLoader with the project's training augmentations
(RandomResizedCrop 224 scale/ratio as the project, flip, ColorJitter(0.4,0.4,0.4), ToTensor,
Normalize), images/s over a fixed number of batches. Prints one JSON line."""
import argparse
import json
import time

import torch
from torchvision import datasets, transforms


def main():
    p = argparse.ArgumentParser()
    p.add_argument("root")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--scale", default="0.08,1.0")
    p.add_argument("--ratio", default="0.75,1.3333333")
    p.add_argument("--jitter", default="0.4,0.4,0.4")
    args = p.parse_args()
    torch.set_num_threads(1)
    b, c, s = (float(v) for v in args.jitter.split(","))
    tf = transforms.Compose([
        transforms.RandomResizedCrop(args.size, scale=tuple(float(v) for v in args.scale.split(",")),
                                     ratio=tuple(float(v) for v in args.ratio.split(","))),
        transforms.RandomHorizontalFlip(),
        transforms.ColorJitter(brightness=b, contrast=c, saturation=s),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    ds = datasets.ImageFolder(args.root, transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch, shuffle=True,
                                         num_workers=args.workers, drop_last=True,
                                         persistent_workers=False, prefetch_factor=2)
    it = iter(loader)
    next(it)  # worker start-up and first batch are not timed
    n = 0
    t = time.perf_counter()
    for _ in range(args.batches):
        images, _ = next(it)
        n += images.shape[0]
    sec = time.perf_counter() - t
    print(json.dumps({"peer": "torchvision", "workers": args.workers, "images": n, "seconds": sec,
                      "images_per_s": n / sec}))


if __name__ == "__main__":
    main()
