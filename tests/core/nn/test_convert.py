"""Weight import: torchvision and MindCV MobileNetV3-Small -> this project's model.

Each source network is built here with random weights and random BatchNorm statistics, saved
the way its users save it, converted with `launcher/local.py convert`'s code, and loaded into
core.nn.model; eval-mode logits must agree within 1e-4 (MindCV at 224 px, whose random logits
reach +-300: within 1e-5 of the largest logit). The torchvision network is written out
from torch.nn exactly as torchvision/models/mobilenetv3.py builds mobilenet_v3_small (module
tree, paddings, BN eps 1e-3, hard-sigmoid SE), since torchvision's wheel cannot be installed
beside the CPU torch wheel.
"""
from __future__ import annotations

import argparse
import sys

import mindspore as ms
import numpy as np
import onnxruntime as ort
import pytest

from core import checkpoint as ckpt
from core.nn import weights_map as wm
from core.nn.dropout import is_mask
from core.nn.model import MobileNetV3Small, build_model, make_divisible
from tests.core.nn.test_model import TV_BLOCKS, torchvision_layout

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
    import torch
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
    assert meta["config"]["model"]["depthwise_padding"] == "symmetric"  # torchvision pads so


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
    import torch
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


def mindcv_model(num_classes=1000):
    from mindcv.models import create_model
    return create_model("mobilenet_v3_small_100", num_classes=num_classes, pretrained=False)


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


@pytest.fixture(scope="module")
def mindcv_converted(tmp_path_factory):
    """(MindCV network with random weights, its converted checkpoint), via the CLI."""
    folder = tmp_path_factory.mktemp("mindcv")
    source = randomize_mindspore(mindcv_model(), seed=1)
    ms.save_checkpoint(source, str(folder / "mindcv.ckpt"))
    assert run_cli(["convert", "--from", "mindcv", "--src", str(folder / "mindcv.ckpt"),
                    "--dst", str(folder / "ours.ckpt")]) == 0
    return source, folder / "ours.ckpt"


def relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    """Largest logit difference over the largest logit: these random networks reach logits of
    +-270 at 224 px, where float32 rounding alone exceeds an absolute 1e-4."""
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def test_mindcv_logits_agree_after_conversion(mindcv_converted):
    """At 65 px every stride-2 layer sees an odd-sized map, where MindCV's pad_mode="same" and
    symmetric padding coincide: this compares the weight mapping alone."""
    source, converted = mindcv_converted
    x = np.random.default_rng(2).standard_normal((2, 3, 65, 65)).astype(np.float32)
    expected = source(ms.Tensor(x)).asnumpy()
    got = our_logits(converted, 1000, x)
    assert expected.std() > 0.1
    assert np.abs(got - expected).max() <= TOLERANCE


def converted_network(path, **overrides):
    """The network eval/export/predict build for a converted checkpoint (core.infer.inference)."""
    from core.config import load_config
    from core.infer.inference import network_from_checkpoint
    checkpoint = ckpt.load(path)
    cfg = load_config(None, overrides, base=checkpoint.meta["config"])
    return network_from_checkpoint(checkpoint, cfg, path)[0]


def test_mindcv_logits_agree_at_224_px_with_its_padding(mindcv_converted):
    """At 224 px MindCV's stride-2 depthwise convs pad 0 before, 1 after (k=3; 1 and 2 for
    k=5): the converter records model.depthwise_padding=same and the rebuilt network matches.
    Measured here: max |difference| 2.8e-4 on logits up to 308 (8.9e-7 relative); over two
    weight seeds x two inputs, custom and native convs: 0.9e-6 to 4.2e-6 relative (float32
    rounding: BN eps folded into gamma, hard-swish from primitives). Symmetric padding: 88."""
    source, converted = mindcv_converted
    assert ckpt.load(converted).meta["config"]["model"]["depthwise_padding"] == "same"
    x = np.random.default_rng(3).standard_normal((2, 3, 224, 224)).astype(np.float32)
    expected = source(ms.Tensor(x)).asnumpy()
    got = converted_network(converted)(ms.Tensor(x)).asnumpy()
    assert relative_error(got, expected) <= 1e-5
    symmetric = converted_network(converted, **{"model.depthwise_padding": "symmetric"})
    assert relative_error(symmetric(ms.Tensor(x)).asnumpy(), expected) > 0.1  # it matters


@pytest.fixture(scope="module")
def mindcv_10_classes(tmp_path_factory):
    """A 10-class MindCV network (the tiny dataset's classes) and its converted checkpoint."""
    folder = tmp_path_factory.mktemp("mindcv10")
    source = randomize_mindspore(mindcv_model(10), seed=4)
    for p in source.get_parameters():  # smaller logits: probabilities neither 0 nor 1
        if p.name.startswith("classifier.3."):
            p.set_data(p * 0.5)
    ms.save_checkpoint(source, str(folder / "mindcv.ckpt"))
    assert run_cli(["convert", "--from", "mindcv", "--src", str(folder / "mindcv.ckpt"),
                    "--dst", str(folder / "ours.ckpt")]) == 0
    return source, folder / "ours.ckpt"


