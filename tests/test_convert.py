"""Weight import: torchvision and MindCV MobileNetV3-Small -> this project's model.

Each source network is built here with random weights and random BatchNorm statistics, saved
the way its users save it, converted with `launcher/local.py convert`'s code, and loaded into
core.model; eval-mode logits must agree within 1e-4. The torchvision network is written out
from torch.nn exactly as torchvision/models/mobilenetv3.py builds mobilenet_v3_small (module
tree, paddings, BN eps 1e-3, hard-sigmoid SE), since torchvision's wheel cannot be installed
beside the CPU torch wheel.
"""
from __future__ import annotations

import argparse
import sys

import mindspore as ms
import numpy as np
import pytest

from core import checkpoint as ckpt
from core import weights_map as wm
from core.dropout import is_mask
from core.model import MobileNetV3Small, build_model, make_divisible
from tests.test_model import TV_BLOCKS, torchvision_layout

TOLERANCE = 1e-4
HEAD = MobileNetV3Small.CLASSIFIER_PREFIXES


def our_logits(path, num_classes, x: np.ndarray) -> np.ndarray:
    net = build_model("mobilenet_v3_small", num_classes)
    ckpt.restore([net], ckpt.load(path))
    net.set_train(False)
    return net(ms.Tensor(x)).asnumpy()


def run_cli(argv) -> int:
    """The plug-in as launcher/local.py registers it (PLUGIN_COMMANDS)."""
    from launcher import cmd_convert
    top = argparse.ArgumentParser()
    cmd_convert.add_parser(top.add_subparsers(dest="command", required=True))
    args = top.parse_args(argv)
    return args.func(args)


# --------------------------------------------------------------------------- pure mapping


def test_torchvision_names_map_onto_the_model_without_torch():
    rng = np.random.default_rng(0)
    state = {tv: rng.standard_normal(shape).astype(np.float32)
             for tv, _, shape, _ in torchvision_layout(1000)}
    state.update({f"{tv.rsplit('.', 1)[0]}.num_batches_tracked": np.array(5)
                  for tv, _, _, _ in torchvision_layout(1000) if tv.endswith("running_mean")})
    mapped = wm.from_torchvision(wm.strip_wrapper_prefix({"module." + k: v for k, v in state.items()}))
    expected = {ms_name: shape for _, ms_name, shape, _ in torchvision_layout(1000)}
    assert wm.layout_problems(mapped, expected) == []
    np.testing.assert_array_equal(mapped["features.3.block.1.1.moving_variance"],
                                  state["features.3.block.1.1.running_var"])
    assert wm.classifier_classes(mapped, HEAD) == 1000


def test_bn_eps_fold_keeps_eval_output():
    rng = np.random.default_rng(1)
    gamma, var = rng.uniform(0.5, 2, 64), np.concatenate([rng.uniform(0, 1e-4, 32), rng.uniform(0.1, 4, 32)])
    folded = wm.fold_bn_eps(gamma, var, 1e-5, 1e-3)
    np.testing.assert_allclose(folded / np.sqrt(var + 1e-3), gamma / np.sqrt(var + 1e-5), rtol=1e-6)


def test_layout_problems_name_the_difference():
    problems = wm.layout_problems({"a": np.zeros(2), "c": np.zeros(1)}, {"a": (3,), "b": (1,)})
    assert problems == ["'b' missing", "'c' is not in the model", "'a' has shape (2,), the model needs (3,)"]


def test_mindcv_regrouping_rejects_a_conv_without_batchnorm():
    params = {"features.0.weight": np.zeros((16, 3, 3, 3)), "features.2.weight": np.zeros((8, 16, 1, 1))}
    with pytest.raises(wm.WeightsMapError, match="conv without a BatchNorm"):
        wm.from_mindcv(params, eps_to=1e-3)


# --------------------------------------------------------------------------- torchvision


