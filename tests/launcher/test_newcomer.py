"""What a newcomer hit (issue 26): messages and outputs of the plain commands, on real
checkpoints (learned_run), real exports, the real SeaweedFS server and real subprocesses."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launcher import cli
from launcher.common import run_main

from tests.paths import REPO


def local(argv, monkeypatch=None) -> int:
    from launcher import local as local_py
    return run_main(local_py.main, [str(a) for a in argv])


def printed_json(out: str):
    """predict --json's output (log lines may come before it on stdout)."""
    lines = out.splitlines()
    return json.loads("\n".join(lines[lines.index("["):]))


def val_image(root: Path) -> Path:
    return sorted((root / "val").rglob("*.jpg"))[0]


# --------------------------------------------------------------------------- storage keys


def test_storage_key_of_the_wrong_type_is_named(tmp_path, capsys):
    assert local(["train", "storage.workers=4x", "--output_dir", tmp_path / "run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'storage.workers' expects int, got str '4x'" in err[0], err
    assert not (tmp_path / "run").exists()


def test_config_reference_lists_every_storage_key():
    from cloud.storage.settings import StorageSettings
    reference = (REPO / "README.md").read_text().split("## Config reference", 1)[1]
    missing = [f.name for f in dataclasses.fields(StorageSettings)
               if f"| `storage.{f.name}` |" not in reference]
    assert not missing, f"README's config reference lacks storage keys {missing}"


# --------------------------------------------------------------------------- checkpoints on S3


@pytest.fixture
def uploaded(learned_run, s3_server, monkeypatch, tmp_path):
    """learned_run's checkpoints uploaded as a run publishes them (manifest last), the
    environment pointed at the server and the cache at tmp_path."""
    from cloud.storage.checkpoint_store import CheckpointUploader
    from cloud.storage.store import open_storage
    _, run_dir, summary, final_eval, root = learned_run
    bucket = s3_server.make_bucket()
    final = Path(summary["final_checkpoint"])
    with CheckpointUploader(open_storage(f"s3://{bucket}/runs/a", s3_server.settings()),
                            "checkpoints", keep=2) as uploader:
        uploader.submit(str(final), {"epoch": summary["epoch"], "step": summary["step"]})
        assert uploader.wait(timeout=60).ok
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(cli, "DEFAULT_CACHE", tmp_path / "cache")
    return f"s3://{bucket}/runs/a", final, final_eval, root


def test_eval_and_predict_take_checkpoint_urls(uploaded, tmp_path, capsys):
    """An object URL and a run's output URL (its manifest's newest), fetched and verified
    through cloud/; before, the path lost a slash: `checkpoint not found: s3:/b/...`."""
    url, final, final_eval, root = uploaded
    for source in (f"{url}/checkpoints/{final.name}", url):
        out = tmp_path / f"eval{len(source)}"
        assert local(["eval", "--checkpoint_path", source, "--dataset_path", root,
                      "--output_dir", out]) == 0, capsys.readouterr().err
        assert json.loads((out / "eval.json").read_text())["Top_1_Acc"] == final_eval["Top_1_Acc"]
    capsys.readouterr()
    assert local(["predict", "--checkpoint", f"{url}/checkpoints/{final.name}",
                  "--image", val_image(root), "--json"]) == 0
    top = printed_json(capsys.readouterr().out)
    assert top[0]["top"][0]["class"] in ("blue", "green", "red")
    assert local(["eval", "--checkpoint_path", f"{url}/checkpoints/nope.ckpt",
                  "--dataset_path", root]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{url}/checkpoints/nope.ckpt" in err[0] and "s3:/b" not in err[0], err


# --------------------------------------------------------------------------- exports


def test_each_export_has_its_own_card_and_predict_reads_onnx(learned_run, tmp_path, capsys, monkeypatch):
    _, run_dir, _, _, root = learned_run
    for fmt in ("MINDIR", "ONNX"):
        assert local(["export", "--checkpoint_path", run_dir, "--output_dir", tmp_path,
                      "--format", fmt]) == 0
    export = tmp_path / "export"
    cards = {p.name: json.loads(p.read_text()) for p in export.glob("*.card.json")}
    assert {name: (card["format"], card["file"]) for name, card in cards.items()} == {
        "mobilenetv3_small.mindir.card.json": ("MINDIR", "mobilenetv3_small.mindir"),
        "mobilenetv3_small.onnx.card.json": ("ONNX", "mobilenetv3_small.onnx")}
    capsys.readouterr()
    image = val_image(root)
    results = {}
    for source in (run_dir, export / "mobilenetv3_small.mindir", export / "mobilenetv3_small.onnx"):
        assert local(["predict", "--checkpoint", source, "--image", image, "--json"]) == 0
        results[source] = printed_json(capsys.readouterr().out)[0]["top"]
    tops = list(results.values())
    assert tops[0][0]["class"] == tops[1][0]["class"] == tops[2][0]["class"]
    assert abs(tops[2][0]["probability"] - tops[1][0]["probability"]) < 1e-4
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    assert local(["predict", "--checkpoint", export / "mobilenetv3_small.onnx", "--image", image]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "onnxruntime" in err[0] and ".mindir" in err[0], err


def test_a_foreign_file_names_what_predict_accepts(learned_run, tmp_path, capsys):
    _, _, _, _, root = learned_run
    model = tmp_path / "model.pt"
    model.write_bytes(b"\x80\x02not a checkpoint")
    assert local(["predict", "--checkpoint", model, "--image", val_image(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a checkpoint" in err[0] and ".onnx" in err[0], err


# --------------------------------------------------------------------------- console noise


def test_picking_the_device_on_a_cpu_host_is_quiet():
    """device_target=auto probes Ascend and GPU: MindSpore's own is_available printed four
    warning lines (`Backend Ascend is not available`, the libge_runner.so error) per backend.
    A process of its own: MindSpore's logger keeps the stderr it found first."""
    code = "from core.device import resolve_target; print(resolve_target('auto'))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "CPU", result.stderr
    noise = [line for line in result.stderr.splitlines()
             if "not available" in line or "libge_runner" in line or "Load dynamic library" in line]
    assert len(noise) <= 1, noise


# --------------------------------------------------------------------------- run outputs


def test_one_epoch_numbering_everywhere(learned_run):
    """Every record's epoch is the number of epochs completed at its step, and summary.json's
    is its final eval's (before: step records counted from 0, checkpoint records from 1, and
    the final eval said one less than the summary)."""
    _, run_dir, summary, final_eval, _ = learned_run
    per_epoch = summary["steps_per_epoch"]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    numbered = [r for r in records if "step" in r and "epoch" in r]
    assert {r["type"] for r in numbered} >= {"step", "epoch", "eval", "checkpoint"}
    wrong = [r for r in numbered if r["epoch"] != r["step"] // per_epoch]
    assert not wrong, wrong[:3]
    assert summary["epoch"] == final_eval["epoch"] == summary["step"] // per_epoch


def test_a_refused_run_leaves_no_run_directory(tmp_path):
    """The default output folder (runs/mobilenetv3_small, relative to the working directory):
    a run refused at start left it with an empty train.log, and test_cli's error cases left it
    in the repository."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    result = subprocess.run([sys.executable, str(REPO / "launcher" / "local.py"), "train",
                             "--dataset_path", tmp_path / "no-data", "--device_target", "CPU"],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 2 and "dataset folder not found" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [], list(tmp_path.rglob("*"))
