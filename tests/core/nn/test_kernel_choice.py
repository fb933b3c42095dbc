"""core.nn.kernel_choice: with system.cpu_ops=auto the runner times each family of its CPU
operators against MindSpore's on the host and uses MindSpore's where the custom one loses
(issue 23: never slower than the plain path); the choice is cached per host and logged once."""
import logging
from types import SimpleNamespace

import pytest

from core.nn import cpu_ops, kernel_choice
from core.nn.model import build_model


@pytest.fixture(autouse=True)
def reset_choice():
    yield
    cpu_ops.prefer_native(())


def slowed(probe, times: int):
    """The family's probe with its custom side run `times` times per call: a custom operator
    made slower, as on a host whose build loses."""
    def make(impl):
        call = probe(impl)
        return (lambda: [call() for _ in range(times)]) if impl == "custom" else call
    return make


def test_a_family_whose_custom_operator_is_made_slower_flips_to_mindspores(monkeypatch):
    # kxk: the custom depthwise conv is ~20x faster than nn.Conv2d's here, normalize ~3x
    timings = kernel_choice.measure(("kxk", "normalize"))
    assert kernel_choice.native_families(timings) == [], timings
    monkeypatch.setitem(kernel_choice.PROBES, "kxk", slowed(kernel_choice.PROBES["kxk"], 80))
    timings = kernel_choice.measure(("kxk", "normalize"))
    assert kernel_choice.native_families(timings) == ["kxk"], timings


def test_native_only_when_clearly_faster():
    assert kernel_choice.native_families({"kxk": (1.0, 0.5), "pointwise": (1.0, 0.97),
                                          "bn_act": (1.0, 2.0)}) == ["kxk"]


def test_the_choice_is_measured_once_per_host_and_cached(tmp_path):
    cache = tmp_path / "choice" / "kernel_choice.json"
    calls = []

    def fake_measure():
        calls.append(1)
        return {"kxk": (0.002, 0.001), "pointwise": (0.001, 0.002)}

    first = kernel_choice.choose(cache, None, fake_measure)
    assert first["native"] == ["kxk"] and not first["cached"] and len(calls) == 1
    again = kernel_choice.choose(cache, None, fake_measure)
    assert again["native"] == ["kxk"] and again["cached"] and len(calls) == 1
    other_threads = kernel_choice.choose(cache, 1, fake_measure)  # another key: measured
    assert not other_threads["cached"] and len(calls) == 2
    assert len(__import__("json").loads(cache.read_text())) == 2


def test_the_cache_keeps_the_newest_host_keys(tmp_path, monkeypatch):
    cache = tmp_path / "kernel_choice.json"
    monkeypatch.setattr(kernel_choice, "KEEP_ENTRIES", 3)
    for threads in range(1, 6):
        kernel_choice.choose(cache, threads, lambda: {"kxk": (0.001, 0.002)})
    kept = list(__import__("json").loads(cache.read_text()))
    assert [k.split("|")[2] for k in kept] == ["threads=3", "threads=4", "threads=5"]


def test_apply_builds_the_losing_family_with_mindspores_operator(tmp_path, caplog):
    cache = tmp_path / "kernel_choice.json"
    system = SimpleNamespace(cpu_ops="auto", kernel_choice_cache=str(cache), cpu_threads=None)
    key = kernel_choice.host_key(None)
    cache.write_text(__import__("json").dumps({key: {"native": ["kxk", "fused"], "timings": {}}}))
    with caplog.at_level(logging.INFO, logger="core.nn.kernel_choice"):
        choice = kernel_choice.apply(system)
    assert choice["cached"] and choice["native"] == ["kxk", "fused"]
    [line] = [r.getMessage() for r in caplog.records]
    assert "MindSpore's for kxk, fused" in line and f"cached in {cache}" in line
    assert "the project's for pointwise, bn_act, pool_scale, normalize" in line
    net = build_model("mobilenet_v3_small", 10)
    cells = [type(c).__name__ for _, c in net.cells_and_names()]
    assert "FastConv2d" not in cells and "FastPointwise2d" in cells and "ConvBNAct" in cells
    from core.nn.fuse import fuse_for_inference
    assert fuse_for_inference(net) is net  # the fused inference graph lost too
    # the user's setting overrides the measurement
    assert cpu_ops.use_custom("custom", "kxk")
    assert kernel_choice.apply(SimpleNamespace(**{**vars(system), "cpu_ops": "native"})) is None
    assert cpu_ops.use_custom("auto", "kxk")


def test_an_unwritable_cache_measures_without_it(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setattr(kernel_choice, "measure", lambda: {"kxk": (0.001, 0.002)})
    system = SimpleNamespace(cpu_ops="auto", kernel_choice_cache=str(blocker / "sub" / "c.json"),
                             cpu_threads=None)
    with caplog.at_level(logging.WARNING, logger="core.nn.kernel_choice"):
        choice = kernel_choice.apply(system)
    assert choice["native"] == [] and not choice["cached"]
    assert "unusable" in caplog.text
