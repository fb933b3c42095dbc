#!/usr/bin/env python
"""Run a data-parallel job as several processes and watch them as one.

    python launcher/distributed.py --nproc N [--nnodes M --node_rank R --master_addr A
        --master_port P] [--config C] [--resume auto|CKPT] [KEY=VALUE ...]

runs N ranks on this node through msrun (MindSpore's launcher; MCCL on CPU, NCCL on GPU,
HCCL on Ascend); start it once per node with the same master address and port.
`launcher/local.py train --nproc N` ends in `launch_local` here, and the ModelArts boot file
uses the same pieces (`launch_msrun`, or `Supervisor.start` once per Ascend device).

What msrun (MindSpore 2.10) does, as measured on CPU, and what this module adds:
* msrun starts its workers and, on the node whose address is the master's, a scheduler, all
  with the first `python` on PATH: PATH gets this interpreter's directory first.
* Each worker runs in its own session (setsid) and writes `<log_dir>/worker_<rank>.log`;
  msrun's own console tail has no rank labels, so it is switched off and the supervisor
  follows the files, printing every line as `[rank N] ...`.
* A worker exiting non-zero makes msrun SIGKILL the other local workers within a second and
  exit 1, but only once the scheduler has timed the dead rank out (about 30 s). When msrun
  reports the failure ("Worker process ... exit with exception"), the supervisor kills the
  scheduler after a few seconds, so the job fails in seconds, not half a minute (if a later
  msrun words it differently, msrun's own timeout still ends the job). Ranks on other nodes
  fail when their next collective times out (about 30-40 s later).
* msrun has no SIGTERM handler (it dies; scheduler and workers run on, orphaned) and answers
  SIGINT by SIGKILLing the workers and exiting 0. So msrun runs in a session of its own, and the supervisor forwards the signal (SIGTERM or SIGINT) to the
  workers themselves, which checkpoint and exit 0 (launcher/signals.py); whatever still runs
  after the grace period is SIGKILLed, process group by process group.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, TextIO

if not __package__:  # python launcher/distributed.py: the repository root onto sys.path
    import bootstrap  # noqa: F401

from launcher.bootstrap import REPO_ROOT  # noqa: E402

import psutil  # noqa: E402  (a MindSpore dependency; msrun uses it too)

from launcher.common import run_main, setup_logging  # noqa: E402
from launcher.signals import DEFAULT_GRACE_S  # noqa: E402

log = logging.getLogger("launcher.distributed")
WORKER_SCRIPT = REPO_ROOT / "launcher" / "worker.py"
DEFAULT_MASTER_PORT = 8118
POLL_S = 0.3
MSRUN_WORKER_FAILED = re.compile(r"Worker process \d+ exit with exception")
SCHEDULER_GRACE_S = 3.0  # after msrun reports a failed worker, before the scheduler is killed


# --- environment and files -------------------------------------------------------------------


def child_environ(extra: Optional[dict] = None, base: Optional[dict] = None) -> dict:
    """The environment for msrun and ranks: this interpreter first on PATH (msrun starts
    workers as `python`), unbuffered output, MindSpore's C++ log at ERROR unless GLOG_v is set."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("GLOG_v", "3")
    env.update(extra or {})
    return env


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


SECRET_SETTINGS = {"access_key_id": "MNV3_STORAGE_ACCESS_KEY_ID",
                   "secret_access_key": "MNV3_STORAGE_SECRET_ACCESS_KEY",
                   "session_token": "MNV3_STORAGE_SESSION_TOKEN"}


def write_launch_config(cfg, run_dir: Path, node_rank: int = 0, settings=None) -> Path:
    """The resolved config the ranks read (`<run_dir>/launch/node<R>.yaml`), written atomically:
    the trainer's sections plus the non-secret `storage:` settings (see `secret_environ`)."""
    import dataclasses

    import yaml
    tree = cfg.to_dict()
    if settings is not None:
        tree["storage"] = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)
                           if f.name not in SECRET_SETTINGS and getattr(settings, f.name) is not None}
    path = Path(run_dir) / "launch" / f"node{node_rank}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(yaml.safe_dump(tree, sort_keys=False))
    os.replace(tmp, path)
    return path


