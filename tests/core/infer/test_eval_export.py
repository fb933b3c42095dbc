"""Evaluation counts, the known result and export fidelity on the shared trained network."""
import copy
import json

import mindspore as ms
import numpy as np
import onnxruntime as ort
import pytest

from core import checkpoint as ckpt
from core.data.imagefolder import scan_split
from core.infer.evaluate import evaluate
from core.infer.export import ExportError, export_model
from core.infer.inference import network_from_checkpoint
from tests.core_fixtures import COLOURS, LEARNED_TOP1


@pytest.fixture(scope="module")
def trained(learned_run):
    """The shared trained network (tests.core_fixtures.learned_run), restored from its final
    checkpoint: (config, network, classes, run directory, the run's own final eval, dataset)."""
    cfg, out, summary, final_eval, root = learned_run
    cfg = copy.deepcopy(cfg)  # the export tests change cfg.export
    state = ckpt.load(summary["final_checkpoint"])
    net, classes = network_from_checkpoint(state, cfg, summary["final_checkpoint"])
    return cfg, net, classes, out, final_eval, root


def test_eval_of_the_checkpoint_reproduces_the_known_result(trained):
    """evaluate() on the restored checkpoint gives the run's own final score, and that score is
    the known one for this set (>= 0.9 where chance is 1/3): a trainer that learns nothing, or
    an eval that restores or labels wrongly, fails here."""
    cfg, net, classes, _, final_eval, root = trained
    assert list(classes) == list(COLOURS)
    result = evaluate(net, scan_split(root / "val", classes), cfg.data, cfg.train.label_smoothing)
    assert result["Top_1_Acc"] >= LEARNED_TOP1
    assert result["Top_1_Acc"] == final_eval["Top_1_Acc"] and result["Top_5_Acc"] == 1.0
    assert result["Loss"] == pytest.approx(final_eval["Loss"], rel=1e-5)


def test_eval_scores_every_image_once_with_a_partial_batch(trained):
    cfg, net, classes, _, _, root = trained
    val = scan_split(root / "val", classes)
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
    cfg, net, classes, *_ = trained
    cfg.export.format = fmt
    path = export_model(net, cfg, tmp_path, classes, "CPU", eval_result={"Top_1_Acc": 0.5})
    assert path.exists() and path.suffix == {"MINDIR": ".mindir", "ONNX": ".onnx"}[fmt]
    assert json.loads((tmp_path / "classes.json").read_text()) == list(classes)
    card = json.loads((tmp_path / f"{path.name}.card.json").read_text())
    assert card["format"] == fmt and card["file"] == path.name
    assert card["input"]["shape"] == [1, 3, 32, 32] and card["class_names"] == list(classes)
    assert card["preprocess"]["resize_shorter_side"] == 36 and card["eval"] == {"Top_1_Acc": 0.5}
    assert card["depthwise_padding"] == "symmetric"
    # exporting again replaces the read-only file MindSpore wrote (MINDIR only: MindSpore 2.10
    # cannot export the same network object to ONNX twice in one process)
    if fmt == "MINDIR":
        assert export_model(net, cfg, tmp_path, classes, "CPU") == path


def test_onnx_logits_match_mindspore(trained, tmp_path):
    cfg, net, classes, *_ = trained
    cfg.export.format, cfg.export.batch_size = "ONNX", 4
    path = export_model(net, cfg, tmp_path, classes, "CPU")
    val = scan_split(trained[-1] / "val", classes)
    image, label = next(val.eval_pipeline(cfg.data).create_tuple_iterator(num_epochs=1, output_numpy=True))
    image, label = image[:4], label[:4]
    expected = net(ms.Tensor(image)).asnumpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: image})[0]
    assert expected.std() > 1e-3, "a trained net gives informative logits"
    assert np.max(np.abs(got - expected)) <= 1e-4
    assert list(got.argmax(1)) == list(label)  # the trained net's known answers


def test_air_needs_ascend(trained, tmp_path):
    cfg, net, classes, *_ = trained
    cfg.export.format = "AIR"
    with pytest.raises(ExportError, match="AIR export needs an Ascend device"):
        export_model(net, cfg, tmp_path, classes, "CPU")
