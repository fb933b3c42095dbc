"""Start-up check for device_target=GPU: one line naming what is missing instead of MindSpore's
stack trace ("Create device context failed ...") minutes into a job.

MindSpore 2.10's GPU plugin (mindspore/lib/plugin/libmindspore_gpu.so.11.6 or .11.1) loads only
when the dynamic loader finds CUDA 11 and cuDNN 8 (the sonames in CUDA_LIBRARIES) and the NVIDIA
driver (libcuda.so.1). Its kernels (plugin/gpu/libcuda_ops.so.11) are compiled for sm_60, 61, 70,
75, 80, with PTX for compute_60 and compute_86: Pascal to Ampere. Nothing for Hopper (sm_90,
H100/H200) or newer, and CUDA 11.6 predates Ada (sm_89: PTX only, a warning). With CUDA_HOME set,
MindSpore picks the plugin by running $CUDA_HOME/bin/nvcc and loads none when that is missing or
reports another major version.

    from cloud.cluster.gpu_check import check_gpu_runtime, GpuRuntimeError
    report = check_gpu_runtime()      # raises GpuRuntimeError (one line) when GPU cannot work
    log.info("%s", report.summary())  # e.g. "GPU runtime: CUDA 11.6, cuDNN 8.4.1, driver ..."
    for w in report.warnings: log.warning("%s", w)

Every input is injectable for tests: the directories searched, the ldconfig cache, the GPU list,
the environment (PATH for nvidia-smi and nvcc, LD_LIBRARY_PATH, CUDA_HOME).
"""
from __future__ import annotations

import ctypes
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence

# soname -> what it is, as MindSpore 2.10's libmindspore_gpu.so.11.6 needs them (readelf -d)
CUDA_LIBRARIES = {
    "libcudart.so.11.0": "CUDA 11 runtime",
    "libcublas.so.11": "cuBLAS 11",
    "libcublasLt.so.11": "cuBLASLt 11",
    "libcudnn.so.8": "cuDNN 8",
    "libnvrtc.so.11.2": "NVRTC 11.2+",
    "libcurand.so.10": "cuRAND (CUDA 11)",
    "libcufft.so.10": "cuFFT (CUDA 11)",
    "libcusolver.so.11": "cuSOLVER 11",
    "libcusparse.so.11": "cuSPARSE 11",
}
DRIVER_LIBRARY = "libcuda.so.1"
MIN_CAPABILITY = (6, 0)       # oldest SASS in MindSpore 2.10's GPU kernels
NEWEST_NATIVE = (8, 6)        # newest arch with kernels (sm_80 SASS, compute_86 PTX)
UNSUPPORTED_FROM = (9, 0)     # Hopper and newer: no kernels, CUDA 11.6 cannot target them
MIN_DRIVER = (450, 80, 2)     # CUDA 11.x minor-version compatibility needs at least this
PLUGIN_CUDA = ("11.6", "11.1")
FIX = ("use the image's gpu target (make docker-gpu: CUDA 11.6 + cuDNN 8) or a CUDA 11.6 + "
       "cuDNN 8 base, or put those libraries' directories on LD_LIBRARY_PATH")
GPUS_THAT_WORK = "Pascal to Ampere, sm_60-sm_86: P100, V100, T4, A100, A10, A30, A40, RTX 20xx/30xx"


class GpuRuntimeError(RuntimeError):
    """device_target=GPU cannot work here; the message is one line: what is missing, the fix."""


@dataclass
class Gpu:
    index: int
    name: str
    capability: tuple[int, int]
    driver: Optional[str] = None

    @property
    def arch(self) -> str:
        return f"sm_{self.capability[0]}{self.capability[1]}"


@dataclass
class GpuRuntime:
    """What check_gpu_runtime found (when nothing was missing)."""

    libraries: dict            # soname -> Path
    gpus: list
    cuda_version: Optional[str] = None    # from libcudart's file name, e.g. "11.6"
    cudnn_version: Optional[str] = None   # from libcudnn's file name, e.g. "8.4.1"
    warnings: list = field(default_factory=list)

    def summary(self) -> str:
        driver = next((g.driver for g in self.gpus if g.driver), None)
        gpus = ", ".join(f"{g.index}: {g.name} ({g.arch})" for g in self.gpus)
        return (f"GPU runtime: CUDA {self.cuda_version or '11 (version unknown)'}, "
                f"cuDNN {self.cudnn_version or '8 (version unknown)'}, driver {driver or 'unknown'}, "
                f"{len(self.gpus)} GPU(s): {gpus}")