def secret_environ(settings) -> dict:
    """Credentials given in the recipe reach the ranks through their environment, never a file
    in the run directory (it is published) nor a command line (visible to every user)."""
    if settings is None:
        return {}
    return {var: getattr(settings, name) for name, var in SECRET_SETTINGS.items()
            if getattr(settings, name)}


def worker_argv(config_path: Path, *, resume: Optional[str] = None, pretrained: Optional[str] = None,
                job_id: Optional[str] = None, cache_dir: Optional[str] = None, nnodes: int = 1,
                node_rank: int = 0, nproc_per_node: int = 1,
                grace_s: float = DEFAULT_GRACE_S) -> list[str]:
    argv = [str(WORKER_SCRIPT), "--config", str(config_path), "--nnodes", str(nnodes),
            "--node_rank", str(node_rank), "--nproc_per_node", str(nproc_per_node),
            "--grace_s", f"{grace_s:g}"]
    for flag, value in (("--resume", resume), ("--pretrained", pretrained), ("--job_id", job_id),
                        ("--cache_dir", cache_dir)):
        if value:
            argv += [flag, str(value)]
    return argv


def msrun_argv(worker: Sequence[str], *, nproc: int, nnodes: int, node_rank: int,
               master_addr: str, master_port: int, log_dir: Path, cluster_timeout_s: int = 600,
               rank_table_file: Optional[str] = None) -> list[str]:
    world = nproc * nnodes
    argv = [sys.executable, "-m", "mindspore.parallel.cluster.run",  # = the msrun script
            f"--worker_num={world}", f"--local_worker_num={nproc}", f"--node_rank={node_rank}",
            f"--master_addr={master_addr}", f"--master_port={master_port}",
            f"--log_dir={log_dir}", "--join=True", f"--cluster_time_out={cluster_timeout_s}",
            f"--tail_worker_log={world}"]  # no such rank: msrun tails nothing, we follow files
    if rank_table_file:
        argv.append(f"--rank_table_file={rank_table_file}")
    return argv + list(worker)


# --- supervision -----------------------------------------------------------------------------


class Console:
    """Line-atomic output shared by the pumps and followers."""

    def __init__(self, out: Optional[TextIO] = None):
        self.out = out or sys.stdout
        self.lock = threading.Lock()

    def line(self, label: str, text: str) -> None:
        with self.lock:
            self.out.write(f"[{label}] {text.rstrip()}\n")
            self.out.flush()


class RankLogFollower(threading.Thread):
    """Follows msrun's `worker_<rank>.log` files and prints their lines with `[rank N]`."""

    PATTERN = re.compile(r"^worker_(\d+)\.log$")

    def __init__(self, log_dir: Path, console: Console):
        super().__init__(daemon=True, name="rank-log-follower")
        self.log_dir, self.console = Path(log_dir), console
        self.offsets: dict[Path, int] = {}
        self.partial: dict[Path, str] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.poll()
            self.done.wait(POLL_S)
        self.poll(final=True)

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=5)

    def poll(self, final: bool = False) -> None:
        if not self.log_dir.is_dir():
            return
        for path in sorted(self.log_dir.iterdir()):
            match = self.PATTERN.match(path.name)
            if match:
                self._read(path, f"rank {match.group(1)}", final)

    def _read(self, path: Path, label: str, final: bool) -> None:
        offset = self.offsets.get(path, 0)
        try:
            if path.stat().st_size < offset:  # rewritten: start over
                offset, self.partial[path] = 0, ""
            with open(path, "rb") as fh:
                fh.seek(offset)
                data = fh.read()
        except OSError:
            return
        self.offsets[path] = offset + len(data)
        text = self.partial.get(path, "") + data.decode("utf-8", "replace")
        *lines, rest = text.split("\n")
        if final and rest:
            lines, rest = lines + [rest], ""
        self.partial[path] = rest
        for line in lines:
            self.console.line(label, line)


