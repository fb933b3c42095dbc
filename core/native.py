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
