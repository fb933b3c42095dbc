import numpy as np
import pytest

from core.data.imagefolder import scan_split
from core.data.pipeline import CorruptImages, DatasetError, eval_order, steps_per_epoch, train_order
from core.data.synthetic import CLASSES, generate
from tests.core_fixtures import tiny_config


def test_scan_labels_are_sorted_class_indices(tiny_dataset):
    train = scan_split(tiny_dataset / "train")
    assert train.classes == tuple(sorted(CLASSES))
    assert len(train) == 60
    for f, label in zip(train.files, train.labels):
        assert f.split("/")[-2] == train.classes[label]


def test_val_uses_training_class_indices(tmp_path):
    generate(tmp_path, train_per_class=1, val_per_class=1, size=16)
    # drop a class from val: indices must still follow the training class list
    import shutil
    shutil.rmtree(tmp_path / "val" / "checkerboard")
    train = scan_split(tmp_path / "train")
    val = scan_split(tmp_path / "val", train.classes)
    assert val.classes == train.classes and min(val.labels) == 1


def test_val_class_unknown_to_train_is_refused(tmp_path):
    generate(tmp_path, train_per_class=1, val_per_class=1, size=16)
    (tmp_path / "val" / "zebra").mkdir()
    (tmp_path / "val" / "zebra" / "z.jpg").write_bytes((tmp_path / "val" / "circle" / "circle_0000.jpg").read_bytes())
    train = scan_split(tmp_path / "train")
    with pytest.raises(DatasetError, match=r"class folder\(s\) \['zebra'\] that the training set lacks"):
        scan_split(tmp_path / "val", train.classes)


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(DatasetError, match="dataset folder not found"):
        scan_split(tmp_path / "nope")
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetError, match="no class folders"):
        scan_split(tmp_path / "train")
    (tmp_path / "train" / "cat").mkdir()
    with pytest.raises(DatasetError, match="holds no images"):
        scan_split(tmp_path / "train")


def test_train_order_is_seeded_and_sharded_disjointly():
    a = train_order(103, seed=5, epoch=2, rank=0, world=2)
    b = train_order(103, seed=5, epoch=2, rank=1, world=2)
    assert len(a) == len(b) == 51
    assert not set(a) & set(b)
    assert np.array_equal(a, train_order(103, 5, 2, 0, 2))
    assert not np.array_equal(a, train_order(103, 5, 3, 0, 2))


def test_eval_order_covers_every_image_once():
    shards = [eval_order(10, r, 3) for r in range(3)]
    assert sorted(np.concatenate(shards).tolist()) == list(range(10))


def test_steps_per_epoch():
    assert steps_per_epoch(60, 8) == 7
    assert steps_per_epoch(61, 8, world=2) == 3


DECODERS = pytest.mark.parametrize("decoder", ["native", "mindspore"])


@DECODERS
def test_train_pipeline_shapes_and_determinism(tiny_dataset, tmp_path, decoder):
    cfg = tiny_config(tiny_dataset, tmp_path, **{"data.decoder": decoder})
    train = scan_split(tiny_dataset / "train")

    def batches(**kw):
        ds = train.train_pipeline(cfg.data, seed=1, epoch=0, **kw)
        return [(i.copy(), l.copy()) for i, l in ds.create_tuple_iterator(num_epochs=1, output_numpy=True)]

    first, again = batches(), batches()
    assert len(first) == 7
    image, label = first[0]
    # uint8 NHWC: normalisation and the transpose run in the training graph (NetWithLoss)
    assert image.shape == (8, 32, 32, 3) and image.dtype == np.uint8 and label.dtype == np.int32
    assert image.std() > 10
    for (a, la), (b, lb) in zip(first, again):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)
    # a resumed epoch skips consumed batches and sees exactly the same remaining augmentations
    resumed = batches(skip_batches=3)
    assert len(resumed) == 4
    for (a, _), (b, _) in zip(first[3:], resumed):
        np.testing.assert_array_equal(a, b)
    # labels follow the file order chosen for this epoch
    order = train_order(len(train), 1, 0)
    np.testing.assert_array_equal(np.concatenate([l for _, l in first]), np.array(train.labels)[order[:56]])


def test_eval_pipeline_keeps_partial_batch(tiny_dataset, tmp_path):
    cfg = tiny_config(tiny_dataset, tmp_path)
    val = scan_split(tiny_dataset / "val")
    sizes = [i.shape[0] for i, _ in val.eval_pipeline(cfg.data).create_tuple_iterator(
        num_epochs=1, output_numpy=True)]
    assert sum(sizes) == 30 and sizes[-1] == 30 % 7
    image = next(val.eval_pipeline(cfg.data).create_tuple_iterator(num_epochs=1, output_numpy=True))[0]
    assert image.shape[1:] == (3, 32, 32)


def test_synthetic_dataset_is_deterministic(tmp_path):
    a = generate(tmp_path / "a", train_per_class=2, val_per_class=1, size=24)
    b = generate(tmp_path / "b", train_per_class=2, val_per_class=1, size=24)
    for f in sorted((a / "train").rglob("*.jpg")):
        assert f.read_bytes() == (b / f.relative_to(a)).read_bytes()
        assert f.read_bytes()[:2] == b"\xff\xd8"  # real JPEG


def _plant_corrupt(root):
    good = (root / "train" / "circle" / "circle_0000.jpg").read_bytes()
    (root / "train" / "circle" / "zz_truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "train" / "square" / "zz_notes.jpg").write_text("not an image at all")


@DECODERS
def test_corrupt_training_images_are_counted_and_replaced(tmp_path, decoder):
    root = generate(tmp_path, train_per_class=2, val_per_class=1, size=24)
    _plant_corrupt(root)
    cfg = tiny_config(root, tmp_path, **{"data.batch_size": 2, "data.decoder": decoder})
    train = scan_split(root / "train")
    corrupt = CorruptImages()
    batches = list(train.train_pipeline(cfg.data, seed=1, epoch=0, corrupt=corrupt)
                   .create_tuple_iterator(num_epochs=1, output_numpy=True))
    assert len(batches) == 11  # 22 files, 2 per batch: every step still runs
    assert sorted(f.rsplit("/", 1)[-1] for f in corrupt.files) == ["zz_notes.jpg", "zz_truncated.jpg"]


@DECODERS
def test_corrupt_image_fails_fast_when_asked(tmp_path, decoder):
    root = generate(tmp_path, train_per_class=2, val_per_class=1, size=24)
    _plant_corrupt(root)
    cfg = tiny_config(root, tmp_path, **{"data.batch_size": 2, "data.decoder": decoder})
    train = scan_split(root / "train")
    with pytest.raises(Exception, match="corrupt or non-image file .*zz_"):
        list(train.train_pipeline(cfg.data, seed=1, epoch=0, corrupt=CorruptImages(fail_fast=True))
             .create_tuple_iterator(num_epochs=1, output_numpy=True))
