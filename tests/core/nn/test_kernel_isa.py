"""The custom CPU operators are built once per instruction set (core/kernels/build.sh): each
build this host executes passes the operator parity tests against MindSpore's own ops, not only
the best one (issue 23: an AVX2 build 20x slower than AVX-512 went unnoticed on AVX-512 hosts).
An AVX-512 host runs all three x86-64 builds. The standalone C++ harness
(tests/core/nn/test_kernel_variants.py) covers every entry point, aarch64 under emulation included."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core import native
from core.nn import cpu_ops

from tests.paths import REPO

# one forward-and-gradients comparison per operator family: kxk and 1x1 convs with BN and each
# activation (ConvBNAct units at the network's shapes), squeeze-excite (pool and scale), the
# batch's normalisation, the fused inference graph of a whole network
PARITY = ["tests/core/nn/test_fast_pointwise.py::test_conv_bn_act_unit_matches_native",
          "tests/core/nn/test_fast_elementwise.py::test_squeeze_excite_matches_native",
          "tests/core/nn/test_fast_elementwise.py::test_normalize_is_bit_identical",
          "tests/core/nn/test_fast_depthwise.py::test_matches_nn_conv2d",
          "tests/core/nn/test_fuse.py::test_fused_network_matches_the_network_as_built"]


def test_every_variant_this_cpu_executes_is_built():
    assert cpu_ops.built_variants() == list(native.host_variants())
    if native.machine() == "x86_64":
        assert native.host_variants()[-1] == "baseline"


def test_the_host_detection_reads_the_cpu_flags(tmp_path):
    """An AVX2-only CPU (Zen 3's flags, as /proc/cpuinfo lists them) gets avx2 then baseline."""
    if native.machine() != "x86_64":
        pytest.fail("this suite's variant tests are written for x86-64 hosts")
    zen3 = set("fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma bmi1 bmi2 f16c movbe abm xsave "
               "popcnt aes sha_ni".split())
    assert native.host_variants(zen3) == ("avx2", "baseline")
    assert native.host_variants(zen3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}) \
        == ("avx512", "avx2", "baseline")
    assert native.host_variants({"sse2"}) == ("baseline",)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu avx2 fma\n")
    assert native.cpu_flags(cpuinfo) == {"fpu", "avx2", "fma"}
    assert native.cpu_model(cpuinfo) == "AMD EPYC 7B13 (family 25, model 1)"


def test_a_variant_the_cpu_cannot_execute_is_one_clear_error(monkeypatch):
    from core.config import ConfigError
    monkeypatch.setattr(native, "host_variants", lambda flags=None: ("avx2", "baseline"))
    with pytest.raises(ConfigError, match=r"system.kernel_isa=avx512: this CPU .* does not execute it"):
        cpu_ops.select_variant("avx512")
    with pytest.raises(ConfigError, match="must be one of"):
        cpu_ops.select_variant("sse9")


@pytest.mark.parametrize("isa", [v for v in native.host_variants()[1:]] or ["none"])
def test_operator_parity_on_each_narrower_build(isa, tmp_path):
    """The parity tests again, in a process whose operators run on build `isa` (conftest's
    MNV3_TEST_KERNEL_ISA); the best build runs them in the suite itself."""
    if isa == "none":
        return  # one build only (aarch64): the suite itself tested it
    env = {**os.environ, "MNV3_TEST_KERNEL_ISA": isa}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                           "-o", "addopts=", *PARITY], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout


def test_the_forced_build_is_the_one_that_runs():
    """select_variant switches which library the operators call (what the parity runs above rely on)."""
    variants = native.host_variants()
    try:
        for isa in variants:
            cpu_ops.select_variant(isa)
            assert cpu_ops.library_path() == native.variant_library("libmnv3_cpu_ops", isa)
            op = cpu_ops.aot_op("DepthwiseFwd", lambda x, w: x)
            assert f"libmnv3_cpu_ops.{isa}.so:DepthwiseFwd" in str(op.func)
    finally:
        cpu_ops.select_variant("auto")
    assert cpu_ops.variant() == variants[0]


ONEDNN_PROBE = r"""
import launcher.openmp, os, numpy as np
import mindspore as ms
from mindspore import nn
ms.set_context(mode=ms.GRAPH_MODE); ms.set_device("CPU")
nn.Conv2d(8, 8, 3, pad_mode="pad", padding=1)(ms.Tensor(np.ones((1, 8, 8, 8), np.float32))).asnumpy()
print("cap=" + os.environ.get("ONEDNN_MAX_CPU_ISA", ""))
"""


def onednn_isa(env: dict) -> tuple:
    """(the cap the entry point left in the environment, the ISA MindSpore's oneDNN reports)."""
    proc = subprocess.run([sys.executable, "-c", ONEDNN_PROBE], cwd=REPO, capture_output=True, text=True,
                          env={**env, "ONEDNN_VERBOSE": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    [isa] = [line.split("isa:", 1)[1] for line in out.splitlines() if ",cpu,isa:" in line]
    [cap] = [line[4:] for line in out.splitlines() if line.startswith("cap=")]
    return cap, isa


def test_entry_points_cap_mindspores_onednn_at_avx2_and_keep_a_users_choice():
    """launcher.openmp caps oneDNN (MindSpore's own convs) at AVX2 on x86-64: its AVX-512 code
    for MindSpore's NCHW tensors was an order of magnitude slower (README "CPU speed")."""
    if native.machine() != "x86_64":
        pytest.fail("written for x86-64 hosts")
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")}
    cap, isa = onednn_isa(env)
    assert cap == "AVX2" and isa.strip() == "Intel AVX2", (cap, isa)
    cap, isa = onednn_isa({**env, "ONEDNN_MAX_CPU_ISA": "ALL"})
    assert cap == "ALL"
    if "avx512" in native.host_variants():
        assert "AVX-512" in isa, isa
