"""samples.jsonl, the sample ledger (data.sample_log): one line per global step naming its samples
in global-batch order, the same names for an ImageFolder and its pack, partial lines tolerated and
resumed runs appended (core.train.sample_log)."""
import json

import numpy as np

from core.data.imagefolder import scan_split
from core.data.packed import load_packed_split
from core.data.pipeline import steps_per_epoch
from core.train.sample_log import SampleLedger, read_sample_log
from tests.core_fixtures import tiny_config


def test_an_imagefolder_and_its_pack_name_every_sample_alike(tiny_dataset, tiny_pack):
    folder, packed = scan_split(tiny_dataset / "train"), load_packed_split(tiny_pack, "train")
    everything = np.arange(len(folder))[::-1]  # any order, shards in any order
    names = folder.sample_names(everything)
    assert names == packed.sample_names(everything)
    assert names[-1] == "checkerboard/checkerboard_0000.jpg"  # the path relative to the split
    assert names == [f[len(str(tiny_dataset / "train")) + 1:] for f in np.array(folder.files)[everything]]


def ledger(split, path, cfg, per_step=6):
    return SampleLedger(path, split, cfg.data, cfg.train.seed, per_step,
                        steps_per_epoch(len(split), per_step)).open()


def test_ledger_lines_name_each_steps_global_batch_and_survive_a_kill(tiny_pack, tmp_path):
    cfg = tiny_config(tiny_pack, tmp_path, **{"data.shuffle_window": 2, "data.batch_size": 6})
    split = load_packed_split(tiny_pack, "train")
    path = tmp_path / "samples.jsonl"
    first = ledger(split, path, cfg)
    for step in range(1, 14):  # 10 steps an epoch: into the second epoch
        first.write(step)
    first.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 13
    records = [json.loads(line) for line in lines]
    assert [(r["step"], r["epoch"]) for r in records[8:12]] == [(9, 0), (10, 1), (11, 1), (12, 1)]
    # step S reads positions (S-1)*6.. of its epoch's order, named relative to the split
    for record in records:
        epoch, within = divmod(record["step"] - 1, 10)
        order = split.epoch_order(cfg.data, cfg.train.seed, epoch)
        assert record["samples"] == split.sample_names(order[within * 6:(within + 1) * 6])
        assert len(set(record["samples"])) == 6
    # killed while writing step 14; the resumed run (from a step-11 checkpoint) appends
    with open(path, "a") as fh:
        fh.write('{"step": 14, "epoch": 1, "samples": ["sq')
    resumed = ledger(split, path, cfg)
    for step in range(12, 16):
        resumed.write(step)
    resumed.close()
    text = path.read_text()
    assert text.count("\n") == 13 + 1 + 4 and text.endswith("\n")  # the cut line kept on its own
    live, skipped = read_sample_log(path)
    assert skipped == 1
    assert [r["step"] for r in live] == list(range(1, 16))  # steps 12, 13 of the resumed run win
    again = [json.loads(line) for line in text.splitlines()[-4:]]
    assert live[11:] == again and live[:11] == records[:11]
    assert live[11]["samples"] == records[11]["samples"]  # the same data at the same step


def test_a_resume_from_an_older_checkpoint_drops_the_abandoned_branch(tmp_path):
    path = tmp_path / "samples.jsonl"
    steps = [1, 2, 3, 4, 5, 6, 3, 4, 7]  # run to 6, resumed at 2 (lines 3, 4 again), later at 6
    path.write_text("".join(json.dumps({"step": s, "epoch": 0, "samples": [f"{s}-{i}"]}) + "\n"
                            for i, s in enumerate(steps)))
    live, skipped = read_sample_log(path)
    assert skipped == 0
    assert [(r["step"], r["samples"][0]) for r in live] == [
        (1, "1-0"), (2, "2-1"), (3, "3-6"), (4, "4-7"), (7, "7-8")]


def test_the_ledger_names_what_the_pipeline_trains_on(tiny_pack, tmp_path):
    """The names of step S are the samples of the batches the training pipeline delivers at S
    (labels checked: the class folder of each name is its label's class)."""
    cfg = tiny_config(tiny_pack, tmp_path, **{"data.shuffle_window": 3, "data.batch_size": 6,
                                              "data.decoder": "mindspore"})
    split = load_packed_split(tiny_pack, "train")
    book = ledger(split, tmp_path / "samples.jsonl", cfg)
    batches = split.train_pipeline(cfg.data, cfg.train.seed, 1).create_tuple_iterator(
        num_epochs=1, output_numpy=True)
    for step, (_, labels) in enumerate(batches, start=11):  # epoch 1 (0-based) is steps 11..20
        names = book.samples(step)
        assert [split.classes[label] for label in labels] == [name.split("/")[0] for name in names]
    book.close()
