"""HCCL rank tables: build, merge, convert, check and hand out v1.0 tables.

MindSpore's rank-table start-up on Ascend wants the v1.0 format::

    {"version": "1.0", "server_count": "2", "status": "completed",
     "server_list": [{"server_id": "10.0.0.9",
                      "device": [{"device_id": "0", "device_ip": "192.1.1.9", "rank_id": "0"}]}]}

with every value a string. Bare servers build one from ``/etc/hccn.conf`` (like the model
zoo's ``hccl_tools.py``); ModelArts writes ``jobstart_hccl.json`` in its own
``group_list``/``instance_list`` template, possibly still being written when the job starts.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

MODELARTS_TABLE_NAME = "jobstart_hccl.json"
_DEVICE_FIELDS = ("device_id", "device_ip", "rank_id")


class RankTableError(ValueError):
    """A rank table (or the files it is built from) is missing, malformed or inconsistent."""


# --- bare servers ----------------------------------------------------------------------------


def read_hccn_conf(path: str | os.PathLike = "/etc/hccn.conf") -> dict[int, str]:
    """Device id -> device IP from ``address_<id>=<ip>`` lines; other lines are ignored."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise RankTableError(
            f"cannot read {path} ({error.strerror}); configure the NPU NICs with hccn_tool "
            f"or pass hccn_conf_path") from None
    addresses: dict[int, str] = {}
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line.startswith("address_"):
            continue
        key, _, ip = line.partition("=")
        device_text = key[len("address_"):].strip()
        if not device_text.isdigit() or not ip.strip():
            raise RankTableError(f"{path}:{number}: expected address_<id>=<ip>, got {line!r}")
        device_id = int(device_text)
        if device_id in addresses:
            raise RankTableError(f"{path}:{number}: device {device_id} is listed twice")
        addresses[device_id] = ip.strip()
    return addresses


def generate_server_table(server_id: str, device_ids: list[int],
                          hccn_conf_path: str | os.PathLike = "/etc/hccn.conf") -> dict:
    """A v1.0 table for one server; ranks follow ``device_ids`` order, from 0."""
    if not device_ids:
        raise RankTableError(f"server {server_id}: no device ids given")
    if len(set(device_ids)) != len(device_ids):
        raise RankTableError(f"server {server_id}: device ids {device_ids} contain duplicates")
    addresses = read_hccn_conf(hccn_conf_path)
    devices = []
    for rank_id, device_id in enumerate(device_ids):
        if device_id not in addresses:
            raise RankTableError(
                f"{hccn_conf_path} has no address_{device_id}= line for device {device_id} "
                f"(it lists {sorted(addresses)}); pick devices it lists")
        devices.append({"device_id": str(device_id), "device_ip": addresses[device_id],
                        "rank_id": str(rank_id)})
    return {"version": "1.0", "server_count": "1",
            "server_list": [{"server_id": str(server_id), "device": devices,
                             "host_nic_ip": "reserve"}],
            "status": "completed"}


def merge_tables(tables: list[dict]) -> dict:
    """One table for the cluster: servers sorted by IP (numerically), ranks renumbered.

    Sorting (instead of keeping argument order, as the model zoo's ``merge_hccl.py`` does)
    makes every node that merges the same servers produce the same ranks.
    """
    if not tables:
        raise RankTableError("merge_tables: no tables given")
    servers = []
    for index, table in enumerate(tables):
        validate_table(table, where=f"table {index}")
        servers.extend(table["server_list"])
    _check_unique((s["server_id"] for s in servers), "server_id", "merged tables")
    ordered = sorted(servers, key=lambda server: server_sort_key(server["server_id"]))
    in_rank_order = [dict(server, device=sorted(server["device"],
                                                key=lambda device: int(device["rank_id"])))
                     for server in ordered]
    return _numbered(in_rank_order)


def server_sort_key(server_id: str) -> tuple:
    """IPs in numeric order (10.0.0.9 before 10.0.0.10), then host names alphabetically."""
    try:
        address = ipaddress.ip_address(server_id)
    except ValueError:
        return (1, 0, 0, server_id)
    return (0, address.version, int(address), server_id)


