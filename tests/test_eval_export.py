"""Evaluation counts and export fidelity on a briefly trained network."""
import json

import mindspore as ms
import numpy as np
import onnxruntime as ort
import pytest

from core import checkpoint as ckpt
from core.imagefolder import scan_split
from core.evaluate import evaluate
from core.export import ExportError, export_model
from core.inference import network_from_checkpoint
from core.train import train
from tests.core_fixtures import tiny_config


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    cfg = tiny_config(tiny_dataset, out, **{"train.epochs": 1, "train.eval_at_end": False,
                                            "model.bn_momentum": 0.5})
    summary = train(cfg, out)
    state = ckpt.load(summary["final_checkpoint"])
    net, classes = network_from_checkpoint(state, cfg, summary["final_checkpoint"])
    return cfg, net, classes, out


def test_eval_scores_every_image_once_with_a_partial_batch(trained, tiny_dataset):
    cfg, net, classes, _ = trained
    val = scan_split(tiny_dataset / "val", classes)
    assert len(val) % cfg.data.eval_batch_size != 0  # 30 images, batches of 7
    result = evaluate(net, val, cfg.data, cfg.train.label_smoothing)
    assert result["images"] == 30
    # reference: every image on its own, same transform, counted by hand
    correct1 = 0
    for image, label in val.eval_pipeline(cfg.data).create_tuple_iterator(num_epochs=1, output_numpy=True):
        for i in range(image.shape[0]):
            padded = np.zeros((cfg.data.eval_batch_size,) + image.shape[1:], np.float32)
            padded[0] = image[i]
            logits = net(ms.Tensor(padded)).asnumpy()[0]
            correct1 += int(np.argmax(logits) == label[i])
    assert result["Top_1_Acc"] == pytest.approx(correct1 / 30)
    assert np.isfinite(result["Loss"])


@pytest.mark.parametrize("fmt", ["MINDIR", "ONNX"])
def test_export_writes_graph_classes_and_card(trained, fmt, tmp_path):
    cfg, net, classes, _ = trained
    cfg.export.format = fmt
    path = export_model(net, cfg, tmp_path, classes, "CPU", eval_result={"Top_1_Acc": 0.5})
    assert path.exists() and path.suffix == {"MINDIR": ".mindir", "ONNX": ".onnx"}[fmt]
    assert json.loads((tmp_path / "classes.json").read_text()) == list(classes)
    card = json.loads((tmp_path / f"{cfg.export.file_name}.card.json").read_text())
    assert card["input"]["shape"] == [1, 3, 32, 32] and card["class_names"] == list(classes)
    assert card["preprocess"]["resize_shorter_side"] == 36 and card["eval"] == {"Top_1_Acc": 0.5}
    assert card["depthwise_padding"] == "symmetric"
    # exporting again replaces the read-only file MindSpore wrote (MINDIR only: MindSpore 2.10
    # cannot export the same network object to ONNX twice in one process)
    if fmt == "MINDIR":
        assert export_model(net, cfg, tmp_path, classes, "CPU") == path


def test_onnx_logits_match_mindspore(trained, tiny_dataset, tmp_path):
    cfg, net, classes, _ = trained
    cfg.export.format, cfg.export.batch_size = "ONNX", 4
    path = export_model(net, cfg, tmp_path, classes, "CPU")
    val = scan_split(tiny_dataset / "val", classes)
    image = next(val.eval_pipeline(cfg.data).create_tuple_iterator(num_epochs=1, output_numpy=True))[0][:4]
    expected = net(ms.Tensor(image)).asnumpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: image})[0]
    assert expected.std() > 1e-3, "a trained net gives informative logits"
    assert np.max(np.abs(got - expected)) <= 1e-4


def test_air_needs_ascend(trained, tmp_path):
    cfg, net, classes, _ = trained
    cfg.export.format = "AIR"
    with pytest.raises(ExportError, match="AIR export needs an Ascend device"):
        export_model(net, cfg, tmp_path, classes, "CPU")
