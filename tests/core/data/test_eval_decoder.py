"""Eval and predict on the native decoder (core/data/jpeg_eval.py, mnv3_jpeg_eval in
core/kernels/jpeg_augment.cc): its batches equal the MindSpore ops' (core.data.pipeline.eval_transforms)
within one grey level on real photos and every image kind, and the fallbacks hold."""
import io
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from core.data import jpeg_augment, jpeg_eval
from core.config import Config
from core.data.imagefolder import scan_split
from core.data.pipeline import DatasetError, eval_transforms
from core.infer.predict import preprocess
from tests.core_fixtures import tiny_config
from tests.core.data.test_jpeg_augment import photo

pytestmark = pytest.mark.usefixtures("native_kernels")  # fails, never skips, when not built

# a real photo (512x600, baseline 4:2:0), shipped with matplotlib (requirements-extras.txt)
HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


def encoded(image: Image.Image, fmt: str = "JPEG", **kw) -> np.ndarray:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return np.frombuffer(buf.getvalue(), np.uint8)


def data_cfg(resize: int = 256, crop: int = 224):
    cfg = Config().data
    cfg.eval_resize, cfg.image_size = resize, crop
    return cfg


def grey_levels(cfg, ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """|difference| of two normalised CHW images, in grey levels (0-255)."""
    std = np.asarray(cfg.std, np.float64)[:, None, None] * 255
    return np.abs((ours.astype(np.float64) - theirs) * std)


def mindspore_path(data: np.ndarray, cfg) -> np.ndarray:
    image = data
    for op in eval_transforms(cfg):
        image = op(image)
    return image


def hopper() -> np.ndarray:
    return np.fromfile(HOPPER, np.uint8)


def kinds() -> dict:
    """Every kind of file an eval folder holds, as (bytes, resize, crop)."""
    small = Image.fromarray(photo(3, 100, 77))
    rgb = Image.fromarray(photo(4, 500, 375))
    cmyk = rgb.convert("CMYK")
    return {
        "real photo 512x600": (hopper(), 256, 224),
        "real photo, crop 160": (hopper(), 182, 160),
        "photo 500x375": (encoded(rgb, quality=90), 256, 224),
        "odd 301x257 4:2:2": (encoded(Image.fromarray(photo(5, 301, 257)), quality=85, subsampling=1), 256, 224),
        "odd 257x301 progressive": (encoded(Image.fromarray(photo(6, 257, 301)), quality=90,
                                            progressive=True), 232, 224),
        "smaller than the crop 100x77": (encoded(small, quality=90), 256, 224),
        "grey": (encoded(rgb.convert("L"), quality=90), 256, 224),
        "CMYK": (encoded(cmyk, quality=90), 256, 224),
        "PNG": (encoded(rgb, "PNG"), 256, 224),
        "PNG RGBA": (encoded(rgb.convert("RGBA"), "PNG"), 256, 224),
        "trailer after EOI": (np.concatenate([encoded(rgb, quality=90), np.frombuffer(b"\x00trailer" * 64, np.uint8)]),
                              256, 224),
    }


@pytest.mark.parametrize("kind", list(kinds()))
def test_equals_mindspores_eval_ops_within_one_grey_level(kind):
    data, resize, crop = kinds()[kind]
    cfg = data_cfg(resize, crop)
    ours = jpeg_eval.EvalDecode(cfg)(data)
    theirs = mindspore_path(data, cfg)
    assert ours.shape == theirs.shape == (3, crop, crop) and ours.dtype == np.float32
    diff = grey_levels(cfg, ours, theirs)
    assert diff.max() <= 1.0001 and diff.mean() < 0.3, (diff.max(), diff.mean())


def test_geometry_is_mindspores_resize_and_centre_crop():
    from mindspore.dataset import vision
    rng = np.random.default_rng(0)
    for _ in range(40):
        h, w = (int(v) for v in rng.integers(20, 1200, 2))
        resize = int(rng.choice([36, 232, 256, 300]))
        rw, rh, left, top = jpeg_eval.eval_geometry(w, h, resize, 32)
        assert vision.Resize(resize)(np.zeros((h, w, 1), np.uint8)).shape[:2] == (rh, rw)
        coded = np.zeros((rh, rw, 1), np.uint8)
        coded[top, left] = 255
        assert vision.CenterCrop(32)(coded)[0, 0, 0] == 255


def test_dct_scaling_is_off_unless_asked():
    """Only a full-size decode stays within one grey level; with scaling the 512x600 photo
    (at least twice 256) is decoded at half size and differs (mean ~0.6, measured)."""
    cfg = data_cfg()
    theirs = mindspore_path(hopper(), cfg)
    scaled = grey_levels(cfg, jpeg_eval.EvalDecode(cfg, allow_scaling=True)(hopper()), theirs)
    assert scaled.max() > 5 and scaled.mean() < 1.5
    assert grey_levels(cfg, jpeg_eval.EvalDecode(cfg)(hopper()), theirs).max() <= 1.0001


def test_uint8_output_is_the_rounded_pixels():
    cfg = data_cfg()
    raw = jpeg_eval.EvalDecode(cfg, normalize=False)(hopper())
    mean = np.asarray(cfg.mean, np.float32)[:, None, None] * 255
    std = np.asarray(cfg.std, np.float32)[:, None, None] * 255
    np.testing.assert_allclose(raw.transpose(2, 0, 1), jpeg_eval.EvalDecode(cfg)(hopper()) * std + mean,
                               atol=1e-3)


def test_undecodable_bytes_raise_decode_error():
    with pytest.raises(jpeg_eval.DecodeError, match="undecodable"):
        jpeg_eval.EvalDecode(data_cfg())(np.frombuffer(b"\xff\xd8\xff\xe0 not really a jpeg", np.uint8))


def eval_batches(tiny_dataset, tmp_path, **overrides):
    cfg = tiny_config(tiny_dataset, tmp_path, **overrides)
    split = scan_split(Path(tiny_dataset) / "val")
    it = split.eval_pipeline(cfg.data).create_tuple_iterator(num_epochs=1, output_numpy=True)
    return cfg, [(image, label) for image, label in it]


def test_eval_pipeline_native_equals_mindspore_ops(tiny_dataset, tmp_path, monkeypatch):
    """The whole pipeline (30 real JPEGs, eval batch 7, partial last batch): same labels, same
    shapes, pixels within one grey level; data.decoder=mindspore keeps the old path."""
    calls = []
    batch_eval = jpeg_eval.BatchEval
    monkeypatch.setattr(jpeg_eval, "BatchEval", lambda cfg: calls.append(1) or batch_eval(cfg))
    cfg, native = eval_batches(tiny_dataset, tmp_path)
    assert calls == [1]
    _, ops = eval_batches(tiny_dataset, tmp_path, **{"data.decoder": "mindspore"})
    assert calls == [1]
    assert [b[0].shape for b in native] == [b[0].shape for b in ops] and native[-1][0].shape[0] == 30 % 7
    for (a, la), (b, lb) in zip(native, ops):
        assert a.dtype == b.dtype == np.float32
        np.testing.assert_array_equal(la, lb)
        assert grey_levels(cfg.data, a, b).max() <= 1.0001


def test_without_the_library_eval_uses_mindspores_ops(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(jpeg_augment, "available", lambda: False)
    monkeypatch.setattr(jpeg_eval, "BatchEval", None)  # would fail if used
    _, batches = eval_batches(tiny_dataset, tmp_path)
    assert sum(len(b[1]) for b in batches) == 30
    with pytest.raises(DatasetError, match="data.decoder=native"):
        eval_batches(tiny_dataset, tmp_path, **{"data.decoder": "native"})


def test_predict_preprocess_uses_the_native_decoder(monkeypatch):
    cfg = data_cfg()
    data = hopper().tobytes()
    native = preprocess(data, cfg)
    np.testing.assert_array_equal(native, jpeg_eval.EvalDecode(cfg)(hopper()))
    cfg.decoder = "mindspore"
    assert grey_levels(cfg, native, preprocess(data, cfg)).max() <= 1.0001
    cfg.decoder = "auto"
    with pytest.raises(DatasetError, match="cannot decode x.jpg"):
        preprocess(data[:200], cfg, "x.jpg")


def test_trained_checkpoint_scores_the_same_on_both_decoders(learned_run):
    """The shared trained network (tests.core_fixtures.learned_run) evaluated through the native
    decoder and through MindSpore's ops: the same top-1/top-5 and the same loss to 1%
    (measured 0.34% apart: the decoders differ by up to 1 grey level on these noisy images)."""
    import copy

    from core import checkpoint as ckpt
    from core.infer.evaluate import evaluate
    from core.infer.inference import network_from_checkpoint
    cfg, _, summary, final_eval, root = learned_run
    cfg = copy.deepcopy(cfg)
    net, classes = network_from_checkpoint(ckpt.load(summary["final_checkpoint"]), cfg,
                                           summary["final_checkpoint"])
    val = scan_split(root / "val", classes)
    native = evaluate(net, val, cfg.data, cfg.train.label_smoothing)
    cfg.data.decoder = "mindspore"
    ops = evaluate(net, val, cfg.data, cfg.train.label_smoothing)
    assert native["Top_1_Acc"] == ops["Top_1_Acc"] == final_eval["Top_1_Acc"]
    assert native["Top_5_Acc"] == ops["Top_5_Acc"]
    assert native["Loss"] == pytest.approx(ops["Loss"], rel=1e-2)