# --- ModelArts -------------------------------------------------------------------------------


def convert_modelarts_table(path_or_dir: str | os.PathLike, timeout_s: float = 600.0,
                            poll_s: float = 1.0, order: str = "pod_index") -> dict:
    """Wait for ModelArts' ``jobstart_hccl.json`` to be completed and return it as v1.0.

    ``path_or_dir`` is the file or the directory holding it (``RANK_TABLE_FILE`` may name
    either). The file may be missing or half written at first: it is re-read every ``poll_s``
    seconds until its ``status`` is ``completed`` or ``timeout_s`` passes.

    ``order`` decides which server gets the first ranks: ``"pod_index"`` (the number ending
    the pod name, which is the node's ``VC_TASK_INDEX``, as ModelArts' own launcher does) or
    ``"server_id"`` (IP order, as ``merge_tables``). A file already in v1.0 keeps its ranks.
    """
    return load_job_table(path_or_dir, timeout_s, poll_s, order).table


def _wait_until_completed(path: Path, timeout_s: float, poll_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        data, state = _read_if_completed(path)
        if data is not None:
            return data
        if time.monotonic() >= deadline:
            raise RankTableError(
                f"{path}: rank table not completed after {timeout_s:g} s ({state}); check "
                f"RANK_TABLE_FILE and that the job requested Ascend devices")
        time.sleep(max(0.0, min(poll_s, deadline - time.monotonic())))


def _read_if_completed(path: Path) -> tuple[dict | None, str]:
    """(data, "") once completed, else (None, why not yet)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, "file does not exist"
    except OSError as error:
        return None, f"cannot read it: {error.strerror}"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        return None, f"not valid JSON yet: {error.msg} at line {error.lineno}"
    if not isinstance(data, dict):
        return None, "not a JSON object"
    status = data.get("status")
    if status != "completed":
        return None, f"status is {status!r}"
    return data, ""


def _instances_from_group_list(data: dict, path: Path, order: str) -> list["TableInstance"]:
    """The pods that hold devices, in rank order, each with its devices (ranks not yet set)."""
    groups = data.get("group_list")
    if not isinstance(groups, list) or not groups:
        raise RankTableError(f"{path}: group_list is missing or empty")
    pods = []
    for g, group in enumerate(groups):
        instances = group.get("instance_list") if isinstance(group, dict) else None
        if not isinstance(instances, list):
            raise RankTableError(f"{path}: group_list[{g}] has no instance_list")
        for i, instance in enumerate(instances):
            where = f"{path}: group_list[{g}].instance_list[{i}]"
            if not isinstance(instance, dict):
                raise RankTableError(f"{where} is not an object")
            devices = instance.get("devices") or []
            if not devices:
                continue  # CPU-only groups carry no devices and take no ranks
            server_id = instance.get("server_id")
            if not server_id:
                raise RankTableError(f"{where} has no server_id")
            checked = []
            for d, device in enumerate(devices):
                for field in ("device_id", "device_ip"):
                    if not isinstance(device, dict) or device.get(field) in (None, ""):
                        raise RankTableError(f"{where}.devices[{d}] has no {field}")
                checked.append({"device_id": str(device["device_id"]),
                                "device_ip": str(device["device_ip"])})
            checked.sort(key=lambda device: _int_or_text(device["device_id"]))
            pod_name = str(instance["pod_name"]) if instance.get("pod_name") else None
            pods.append(TableInstance(pod_name, str(server_id), tuple(checked)))
    if not pods:
        raise RankTableError(f"{path}: no instance lists any devices")
    pods.sort(key=lambda pod: (server_sort_key(pod.server_id), pod.pod_name or ""))
    if order == "pod_index" and all(pod.pod_index is not None for pod in pods):
        pods.sort(key=lambda pod: pod.pod_index)
    return pods


def _ranked(pods: list["TableInstance"]) -> tuple[dict, tuple]:
    """Ranks pod by pod in this order, as Huawei's own launcher numbers them
    (mindspore-lab/mindone tools/modelarts/run_ascend/rank_table.py); pods that share a host
    share its server entry, which then holds each pod's ranks as they were given (a host whose
    pods are not neighbours in pod order has ranks that are not contiguous)."""
    servers: dict[str, dict] = {}
    ranked, rank = [], 0
    for pod in pods:
        devices = []
        for device in pod.devices:
            devices.append({"device_id": device["device_id"], "device_ip": device["device_ip"],
                            "rank_id": str(rank)})
            rank += 1
        ranked.append(TableInstance(pod.pod_name, pod.server_id, tuple(devices)))
        servers.setdefault(pod.server_id, {"server_id": pod.server_id, "device": []})
        servers[pod.server_id]["device"].extend(devices)
    table = {"version": "1.0", "server_count": str(len(servers)),
             "server_list": list(servers.values()), "status": "completed"}
    return table, tuple(ranked)


# --- this node's part ------------------------------------------------------------------------


@dataclass(frozen=True)
class TableInstance:
    """One pod of a ModelArts table (or one server of a v1.0 table) and the devices it runs.

    ``devices`` keep the physical ``device_id`` and ``device_ip`` the table lists (HCCL reads
    those); the process for the i-th device by physical id gets the logical id i, which is
    what the container sees (``ASCEND_DEVICE_ID``: 0..n-1 whatever the physical ids).
    """

    pod_name: Optional[str]
    server_id: str
    devices: tuple  # ({"device_id", "device_ip"[, "rank_id"]}, ...)

    @property
    def pod_index(self) -> Optional[int]:
        return _pod_index({"pod_name": self.pod_name or ""})

    def label(self) -> str:
        return f"pod {self.pod_name} on {self.server_id}" if self.pod_name else \
            f"server {self.server_id}"


@dataclass(frozen=True)
class JobTable:
    """A job's v1.0 table plus the pods (or servers) that run its ranks, in rank order."""

    table: dict
    instances: tuple

    @property
    def world(self) -> int:
        return sum(len(server["device"]) for server in self.table["server_list"])


