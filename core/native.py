"""Where the project's native libraries live (core/kernels, built by core/kernels/build.sh via
`make kernels`) and whether a build is current. A library older than its source or the header
the sources share is ignored, as build.sh would rebuild it: a stale kernel never runs."""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Optional

KERNEL_DIR = Path(__file__).resolve().parent / "kernels"
SHARED_HEADERS = (KERNEL_DIR / "multi_isa.h", KERNEL_DIR / "build.sh")

# The CPU operators are built once per instruction set (build.sh), best first. A build for a
# wider ISA than the host has would fault on its first instruction; a narrower one runs, slower.
VARIANTS = {"x86_64": ("avx512", "avx2", "baseline"), "aarch64": ("neon",)}
# /proc/cpuinfo flags of the x86-64 micro-architecture levels the variants are compiled for
# (-march=x86-64-v4 / -v3; "abm" is how Linux names LZCNT)
_X86_LEVEL_FLAGS = {
    "avx512": {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl", "avx2", "fma", "bmi2"},
    "avx2": {"avx", "avx2", "fma", "bmi1", "bmi2", "f16c", "movbe", "abm", "xsave"},
    "baseline": set(),
}


def machine() -> str:
    name = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(name, name)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set:
    """The CPU's feature flags as Linux reports them (those the kernel enabled), empty elsewhere."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name with its x86 family and model numbers (a virtual machine may call
    two generations "AMD EPYC"), what benchmarks and the kernel choice record; else the machine."""
    fields = {}
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            name, _, value = line.partition(":")
            fields.setdefault(name.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or fields.get("Model name") or platform.processor() or machine()
    if "cpu family" in fields:
        name += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    return name


def host_variants(flags: Optional[set] = None) -> tuple:
    """The variants this CPU executes, best first (for an unknown architecture: "generic")."""
    arch = machine()
    if arch != "x86_64":
        return VARIANTS.get(arch, ("generic",))
    flags = cpu_flags() if flags is None else flags
    return tuple(v for v in VARIANTS["x86_64"] if _X86_LEVEL_FLAGS[v] <= flags)


def open_library(library: Path, source: Path, without: str):
    """ctypes handle of `library` if it is built, current and loads, else None; with the reason
    (None when loaded). A library that is built but does not load is logged once: the runner then
    does `without` (e.g. "uses MindSpore's ops")."""
    import ctypes
    import logging

    path = built_library(library, source)
    if path is None:
        return None, f"{library.name} is not built (make kernels)"
    try:
        return ctypes.CDLL(str(path)), None
    except OSError as exc:
        reason = f"{path} does not load ({exc}); rebuild it with make kernels"
        logging.getLogger("core.native").warning("%s; the runner %s", reason, without)
        return None, reason


def onednn_isa() -> str:
    """The instruction set MindSpore's oneDNN runs its CPU convolutions with (dnnl's ISA mask, as
    capped by the process's runtime settings), or "unknown": what MindSpore's side of the kernel
    choice depends on."""
    import ctypes

    try:
        import mindspore
        lib = ctypes.CDLL(str(Path(mindspore.__file__).parent / "lib" / "libdnnl.so.3"))
        return hex(lib.dnnl_get_effective_cpu_isa())
    except (OSError, AttributeError):
        return "unknown"


def variant_library(stem: str, variant: str) -> Path:
    return KERNEL_DIR / f"{stem}.{variant}.so"


def built_library(library: Path, source: Path) -> Optional[Path]:
    """`library` if it exists and is not older than `source` or the shared headers."""
    if not library.exists():
        return None
    built = library.stat().st_mtime
    if any(dep.exists() and dep.stat().st_mtime > built for dep in (source, *SHARED_HEADERS)):
        return None
    return library


# library -> (its source, what the runner does without it); the first has a build per variant
LIBRARIES = {
    "libmnv3_cpu_ops.so": ("cpu_ops.cc", "CPU convolutions use nn.Conv2d"),
    "libmnv3_jpeg.so": ("jpeg_augment.cc", "training images are decoded with MindSpore's ops"),
}


def startup_warning() -> Optional[str]:
    """One line for the start of a run when a native library is not built (or stale), e.g. in
    an image whose base had no compiler or whose architecture the build failed on; None when
    both are current. Results are the same without them, only slower."""
    import platform

    missing = [f"{name} ({effect})" for name, (source, effect) in LIBRARIES.items()
               if built_library(_host_file(name), KERNEL_DIR / source) is None]
    if not missing:
        return None
    return (f"native libraries not built for this {platform.machine()} host: {'; '.join(missing)}; "
            f"same results, slower (build: sh core/kernels/build.sh <python>, needs g++)")


def _host_file(name: str) -> Path:
    """The file of library `name` this host loads: the best variant it executes, for the
    per-ISA library."""
    if name == "libmnv3_cpu_ops.so":
        return variant_library("libmnv3_cpu_ops", host_variants()[0])
    return KERNEL_DIR / name
