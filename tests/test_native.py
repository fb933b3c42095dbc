"""core.native: a native library counts as built only when it is newer than its source and the
header the kernel sources share (as core/kernels/build.sh decides), so a stale kernel never runs."""
import os

from core import native


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


def test_the_real_libraries_are_current_after_make_kernels():
    from core import fast_conv, jpeg_augment
    for module in (fast_conv, jpeg_augment):
        if module.LIBRARY.exists():
            assert module.library_path() == module.LIBRARY, f"{module.LIBRARY} older than its sources"
