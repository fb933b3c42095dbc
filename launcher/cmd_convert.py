"""`convert`: torchvision / MindCV MobileNetV3-Small weights -> a checkpoint of this project."""
from __future__ import annotations

from launcher.cli import add_debug_flag


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "convert", help="import torchvision or MindCV mobilenet_v3_small weights",
        description="Write a checkpoint that eval/export/predict read and `train --pre_trained` "
                    "fine-tunes from.")
    p.add_argument("--from", dest="source", required=True, choices=("torchvision", "mindcv"),
                   help="torchvision: a state_dict .pth (needs torch); mindcv: a "
                        "mobilenet_v3_small_100 .ckpt")
    p.add_argument("--src", required=True, help="source weights file")
    p.add_argument("--dst", required=True, help="checkpoint to write (.ckpt)")
    p.add_argument("--num_classes", type=int,
                   help="class count to fine-tune for; if it differs from the source's, the "
                        "classifier is left out (it starts fresh)")
    p.add_argument("--width_mult", type=float, default=1.0, help="width of the source model")
    p.add_argument("--classes", help="class names (one per line, or a JSON list) to store, "
                                     "e.g. the 1000 ImageNet names for predict")
    add_debug_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from launcher.common import setup_logging
    from launcher.convert import convert, read_class_names
    setup_logging()
    classes = read_class_names(args.classes) if args.classes else None
    result = convert(args.source, args.src, args.dst, args.num_classes, args.width_mult, classes)
    head = "classifier kept" if result["classifier_kept"] else \
        f"classifier left out: the source has {result['source_classes']} classes, fine-tuning " \
        f"starts a new one"
    print(f"converted: {result['path']}; {head}")
    return 0