@dataclass
class Child:
    label: str
    process: subprocess.Popen
    kind: str                      # "rank": a training process; "msrun": msrun, ranks below it
    pump: Optional[threading.Thread] = None
    log_file: Optional[Path] = None


@dataclass
class Supervisor:
    """Starts processes in sessions of their own, prints their output with a label, and treats
    them as one job: the exit code is the first failure's, a failed rank takes the others down,
    SIGTERM/SIGINT are forwarded to every rank, and nothing outlives the grace period."""

    grace_s: float = DEFAULT_GRACE_S
    console: Console = field(default_factory=Console)
    children: list = field(default_factory=list)
    seen: dict = field(default_factory=dict)        # pid -> psutil.Process, every descendant
    signalled: set = field(default_factory=set)     # pids sent SIGTERM
    stop_signal: Optional[int] = None
    deadline: Optional[float] = None
    first_failure: Optional[tuple] = None           # (label, exit code)
    msrun_failed_at: Optional[float] = None         # when msrun reported a failed worker

    def start(self, argv: Sequence[str], env: dict, label: str, kind: str = "rank",
              log_file: Optional[Path] = None, cwd: Optional[str] = None) -> subprocess.Popen:
        process = subprocess.Popen(list(argv), env=env, cwd=cwd, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        child = Child(label, process, kind, log_file=log_file)
        child.pump = threading.Thread(target=self._pump, args=(child,), daemon=True,
                                      name=f"pump-{label}")
        child.pump.start()
        self.children.append(child)
        self.seen[process.pid] = psutil.Process(process.pid)
        return process

    def _pump(self, child: Child) -> None:
        sink = open(child.log_file, "w", encoding="utf-8") if child.log_file else None
        try:
            for raw in iter(child.process.stdout.readline, b""):
                text = raw.decode("utf-8", "replace")
                self.console.line(child.label, text)
                if child.kind == "msrun" and self.msrun_failed_at is None \
                        and MSRUN_WORKER_FAILED.search(text):
                    self.msrun_failed_at = time.monotonic()
                if sink:
                    sink.write(text)
                    sink.flush()
        finally:
            if sink:
                sink.close()

    # -- the loop --

    def wait(self) -> int:
        """Supervise until every child has exited; returns the job's exit code."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            while True:
                self._refresh()
                if self.stop_signal is not None:  # the ranks log the signal that arrived
                    self._forward(self.stop_signal)
                self._check_exits()
                self._end_failed_msrun()
                if all(c.process.poll() is not None for c in self.children):
                    break
                if self.deadline is not None and time.monotonic() > self.deadline:
                    self.console.line("launcher", f"grace period of {self.grace_s:g} s is over: "
                                                  f"killing what still runs")
                    self.kill_all()
                    self.deadline = None
                time.sleep(POLL_S)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self.kill_all()  # orphans: workers whose msrun died
            for child in self.children:
                if child.pump:
                    child.pump.join(timeout=5)
        return self.exit_code()

    def outcome(self) -> str:
        code = self.exit_code()
        if code:
            return f"failed (exit code {code})"
        if self.stop_signal is not None:
            return f"stopped on {signal.Signals(self.stop_signal).name} (ranks checkpointed)"
        return "finished"

    def exit_code(self) -> int:
        if self.first_failure:
            code = self.first_failure[1]
            return 128 - code if code < 0 else code
        return 0

    def _on_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.stop_signal is not None:
            self.console.line("launcher", f"{name} again: killing all ranks now")
            self.kill_all()
            return
        self.stop_signal = signum
        self.deadline = time.monotonic() + self.grace_s
        self.console.line("launcher", f"{name}: asking every rank to checkpoint and stop "
                                      f"(grace period {self.grace_s:g} s)")

    def _refresh(self) -> None:
        """Remember every descendant, so none survives its parent's death unnoticed."""
        for child in self.children:
            try:
                for proc in psutil.Process(child.process.pid).children(recursive=True):
                    self.seen.setdefault(proc.pid, proc)
            except psutil.Error:
                continue

    def ranks(self) -> list:
        """The training processes: our 'rank' children, and msrun's MS_WORKER children."""
        found = []
        for child in self.children:
            if child.process.poll() is not None:
                continue
            if child.kind == "rank":
                found.append(self.seen[child.process.pid])
                continue
            try:
                for proc in psutil.Process(child.process.pid).children():
                    if proc.environ().get("MS_ROLE") == "MS_WORKER":
                        found.append(proc)
            except psutil.Error:
                continue
        return found

    def _forward(self, signum: int) -> None:
        for proc in self.ranks():
            if proc.pid not in self.signalled:
                self.signalled.add(proc.pid)
                try:
                    proc.send_signal(signum)
                except psutil.Error:
                    pass

    def _check_exits(self) -> None:
        for child in self.children:
            code = child.process.poll()
            if code in (None, 0) or self.first_failure:
                continue
            self.first_failure = (child.label, code)
            self.console.line("launcher", f"{child.label} exited with code {code}")
            others = [c for c in self.children if c is not child and c.process.poll() is None]
            if child.kind == "rank" and others:
                self.console.line("launcher", "stopping the other ranks")
                for other in others:
                    _kill_group(other.process.pid)

    def _end_failed_msrun(self) -> None:
        """msrun waits for its scheduler to time the dead rank out; the job has failed already."""
        if self.msrun_failed_at is None or time.monotonic() - self.msrun_failed_at < SCHEDULER_GRACE_S:
            return
        for pid, proc in list(self.seen.items()):
            try:
                if proc.is_running() and proc.environ().get("MS_ROLE") == "MS_SCHED":
                    self.console.line("launcher", "a rank failed: ending the msrun scheduler")
                    proc.kill()
            except psutil.Error:
                continue
        self.msrun_failed_at = float("inf")  # once

    def kill_all(self) -> None:
        for child in self.children:
            if child.process.poll() is None:
                _kill_group(child.process.pid)
        for pid, proc in list(self.seen.items()):
            try:
                if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
                    continue
                if os.getpgid(pid) == pid:
                    _kill_group(pid)
                else:
                    proc.kill()
            except (psutil.Error, ProcessLookupError):
                continue


def _kill_group(pid: int) -> None:
    """SIGKILL a session leader's process group (its helpers die with it)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# --- launching -------------------------------------------------------------------------------


def launch_msrun(config_path: Path, *, nproc: int, log_dir: Path, nnodes: int = 1,
                 node_rank: int = 0, master_addr: str = "127.0.0.1",
                 master_port: Optional[int] = None, resume: Optional[str] = None,
                 pretrained: Optional[str] = None, job_id: Optional[str] = None,
                 cache_dir: Optional[str] = None, grace_s: float = DEFAULT_GRACE_S,
                 cluster_timeout_s: int = 600, rank_table_file: Optional[str] = None,
                 extra_env: Optional[dict] = None, console: Optional[Console] = None) -> int:
    """Run this node's `nproc` ranks under msrun and supervise them; returns the exit code."""
    if nproc < 1 or nnodes < 1 or not 0 <= node_rank < nnodes:
        raise ValueError(f"need nproc >= 1, nnodes >= 1 and 0 <= node_rank < nnodes "
                         f"(got {nproc}, {nnodes}, {node_rank})")
    master_port = master_port or (free_port() if nnodes == 1 else DEFAULT_MASTER_PORT)
    log_dir = Path(log_dir).resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*log_dir.glob("worker_*.log"), log_dir / "scheduler.log"]:
        stale.unlink(missing_ok=True)  # the follower must not replay a previous launch
    worker = worker_argv(config_path, resume=resume, pretrained=pretrained, job_id=job_id,
                         cache_dir=cache_dir, nnodes=nnodes, node_rank=node_rank,
                         nproc_per_node=nproc, grace_s=grace_s)
    argv = msrun_argv(worker, nproc=nproc, nnodes=nnodes, node_rank=node_rank,
                      master_addr=master_addr, master_port=master_port, log_dir=log_dir,
                      cluster_timeout_s=cluster_timeout_s, rank_table_file=rank_table_file)
    supervisor = Supervisor(grace_s=grace_s, console=console or Console())
    follower = RankLogFollower(log_dir, supervisor.console)
    follower.start()
    supervisor.console.line("launcher", f"node {node_rank}/{nnodes}: {nproc} rank(s) via msrun, "
                                        f"master {master_addr}:{master_port}, logs in {log_dir}")
    try:
        supervisor.start(argv, child_environ(extra_env), "msrun", kind="msrun")
        code = supervisor.wait()
    finally:
        follower.stop()
    supervisor.console.line("launcher", f"job {supervisor.outcome()}; rank logs: {log_dir}")
    return code


