"""Bad input through the real command lines (launcher/local.py, launcher/modelarts.py,
launcher/distributed.py as processes): each gives one `error: ...` line naming the problem and
the fix, exit status 2, no traceback (`--debug` shows one), and leaves what existed alone.

Every case runs against its own copy of a previous run (config.yaml, logs, metrics, a
checkpoint) with `--resume auto` where the launcher takes it, so a launcher that wrote into the
run it was asked to continue before finding the bad input would be caught. The cases run
concurrently once per module (they are mostly interpreter start-up); each test then checks
its own. tests/launcher/test_cli.py covers an unknown key and a negative learning rate on the command
line, and a corrupt validation image; tests/core/data/test_data.py the skip-and-count of corrupt
training images at the pipeline level.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from core.data.synthetic import generate
from tests.fault_tools import REPO, base_env, changed, listed, one_line_error, snapshot
from tests.launcher.test_modelarts import PLATFORM_VARS

TINY = ["data.image_size=32", "data.eval_resize=36", "data.batch_size=4", "data.eval_batch_size=4",
        "data.workers=1", "train.epochs=1", "optim.warmup_epochs=0", "--device_target", "CPU"]
WRONG_SECRET = "wrong-secret-7Hq2LxP9"
MODELARTS_NODE = {"VC_TASK_INDEX": "0", "VC_WORKER_NUM": "1", "MA_NUM_GPUS": "8", "MA_VJ_NAME": "job-bad"}

# name: (script, arguments, environment kind, fragments the error line must hold)
# In arguments: {data} is the case's dataset copy, {prev} its previous run, {ws} its folder,
# {bucket} the case's bucket on the shared S3 server.
CASES = {
    "missing_dataset_path": ("local.py", ["train", "--dataset_path", "{ws}/no-such-data"], "plain",
                             ["dataset folder not found: {ws}/no-such-data/train",
                              "expected an ImageFolder"]),
    "empty_class_folder": ("local.py", ["train"], "plain",
                           ["class folder {data}/train/zzz_empty holds no images",
                            "add images or remove the folder"]),
    "truncated_jpeg": ("local.py", ["train", "data.on_corrupt=fail"], "plain",
                       ["corrupt or non-image file {data}/train/circle/circle_0000.jpg",
                        "remove or replace it, or set data.on_corrupt=skip"]),
    "damaged_jpeg_header": ("local.py", ["train", "data.on_corrupt=fail"], "plain",
                            ["corrupt or non-image file {data}/train/circle/circle_0002.jpg",
                             "remove or replace it, or set data.on_corrupt=skip"]),
    # the 31st image: one global batch of 31 reads every image (an epoch reads whole global
    # batches only, and in 7 batches of 4 notes.jpg falls among the 3 left out)
    "non_image_file": ("local.py", ["train", "data.on_corrupt=fail", "data.batch_size=31"], "plain",
                       ["corrupt or non-image file {data}/train/circle/notes.jpg",
                        "remove or replace it, or set data.on_corrupt=skip"]),
    "val_class_missing_from_train": ("local.py", ["train"], "plain",
                                     ["{data}/val has class folder(s) ['zzz_new'] that the training set lacks",
                                      "remove them or add them to the training set"]),
    "num_classes_mismatch": ("local.py", ["train", "model.num_classes=5"], "plain",
                             ["model.num_classes is 5 but {data}/train has 10 class folders",
                              "set model.num_classes=10 or null"]),
    "unknown_config_key_in_recipe": ("local.py", ["train", "--config", "{ws}/recipe.yaml"], "plain",
                                     ["unknown config key 'train.epoch' (did you mean 'train.epochs'?)"]),
    "wrong_type_on_command_line": ("local.py", ["train", "train.epochs=three"], "plain",
                                   ["config key 'train.epochs' expects int, got str 'three'"]),
    "wrong_type_in_recipe": ("local.py", ["train", "--config", "{ws}/recipe.yaml"], "plain",
                             ["config key 'model.width_mult' expects float, got str 'wide'"]),
    "negative_learning_rate_in_recipe": ("local.py", ["train", "--config", "{ws}/recipe.yaml"], "plain",
                                         ["config key 'optim.lr' must be greater than 0"]),
    "duplicate_key_in_recipe": ("local.py", ["train", "--config", "{ws}/recipe.yaml"], "plain",
                                ["config file {ws}/recipe.yaml: duplicate key 'epochs' at lines 2 and 3"]),
    "malformed_bucket_url": ("local.py", ["train", "--dataset_path", "s3://Bad_Bucket/data"], "s3",
                             ["malformed storage URL 's3://Bad_Bucket/data': bad or missing bucket name",
                              "expected s3://bucket/prefix"]),
    "malformed_prefix_url": ("local.py", ["train", "--output_dir", "s3://{bucket}/runs/../x"], "s3",
                             ["malformed storage URL 's3://{bucket}/runs/../x': the prefix may not contain",
                              "expected s3://bucket/prefix"]),
    "unknown_bucket": ("local.py", ["train", "--dataset_path", "s3://no-such-bucket-4f1d/data"], "s3",
                       ["bucket 'no-such-bucket-4f1d' does not exist at http://127.0.0.1:",
                        "create it or fix the bucket name"]),
    "missing_credentials": ("local.py", ["train", "--dataset_path", "s3://{bucket}/data"], "s3-no-keys",
                            ["no credentials for s3://{bucket}", "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"]),
    "half_the_credentials": ("local.py", ["train", "--dataset_path", "s3://{bucket}/data"], "s3-half-keys",
                             ["AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not",
                              "set both, or unset AWS_ACCESS_KEY_ID"]),
    "wrong_credentials": ("local.py", ["train", "--dataset_path", "s3://{bucket}/data",
                                       "--output_dir", "s3://{bucket}/prev"], "s3-wrong-secret",
                          ["refused the credentials (SignatureDoesNotMatch)",
                           "they came from environment AWS_ACCESS_KEY_ID",
                           "check the access key id and secret key"]),
    "zero_processes": ("local.py", ["train", "--nproc", "0"], "plain", ["--nproc must be at least 1 (got 0)"]),
    "rank_table_not_json": ("modelarts.py", ["--dry-run", "--device_target", "Ascend", "--launch",
                                             "rank_table", "--rank_table_timeout", "1"],
                            "modelarts-rt-garbage",
                            ["{ws}/jobstart_hccl.json: rank table not completed after 1 s (not valid JSON",
                             "check RANK_TABLE_FILE"]),
    "rank_table_wrong_shape": ("modelarts.py", ["--dry-run", "--device_target", "Ascend",
                                                "--launch", "rank_table",
                                                "--rank_table_timeout", "1"],
                               "modelarts-rt-shape",
                               ["{ws}/jobstart_hccl.json: group_list[0].instance_list[0] has no server_id"]),
    "rank_size_contradicts_the_nodes": ("modelarts.py", ["--dry-run"], "modelarts-rank-size",
                                        ["RANK_SIZE=12 != VC_WORKER_NUM=1 x MA_NUM_GPUS=8",
                                         "fix the variable or override 'world_size'"]),
    "node_rank_outside_the_nodes": ("distributed.py", ["--nproc", "2", "--nnodes", "2", "--node_rank", "2"],
                                    "plain", ["--node_rank in 0..1"]),
}
DEBUG_CASES = ("empty_class_folder", "wrong_credentials", "rank_table_not_json")
RECIPES = {"unknown_config_key_in_recipe": "train:\n  epoch: 3\n",
           "wrong_type_in_recipe": "model:\n  width_mult: wide\n",
           "negative_learning_rate_in_recipe": "optim:\n  lr: -0.1\n",
           "duplicate_key_in_recipe": "train:\n  epochs: 1\n  epochs: 2\n"}


def make_dataset(base: Path, case: str, dest: Path) -> Path:
    shutil.copytree(base, dest)
    if case == "empty_class_folder":
        (dest / "train" / "zzz_empty").mkdir()
    elif case == "truncated_jpeg":
        path = dest / "train" / "circle" / "circle_0000.jpg"
        path.write_bytes(path.read_bytes()[:300])
    elif case == "damaged_jpeg_header":  # scan header damaged: MindSpore's decoder would crash
        path = dest / "train" / "circle" / "circle_0002.jpg"
        data = bytearray(path.read_bytes())
        sos = data.index(b"\xff\xda")
        data[sos + 5] = 0x77  # the scan names component 0x77, which the frame does not have
        path.write_bytes(bytes(data))
    elif case == "non_image_file":
        (dest / "train" / "circle" / "notes.jpg").write_text("these are notes, not an image\n")
    elif case == "val_class_missing_from_train":
        shutil.copytree(dest / "val" / "circle", dest / "val" / "zzz_new")
    return dest


def make_previous_run(dest: Path) -> Path:
    """What a user's earlier run left: every file must survive a failed attempt to continue it."""
    (dest / "checkpoints").mkdir(parents=True)
    (dest / "config.yaml").write_text("# the previous run's config\n")
    (dest / "train.log").write_text("previous log line\n")
    (dest / "metrics.jsonl").write_text(json.dumps({"type": "step", "step": 7, "loss": 2.3}) + "\n")
    (dest / "summary.json").write_text(json.dumps({"status": "stopped", "step": 7}))
    (dest / "checkpoints" / "mobilenetv3-e0001-s00000007.ckpt").write_bytes(b"previous checkpoint bytes")
    return dest