def torchvision_mobilenet_v3_small(num_classes=1000):
    """torchvision.models.mobilenet_v3_small's network, module for module (torch.nn only)."""
    from torch import nn

    def conv_bn_act(cin, cout, k, stride=1, groups=1, act=None):
        layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                  nn.BatchNorm2d(cout, eps=0.001, momentum=0.01)]
        if act is not None:
            layers.append(act(inplace=True))
        return nn.Sequential(*layers)

    class SqueezeExcitation(nn.Module):  # torchvision.ops.SqueezeExcitation
        def __init__(self, channels, squeeze):
            super().__init__()
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc1 = nn.Conv2d(channels, squeeze, 1)
            self.fc2 = nn.Conv2d(squeeze, channels, 1)
            self.activation = nn.ReLU()
            self.scale_activation = nn.Hardsigmoid()

        def forward(self, x):
            s = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
            return s * x

    class InvertedResidual(nn.Module):
        def __init__(self, cin, k, exp, out, se, act, stride):
            super().__init__()
            self.use_res_connect = stride == 1 and cin == out
            layers = []
            if exp != cin:
                layers.append(conv_bn_act(cin, exp, 1, act=act))
            layers.append(conv_bn_act(exp, exp, k, stride, groups=exp, act=act))
            if se:
                layers.append(SqueezeExcitation(exp, make_divisible(exp // 4, 8)))
            layers.append(conv_bn_act(exp, out, 1))
            self.block = nn.Sequential(*layers)

        def forward(self, x):
            result = self.block(x)
            return result + x if self.use_res_connect else result

    class MobileNetV3(nn.Module):
        def __init__(self):
            super().__init__()
            layers = [conv_bn_act(3, 16, 3, 2, act=nn.Hardswish)]
            cin = 16
            strides = [2, 2, 1, 2, 1, 1, 1, 1, 2, 1, 1]
            for i, ((k, exp, out, se), s) in enumerate(zip(TV_BLOCKS, strides)):
                act = nn.ReLU if i < 3 else nn.Hardswish
                layers.append(InvertedResidual(cin, k, exp, out, se, act, s))
                cin = out
            layers.append(conv_bn_act(cin, 6 * cin, 1, act=nn.Hardswish))
            self.features = nn.Sequential(*layers)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Sequential(nn.Linear(6 * cin, 1024), nn.Hardswish(inplace=True),
                                            nn.Dropout(p=0.2, inplace=True), nn.Linear(1024, num_classes))

        def forward(self, x):
            return self.classifier(self.avgpool(self.features(x)).flatten(1))

    return MobileNetV3()


def randomize_torch(model, seed):
    """Random weights everywhere, including BN affine and running statistics, so that a
    swapped or misnamed tensor changes the logits."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith(("running_mean", "bias")):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif name.endswith("weight") and t.ndim == 1:  # BN gamma
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:  # conv / linear: He-scaled so activations neither vanish nor explode
                fan_in = t[0].numel()
                t.copy_(torch.randn(t.shape, generator=g) * (2.0 / fan_in) ** 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def torchvision_weights(tmp_path_factory):
    torch = pytest.importorskip("torch", reason="torch not installed (test extras: requirements-extras.txt)")
    torch.manual_seed(0)
    model = randomize_torch(torchvision_mobilenet_v3_small(1000), seed=0)
    assert sum(p.numel() for p in model.parameters()) == 2_542_856  # torchvision's count
    path = tmp_path_factory.mktemp("tv") / "mobilenet_v3_small.pth"
    torch.save(model.state_dict(), path)
    return model, path


def test_torchvision_logits_agree_after_conversion(torchvision_weights, tmp_path):
    import torch
    model, pth = torchvision_weights
    assert run_cli(["convert", "--from", "torchvision", "--src", str(pth),
                    "--dst", str(tmp_path / "tv.ckpt")]) == 0
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    got = our_logits(tmp_path / "tv.ckpt", 1000, x)
    assert expected.std() > 0.1  # logits large enough for the tolerance to mean something
    assert np.abs(got - expected).max() <= TOLERANCE
    meta = ckpt.load(tmp_path / "tv.ckpt").meta
    assert meta["config"]["model"]["num_classes"] == 1000 and meta["source"]["format"] == "torchvision"


def test_torchvision_training_checkpoint_wrapper_is_accepted(torchvision_weights, tmp_path):
    """torchvision's reference train.py saves {"model": state_dict, "optimizer": ...}, and a
    DDP model's keys start with 'module.'."""
    import torch
    model, _ = torchvision_weights
    wrapped = {"model": {"module." + k: v for k, v in model.state_dict().items()}, "epoch": 3}
    torch.save(wrapped, tmp_path / "checkpoint.pth")
    from launcher.convert import convert
    result = convert("torchvision", tmp_path / "checkpoint.pth", tmp_path / "w.ckpt")
    assert result["classifier_kept"] and result["num_classes"] == 1000


def test_fine_tuning_starts_from_converted_weights_with_a_new_classifier(torchvision_weights, tmp_path):
    _, pth = torchvision_weights
    assert run_cli(["convert", "--from", "torchvision", "--src", str(pth),
                    "--dst", str(tmp_path / "tv.ckpt")]) == 0
    source = ckpt.load(tmp_path / "tv.ckpt").params
    net = build_model("mobilenet_v3_small", 10)
    fresh = ckpt.load_pretrained(net, tmp_path / "tv.ckpt", HEAD)
    assert fresh == ["classifier.3.weight", "classifier.3.bias"]
    for p in net.get_parameters():
        if not is_mask(p.name) and not p.name.startswith(HEAD):
            np.testing.assert_array_equal(p.asnumpy(), source[p.name].asnumpy(), err_msg=p.name)
    assert tuple(net.parameters_dict()["classifier.3.weight"].shape) == (10, 1024)


def test_convert_for_another_class_count_leaves_the_classifier_out(torchvision_weights, tmp_path):
    _, pth = torchvision_weights
    assert run_cli(["convert", "--from", "torchvision", "--src", str(pth),
                    "--dst", str(tmp_path / "ft.ckpt"), "--num_classes", "10"]) == 0
    written = ckpt.load(tmp_path / "ft.ckpt")
    assert not [n for n in written.params if n.startswith(HEAD)]
    assert written.meta["config"]["model"]["num_classes"] == 10
    fresh = ckpt.load_pretrained(build_model("mobilenet_v3_small", 10), tmp_path / "ft.ckpt", HEAD)
    assert fresh == ["classifier.3.weight", "classifier.3.bias"]


def test_without_torch_the_torchvision_import_says_what_to_install(tmp_path, monkeypatch):
    from core.config import ConfigError
    from launcher.convert import convert
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now fails
    (tmp_path / "w.pth").write_bytes(b"")
    with pytest.raises(ConfigError, match="needs torch: pip install torch"):
        convert("torchvision", tmp_path / "w.pth", tmp_path / "w.ckpt")


def test_wrong_architecture_is_refused_in_one_line(tmp_path):
    torch = pytest.importorskip("torch", reason="torch not installed (test extras: requirements-extras.txt)")
    torch.save({"features.0.0.weight": torch.zeros(8, 3, 3, 3)}, tmp_path / "other.pth")
    from launcher.convert import convert
    with pytest.raises(ckpt.CheckpointError) as err:
        convert("torchvision", tmp_path / "other.pth", tmp_path / "x.ckpt")
    assert "\n" not in str(err.value) and "mobilenet_v3_small" in str(err.value)
    torch.save({"features.0.0.weight": torch.zeros(8, 3, 3, 3),
                "classifier.3.weight": torch.zeros(5, 1024)}, tmp_path / "other.pth")
    with pytest.raises(ckpt.CheckpointError, match="does not fit mobilenet_v3_small"):
        convert("torchvision", tmp_path / "other.pth", tmp_path / "x.ckpt")


# --------------------------------------------------------------------------- MindCV


def mindcv_model():
    try:
        from mindcv.models import create_model
    except ImportError:
        pytest.skip("mindcv not installed (pip install mindcv; see requirements-extras.txt)")
    return create_model("mobilenet_v3_small_100", num_classes=1000, pretrained=False)


def randomize_mindspore(net, seed):
    rng = np.random.default_rng(seed)
    for name, p in net.parameters_and_names():
        shape = tuple(p.shape)
        if name.endswith("moving_variance"):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith(("moving_mean", "beta", "bias")):
            value = rng.standard_normal(shape) * 0.1
        elif name.endswith("gamma"):
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
        p.set_data(ms.Tensor(value.astype(np.float32)))
    net.set_train(False)
    return net


def test_mindcv_logits_agree_after_conversion(tmp_path):
    """MindCV pads its depthwise convs with pad_mode="same": at stride 2 on an even-sized map
    that pads one pixel less on top/left than torchvision (and core.model). With odd-sized
    maps at every stride-2 layer (input 65 px) both paddings are the same, so this compares
    the weight mapping alone; see the report for what that means at 224 px."""
    source = randomize_mindspore(mindcv_model(), seed=1)
    ms.save_checkpoint(source, str(tmp_path / "mindcv.ckpt"))
    assert run_cli(["convert", "--from", "mindcv", "--src", str(tmp_path / "mindcv.ckpt"),
                    "--dst", str(tmp_path / "ours.ckpt")]) == 0
    x = np.random.default_rng(2).standard_normal((2, 3, 65, 65)).astype(np.float32)
    expected = source(ms.Tensor(x)).asnumpy()
    got = our_logits(tmp_path / "ours.ckpt", 1000, x)
    assert expected.std() > 0.1
    assert np.abs(got - expected).max() <= TOLERANCE
