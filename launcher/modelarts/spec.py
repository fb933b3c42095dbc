"""The ModelArts training-job definition (API v2) built from the boot file's arguments.

Printed by `launcher/modelarts.py --print-job-spec`; the body of POST
/v2/{project_id}/training-jobs that `launcher/modelarts.py submit` sends.

What it holds (field names from the API reference "Creating a Training Job" and the
huaweicloudsdkmodelarts 3.1.219 models Job/JobMetadata/JobAlgorithm/Spec):
* metadata.name, .description, .annotations["fault-tolerance/job-retry-num"] (--max_retries:
  ModelArts restarts the job on a detected fault, up to N times);
* algorithm: code_dir + boot_file + engine{engine_name, engine_version} for a preset engine, or
  engine{image_url} + command for the custom image (`exec` + the absolute interpreter: see
  IMAGE_COMMAND);
  parameters (config keys as valid names: `train.epochs` -> `train_epochs`, which the boot
  file maps back); inputs (data_url) and outputs (train_url) with their container folders;
  environments (--env K=V; e.g. HCCL_CONNECT_TIMEOUT, which the boot file otherwise sets from
  its connect_timeout parameter);
* the train_url output has `prefetch_to_local: true` ("Predownload" in the console): on a
  restart ModelArts first downloads what the job already wrote, so `--resume auto` finds the
  checkpoints in the mounted output folder. The field is in Huawei's algorithm examples and the
  console, not in the SDK 3.1.219 models; `--no_prefetch_output` leaves it out;
* spec.resource{flavor_id, node_count, pool_id}, spec.log_export_path.obs_url (--log_url).

With data.stream=true (`--data_stream=true`) the dataset is no input channel: ModelArts would copy
it all into the container before the job starts. The job gets its OBS URL as the `data_url`
parameter and reads the shards itself while training (cloud.storage.shard_cache), with the
temporary keys of the node's agency (`storage_metadata_url`, Huawei Cloud's instance metadata,
unless the recipe or a parameter names other credentials' source) and the region's OBS endpoint
(`OBS_REGION` in the job's environment, from the submitter's region, unless given).
"""
from __future__ import annotations

import re
from typing import Optional

from core.config import ConfigError

CODE_DIR_IN_IMAGE = "/home/ma-user/mnv3"
# The custom image's interpreter (fixed by the Dockerfile): no conda activation, no PATH lookup.
IMAGE_PYTHON = "/opt/mnv3/venv/bin/python"
# The custom image's boot command. ModelArts hands it to a shell (its "Boot Command" help lets
# commands be chained with ';' and '&&', https://support.huaweicloud.com/intl/tr-tr/drawer-
# modelarts/ma_drawer_038.html) and appends the parameters as --name=value to the last command
# ("Developing Code for Training Using a Custom Image", https://support.huaweicloud.com/intl/
# en-us/develop-modelarts/develop-modelarts-1416.html). `exec` makes the boot file replace that
# shell, so the platform's SIGTERM on a stop reaches Python, which checkpoints and exits 0: a shell
# left in between (dash, Debian's /bin/sh, runs `sh -c 'python ...'` as a child) would take the
# signal instead (ignored by a PID 1 shell, fatal to any other) and the job would be killed at the
# end of the grace period without its checkpoint.
IMAGE_COMMAND = f"exec {IMAGE_PYTHON} {CODE_DIR_IN_IMAGE}/launcher/modelarts.py"
# Preset engines that run MindSpore (ModelArts docs, "Starting Training Using a Preset Image's
# Boot File"): Ascend-Powered-Engine starts the boot file once per NPU (or via MA_RUN_METHOD=
# msrun); MPI and MindSpore-GPU start it once per GPU through mpirun.
PRESET_ENGINES = ("Ascend-Powered-Engine", "MPI", "MindSpore-GPU")
DEFAULT_FLAVORS = {"Ascend": "modelarts.kat1.8xlarge", "GPU": "modelarts.p3.4xlarge",
                   "CPU": "modelarts.vm.cpu.8u"}
