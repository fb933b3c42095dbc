"""Submit, watch and stop ModelArts training jobs from your own machine.

    python launcher/modelarts.py submit --code_dir obs://BUCKET/mnv3 --engine NAME:VERSION
        --data_url obs://BUCKET/imagenet --train_url obs://BUCKET/out --flavor FLAVOR
        [--config configs/ascend_8p.yaml] [--train_epochs=370 ...] [--wait | --no-wait]
    python launcher/modelarts.py status JOB_ID
    python launcher/modelarts.py logs JOB_ID [--follow] [--task worker-0]
    python launcher/modelarts.py stop JOB_ID

`submit` takes the same job options as `--print-job-spec` and sends that very body: it checks the
flavour against the region's list, uploads the code directories (core, cloud, launcher, configs,
requirements*.txt) to --code_dir through cloud.storage.store (incremental: unchanged files are not
sent again; nothing is uploaded for a custom image, which carries its code), creates the job
(POST /v2/{project_id}/training-jobs) and, with --wait (the default), polls its status and
prints its log as it grows until the job ends. Exit code: 0 when the job ends Completed, 1 when
it ends Failed, Abnormal or Terminated, 2 for a usage/API error, 130 when interrupted.
Ctrl-C only stops watching: the job keeps running (`stop JOB_ID` stops it).

Credentials and endpoint come from the environment (see cloud.cluster.modelarts_api): HUAWEICLOUD_SDK_AK,
HUAWEICLOUD_SDK_SK, HUAWEICLOUD_PROJECT_ID (or --project_id), HUAWEICLOUD_REGION (or --region,
or --endpoint). The code upload uses the OBS settings of cloud.storage.s3client (OBS_ENDPOINT or
OBS_REGION, OBS_ACCESS_KEY_ID / OBS_SECRET_ACCESS_KEY ...). Keys are never printed.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Callable, Optional

from cloud.cluster.modelarts_api import (JobStatus, ModelArtsApi, ModelArtsApiError,
                                 resolve_settings)
from core.config import ConfigError
from launcher.bootstrap import REPO_ROOT  # the code folder a job uploads
from launcher.common import setup_logging

log = logging.getLogger("launcher.modelarts.jobs")
CODE_DIRS = ("core", "cloud", "launcher", "configs")
CODE_FILES = ("requirements*.txt",)
SKIP_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache", "kernel_meta", ".git", ".venv"}
SKIP_SUFFIXES = (".pyc", ".pyo", ".so", ".o", ".a", ".ckpt", ".mindir", ".onnx")
# Consecutive transient API failures (connection, 429, 5xx) a watch rides out.
WATCH_RETRIES = 8


def api_options(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("ModelArts API (credentials: HUAWEICLOUD_SDK_AK/SK in the "
                                 "environment)")
    group.add_argument("--project_id", help="default $HUAWEICLOUD_PROJECT_ID")
    group.add_argument("--region", help="e.g. cn-north-4 (default $HUAWEICLOUD_REGION)")
    group.add_argument("--endpoint", help="default https://modelarts.<region>.myhuaweicloud.com")
    group.add_argument("--timeout_s", type=float, default=30.0, help="per API request")


def watch_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--poll_s", type=float, default=15.0, help="seconds between status polls")
    p.add_argument("--task", help="whose log to print (default: the job's first task, worker-0)")


def submit_parser() -> argparse.ArgumentParser:
    from launcher.modelarts.args import parser
    p = parser()
    p.prog = "launcher/modelarts.py submit"
    p.description = "Upload the code, create the ModelArts training job, follow it to its end."
    api_options(p)
    watch = p.add_argument_group("submit")
    wait = watch.add_mutually_exclusive_group()
    wait.add_argument("--wait", dest="wait", action="store_true", default=True,
                      help="follow the job's status and log until it ends (default)")
    wait.add_argument("--no-wait", dest="wait", action="store_false",
                      help="print the job id once created and return")
    watch.add_argument("--skip_flavor_check", action="store_true",
                       help="do not check --flavor against the region's list")
    watch_options(watch)
    return p


def job_parser(command: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"launcher/modelarts.py {command}",
                                description={"status": "Print a training job's state.",
                                             "logs": "Print a training job's log.",
                                             "stop": "Stop (terminate) a training job."}[command])
    p.add_argument("job_id")
    api_options(p)
    if command == "logs":
        p.add_argument("--follow", action="store_true",
                       help="keep printing until the job ends; exit code as for submit --wait")
        watch_options(p)
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return p


def open_api(args) -> ModelArtsApi:
    return ModelArtsApi(resolve_settings(endpoint=args.endpoint, region=args.region,
                                         project_id=args.project_id, timeout_s=args.timeout_s))


# --- code upload ---------------------------------------------------------------------------------


def code_files(root: Optional[Path] = None) -> list[str]:
    """The project's code, relative to `root` (this checkout): CODE_DIRS and CODE_FILES, without
    caches, builds and checkpoints."""
    root = Path(root or REPO_ROOT)
    files = []
    for name in CODE_DIRS:
        top = root / name
        for dirpath, dirs, names in os.walk(top):
            dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
            for filename in sorted(names):
                if filename.endswith(SKIP_SUFFIXES) or filename.startswith("."):
                    continue
                files.append(str((Path(dirpath) / filename).relative_to(root)))
    for pattern in CODE_FILES:
        files += sorted(str(p.relative_to(root)) for p in root.glob(pattern) if p.is_file())
    return files


def upload_code(code_dir: str, settings, root: Optional[Path] = None):
    """Mirror the code files to `code_dir` with cloud.storage.sync.upload_tree (same size and not newer,
    or same content: skipped). Files removed locally stay in the bucket."""
    from cloud.storage.store import open_storage
    from cloud.storage.sync import upload_tree

    root = Path(root or REPO_ROOT)
    storage = open_storage(code_dir, settings)
    try:
        storage.check()
        return upload_tree(str(root), storage, files=code_files(root))
    finally:
        storage.close()


# --- watching ------------------------------------------------------------------------------------


class LogFollower:
    """Prints only what is new in a task's log. The preview holds the last few MB of the log
    (at most 5 MB: `content` = the last `current_size` of `full_size` bytes); what it has cut
    since the last poll is read from the whole log (`fill(start, end)` -> bytes, the full-log
    OBS link), so no line is lost or printed twice. A line is printed once it is complete, the
    rest at the end."""

    def __init__(self, out=None, fill: Optional[Callable[[int, int], bytes]] = None):
        self.out = out or sys.stdout
        self.fill = fill
        self.consumed = 0       # bytes of the whole log taken in so far (printed or pending)
        self.pending = b""      # an incomplete last line, printed when completed or at the end

    def feed(self, content: str, current_size: int, full_size: int, final: bool = False) -> None:
        data = content.encode("utf-8")
        full_size = max(full_size, len(data))
        start = full_size - len(data)           # the preview's offset in the whole log
        if full_size < self.consumed:
            note("the log started again (the job was restarted?)")
            self.consumed, self.pending = 0, b""
        if start > self.consumed:
            gap = self._fill(self.consumed, start)
            if gap is None:
                note(f"{start - self.consumed} bytes of the log are not in the preview (it holds "
                     f"the last part only): the whole log is in the log export folder (--log_url)")
                self.consumed, self.pending = start, b""
            else:
                data, start = gap + data, self.consumed
        new = self.pending + data[self.consumed - start:]
        self.consumed = full_size
        cut = len(new) if final else new.rfind(b"\n") + 1
        if cut:
            text = new[:cut].decode("utf-8", "replace")
            self.out.write(text if text.endswith("\n") else text + "\n")
            self.out.flush()
        self.pending = new[cut:]


    def _fill(self, start: int, end: int) -> Optional[bytes]:
        if self.fill is None:
            return None
        try:
            gap = self.fill(start, end)
        except ModelArtsApiError as exc:
            if exc.transient:  # nothing consumed: the next poll asks again
                raise
            note(f"{exc}")
            return None
        return gap if len(gap) == end - start else None


def full_log_reader(api: ModelArtsApi, job_id: str, task: str) -> Callable[[int, int], bytes]:
    """fill() for LogFollower: bytes of the whole log through its temporary OBS link (asked
    for when needed: the link expires after a few minutes)."""
    def fill(start: int, end: int) -> bytes:
        return api.read_log(api.log_url(job_id, task), start, end)
    return fill


def note(text: str) -> None:
    print(f"[modelarts] {text}", file=sys.stderr, flush=True)


def watch(api: ModelArtsApi, job_id: str, *, poll_s: float, task: Optional[str] = None,
          sleep: Callable[[float], None] = time.sleep, logs: bool = True) -> JobStatus:
    """Poll the job until it ends, printing phase changes (stderr) and its log (stdout)."""
    follower = LogFollower()
    phase, failures = None, 0
    while True:
        try:
            status = api.show_job(job_id)
            if status.phase != phase:
                note(f"job {job_id}: {status.describe()}")
                phase = status.phase
            name = task or (status.tasks[0] if status.tasks else None)
            if logs and name and status.phase not in ("Creating", "Pending"):
                follower.fill = full_log_reader(api, job_id, name)
                preview = api.log_preview(job_id, name)
                follower.feed(preview.content, preview.current_size, preview.full_size,
                              final=status.finished)
            failures = 0
        except ModelArtsApiError as exc:
            failures += 1
            if not exc.transient or failures > WATCH_RETRIES:
                raise
            note(f"{exc} (attempt {failures} of {WATCH_RETRIES}; still watching)")
            sleep(min(poll_s * failures, 60.0))
            continue
        if status.finished:
            return status
        sleep(poll_s)


def outcome(status: JobStatus) -> int:
    """0 for Completed; 1 (with one line naming the phase and where the log is) otherwise."""
    if status.phase == "Completed":
        note(f"job {status.id} completed")
        return 0
    print(f"error: job {status.id} ended {status.describe()}; read its log with "
          f"`python launcher/modelarts.py logs {status.id}` (or in the log export folder, "
          f"--log_url)", file=sys.stderr, flush=True)
    return 1


def follow(api: ModelArtsApi, job_id: str, args) -> int:
    try:
        status = watch(api, job_id, poll_s=args.poll_s, task=args.task)
    except KeyboardInterrupt:
        note(f"stopped watching; job {job_id} keeps running on ModelArts. Watch it again with "
             f"`python launcher/modelarts.py logs {job_id} --follow`, stop it with "
             f"`python launcher/modelarts.py stop {job_id}`")
        return 130
    return outcome(status)


# --- commands ------------------------------------------------------------------------------------


def submit(argv: list[str]) -> int:
    from launcher.modelarts.args import build_config, split_hyperparameters
    from launcher.modelarts.spec import job_spec

    argv, hyper = split_hyperparameters(argv)
    args = submit_parser().parse_args(argv)
    if args.poll_s <= 0:
        raise ConfigError("--poll_s must be positive")
    cfg, settings, overrides = build_config(args, hyper, args.data_url, args.train_url)
    spec, todo = job_spec(args, cfg, overrides)
    missing = [item for item in todo if not item.startswith("--flavor")]
    if missing:
        raise ConfigError(f"the job definition is incomplete: give {'; '.join(missing)}")
    api = open_api(args)  # credentials and endpoint before anything is uploaded
    try:
        flavor = spec["spec"]["resource"].get("flavor_id")
        if flavor and not args.skip_flavor_check and not args.pool_id:
            offered = [f["flavor_id"] for f in api.flavors()]
            if flavor not in offered:
                shown = ", ".join(offered[:12]) + (" ..." if len(offered) > 12 else "")
                raise ConfigError(f"flavour {flavor!r} is not offered in this region/project "
                                  f"(offered: {shown or 'none'}); pick one with --flavor")
        if not args.image:
            stats = upload_code(args.code_dir, settings)
            note(f"code -> {args.code_dir}: {stats.summary()}")
        status = api.create_job(spec)
        print(f"job {status.id} created ({status.name or args.job_name}): {status.describe()}",
              flush=True)
        if not args.wait:
            note(f"follow it with `python launcher/modelarts.py logs {status.id} --follow`")
            return 0
        return follow(api, status.id, args)
    finally:
        api.close()


def status_command(argv: list[str]) -> int:
    args = job_parser("status").parse_args(argv)
    with closing(open_api(args)) as api:
        status = api.show_job(args.job_id)
    tasks = f"; tasks {', '.join(status.tasks)}" if status.tasks else ""
    print(f"job {status.id} ({status.name}): {status.describe()}{tasks}")
    return 0


def logs_command(argv: list[str]) -> int:
    args = job_parser("logs").parse_args(argv)
    with closing(open_api(args)) as api:
        if args.follow:
            return follow(api, args.job_id, args)
        status = api.show_job(args.job_id)
        name = args.task or (status.tasks[0] if status.tasks else None)
        if not name:
            raise ModelArtsApiError(f"job {args.job_id} ({status.phase}) has no task with a log "
                                    f"yet: try again once it runs")
        preview = api.log_preview(args.job_id, name)
        LogFollower(fill=full_log_reader(api, args.job_id, name)).feed(
            preview.content, preview.current_size, preview.full_size, final=True)
        return 0


def stop_command(argv: list[str]) -> int:
    args = job_parser("stop").parse_args(argv)
    with closing(open_api(args)) as api:
        status = api.stop_job(args.job_id)
    print(f"job {status.id}: {status.describe()}")
    return 0


COMMANDS = {"submit": submit, "status": status_command, "logs": logs_command,
            "stop": stop_command}


def main(argv) -> int:
    """argv[0] is the command (launcher/modelarts.py dispatches here)."""
    argv = list(argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: launcher/modelarts.py {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 2
    setup_logging(stream=sys.stderr, console_datefmt=None)
    return COMMANDS[argv[0]](argv[1:])