# --- finding libraries -------------------------------------------------------------------------


def default_library_dirs(environ: Mapping[str, str]) -> list[Path]:
    """The dynamic loader's order, roughly: LD_LIBRARY_PATH, then the usual system dirs (the
    ldconfig cache is searched separately)."""
    dirs = [Path(d) for d in environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    machine = platform.machine()
    multiarch = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}.get(machine, "")
    for base in ("/lib", "/usr/lib", "/usr/local/lib"):
        if multiarch:
            dirs.append(Path(base) / multiarch)
        dirs.append(Path(base))
    dirs += [Path("/lib64"), Path("/usr/lib64"), Path("/usr/local/cuda/lib64"),
             Path("/usr/local/nvidia/lib64"), Path("/usr/local/nvidia/lib")]
    return dirs


def ldconfig_cache() -> dict:
    """soname -> path from `ldconfig -p` ({} when ldconfig is absent or fails)."""
    ldconfig = shutil.which("ldconfig") or next(
        (p for p in ("/sbin/ldconfig", "/usr/sbin/ldconfig") if os.path.exists(p)), None)
    if not ldconfig:
        return {}
    try:
        out = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    found = {}
    for line in out.splitlines():
        m = re.match(r"\s*(\S+)\s+\(([^)]*)\)\s+=>\s+(\S+)", line)
        if m and m.group(1) not in found:
            found[m.group(1)] = Path(m.group(3))
    return found


class LibraryFinder:
    def __init__(self, dirs: Sequence[Path], cache: Mapping[str, Path]):
        self.dirs = [Path(d) for d in dirs]
        self.cache = dict(cache)

    def find(self, soname: str) -> Optional[Path]:
        for d in self.dirs:
            if (d / soname).exists():
                return d / soname
        path = self.cache.get(soname)
        return Path(path) if path is not None else None

    def others(self, stem: str) -> list[str]:
        """Other versions present, e.g. stem "libcudart.so" -> ["libcudart.so.12"]."""
        names = set(n for n in self.cache if n.startswith(stem + "."))
        for d in self.dirs:
            try:
                names.update(p.name for p in d.glob(stem + ".*"))
            except OSError:
                continue
        return sorted(n for n in names if re.fullmatch(re.escape(stem) + r"\.\d+", n))


def file_version(path: Optional[Path], stem: str) -> Optional[str]:
    """"11.6" for .../libcudart.so.11.0 -> libcudart.so.11.6.55 (the real file's name)."""
    if path is None:
        return None
    m = re.fullmatch(re.escape(stem) + r"\.(\d+)\.(\d+)(?:\.(\d+))?.*", Path(os.path.realpath(path)).name)
    if not m:
        return None
    return ".".join(g for g in m.groups() if g is not None)


# --- GPUs --------------------------------------------------------------------------------------


def parse_capability(text: str) -> Optional[tuple[int, int]]:
    m = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def gpus_from_nvidia_smi(environ: Mapping[str, str]) -> Optional[list]:
    """GPUs from `nvidia-smi` (on PATH, or /usr/bin, /usr/local/nvidia/bin); None when it is
    absent or cannot report compute capabilities (older drivers); raises GpuRuntimeError
    when it runs but fails (a driver problem it explains)."""
    search = os.pathsep.join([environ.get("PATH", ""), "/usr/bin", "/usr/local/nvidia/bin"])
    smi = shutil.which("nvidia-smi", path=search)
    if not smi:
        return None
    try:
        result = subprocess.run([smi, "--query-gpu=index,name,compute_cap,driver_version",
                                 "--format=csv,noheader"], capture_output=True, text=True,
                                timeout=30, env=dict(environ))
    except (OSError, subprocess.SubprocessError) as exc:
        raise GpuRuntimeError(f"nvidia-smi failed ({exc}): check the GPU node's NVIDIA driver") from None
    if result.returncode != 0:
        text = " ".join((result.stdout + " " + result.stderr).split())
        if "compute_cap" in text:  # "Field "compute_cap" is not a valid field to query."
            return None
        raise GpuRuntimeError(f"nvidia-smi failed: {text[:200] or 'exit ' + str(result.returncode)}; "
                              "the container has no working NVIDIA driver (run it with the NVIDIA "
                              "container runtime, e.g. docker run --gpus all, on a GPU node)")
    gpus = []
    for line in result.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 3 or not parts[0].isdigit():
            continue
        capability = parse_capability(parts[2])
        if capability is None:
            continue
        gpus.append(Gpu(int(parts[0]), parts[1], capability, parts[3] if len(parts) > 3 else None))
    return gpus


