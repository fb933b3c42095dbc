"""Export MINDIR / ONNX / AIR with the class list and a model card beside the graph."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import mindspore as ms
import numpy as np

SUFFIX = {"MINDIR": ".mindir", "ONNX": ".onnx", "AIR": ".air"}


class ExportError(ValueError):
    """An export that cannot be done here: one line naming why and what to do."""


def model_card(cfg, classes, eval_result: Optional[dict], file_name: str,
               weights: Optional[str] = None) -> dict:
    """What a consumer of the exported graph needs to feed it and trust it. `weights`: 'ema'
    (the checkpoint's moving averages) or 'live' (the trained weights as they were)."""
    return {
        "architecture": cfg.model.arch,
        "width_mult": cfg.model.width_mult,
        "depthwise_padding": cfg.model.depthwise_padding or "symmetric",
        "file": file_name,
        "weights": weights,
        "format": cfg.export.format,
        "input": {"name": "x", "shape": [cfg.export.batch_size, 3, cfg.data.image_size,
                                         cfg.data.image_size],
                  "layout": "NCHW", "dtype": "float32", "color": "RGB"},
        "preprocess": {"resize_shorter_side": cfg.data.eval_resize,
                       "center_crop": cfg.data.image_size,
                       "mean": cfg.data.mean, "std": cfg.data.std, "scale": "pixel / 255"},
        "output": {"logits": len(classes)},
        "num_classes": len(classes),
        "class_names": list(classes),
        "config_sha256_16": cfg.digest(),
        "eval": eval_result,
    }


def export_model(net, cfg, out_dir: str | os.PathLike, classes, target: str,
                 eval_result: Optional[dict] = None, weights: Optional[str] = None) -> Path:
    fmt = cfg.export.format
    if fmt == "AIR" and target != "Ascend":
        raise ExportError("AIR export needs an Ascend device (set export.format=MINDIR or ONNX "
                          "here, or export on an Ascend machine)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / cfg.export.file_name
    target_file = base.with_suffix(SUFFIX[fmt])
    if target_file.exists():  # MindSpore writes exports read-only (0400); replace, don't fail
        target_file.chmod(0o600)
        target_file.unlink()
    net.set_train(False)
    from core.nn.cpu_ops import set_fast
    set_fast(net, False)  # export the standard Conv2D op, not the host-library custom operator
    shape = (cfg.export.batch_size, 3, cfg.data.image_size, cfg.data.image_size)
    ms.export(net, ms.Tensor(np.zeros(shape, np.float32)), file_name=str(base), file_format=fmt)
    if not target_file.exists():
        raise ExportError(f"MindSpore did not write {target_file}")
    (out_dir / "classes.json").write_text(json.dumps(list(classes), indent=1))
    card = model_card(cfg, classes, eval_result, target_file.name, weights)
    # each graph has its own card (an ONNX export beside a MINDIR must not replace the MINDIR's)
    (out_dir / f"{target_file.name}.card.json").write_text(json.dumps(card, indent=2))
    return target_file
