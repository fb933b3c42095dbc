"""Rename foreign MobileNetV3-Small weights to this project's parameter names (numpy only).

Kept free of torch and MindSpore so the mapping can be unit-tested anywhere; reading the files
is the launcher's job (launcher/convert.py).

* torchvision ``mobilenet_v3_small``: core.nn.model mirrors its module tree, so only BatchNorm
  leaves change name (weight->gamma, bias->beta, running_mean->moving_mean,
  running_var->moving_variance) and ``num_batches_tracked`` goes.
* MindCV ``mobilenet_v3_small_100``: a flat ``features`` list (conv, BN, activation as separate
  entries; blocks as ``features.N.layers.K``), SE convs named ``conv_reduce``/``conv_expand``,
  and BatchNorm eps 1e-5 where ours is 1e-3. Entries are regrouped into our conv+BN units and
  the eps difference is folded into gamma, which keeps eval-mode outputs exact.
"""
from __future__ import annotations

import re
from typing import Mapping

import numpy as np

BN_RENAME = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
             "running_var": "moving_variance"}
BN_LEAVES = ("gamma", "beta", "moving_mean", "moving_variance")
TORCH_DROPPED_LEAVES = ("num_batches_tracked",)
WRAPPER_PREFIXES = ("module.", "model.")  # DistributedDataParallel, some training scripts
NETWORK_PREFIXES = ("features.", "classifier.")
MINDCV_BN_EPS = 1e-5  # mindspore.nn.BatchNorm2d default, which MindCV's MobileNetV3 uses
MINDCV_SE_RENAME = {"conv_reduce": "fc1", "conv_expand": "fc2"}


class WeightsMapError(ValueError):
    """The source weights are not a MobileNetV3-Small of the expected layout."""


def strip_wrapper_prefix(state: Mapping[str, np.ndarray]) -> dict:
    """Drop a 'module.'/'model.' prefix that every key shares (weights saved from a wrapper)."""
    for prefix in WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def network_entries(params: Mapping[str, np.ndarray]) -> tuple[dict, list[str]]:
    """(network weights, names of everything else): checkpoints may also hold optimizer
    moments, step counters or EMA copies, which a weight import ignores."""
    net = {k: v for k, v in params.items() if k.startswith(NETWORK_PREFIXES)}
    return net, sorted(k for k in params if k not in net)


