"""Puts the repository root on sys.path for an entry script run as `python launcher/<name>.py`
(Python then only has launcher/ itself on the path), so that `core`, `cloud` and `launcher`
import as packages. Every entry script starts with

    if not __package__:  # python launcher/<name>.py
        import bootstrap  # noqa: F401

and imported as `launcher.<name>` (tests, -m) it does nothing."""
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