# Where ModelArts mounts (or downloads) the input and output channels in the container.
INPUT_DIR = "/home/ma-user/modelarts/inputs/data_url_0"
OUTPUT_DIR = "/home/ma-user/modelarts/outputs/train_url_0"
# Variables every job gets (none: the boot file sets HCCL_CONNECT_TIMEOUT from --connect_timeout,
# which the job receives as a parameter, unless the job's environment already has it).
DEFAULT_ENVIRONMENT: dict = {}
RETRY_ANNOTATION = "fault-tolerance/job-retry-num"
UNCONDITIONAL_RETRY_ANNOTATION = "fault-tolerance/job-unconditional-retry"
HANG_RETRY_ANNOTATION = "fault-tolerance/hang-retry"
# What --max_retries may be: the values ModelArts takes for fault-tolerance/job-retry-num (0
# leaves the annotation out: no restart).
MAX_RETRIES = (1, 3)

PARAMETER_NAME = re.compile(r"^[A-Za-z0-9_-]+$")      # what ModelArts accepts
JOB_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_ENVIRONMENT = 100
# Never put these in a job definition: parameters and environments are shown in the console
# and returned by the API. ModelArts gives the job its own OBS access.
SECRET_KEYS = ("storage.access_key_id", "storage.secret_access_key", "storage.session_token")
SECRET_NAME = re.compile(r"(SECRET|PASSWORD|TOKEN|(^|_)SK$|(^|_)AK$|ACCESS_KEY)", re.IGNORECASE)


def obs_path(url: str) -> str:
    """obs://bucket/dir -> /bucket/dir/, the form ModelArts' API takes."""
    if url.startswith("obs://"):
        url = "/" + url[len("obs://"):]
    return url.rstrip("/") + "/"


def check_obs(url: Optional[str], option: str) -> None:
    """ModelArts reads and writes OBS only: obs://bucket/path (or the API's /bucket/path)."""
    if url and not url.startswith(("obs://", "/")):
        raise ConfigError(f"{option} {url}: a ModelArts job reads and writes OBS; give "
                          f"obs://BUCKET/PATH")


def obs_url(url: str) -> str:
    """/bucket/dir or obs://bucket/dir -> obs://bucket/dir/ (the log export path's form)."""
    if url.startswith("/"):
        url = "obs://" + url.lstrip("/")
    return url.rstrip("/") + "/"


def parameter_name(key: str) -> str:
    """A config key as a ModelArts parameter name: the section's dot becomes `_`
    (`train.epochs` -> `train_epochs`), the inverse of split_hyperparameters in the boot file."""
    name = key.replace(".", "_", 1)
    if not PARAMETER_NAME.match(name):
        raise ConfigError(f"config key {key!r} cannot be a ModelArts parameter ({name!r}): names "
                          f"may hold only letters, digits, '-' and '_'")
    return name


def environment(pairs: Optional[list]) -> dict:
    """DEFAULT_ENVIRONMENT plus `--env K=V` (later ones win), validated as the API wants."""
    env = dict(DEFAULT_ENVIRONMENT)
    for text in pairs or ():
        name, sep, value = text.partition("=")
        if not sep or not ENV_NAME.match(name):
            raise ConfigError(f"--env {text!r}: expected NAME=VALUE with NAME of letters, digits "
                              f"and '_', not starting with a digit")
        if SECRET_NAME.search(name):
            raise ConfigError(f"--env {name}: looks like a credential; a job's environment is "
                              f"shown in the console and the API. Jobs reach OBS with the access "
                              f"ModelArts gives them: leave the keys out")
        if "$" in value:
            raise ConfigError(f"--env {name}: ModelArts does not expand '$' references; give "
                              f"the value itself")
        env[name] = value
    if len(env) > MAX_ENVIRONMENT:
        raise ConfigError(f"{len(env)} environment variables: ModelArts takes at most "
                          f"{MAX_ENVIRONMENT}")
    return env


class Placeholders:
    """Values the user did not give: a placeholder goes into the definition and a note to stderr."""

    def __init__(self):
        self.todo: list[str] = []

    def given(self, value: Optional[str], placeholder: str, what: str) -> str:
        if value:
            return value
        self.todo.append(f"{what} ({placeholder})")
        return placeholder


def job_spec(args, cfg, overrides: dict) -> tuple[dict, list[str]]:
    """A training-job definition for POST /v2/{project_id}/training-jobs (or the console), and
    the placeholders left in it for the user to fill."""
    missing = Placeholders()
    algorithm = {"parameters": parameters(args, overrides), **engine_part(args, missing),
                 **channels(args, cfg, missing),
                 "environments": environment(getattr(args, "env", None))}
    if cfg.data.stream:
        streamed_input(args, cfg, algorithm, missing)
    spec = {"kind": "job", "metadata": metadata_part(args, cfg), "algorithm": algorithm,
            "spec": resource_part(args, cfg, missing)}
    return spec, missing.todo


