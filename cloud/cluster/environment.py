"""Work out where this process runs and what its place in the job is.

The trainer in ``core/`` never reads environment variables: this module reads them once,
for every platform the runner supports, and hands back one frozen ``JobEnvironment``.

Variables read, per platform (first match wins, in this order):

* ``msrun`` (MindSpore dynamic cluster; ``MS_ROLE`` is set). msrun in MindSpore 2.x exports
  to each worker ``MS_ROLE=MS_WORKER``, ``MS_WORKER_NUM``, ``MS_SCHED_HOST``,
  ``MS_SCHED_PORT``, ``MS_TOPO_TIMEOUT``, ``RANK_SIZE`` (= worker count), ``DEVICE_ID``
  (= the worker's local index) and, when the global rank is known before start-up
  (one node, or ``--node_rank`` given), ``MS_NODE_ID`` and ``RANK_ID``. The scheduler
  process runs the same script with ``MS_ROLE=MS_SCHED`` and ``RANK_ID=0``. msrun does
  *not* export ``LOCAL_RANK`` nor its ``--local_worker_num``
  (source: mindspore/parallel/cluster/process_entity/_api.py in MindSpore 2.10.0).
* ``mpirun`` (OpenMPI): ``OMPI_COMM_WORLD_RANK``, ``OMPI_COMM_WORLD_SIZE``,
  ``OMPI_COMM_WORLD_LOCAL_RANK``, ``OMPI_COMM_WORLD_LOCAL_SIZE``.
* ``modelarts`` (new training jobs): ``VC_TASK_INDEX``, ``VC_WORKER_NUM``, ``MA_NUM_HOSTS``,
  ``VC_WORKER_HOSTS`` (first host is the master), ``MA_NUM_GPUS``, ``MA_VJ_NAME``,
  ``MA_CURRENT_IP``, ``MA_CURRENT_INSTANCE_NAME``.
* ``modelarts_legacy``: ``DLS_TASK_INDEX``, ``DLS_TASK_NUMBER``, ``BATCH_CUSTOM0_HOSTS``
  (``host:port`` of the master), ``BATCH_TASK_CURRENT_INSTANCE``, ``DLS_DATA_URL``,
  ``DLS_TRAIN_URL``.
* ``workstation``: none of the above; one node.

On every platform: ``RANK_ID``, ``RANK_SIZE``, ``ASCEND_DEVICE_ID`` / ``DEVICE_ID`` (Ascend
per-process variables; ``ASCEND_DEVICE_ID`` is the logical id inside the container and wins),
``RANK_TABLE_FILE``, ``MS_SCHED_HOST``/``MS_SCHED_PORT`` (master), ``JOB_ID``,
``data_url``/``DATA_URL``, ``train_url``/``TRAIN_URL``, ``MA_CURRENT_HOST_IP`` (the host's IP,
which is what a rank table's ``server_id`` holds; ``MA_CURRENT_IP`` is the container's) and
``MA_RUN_METHOD`` (how an Ascend-Powered-Engine job starts its boot file).

``launched_rank`` is true when something already started this process as one rank: the
platform's preset engine (``RANK_ID`` set: ModelArts runs the boot file once per card,
https://support.huaweicloud.com "Ascend-Powered-Engine框架启动原理"), msrun or mpirun.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass
from typing import Any, Mapping

PLATFORMS = ("workstation", "modelarts", "modelarts_legacy", "msrun", "mpirun")
DEFAULT_MASTER_ADDR = "127.0.0.1"
DEFAULT_MASTER_PORT = 8118  # msrun's default --master_port

_MODELARTS_MARKERS = ("VC_TASK_INDEX", "VC_WORKER_NUM", "VC_WORKER_HOSTS", "MA_VJ_NAME",
                      "MA_NUM_HOSTS", "MA_NUM_GPUS", "MA_JOB_DIR", "MA_CURRENT_IP")
_LEGACY_MARKERS = ("DLS_TASK_INDEX", "DLS_TASK_NUMBER", "BATCH_CUSTOM0_HOSTS",
                   "BATCH_TASK_CURRENT_INSTANCE")


class EnvironmentConfigError(ValueError):
    """The environment or the overrides describe an impossible job."""


@dataclass(frozen=True)
class JobEnvironment:
    """Where this process sits in the job; every field can be overridden by config."""

    platform: str
    node_count: int
    node_rank: int
    devices_per_node: int
    rank: int
    local_rank: int
    world_size: int
    master_addr: str
    master_port: int
    job_id: str
    device_id: int | None = None
    rank_table_file: str | None = None
    data_url: str | None = None
    train_url: str | None = None
    node_ip: str | None = None
    host_ip: str | None = None
    instance_name: str | None = None
    run_method: str | None = None
    on_modelarts: bool = False
    is_scheduler: bool = False
    launched_rank: bool = False

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_primary(self) -> bool:
        """The one process that writes shared outputs (never msrun's scheduler)."""
        return self.rank == 0 and not self.is_scheduler

    @property
    def is_node_primary(self) -> bool:
        """The one process per node that stages node-local data."""
        return self.local_rank == 0 and not self.is_scheduler

    def describe(self) -> str:
        """One log line."""
        role = " scheduler" if self.is_scheduler else ""
        device = "" if self.device_id is None else f" device {self.device_id}"
        return (f"{self.platform}{role} job={self.job_id} node {self.node_rank}/{self.node_count}"
                f" rank {self.rank}/{self.world_size} (local {self.local_rank} of "
                f"{self.devices_per_node}){device} master={self.master_addr}:{self.master_port}")


FIELD_NAMES = tuple(f.name for f in dataclasses.fields(JobEnvironment))
_INT_FIELDS = ("node_count", "node_rank", "devices_per_node", "rank", "local_rank", "world_size",
               "master_port", "device_id")
_STR_FIELDS = ("platform", "master_addr", "job_id", "rank_table_file", "data_url", "train_url",
               "node_ip", "host_ip", "instance_name", "run_method")
_BOOL_FIELDS = ("on_modelarts", "is_scheduler", "launched_rank")


def detect_environment(environ: Mapping[str, str] | None = None,
                       overrides: dict | None = None) -> JobEnvironment:
    """Derive the job environment from ``environ`` (default ``os.environ``) and ``overrides``.

    ``overrides`` uses the field names of ``JobEnvironment``; a value of None means "derive".
    Raises ``EnvironmentConfigError`` naming the variable or key at fault.
    """
    env = _Env(os.environ if environ is None else environ)
    found = _Found()
    _check_override_keys(overrides or {})
    platform = (overrides or {}).get("platform") or _detect_platform(env)
    if platform not in PLATFORMS:
        raise EnvironmentConfigError(
            f"overrides['platform']={platform!r} is unknown; use one of {', '.join(PLATFORMS)}")
    found.set("platform", platform, "detected")
    _read_common(env, found)
    _PLATFORM_READERS[platform](env, found)
    _apply_overrides(found, overrides or {})
    _resolve_topology(found, platform)
    _check_topology(found)
    _resolve_master_and_job(found)
    return JobEnvironment(**{name: found.value(name) for name in FIELD_NAMES
                             if found.has(name)})


# --- reading ---------------------------------------------------------------------------------


class _Env:
    """Typed, validated access to an environment mapping; empty strings count as unset."""

    def __init__(self, mapping: Mapping[str, str]):
        self._mapping = mapping

    def text(self, name: str) -> str | None:
        value = self._mapping.get(name)
        if value is None or not str(value).strip():
            return None
        return str(value).strip()

    def integer(self, name: str) -> int | None:
        raw = self.text(name)
        if raw is None:
            return None
        try:
            value = int(raw, 10)
        except ValueError:
            raise EnvironmentConfigError(
                f"{name}={raw!r} is not an integer; set {name} to a whole number or unset it"
            ) from None
        if value < 0:
            raise EnvironmentConfigError(
                f"{name}={value} is negative; set {name} to 0 or more or unset it")
        return value

    def any_set(self, names: tuple[str, ...]) -> bool:
        return any(self.text(name) is not None for name in names)


class _Found:
    """Values found so far, each with the variable or rule it came from (for error messages)."""

    def __init__(self):
        self._values: dict[str, Any] = {}
        self._sources: dict[str, str] = {}

    def has(self, name: str) -> bool:
        return name in self._values

    def value(self, name: str) -> Any:
        return self._values.get(name)

    def source(self, name: str) -> str:
        return self._sources.get(name, name)

    def set(self, name: str, value: Any, source: str) -> None:
        if value is not None:
            self._values[name] = value
            self._sources[name] = source

    def is_given(self, name: str) -> bool:
        """Read from a variable or an override, rather than derived or defaulted."""
        source = self.source(name)
        return source.isupper() or source.startswith("overrides[")

    def describe(self, name: str) -> str:
        """E.g. ``RANK_ID=9`` or ``world_size 16 (node_count x devices_per_node)``."""
        if self.is_given(name):
            return f"{self.source(name)}={self.value(name)}"
        return f"{name} {self.value(name)} ({self.source(name)})"

    def read_int(self, env: _Env, name: str, *variables: str) -> None:
        """Take ``name`` from the first set variable; differing variables are a contradiction."""
        seen = [(variable, env.integer(variable)) for variable in variables]
        seen = [(variable, value) for variable, value in seen if value is not None]
        for variable, value in seen[1:]:
            first_variable, first_value = seen[0]
            if value != first_value:
                raise EnvironmentConfigError(
                    f"{first_variable}={first_value} and {variable}={value} disagree about "
                    f"{name}; unset one or set overrides['{name}']")
        if seen:
            self.set(name, seen[0][1], seen[0][0])

    def read_text(self, env: _Env, name: str, *variables: str) -> None:
        """Take ``name`` from the first set variable, unless an earlier reader found it."""
        if self.has(name):
            return
        for variable in variables:
            value = env.text(variable)
            if value is not None:
                self.set(name, value, variable)
                return


def _detect_platform(env: _Env) -> str:
    if env.text("MS_ROLE") is not None:
        return "msrun"
    if env.any_set(("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK")):
        return "mpirun"
    if env.any_set(_MODELARTS_MARKERS):
        return "modelarts"
    if env.any_set(_LEGACY_MARKERS):
        return "modelarts_legacy"
    return "workstation"


def _read_common(env: _Env, found: _Found) -> None:
    """Variables that mean the same on every platform."""
    found.read_int(env, "rank", "RANK_ID")
    found.read_int(env, "world_size", "RANK_SIZE")
    for variable in ("ASCEND_DEVICE_ID", "DEVICE_ID"):  # the logical id first, no contradiction
        if env.integer(variable) is not None:
            found.set("device_id", env.integer(variable), variable)
            break
    found.read_text(env, "host_ip", "MA_CURRENT_HOST_IP")
    found.read_text(env, "run_method", "MA_RUN_METHOD")
    found.read_text(env, "rank_table_file", "RANK_TABLE_FILE")
    found.read_text(env, "master_addr", "MS_SCHED_HOST")
    found.read_int(env, "master_port", "MS_SCHED_PORT")
    found.read_text(env, "job_id", "MA_VJ_NAME", "JOB_ID")
    found.read_text(env, "data_url", "data_url", "DATA_URL")
    found.read_text(env, "train_url", "train_url", "TRAIN_URL")
    found.set("on_modelarts", env.any_set(_MODELARTS_MARKERS + _LEGACY_MARKERS), "detected")
    found.set("is_scheduler", False, "default")
    found.set("launched_rank", env.any_set(("RANK_ID", "OMPI_COMM_WORLD_RANK", "MS_ROLE")),
              "detected")


def _read_modelarts_nodes(env: _Env, found: _Found) -> None:
    """Node count, node index, master host and this node's identity on new ModelArts."""
    found.read_int(env, "node_count", "VC_WORKER_NUM", "MA_NUM_HOSTS")
    found.read_int(env, "node_rank", "VC_TASK_INDEX")
    found.read_text(env, "node_ip", "MA_CURRENT_IP")
    found.read_text(env, "instance_name", "MA_CURRENT_INSTANCE_NAME")
    hosts_text = env.text("VC_WORKER_HOSTS")
    if hosts_text is None:
        return
    hosts = [host.strip() for host in hosts_text.split(",") if host.strip()]
    node_count = found.value("node_count")
    if node_count is not None and len(hosts) != node_count:
        raise EnvironmentConfigError(
            f"VC_WORKER_HOSTS lists {len(hosts)} hosts but {found.describe('node_count')}; "
            f"the job spec and the host list must agree, or set overrides['node_count']")
    if not found.has("master_addr"):
        host, port = _split_host_port(hosts[0], "VC_WORKER_HOSTS")
        found.set("master_addr", host, "VC_WORKER_HOSTS")
        if not found.has("master_port"):
            found.set("master_port", port, "VC_WORKER_HOSTS")


def _read_modelarts(env: _Env, found: _Found) -> None:
    _read_modelarts_nodes(env, found)
    accelerators = env.integer("MA_NUM_GPUS")
    if accelerators:  # 0 on CPU flavours: one process per node, derived below
        found.set("devices_per_node", accelerators, "MA_NUM_GPUS")


def _read_modelarts_legacy(env: _Env, found: _Found) -> None:
    found.read_int(env, "node_count", "DLS_TASK_NUMBER")
    found.read_int(env, "node_rank", "DLS_TASK_INDEX")
    found.read_text(env, "instance_name", "BATCH_TASK_CURRENT_INSTANCE")
    found.read_text(env, "data_url", "DLS_DATA_URL")
    found.read_text(env, "train_url", "DLS_TRAIN_URL")
    master = env.text("BATCH_CUSTOM0_HOSTS")
    if master is not None and not found.has("master_addr"):
        host, port = _split_host_port(master, "BATCH_CUSTOM0_HOSTS")
        found.set("master_addr", host, "BATCH_CUSTOM0_HOSTS")
        if not found.has("master_port"):
            found.set("master_port", port, "BATCH_CUSTOM0_HOSTS")


def _read_msrun(env: _Env, found: _Found) -> None:
    role = env.text("MS_ROLE")
    if role not in ("MS_WORKER", "MS_SCHED"):
        raise EnvironmentConfigError(
            f"MS_ROLE={role!r} is not MS_WORKER or MS_SCHED; let msrun set it or unset it")
    found.read_int(env, "world_size", "MS_WORKER_NUM", "RANK_SIZE")
    found.read_int(env, "rank", "RANK_ID", "MS_NODE_ID")
    if role == "MS_SCHED":
        found.set("is_scheduler", True, "MS_ROLE")
    else:
        found.set("local_rank", found.value("device_id"), "DEVICE_ID")  # msrun: local index
    if env.any_set(_MODELARTS_MARKERS):
        _read_modelarts_nodes(env, found)


def _read_mpirun(env: _Env, found: _Found) -> None:
    found.read_int(env, "rank", "OMPI_COMM_WORLD_RANK", "RANK_ID")
    found.read_int(env, "world_size", "OMPI_COMM_WORLD_SIZE", "RANK_SIZE")
    found.read_int(env, "local_rank", "OMPI_COMM_WORLD_LOCAL_RANK")
    found.read_int(env, "devices_per_node", "OMPI_COMM_WORLD_LOCAL_SIZE")
    if env.any_set(_MODELARTS_MARKERS):
        _read_modelarts_nodes(env, found)


def _read_workstation(env: _Env, found: _Found) -> None:
    """Nothing beyond the common variables: one node unless overridden."""


_PLATFORM_READERS = {
    "workstation": _read_workstation,
    "modelarts": _read_modelarts,
    "modelarts_legacy": _read_modelarts_legacy,
    "msrun": _read_msrun,
    "mpirun": _read_mpirun,
}


def _split_host_port(text: str, variable: str) -> tuple[str, int | None]:
    """``host``, ``host:port`` or ``[v6]:port`` -> (host, port or None)."""
    host, port_text = text, None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    if not host:
        raise EnvironmentConfigError(f"{variable}={text!r} has no host; expected host:port")
    if port_text is None:
        return host, None
    if not port_text.isdigit():
        raise EnvironmentConfigError(
            f"{variable}={text!r} has a port that is not a number; expected host:port")
    return host, int(port_text)


# --- overrides -------------------------------------------------------------------------------


def _check_override_keys(overrides: dict) -> None:
    for key in overrides:
        if key not in FIELD_NAMES:
            raise EnvironmentConfigError(
                f"overrides[{key!r}] is not a JobEnvironment field; use one of "
                f"{', '.join(FIELD_NAMES)}")


def _apply_overrides(found: _Found, overrides: dict) -> None:
    for key, value in overrides.items():
        if value is None:
            continue
        source = f"overrides[{key!r}]"
        if key in _INT_FIELDS:
            value = _override_int(key, value, source)
        elif key in _BOOL_FIELDS:
            if not isinstance(value, bool):
                raise EnvironmentConfigError(f"{source}={value!r} must be true or false")
        elif key in _STR_FIELDS:
            if not isinstance(value, str) or not value.strip():
                raise EnvironmentConfigError(f"{source}={value!r} must be a non-empty string")
            value = value.strip()
        found.set(key, value, source)


def _override_int(key: str, value: Any, source: str) -> int:
    if isinstance(value, bool):
        raise EnvironmentConfigError(f"{source}={value!r} must be a whole number, not a boolean")
    if isinstance(value, str):
        try:
            value = int(value.strip(), 10)
        except ValueError:
            raise EnvironmentConfigError(
                f"{source}={value!r} is not an integer; give a whole number") from None
    if not isinstance(value, int):
        raise EnvironmentConfigError(f"{source}={value!r} must be a whole number")
    if value < 0:
        raise EnvironmentConfigError(f"{source}={value} is negative; give 0 or more")
    return value


# --- deriving and checking -------------------------------------------------------------------


def _resolve_topology(found: _Found, platform: str) -> None:
    """Fill node_count, devices_per_node, world_size, node_rank, local_rank and rank.

    Nodes are assumed uniform: rank = node_rank * devices_per_node + local_rank.
    """
    for name in ("node_count", "devices_per_node", "world_size"):
        if found.has(name) and found.value(name) < 1:
            raise EnvironmentConfigError(
                f"{found.describe(name)} must be at least 1; fix the variable or override "
                f"'{name}'")
    if platform == "msrun" and not found.value("is_scheduler") and not found.has("rank"):
        raise EnvironmentConfigError(
            "RANK_ID is unset in an msrun worker: msrun was started on several nodes without "
            "--node_rank, so ranks are only known after init(); pass --node_rank to msrun or "
            "set overrides['rank']")
    if platform == "msrun" and not found.has("node_count") and not found.has("devices_per_node"):
        _assume_single_msrun_node(found)

    world, nodes, per_node = (found.value(n) for n in ("world_size", "node_count",
                                                        "devices_per_node"))
    if per_node is None and world is not None and nodes is not None:
        found.set("devices_per_node", _divide(found, "world_size", "node_count"),
                  "world_size / node_count")
    elif nodes is None and world is not None and per_node is not None:
        found.set("node_count", _divide(found, "world_size", "devices_per_node"),
                  "world_size / devices_per_node")
    if not found.has("node_count"):
        found.set("node_count", 1, "default: one node")
    if not found.has("devices_per_node"):
        if found.has("world_size"):
            found.set("devices_per_node", _divide(found, "world_size", "node_count"),
                      "world_size / node_count")
        else:
            found.set("devices_per_node", 1, "default: one process per node")
    if not found.has("world_size"):
        found.set("world_size", found.value("node_count") * found.value("devices_per_node"),
                  "node_count x devices_per_node")

    per_node = found.value("devices_per_node")
    rank = found.value("rank")
    if not found.has("node_rank"):
        found.set("node_rank", 0 if rank is None else rank // per_node,
                  "default: node 0" if rank is None else "rank // devices_per_node")
    if not found.has("local_rank"):
        if rank is None:
            found.set("local_rank", 0, "default: first process on the node")
        else:
            found.set("local_rank", rank - found.value("node_rank") * per_node,
                      "rank - node_rank x devices_per_node")
    if not found.has("rank"):
        found.set("rank", found.value("node_rank") * per_node + found.value("local_rank"),
                  "node_rank x devices_per_node + local_rank")


def _assume_single_msrun_node(found: _Found) -> None:
    """msrun does not export --local_worker_num: without node info, assume one node."""
    rank, local_rank = found.value("rank"), found.value("local_rank")
    if rank is not None and local_rank is not None and rank != local_rank:
        raise EnvironmentConfigError(
            f"{found.describe('rank')} and {found.describe('local_rank')} mean several msrun "
            f"nodes, but msrun does not export its --local_worker_num; set "
            f"overrides['devices_per_node'] (or overrides['node_count'])")
    found.set("node_count", 1, "msrun without node information: one node")


def _divide(found: _Found, total: str, part: str) -> int:
    quotient, remainder = divmod(found.value(total), found.value(part))
    if remainder or quotient < 1:
        raise EnvironmentConfigError(
            f"{found.describe(total)} is not a multiple of {found.describe(part)}; fix one "
            f"or override '{total}'")
    return quotient


def _check_topology(found: _Found) -> None:
    """Raise for the broken relation that involves the fewest derived values.

    A value derived from a wrong one fails too; naming the variables actually given is what
    tells the user what to fix.
    """
    nodes, per_node, world = (found.value(n) for n in ("node_count", "devices_per_node",
                                                        "world_size"))
    node_rank, local_rank, rank = (found.value(n) for n in ("node_rank", "local_rank", "rank"))
    first, last = node_rank * per_node, (node_rank + 1) * per_node - 1
    checks = [
        (world == nodes * per_node, ("world_size", "node_count", "devices_per_node"),
         lambda d: f"{d('world_size')} != {d('node_count')} x {d('devices_per_node')}"),
        (rank < world, ("rank", "world_size"),
         lambda d: f"{d('rank')} must be below {d('world_size')}"),
        (node_rank < nodes, ("node_rank", "node_count"),
         lambda d: f"{d('node_rank')} must be below {d('node_count')}"),
        (local_rank < per_node, ("local_rank", "devices_per_node"),
         lambda d: f"{d('local_rank')} must be below {d('devices_per_node')}"),
        (first <= rank <= last, ("rank", "node_rank", "devices_per_node"),
         lambda d: f"{d('rank')} is not on node {d('node_rank')}, which holds ranks "
                   f"{first}-{last} with {d('devices_per_node')}"),
        (rank == first + local_rank, ("rank", "node_rank", "devices_per_node", "local_rank"),
         lambda d: f"{d('rank')} != node_rank x devices_per_node + local_rank ({d('node_rank')}, "
                   f"{d('devices_per_node')}, {d('local_rank')})"),
    ]
    failed = [(fields, message) for ok, fields, message in checks if not ok]
    if not failed:
        return
    fields, message = min(failed, key=lambda item: sum(not found.is_given(f) for f in item[0]))
    fix = next((f for f in fields if found.is_given(f)), fields[0])
    raise EnvironmentConfigError(
        f"{message(found.describe)}; fix the variable or override '{fix}'")


def _resolve_master_and_job(found: _Found) -> None:
    if not found.has("master_addr"):
        found.set("master_addr", DEFAULT_MASTER_ADDR, "default")
    if not found.has("master_port"):
        found.set("master_port", DEFAULT_MASTER_PORT, "default")
    port = found.value("master_port")
    if not 1 <= port <= 65535:
        raise EnvironmentConfigError(
            f"{found.describe('master_port')} is not a TCP port (1-65535); fix the variable or "
            f"override 'master_port'")
    if not found.has("job_id"):
        # Same on every node of one job, so it can name shared markers.
        key = "|".join(str(found.value(name)) for name in (
            "platform", "master_addr", "master_port", "world_size", "node_count"))
        found.set("job_id", "job-" + hashlib.sha256(key.encode()).hexdigest()[:12],
                  "hash of platform, master and sizes")