# Corrupt images are met while training, after the resume checkpoint was loaded: these cases
# write a new run instead of continuing the (fake) previous one.
NEW_RUN = ("truncated_jpeg", "damaged_jpeg_header", "non_image_file")


def launcher_args(name: str, script: str, args: list, ws: Path, data: Path, prev: Path) -> list:
    if script == "local.py":  # the case's own arguments last: they win over TINY
        extra = [] if "--dataset_path" in args else ["--dataset_path", str(data)]
        if name in NEW_RUN:
            extra += ["--output_dir", str(ws / "new-run")]
        elif "--output_dir" not in args:
            extra += ["--output_dir", str(prev), "--resume", "auto"]
        return [args[0]] + TINY + extra + args[1:]
    if script == "modelarts.py":
        return args + ["--data_url", str(data), "--train_url", str(prev), "--cache_dir", str(ws / "cache")]
    return args + ["--dataset_path", str(data), "--output_dir", str(prev), "--cache_dir", str(ws / "cache")]


def environment(kind: str, server, ws: Path) -> dict:
    env = base_env(MNV3_CACHE_DIR=ws / "cache", AWS_EC2_METADATA_DISABLED="true")
    for name in PLATFORM_VARS:
        env.pop(name, None)
    if kind.startswith("s3"):
        env.update(server.env())
    if kind == "s3-no-keys":
        del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    elif kind == "s3-half-keys":
        del env["AWS_SECRET_ACCESS_KEY"]
    elif kind == "s3-wrong-secret":
        env["AWS_SECRET_ACCESS_KEY"] = WRONG_SECRET
    elif kind.startswith("modelarts"):
        env.update(MODELARTS_NODE)
        table = ws / "jobstart_hccl.json"
        if kind == "modelarts-rt-garbage":
            table.write_text("{not json")
        elif kind == "modelarts-rt-shape":
            table.write_text(json.dumps({"status": "completed", "group_list": [
                {"instance_count": "1", "instance_list": [{"devices": [{"device_id": "0"}]}]}]}))
        else:
            env["RANK_SIZE"] = "12"
        if table.exists():
            env["RANK_TABLE_FILE"] = str(table)
    return env