def test_converted_mindcv_checkpoint_evaluates_like_mindcv(mindcv_10_classes, tiny_dataset, tmp_path):
    """`eval` takes the padding from the checkpoint: its result is MindCV's own (128 px, even
    maps at every stride-2 conv as at 224, in half the time)."""
    import json

    from core.config import load_config
    from core.infer.evaluate import evaluate
    from core.data.sources import open_dataset
    from launcher.local import main
    source, converted = mindcv_10_classes
    size = {"data.image_size": 128, "data.eval_resize": 146}
    cfg = load_config(None, {"data.path": str(tiny_dataset), **size},
                      base=ckpt.load(converted).meta["config"])
    dataset = open_dataset(tiny_dataset)
    val = dataset.split("val", dataset.split("train").classes)
    expected = evaluate(source, val, cfg.data, cfg.train.label_smoothing)
    assert main(["eval", "--checkpoint", str(converted), "--dataset_path", str(tiny_dataset),
                 "--output_dir", str(tmp_path), *(f"{k}={v}" for k, v in size.items())]) == 0
    got = json.loads((tmp_path / "eval.json").read_text())
    assert got["images"] == expected["images"] == 30
    assert got["Top_1_Acc"] == expected["Top_1_Acc"] and got["Top_5_Acc"] == expected["Top_5_Acc"]
    assert got["Loss"] == pytest.approx(expected["Loss"], rel=1e-5)
    assert main(["eval", "--checkpoint", str(converted), "--dataset_path", str(tiny_dataset),
                 "--output_dir", str(tmp_path / "symmetric"), "model.depthwise_padding=symmetric",
                 *(f"{k}={v}" for k, v in size.items())]) == 0
    symmetric = json.loads((tmp_path / "symmetric" / "eval.json").read_text())
    assert symmetric["Loss"] != pytest.approx(expected["Loss"], rel=1e-3)  # the padding matters


def test_converted_mindcv_checkpoint_predicts_like_mindcv(mindcv_10_classes, tiny_dataset, capsys):
    """`predict` too: its probabilities are MindCV's on the same preprocessed images."""
    import json

    from core.config import load_config
    from core.infer.predict import read_image, softmax
    from launcher.local import main
    source, converted = mindcv_10_classes
    images = sorted((tiny_dataset / "val").rglob("*.jpg"))[:2]
    data_cfg = load_config(None, None, base=ckpt.load(converted).meta["config"]).data
    batch = np.stack([read_image(f, data_cfg) for f in images])
    expected = softmax(source(ms.Tensor(batch)).asnumpy())
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(converted), "--json", "--top", "1",
                 "--image", *map(str, images)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert len(printed) == 2
    for row, probs, image in zip(printed, expected, images):
        assert row["file"] == str(image)
        got = {t["class"]: t["probability"] for t in row["top"]}
        assert got == pytest.approx({f"class_{np.argmax(probs)}": probs.max()}, abs=2e-6)


def test_converted_mindcv_checkpoint_exports_to_onnx_like_mindcv(mindcv_10_classes, tmp_path):
    """`export` rebuilds the padding too, and ONNX maps pad_mode="same" (auto_pad SAME_UPPER):
    onnxruntime's logits are MindCV's at 64 px (even maps at every stride-2 conv)."""
    from launcher.local import main
    source, converted = mindcv_10_classes
    assert main(["export", "--checkpoint", str(converted), "--format", "ONNX", "--output_dir",
                 str(tmp_path), "data.image_size=64", "data.eval_resize=72",
                 "export.batch_size=2"]) == 0
    x = np.random.default_rng(5).standard_normal((2, 3, 64, 64)).astype(np.float32)
    expected = source(ms.Tensor(x)).asnumpy()
    session = ort.InferenceSession(str(tmp_path / "export" / "mobilenetv3_small.onnx"),
                                   providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert expected.std() > 0.05 and relative_error(got, expected) <= 1e-5


def test_fine_tuning_from_mindcv_weights_keeps_their_padding(mindcv_10_classes, tiny_dataset, tmp_path):
    """`train --pre_trained` builds the padding the weights came with and records it, so the
    run's config.yaml and checkpoints rebuild the same network; a resume keeps it."""
    import yaml

    from core.config import ConfigError
    from launcher.runner import run_training
    from tests.core_fixtures import tiny_config
    _, converted = mindcv_10_classes
    out = tmp_path / "run"
    cfg = tiny_config(tiny_dataset, out, **{"train.epochs": 1, "train.max_steps": 2,
                                            "train.eval_at_end": False})
    assert cfg.model.depthwise_padding is None  # not set: inherited from the weights
    summary = run_training(cfg, pretrained=str(converted))
    final = ckpt.load(summary["final_checkpoint"])
    assert final.meta["config"]["model"]["depthwise_padding"] == "same"
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["depthwise_padding"] == "same"
    # resuming that run, with the padding unset or contradicted
    more = {"train.epochs": 1, "train.max_steps": 3, "train.eval_at_end": False}
    with pytest.raises(ConfigError, match="resumed checkpoint was trained with same"):
        run_training(tiny_config(tiny_dataset, out, **more, **{"model.depthwise_padding": "symmetric"}),
                     resume=summary["final_checkpoint"])
    resumed = run_training(tiny_config(tiny_dataset, out, **more), resume=summary["final_checkpoint"])
    assert ckpt.load(resumed["final_checkpoint"]).meta["config"]["model"]["depthwise_padding"] == "same"
