"""The layers, checked: import-linter's contracts in .importlinter hold for the tree, and each
kind of forbidden import breaks them (shown on a copy of the tree)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.paths import REPO
PACKAGES = ("core", "cloud", "launcher", "bench", "tests")
LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([LINT_IMPORTS, "--no-cache"], cwd=root, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=str(root)))


def test_the_tree_keeps_every_contract():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "7 kept, 0 broken" in result.stdout


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory) -> Path:
    """The Python sources and the contracts, without data, caches or the venv."""
    root = tmp_path_factory.mktemp("tree")
    for package in PACKAGES:
        shutil.copytree(REPO / package, root / package,
                        ignore=shutil.ignore_patterns("__pycache__", "results", "fixtures", "*.so",
                                                      ".venv*"))
    shutil.copy(REPO / ".importlinter", root / ".importlinter")
    return root


@pytest.mark.parametrize("module, line, broken", [
    ("core/nn/model.py", "import cloud.storage.store", "core knows neither cloud nor launcher"),
    ("core/train/loop.py", "from launcher import runner", "Layers: launcher above cloud above core"),
    ("cloud/storage/sync.py", "import launcher.common", "Layers: launcher above cloud above core"),
    ("launcher/runner.py", "import tests.core_fixtures", "Product code imports neither bench nor tests"),
    ("bench/bench_depthwise.py", "import tests.core_fixtures", "Benchmarks import no test code"),
    ("core/data/pipeline.py", "import core.train.loop", "No import cycles between the modules of a package"),
    ("core/nn/model.py", "import core.data.pipeline", "core: train above infer above nn and data (independent)"),
    ("core/infer/evaluate.py", "import core.train.metrics", "core: train above infer above nn and data (independent)"),
    ("cloud/storage/sync.py", "import cloud.cluster.environment", "cloud: job above storage and cluster (independent)"),
], ids=["core-imports-cloud", "core-imports-launcher", "cloud-imports-launcher",
        "product-imports-tests", "bench-imports-tests", "cycle-in-core", "nn-imports-data",
        "infer-imports-train", "storage-imports-cluster"])
def test_a_forbidden_import_breaks_a_contract(tree_copy, module, line, broken):
    path = tree_copy / module
    original = path.read_text()
    path.write_text(original + f"\n{line}  # added by the test\n")
    try:
        result = lint_imports(tree_copy)
    finally:
        path.write_text(original)
    assert result.returncode != 0
    assert f"{broken} BROKEN" in result.stdout, result.stdout
