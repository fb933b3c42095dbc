"""Device selection and MindSpore context: the one place that decides CPU, GPU or Ascend."""
from __future__ import annotations

import logging

import mindspore as ms

log = logging.getLogger("core.device")
_PREFERENCE = ("Ascend", "GPU")


def resolve_target(requested: str) -> str:
    """'auto' picks the first available accelerator, else CPU."""
    if requested != "auto":
        return requested
    for target in _PREFERENCE:
        try:
            if _quietly_available(target):
                return target
        except Exception:  # a backend plugin that cannot load means "not available"
            continue
    log.debug("device_target auto: no Ascend or GPU backend loads here; using CPU")
    return "CPU"


def _quietly_available(target: str) -> bool:
    """ms.hal.is_available without its warnings: on a CPU-only host it logs four lines per
    backend ("Backend Ascend is not available", the libge_runner.so load error), which are the
    expected answer here, not a problem."""
    from mindspore import log as ms_log
    logger = ms_log._get_logger()  # MindSpore's own logger (not under logging's root)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return bool(ms.hal.is_available(target))
    finally:
        logger.setLevel(level)


def configure(system_cfg) -> str:
    target = resolve_target(system_cfg.device_target)
    mode = ms.GRAPH_MODE if system_cfg.mode == "graph" else ms.PYNATIVE_MODE
    ms.set_context(mode=mode)
    if getattr(system_cfg, "cpu_threads", None):
        set_cpu_threads(system_cfg.cpu_threads)
    if target == "CPU":
        ms.set_device("CPU")
        from core.nn import cpu_ops, kernel_choice
        cpu_ops.select_variant(getattr(system_cfg, "kernel_isa", "auto"))
        kernel_choice.apply(system_cfg)
    else:
        ms.set_device(target, system_cfg.device_id)
    return target


def set_cpu_threads(num: int) -> None:
    """Fix the thread count of MindSpore's CPU kernels (once per process). With the default,
    kernels pick their parallel split by timing their first launches, so float sums differ at
    the ulp level between runs and after a resume; with 1 thread they do not."""
    from mindspore._c_expression import RuntimeConf
    if RuntimeConf.get_instance().is_op_threads_num_configured():
        log.debug("CPU kernel threads already set in this process; system.cpu_threads=%d ignored", num)
        return
    ms.device_context.cpu.op_tuning.threads_num(num)


def amp_level(train_cfg, target: str) -> str:
    """The reference trains in O3 with a fixed loss scale on accelerators; CPU stays fp32."""
    if train_cfg.amp_level != "auto":
        return train_cfg.amp_level
    return "O0" if target == "CPU" else "O3"


def sink_mode(train_cfg, target: str) -> bool:
    if train_cfg.sink_mode == "auto":
        return target in ("Ascend", "GPU")
    return train_cfg.sink_mode == "on"
