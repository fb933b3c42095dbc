"""predict agrees with evaluation: same preprocessing, same logits, same top-1, and the known
answers of the shared trained network (tests.core_fixtures.learned_run).

Its predictions on the val images are compared with the true labels and with the logits of the
eval pipeline (the split's eval_pipeline, as core.infer.evaluate.evaluate runs it), through the
checkpoint and through an exported MINDIR.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest

from core import checkpoint as ckpt
from core.data.imagefolder import scan_split
from core.data.pipeline import DatasetError
from core.infer.export import export_model
from core.infer.inference import network_from_checkpoint
from core.nn.model import build_model
from core.infer.predict import preprocess, read_image, softmax, top_k
from tests.core_fixtures import LEARNED_TOP1


@pytest.fixture(scope="module")
def setup(learned_run):
    """(cfg, val split, checkpoint path, eval-pipeline images and logits, run dir)."""
    cfg, out, summary, _, root = learned_run
    val = scan_split(Path(root) / "val")
    path = Path(summary["final_checkpoint"])
    net, _ = network_from_checkpoint(ckpt.load(path), cfg, path)
    images, logits = [], []
    for image, _ in val.eval_pipeline(cfg.data).create_tuple_iterator(num_epochs=1, output_numpy=True):
        images.append(image)
        logits.append(net(ms.Tensor(image)).asnumpy())
    return cfg, val, path, np.concatenate(images), np.concatenate(logits), out


def run_cli(argv, capsys):
    from launcher import cmd_predict
    top = argparse.ArgumentParser()
    cmd_predict.add_parser(top.add_subparsers(dest="command", required=True))
    args = top.parse_args(argv)
    assert args.func(args) == 0
    return json.loads(capsys.readouterr().out)


def test_preprocessing_is_the_eval_pipeline_bit_for_bit(setup):
    cfg, val, _, pipeline_images, _, _ = setup
    for i in (0, 7, len(val) - 1):
        np.testing.assert_array_equal(read_image(val.files[i], cfg.data), pipeline_images[i])


def test_predict_from_checkpoint_agrees_with_eval(setup, capsys):
    cfg, val, path, _, eval_logits, _ = setup
    got = run_cli(["predict", "--checkpoint", str(path), "--image", *val.files, "--json",
                   "--top", "3", "--device_target", "CPU"], capsys)
    assert [g["file"] for g in got] == list(val.files)
    top1 = [val.classes.index(g["top"][0]["class"]) for g in got]
    assert top1 == list(eval_logits.argmax(1))
    # the known answers: each file's colour folder, confidently (chance is 1/3)
    truth = [Path(f).parent.name for f in val.files]
    hits = [g["top"][0]["class"] == t for g, t in zip(got, truth)]
    assert np.mean(hits) >= LEARNED_TOP1
    assert np.median([g["top"][0]["probability"] for g in got]) > 0.6
    probs = softmax(eval_logits)
    for g, p in zip(got, probs):
        assert len(g["top"]) == 3
        assert g["top"][0]["probability"] == pytest.approx(p.max(), abs=1e-5)


def test_predict_through_exported_mindir_agrees_with_eval(setup, capsys):
    cfg, val, path, _, eval_logits, out = setup
    net = build_model("mobilenet_v3_small", len(val.classes))
    ckpt.restore([net], ckpt.load(path))
    graph = export_model(net, cfg, out / "export", val.classes, "CPU")
    files = val.files[:6]
    got = run_cli(["predict", "--checkpoint", str(graph), "--image", *files, "--json"], capsys)
    assert [val.classes.index(g["top"][0]["class"]) for g in got] == list(eval_logits[:6].argmax(1))
    probs = softmax(eval_logits[:6])
    for g, p in zip(got, probs):
        assert [e["probability"] for e in g["top"]] == pytest.approx(sorted(p)[::-1][:5], abs=1e-5)


def test_text_output_and_run_directory_argument(setup, capsys):
    from launcher import cmd_predict
    cfg, val, path, _, eval_logits, out = setup
    top = argparse.ArgumentParser()
    cmd_predict.add_parser(top.add_subparsers(dest="command"))
    args = top.parse_args(["predict", "--checkpoint", str(out), "--image", val.files[0], "--top", "2"])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == val.files[0] and len(lines) == 3
    best = val.classes[int(eval_logits[0].argmax())]
    assert lines[1].startswith(f"  1. {best}") and lines[1].endswith("%")


def test_errors_name_the_file(setup, tmp_path):
    cfg = setup[0]
    with pytest.raises(DatasetError, match="image not found"):
        read_image(tmp_path / "missing.jpg", cfg.data)
    with pytest.raises(DatasetError, match="cannot decode"):
        preprocess(b"not an image at all", cfg.data, "notes.txt")
    # a damaged JPEG header would kill the process inside MindSpore's decoder: refused first
    data = bytearray(sorted(Path(cfg.data.path).rglob("*.jpg"))[0].read_bytes())
    data[data.index(b"\xff\xda") + 5] = 0x77
    with pytest.raises(DatasetError, match=r"cannot decode bad\.jpg: damaged JPEG header: scan names"):
        preprocess(bytes(data), cfg.data, "bad.jpg")
    graph = tmp_path / "m.mindir"
    graph.write_bytes(b"x")
    from core.infer.predict import from_mindir
    with pytest.raises(ckpt.CheckpointError, match="model card"):
        from_mindir(graph)


def test_top_k_orders_by_probability():
    assert top_k(np.array([0.0, 2.0, 1.0]), ["a", "b", "c"], 2) == [
        ("b", pytest.approx(0.665241, abs=1e-6)), ("c", pytest.approx(0.244728, abs=1e-6))]
