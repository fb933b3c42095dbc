"""Where the project's native libraries live (core/kernels, built by core/kernels/build.sh via
`make kernels`) and whether a build is current. A library older than its source or the header
the sources share is ignored, as build.sh would rebuild it: a stale kernel never runs."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

KERNEL_DIR = Path(__file__).resolve().parent / "kernels"
SHARED_HEADERS = (KERNEL_DIR / "multi_isa.h",)


def built_library(library: Path, source: Path) -> Optional[Path]:
    """`library` if it exists and is not older than `source` or the shared headers."""
    if not library.exists():
        return None
    built = library.stat().st_mtime
    if any(dep.exists() and dep.stat().st_mtime > built for dep in (source, *SHARED_HEADERS)):
        return None
    return library


# library -> (its source, what the runner does without it)
LIBRARIES = {
    "libmnv3_depthwise.so": ("depthwise_conv.cc", "CPU convolutions use nn.Conv2d"),
    "libmnv3_jpeg.so": ("jpeg_augment.cc", "training images are decoded with MindSpore's ops"),
}


def startup_warning() -> Optional[str]:
    """One line for the start of a run when a native library is not built (or stale), e.g. in
    an image whose base had no compiler or whose architecture the build failed on; None when
    both are current. Results are the same without them, only slower."""
    import platform

    missing = [f"{name} ({effect})" for name, (source, effect) in LIBRARIES.items()
               if built_library(KERNEL_DIR / name, KERNEL_DIR / source) is None]
    if not missing:
        return None
    return (f"native libraries not built for this {platform.machine()} host: {'; '.join(missing)}; "
            f"same results, slower (build: sh core/kernels/build.sh <python>, needs g++)")
