"""What one invocation of the ModelArts boot file starts, and the rule that decided it.

How MindSpore 2.10 starts several ranks: msrun, on Ascend as on GPU and CPU. MindSpore's
documentation recommends it ("msrun Launching", https://www.mindspore.cn/tutorials/en/r2.10.0/
parallel/msrun_launcher.html: Ascend, GPU and CPU) and has deprecated rank-table startup since
2.4 ("Distributed Parallel Startup Methods", https://www.mindspore.cn/tutorials/en/stable/
parallel/startup_method.html, the newest version of that page found: "rank_table method has been
deprecated in MindSpore 2.4 version"; no 2.10 version of it or of "rank table Startup" was found).
MindSpore 2.10's msrun says of its own --rank_table_file that the table is "not used to initialize
distributed job in 'rank table file manner'", and its HCCL world group is created from a rank
table whenever RANK_TABLE_FILE is set: so msrun's ranks get no RANK_TABLE_FILE (ModelArts sets
one in Ascend containers, naming its jobstart_hccl.json folder), as Huawei's own ModelArts msrun
launcher does (mindspore-lab/mindone tools/modelarts/msrun/run_train_modelarts.sh unsets
RANK_TABLE_FILE and RANK_ID before msrun).

Four shapes, chosen by what the platform already did and by --launch:

* ``platform``: the platform started this invocation as one rank. ModelArts' preset
  Ascend-Powered-Engine runs the boot file once per card with ``RANK_TABLE_FILE``,
  ``ASCEND_DEVICE_ID`` (logical), ``RANK_ID`` and ``RANK_SIZE`` set (Huawei Cloud docs,
  "Ascend-Powered-Engine框架启动原理"); ``MA_RUN_METHOD=msrun`` starts it under msrun; MPI
  engines under mpirun. This invocation then becomes exactly that rank: never N processes per
  invocation, which would be N x N in all. (MindSpore 2.10's ``init()`` still accepts RANK_ID
  with RANK_TABLE_FILE for such ranks.)
* ``msrun``: several ranks on this node (the default on every target): msrun starts them, with
  logical ``DEVICE_ID`` 0..n-1 on Ascend, ranks numbered node by node from the task index.
* ``rank_table``: Ascend only, on request (``--launch rank_table``; deprecated by MindSpore since
  2.4, kept for images whose CANN/MindSpore setup still needs it): one process per device of
  this node's pod, each with its logical ``DEVICE_ID``/``ASCEND_DEVICE_ID`` and its
  ``RANK_ID``; the table keeps the physical ids HCCL reads.
* ``single``: one rank.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from cloud.cluster import rank_table as rt
from core.config import ConfigError
from launcher import distributed as dist

log = logging.getLogger("launcher.modelarts.plan")

DEFAULT_CONNECT_TIMEOUT_S = 1800  # Huawei's launcher sets HCCL_CONNECT_TIMEOUT=1800


@dataclass
class Plan:
    """The processes this node runs: msrun (`msrun`) or ranks with their own variables."""

    kind: str                                   # "single", "platform", "rank_table" or "msrun"
    ranks: list = field(default_factory=list)   # [{"rank", "env", "argv"[, "physical_device_id"]}]
    msrun: dict = field(default_factory=dict)   # keyword arguments of dist.launch_msrun
    rank_table: Optional[str] = None
    rule: str = ""                              # how this node found its place
    scheduler: Optional[dict] = None            # {"env", "argv"}: MindSpore's CPU/GPU scheduler

    def describe(self) -> dict:
        shown = {"launch": self.kind, "rank_table": self.rank_table, "rule": self.rule,
                 "scheduler": self.scheduler}
        if self.ranks:
            shown["processes"] = self.ranks
        if self.msrun:
            shown["msrun"] = {k: str(v) for k, v in self.msrun.items()}
        return shown


@dataclass
class PlanInputs:
    """What every plan needs besides the environment."""

    config_path: Path
    run_dir: Path
    cache_dir: Path
    resume: Optional[str]
    pretrained: Optional[str]
    grace_s: float
    connect_timeout_s: int
    rank_table_timeout_s: float
    hccn_conf: str
    nproc: Optional[int] = None   # --nproc as given
    launch: str = "auto"          # --launch
    launch_dir: Optional[Path] = None  # where the rank table goes; None: <run_dir>/launch

    def worker_argv(self, env, **topology) -> list[str]:
        return [sys.executable] + dist.worker_argv(
            self.config_path, resume=self.resume, pretrained=self.pretrained, job_id=env.job_id,
            cache_dir=str(self.cache_dir), grace_s=self.grace_s, **topology)


def plan_for(env, target: str, inputs: PlanInputs) -> Plan:
    """The plan for this invocation (see the module docstring)."""
    if env.run_method == "torchrun":
        raise ConfigError("MA_RUN_METHOD=torchrun starts PyTorch's torchrun, which cannot start "
                          "MindSpore ranks; use the engine's default start or MA_RUN_METHOD=msrun")
    if env.launched_rank:
        return platform_rank_plan(env, target, inputs)
    launch = launch_method(target, inputs.launch)
    nproc = inputs.nproc or env.devices_per_node
    table = None
    if launch == "rank_table" and (env.rank_table_file or env.node_count * nproc > 1):
        table = node_table(env, nproc, inputs)
        nproc = len(table.own.devices)
    world = table.world if table else env.node_count * nproc
    if world == 1:  # a 1-card pod still gets the logical id: its table may say device 3
        argv = inputs.worker_argv(env, nnodes=env.node_count, node_rank=env.node_rank,
                                  nproc_per_node=1)
        variables = {}
        if target == "Ascend":
            device = "0" if table or env.device_id is None else str(env.device_id)
            variables = {"DEVICE_ID": device, "ASCEND_DEVICE_ID": device}
        return Plan("single", ranks=[{"rank": 0, "env": variables, "argv": argv}],
                    rule=table.rule if table else "one rank")
    if table:
        return rank_table_plan(env, table, inputs)
    return msrun_plan(env, nproc, inputs, ascend=target == "Ascend")


def launch_method(target: str, requested: str) -> str:
    """msrun unless --launch rank_table asks for MindSpore's deprecated Ascend-only start."""
    if requested != "rank_table":
        return "msrun"
    if target != "Ascend":
        raise ConfigError(f"--launch rank_table: rank-table startup exists only on Ascend (this "
                          f"job runs on {target}); drop --launch (msrun is the default)")
    log.warning("--launch rank_table: one process per device from the rank table, a start-up "
                "MindSpore has deprecated since 2.4 (msrun, the default, is the documented way)")
    return "rank_table"


