"""PyTorch side of the eval benchmark (runs in bench/.venv-peers): torchvision ImageFolder +
DataLoader with the eval transform (Resize(256), CenterCrop(224), ToTensor, Normalize) and
torchvision mobilenet_v3_small (the model of torch_models.py) in eval mode under inference_mode;
one whole pass over the folder, timed after a warm-up forward. Prints one JSON line."""
import argparse
import json
import resource
import time

import torch
import torchvision
from torchvision import datasets, transforms


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the loader's workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main():
    p = argparse.ArgumentParser()
    p.add_argument("root", help="an ImageFolder split (class folders)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--resize", type=int, default=256)
    args = p.parse_args()
    tf = transforms.Compose([transforms.Resize(args.resize), transforms.CenterCrop(args.size),
                             transforms.ToTensor(),
                             transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    ds = datasets.ImageFolder(args.root, transform=tf)
    torch.manual_seed(1)
    net = torchvision.models.mobilenet_v3_small(num_classes=len(ds.classes)).eval()
    with torch.inference_mode():
        net(torch.zeros(args.batch, 3, args.size, args.size))  # first-call set-up is not timed
        loader = torch.utils.data.DataLoader(ds, batch_size=args.batch, shuffle=False,
                                             num_workers=args.workers)
        start, cpu = time.perf_counter(), cpu_seconds()
        n = correct = 0
        for images, labels in loader:
            logits = net(images)
            correct += int((logits.argmax(1) == labels).sum())
            n += images.shape[0]
        sec = time.perf_counter() - start
        del loader  # its workers are joined, so their CPU time is counted
        cpu = cpu_seconds() - cpu
    print(json.dumps({"peer": "torchvision", "workers": args.workers, "images": n, "seconds": sec,
                      "images_per_s": n / sec,
                      "cpu_s_per_image": cpu / n, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
