"""Training and evaluation accept a packed dataset wherever they accept an ImageFolder."""
from core.train.metrics import read_metrics
from core.data.packing import pack_imagefolder
from core.train.loop import train
from tests.core_fixtures import tiny_config


def test_packed_run_matches_imagefolder_run(tiny_dataset, tmp_path):
    packed = tmp_path / "packed"
    pack_imagefolder(tiny_dataset, packed, shard_size_mb=1, workers=1)
    runs = {}
    for name, root in (("folder", tiny_dataset), ("packed", packed)):
        out = tmp_path / name
        summary = train(tiny_config(root, out, **{"train.epochs": 1}), out)
        losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl") if r["type"] == "step"]
        runs[name] = (losses, summary["final_eval"])
    assert runs["packed"][0] == runs["folder"][0]  # same samples, same augmentations, same steps
    assert runs["packed"][1]["images"] == runs["folder"][1]["images"] == 30
    assert runs["packed"][1]["Top_1_Acc"] == runs["folder"][1]["Top_1_Acc"]