def load_job_table(path_or_dir: str | os.PathLike, timeout_s: float = 600.0,
                   poll_s: float = 1.0, order: str = "pod_index") -> JobTable:
    """Wait for ModelArts' ``jobstart_hccl.json`` to be completed (see
    ``convert_modelarts_table``) and return it as v1.0 with the pods that run its ranks."""
    if order not in ("pod_index", "server_id"):
        raise RankTableError(f"order={order!r}: use 'pod_index' or 'server_id'")
    if poll_s <= 0 or timeout_s < 0:
        raise RankTableError(f"poll_s={poll_s} must be > 0 and timeout_s={timeout_s} >= 0")
    path = _table_path(path_or_dir)
    data = _wait_until_completed(path, timeout_s, poll_s)
    if "server_list" in data:
        table = _stringified(data)
        validate_table(table, where=str(path))
        pods = tuple(TableInstance(None, s["server_id"], tuple(
            sorted(s["device"], key=lambda d: int(d["rank_id"])))) for s in table["server_list"])
    elif "group_list" in data:
        table, pods = _ranked(_instances_from_group_list(data, path, order))
        validate_table(table, where=str(path))
    else:
        raise RankTableError(f"{path}: has neither group_list (ModelArts) nor server_list (v1.0)")
    return JobTable(table, pods)