def launch_local(nproc: int, cfg, settings=None, resume: Optional[str] = None,
                 pretrained: Optional[str] = None, grace_s: float = DEFAULT_GRACE_S,
                 cache_dir: Optional[Path] = None) -> int:
    """`launcher/local.py train --nproc N`: N ranks on this machine. cfg may name remote data
    and outputs: they are staged and resolved here once, rank 0 uploads checkpoints in the
    background, and the run directory is published at the end."""
    from launcher.cli import DEFAULT_CACHE
    from core.train.elastic import per_device_batch
    per_device_batch(cfg.data, nproc)  # data.global_batch_size must divide: one line, before msrun
    cache_dir = Path(cache_dir or DEFAULT_CACHE)
    from core.ownership import RunLock
    job_id = f"local-{os.getpid()}-{int(time.time())}"
    with RunLock(local_run_dir(cfg, cache_dir), job_id):  # rank 0 shares it (same job id)
        launch = prepare_launch(cfg, resume, cache_dir=cache_dir, job_id=job_id, settings=settings,
                                pretrained=pretrained)
        config_path = write_launch_config(launch.ranks_cfg, launch.run_dir, 0, settings)
        code = launch_msrun(config_path, nproc=nproc, log_dir=launch.run_dir / "msrun_logs",
                            resume=launch.resume, pretrained=launch.pretrained, job_id=job_id,
                            cache_dir=str(cache_dir), grace_s=grace_s,
                            extra_env=secret_environ(settings))
    return publish(launch.job, code)


