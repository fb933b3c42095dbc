"""The native training-image operator (core/kernels/jpeg_augment.cc via core.data.jpeg_augment):
what it decodes equals MindSpore's decoder, its resize and colour jitter equal MindSpore's
ops, its crop follows RandomResizedCrop, and every image kind reaches it."""
import ctypes
import io
import math

import numpy as np
import pytest
from PIL import Image

from core.data import jpeg_augment
from core.config import Config
from core.data.imagefolder import scan_split
from core.data.pipeline import DatasetError
from tests.core_fixtures import tiny_config

pytestmark = pytest.mark.usefixtures("native_kernels")  # fails, never skips, when not built


def photo(seed: int = 0, width: int = 320, height: int = 240) -> np.ndarray:
    """Smooth colour field plus grain: chroma and texture like a photo's."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (5, 7, 3)).astype(np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.float32)
    base += rng.normal(0, 8, base.shape)
    return np.clip(base, 0, 255).astype(np.uint8)


def encode(image: np.ndarray, fmt: str = "JPEG", **kw) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, fmt, **kw)
    return np.frombuffer(buf.getvalue(), np.uint8)


def native(data, box, out, flip=0, factors=None, order=(0, 1, 2), scaling=0) -> np.ndarray:
    """One direct call of mnv3_jpeg_augment with chosen parameters."""
    lib = jpeg_augment.load()
    result = np.empty((out, out, 3), np.uint8)
    box = np.asarray(box, np.float64)
    f = None if factors is None else np.asarray(factors, np.float32)
    o = np.asarray(order, np.int32)
    message = ctypes.create_string_buffer(256)
    status = lib.mnv3_jpeg_augment(data.ctypes.data, data.size, box.ctypes.data, flip,
                                   None if f is None else f.ctypes.data,
                                   None if f is None else o.ctypes.data, out, out, scaling,
                                   result.ctypes.data, message, len(message))
    assert status == 0, message.value
    return result


@pytest.fixture(scope="module")
def jpeg():
    return encode(photo(), quality=90)  # 4:2:0 chroma: the crop's edge columns are the hard case


@pytest.fixture(scope="module")
def decoded(jpeg):
    from mindspore.dataset import vision
    return vision.Decode()(jpeg)


def test_links_pillows_libjpeg_not_mindspores():
    linked = jpeg_augment.linked_jpeg_library()
    assert "libjpeg" in linked and "_c_dataengine" not in linked
    assert linked.rsplit("/", 1)[-1] == jpeg_augment.jpeg_library_file().rsplit("/", 1)[-1]


@pytest.mark.parametrize("left,top", [(0, 0), (37, 21), (64, 64), (96, 17), (224, 144)])
def test_cropped_decode_equals_mindspores_full_decode(jpeg, decoded, left, top):
    """Box size = output size: no resampling, so any difference is the decoder's."""
    w, h = 96, 96
    np.testing.assert_array_equal(native(jpeg, (left, top, w, h), 96), decoded[top:top + h, left:left + w])


@pytest.mark.parametrize("kind", [{"progressive": True}, {"subsampling": 0}, {"subsampling": 1}],
                         ids=["progressive", "4:4:4", "4:2:2"])
def test_other_jpeg_kinds_decode_like_mindspore(kind):
    from mindspore.dataset import vision
    data = encode(photo(5), quality=90, **kind)
    full = vision.Decode()(data)
    for left, top in [(37, 21), (100, 50), (224, 144)]:
        np.testing.assert_array_equal(native(data, (left, top, 96, 96), 96), full[top:top + 96, left:left + 96])


@pytest.mark.parametrize("box", [(0, 0, 320, 240), (37, 21, 200, 150), (3, 5, 60, 45), (250, 180, 70, 60)])
def test_resize_equals_mindspores_resize(jpeg, decoded, box):
    from mindspore.dataset import vision
    x, y, w, h = box
    expected = vision.Resize((112, 112))(decoded[y:y + h, x:x + w])
    diff = np.abs(native(jpeg, box, 112).astype(int) - expected)
    assert diff.max() <= 1 and diff.mean() < 0.3  # OpenCV rounds its fixed-point weights