def gpus_from_libcuda(path: Optional[Path]) -> Optional[list]:
    """GPUs from the driver library itself (cuInit, cuDeviceGetAttribute); None when it does
    not load; raises GpuRuntimeError when cuInit fails (no device, driver/library mismatch)."""
    if path is None:
        return None
    try:
        cuda = ctypes.CDLL(str(path))
    except OSError:
        return None
    status = cuda.cuInit(0)
    if status == 100:  # CUDA_ERROR_NO_DEVICE
        return []
    if status != 0:
        raise GpuRuntimeError(f"the NVIDIA driver ({path}) does not initialise (CUresult {status}): "
                              "check that the container runs with the NVIDIA container runtime "
                              "and that the driver matches its kernel module")
    count, version = ctypes.c_int(0), ctypes.c_int(0)
    cuda.cuDeviceGetCount(ctypes.byref(count))
    cuda.cuDriverGetVersion(ctypes.byref(version))
    gpus = []
    for i in range(count.value):
        dev, major, minor = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
        name = ctypes.create_string_buffer(256)
        cuda.cuDeviceGet(ctypes.byref(dev), i)
        cuda.cuDeviceGetName(name, 256, dev)
        cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, dev)  # COMPUTE_CAPABILITY_MAJOR
        cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev)  # COMPUTE_CAPABILITY_MINOR
        gpus.append(Gpu(i, name.value.decode(errors="replace"), (major.value, minor.value),
                        f"CUDA {version.value // 1000}.{version.value % 1000 // 10}"))
    return gpus


def driver_tuple(text: Optional[str]) -> Optional[tuple]:
    if not text or not re.fullmatch(r"\d+(\.\d+)*", text.strip()):
        return None
    return tuple(int(p) for p in text.strip().split("."))


# --- nvcc (only when CUDA_HOME is set) ---------------------------------------------------------


def nvcc_problem(cuda_home: str) -> Optional[str]:
    """Why MindSpore would load no GPU plugin with this CUDA_HOME, or None."""
    nvcc = Path(cuda_home) / "bin" / "nvcc"
    if not os.access(nvcc, os.X_OK):
        return (f"CUDA_HOME={cuda_home} has no bin/nvcc, so MindSpore loads no GPU plugin: "
                f"unset CUDA_HOME (a runtime image needs none) or point it at a CUDA 11.6 toolkit")
    try:
        out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"CUDA_HOME={cuda_home}: bin/nvcc does not run ({exc}): unset CUDA_HOME or fix it"
    m = re.search(r"release (\d+)\.(\d+)", out)
    if not m:
        return f"CUDA_HOME={cuda_home}: bin/nvcc reports no CUDA release: unset CUDA_HOME or fix it"
    major, minor = int(m.group(1)), int(m.group(2))
    if major != 11 or minor < 1:
        return (f"CUDA_HOME={cuda_home} is CUDA {major}.{minor} (nvcc), but MindSpore 2.10's GPU "
                f"plugin is for CUDA {' or '.join(PLUGIN_CUDA)}: point CUDA_HOME at CUDA 11.6 or unset it")
    return None


# --- the check ---------------------------------------------------------------------------------


def cuda_libraries(finder: LibraryFinder, problems: list) -> tuple[dict, list]:
    """The CUDA 11 / cuDNN 8 user-space libraries: soname -> path (or None), and the missing."""
    found = {name: finder.find(name) for name in CUDA_LIBRARIES}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        wrong = []
        if found["libcudart.so.11.0"] is None:
            wrong += finder.others("libcudart.so")
        if found["libcudnn.so.8"] is None:
            wrong += finder.others("libcudnn.so")
        seen = f" (found {', '.join(wrong)} instead)" if wrong else ""
        problems.append(f"missing {', '.join(missing)}{seen}: MindSpore 2.10's GPU plugin needs "
                        f"CUDA {' or '.join(PLUGIN_CUDA)} with cuDNN 8")
    return found, missing