# --- Ascend rank tables ----------------------------------------------------------------------


@dataclass
class NodeTable:
    """The job's table, written for the ranks, and this node's pod in it."""

    job: rt.JobTable
    path: Path
    own: rt.TableInstance
    rule: str

    @property
    def world(self) -> int:
        return self.job.world

    @property
    def node_index(self) -> int:
        return self.job.instances.index(self.own)

    @property
    def node_count(self) -> int:
        return len(self.job.instances)


def node_table(env, nproc: int, inputs: PlanInputs) -> NodeTable:
    """The job's v1.0 table (converted from RANK_TABLE_FILE, or generated for this one server
    from hccn.conf), written to the run directory, and this node's pod in it."""
    if env.rank_table_file:
        job = rt.load_job_table(env.rank_table_file, timeout_s=inputs.rank_table_timeout_s)
    elif env.node_count == 1:
        server = env.host_ip or env.node_ip or local_ip(env.master_addr)
        table = rt.generate_server_table(server, list(range(nproc)), inputs.hccn_conf)
        job = rt.JobTable(table, (rt.TableInstance(None, server, tuple(
            table["server_list"][0]["device"])),))
    else:
        raise ConfigError("several Ascend nodes but no RANK_TABLE_FILE: merge the servers' "
                          "tables (cloud.cluster.rank_table.merge_tables) and set RANK_TABLE_FILE")
    own, rule = rt.find_own_instance(
        job, instance_name=env.instance_name, host_ip=env.host_ip,
        task_index=env.node_rank if env.on_modelarts else None, node_count=env.node_count)
    if inputs.nproc and inputs.nproc != len(own.devices):
        raise ConfigError(f"--nproc {inputs.nproc} but the rank table gives this node "
                          f"({own.label()}) {len(own.devices)} devices; drop --nproc or fix the "
                          f"table")
    path = rt.write_table(job.table, (inputs.launch_dir or inputs.run_dir / "launch") / "rank_table.json")
    return NodeTable(job, path, own, f"{own.label()}: {rule}")


def rank_table_plan(env, table: NodeTable, inputs: PlanInputs) -> Plan:
    ranks = []
    for variables, physical in rt.device_processes(table.own, table.world, table.path):
        variables.update(hccl_timeout(inputs))
        argv = inputs.worker_argv(env, nnodes=table.node_count, node_rank=table.node_index,
                                  nproc_per_node=len(table.own.devices))
        ranks.append({"rank": int(variables["RANK_ID"]), "physical_device_id": physical,
                      "env": variables, "argv": argv})
    return Plan("rank_table", ranks=ranks, rank_table=str(table.path), rule=table.rule)


def hccl_timeout(inputs: PlanInputs) -> dict:
    """HCCL_CONNECT_TIMEOUT unless the job sets its own: nodes stage data at different speeds
    before the first collective."""
    if os.environ.get("HCCL_CONNECT_TIMEOUT"):
        return {}
    return {"HCCL_CONNECT_TIMEOUT": str(inputs.connect_timeout_s)}


# --- a rank the platform started -------------------------------------------------------------