def test_dct_scaled_decode_is_closer_to_an_antialiased_resize():
    """A crop at least twice the output is decoded at 1/2, 1/4 or 1/8 size (DCT scaling): it
    is faster, and, being a low-pass, nearer to a properly antialiased resize than plain
    bilinear from full size (which aliases the grain)."""
    from mindspore.dataset import vision
    big = encode(photo(1, 1024, 768), quality=90)
    box = (10, 20, 960, 720)
    scaled, full = native(big, box, 112, scaling=1), native(big, box, 112, scaling=0)
    reference = np.asarray(Image.fromarray(vision.Decode()(big)).resize(
        (112, 112), Image.BILINEAR, box=(10, 20, 970, 740)), np.int64)
    assert np.abs(scaled - reference).mean() < 0.5 * np.abs(full - reference).mean()
    assert np.abs(scaled - reference).mean() < 1.5


def test_flip_mirrors_columns(jpeg):
    box = (13, 29, 150, 120)
    np.testing.assert_array_equal(native(jpeg, box, 64, flip=1), native(jpeg, box, 64)[:, ::-1])


@pytest.mark.parametrize("factor", [0.6, 1.4])
@pytest.mark.parametrize("op", ["brightness", "contrast", "saturation"])
def test_each_jitter_equals_mindspores_colour_adjust(jpeg, decoded, op, factor):
    from mindspore.dataset import vision
    k = ["brightness", "contrast", "saturation"].index(op)
    factors = [factor if i == k else 1.0 for i in range(3)]
    ours = native(jpeg, (21, 37, 96, 96), 96, factors=factors)
    theirs = vision.RandomColorAdjust(**{op: (factor, factor)})(decoded[37:133, 21:117])
    diff = np.abs(ours.astype(int) - theirs)
    assert diff.max() <= 1 and diff.mean() < 0.1
    assert np.abs(ours.astype(int) - decoded[37:133, 21:117]).mean() > 3  # it did change


def reference_jitter(image: np.ndarray, factors, order) -> np.ndarray:
    """ColorJitter in float, clamped after each step (torchvision's definitions)."""
    img = image.astype(np.float64)
    weights = np.array([0.299, 0.587, 0.114])
    for op in order:
        f = factors[op]
        grey = img @ weights
        if op == 0:
            img = img * f
        elif op == 1:
            img = img * f + grey.mean() * (1 - f)
        else:
            img = img * f + grey[..., None] * (1 - f)
        img = np.clip(img, 0, 255)
    return np.floor(img + 0.5)


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 2, 0)])
def test_jitter_applies_in_the_given_order(jpeg, decoded, order):
    factors = (1.35, 0.6, 1.4)
    ours = native(jpeg, (21, 37, 96, 96), 96, factors=factors, order=order)
    expected = reference_jitter(decoded[37:133, 21:117], factors, order)
    assert np.abs(ours - expected).max() <= 1
    other = native(jpeg, (21, 37, 96, 96), 96, factors=factors, order=order[::-1])
    assert np.abs(ours.astype(int) - other).mean() > 0.5  # the order matters


