"""Security promises, checked on real runs: credentials never leave the environment they were
given in (files, streams, errors, process listings), object keys and links never write outside
the cache, YAML and checkpoints never run code, subprocesses never go through a shell."""
from __future__ import annotations

import ast
import json
import os
import pickle
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import psutil

from cloud.job import cache_path
from cloud.storage.store import open_storage
from cloud.storage.sync import upload_tree
from core.data.synthetic import generate
from tests.fault_tools import (DRIVER, LOCAL, REPO, TINY, base_env, changed, listed, one_line_error,
                               private_s3, procs, read_object, snapshot)  # noqa: F401 (fixtures)

ACCESS_KEY = "AKIDFAKEACCESS7Q2Z9X"
SECRET_KEY = "fakeSECRET-k3Jq8Zt1Vw5Yr9Pm2Ln6"
SESSION_TOKEN = "FAKETOKEN-session-9d8c7b6a5f4e"
SECRETS = (ACCESS_KEY, SECRET_KEY, SESSION_TOKEN)


def leaks(blob: bytes | str) -> list[str]:
    data = blob.encode() if isinstance(blob, str) else blob
    return [s for s in SECRETS if s.encode() in data]


def files_leaking(*roots) -> dict:
    """path -> secrets found, for every file under roots (binary files too: checkpoints)."""
    found = {}
    for root in roots:
        for dirpath, _dirs, names in os.walk(root):
            for name in names:
                path = os.path.join(dirpath, name)
                if os.path.isfile(path) and not os.path.islink(path):
                    with open(path, "rb") as f:
                        hit = leaks(f.read())
                    if hit:
                        found[path] = hit
    return found


class ProcessListing(threading.Thread):
    """Samples `ps -e -o pid=,args=` every 0.3 s and keeps the lines of this test's processes
    (everything carrying its tag in the environment: the launcher, msrun, scheduler, ranks)."""

    def __init__(self, tag: str):
        super().__init__(daemon=True)
        self.tag, self.lines, self.pids = tag, set(), set()
        self.done = threading.Event()

    def tagged(self) -> set:
        pids = set()
        for proc in psutil.process_iter():
            try:
                if proc.environ().get("MNV3_TEST_TAG") == self.tag:
                    pids.add(proc.pid)
            except psutil.Error:
                continue
        return pids

    def run(self):
        while not self.done.wait(0.3):
            pids = self.tagged()
            listing = subprocess.run(["ps", "-e", "-o", "pid=,args="], capture_output=True, text=True).stdout
            for line in listing.splitlines():
                pid, _, args = line.strip().partition(" ")
                if pid.isdigit() and int(pid) in pids:
                    self.pids.add(int(pid))
                    self.lines.add(args.strip())


# --------------------------------------------------------------------------- secrets


def test_a_job_with_fake_secrets_leaks_them_nowhere(private_s3, tmp_path, procs):
    """Two ranks (msrun: launcher, msrun, scheduler, workers), S3 data and outputs, checkpoints
    uploaded during the run. Credentials come from the recipe's `storage:` section and, with the
    same values plus a session token, from AWS_* variables."""
    server = private_s3(access_key=ACCESS_KEY, secret_key=SECRET_KEY)
    bucket = server.make_bucket()
    data = generate(tmp_path / "dataset", train_per_class=3, val_per_class=1, size=24, seed=2)
    upload_tree(str(data), open_storage(f"s3://{bucket}/data", server.settings()), "")
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    recipe = inputs / "recipe.yaml"
    recipe.write_text(f"storage:\n  endpoint: {server.endpoint}\n  access_key_id: {ACCESS_KEY}\n"
                      f"  secret_access_key: {SECRET_KEY}\n  max_attempts: 3\n")
    cache, tag = tmp_path / "cache", uuid.uuid4().hex
    env = base_env(MNV3_CACHE_DIR=cache, MNV3_TEST_TAG=tag, AWS_ACCESS_KEY_ID=ACCESS_KEY,
                   AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_SESSION_TOKEN=SESSION_TOKEN,
                   AWS_REGION="us-east-1", PATH=os.pathsep.join([str(Path(sys.executable).parent),
                                                                 os.environ.get("PATH", "")]))
    url = f"s3://{bucket}/run"
    listing = ProcessListing(tag)
    listing.start()
    proc = procs([LOCAL, "train", "--config", recipe, "--nproc", "2", "--dataset_path",
                  f"s3://{bucket}/data", "--output_dir", url, *TINY, "data.batch_size=4",
                  "train.epochs=2", "checkpoint.interval_steps=2", "train.log_interval=1"], env)
    try:
        code = proc.wait(900)
    finally:
        listing.done.set()
        listing.join(10)
    out, err = proc.stdout, proc.stderr
    assert code == 0, out[-4000:] + err[-3000:]
    # The listing saw the whole tree while it trained: launcher, msrun, scheduler and ranks.
    assert len(listing.pids) >= 4 and any("worker.py" in l for l in listing.lines), listing.lines
    assert not [l for l in listing.lines if leaks(l)], "a process listing shows a secret"
    assert not leaks(out) and not leaks(err)
    run_dir = cache_path(cache, "output", url)  # --nproc > 1: the launcher's own cache layout
    assert (run_dir / "launch" / "node0.yaml").exists() and (run_dir / "config.yaml").exists()
    assert (run_dir / "metrics.jsonl").exists() and list((run_dir / "msrun_logs").glob("worker_*.log"))
    assert files_leaking(cache) == {}  # run dir (logs, metrics, configs, checkpoints), staged data
    published = listed(server, bucket, "run/")
    assert "run/config.yaml" in published and "run/checkpoints/latest.json" in published
    assert [k for k in published if leaks(read_object(server, bucket, k))] == []


