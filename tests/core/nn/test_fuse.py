"""core.nn.fuse: the fused CPU inference graph (BN folded, fused activations and squeeze-excite) must
compute what the network as built computes, unit by unit and end to end."""
import mindspore as ms
import numpy as np
import pytest

from core.nn import model as core_model
from core.nn.fuse import (FusedConvBN, FusedInvertedResidual, FusedLinear, FusedMobileNetV3Small,
                       FusedSqueezeExcite, fold_batchnorm, fuse_for_inference)

pytestmark = pytest.mark.usefixtures("native_kernels")  # fails, never skips, when not built


def rel_err(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / max(1e-6, np.abs(a).max()))


def trained_like(seed=0, **kwargs):
    """A network whose BN statistics and affine parameters are far from their initial values,
    so a wrong fold shows (fresh BN is the identity up to eps)."""
    ms.set_seed(seed)
    net = core_model.build_model("mobilenet_v3_small", 10, **kwargs)
    rng = np.random.default_rng(seed)
    for p in net.get_parameters():
        if p.name.endswith(("moving_mean", "beta")) or p.name.endswith(".bias"):
            p.set_data(ms.Tensor(rng.normal(0, 0.2, p.shape).astype(np.float32)))
        elif p.name.endswith(("moving_variance", "gamma")):
            p.set_data(ms.Tensor(rng.uniform(0.3, 2.0, p.shape).astype(np.float32)))
    net.set_train(False)
    return net


def test_fold_batchnorm_equals_conv_then_bn():
    from mindspore import nn
    rng = np.random.default_rng(1)
    conv = nn.Conv2d(4, 6, 1, has_bias=False)
    bn = nn.BatchNorm2d(6, eps=1e-3)
    for p, lo in ((bn.gamma, 0.5), (bn.moving_variance, 0.1)):
        p.set_data(ms.Tensor(rng.uniform(lo, 2, 6).astype(np.float32)))
    for p in (bn.beta, bn.moving_mean):
        p.set_data(ms.Tensor(rng.normal(0, 1, 6).astype(np.float32)))
    bn.set_train(False)
    x = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    expected = bn(conv(ms.Tensor(x))).asnumpy()
    w, b = fold_batchnorm(conv.weight.asnumpy(), bn)
    got = np.einsum("oi,nihw->nohw", w[:, :, 0, 0], x) + b[None, :, None, None]
    assert rel_err(expected, got) < 1e-5


@pytest.mark.parametrize("size,batch", [(224, 2), (65, 1), (64, 5)])
def test_fused_network_matches_the_network_as_built(size, batch):
    net = trained_like()
    x = ms.Tensor(np.random.default_rng(size).standard_normal((batch, 3, size, size)).astype(np.float32))
    features, logits = net.features(x).asnumpy(), net(x).asnumpy()
    fused = fuse_for_inference(net)
    assert isinstance(fused, FusedMobileNetV3Small)
    assert rel_err(features, fused.features(x).asnumpy()) < 2e-5
    fused_logits = fused(x).asnumpy()
    assert rel_err(logits, fused_logits) < 2e-5
    assert (logits.argmax(1) == fused_logits.argmax(1)).all()
    # the network it came from is untouched and still computes the same
    assert rel_err(logits, net(x).asnumpy()) == 0.0


@pytest.mark.parametrize("chunk_pixels", [2 * 64 * 64, 3 * 64 * 64, 1])
def test_chunked_leading_units_compute_each_image_as_the_whole_batch(chunk_pixels):
    """The leading units run on chunks of images (2 or 3 per chunk with a short last chunk,
    one image per chunk): the logits equal those of the unchunked batch."""
    x = ms.Tensor(np.random.default_rng(7).standard_normal((5, 3, 64, 64)).astype(np.float32))
    outputs = []
    for pixels in (FusedMobileNetV3Small.CHUNK_PIXELS, chunk_pixels):  # 64 px: one chunk, then
        ms.set_seed(0)  # a fresh network: trained_like's pooled features hardly vary with the image
        fused = fuse_for_inference(core_model.build_model("mobilenet_v3_small", 10))
        fused.chunk_pixels = pixels
        fused.classifier = ms.nn.Identity()  # the pooled features: they differ from image to image
        outputs.append(fused(x).asnumpy())
    whole, got = outputs
    assert got.shape == whole.shape == (5, 576)
    assert np.abs(whole - whole[::-1]).max() > 0.1 * np.abs(whole).max()  # images tell apart
    np.testing.assert_allclose(got, whole, rtol=1e-5, atol=1e-6 * np.abs(whole).max())
    assert FusedMobileNetV3Small.CHUNK_PIXELS // (224 * 224) == 8  # what was measured


def test_every_unit_of_the_feature_stack_is_fused():
    fused = fuse_for_inference(trained_like())
    units = list(fused.features)
    assert isinstance(units[0], FusedConvBN) and isinstance(units[-1], FusedConvBN)
    assert all(isinstance(u, FusedInvertedResidual) for u in units[1:-1])
    kinds = [type(c) for _, c in fused.cells_and_names()]
    assert kinds.count(FusedSqueezeExcite) == sum(b.use_se for b in core_model.SMALL_BLOCKS)
    assert not any(issubclass(k, ms.nn.BatchNorm2d) for k in kinds)
    kernel_convs = [c for _, c in fused.cells_and_names() if isinstance(c, FusedConvBN) and c.in_kernel]
    assert len(kernel_convs) == 12  # the stem and the 11 depthwise convs run in the custom kernel
    # every 1x1 conv is a GEMM kernel (no oneDNN Conv2D left), the classifier two Linear kernels
    convs = [c for _, c in fused.cells_and_names() if isinstance(c, FusedConvBN)]
    assert all(c.in_kernel or c.pointwise for c in convs) and len(convs) - 12 == 22
    assert [type(c) for c in fused.classifier] == [FusedLinear, FusedLinear]


def test_native_impl_and_other_architectures_are_left_as_they_are():
    net = trained_like()
    assert fuse_for_inference(net, "native") is net
    zoo = core_model.build_model("modelzoo", 10)
    assert fuse_for_inference(zoo) is zoo and not zoo.training
