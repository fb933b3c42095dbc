"""The epoch's sample order (shard-window shuffle) and elastic determinism: which sample stands at
global position p of epoch e, and its augmentation, depend on (seed, epoch, p) only; rank r of
any number of processes reads its slice of every global batch (core.data.pipeline)."""
import numpy as np
import pytest

from core.data.packed import load_packed_split
from core.data.pipeline import (epoch_order, rank_positions, shard_windows, steps_per_epoch,
                                train_order)
from tests.core_fixtures import tiny_config

SIZES = (7, 7, 8, 3, 9, 7, 7, 8, 8, 6, 5, 8)  # samples of 12 shards, in file order


def shard_of(sizes):
    return np.repeat(np.arange(len(sizes)), sizes)


@pytest.mark.parametrize("window", [1, 2, 3, 5])
def test_shard_window_order_reads_one_window_of_shards_at_a_time(window):
    total = sum(SIZES)
    order = epoch_order(total, seed=4, epoch=2, shard_sizes=SIZES, window=window)
    assert sorted(order.tolist()) == list(range(total))  # every sample once
    windows = shard_windows(len(SIZES), 4, 2, window)
    assert sorted(np.concatenate(windows).tolist()) == list(range(len(SIZES)))
    assert max(map(len, windows)) <= window and max(map(len, windows)) - min(map(len, windows)) <= 1
    shards, at = shard_of(SIZES)[order], 0
    for members in windows:  # the windows follow each other: positions of a window read only its shards
        count = sum(SIZES[k] for k in members)
        assert set(shards[at:at + count].tolist()) == set(members.tolist())
        at += count
        # stratified: no two shards of a window are among the same len(windows) file-order
        # neighbours (in a class-ordered pack, shards of the same classes)
        rows = [k // len(windows) for k in members.tolist()]
        assert len(set(rows)) == len(rows)
    # a function of (seed, epoch): the same again, another epoch or seed permutes the shards anew
    assert np.array_equal(order, epoch_order(total, 4, 2, SIZES, window))
    assert not np.array_equal(order, epoch_order(total, 4, 3, SIZES, window))
    assert not np.array_equal(order, epoch_order(total, 5, 2, SIZES, window))


def test_window_zero_or_over_every_shard_and_folders_are_the_full_shuffle():
    total = sum(SIZES)
    full = np.random.default_rng([4, 2]).permutation(total)  # the order runs always had
    for sizes, window in ((SIZES, 0), (SIZES, len(SIZES)), (None, 3), ((), 3)):
        assert np.array_equal(epoch_order(total, 4, 2, sizes, window), full)


@pytest.mark.parametrize("window", [0, 3])
def test_each_global_batch_is_the_same_whatever_the_process_count(window):
    total, per_step = sum(SIZES), 12
    steps = steps_per_epoch(total, per_step)
    one = train_order(total, 1, 0, 0, 1, per_step, SIZES, window).reshape(steps, per_step)
    assert np.array_equal(one.reshape(-1), epoch_order(total, 1, 0, SIZES, window)[:steps * per_step])
    for world in (2, 3, 4, 6):
        batch = per_step // world
        assert steps_per_epoch(total, batch, world) == steps
        ranks = [train_order(total, 1, 0, rank, world, batch, SIZES, window).reshape(steps, batch)
                 for rank in range(world)]
        assert np.array_equal(np.concatenate(ranks, axis=1), one)  # rank r: slice r of each batch
    # a resumed epoch starts at the next unseen position: step 3's slice of rank 1 of 3
    assert np.array_equal(rank_positions(steps, 4, 1, 3, first_step=3)[:4], np.arange(40, 44))


def test_the_old_per_rank_stride_is_the_one_sample_batch_case():
    """train_order(.., rank, world) with its default batch of one reads order[rank::world], as the
    order did before global batches: a one-process run's order is unchanged."""
    full = np.random.default_rng([5, 2]).permutation(103)
    for rank in (0, 1):
        assert np.array_equal(train_order(103, 5, 2, rank, 2), full[:102][rank::2])


def batches(dataset):
    return [(image.copy(), label.copy())
            for image, label in dataset.create_tuple_iterator(num_epochs=1, output_numpy=True)]


def test_pipeline_batches_and_augmentation_do_not_depend_on_the_process_count(
        tiny_pack, tmp_path, native_kernels):
    """Real JPEGs through the native decoder: the images of every global step (crops, flips,
    jitter) are bit for bit the same on 1, 2 or 3 processes, from the epoch's start or resumed
    mid-epoch on another count."""
    split = load_packed_split(tiny_pack, "train")
    per_step, epoch = 6, 1

    def steps(world, skip=0):
        cfg = tiny_config(tiny_pack, tmp_path, **{"data.decoder": "native", "data.shuffle_window": 3,
                                                  "data.batch_size": per_step // world})
        ranks = [batches(split.train_pipeline(cfg.data, 7, epoch, rank, world, skip_batches=skip))
                 for rank in range(world)]
        return [tuple(np.concatenate(parts) for parts in zip(*step)) for step in zip(*ranks)]

    one = steps(1)
    assert len(one) == 10 and one[0][0].shape == (6, 32, 32, 3)
    order = split.epoch_order(tiny_config(tiny_pack, tmp_path, **{"data.shuffle_window": 3}).data, 7, epoch)
    assert np.array_equal(np.concatenate([labels for _, labels in one]), split.labels[order[:60]])
    for world, skip in ((2, 0), (3, 0), (3, 4), (2, 7)):
        got = steps(world, skip)
        assert len(got) == len(one) - skip
        for (image, label), (want_image, want_label) in zip(got, one[skip:]):
            np.testing.assert_array_equal(label, want_label)
            np.testing.assert_array_equal(image, want_image)
