"""The workstation launcher as a user runs it: real processes, real exit codes and messages."""
import json
import os
import subprocess
import sys

import pytest

from tests.paths import REPO


def run(*args, timeout=300):
    env = dict(os.environ, PYTHONUNBUFFERED="1", GLOG_v="3")
    return subprocess.run([sys.executable, str(REPO / "launcher" / "local.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def tiny_args(dataset, out):
    return ["--dataset_path", dataset, "--output_dir", out, "data.image_size=32",
            "data.eval_resize=36", "data.batch_size=8", "data.eval_batch_size=7", "train.epochs=1",
            "optim.warmup_epochs=0", "train.log_interval=3", "--device_target", "CPU"]


@pytest.mark.parametrize("args, message", [
    (["train", "train.epoch=3"], "error: unknown config key 'train.epoch' (did you mean 'train.epochs'?)"),
    (["train", "optim.lr=-1"], "error: config key 'optim.lr' must be greater than 0"),
    (["train", "--config", "configs/none.yaml"], "error: config file not found: configs/none.yaml"),
    (["train", "--dataset_path", "/nonexistent/data"], "error: dataset folder not found: /nonexistent/data/train"),
    (["eval", "--checkpoint_path", "/nonexistent.ckpt"], "error: checkpoint not found: /nonexistent.ckpt"),
])
def test_user_errors_are_one_line_without_traceback(args, message):
    result = run(*args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr
    assert "Traceback" not in result.stderr


def test_debug_flag_shows_the_traceback():
    result = run("train", "train.epoch=3", "--debug")
    assert result.returncode == 2 and "Traceback" in result.stderr


def test_train_eval_export_end_to_end(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    result = run("train", *tiny_args(tiny_dataset, out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "epoch time:" in result.stdout and "per step time:" in result.stdout
    assert (out / "config.yaml").exists() and (out / "metrics.jsonl").exists() and (out / "train.log").exists()
    assert "data:\n  path: " + str(tiny_dataset) in (out / "config.yaml").read_text()

    result = run("eval", "--checkpoint_path", out)
    assert result.returncode == 0, result.stderr
    line = [l for l in result.stdout.splitlines() if l.startswith("result: ")][0]
    assert "'Top_1_Acc'" in line and "ckpt= " in line
    record = json.loads((out / "eval.json").read_text())
    assert record["images"] == 30
    # the run's own evaluation of the same checkpoint is the known result eval must reproduce
    ran = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in l][-1]
    assert record["Top_1_Acc"] == ran["Top_1_Acc"] and record["Top_5_Acc"] == ran["Top_5_Acc"]
    # eval runs the fused CPU graph (core/nn/fuse.py); nn.Conv2d without fusion scores the same
    assert "feature units fused (BN folded)" in result.stdout + result.stderr
    result = run("eval", "--checkpoint_path", out, "--output_dir", tmp_path / "native",
                 "system.cpu_ops=native")
    assert result.returncode == 0, result.stderr
    assert "feature units fused" not in result.stdout + result.stderr
    native = json.loads((tmp_path / "native" / "eval.json").read_text())
    assert native["Top_1_Acc"] == record["Top_1_Acc"] and native["Top_5_Acc"] == record["Top_5_Acc"]
    assert native["Loss"] == pytest.approx(record["Loss"], rel=1e-5)

    result = run("export", "--checkpoint_path", out, "--format", "ONNX")
    assert result.returncode == 0, result.stderr
    assert (out / "export" / "mobilenetv3_small.onnx").exists()
    card = json.loads((out / "export" / "mobilenetv3_small.onnx.card.json").read_text())
    assert card["eval"]["images"] == 30 and len(card["class_names"]) == 10

    # a second train into the same directory must not overwrite the run
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    result = run("train", *tiny_args(tiny_dataset, out))
    assert result.returncode == 2 and "already holds checkpoints; pass --resume auto" in result.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before


def test_corrupt_val_image_is_one_clear_line(tmp_path):
    from core.data.synthetic import generate
    root = generate(tmp_path / "data", train_per_class=2, val_per_class=1, size=24)
    (root / "val" / "ring" / "ring_0000.jpg").write_bytes(b"\xff\xd8 truncated")
    result = run("train", *tiny_args(root, tmp_path / "run"), "data.batch_size=4", "data.on_corrupt=fail")
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: corrupt or non-image file ") and "ring_0000.jpg" in last


def test_sigterm_checkpoints_at_the_next_step_and_exits_zero(tiny_dataset, tmp_path):
    import signal
    import time
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONUNBUFFERED="1", GLOG_v="3")
    proc = subprocess.Popen([sys.executable, str(REPO / "launcher" / "local.py"), "train",
                             *tiny_args(tiny_dataset, out), "train.epochs=50", "train.log_interval=1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env)
    try:
        for line in proc.stdout:  # wait until training steps are running
            if "step: 3," in line:
                break
        started = time.time()
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, rest
    assert time.time() - started < 30
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["step"] < 350
    stops = [r for r in (json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines())
             if r["type"] == "checkpoint" and r["kind"] == "stop"]
    assert len(stops) == 1 and stops[0]["step"] == summary["step"]
