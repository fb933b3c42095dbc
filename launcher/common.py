"""What every entry point shares: logging to console and run dir, and one-line user errors."""
from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

from core.checkpoint import CheckpointError
from core.config import ConfigError
from core.data.sources import DatasetError
from core.infer.export import ExportError

USER_ERRORS = (ConfigError, DatasetError, CheckpointError, ExportError, FileNotFoundError)


def user_error_types() -> tuple:
    """Errors the user can fix; cloud adds its own when it is importable."""
    from cloud.cluster.environment import EnvironmentConfigError
    from cloud.storage.errors import StorageError
    from cloud.cluster.gpu_check import GpuRuntimeError
    from cloud.cluster.rank_table import RankTableError
    from cloud.cluster.modelarts_api import ModelArtsApiError
    return USER_ERRORS + (StorageError, EnvironmentConfigError, RankTableError, ModelArtsApiError,
                          GpuRuntimeError)


def load_job_config(path, overrides: dict):
    """(core Config, cloud StorageSettings) from one recipe: the `storage:` section and
    `storage.*` overrides go to the cloud layer, everything else to the trainer."""
    from cloud.storage.settings import to_settings
    from core.config import ConfigError, load_config, read_recipe_file
    trainer = {k: v for k, v in overrides.items() if not k.startswith("storage.")}
    recipe = read_recipe_file(path) if path else None
    storage = (recipe or {}).get("storage") or {}
    if not isinstance(storage, dict):
        raise ConfigError(f"config file {path}: section 'storage' must be a mapping of keys")
    storage = dict(storage)
    cfg = load_config(path, trainer, recipe=recipe)
    storage.update({k.split(".", 1)[1]: v for k, v in overrides.items() if k.startswith("storage.")})
    try:
        settings = to_settings(storage)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"storage settings: {exc}") from None
    return cfg, settings


def setup_logging(log_file: Path | None = None, rank_prefix: str = "", level=logging.INFO,
                  stream=None, console_datefmt: str | None = "%H:%M:%S") -> None:
    """The one logging set-up of every entry point: the console (stdout, or `stream`; the job
    and distributed launchers log to stderr with full dates) and, for a run, its log file."""
    fmt = f"%(asctime)s {rank_prefix}%(levelname)s %(name)s: %(message)s"
    root = logging.getLogger()
    root.setLevel(level)
    for handler in list(root.handlers):  # ours from an earlier call; others' (pytest's) stay
        if getattr(handler, "mnv3", False):
            root.removeHandler(handler)
    console = logging.StreamHandler(stream or sys.stdout)
    console.mnv3 = True
    console.setFormatter(logging.Formatter(fmt, console_datefmt))
    root.addHandler(console)
    if log_file:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file, encoding="utf-8")
        handler.mnv3 = True
        handler.setFormatter(logging.Formatter(fmt))
        root.addHandler(handler)


def run_main(main, argv=None) -> int:
    """Run `main(argv)`; user errors print one line (no traceback unless --debug), exit 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        return main(argv) or 0
    except user_error_types() as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.filename is None or isinstance(exc, ConnectionError):
            raise  # not about a path: a bug to show with its traceback
        if debug:
            traceback.print_exc()
        print(f"error: {path_error(exc)}", file=sys.stderr)
        return 2


def path_error(exc: OSError) -> str:
    """An OS error on a path (read-only file system, name too long, no permission, ...) as one
    line naming the path and the reason."""
    other = f" -> {exc.filename2}" if getattr(exc, "filename2", None) else ""
    return f"{exc.filename}{other}: {exc.strerror or exc}; check that path"