# --- command line ----------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    from launcher.cli import add_common
    p = argparse.ArgumentParser(prog="launcher/distributed.py", description=__doc__.splitlines()[0])
    add_common(p)
    p.add_argument("--nproc", type=int, required=True, help="ranks on this node")
    p.add_argument("--nnodes", type=int, default=1, help="number of nodes (default 1)")
    p.add_argument("--node_rank", type=int, default=0, help="this node's index, 0..nnodes-1")
    p.add_argument("--master_addr", default="127.0.0.1", help="node 0's address")
    p.add_argument("--master_port", type=int,
                   help=f"scheduler port (default: a free one on one node, {DEFAULT_MASTER_PORT} "
                        f"on several)")
    p.add_argument("--resume", help="checkpoint, URL, or 'auto' (newest in the output)")
    p.add_argument("--pre_trained", help="weights to start from (fine-tuning)")
    p.add_argument("--cache_dir", help="node-local cache for staged data (default "
                                       "$MNV3_CACHE_DIR or ~/.cache/mnv3_runner)")
    p.add_argument("--job_id", help="names per-node staging locks (default: derived)")
    p.add_argument("--grace_s", type=float, default=DEFAULT_GRACE_S,
                   help="seconds the ranks get to checkpoint after SIGTERM")
    p.add_argument("--cluster_timeout", type=int, default=600,
                   help="seconds to wait for every node to join")
    return p


def local_run_dir(cfg, cache_dir: Path) -> Path:
    """Where this node keeps the run directory: the output itself, or its cache for a URL."""
    from cloud.job import cache_path
    from cloud.storage.urls import is_remote_url
    output = cfg.system.output_dir
    return cache_path(cache_dir, "output", output) if is_remote_url(output) else Path(output).resolve()


@dataclass
class Launch:
    ranks_cfg: object
    run_dir: Path
    resume: Optional[str]
    pretrained: Optional[str]
    job: object


