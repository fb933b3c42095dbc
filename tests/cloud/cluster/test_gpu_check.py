"""cloud.cluster.gpu_check: every branch of the device_target=GPU start-up check, with fake library
directories (empty files named like the CUDA libraries), a fake nvidia-smi and a fake nvcc."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cloud.cluster.gpu_check import (CUDA_LIBRARIES, Gpu, GpuRuntimeError, check_gpu_runtime,
                             default_library_dirs, gpus_from_libcuda, gpus_from_nvidia_smi,
                             ldconfig_cache)

from tests.paths import REPO
V100 = "0, Tesla V100-SXM2-32GB, 7.0, 535.104.05"


def lib_dir(path: Path, names=tuple(CUDA_LIBRARIES) + ("libcuda.so.1",), skip=()) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name in names:
        if name not in skip:
            (path / name).write_bytes(b"")
    return path


def executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + text)
    path.chmod(0o755)
    return path


def fake_smi(bin_dir: Path, lines: str = V100, code: int = 0, stderr: str = "") -> dict:
    """An environment whose PATH has only a fake nvidia-smi printing `lines`."""
    echo = "".join(f"echo '{line}'\n" for line in lines.splitlines())  # builtins only: PATH is bin_dir
    executable(bin_dir / "nvidia-smi",
               echo + (f'echo "{stderr}" >&2\n' if stderr else "") + f"exit {code}\n")
    return {"PATH": str(bin_dir)}


def check(tmp_path, env=None, skip=(), **kwargs):
    libs = lib_dir(tmp_path / "lib", skip=skip)
    env = fake_smi(tmp_path / "bin") if env is None else env
    return check_gpu_runtime(library_dirs=[libs], environ=env, **kwargs)


def error(tmp_path, **kwargs) -> str:
    with pytest.raises(GpuRuntimeError) as info:
        check(tmp_path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.startswith("device_target=GPU cannot run: ")
    return message


def test_everything_present_and_a_supported_gpu(tmp_path):
    libs = lib_dir(tmp_path / "lib", skip=("libcudart.so.11.0", "libcudnn.so.8"))
    (libs / "libcudart.so.11.6.55").write_bytes(b"")
    (libs / "libcudart.so.11.0").symlink_to("libcudart.so.11.6.55")
    (libs / "libcudnn.so.8.4.1").write_bytes(b"")
    (libs / "libcudnn.so.8").symlink_to("libcudnn.so.8.4.1")
    report = check_gpu_runtime(library_dirs=[libs], environ=fake_smi(tmp_path / "bin"))
    assert [(g.name, g.arch, g.driver) for g in report.gpus] == [
        ("Tesla V100-SXM2-32GB", "sm_70", "535.104.05")]
    assert (report.cuda_version, report.cudnn_version) == ("11.6", "8.4.1")
    assert set(report.libraries) == set(CUDA_LIBRARIES)
    assert report.warnings == []
    assert report.summary() == ("GPU runtime: CUDA 11.6, cuDNN 8.4.1, driver 535.104.05, 1 GPU(s): "
                                "0: Tesla V100-SXM2-32GB (sm_70)")


def test_missing_libraries_are_named_with_the_fix(tmp_path):
    message = error(tmp_path, skip=("libcudnn.so.8", "libnvrtc.so.11.2"))
    assert "missing libcudnn.so.8, libnvrtc.so.11.2:" in message
    assert "CUDA 11.6 or 11.1 with cuDNN 8" in message and "make docker-gpu" in message
    assert "libcudart" not in message


def test_cuda_12_and_cudnn_9_are_named_as_the_wrong_versions(tmp_path):
    libs = lib_dir(tmp_path / "lib12", names=("libcudart.so.12", "libcudnn.so.9", "libcublas.so.12",
                                              "libcuda.so.1"))
    with pytest.raises(GpuRuntimeError) as info:
        check_gpu_runtime(library_dirs=[libs], environ=fake_smi(tmp_path / "bin"))
    message = str(info.value)
    assert "missing libcudart.so.11.0, libcublas.so.11," in message
    assert "(found libcudart.so.12, libcudnn.so.9 instead)" in message


def test_no_driver_in_the_container(tmp_path):
    message = error(tmp_path, skip=("libcuda.so.1",))
    assert "no NVIDIA driver in the container (libcuda.so.1 not found)" in message
    assert "--gpus all" in message and "missing" not in message


@pytest.mark.parametrize("line, arch", [("0, NVIDIA H100 80GB HBM3, 9.0, 550.54.15", "sm_90"),
                                        ("0, NVIDIA B200, 10.0, 570.86.10", "sm_100")])
def test_hopper_and_newer_are_refused(tmp_path, line, arch):
    message = error(tmp_path, env=fake_smi(tmp_path / "bin", V100 + "\n" + line.replace("0,", "1,", 1)))
    assert f"GPU 1 {line.split(', ')[1]} ({arch}) is not supported" in message
    assert "stop at sm_86" in message and "V100" in message and "GPU 0" not in message


def test_gpus_older_than_pascal_are_refused(tmp_path):
    message = error(tmp_path, env=fake_smi(tmp_path / "bin", "0, Tesla K80, 3.7, 470.82.01"))
    assert "GPU 0 Tesla K80 (sm_37) is too old" in message


def test_ada_gets_a_warning_not_an_error(tmp_path):
    report = check(tmp_path, env=fake_smi(tmp_path / "bin", "0, NVIDIA L4, 8.9, 535.104.05"))
    assert report.gpus[0].arch == "sm_89"
    assert len(report.warnings) == 1 and "JIT-compiled from sm_86 PTX" in report.warnings[0]


def test_an_old_driver_is_named(tmp_path):
    message = error(tmp_path, env=fake_smi(tmp_path / "bin", "0, Tesla V100-SXM2-16GB, 7.0, 418.87.01\n"
                                                            "1, Tesla V100-SXM2-16GB, 7.0, 418.87.01"))
    assert message.count("NVIDIA driver 418.87.01 is too old for CUDA 11") == 1  # once, not per GPU


def test_no_gpu_visible(tmp_path):
    assert "no GPU visible to the container" in error(tmp_path, env=fake_smi(tmp_path / "bin", ""))


def test_nvidia_smi_failing_reports_the_driver_problem(tmp_path):
    env = fake_smi(tmp_path / "bin", "", code=9,
                   stderr="NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.")
    message = error(tmp_path, env=env)
    assert "nvidia-smi failed: NVIDIA-SMI has failed because it couldn't communicate" in message
    assert "NVIDIA container runtime" in message


def test_nvidia_smi_without_compute_cap_falls_back_to_libcuda(tmp_path):
    """Older drivers' nvidia-smi refuses the field; the (here empty, so unloadable) libcuda is
    tried next, and the check warns that the GPU models were not checked."""
    env = fake_smi(tmp_path / "bin", 'Field "compute_cap" is not a valid field to query.', code=2)
    assert gpus_from_nvidia_smi(env) is None
    report = check(tmp_path, env=env)
    assert report.gpus == [] and "could not list the GPUs" in report.warnings[0]


def test_libcuda_listing_needs_a_loadable_library(tmp_path):
    assert gpus_from_libcuda(None) is None
    assert gpus_from_libcuda(lib_dir(tmp_path / "lib", names=("libcuda.so.1",)) / "libcuda.so.1") is None


def test_no_nvidia_smi_and_no_usable_libcuda_is_a_warning(tmp_path):
    report = check(tmp_path, env={"PATH": str(tmp_path / "empty")})
    assert "could not list the GPUs" in report.warnings[0]


def test_injected_gpu_list(tmp_path):
    report = check(tmp_path, list_gpus=lambda: [Gpu(0, "NVIDIA A100-SXM4-40GB", (8, 0))])
    assert report.gpus[0].arch == "sm_80" and report.warnings == []
    message = error(tmp_path, list_gpus=lambda: [Gpu(3, "NVIDIA H200", (9, 0))])
    assert "GPU 3 NVIDIA H200 (sm_90) is not supported" in message


def test_cuda_home_without_nvcc_stops_mindspore_loading_the_plugin(tmp_path):
    env = dict(fake_smi(tmp_path / "bin"), CUDA_HOME=str(tmp_path / "cuda"))
    message = error(tmp_path, env=env)
    assert f"CUDA_HOME={tmp_path / 'cuda'} has no bin/nvcc" in message and "unset CUDA_HOME" in message


@pytest.mark.parametrize("release, ok", [("11.6", True), ("11.8", True), ("12.2", False), ("11.0", False)])
def test_cuda_home_nvcc_version(tmp_path, release, ok):
    executable(tmp_path / "cuda" / "bin" / "nvcc",
               f"echo 'nvcc: NVIDIA (R) Cuda compiler driver'\n"
               f"echo 'Cuda compilation tools, release {release}, V{release}.100'\n")
    env = dict(fake_smi(tmp_path / "bin"), CUDA_HOME=str(tmp_path / "cuda"))
    if ok:
        assert check(tmp_path, env=env).gpus
    else:
        assert f"is CUDA {release} (nvcc)" in error(tmp_path, env=env)


def test_every_problem_in_one_line(tmp_path):
    env = dict(fake_smi(tmp_path / "bin", "0, NVIDIA H100 PCIe, 9.0, 550.54.15"),
               CUDA_HOME=str(tmp_path / "none"))
    message = error(tmp_path, env=env, skip=("libcudnn.so.8",))
    assert message.index("missing libcudnn.so.8") < message.index("CUDA_HOME") < message.index("sm_90")
    assert message.endswith("or put those libraries' directories on LD_LIBRARY_PATH")


def test_default_search_uses_ld_library_path_and_the_ldconfig_cache(tmp_path):
    libs = lib_dir(tmp_path / "lib", skip=("libcuda.so.1",))
    driver = lib_dir(tmp_path / "driver", names=("libcuda.so.1",)) / "libcuda.so.1"
    env = dict(fake_smi(tmp_path / "bin"), LD_LIBRARY_PATH=f"{tmp_path / 'nowhere'}:{libs}")
    assert default_library_dirs(env)[:2] == [tmp_path / "nowhere", libs]
    report = check_gpu_runtime(environ=env, ldconfig=lambda: {"libcuda.so.1": driver})
    assert report.libraries["libcudart.so.11.0"] == libs / "libcudart.so.11.0"
    # without the cache entry the driver is missing (this machine has no NVIDIA driver)
    with pytest.raises(GpuRuntimeError, match="no NVIDIA driver"):
        check_gpu_runtime(environ=env, ldconfig=lambda: {})


def test_ldconfig_cache_reads_the_real_loader_cache():
    cache = ldconfig_cache()
    assert "libc.so.6" in cache and cache["libc.so.6"].exists()


def test_a_gpu_error_is_a_one_line_user_error(tmp_path):
    """The launchers' run_main prints it as `error: ...` and exits 2, no traceback."""
    code = ("import sys\nfrom launcher.common import run_main\nfrom cloud.cluster.gpu_check import check_gpu_runtime\n"
            f"sys.exit(run_main(lambda argv: check_gpu_runtime(library_dirs=[{str(tmp_path)!r}], "
            "environ={'PATH': ''}), []))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: device_target=GPU cannot run: missing "
                                                   "libcudart.so.11.0"), result.stderr