def find_own_instance(job_table: JobTable, *, instance_name: Optional[str] = None,
                      host_ip: Optional[str] = None, task_index: Optional[int] = None,
                      node_count: Optional[int] = None) -> tuple[TableInstance, str]:
    """This node's pod and the rule that found it, tried in this order:

    1. ``pod_name`` == the platform's instance name (``MA_CURRENT_INSTANCE_NAME``; legacy
       ``BATCH_TASK_CURRENT_INSTANCE``), as Huawei's launcher does for new-style tables;
    2. ``server_id`` == the host IP (``MA_CURRENT_HOST_IP``), when one pod alone is on it;
    3. the task index (``VC_TASK_INDEX``) == the number ending the pod names, or the position
       in a table that has exactly one entry per node, when that is unambiguous;
    4. the table's only entry.
    The container's own IP (``MA_CURRENT_IP``) is never compared: ``server_id`` is the host's.
    """
    pods = job_table.instances
    tried = []
    if instance_name:
        named = [pod for pod in pods if pod.pod_name == instance_name]
        if len(named) == 1:
            return named[0], f"pod_name == instance name {instance_name!r}"
        tried.append(f"no pod named {instance_name!r}")
    if host_ip:
        on_host = [pod for pod in pods if pod.server_id == host_ip]
        if len(on_host) == 1:
            return on_host[0], f"server_id == host IP {host_ip}"
        tried.append(f"{len(on_host)} entries on host {host_ip}")
    if task_index is not None:
        indexed = [pod for pod in pods if pod.pod_index == task_index]
        if len(indexed) == 1 and all(pod.pod_index is not None for pod in pods):
            return indexed[0], f"pod index == task index {task_index}"
        if all(pod.pod_name is None for pod in pods) and node_count == len(pods) \
                and task_index < len(pods):
            return pods[task_index], f"position {task_index} (task index) of {len(pods)} servers"
        tried.append(f"task index {task_index} matches no single entry")
    if len(pods) == 1:
        return pods[0], "the table's only entry"
    listed = ", ".join(pod.label() for pod in pods)
    why = "; ".join(tried) or "no instance name, host IP or task index given"
    raise RankTableError(
        f"cannot tell which rank-table entry is this node ({why}; the table lists {listed}); "
        f"set MA_CURRENT_INSTANCE_NAME or MA_CURRENT_HOST_IP, or check RANK_TABLE_FILE")


def _table_path(path_or_dir: str | os.PathLike) -> Path:
    path = Path(path_or_dir)
    return path / MODELARTS_TABLE_NAME if path.is_dir() else path


def _pod_index(instance: dict) -> int | None:
    """``job0f1c-job-trainjob-3`` -> 3; None when the pod name does not end in a number."""
    suffix = str(instance.get("pod_name", "")).rpartition("-")[2]
    return int(suffix) if suffix.isdigit() else None


def _int_or_text(value: str) -> tuple:
    return (0, int(value), "") if value.isdigit() else (1, 0, value)


# --- shared building blocks ------------------------------------------------------------------


def _numbered(servers: list[dict]) -> dict:
    """A completed v1.0 table over ``servers`` in this order, ranks 0..N-1, all strings."""
    server_list, rank_id = [], 0
    for server in servers:
        devices = []
        for device in server["device"]:
            devices.append({"device_id": str(device["device_id"]),
                            "device_ip": str(device["device_ip"]), "rank_id": str(rank_id)})
            rank_id += 1
        entry = {key: value for key, value in server.items() if key != "device"}
        entry["server_id"] = str(server["server_id"])
        entry["device"] = devices
        server_list.append(entry)
    return {"version": "1.0", "server_count": str(len(server_list)),
            "server_list": server_list, "status": "completed"}