def test_crop_box_follows_random_resized_crop():
    scale, ratio = (0.08, 1.0), (0.75, 4 / 3)
    params = jpeg_augment.draw_params(2000, seed=3, epoch=0)
    areas, aspects = [], []
    for u in params:
        left, top, w, h = jpeg_augment.crop_box(500, 375, u, scale, ratio)
        assert 0 <= left and left + w <= 500 and 0 <= top and top + h <= 375
        areas.append(w * h / (500 * 375))
        aspects.append(w / h)
    assert min(areas) >= 0.075 and max(areas) <= 1.0
    assert min(aspects) >= 0.72 and max(aspects) <= 1.39
    # first try: whole area at aspect 3/4 is 375x500, too tall; second: half the area, square
    u = np.zeros(jpeg_augment.PARAM_COLUMNS)
    u[jpeg_augment.AREA] = [1.0, (0.5 - 0.08) / 0.92] + [0.0] * 8
    u[jpeg_augment.LOG_RATIO] = [0.0, 0.5] + [0.0] * 8
    u[jpeg_augment.TOP], u[jpeg_augment.LEFT] = 0.5, 0.25
    side = round(math.sqrt(500 * 375 / 2))
    assert jpeg_augment.crop_box(500, 375, u, scale, ratio) == (
        int(0.25 * (500 - side + 1)), int(0.5 * (375 - side + 1)), side, side)
    # all ten tries fail on a strip: centre crop at the nearest allowed aspect
    u = params[0]
    assert jpeg_augment.crop_box(1000, 10, u, scale, ratio) == ((1000 - 13) // 2, 0, 13, 10)


def test_draws_are_per_position_and_reproducible():
    a = jpeg_augment.draw_params(50, 1, 0)
    assert a.shape == (50, jpeg_augment.PARAM_COLUMNS)
    np.testing.assert_array_equal(a[:20], jpeg_augment.draw_params(20, 1, 0))
    np.testing.assert_array_equal(a[30:], jpeg_augment.draw_params(50, 1, 0, start=30))
    assert not np.array_equal(a, jpeg_augment.draw_params(50, 1, 1))
    assert not np.array_equal(a, jpeg_augment.draw_params(50, 2, 0))
    # any positions, in any runs, get the rows of the one stream (a rank's slices of global batches)
    positions = np.r_[40:46, 3:9, 48:50, 0:1]
    np.testing.assert_array_equal(jpeg_augment.position_params(1, 0, positions), a[positions])
    # the stream a one-process run always drew from (rank 0's before draws followed positions)
    np.testing.assert_array_equal(a, np.random.default_rng([1, 0, 0, 11]).random((50, jpeg_augment.PARAM_COLUMNS)))


def augment(data, seed=0, **cfg):
    config = Config().data
    config.image_size = 64
    for key, value in cfg.items():
        setattr(config, key, value)
    return jpeg_augment.TrainAugment(config)(data, jpeg_augment.draw_params(1, seed, 0)[0])


def test_png_bmp_grey_and_cmyk_images_are_augmented_alike():
    image = photo(2)
    from_jpeg = augment(encode(image, quality=95), color_jitter=[0, 0, 0])
    from_png = augment(encode(image, "PNG"), color_jitter=[0, 0, 0])
    np.testing.assert_array_equal(augment(encode(image, "BMP"), color_jitter=[0, 0, 0]), from_png)
    assert from_png.shape == (64, 64, 3) and np.abs(from_png.astype(int) - from_jpeg).mean() < 5
    grey = augment(encode(image[..., 0], quality=95))
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 1], grey[..., 2])
    cmyk = Image.fromarray(image).convert("CMYK")
    buf = io.BytesIO()
    cmyk.save(buf, "JPEG", quality=95)
    out = augment(np.frombuffer(buf.getvalue(), np.uint8), color_jitter=[0, 0, 0])
    assert np.abs(out.astype(int) - from_jpeg).mean() < 8


def test_damaged_scan_data_decodes_and_garbage_is_a_clear_error():
    data = encode(photo(4), quality=90).copy()
    data[len(data) // 2: len(data) // 2 + 400] = 0x5A  # damage inside the entropy-coded data
    assert augment(data).shape == (64, 64, 3)  # libjpeg recovers with a warning, as MindSpore's
    with pytest.raises(jpeg_augment.DecodeError, match="undecodable image .*remove or replace it"):
        augment(np.frombuffer(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4, np.uint8))


def test_pipeline_batches_do_not_depend_on_the_worker_count(tiny_dataset, tmp_path):
    train = scan_split(tiny_dataset / "train")

    def batches(workers):
        cfg = tiny_config(tiny_dataset, tmp_path, **{"data.decoder": "native", "data.workers": workers})
        return [i.copy() for i, _ in train.train_pipeline(cfg.data, seed=4, epoch=1)
                .create_tuple_iterator(num_epochs=1, output_numpy=True)]

    for a, b in zip(batches(1), batches(2)):
        np.testing.assert_array_equal(a, b)


def test_native_decoder_asked_for_but_not_built_is_one_line(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(jpeg_augment, "_lib", None)
    monkeypatch.setattr(jpeg_augment, "_load_error", "libmnv3_jpeg.so is not built (make kernels)")
    cfg = tiny_config(tiny_dataset, tmp_path, **{"data.decoder": "native"})
    with pytest.raises(DatasetError, match=r"^data\.decoder=native but libmnv3_jpeg\.so is not built "
                                           r"\(make kernels\); run `make kernels` or set data\.decoder=auto$"):
        scan_split(tiny_dataset / "train").train_pipeline(cfg.data, seed=1, epoch=0)
    cfg = tiny_config(tiny_dataset, tmp_path)  # auto falls back to MindSpore's ops
    assert scan_split(tiny_dataset / "train").train_pipeline(cfg.data, seed=1, epoch=0) is not None


def test_hflip_and_jitter_draws_follow_the_config():
    params = jpeg_augment.draw_params(4000, 2, 0)
    flips = np.mean(params[:, jpeg_augment.FLIP] < 0.5)
    assert abs(flips - 0.5) < 0.03
    aug = jpeg_augment.TrainAugment(Config().data)
    factors = np.stack([aug.factors(u) for u in params[:500]])
    assert factors.min() >= 0.6 - 1e-6 and factors.max() <= 1.4 + 1e-6
    assert math.isclose(factors.mean(), 1.0, abs_tol=0.03)
