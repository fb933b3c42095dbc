"""Non-finite numbers: refused in every float config key; a loss that turns non-finite stops the
run naming the step and the last good checkpoint; with a loss scale, overflow steps are skipped
and counted (MindSpore's overflow handling)."""
from __future__ import annotations

import json
import re

import pytest

from core.config import ConfigError, known_keys, load_config, parse_override, reference_table


FLOAT_KEYS = [key for key, type_name, _, _ in reference_table() if type_name.startswith("float")]


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", ".nan", ".inf", "NaN", "-.inf"])
def test_non_finite_overrides_are_refused_naming_the_key(text):
    key, value = parse_override(f"optim.lr={text}")
    with pytest.raises(ConfigError, match=r"'optim.lr' must be a finite number"):
        load_config(None, {key: value})


def test_every_float_key_refuses_nan_and_inf():
    assert len(FLOAT_KEYS) >= 15
    for key in FLOAT_KEYS:
        for text in (".nan", "inf"):
            with pytest.raises(ConfigError, match=f"'{key}' must be a finite number"):
                load_config(None, dict([parse_override(f"{key}={text}")]))


def test_non_finite_list_entries_and_yaml_recipes_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="'data.mean' must be a finite number"):
        load_config(None, {"data.mean": [0.5, float("nan"), 0.5]})
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  ema_decay: .nan\n")
    with pytest.raises(ConfigError, match="'train.ema_decay' must be a finite number"):
        load_config(str(recipe))
    assert "optim.lr" in known_keys()


def test_a_non_finite_loss_stops_the_run_naming_the_step_and_the_last_good_checkpoint(
        tiny_dataset, tmp_path):
    from core.train.loop import TrainingDiverged, train
    from launcher.common import USER_ERRORS
    from tests.core_fixtures import tiny_config
    out = tmp_path / "run"
    # SGD at a huge LR (deterministic with one thread): losses 2.3, 2e4, 4e16, then inf or nan
    # at step 4 (which of the two depends on the kernels' summation order); checkpoints every
    # 2 steps; progress lines only every 100 steps (losses are read anyway before each
    # checkpoint)
    cfg = tiny_config(tiny_dataset, out, **{"optim.name": "sgd", "optim.lr": 1e3,
                                            "optim.warmup_epochs": 0.0,
                                            "checkpoint.interval_steps": 2, "train.log_interval": 100,
                                            "system.cpu_threads": 1})
    with pytest.raises(TrainingDiverged) as caught:
        train(cfg, out)
    message = str(caught.value)
    assert isinstance(caught.value, USER_ERRORS)  # one `error:` line, exit 2
    assert re.match(r"loss is (inf|nan) at step 4 \(epoch 1\); the last good checkpoint is ", message), message
    assert message.count("\n") == 0 and "lower optim.lr" in message
    assert message.split("checkpoint is ")[1].startswith(str(out / "checkpoints" / "mobilenetv3-e0000-s00000002.ckpt"))
    saved = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert saved == ["latest.json", "mobilenetv3-e0000-s00000002.ckpt"]  # no NaN state, no final, no best
    for line in (out / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in metrics.jsonl"))


def test_a_checkpoint_of_non_finite_weights_is_refused():
    import mindspore as ms
    import numpy as np

    from core.train.divergence import TrainingDiverged, finite_state
    good = ms.Parameter(ms.Tensor(np.ones(3, np.float32)), name="w")
    bad = ms.Parameter(ms.Tensor(np.array([1.0, np.inf], np.float32)), name="moments.w")
    assert finite_state(lambda: [good], lambda: (5, 0, None))() == [good]
    with pytest.raises(TrainingDiverged, match=r"parameter moments.w is not finite at step 5 "
                                               r"\(epoch 1\); no checkpoint was written before it"):
        finite_state(lambda: [good, bad], lambda: (5, 0, None))()


def test_with_a_loss_scale_overflow_steps_are_skipped_counted_and_not_fatal():
    """MindSpore's loss-scaled step is built with its overflow handling; its outputs (loss,
    overflow, scale) are counted, not fatal. Its overflow check runs only on Ascend/GPU (no
    accelerator here), so the step's outputs are stand-in tensors."""
    import types

    import mindspore as ms
    import numpy as np
    from mindspore import nn

    from core.train.run import train_step_cell
    from core.train.loop import TrainingDiverged, _read_checked
    net = nn.Dense(4, 3)
    with_loss = nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
    scaled = train_step_cell(with_loss, nn.SGD(net.trainable_params(), learning_rate=0.1), 1024.0)
    assert isinstance(scaled, nn.TrainOneStepWithLossScaleCell)
    assert isinstance(scaled.loss_scaling_manager, nn.FixedLossScaleUpdateCell)
    assert float(scaled.scale_sense.asnumpy()) == 1024.0
    assert type(train_step_cell(with_loss, nn.SGD(net.trainable_params()), 1.0)) is nn.TrainOneStepCell

    def out(loss, overflow):
        return ms.Tensor(np.float32(loss)), ms.Tensor(overflow), ms.Tensor(np.float32(1024))
    run = types.SimpleNamespace(overflow_steps=0, interval_overflows=0, per_epoch=10)
    saver = types.SimpleNamespace(latest=lambda: None)
    losses = _read_checked(run, 0, 3, [out(2.0, False), out(np.inf, True), out(np.nan, True)], saver)
    assert losses[0] == 2.0 and len(losses) == 3
    assert run.overflow_steps == 2 and run.interval_overflows == 2
    with pytest.raises(TrainingDiverged, match="loss is nan at step 12 \\(epoch 2\\)"):
        _read_checked(run, 1, 12, [out(1.0, True), out(np.nan, False)], saver)  # not skipped