def from_torchvision(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """torchvision state_dict (name -> array) -> this project's names, float32."""
    bn_modules = {k.rsplit(".", 1)[0] for k in state if k.endswith(".running_mean")}
    out = {}
    for name, value in state.items():
        module, leaf = name.rsplit(".", 1)
        if leaf in TORCH_DROPPED_LEAVES:
            continue
        if module in bn_modules:
            if leaf not in BN_RENAME:
                raise WeightsMapError(f"unexpected BatchNorm entry '{name}'")
            leaf = BN_RENAME[leaf]
        out[f"{module}.{leaf}"] = np.asarray(value, dtype=np.float32)
    return out


def _index_groups(names, pattern: re.Pattern) -> list[tuple[int, dict]]:
    """Group names matching `pattern` (index, rest) by index, in numeric order."""
    groups: dict[int, dict] = {}
    for name in names:
        m = pattern.match(name)
        if m:
            groups.setdefault(int(m.group(1)), {})[m.group(2)] = name
    return sorted(groups.items())


def _kind(leaves: dict, where: str) -> str:
    keys = set(leaves)
    if keys == {"weight"}:
        return "conv"
    if keys == set(BN_LEAVES):
        return "bn"
    if keys and all(k.split(".", 1)[0] in MINDCV_SE_RENAME for k in keys):
        return "se"
    if keys and all(k.startswith("layers.") for k in keys):
        return "block"
    raise WeightsMapError(f"{where} holds {sorted(keys)}, which is not a conv, BatchNorm, SE "
                          f"or block of MindCV's MobileNetV3")


def _regroup(groups, source_prefix: str, target_prefix: str, params, out) -> None:
    """Number conv+BN pairs, SE modules and blocks as our SequentialCells do."""
    unit, pending_conv = 0, None
    for index, leaves in groups:
        where = f"{source_prefix}{index}"
        kind = _kind(leaves, where)
        if pending_conv is not None and kind != "bn":
            raise WeightsMapError(f"{pending_conv} is a conv without a BatchNorm after it")
        if kind == "conv":
            pending_conv = where
            out[f"{target_prefix}{unit}.0.weight"] = params[leaves["weight"]]
        elif kind == "bn":
            if pending_conv is None:
                raise WeightsMapError(f"{where} is a BatchNorm without a conv before it")
            for leaf in BN_LEAVES:
                out[f"{target_prefix}{unit}.1.{leaf}"] = params[leaves[leaf]]
            pending_conv, unit = None, unit + 1
        elif kind == "se":
            for rest, name in leaves.items():
                module, leaf = rest.split(".", 1)
                out[f"{target_prefix}{unit}.{MINDCV_SE_RENAME[module]}.{leaf}"] = params[name]
            unit += 1
        else:  # an inverted-residual block: its own conv/BN/SE list
            inner = _index_groups(leaves.values(), re.compile(rf"^{re.escape(where)}\.layers\.(\d+)\.(.+)$"))
            _regroup(inner, f"{where}.layers.", f"{target_prefix}{unit}.block.", params, out)
            unit += 1
    if pending_conv is not None:
        raise WeightsMapError(f"{pending_conv} is a conv without a BatchNorm after it")


def fold_bn_eps(gamma: np.ndarray, variance: np.ndarray, eps_from: float, eps_to: float) -> np.ndarray:
    """gamma' such that gamma'/sqrt(var + eps_to) == gamma/sqrt(var + eps_from): the same
    eval-mode output under another BatchNorm epsilon, for any non-negative variance."""
    variance = variance.astype(np.float64)
    scale = np.sqrt((variance + eps_to) / (variance + eps_from))
    return (gamma.astype(np.float64) * scale).astype(np.float32)


def from_mindcv(params: Mapping[str, np.ndarray], eps_to: float,
                eps_from: float = MINDCV_BN_EPS) -> dict[str, np.ndarray]:
    """MindCV mobilenet_v3_small_* network weights -> this project's names, float32, with the
    BatchNorm epsilon difference folded into gamma."""
    params = {k: np.asarray(v, dtype=np.float32) for k, v in params.items()}
    out: dict[str, np.ndarray] = {}
    features = _index_groups(params, re.compile(r"^features\.(\d+)\.(.+)$"))
    _regroup(features, "features.", "features.", params, out)
    for name, value in params.items():
        if name.startswith("classifier."):
            out[name] = value
        elif not name.startswith("features."):
            raise WeightsMapError(f"'{name}' is not a network weight of MindCV's MobileNetV3")
    for name in [n for n in out if n.endswith(".gamma")]:
        base = name[: -len("gamma")]
        out[name] = fold_bn_eps(out[name], out[base + "moving_variance"], eps_from, eps_to)
    return out


def layout_problems(mapped: Mapping[str, np.ndarray], expected: Mapping[str, tuple]) -> list[str]:
    """Differences between converted weights and the model's (name -> shape) table."""
    problems = [f"'{n}' missing" for n in expected if n not in mapped]
    problems += [f"'{n}' is not in the model" for n in mapped if n not in expected]
    problems += [f"'{n}' has shape {tuple(mapped[n].shape)}, the model needs {tuple(expected[n])}"
                 for n in expected if n in mapped and tuple(mapped[n].shape) != tuple(expected[n])]
    return problems


def classifier_classes(mapped: Mapping[str, np.ndarray], classifier_prefixes: tuple) -> int:
    """Class count of the converted weights (rows of the last classifier weight)."""
    weights = [v for n, v in mapped.items() if n.startswith(classifier_prefixes) and n.endswith("weight")]
    if len(weights) != 1:
        raise WeightsMapError(f"expected one classifier weight under {classifier_prefixes}, "
                              f"found {len(weights)}")
    return int(weights[0].shape[0])