def run(script: str, argv: list, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "launcher" / script), *map(str, argv)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


@pytest.fixture(scope="module")
def results(s3_server, tmp_path_factory):
    """Every case (and the --debug ones) run once, concurrently; with snapshots around them."""
    root = tmp_path_factory.mktemp("bad-inputs")
    base = generate(root / "base", train_per_class=3, val_per_class=1, size=24, seed=1)
    jobs, out = {}, {}
    for name, (script, args, kind, fragments) in CASES.items():
        ws = root / name
        ws.mkdir()
        data = make_dataset(base, name, ws / "data")
        prev = make_previous_run(ws / "prev")
        if name in RECIPES:
            (ws / "recipe.yaml").write_text(RECIPES[name])
        bucket = s3_server.make_bucket()
        client = s3_server.client()
        for rel in ("train/circle/a.jpg", "val/circle/b.jpg"):
            client.put_object(Bucket=bucket, Key=f"data/{rel}", Body=b"\xff\xd8 image \xff\xd9")
        client.put_object(Bucket=bucket, Key="prev/checkpoints/latest.json", Body=b'{"key": "x.ckpt"}')
        fill = {"ws": ws, "data": data, "prev": prev, "bucket": bucket}
        argv = [a.format(**fill) for a in launcher_args(name, script, list(args), ws, data, prev)]
        env = environment(kind, s3_server, ws)
        before = (snapshot(data, prev), listed(s3_server, bucket))
        jobs[name] = (script, argv, env)
        out[name] = {"fill": fill, "before": before, "fragments": [f.format(**fill) for f in fragments]}
    for name in DEBUG_CASES:
        script, argv, env = jobs[name]
        jobs[f"{name}--debug"] = (script, argv + ["--debug"], env)
    with ThreadPoolExecutor(max_workers=3) as pool:
        done = dict(zip(jobs, pool.map(lambda job: run(*job), jobs.values())))
    for name, record in out.items():
        fill = record["fill"]
        record["after"] = (snapshot(fill["data"], fill["prev"]), listed(s3_server, fill["bucket"]))
        record["result"] = done[name]
        record["debug"] = done.get(f"{name}--debug")
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_clear_line_and_changes_nothing(results, case):
    record = results[case]
    result = record["result"]
    err = result.stderr
    assert result.returncode == 2, (result.returncode, err[-3000:], result.stdout[-2000:])
    assert "Traceback" not in err and "Traceback" not in result.stdout, err
    last = one_line_error(err)
    assert last.startswith("error: "), err[-2000:]
    for fragment in record["fragments"]:
        assert fragment in last, (fragment, last)
    # Nothing that existed was overwritten or deleted: the dataset, the previous run, the bucket.
    (files_before, objects_before), (files_after, objects_after) = record["before"], record["after"]
    assert changed(files_before, files_after) == []
    assert objects_after == objects_before
    assert WRONG_SECRET not in err + result.stdout


@pytest.mark.parametrize("case", DEBUG_CASES)
def test_debug_flag_adds_the_traceback(results, case):
    plain, debug = results[case]["result"], results[case]["debug"]
    assert debug.returncode == 2 and "Traceback (most recent call last)" in debug.stderr
    assert one_line_error(debug.stderr) == one_line_error(plain.stderr)
    assert WRONG_SECRET not in debug.stderr + debug.stdout