def parameters(args, overrides: dict) -> list[dict]:
    """The boot file's arguments: config keys under valid names, then its own options."""
    secret = sorted(set(SECRET_KEYS) & set(overrides))
    if secret:
        raise ConfigError(f"{secret[0]} would be written into the job definition (shown in the "
                          f"console): leave it out; the job gets OBS access from ModelArts")
    found = [{"name": "config", "value": args.config}] if args.config else []
    found += [{"name": parameter_name(key), "value": str(value)}
              for key, value in overrides.items()
              if key not in ("data.path", "system.output_dir")]
    if args.nproc:
        found.append({"name": "nproc", "value": str(args.nproc)})
    for option in ("pre_trained", "checkpoint_url"):  # URLs the boot file fetches itself
        if getattr(args, option, None):
            found.append({"name": option, "value": getattr(args, option)})
    if getattr(args, "connect_timeout", None):
        found.append({"name": "connect_timeout", "value": str(args.connect_timeout)})
    # Explicit: after a restart on fault the boot file continues from train_url's checkpoints,
    # read from OBS itself when the output folder comes back empty (prefetch_to_local is in no
    # API table or SDK model: nothing guarantees the platform downloads it).
    found.append({"name": "resume", "value": args.resume or "auto"})
    if getattr(args, "train_url", None):
        found.append({"name": "output_url", "value": obs_url(args.train_url)})
    for item in found:
        if not PARAMETER_NAME.match(item["name"]):
            raise ConfigError(f"parameter name {item['name']!r}: ModelArts accepts only letters, "
                              f"digits, '-' and '_'")
    return found


def engine_part(args, missing: Placeholders) -> dict:
    """The custom image (the default) or a preset engine with the code uploaded to OBS."""
    if not args.engine:
        image = missing.given(args.image, "swr.REGION.myhuaweicloud.com/ORG/mnv3-runner:TAG",
                              "--image (the image built from the Dockerfile, pushed to SWR)")
        return {"engine": {"image_url": image}, "command": IMAGE_COMMAND}
    if args.image:
        raise ConfigError("--image and --engine: a job runs either the custom image or a "
                          "preset engine; give one")
    name, _, version = args.engine.partition(":")
    if name not in PRESET_ENGINES:
        raise ConfigError(f"--engine {name!r} is not a ModelArts preset engine that runs "
                          f"MindSpore; use one of {', '.join(PRESET_ENGINES)} "
                          f"(NAME:VERSION, versions from GET /v2/{{project_id}}/training-job-"
                          f"engines), or the custom image (--image)")
    check_obs(args.code_dir, "--code_dir")
    code_dir = obs_path(missing.given(args.code_dir, "obs://YOUR-BUCKET/mnv3", "--code_dir"))
    version = missing.given(version, "YOUR-ENGINE-VERSION", "--engine NAME:VERSION or --image")
    return {"code_dir": code_dir, "boot_file": code_dir + "launcher/modelarts.py",
            "engine": {"engine_name": name, "engine_version": version}}


def channels(args, cfg, missing: Placeholders) -> dict:
    """data_url in, train_url out, each with the container folder ModelArts uses; the output is
    downloaded before a (re)start so that `--resume auto` finds its checkpoints."""
    for option in ("data_url", "train_url", "log_url"):
        check_obs(getattr(args, option, None), f"--{option}")
    data_path = cfg.data.path if str(cfg.data.path or "").startswith("obs://") else None
    data_url = missing.given(args.data_url or data_path, "obs://YOUR-BUCKET/dataset", "--data_url")
    train_url = missing.given(args.train_url, "obs://YOUR-BUCKET/output", "--train_url")
    output = {"name": "train_url", "local_dir": OUTPUT_DIR, "access_method": "parameter",
              "prefetch_to_local": True, "remote": {"obs": {"obs_url": obs_path(train_url)}}}
    if not getattr(args, "prefetch_output", True):
        del output["prefetch_to_local"]
    return {"inputs": [{"name": "data_url", "local_dir": INPUT_DIR, "access_method": "parameter",
                        "remote": {"obs": {"obs_url": obs_path(data_url)}}}],
            "outputs": [output]}


