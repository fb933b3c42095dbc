"""The train step's graph compiles while the input pipeline reads its first batches
(core.train.loop._compile_train_step), so a stream's first shards or an Ascend compile do not
add up before the first step. It must be the graph the first step would have compiled: here the
same first step, run on the same weights, with and without the early compile, gives the same
weights bit for bit (system.cpu_threads=1). The dropout masks are what can differ: compiled
before the step's masks are drawn, the graph took the mask parameter's initial shape (1 x
features) and broadcast one sample's mask over the batch."""
from __future__ import annotations

import mindspore as ms
import numpy as np

from core.train.loop import _compile_train_step
from core.train.run import build_run
from tests.core_fixtures import tiny_config


def _one_step(cfg, compile_ahead: bool) -> dict:
    run = build_run(cfg)
    batch, size = cfg.data.batch_size, cfg.data.image_size
    rng = np.random.default_rng(5)
    image = ms.Tensor(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
    label = ms.Tensor(rng.integers(0, 3, batch).astype(np.int32))
    if compile_ahead:
        _compile_train_step(run, 0)
        assert run.compiled
    for dropout in run.dropouts:  # as the loop does before every step
        dropout.draw(batch, cfg.train.seed, 0, run.rank * batch)
    run.train_step(image, label)
    return {p.name: p.asnumpy().copy() for p in run.net.trainable_params()}


def test_the_graph_compiled_ahead_trains_as_the_one_compiled_at_the_first_step(tiny_dataset, tmp_path):
    cfg = tiny_config(tiny_dataset, tmp_path, **{"system.cpu_threads": 1, "model.dropout": 0.5})
    at_first_step = _one_step(cfg, compile_ahead=False)
    ahead = _one_step(cfg, compile_ahead=True)
    assert ahead.keys() == at_first_step.keys()
    different = [k for k in ahead if not np.array_equal(ahead[k], at_first_step[k])]
    assert not different, different