def prepare_launch(cfg, resume: Optional[str], *, cache_dir: Path, job_id: str, settings=None,
                   pretrained: Optional[str] = None, output_url: Optional[str] = None):
    """Stage remote data and weights once on this node and resolve the resume point, before
    the ranks start.

    Returns a Launch: the config for the ranks (local data path, output as given), the local
    run directory, resume and pretrained as local paths (or None), and the PreparedJob, whose
    finish() publishes the run directory.
    """
    import copy

    from cloud.job import prepare_job
    from launcher.cli import resolve_local_resume
    job = prepare_job(cfg, resume=resume, cache_dir=cache_dir, job_id=job_id, writer=False,
                      settings=settings, pretrained=pretrained, output_url=output_url)
    if job.resume == "auto" or (job.resume is None and not job.output_url):
        resume = resolve_local_resume(job.cfg, job.resume)
    else:
        resume = job.resume
    ranks_cfg = copy.deepcopy(cfg)
    ranks_cfg.data.path = job.cfg.data.path
    return Launch(ranks_cfg, Path(job.cfg.system.output_dir).resolve(), resume, job.pretrained, job)


def main(argv) -> int:
    from cloud.cluster.environment import detect_environment
    from core.config import ConfigError
    from launcher.common import load_job_config
    from launcher.cli import DEFAULT_CACHE, demo_dataset_path, gpu_preflight, overrides_from

    args = parser().parse_args(argv)
    if args.nproc < 1 or args.nnodes < 1 or not 0 <= args.node_rank < args.nnodes:
        raise ConfigError(f"--nproc and --nnodes must be at least 1 and --node_rank in "
                          f"0..{args.nnodes - 1}")
    setup_logging(stream=sys.stderr, console_datefmt=None)
    cfg, settings = load_job_config(args.config, overrides_from(args))
    from core.train.elastic import per_device_batch
    per_device_batch(cfg.data, args.nproc * args.nnodes)  # one line before msrun, not one per rank
    gpu_preflight(cfg.system.device_target)
    if not cfg.data.path:
        cfg.data.path = demo_dataset_path()
    port = args.master_port or (free_port() if args.nnodes == 1 else DEFAULT_MASTER_PORT)
    env = detect_environment(environ={}, overrides={
        "node_count": args.nnodes, "node_rank": args.node_rank, "devices_per_node": args.nproc,
        "master_addr": args.master_addr, "master_port": port, "job_id": args.job_id})
    from core.ownership import RunLock
    cache_dir = Path(args.cache_dir or DEFAULT_CACHE)
    with RunLock(local_run_dir(cfg, cache_dir), env.job_id):  # every node's launcher and rank 0
        launch = prepare_launch(cfg, args.resume, cache_dir=cache_dir, job_id=env.job_id,
                                settings=settings, pretrained=args.pre_trained)
        log_dir = launch.run_dir / "msrun_logs" / (f"node{args.node_rank}" if args.nnodes > 1 else "")
        config_path = write_launch_config(launch.ranks_cfg, launch.run_dir, args.node_rank, settings)
        code = launch_msrun(config_path, nproc=args.nproc, log_dir=log_dir, nnodes=args.nnodes,
                            node_rank=args.node_rank, master_addr=args.master_addr, master_port=port,
                            resume=launch.resume, pretrained=launch.pretrained, job_id=env.job_id,
                            cache_dir=str(cache_dir), grace_s=args.grace_s,
                            cluster_timeout_s=args.cluster_timeout,
                            extra_env=secret_environ(settings))
    return publish(launch.job, code)


def publish(job, code: int) -> int:
    """Whatever happened, send the run directory (logs included) to a remote output; rank 0
    has published it on success already, so only what is new travels."""
    if not job.output_url:
        return code
    try:
        job.finish()
    except Exception as exc:  # the outputs are the job's result: not sending them fails it
        log.error("could not publish the outputs to %s: %s", job.output_url, exc)
        return code or 1
    return code


if __name__ == "__main__":
    sys.exit(run_main(main))
