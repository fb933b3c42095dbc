"""model.depthwise_padding: MindCV's pad_mode="same" exactly where MindCV uses it, the
symmetric (torchvision) network unchanged by default, and the value a run inherits.

The logits against MindCV itself (224 px, eval, export, predict, fine-tuning) are in
tests/core/nn/test_convert.py.
"""
from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from core.nn import cpu_ops
from core.config import ConfigError, load_config
from core.infer.inference import depthwise_padding_for_run, saved_depthwise_padding
from core.nn.model import build_model

STRIDE2_DEPTHWISE = ["features.1.block.0.0", "features.2.block.1.0", "features.4.block.1.0",
                     "features.9.block.1.0"]


def kxk_convs(net) -> dict:
    """name -> conv cell, for every conv with a kernel above 1x1."""
    return {name: cell for name, cell in net.cells_and_names()
            if isinstance(cell, nn.Conv2d) and cell.kernel_size[0] > 1}


def test_same_padding_is_on_the_stride_2_depthwise_convs_only():
    convs = kxk_convs(build_model("mobilenet_v3_small", 10, depthwise_padding="same"))
    assert sorted(n for n, c in convs.items() if c.pad_mode == "same") == STRIDE2_DEPTHWISE
    for name in STRIDE2_DEPTHWISE:  # the custom CPU operator pads symmetrically: never here
        assert type(convs[name]) is nn.Conv2d and convs[name].stride == (2, 2)
    stem = convs["features.0.0"]  # MindCV's stem pads 1 on every side, as torchvision's
    assert stem.pad_mode == "pad" and stem.padding == 1


def test_symmetric_is_the_default_and_unchanged():
    default = kxk_convs(build_model("mobilenet_v3_small", 10))
    explicit = kxk_convs(build_model("mobilenet_v3_small", 10, depthwise_padding="symmetric"))
    assert default.keys() == explicit.keys() and len(default) == 12
    for name, conv in default.items():
        k = conv.kernel_size[0]
        assert conv.pad_mode == "pad" and conv.padding == (k - 1) // 2, name
        assert type(conv) is type(explicit[name])
    assert load_config().model.depthwise_padding is None  # a from-scratch run: symmetric


def test_same_padding_keeps_the_fast_operator_where_it_is_symmetric_anyway():
    """pad_mode="same" at stride 1 with an odd kernel pads (k-1)//2 on every side."""
    assert cpu_ops.is_symmetric(5, 1, "same") and not cpu_ops.is_symmetric(3, 2, "same")
    assert cpu_ops.is_symmetric(3, 2, "symmetric")
    strided = cpu_ops.conv2d(16, 16, 3, 2, 16, "normal", "auto", "same")
    assert type(strided) is nn.Conv2d and strided.pad_mode == "same"
    plain = cpu_ops.conv2d(16, 16, 5, 1, 16, "normal", "auto", "same")
    assert plain.pad_mode == "pad" and plain.padding == 2
    if cpu_ops.use_custom("auto"):
        assert isinstance(plain, cpu_ops.FastConv2d)
    with pytest.raises(ValueError, match="padding must be one of symmetric, same"):
        cpu_ops.conv2d(16, 16, 3, 2, 16, "normal", "auto", "valid")


def test_same_padding_changes_outputs_only_at_even_sizes():
    ms.set_seed(3)
    same = build_model("mobilenet_v3_small", 10, depthwise_padding="same")
    symmetric = build_model("mobilenet_v3_small", 10)
    ms.load_param_into_net(symmetric, same.parameters_dict())
    same.set_train(False)
    symmetric.set_train(False)
    rng = np.random.default_rng(0)
    odd = ms.Tensor(rng.standard_normal((1, 3, 65, 65)).astype(np.float32))
    even = ms.Tensor(rng.standard_normal((1, 3, 64, 64)).astype(np.float32))
    def difference(x):  # relative: freshly initialised logits are tiny (~1e-9)
        a, b = same(x).asnumpy(), symmetric(x).asnumpy()
        return np.abs(a - b).max() / np.abs(b).max()

    assert difference(odd) < 1e-5
    assert difference(even) > 0.1


def test_config_accepts_the_two_paddings_and_refuses_same_for_the_modelzoo_variant():
    assert load_config(None, {"model.depthwise_padding": "same"}).model.depthwise_padding == "same"
    with pytest.raises(ConfigError, match="must be one of symmetric, same"):
        load_config(None, {"model.depthwise_padding": "valid"})
    with pytest.raises(ConfigError, match="model-zoo variant pads symmetrically"):
        load_config(None, {"model.arch": "modelzoo", "model.depthwise_padding": "same"})


def meta(padding=None, with_config=True) -> dict:
    """Checkpoint metadata: a runner/converted config (padding None = written before the
    option existed) or a foreign checkpoint without one."""
    if not with_config:
        return {}
    model = {"arch": "mobilenet_v3_small"}
    if padding is not None:
        model["depthwise_padding"] = padding
    return {"config": {"model": model}}


def test_saved_padding_of_old_and_foreign_checkpoints():
    assert saved_depthwise_padding(meta("same")) == "same"
    assert saved_depthwise_padding(meta()) == "symmetric"  # before the option: symmetric only
    assert saved_depthwise_padding(meta(with_config=False)) is None


def test_a_run_takes_the_configured_then_resumed_then_pretrained_padding():
    unset, same, symmetric = (load_config(None, {"model.depthwise_padding": v})
                              for v in (None, "same", "symmetric"))
    assert depthwise_padding_for_run(unset) == "symmetric"
    assert depthwise_padding_for_run(unset, pretrained=meta("same")) == "same"
    assert depthwise_padding_for_run(unset, pretrained=meta(with_config=False)) == "symmetric"
    assert depthwise_padding_for_run(symmetric, pretrained=meta("same")) == "symmetric"
    assert depthwise_padding_for_run(unset, resumed=meta("same"), pretrained=meta()) == "same"
    zoo = load_config(None, {"model.arch": "modelzoo"})  # MindCV weights do not fit it anyway
    assert depthwise_padding_for_run(zoo, pretrained=meta("same")) == "symmetric"
    assert depthwise_padding_for_run(same, resumed=meta("same")) == "same"
    with pytest.raises(ConfigError, match="resumed checkpoint was trained with symmetric"):
        depthwise_padding_for_run(same, resumed=meta())
