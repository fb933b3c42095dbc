import launcher.openmp  # noqa: F401  (OMP_WAIT_POLICY before MindSpore loads libgomp)
import pytest

pytest_plugins = ["tests.s3_server", "tests.core_fixtures"]


def pytest_configure(config):
    """MNV3_TEST_KERNEL_ISA=avx2 (or baseline, ...) runs the session's custom operators on that
    instruction-set build of the kernel library: tests/core/nn/test_kernel_isa.py reruns the parity
    tests that way on every build this host executes, so an AVX2 or baseline path cannot hide
    behind an AVX-512 development machine."""
    import os
    isa = os.environ.get("MNV3_TEST_KERNEL_ISA")
    if isa:
        from core.nn import cpu_ops
        cpu_ops.select_variant(isa)


@pytest.fixture(autouse=True)
def _kernel_choice_per_test():
    """A test that ran core.device.configure (in this process) leaves the host's measured kernel
    choice in core.nn.cpu_ops; the next test starts from every custom operator again."""
    yield
    from core.nn import cpu_ops
    cpu_ops.prefer_native(())
