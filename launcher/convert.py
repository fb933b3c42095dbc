"""Import torchvision / MindCV MobileNetV3-Small weights as a checkpoint of this project.

Reading a .pth needs torch, so torch is imported here, inside the function that reads it, and
never by core/ or training. The renaming itself lives in core.nn.weights_map (numpy only). The
written checkpoint carries a config (arch, width, class count, depthwise padding, ImageNet eval
preprocessing), so eval, export and predict take it as is, and `train --pre_trained` fine-tunes
from it.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from core.nn import weights_map as wm
from core.checkpoint import CheckpointError
from core.config import ConfigError, load_config
from core.digest import sha256_file

log = logging.getLogger("launcher.convert")
SOURCES = ("torchvision", "mindcv")
ARCH = "mobilenet_v3_small"
# How each source pads its stride-2 depthwise convs (MindCV: pad_mode="same"); written into the
# checkpoint's config so eval, export, predict and fine-tuning rebuild the matching network.
DEPTHWISE_PADDING = {"torchvision": "symmetric", "mindcv": "same"}


def read_torch_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """name -> array from a torch .pth: a state_dict, or a training checkpoint holding one
    under 'model' or 'state_dict' (torchvision's reference scripts save the former)."""
    try:
        import torch
    except ImportError:
        raise ConfigError("reading torchvision weights needs torch: pip install torch "
                          "(the CPU wheel is enough)") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"weights file not found: {path}") from None
    except Exception as exc:  # pickle errors, zip errors, refused types
        raise CheckpointError(f"{path} is not a readable torch state_dict ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:120]}); save model.state_dict() "
                              f"with torch.save") from None
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(hasattr(v, "detach") for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state_dict of tensors; save "
                              f"model.state_dict() with torch.save")
    return {k: v.detach().cpu().float().numpy() if v.is_floating_point() else v.cpu().numpy()
            for k, v in obj.items()}


def read_mindspore_checkpoint(path: str | Path) -> dict[str, np.ndarray]:
    import mindspore as ms
    if not Path(path).is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        raw = ms.load_checkpoint(str(path))
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable MindSpore checkpoint "
                              f"({type(exc).__name__}); pass a MindCV .ckpt file") from None
    return {k: v.asnumpy() for k, v in raw.items() if hasattr(v, "asnumpy")}


def convert_arrays(source: str, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Source arrays -> this project's names (see core.nn.weights_map)."""
    from core.nn.model import BN_EPS
    state = wm.strip_wrapper_prefix(raw)
    network, ignored = wm.network_entries(state)
    if ignored:
        log.info("ignoring %d non-network entries, e.g. %s", len(ignored), ", ".join(ignored[:3]))
    if source == "torchvision":
        return wm.from_torchvision(network)
    return wm.from_mindcv(network, eps_to=BN_EPS)


def expected_layout(num_classes: int, width_mult: float) -> dict[str, tuple]:
    """(name -> shape) of this project's model, masks left out."""
    from core.nn.dropout import is_mask
    from core.nn.model import build_model
    net = build_model(ARCH, num_classes, width_mult)
    return {p.name: tuple(p.shape) for p in net.get_parameters() if not is_mask(p.name)}


def convert(source: str, src: str | Path, dst: str | Path, num_classes: Optional[int] = None,
            width_mult: float = 1.0, classes: Optional[Sequence[str]] = None) -> dict:
    """Write `dst`; returns {"path", "num_classes", "source_classes", "classifier_kept"}.

    With `num_classes` different from the source's class count, the classifier is left out,
    so fine-tuning (`--pre_trained`) starts it fresh; the checkpoint is then for fine-tuning
    only (eval and predict need a classifier).
    """
    import mindspore as ms

    from core import checkpoint as ckpt
    from core.nn.model import MobileNetV3Small
    if source not in SOURCES:
        raise ConfigError(f"unknown weights source {source!r}; choose one of {', '.join(SOURCES)}")
    raw = read_torch_state_dict(src) if source == "torchvision" else read_mindspore_checkpoint(src)
    try:
        mapped = convert_arrays(source, raw)
        source_classes = wm.classifier_classes(mapped, MobileNetV3Small.CLASSIFIER_PREFIXES)
    except wm.WeightsMapError as exc:
        raise CheckpointError(f"{src} is not a {source} mobilenet_v3_small: {exc}") from None
    problems = wm.layout_problems(mapped, expected_layout(source_classes, width_mult))
    if problems:
        raise CheckpointError(f"{src} does not fit {ARCH} (width_mult {width_mult}): "
                              f"{problems[0]} ({len(problems)} difference(s); is it another "
                              f"architecture or width? pass --width_mult)")
    kept = num_classes is None or num_classes == source_classes
    if not kept:
        mapped = {n: v for n, v in mapped.items()
                  if not n.startswith(MobileNetV3Small.CLASSIFIER_PREFIXES)}
    if classes is not None and (not kept or len(classes) != source_classes):
        raise ConfigError(f"--classes names {len(classes)} classes but the written classifier has "
                          f"{source_classes if kept else 'none'}; drop --classes or fix the list")
    overrides = {"model.arch": ARCH, "model.width_mult": width_mult,
                 "model.num_classes": source_classes if kept else num_classes,
                 "model.depthwise_padding": DEPTHWISE_PADDING[source]}
    meta = {"kind": "converted", "config": load_config(None, overrides).to_dict(),
            "source": {"format": source, "file": Path(src).name, "sha256": sha256_file(src)}}
    if classes is not None:
        meta["classes"] = list(classes)
    params = [ms.Parameter(ms.Tensor(v), name=n) for n, v in mapped.items()]
    path = ckpt.save(dst, params, meta)
    if source == "mindcv":
        log.info("model.depthwise_padding=same recorded: eval, export, predict and fine-tuning "
                 "rebuild MindCV's TF-style stride-2 depthwise padding")
    log.info("wrote %s: %d parameters from %s (%s), classifier %s", path, len(params), src, source,
             "kept" if kept else "left out for fine-tuning")
    return {"path": str(path), "num_classes": overrides["model.num_classes"],
            "source_classes": source_classes, "classifier_kept": kept}


def read_class_names(path: str | Path) -> list[str]:
    """One class name per line, or a JSON list (as export's classes.json)."""
    import json
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return [str(c) for c in json.loads(text)]
    return [line.strip() for line in text.splitlines() if line.strip()]
