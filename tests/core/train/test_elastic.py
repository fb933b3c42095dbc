"""The global batch a run keeps across process counts (core.train.elastic): the per-device batch
of data.global_batch_size, and what a checkpoint says it was trained at."""
import pytest

from core.config import ConfigError, load_config
from core.train.elastic import check_resume, inherited_global_batch, per_device_batch, saved_global_batch


def data(**keys):
    return load_config(None, {f"data.{k}": v for k, v in keys.items()}).data


def test_the_global_batch_sets_the_per_device_batch_of_any_process_count():
    assert per_device_batch(data(batch_size=4), 3) == 4  # null: data.batch_size per device
    for world in (1, 2, 3, 6, 9, 18):
        assert per_device_batch(data(batch_size=4, global_batch_size=18), world) == 18 // world
    with pytest.raises(ConfigError) as refused:
        per_device_batch(data(global_batch_size=18), 4)
    assert str(refused.value) == (
        "data.global_batch_size 18 does not divide among 4 processes; run on a number of "
        "processes that divides it (1, 2, 3, 6, 9, 18), or set data.global_batch_size to a "
        "multiple of 4 for a new run")


def test_a_checkpoint_before_global_batches_were_recorded_still_says_its_own():
    assert saved_global_batch({"global_batch": 18, "world": 2}) == 18
    assert saved_global_batch({"world": 2, "config": {"data": {"batch_size": 9}}}) == 18
    assert saved_global_batch({"config": {"data": {"batch_size": 9}}}) is None


def test_a_resume_on_another_process_count_keeps_the_global_batch(caplog):
    meta = {"global_batch": 18, "world": 2, "steps_per_epoch": 3, "step": 10}
    with caplog.at_level("INFO", logger="core.train.elastic"):
        check_resume(meta, "c.ckpt", 6, 3, 3)
    assert "resuming global step 10 (global batch 18) of a 2-process run on 3 process(es)" in caplog.text
    with pytest.raises(ConfigError, match=r"^checkpoint c\.ckpt was trained at global batch 18 \(9 per "
                                          r"device x 2\), this run's is 24 \(6 x 4\): steps per epoch "
                                          r"would go from 3 to 2, .*data\.global_batch_size=18 on a "
                                          r"number of processes that divides it \(1, 2, 3, 6, 9, 18\)"):
        check_resume(meta, "c.ckpt", 6, 4, 2)


def test_the_same_recipe_on_another_process_count_inherits_the_global_batch():
    """Issue 25: a run stopped on N processes resumes on M with per-device batch G / M, without
    the user restating G; a changed data.batch_size is a request for another global batch."""
    meta = {"global_batch": 16, "world": 2, "config": {"data": {"batch_size": 8}}}
    assert inherited_global_batch(data(batch_size=8), meta, 1) == 16
    assert per_device_batch(data(batch_size=8, global_batch_size=16), 1) == 16
    assert inherited_global_batch(data(batch_size=8), meta, 2) is None  # same count: nothing to do
    assert inherited_global_batch(data(batch_size=4), meta, 1) is None  # asked for another: refused
    assert inherited_global_batch(data(batch_size=8, global_batch_size=32), meta, 1) is None
    with pytest.raises(ConfigError, match="does not divide among 3 processes"):
        per_device_batch(data(batch_size=8, global_batch_size=inherited_global_batch(
            data(batch_size=8), meta, 3)), 3)