def test_refused_credentials_name_their_source_never_their_value(private_s3, tmp_path):
    server = private_s3(access_key="AKIDOTHERKEY0000", secret_key="other-secret-0000")
    bucket = server.make_bucket()
    env = base_env(MNV3_CACHE_DIR=tmp_path / "cache", S3_ENDPOINT=server.endpoint,
                   AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY,
                   AWS_SESSION_TOKEN=SESSION_TOKEN, AWS_REGION="us-east-1")
    result = subprocess.run([sys.executable, LOCAL, "train", "--dataset_path", f"s3://{bucket}/d",
                             "--debug"], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert result.returncode == 2 and "Traceback" in result.stderr  # --debug: the whole chain
    last = one_line_error(result.stderr)
    assert "refused the credentials" in last and "environment AWS_ACCESS_KEY_ID" in last, last
    assert not leaks(result.stdout) and not leaks(result.stderr), result.stderr[-3000:]


# --------------------------------------------------------------------------- keys and links


def test_traversal_keys_planted_in_a_bucket_write_nothing_outside_the_cache(s3_server, tmp_path, procs):
    """SeaweedFS refuses such keys on upload (AWS S3 and OBS keep them verbatim), so the real
    listing of a real bucket gets them appended at the wire (tests/fault_driver.py); the
    launcher must refuse the whole stage before writing a byte."""
    bucket = s3_server.make_bucket()
    data = generate(tmp_path / "dataset", train_per_class=2, val_per_class=1, size=24, seed=2)
    upload_tree(str(data), open_storage(f"s3://{bucket}/data", s3_server.settings()), "")
    escape = tmp_path / f"escape-{uuid.uuid4().hex[:8]}"
    hostile = ["data/../x.jpg", f"data/{escape}/abs.jpg", "data/train/a/../../../../b.jpg"]
    home = tmp_path / "ws"
    cache = home / "cache"
    cache.mkdir(parents=True)
    before = snapshot(tmp_path)
    env = base_env(**s3_server.env(), MNV3_CACHE_DIR=cache,
                   FAULT_PLAN=json.dumps({"inject_keys": {"prefix": "data/", "keys": hostile}}))
    proc = procs([DRIVER, LOCAL, "train", "--dataset_path", f"s3://{bucket}/data",
                  "--output_dir", home / "run", *TINY], env)
    assert proc.wait(300) == 2
    last = one_line_error(proc.stderr)
    assert last.startswith("error: refusing unsafe object key '../x.jpg'"), last
    assert "nothing was downloaded" in last and "(3 unsafe keys)" in last, last
    assert "Traceback" not in proc.stderr
    after = snapshot(tmp_path)
    assert changed(before, after) == []
    new = sorted(set(after) - set(before))
    staged = cache_path(cache, "data", f"s3://{bucket}/data")
    # The only new files are the stage's own lock and failure marker, inside the cache.
    assert all(Path(p).parent == staged and Path(p).name.startswith(".cloud-stage") for p in new), new
    assert not escape.exists()
    assert not (staged.parent / "x.jpg").exists() and not (tmp_path / "b.jpg").exists()


def test_symlink_in_the_cache_pointing_outside_is_not_written_through(s3_server, tmp_path, procs):
    bucket = s3_server.make_bucket()
    data = generate(tmp_path / "dataset", train_per_class=2, val_per_class=1, size=24, seed=2)
    upload_tree(str(data), open_storage(f"s3://{bucket}/data", s3_server.settings()), "")
    cache = tmp_path / "cache"
    staged = cache_path(cache, "data", f"s3://{bucket}/data")
    staged.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not yours")
    (staged / "train").symlink_to(outside, target_is_directory=True)  # planted by someone else
    before = snapshot(outside)
    proc = procs([LOCAL, "train", "--dataset_path", f"s3://{bucket}/data", "--output_dir",
                  tmp_path / "run", *TINY], base_env(**s3_server.env(), MNV3_CACHE_DIR=cache))
    assert proc.wait(300) == 2
    last = one_line_error(proc.stderr)
    assert last.startswith("error: refusing unsafe object key 'train/") and "resolves outside" in last, last
    assert snapshot(outside) == before and sorted(os.listdir(outside)) == ["keep.txt"]


def test_dataset_links_pointing_outside_are_read_never_written(tmp_path, procs):
    """A dataset whose class folder and one image are links to folders outside it, with a
    truncated JPEG and a text file among the images: the run reads through the links, counts
    and skips the two bad files (data.on_corrupt=skip, the default) and writes only its run
    directory."""
    data = generate(tmp_path / "dataset", train_per_class=4, val_per_class=1, size=24, seed=2)
    outside = tmp_path / "outside"
    (data / "train" / "ring").rename(outside)
    (data / "train" / "ring").symlink_to(outside, target_is_directory=True)
    linked = data / "train" / "circle" / "circle_0001.jpg"
    spare = tmp_path / "spare.jpg"
    linked.rename(spare)
    linked.symlink_to(spare)
    bad = data / "train" / "cross" / "cross_0000.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    (data / "train" / "dots" / "dots_0000.jpg").write_text("not an image")  # 40 files, 10 batches
    before = snapshot(tmp_path)
    out = tmp_path / "run"
    proc = procs([LOCAL, "train", "--dataset_path", data, "--output_dir", out, *TINY,
                  "data.batch_size=4", "train.epochs=1"], base_env())
    assert proc.wait(600) == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    after = snapshot(tmp_path)
    assert changed(before, after) == []
    assert all(Path(p).is_relative_to(out) for p in set(after) - set(before))
    assert "skipped 2 unreadable image(s)" in proc.stdout  # counted and logged, never silent
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    corrupt = [r for r in records if r["type"] == "corrupt"]
    assert len(corrupt) == 1 and corrupt[0]["count"] == 2
    assert sorted(Path(f).name for f in corrupt[0]["files"]) == ["cross_0000.jpg", "dots_0000.jpg"]


# --------------------------------------------------------------------------- no code from data


def test_yaml_python_tags_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(f"train: !!python/object/apply:os.system ['touch {marker}']\n")
    result = subprocess.run([sys.executable, LOCAL, "train", "--config", recipe], capture_output=True,
                            text=True, env=base_env(), cwd=REPO, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = one_line_error(result.stderr)
    assert last.startswith(f"error: config file {recipe} at line 1: could not determine a constructor "
                           f"for the tag 'tag:yaml.org,2002:python/object/apply:os.system'"), last
    assert "!!python/... are refused" in last
    assert not marker.exists()


class _Payload:
    """Unpickling this creates a file: what a malicious pickle-based "checkpoint" would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_a_pickle_posing_as_a_checkpoint_is_refused_and_never_run(tmp_path):
    """MindSpore .ckpt files are protobuf (a Checkpoint message of named tensors), parsed as
    data: nothing in one can name a function to call. A pickle, which can, is not a valid
    protobuf checkpoint, so every command refuses it with one line, before anything runs."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"weights": _Payload(marker)}))
    data = generate(tmp_path / "dataset", train_per_class=2, val_per_class=1, size=24, seed=2)
    commands = {
        "eval": ["eval", "--checkpoint_path", evil, "--device_target", "CPU"],
        "resume": ["train", "--dataset_path", data, "--output_dir", tmp_path / "run1", "--resume", evil, *TINY],
        "pre_trained": ["train", "--dataset_path", data, "--output_dir", tmp_path / "run2",
                        "--pre_trained", evil, *TINY],
    }
    for name, argv in commands.items():
        result = subprocess.run([sys.executable, LOCAL, *map(str, argv)], capture_output=True, text=True,
                                env=base_env(), cwd=REPO, timeout=300)
        assert result.returncode == 2 and "Traceback" not in result.stderr, (name, result.stderr[-2000:])
        last = one_line_error(result.stderr)
        assert last.startswith(f"error: checkpoint {evil} is unreadable or corrupt"), (name, last)
        assert not marker.exists(), name


def _project_python_files():
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"],
                             capture_output=True, text=True, cwd=REPO, check=True).stdout.split()
    return [REPO / p for p in tracked if (REPO / p).is_file() and ".venv" not in Path(p).parts
            and not any(part.startswith(".venv") for part in Path(p).parts)]


def test_subprocesses_are_started_with_argument_lists_never_a_shell():
    """Every Python file of the project (tests, benchmarks and tools included), by syntax tree,
    not text: no shell=True, no os.system/os.popen/getoutput, no subprocess call whose command
    is a string."""
    spawners = {"run", "Popen", "call", "check_call", "check_output", "getoutput", "getstatusoutput"}
    problems = []
    files = _project_python_files()
    assert len(files) > 50
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            owner = getattr(func.value, "id", "") if isinstance(func, ast.Attribute) else ""
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            for kw in node.keywords:
                if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    problems.append(f"{where}: shell={ast.unparse(kw.value)}")
            if owner == "os" and name in ("system", "popen") \
                    or name in ("getoutput", "getstatusoutput", "create_subprocess_shell"):
                problems.append(f"{where}: {ast.unparse(func)}")
            if owner == "subprocess" and name in spawners and node.args and (
                    isinstance(node.args[0], ast.JoinedStr) or
                    isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                problems.append(f"{where}: {name}() with a command string")
    assert problems == [], problems
