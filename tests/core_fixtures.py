"""Shared fixtures for trainer tests: a tiny real JPEG ImageFolder and a small fast config."""
from __future__ import annotations

import mindspore as ms
import pytest

from core.config import load_config
from core.synthetic import generate


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """10 classes, 6 train + 3 val JPEGs each, 48 px: real files, decoded by the real pipeline."""
    root = tmp_path_factory.mktemp("tiny_dataset")
    return generate(root, train_per_class=6, val_per_class=3, size=48, seed=3)


def tiny_config(data_path, out_dir, **overrides):
    """A config that trains MobileNetV3-Small at 32 px in seconds on CPU."""
    base = {"data.path": str(data_path), "data.image_size": 32, "data.eval_resize": 36,
            "data.batch_size": 8, "data.eval_batch_size": 7, "data.workers": 2,
            "optim.lr": 0.01, "optim.warmup_epochs": 0.5, "train.epochs": 2,
            "train.log_interval": 2, "system.device_target": "CPU",
            "system.output_dir": str(out_dir)}
    base.update(overrides)
    return load_config(None, base)


@pytest.fixture(scope="session")
def native_kernels():
    """The native libraries, built and loading: the tests of the native code paths fail, never
    skip, without them (`make test` builds them with MNV3_REQUIRE_KERNELS=1)."""
    from core import fast_conv, jpeg_augment
    assert fast_conv.available(), f"{fast_conv.LIBRARY} not built or not loading: run `make kernels`"
    assert jpeg_augment.available(), f"{jpeg_augment.load_error()}: run `make kernels`"


@pytest.fixture(autouse=True, scope="session")
def _graph_mode_cpu():
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