def platform_rank_plan(env, target: str, inputs: PlanInputs) -> Plan:
    """This invocation is one rank: check it against the table and become that rank."""
    variables, rule = {}, f"started by the platform as rank {env.rank} of {env.world_size}"
    nnodes, node_rank, per_node = env.node_count, env.node_rank, env.devices_per_node
    table_path = None
    if target == "Ascend" and env.rank_table_file:
        table = node_table(env, inputs.nproc or env.devices_per_node, inputs)
        own_ranks = [int(device["rank_id"]) for device in table.own.devices]
        if env.rank not in own_ranks or table.world != env.world_size:
            raise ConfigError(f"RANK_ID={env.rank}, RANK_SIZE={env.world_size} do not match the "
                              f"rank table ({table.own.label()} holds ranks {own_ranks} of "
                              f"{table.world}); check RANK_TABLE_FILE")
        nnodes, node_rank, per_node = table.node_count, table.node_index, len(own_ranks)
        table_path = str(table.path)
        variables["RANK_TABLE_FILE"] = table_path
        rule += f"; {table.rule}"
    if env.device_id is not None:  # the logical id the platform gave (ASCEND_DEVICE_ID)
        variables["DEVICE_ID"] = variables["ASCEND_DEVICE_ID"] = str(env.device_id)
    if target == "Ascend":
        variables.update(hccl_timeout(inputs))
    scheduler = None
    if target != "Ascend" and env.platform not in ("msrun", "mpirun") and env.world_size > 1:
        variables.update(dynamic_cluster(env, inputs))  # what msrun would have exported
        if env.rank == 0:
            scheduler = {"env": dict(variables, MS_ROLE="MS_SCHED"),
                         "argv": inputs.worker_argv(env, nnodes=nnodes, node_rank=0,
                                                    nproc_per_node=per_node)}
    argv = inputs.worker_argv(env, nnodes=nnodes, node_rank=node_rank, nproc_per_node=per_node)
    return Plan("platform", ranks=[{"rank": env.rank, "env": variables, "argv": argv}],
                rank_table=table_path, rule=rule, scheduler=scheduler)


# What msrun exports to its ranks (MindSpore's dynamic cluster): dynamic_cluster sets them for
# ranks no msrun started; a rank-table process must not inherit them.
DYNAMIC_CLUSTER_VARS = ("MS_ROLE", "MS_SCHED_HOST", "MS_SCHED_PORT", "MS_WORKER_NUM", "MS_NODE_ID",
                        "MS_TOPO_TIMEOUT")


def dynamic_cluster(env, inputs: PlanInputs) -> dict:
    """MindSpore's dynamic-cluster variables for a rank that no msrun started (CPU/GPU)."""
    return {"MS_ROLE": "MS_WORKER", "MS_WORKER_NUM": str(env.world_size),
            "MS_NODE_ID": str(env.rank), "MS_SCHED_HOST": env.master_addr,
            "MS_SCHED_PORT": str(env.master_port), "MS_TOPO_TIMEOUT": str(inputs.connect_timeout_s)}


# --- msrun -----------------------------------------------------------------------------------


# Inherited variables msrun's ranks must not see on Ascend: a RANK_TABLE_FILE (or its older
# name) makes MindSpore create HCCL's world group from that table instead of msrun's cluster, and
# ModelArts' table names physical devices a container sees as 0..n-1; msrun sets each rank's
# RANK_ID and DEVICE_ID itself, and an inherited ASCEND_DEVICE_ID would put every rank on one card
# (cloud.cluster.environment reads it before DEVICE_ID).
MSRUN_UNSET_ON_ASCEND = ("RANK_TABLE_FILE", "MINDSPORE_HCCL_CONFIG_PATH", "RANK_ID",
                         "ASCEND_DEVICE_ID")


def msrun_plan(env, nproc: int, inputs: PlanInputs, ascend: bool) -> Plan:
    several = env.node_count > 1
    return Plan("msrun", rule=f"node {env.node_rank} of {env.node_count}", msrun=dict(
        nproc=nproc, nnodes=env.node_count, node_rank=env.node_rank,
        log_dir=inputs.run_dir / "msrun_logs" / (f"node{env.node_rank}" if several else ""),
        master_addr=env.master_addr if several else "127.0.0.1",
        master_port=env.master_port if several else dist.free_port(),
        resume=inputs.resume, pretrained=inputs.pretrained,
        job_id=env.job_id, cache_dir=str(inputs.cache_dir),
        cluster_timeout_s=inputs.connect_timeout_s,
        extra_env=hccl_timeout(inputs) if ascend else {},
        unset_env=MSRUN_UNSET_ON_ASCEND if ascend else ()))


def local_ip(master: str) -> str:
    """This host's address on the route to the master (no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((master, 9))
            return sock.getsockname()[0]
    except OSError:
        return "127.0.0.1"
