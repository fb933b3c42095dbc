"""The ModelArts training-job definition (API v2) built from the boot file's arguments.

Printed by `launcher/modelarts.py --print-job-spec`; the body of POST
/v2/{project_id}/training-jobs.
"""
from __future__ import annotations

from typing import Optional

CODE_DIR_IN_IMAGE = "/home/ma-user/mnv3"
DEFAULT_FLAVORS = {"Ascend": "modelarts.kat1.8xlarge", "GPU": "modelarts.p3.4xlarge",
                   "CPU": "modelarts.vm.cpu.8u"}


def obs_path(url: str) -> str:
    """obs://bucket/dir -> /bucket/dir/, the form ModelArts' API takes."""
    if url.startswith("obs://"):
        url = "/" + url[len("obs://"):]
    return url.rstrip("/") + "/"


def job_spec(args, cfg, overrides: dict) -> tuple[dict, list[str]]:
    """A training-job definition for POST /v2/{project_id}/training-jobs (or the console), and
    the placeholders left in it for the user to fill."""
    todo = []

    def given(value: Optional[str], placeholder: str, what: str) -> str:
        if value:
            return value
        todo.append(f"{what} ({placeholder})")
        return placeholder

    parameters = [{"name": "config", "value": args.config}] if args.config else []
    parameters += [{"name": key, "value": str(value)} for key, value in overrides.items()
                   if key not in ("data.path", "system.output_dir")]
    if args.nproc:
        parameters.append({"name": "nproc", "value": str(args.nproc)})
    algorithm: dict = {"parameters": parameters}
    if args.image:
        algorithm["engine"] = {"image_url": args.image}
        algorithm["command"] = f"python {CODE_DIR_IN_IMAGE}/launcher/modelarts.py"
    else:
        name, _, version = (args.engine or "MindSpore:").partition(":")
        code_dir = obs_path(given(args.code_dir, "obs://YOUR-BUCKET/mnv3", "--code_dir"))
        algorithm.update(code_dir=code_dir, boot_file=code_dir + "launcher/modelarts.py",
                         engine={"engine_name": name,
                                 "engine_version": given(version, "YOUR-ENGINE-VERSION",
                                                         "--engine NAME:VERSION or --image")})
    data_path = cfg.data.path if str(cfg.data.path or "").startswith("obs://") else None
    data_url = given(args.data_url or data_path, "obs://YOUR-BUCKET/dataset", "--data_url")
    train_url = given(args.train_url, "obs://YOUR-BUCKET/output", "--train_url")
    algorithm["inputs"] = [{"name": "data_url", "remote": {"obs": {"obs_url": obs_path(data_url)}}}]
    algorithm["outputs"] = [{"name": "train_url",
                             "remote": {"obs": {"obs_url": obs_path(train_url)}}}]
    target = cfg.system.device_target if cfg.system.device_target != "auto" else "Ascend"
    flavor = args.flavor or DEFAULT_FLAVORS[target]
    if not args.flavor:
        todo.append(f"--flavor (default {flavor} for {target}; list your region's with "
                    f"GET /v2/{{project_id}}/training-job-flavors)")
    spec = {"kind": "job",
            "metadata": {"name": args.job_name,
                         "description": f"MobileNetV3-Small, config {args.config or 'defaults'}, "
                                        f"digest {cfg.digest()}"},
            "algorithm": algorithm,
            "spec": {"resource": {"flavor_id": flavor, "node_count": args.node_count}}}
    return spec, todo
