"""core.native and core/kernels/build.sh: a native library counts as built only when it is newer
than its source and the header the kernel sources share (as build.sh decides), so a stale kernel
never runs; the suite runs with the libraries built; without a compiler users get a warning and
the fallback, while `make test` and CI stop."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core import native

from tests.paths import REPO


def test_a_library_older_than_its_source_or_the_shared_header_is_not_used(tmp_path, monkeypatch):
    source, header, library = tmp_path / "k.cc", tmp_path / "multi_isa.h", tmp_path / "libk.so"
    monkeypatch.setattr(native, "SHARED_HEADERS", (header,))
    assert native.built_library(library, source) is None  # not built
    for path, mtime in ((source, 100), (header, 100), (library, 200)):
        path.write_text("x")
        os.utime(path, (mtime, mtime))
    assert native.built_library(library, source) == library
    os.utime(source, (300, 300))
    assert native.built_library(library, source) is None
    os.utime(source, (100, 100))
    os.utime(header, (300, 300))
    assert native.built_library(library, source) is None


def test_the_real_libraries_are_built_current_and_load(native_kernels):
    """`make test` builds them (a missing compiler is an error there), so the native code paths
    are what the suite tests; without them this fails instead of skipping."""
    from core.nn import cpu_ops
    from core.data import jpeg_augment
    assert jpeg_augment.library_path() == jpeg_augment.LIBRARY, f"{jpeg_augment.LIBRARY} missing or stale"
    assert cpu_ops.built_variants() == list(native.host_variants()), "an ISA variant is missing or stale"
    assert cpu_ops.library_path() == native.variant_library("libmnv3_cpu_ops", native.host_variants()[0])
    assert native.startup_warning() is None


@pytest.fixture
def kernel_sources(tmp_path):
    """The kernel sources and build.sh in a scratch tree (with the modules build.sh asks about
    Pillow's libjpeg), no libraries built."""
    kernels = tmp_path / "core" / "kernels"
    shutil.copytree(native.KERNEL_DIR, kernels, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    for module in (REPO / "core").rglob("*.py"):  # build.sh imports core.data.jpeg_augment
        target = tmp_path / module.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(module, target)
    return kernels


def build_without_compiler(kernels, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(kernels / "build.sh"), sys.executable], capture_output=True,
                          text=True, timeout=120,
                          env={**os.environ, "CXX": "no-such-compiler", "MNV3_REQUIRE_KERNELS": "0", **env})


def test_without_a_compiler_users_get_a_warning_and_the_fallback(kernel_sources):
    result = build_without_compiler(kernel_sources)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and all(line.startswith("warning: ") for line in lines), lines
    assert "libmnv3_cpu_ops.so not built: C++ compiler no-such-compiler not found" in lines[0]
    assert "libmnv3_jpeg.so not built: C++ compiler no-such-compiler not found" in lines[1]
    assert not list(kernel_sources.glob("*.so"))


def test_without_a_compiler_make_test_and_ci_stop(kernel_sources):
    """MNV3_REQUIRE_KERNELS=1 (`make test`, .ci/run): untested fallback paths are not a pass."""
    result = build_without_compiler(kernel_sources, MNV3_REQUIRE_KERNELS="1")
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and all(line.startswith("error: ") for line in lines), lines
    assert "C++ compiler no-such-compiler not found" in lines[0] and "must be tested" in lines[0]