def _stringified(value: Any) -> Any:
    """Numbers to strings throughout, as MindSpore expects (the model zoo's merge writes ints)."""
    if isinstance(value, dict):
        return {key: _stringified(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_stringified(item) for item in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


# --- checking --------------------------------------------------------------------------------


def validate_table(table: Any, world_size: int | None = None,
                   devices_per_node: int | None = None, where: str = "rank table") -> None:
    """Raise ``RankTableError`` (one line: what and where) unless ``table`` is usable v1.0."""

    def fail(problem: str) -> None:
        raise RankTableError(f"{where}: {problem}")

    if not isinstance(table, dict):
        fail("is not a JSON object")
    for key in ("version", "server_count", "server_list", "status"):
        if key not in table:
            fail(f"missing '{key}'")
    if table["version"] != "1.0":
        fail(f"version is {table['version']!r}; only '1.0' is supported (convert it first)")
    if table["status"] != "completed":
        fail(f"status is {table['status']!r}, not 'completed'")
    servers = table["server_list"]
    if not isinstance(servers, list) or not servers:
        fail("server_list is empty or not a list")
    if table["server_count"] != str(len(servers)):
        fail(f"server_count is {table['server_count']!r} but server_list has {len(servers)} "
             f"servers")

    ranks, device_ips = [], []
    for s, server in enumerate(servers):
        here = f"server_list[{s}]"
        if not isinstance(server, dict) or not _is_text(server.get("server_id")):
            fail(f"{here} has no server_id")
        here = f"server {server['server_id']}"
        devices = server.get("device")
        if not isinstance(devices, list) or not devices:
            fail(f"{here} has no devices")
        for d, device in enumerate(devices):
            if not isinstance(device, dict):
                fail(f"{here} device[{d}] is not an object")
            for field in _DEVICE_FIELDS:
                if field not in device or device[field] in ("", None):
                    fail(f"{here} device[{d}] is missing {field}")
                if not _is_text(device[field]):
                    fail(f"{here} device[{d}] {field} is {device[field]!r}; values must be "
                         f"strings like \"{device[field]}\"")
            for field in ("device_id", "rank_id"):
                if not device[field].isdigit():
                    fail(f"{here} device[{d}] {field} {device[field]!r} is not a number")
            ranks.append(int(device["rank_id"]))
            device_ips.append(device["device_ip"])
        _check_unique((d["device_id"] for d in devices), "device_id", where, here)
        if devices_per_node is not None and len(devices) != devices_per_node:
            fail(f"{here} has {len(devices)} devices, expected {devices_per_node} per node")

    _check_unique((s["server_id"] for s in servers), "server_id", where)
    _check_unique((str(rank) for rank in ranks), "rank_id", where)
    _check_unique(device_ips, "device_ip", where)
    if sorted(ranks) != list(range(len(ranks))):
        missing = sorted(set(range(len(ranks))) - set(ranks))
        fail(f"rank_ids are not 0..{len(ranks) - 1} (missing {missing})")
    if world_size is not None and len(ranks) != world_size:
        fail(f"lists {len(ranks)} devices but the world size is {world_size}")


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _check_unique(values: Iterable[str], field: str, where: str, within: str = "") -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            scope = f" in {within}" if within else ""
            raise RankTableError(f"{where}: duplicate {field} {value!r}{scope}")
        seen.add(value)


# --- files and processes ---------------------------------------------------------------------


def read_table(path: str | os.PathLike) -> dict:
    """Load and validate a v1.0 table file."""
    path = Path(path)
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise RankTableError(f"cannot read rank table {path} ({error.strerror})") from None
    except json.JSONDecodeError as error:
        raise RankTableError(f"{path}: invalid JSON: {error.msg} at line {error.lineno}") from None
    validate_table(table, where=str(path))
    return table


def write_table(table: dict, path: str | os.PathLike) -> Path:
    """Write ``table`` so that readers see the old file or the whole new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent,
                                         prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            json.dump(table, handle, indent=4)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(handle.name, 0o644)
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    return path


def device_processes(instance: TableInstance, world: int,
                     table_path: str | os.PathLike) -> list[tuple[dict, str]]:
    """(variables, physical device id) for each device process of one pod, in rank order.

    The table keeps the physical ids (HCCL reads them); the process gets the logical one, the
    device's position among the pod's physical ids, as ``DEVICE_ID`` and ``ASCEND_DEVICE_ID``:
    a container sees its devices as 0..n-1 even when the table lists 4 and 5 (Huawei's docs:
    "ASCEND_DEVICE_ID: 逻辑device_id"; its launcher sets both to the index).
    """
    by_physical = sorted(instance.devices, key=lambda device: _int_or_text(device["device_id"]))
    logical = {device["device_id"]: str(i) for i, device in enumerate(by_physical)}
    processes = []
    for device in instance.devices:
        index = logical[device["device_id"]]
        processes.append(({"DEVICE_ID": index, "ASCEND_DEVICE_ID": index,
                           "RANK_ID": device["rank_id"], "RANK_SIZE": str(world),
                           "RANK_TABLE_FILE": str(table_path)}, device["device_id"]))
    return processes
