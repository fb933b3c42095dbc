"""The README's CPU-runnable commands, run as written, in order, in a fresh copy of the project
(issue 26): an example that stops working fails `make test`.

Which commands run is marked in README.md itself: an HTML comment (invisible when rendered)

    <!-- readme-test: run 1,3 -->

right before a ```bash block runs that block's commands 1 and 3 (counted from 1, a command
being a line not starting with `#`, with its `\\` continuation lines); `run` alone runs them all.
`<!-- readme-test: run 1,2; /data/flowers: a small ImageFolder -->` also stands a small real
ImageFolder (3 classes of JPEGs) in for the user's data path. Everything else (cloud,
accelerators, weights the project does not have) is left out by not being marked. The commands
run as written, except:

- `.venv/bin/python` is this interpreter; `make demo` runs the Makefile's demo recipe;
- `train ...` (the README's "the same arguments as above") is the block's previous train command;
- every `launcher/local.py train` gets `train.max_steps=2` appended (small step counts: a key=value
  override anywhere on the line, last one wins);
- image arguments (`*.jpg`) that do not exist are copied from the demo's validation images, as a
  user would have their own photos.

The copy holds core/, cloud/, launcher/, configs/ (the native libraries built in core/kernels
included), with a cache folder of its own ($MNV3_CACHE_DIR: the demo dataset is generated there
on first use, as in a fresh clone).
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.paths import REPO
MARK = re.compile(r"^<!-- readme-test: run(?: ([0-9, ]+))?(?:; (\S+): a small ImageFolder)? -->\s*$")
SMALL_TRAIN = ["train.max_steps=2"]


def marked_commands(readme: str) -> list[str]:
    """The marked commands of README.md in order (a data path standing in for the user's is
    written `<path>` in front: see substitute); a marker not followed by a bash block or naming
    a command the block does not have is an error (the marks must stay true)."""
    lines = readme.splitlines()
    selected = []
    for i, line in enumerate(lines):
        match = MARK.match(line)
        if not match:
            continue
        assert i + 1 < len(lines) and lines[i + 1].strip() == "```bash", \
            f"README line {i + 1}: a readme-test mark must stand right before a ```bash block"
        block = []
        for body in lines[i + 2:]:
            if body.strip() == "```":
                break
            block.append(body)
        commands, current = [], ""
        for body in block:
            text = body.strip()
            if not current and (not text or text.startswith("#")):
                continue
            current += " " + text.rstrip("\\").strip() if current else text.rstrip("\\").strip()
            if not text.endswith("\\"):
                commands.append(_strip_comment(current))
                current = ""
        wanted = ([int(n) for n in match.group(1).replace(" ", "").split(",") if n]
                  if match.group(1) else list(range(1, len(commands) + 1)))
        for n in wanted:
            assert 1 <= n <= len(commands), f"README line {i + 1}: the block has no command {n}"
            data = match.group(2)
            selected.append(f"<{data}> {commands[n - 1]}" if data else commands[n - 1])
    return selected


def _strip_comment(command: str) -> str:
    return re.split(r"\s+#\s", command, maxsplit=1)[0].strip()


def makefile_recipe(target: str) -> list[str]:
    text = (REPO / "Makefile").read_text()
    variables = dict(re.findall(r"^(\w+)\s*\??:?=\s*(.*?)\s*$", text, re.M))
    recipe = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", text, re.M).group(1)
    commands = []
    for line in recipe.splitlines():
        line = line.strip()
        if line.startswith("@"):
            continue  # echo lines
        line = line.replace("$(PY)", ".venv/bin/python")
        line = re.sub(r"\$\((\w+)\)", lambda m: variables[m.group(1)], line)
        commands.append(line)
    return commands


def fresh_copy(dest: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "rank_0", "*.tmp.*")
    for name in ("core", "cloud", "launcher", "configs"):
        shutil.copytree(REPO / name, dest / name, ignore=ignore)
    for name in ("README.md", "requirements.txt"):
        shutil.copy2(REPO / name, dest / name)
    return dest


def argv_of(command: str, workdir: Path, previous: dict) -> list[str]:
    argv = shlex.split(command)
    if argv[0].startswith("<") and argv[0].endswith(">"):  # the user's data path: a small set
        from tests.core_fixtures import colour_dataset
        path = argv.pop(0)[1:-1]
        data = workdir / "user-data"
        if not data.exists():
            colour_dataset(data)
        argv = [str(data) if a == path else a for a in argv]
    if argv[0] == ".venv/bin/python":
        argv[0] = sys.executable
    if "..." in argv:
        at = argv.index("...")
        argv[at:at + 1] = previous[tuple(argv[1:at])]
    if len(argv) > 2:
        previous[tuple(argv[1:3])] = argv[3:]
    if len(argv) > 2 and argv[1] == "launcher/local.py" and argv[2] == "train":
        argv += SMALL_TRAIN
    for arg in argv:
        if arg.lower().endswith(".jpg") and not (workdir / arg).exists():
            source = sorted((workdir / "cache" / "demo_dataset_v1" / "val").rglob("*.jpg"))
            shutil.copy2(source[len(arg) % len(source)], workdir / arg)
    return argv


def test_marks_select_the_cpu_commands():
    """The marks select what they should: commands, not comments, continuation lines joined."""
    readme = ("text\n<!-- readme-test: run 2 -->\n```bash\n# comment\nrun one \\\n    --flag x\n"
              "run two   # trailing comment\n```\n<!-- readme-test: run -->\n```bash\na\nb\n```\n")
    assert marked_commands(readme) == ["run two", "a", "b"]
    assert marked_commands("<!-- readme-test: run 1; /d/x: a small ImageFolder -->\n```bash\n"
                           "p --data /d/x\n```\n") == ["</d/x> p --data /d/x"]
    with pytest.raises(AssertionError, match="no command 3"):
        marked_commands("<!-- readme-test: run 3 -->\n```bash\na\n```\n")
    commands = marked_commands((REPO / "README.md").read_text())
    assert "make demo" in commands and any("--nproc 2" in c for c in commands)
    assert any(c.startswith("</data/flowers> ") and "--resume auto" in c for c in commands)


def test_readme_commands_run_in_a_fresh_copy(tmp_path):
    workdir = fresh_copy(tmp_path / "project")
    env = dict(os.environ, MNV3_CACHE_DIR=str(workdir / "cache"), PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)
    ran, previous = [], {}
    for command in marked_commands((REPO / "README.md").read_text()):
        steps = makefile_recipe("demo") if command == "make demo" else [command]
        for step in steps:
            argv = argv_of(step, workdir, previous)
            result = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True,
                                    timeout=600)
            assert result.returncode == 0, (f"README command failed: {step}\n"
                                            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
            ran.append((step, result.stdout))
    assert len(ran) >= 6, [step for step, _ in ran]
    # what the commands say they leave behind is there
    assert (workdir / "runs" / "cpu_demo" / "eval.json").is_file()
    assert (workdir / "runs" / "flowers" / "export" / "mobilenetv3_small.onnx").is_file()
    assert (workdir / "runs" / "cpu_demo" / "export" / "mobilenetv3_small.onnx.card.json").is_file()
    assert (workdir / "runs" / "cpu_demo_2p" / "summary.json").is_file()
    assert (workdir / "runs" / "cpu_demo" / "report" / "report.md").is_file()
    assert "a.jpg" in ran[-1][1] and "b.jpg" in ran[-1][1]
