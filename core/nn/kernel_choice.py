"""Which of the project's CPU operators run on this host, chosen by measurement, not by ISA name.

The custom operators (core.nn.cpu_ops) are written to beat MindSpore's own on CPU, but a host's
CPU, instruction-set build and thread count decide whether they do: an AVX2 build once ran the
network 20x slower than the AVX-512 one. With ``system.cpu_ops=auto`` each operator
family is timed once per host against MindSpore's operator on a probe of the network's shapes
(forward and backward for the training families, forward for the fused inference graph) and a
family whose custom operator loses runs MindSpore's from then on. The result is cached per
(CPU, build, threads, library, MindSpore version) in ``system.kernel_choice_cache`` and
logged in one line; ``system.cpu_ops=custom`` or ``native`` overrides it.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from pathlib import Path
from typing import Callable, Optional

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from core import native
from core.nn import cpu_ops

log = logging.getLogger("core.nn.kernel_choice")

BATCH = 8  # probe batch: the network's planes at a size that times in milliseconds
REPEATS = 7
# MindSpore's operator replaces the project's only when it is this much faster: a probe's
# timings scatter by a few percent, and a tie should not flip from run to run
MARGIN = 1.05
KEEP_ENTRIES = 16  # host keys a cache file remembers (each rebuild of the library adds one)

_grad = ops.GradOperation(get_all=True, get_by_list=True, sens_param=True)


class Grad(nn.Cell):
    """Grad(net)(x, dy) -> ((dx,), (d parameter, ...)) for the output gradient dy: a training
    family's probe times forward and backward together (bench_depthwise and the kernel tests
    use it too)."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.params = ms.ParameterTuple(net.trainable_params())

    def construct(self, x, dy):
        return _grad(self.net, self.params)(x, dy)


class _SqueezeScale(nn.Cell):
    """Squeeze-excite's pool and channel scale, the pool_scale family's probe."""

    def __init__(self, impl: str, channels: int = 0):
        super().__init__()
        self.pool = cpu_ops.global_avg_pool(True, impl)
        self.scale = cpu_ops.scale_channels(impl)
        self.gate = nn.HSigmoid()

    def construct(self, x):
        return self.scale(x, self.gate(self.pool(x)))


def _rand(*shape) -> ms.Tensor:
    return ms.Tensor(np.random.default_rng(0).standard_normal(shape).astype(np.float32))


def _train_probe(make: Callable[..., nn.Cell], *shapes) -> Callable[[str], Callable[[], object]]:
    """A family probed in training: forward + backward of `make(impl, channels)` on inputs of
    each of `shapes` (N, C, H, W), one after another."""
    def probe(impl: str):
        steps = []
        for shape in shapes:
            cell = make(impl, shape[1])
            cell.set_train(True)
            x = _rand(*shape)
            steps.append((Grad(cell), x, ops.ones_like(cell(x))))
        return lambda: [step(x, dy) for step, x, dy in steps]
    return probe


def _bn_act_unit(impl: str, channels: int) -> nn.Cell:
    from core.nn.model import conv_bn_act
    unit = conv_bn_act(channels, channels, 1, act="HS", impl="custom")
    if impl == "native":  # the same unit, its conv still the project's: only BN + act differs
        unit = nn.SequentialCell(list(unit.cell_list))
    return unit


def _normalize_probe(impl: str):
    cell = cpu_ops.normalize_image((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), impl)
    x = ms.Tensor(np.random.default_rng(0).integers(0, 256, (BATCH, 112, 112, 3), dtype=np.uint8))
    return lambda: cell(x)


def _fused_probe(impl: str):
    from core.nn.fuse import fuse_for_inference
    from core.nn.model import build_model
    net = build_model("mobilenet_v3_small", 10, ops_impl=impl)
    fuse_log = logging.getLogger("core.nn.fuse")
    level = fuse_log.level
    fuse_log.setLevel(logging.WARNING)  # the probe's fusing is not the run's
    try:
        net = fuse_for_inference(net, impl)
    finally:
        fuse_log.setLevel(level)
    x = _rand(BATCH, 3, 96, 96)
    return lambda: net(x)


# family -> probe(impl) -> a call that runs it once; shapes are layers of the 224 px network
# (expansions and projections of blocks 1-4 for the 1x1 convs, which the GEMM serves from
# 28x28 planes up)
PROBES = {
    "kxk": _train_probe(lambda impl, c: cpu_ops.conv2d(c, c, 3, 1, c, "normal", impl),
                        (BATCH, 72, 28, 28), (BATCH, 16, 56, 56)),
    "pointwise": _train_probe(lambda impl, c: cpu_ops.conv2d(c, {16: 72, 72: 24, 40: 240}[c], 1, 1, 1,
                                                               "normal", impl),
                              (BATCH, 16, 56, 56), (BATCH, 72, 28, 28), (BATCH, 40, 28, 28)),
    "bn_act": _train_probe(_bn_act_unit, (BATCH, 72, 28, 28), (BATCH, 16, 56, 56)),
    "pool_scale": _train_probe(_SqueezeScale, (BATCH, 96, 14, 14), (BATCH, 72, 28, 28)),
    "normalize": _normalize_probe,
    "fused": _fused_probe,
}