def visible_gpus(finder: LibraryFinder, list_gpus, environ: Mapping[str, str], problems: list,
                 warnings: list) -> list:
    """The driver and the GPUs it shows ([] when there is none or they cannot be listed)."""
    driver = finder.find(DRIVER_LIBRARY)
    if list_gpus is None:
        def list_gpus():
            gpus = gpus_from_nvidia_smi(environ)
            return gpus if gpus is not None else gpus_from_libcuda(driver)
    if driver is None:
        problems.append(f"no NVIDIA driver in the container ({DRIVER_LIBRARY} not found): run it with "
                        f"the NVIDIA container runtime (docker run --gpus all) on a GPU node")
        return []
    try:
        gpus = list_gpus()
    except GpuRuntimeError as exc:
        problems.append(str(exc))
        return []
    if gpus is None:
        warnings.append("could not list the GPUs (no nvidia-smi, libcuda does not load): "
                        "GPU models not checked")
        return []
    if not gpus:
        problems.append("no GPU visible to the container: check the job's GPU flavour and "
                        "NVIDIA_VISIBLE_DEVICES")
    return gpus


def check_gpu(gpu: Gpu, problems: list, warnings: list) -> None:
    """One GPU against the architectures MindSpore 2.10's kernels cover, and its driver."""
    if gpu.capability >= UNSUPPORTED_FROM:
        problems.append(f"GPU {gpu.index} {gpu.name} ({gpu.arch}) is not supported: MindSpore "
                        f"2.10's GPU kernels stop at sm_86 (CUDA 11.6 cannot build for sm_90+); "
                        f"use {GPUS_THAT_WORK}, or Ascend")
    elif gpu.capability < MIN_CAPABILITY:
        problems.append(f"GPU {gpu.index} {gpu.name} ({gpu.arch}) is too old: MindSpore 2.10's "
                        f"GPU kernels start at sm_60; use {GPUS_THAT_WORK}")
    elif gpu.capability > NEWEST_NATIVE:
        warnings.append(f"GPU {gpu.index} {gpu.name} ({gpu.arch}) has no native MindSpore "
                        f"kernels: they are JIT-compiled from sm_86 PTX (untested; slower start)")
    version = driver_tuple(gpu.driver)
    if version is not None and version < MIN_DRIVER:
        problems.append(f"NVIDIA driver {gpu.driver} is too old for CUDA 11 (needs "
                        f"{'.'.join(str(v) for v in MIN_DRIVER)} or newer): update the node's driver")


def check_gpu_runtime(*, library_dirs: Optional[Iterable] = None,
                      ldconfig: Optional[Callable[[], Mapping[str, Path]]] = None,
                      list_gpus: Optional[Callable[[], Optional[list]]] = None,
                      environ: Optional[Mapping[str, str]] = None) -> GpuRuntime:
    """Raise GpuRuntimeError (one line: every problem found, then the fix) unless MindSpore
    2.10's GPU plugin can load here and every visible GPU is one its kernels support.

    library_dirs: where the libraries may be (default: LD_LIBRARY_PATH and the system dirs);
    ldconfig: soname -> path of the loader cache (default `ldconfig -p`; with library_dirs given
    and ldconfig not, none is used); list_gpus: returns [Gpu] or None when GPUs cannot be listed
    (default: nvidia-smi, then libcuda); environ: default os.environ.
    """
    environ = os.environ if environ is None else environ
    if library_dirs is None:
        dirs = default_library_dirs(environ)
        cache = (ldconfig or ldconfig_cache)()
    else:
        dirs = [Path(d) for d in library_dirs]
        cache = ldconfig() if ldconfig else {}
    finder = LibraryFinder(dirs, cache)
    problems: list[str] = []
    warnings: list[str] = []
    found, missing = cuda_libraries(finder, problems)
    cuda_home = environ.get("CUDA_HOME")
    if cuda_home:
        problem = nvcc_problem(cuda_home)
        if problem:
            problems.append(problem)
    gpus = visible_gpus(finder, list_gpus, environ, problems, warnings)
    for gpu in gpus:
        check_gpu(gpu, problems, warnings)
    if problems:
        unique = list(dict.fromkeys(problems))
        fix = f"; fix: {FIX}" if missing else ""
        raise GpuRuntimeError("device_target=GPU cannot run: " + "; ".join(unique) + fix)
    cuda_version = file_version(found["libcudart.so.11.0"], "libcudart.so")
    cuda_version = ".".join(cuda_version.split(".")[:2]) if cuda_version else None
    cudnn_version = file_version(found["libcudnn.so.8"], "libcudnn.so")
    return GpuRuntime({k: v for k, v in found.items() if v is not None}, gpus, cuda_version,
                      cudnn_version, warnings)
