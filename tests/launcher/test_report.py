"""launcher.report: Markdown summary and plots of a run directory (local or from S3)."""
from __future__ import annotations

import argparse
import json
import math
import sys

import pytest

from core.config import load_config
from launcher import report as rp

EPOCHS, PER_EPOCH, LOG_EVERY, BATCH = 6, 40, 10, 64


def write_run(run_dir, resumed=True):
    """A synthetic 6-epoch run: warmup+cosine LR, falling loss, eval every 2 epochs, the first
    report of each epoch slow (compile / pipeline start), and steps 130..140 logged twice as a
    resume after the step-120 checkpoint leaves them."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = load_config(None, {"train.epochs": EPOCHS, "optim.lr": 0.05, "optim.warmup_epochs": 1,
                             "data.batch_size": BATCH, "data.image_size": 64,
                             "system.device_target": "CPU"})
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    records, total = [], EPOCHS * PER_EPOCH
    t = 1_700_000_000.0

    def step_record(step, ips, loss_shift=0.0):
        epoch = (step - 1) // PER_EPOCH
        lr = 0.05 * step / PER_EPOCH if step <= PER_EPOCH else \
            0.05 * (1 + math.cos(math.pi * (step - PER_EPOCH) / (total - PER_EPOCH))) / 2
        loss = 2.3 * math.exp(-step / 120) + 0.4 + loss_shift
        return {"type": "step", "epoch": epoch, "step": step, "loss": loss + 0.05 * math.sin(step),
                "loss_mean": loss, "lr": lr, "images_per_sec": ips, "time": t + step}

    for step in range(LOG_EVERY, total + 1, LOG_EVERY):
        first_of_epoch = (step - LOG_EVERY) % PER_EPOCH == 0
        records.append(step_record(step, 20.0 if first_of_epoch else 110.0 + step % 7))
        if step == 140 and resumed:  # killed here; resumed from the step-120 checkpoint
            records.append(step_record(130, 25.0, loss_shift=0.3))
            records.append(step_record(140, 111.0))
        if step % PER_EPOCH == 0:
            epoch = step // PER_EPOCH - 1
            records.append({"type": "epoch", "epoch": epoch, "step": step,
                            "avg_loss": 2.3 * math.exp(-step / 120) + 0.45, "epoch_time_ms": 25000.0,
                            "per_step_ms": 625.0, "complete": True, "time": t + step})
            if (epoch + 1) % 2 == 0:
                top1 = [0.31, 0.58, 0.55][(epoch + 1) // 2 - 1]
                records.append({"type": "eval", "Loss": 1.5, "Top_1_Acc": top1,
                                "Top_5_Acc": min(1, top1 + 0.3), "images": 300, "seconds": 3.0,
                                "epoch": epoch, "step": step, "time": t + step})
    with open(run_dir / "metrics.jsonl", "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)
        fh.write('{"type": "step", "epoch": 5, "st')  # a line cut short by a kill
    summary = {"status": "completed", "step": total, "epoch": EPOCHS, "steps_per_epoch": PER_EPOCH,
               "start_step": 120, "seconds": 3725.4, "rank": 0, "world": 2, "device_target": "CPU",
               "amp_level": "O0", "final_checkpoint": "x.ckpt",
               "final_eval": {"Loss": 1.5, "Top_1_Acc": 0.55, "Top_5_Acc": 0.85, "images": 300},
               "best_eval": None, "classes": [f"c{i}" for i in range(10)]}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def test_markdown_summary(tmp_path):
    run = rp.load_run(write_run(tmp_path / "run1"))
    text = rp.summary_markdown(run, {})
    assert text.startswith("# Run report: run1\n")
    assert "Status: **completed**, step 240, epoch 6 of 6." in text
    assert "| model | mobilenet_v3_small x1.0, 10 classes |" in text
    assert "| batch | 64 x 2 rank(s) |" in text
    assert "rmsprop, lr 0.05 (warmup 1.0 epochs" in text
    assert "- Best top-1 **0.5800** (top-5 0.8800) after epoch 4, step 160, on 300 images." in text
    assert "- Final top-1 0.5500" in text
    assert "- Training time 1h 02m 05s for steps 120..240." in text
    assert "- Median epoch 25.0 s, 625 ms/step." in text
    # the slow first report of each epoch and the superseded resume records are left out
    assert "- Throughput 113.0 images/s" in text and "56.5 per rank" in text
    assert f"| config hash | {load_config(None, None, base=run.config).digest()} |" in text
    assert "## Plots" not in text


def test_resumed_steps_keep_the_later_record(tmp_path):
    run = rp.load_run(write_run(tmp_path / "run"))
    steps = rp.latest_per_step(run.of("step"))
    assert [r["step"] for r in steps] == list(range(10, 241, 10))
    assert next(r for r in steps if r["step"] == 130)["images_per_sec"] == 25.0


def test_a_run_in_progress_without_summary(tmp_path):
    run_dir = write_run(tmp_path / "live")
    (run_dir / "summary.json").unlink()
    text = rp.summary_markdown(rp.load_run(run_dir), {})
    assert "in progress" in text and "Best top-1 **0.5800**" in text


def test_missing_run_names_the_fix(tmp_path):
    with pytest.raises(rp.ReportError, match="run directory not found"):
        rp.make_report(str(tmp_path / "nope"), plots=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(rp.ReportError, match="no metrics.jsonl"):
        rp.make_report(str(tmp_path / "empty"), plots=False)


def test_without_matplotlib_plots_fail_in_one_line_and_markdown_still_works(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import now raises ImportError
    run_dir = write_run(tmp_path / "run")
    with pytest.raises(rp.ReportError, match="pip install matplotlib"):
        rp.make_report(str(run_dir))
    report = rp.make_report(str(run_dir), plots=False)
    assert report == run_dir / "report" / "report.md" and "Best top-1" in report.read_text()


def test_plots_are_written_and_linked(tmp_path):
    run_dir = write_run(tmp_path / "run")
    report = run_cli(["report", str(run_dir), "--out", str(tmp_path / "out")])
    assert report == 0
    out = tmp_path / "out"
    text = (out / "report.md").read_text()
    for name in ("loss", "lr", "throughput", "accuracy"):
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert f"]({name}.png)" in text


def test_report_from_an_s3_output_url(tmp_path, s3_server, monkeypatch):
    """The run as the cloud layer uploads it; checkpoints are not fetched."""
    from cloud.storage.store import open_storage
    from cloud.storage.sync import upload_tree
    run_dir = write_run(tmp_path / "run")
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "big.ckpt").write_bytes(b"x" * 1000)
    bucket = s3_server.make_bucket()
    upload_tree(str(run_dir), open_storage(f"s3://{bucket}/jobs/run7", s3_server.settings()), "")
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    report = rp.make_report(f"s3://{bucket}/jobs/run7", tmp_path / "out", plots=False,
                            cache_root=tmp_path / "cache")
    assert "Best top-1 **0.5800**" in report.read_text()
    fetched = next((tmp_path / "cache").iterdir())
    assert fetched.name.startswith("run7-") and not (fetched / "checkpoints").exists()


def run_cli(argv) -> int:
    from launcher import cmd_report
    top = argparse.ArgumentParser()
    cmd_report.add_parser(top.add_subparsers(dest="command", required=True))
    args = top.parse_args(argv)
    return args.func(args)


def test_report_of_a_url_writes_nothing_into_the_working_directory(tmp_path, s3_server, monkeypatch):
    """Without --out, a URL's report goes beside its fetched copy in the cache (it went to
    ./reports/<name>/ before)."""
    from cloud.storage.store import open_storage
    from cloud.storage.sync import upload_tree
    run_dir = write_run(tmp_path / "run")
    bucket = s3_server.make_bucket()
    upload_tree(str(run_dir), open_storage(f"s3://{bucket}/jobs/run8", s3_server.settings()), "")
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    report = rp.make_report(f"s3://{bucket}/jobs/run8", plots=False, cache_root=tmp_path / "cache")
    assert list(cwd.iterdir()) == []
    assert report.parent.parent.parent == tmp_path / "cache" and report.parent.name == "report"