def _runner(call: Callable[[], object]) -> Callable[[], float]:
    """`call` as a timed run (its results read back); the first two runs compile and warm up."""
    def once() -> float:
        start = time.perf_counter()
        _sync(call())
        return time.perf_counter() - start
    once()
    once()
    return once


def _sync(item) -> None:
    if isinstance(item, (tuple, list)):
        for sub in item:
            _sync(sub)
    elif hasattr(item, "asnumpy"):
        item.asnumpy()


def compare(custom: Callable[[], object], plain: Callable[[], object], repeats: int = REPEATS) -> tuple:
    """(custom seconds, plain seconds): the fastest of `repeats` runs each, the two sides
    alternating, so other work on the machine slows both alike and the minimum sees each side
    when it had the cores."""
    runs = (_runner(custom), _runner(plain))
    times = [[run() for run in runs] for _ in range(repeats)]  # the sides alternating
    return tuple(min(side) for side in zip(*times))


def measure(families=cpu_ops.FAMILIES) -> dict:
    """{family: (project's seconds, MindSpore's seconds)} on this host, now."""
    return {family: compare(PROBES[family]("custom"), PROBES[family]("native")) for family in families}


def native_families(timings: dict) -> list:
    """The families whose custom operator lost (MindSpore's faster by more than MARGIN)."""
    return sorted(f for f, (custom, plain) in timings.items() if custom > plain * MARGIN)


def host_key(threads: Optional[int]) -> str:
    """What the choice depends on: CPU, instruction-set build, threads, the library's build,
    MindSpore's version and the instruction set its oneDNN may use."""
    library = cpu_ops.library_path()
    stat = library.stat() if library else None
    return "|".join([native.cpu_model(), f"{os.cpu_count()} cpus", f"threads={threads or 'default'}",
                     f"build={cpu_ops.variant()}",
                     f"lib={stat.st_size}:{stat.st_mtime_ns}" if stat else "lib=none",
                     f"mindspore={ms.__version__}", f"onednn={native.onednn_isa()}"])


def _read(cache: Path) -> dict:
    try:
        data = json.loads(cache.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def choose(cache: Optional[Path], threads: Optional[int] = None,
           measure_fn: Optional[Callable[[], dict]] = None) -> dict:
    """The choice for this host: read from `cache` when it holds this host's key, else measured
    (under a lock beside the cache, so the ranks of a node measure once and agree) and stored.
    Returns {"native": [...], "timings": {...}, "key": ..., "cached": bool}."""
    key = host_key(threads)
    measure_fn = measure_fn or measure
    if cache is None:
        timings = measure_fn()
        return {"native": native_families(timings), "timings": timings, "key": key, "cached": False}
    cache.parent.mkdir(parents=True, exist_ok=True)
    with open(cache.with_name(cache.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        entry = _read(cache).get(key)
        if entry is not None:
            return dict(entry, key=key, cached=True)
        timings = measure_fn()
        entry = {"native": native_families(timings),
                 "timings": {f: [round(c, 6), round(p, 6)] for f, (c, p) in timings.items()},
                 "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
        data = _read(cache)
        data[key] = entry
        for stale in list(data)[:-KEEP_ENTRIES]:  # oldest first: earlier builds, other settings
            del data[stale]
        tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, cache)
        return dict(entry, key=key, cached=False)


def apply(system_cfg) -> Optional[dict]:
    """For system.cpu_ops=auto on CPU with the library built: choose (cached) and make
    `auto` builds follow it; one log line says what runs where. None when nothing is chosen."""
    if system_cfg.cpu_ops != "auto" or not cpu_ops.available():
        cpu_ops.prefer_native(())
        return None
    path = getattr(system_cfg, "kernel_choice_cache", "") or None
    cache = Path(path).expanduser() if path else None
    started = time.perf_counter()
    try:
        choice = choose(cache, system_cfg.cpu_threads)
    except OSError as exc:  # an unwritable cache: measure without it
        log.warning("kernel choice cache %s unusable (%s); measuring without it", cache, exc.strerror)
        choice = choose(None, system_cfg.cpu_threads)
    cpu_ops.prefer_native(choice["native"])
    ours = [f for f in cpu_ops.FAMILIES if f not in choice["native"]]
    log.info("CPU operators on %s (%s build, threads %s): the project's for %s; MindSpore's for %s (%s)",
             native.cpu_model(), cpu_ops.variant(), system_cfg.cpu_threads or "default",
             ", ".join(ours) or "none", ", ".join(choice["native"]) or "none",
             f"cached in {cache}" if choice["cached"] else
             f"measured in {time.perf_counter() - started:.1f} s" + (f", cached in {cache}" if cache else ""))
    return choice
