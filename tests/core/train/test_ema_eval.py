"""eval, export and predict use a checkpoint's EMA weights when it has them (what the run's own
evaluation and best.ckpt used), --weights live for the trained ones; eval.json and the model
card say which."""
from __future__ import annotations

import json

import numpy as np
import pytest

from core import checkpoint as ckpt
from core.config import ConfigError
from core.train.loop import train
from launcher.local import main
from tests.core_fixtures import tiny_config


@pytest.fixture(scope="module")
def ema_run(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("ema_run")
    cfg = tiny_config(tiny_dataset, out, **{"train.ema_decay": 0.6, "optim.lr": 0.05,
                                            "model.bn_momentum": 0.5, "train.epochs": 2})
    summary = train(cfg, out)
    return out, summary


def _eval(run_dir, *flags):
    assert main(["eval", "--checkpoint_path", str(run_dir / "checkpoints" / "best.ckpt"),
                 "--output_dir", str(run_dir), *flags]) == 0
    return json.loads((run_dir / "eval.json").read_text())


def test_eval_uses_the_ema_weights_the_run_evaluated_and_live_on_request(ema_run, tiny_dataset):
    run_dir, summary = ema_run
    ran = summary["best_eval"]
    ema = _eval(run_dir)
    assert ema["weights"] == "ema"
    assert ema["Top_1_Acc"] == pytest.approx(ran["Top_1_Acc"], abs=1e-9)
    assert ema["Loss"] == pytest.approx(ran["Loss"], rel=1e-3)
    live = _eval(run_dir, "--weights", "live")
    assert live["weights"] == "live"
    assert live["Loss"] != pytest.approx(ran["Loss"], rel=1e-3)  # the other weights


def test_export_and_predict_use_the_ema_weights_and_the_card_says_so(ema_run, tiny_dataset, capsys):
    from launcher.cmd_predict import predictor_for
    run_dir, summary = ema_run
    best = str(run_dir / "checkpoints" / "best.ckpt")
    assert main(["export", "--checkpoint_path", best, "--output_dir", str(run_dir)]) == 0
    card = json.loads(next((run_dir / "export").glob("*.card.json")).read_text())
    assert card["weights"] == "ema"
    assert card["eval"]["Top_1_Acc"] == pytest.approx(summary["best_eval"]["Top_1_Acc"], abs=1e-9)
    image = next((tiny_dataset / "val").rglob("*.jpg"))

    def logits(weights):
        args = type("A", (), {"checkpoint_path": best, "classes": None, "sets": [], "overrides": [],
                              "config": None, "device_target": None, "device_id": None,
                              "weights": weights})()
        return predictor_for(args).predict_files([str(image)], 3)[0].logits
    state = ckpt.load(best)
    assert any(k.startswith("ema.") for k in state.params)
    assert not np.allclose(logits("auto"), logits("live"), atol=1e-4)  # auto = ema (see eval)


def test_ema_weights_asked_of_a_checkpoint_without_them_is_one_error(ema_run, tmp_path):
    from core.infer.inference import resolve_weights
    run_dir, _ = ema_run
    state = ckpt.load(run_dir / "checkpoints" / "best.ckpt")
    plain = ckpt.Checkpoint({k: v for k, v in state.params.items() if not k.startswith("ema.")},
                            state.meta)
    assert resolve_weights(plain, "auto", "x.ckpt") == "live"
    with pytest.raises(ConfigError, match="x.ckpt has no EMA weights .*; pass --weights live"):
        resolve_weights(plain, "ema", "x.ckpt")
