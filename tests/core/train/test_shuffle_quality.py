"""The shard-window shuffle on its worst case, a pack written in class order (every shard one or
two classes): per-batch class diversity and accuracy after a short run within stated margins of
the full shuffle's (core.data.pipeline.epoch_order, data.shuffle_window)."""
import numpy as np

from core.data.packed import load_packed_split
from core.data.packing import pack_imagefolder
from core.data.pipeline import epoch_order
from core.train.loop import train
from tests.core_fixtures import tiny_config

WINDOW = 4             # shards a reader holds: 4 of the pack's 14 (its cache: under a third)
DIVERSITY = 0.95       # distinct classes per batch, at least this x the full shuffle's
TOP1_MARGIN = 0.15     # top-1 at most this below the full shuffle's (seeds 1-5: 0 to 0.1 below)


def class_order_pack(root, tmp_path):
    """`pack` of learned_run's colour folder (3 classes x 16 training JPEGs, class order) in
    shards of about 4 images: 14 shards of one class, or two where a class ends."""
    sizes = [f.stat().st_size for f in sorted((root / "train").rglob("*.jpg"))]
    pack_imagefolder(root, tmp_path / "pack", shard_size_mb=sum(sizes[:4]) / 2 ** 20 * 0.999, workers=1)
    return tmp_path / "pack"


def distinct_classes(labels, sizes, window, batch=12, epochs=50):
    """Mean distinct classes per batch of `batch` over `epochs` epochs of the order."""
    counts = []
    for epoch in range(epochs):
        order = epoch_order(len(labels), 1, epoch, sizes, window)
        steps = len(order) // batch
        counts += [len(set(labels[order[s * batch:(s + 1) * batch]].tolist())) for s in range(steps)]
    return float(np.mean(counts))


def test_shard_window_shuffle_on_a_class_ordered_pack(learned_run, tmp_path):
    cfg, _, _, full_eval, root = learned_run  # the full shuffle of the same images and recipe
    pack = class_order_pack(root, tmp_path)
    split = load_packed_split(pack, "train")
    starts = np.cumsum((0,) + split.shard_samples)
    per_shard = [len(set(split.labels[a:b].tolist())) for a, b in zip(starts[:-1], starts[1:])]
    assert len(per_shard) == 14 and max(per_shard) <= 2  # the worst case: shards of one class
    full = distinct_classes(split.labels, split.shard_samples, 0)
    windowed = distinct_classes(split.labels, split.shard_samples, WINDOW)
    one_shard = distinct_classes(split.labels, split.shard_samples, 1)
    assert full > 2.9 and windowed >= DIVERSITY * full, (windowed, full)
    assert one_shard < 0.92 * full  # the measure tells: a window of one shard mixes little

    out = tmp_path / "run"
    summary = train(tiny_config(pack, out, **{"train.epochs": cfg.train.epochs,
                                              "data.batch_size": cfg.data.batch_size,
                                              "model.bn_momentum": cfg.model.bn_momentum,
                                              "data.shuffle_window": WINDOW}), out)
    assert summary["step"] == 32 and summary["final_eval"]["images"] == full_eval["images"] == 30
    top1 = summary["final_eval"]["Top_1_Acc"]
    assert top1 >= full_eval["Top_1_Acc"] - TOP1_MARGIN, (top1, full_eval["Top_1_Acc"])