def streamed_input(args, cfg, algorithm: dict, missing: Placeholders) -> None:
    """data.stream=true: no input channel (the platform would download all of it first); the
    dataset's OBS URL as the data_url parameter, read by the job itself with the node's agency
    (storage.metadata_url) from the region's OBS endpoint (OBS_REGION)."""
    from cloud.storage.metadata_credentials import HUAWEI_METADATA_URL
    channel = algorithm.pop("inputs")[0]
    url = obs_url(channel["remote"]["obs"]["obs_url"])
    params = algorithm["parameters"]
    params.append({"name": "data_url", "value": url})
    given = {p["name"] for p in params}
    if "storage_metadata_url" not in given and not _recipe_storage(args).get("metadata_url"):
        params.append({"name": "storage_metadata_url", "value": HUAWEI_METADATA_URL})
    env = algorithm["environments"]
    if not ({"OBS_ENDPOINT", "OBS_REGION"} & set(env)):
        import os
        region = getattr(args, "region", None) or os.environ.get("HUAWEICLOUD_REGION")
        env["OBS_REGION"] = missing.given(region, "YOUR-REGION", "--env OBS_REGION=REGION (the "
                                          "job reads OBS itself when it streams)")


def _recipe_storage(args) -> dict:
    """The recipe's `storage:` section (what the job will read too), {} without one."""
    if not args.config:
        return {}
    from pathlib import Path

    from core.config import read_recipe_file
    from launcher.bootstrap import REPO_ROOT
    path = Path(args.config)
    if not path.is_absolute() and not path.exists():  # as the boot file finds it (args.py)
        path = REPO_ROOT / path
    section = read_recipe_file(str(path)).get("storage") or {}
    return section if isinstance(section, dict) else {}


def resource_part(args, cfg, missing: Placeholders) -> dict:
    """Flavour, node count, dedicated pool and log export path."""
    target = cfg.system.device_target if cfg.system.device_target != "auto" else "Ascend"
    pool = getattr(args, "pool_id", None)
    flavor = args.flavor or (None if pool else DEFAULT_FLAVORS[target])
    if not args.flavor and not pool:
        missing.todo.append(f"--flavor (default {flavor} for {target}; list your region's with "
                            f"GET /v2/{{project_id}}/training-job-flavors)")
    if args.node_count < 1:
        raise ConfigError(f"--node_count {args.node_count}: at least 1")
    # A dedicated pool takes the pool's own flavours (a CPU pool takes none): no default there.
    resource = {"flavor_id": flavor} if flavor else {}
    resource["node_count"] = args.node_count
    if pool:
        resource["pool_id"] = pool
    found: dict = {"resource": resource}
    if getattr(args, "log_url", None):
        found["log_export_path"] = {"obs_url": obs_url(args.log_url)}
    return found


def metadata_part(args, cfg) -> dict:
    """Name, description, and the fault-tolerance annotation (restart on a detected fault)."""
    if not JOB_NAME.match(args.job_name or ""):
        raise ConfigError(f"--job_name {args.job_name!r}: 1-64 letters, digits, '-' or '_'")
    retries = getattr(args, "max_retries", 0) or 0
    low, high = MAX_RETRIES
    if not (retries == 0 or low <= retries <= high):
        raise ConfigError(f"--max_retries {retries}: ModelArts takes {low}-{high} restarts "
                          f"(fault-tolerance/job-retry-num), or 0 for none")
    extra = {UNCONDITIONAL_RETRY_ANNOTATION: getattr(args, "unconditional_retry", False),
             HANG_RETRY_ANNOTATION: getattr(args, "hang_retry", False)}
    if not retries and any(extra.values()):
        raise ConfigError("--unconditional_retry and --hang_retry need --max_retries 1-3: "
                          "ModelArts restarts only a job with fault-tolerance/job-retry-num")
    found = {"name": args.job_name,
             "description": f"MobileNetV3-Small, config {args.config or 'defaults'}, "
                            f"digest {cfg.digest()}"}
    if retries:
        found["annotations"] = {RETRY_ANNOTATION: str(retries),
                                **{name: "true" for name, on in extra.items() if on}}
    return found
