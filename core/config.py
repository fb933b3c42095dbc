"""Typed run configuration: YAML recipes plus dotted CLI overrides, checked at start.

Every key has a type and, where it matters, a range or a set of choices, so that a typo or a
bad value fails before any data is read, with a message naming the key and the fix.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml


class ConfigError(ValueError):
    """A user error in the configuration: one line naming the key and the fix."""


def _spec(default, *, minimum=None, maximum=None, choices=None, exclusive_min=False, help=""):
    meta = {"min": minimum, "max": maximum, "choices": choices, "exclusive_min": exclusive_min,
            "help": help}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    arch: str = _spec("mobilenet_v3_small", choices=("mobilenet_v3_small", "modelzoo"),
                      help="network: torchvision-exact MobileNetV3-Small, or the model-zoo variant")
    num_classes: Optional[int] = _spec(None, minimum=2,
                                       help="null = number of class folders; else must match them")
    width_mult: float = _spec(1.0, minimum=0.0, exclusive_min=True, help="channel multiplier")
    dropout: Optional[float] = _spec(None, minimum=0.0, maximum=0.99,
                                     help="dropout before the classifier; null = the arch's own "
                                          "(0.2, model-zoo: none)")
    bn_momentum: Optional[float] = _spec(None, minimum=0.0, maximum=0.9999,
                                         help="weight kept by BN running stats; null = the arch's "
                                              "own (0.99, model-zoo 0.9); short runs want ~0.9")
    depthwise_padding: Optional[str] = _spec(None, choices=("symmetric", "same"),
                                             help="stride-2 depthwise convs: symmetric "
                                                  "(torchvision) or same (MindCV/TF: 0 before, 1 "
                                                  "after at even sizes); null = the --pre_trained "
                                                  "or resumed checkpoint's, else symmetric")


@dataclass
class DataConfig:
    path: Optional[str] = _spec(None, help="ImageFolder root with train/ and val/; null = embedded demo")
    train_dir: str = _spec("train", help="sub-folder of path with training images")
    val_dir: str = _spec("val", help="sub-folder of path with validation images")
    image_size: int = _spec(224, minimum=16, help="training and eval crop size (px)")
    eval_resize: int = _spec(256, minimum=16, help="eval: resize shorter side to this, then centre crop")
    batch_size: int = _spec(150, minimum=1, help="per-device training batch")
    global_batch_size: Optional[int] = _spec(None, minimum=1,
                                             help="training batch of all processes together; "
                                                  "when set, the per-device batch is this / the "
                                                  "process count (which must divide it) and "
                                                  "data.batch_size is not used: a run resumes on "
                                                  "another number of processes as it is; null = "
                                                  "data.batch_size x processes")
    eval_batch_size: Optional[int] = _spec(None, minimum=1, help="per-device eval batch; null = batch_size")
    workers: int = _spec(4, minimum=1, help="parallel workers for decoding and augmentation")
    crop_scale: list = _spec([0.08, 1.0], help="RandomCropDecodeResize area range")
    crop_ratio: list = _spec([0.75, 1.333333], help="RandomCropDecodeResize aspect range")
    hflip: float = _spec(0.5, minimum=0.0, maximum=1.0, help="horizontal flip probability")
    color_jitter: list = _spec([0.4, 0.4, 0.4], help="brightness, contrast, saturation jitter")
    mean: list = _spec([0.485, 0.456, 0.406], help="normalisation mean (0-1 scale)")
    std: list = _spec([0.229, 0.224, 0.225], help="normalisation std (0-1 scale)")
    decoder: str = _spec("auto", choices=("auto", "native", "mindspore"),
                         help="decoding for training, eval and predict: native = the project's libjpeg-turbo "
                              "operator (make kernels), mindspore = its dataset ops, auto = native when built")
    shuffle_window: int = _spec(0, minimum=0,
                                help="packed data: 0 = a full shuffle of each epoch; N = "
                                     "shard-window shuffle: each epoch deals the shards into "
                                     "windows of N (each spanning the pack's file order) read one "
                                     "after another, samples shuffled within a window, so a "
                                     "streaming reader needs N shards at a time (plus its "
                                     "prefetch); an ImageFolder is always shuffled in full")
    sample_log: bool = _spec(False, help="rank 0 appends each global step's samples (paths "
                                         "relative to the split, in global-batch order) to "
                                         "samples.jsonl in the run directory")
    on_corrupt: str = _spec("skip", choices=("skip", "fail"),
                            help="training images that cannot be read: skip (counted, logged) or fail")
    max_image_pixels: int = _spec(100_000_000, minimum=1,
                                  help="largest image (width x height) any decoder is given; a "
                                       "larger one is refused from its header: skipped and named "
                                       "in training, one error line in eval and predict, kept out "
                                       "by pack (decompression bombs; 100 Mpx = 300 MB as RGB)")
    stream: bool = _spec(False, help="an s3:// or obs:// packed dataset: train while its shards "
                                     "download into a bounded node cache instead of staging it "
                                     "all first (first step in seconds; see README); local "
                                     "paths ignore it")
    prefetch_shards: int = _spec(4, minimum=0, help="streaming: shards each process fetches "
                                                    "ahead of those it is reading")
    ranged_reads_mb: float = _spec(64.0, minimum=0.0,
                                   help="streaming: each pass reads up to this many MB of samples "
                                        "straight from the store while their shards are still "
                                        "arriving (the first step in seconds; those bytes come "
                                        "twice); 0: wait for the shards")
    cache_limit_gb: float = _spec(20.0, minimum=0.0, exclusive_min=True,
                                  help="streaming: the node's shard cache holds at most this "
                                       "(plus shards being downloaded); shards read this epoch "
                                       "are evicted first; at least 2 shards")


@dataclass
class OptimConfig:
    name: str = _spec("rmsprop", choices=("rmsprop", "sgd"), help="rmsprop (model-zoo) or sgd (MindCV)")
    lr: float = _spec(0.05, minimum=0.0, exclusive_min=True, help="peak learning rate")
    lr_end: float = _spec(0.0, minimum=0.0, help="learning rate at the last step")
    warmup_epochs: float = _spec(4.0, minimum=0.0, help="linear warmup from 0, in epochs")
    weight_decay: float = _spec(4e-5, minimum=0.0, help="L2 on weights (not BN gamma/beta, not biases)")
    momentum: float = _spec(0.9, minimum=0.0, maximum=1.0, help="momentum (both optimizers)")
    rmsprop_decay: float = _spec(0.9, minimum=0.0, maximum=1.0, help="RMSProp mean-square decay")
    eps: float = _spec(1e-3, minimum=0.0, exclusive_min=True, help="RMSProp epsilon (inside the sqrt)")
    nesterov: bool = _spec(False, help="SGD Nesterov momentum")


@dataclass
class TrainConfig:
    epochs: int = _spec(370, minimum=1, help="training epochs")
    max_steps: Optional[int] = _spec(None, minimum=1, help="stop after this global step (null = all)")
    seed: int = _spec(1, minimum=0, help="weights, data order and augmentation seed")
    label_smoothing: float = _spec(0.1, minimum=0.0, maximum=0.99, help="on = 1-e, off = e/(K-1)")
    amp_level: str = _spec("auto", choices=("auto", "O0", "O1", "O2", "O3"),
                           help="auto = O3 on Ascend/GPU, O0 (fp32) on CPU")
    loss_scale: float = _spec(1024.0, minimum=1.0, help="fixed loss scale (used when amp is on)")
    sink_mode: str = _spec("auto", choices=("auto", "on", "off"), help="data sink; auto = on for Ascend/GPU")
    ema_decay: float = _spec(0.0, minimum=0.0, maximum=1.0, help="EMA of weights; 0 = off")
    log_interval: int = _spec(100, minimum=1, help="steps between progress lines")
    eval_interval: int = _spec(0, minimum=0, help="validate every N epochs (0 = only at the end)")
    eval_at_end: bool = _spec(True, help="validate after the last epoch")
    hang_timeout_s: float = _spec(600.0, minimum=0.0,
                                  help="a rank with no step done for this long (3x for the first "
                                       "step: graph compile) logs every thread's stack and exits "
                                       "non-zero (0 = off); ModelArts' own hang detection waits "
                                       "30 min")


@dataclass
class FinetuneConfig:
    freeze_backbone_epochs: int = _spec(0, minimum=0,
                                        help="train only the classifier for the first N epochs "
                                             "(backbone LR 0; BN statistics still adapt)")
    backbone_lr_scale: float = _spec(1.0, minimum=0.0,
                                     help="backbone LR = this x the schedule (the classifier keeps "
                                          "the schedule); e.g. 0.1 when fine-tuning")


@dataclass
class CheckpointConfig:
    interval_epochs: int = _spec(1, minimum=0, help="save every N epochs (0 = off)")
    interval_steps: int = _spec(0, minimum=0, help="also save every N global steps (0 = off)")
    keep: int = _spec(5, minimum=1, help="keep the newest K periodic checkpoints")
    prefix: str = _spec("mobilenetv3", help="checkpoint file name prefix")


@dataclass
class ExportConfig:
    format: str = _spec("MINDIR", choices=("MINDIR", "ONNX", "AIR"), help="AIR only on Ascend")
    batch_size: int = _spec(1, minimum=1, help="batch dimension of the exported graph")
    file_name: str = _spec("mobilenetv3_small", help="exported file name, no suffix")


@dataclass
class SystemConfig:
    device_target: str = _spec("auto", choices=("auto", "CPU", "GPU", "Ascend"),
                               help="auto = Ascend, then GPU, then CPU")
    device_id: int = _spec(0, minimum=0, help="accelerator index on this node")
    mode: str = _spec("graph", choices=("graph", "pynative"), help="MindSpore execution mode")
    output_dir: str = _spec("runs/mobilenetv3_small", help="run directory (checkpoints, logs, exports)")
    distributed: bool = _spec(False, help="data-parallel across ranks (set by the launchers)")
    cpu_ops: str = _spec("auto", choices=("auto", "native", "custom"),
                                help="convs (depthwise, stem, 1x1), training BN+activation, "
                                     "squeeze-excite, pooling and the batch's normalisation: "
                                     "auto = the project's CPU operators on CPU when built "
                                     "(make kernels), else MindSpore's own ops")
    kernel_isa: str = _spec("auto", choices=("auto", "avx512", "avx2", "baseline", "neon", "generic"),
                            help="instruction-set build of the project's CPU operators: auto = the "
                                 "best this CPU executes; avx2/baseline on an AVX-512 host reproduce "
                                 "what those hosts run (make kernels builds every x86-64 variant)")
    kernel_choice_cache: str = _spec("~/.cache/mnv3-runner/kernel_choice.json",
                                     help="where cpu_ops=auto keeps which CPU operators won "
                                          "on this host (measured once per CPU, build and thread "
                                          "count, ~10 s); empty = measure every run")
    cpu_threads: Optional[int] = _spec(None, minimum=1,
                                       help="threads of MindSpore's CPU kernels (null = its default); "
                                            "1 makes CPU runs, resumed ones too, bit-for-bit repeatable")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    system: SystemConfig = field(default_factory=SystemConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def digest(self) -> str:
        """Stable hash of the recipe, for model cards and run identity."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}
_LIST_LENGTHS = {"data.crop_scale": 2, "data.crop_ratio": 2, "data.color_jitter": 3,
                 "data.mean": 3, "data.std": 3}


def _section_class(name: str):
    return {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "train": TrainConfig,
            "finetune": FinetuneConfig, "checkpoint": CheckpointConfig, "export": ExportConfig, "system": SystemConfig}[name]


def known_keys() -> list[str]:
    return [f"{s}.{f.name}" for s in SECTIONS for f in dataclasses.fields(_section_class(s))]


# Keys that were renamed: refused with the new name (a recipe written for the old one would
# otherwise lose its setting silently)
RENAMED = {"system.depthwise_impl": ("system.cpu_ops", "it switches every native CPU operator "
                                     "(convs, BN, squeeze-excite, pooling, normalisation), not "
                                     "only depthwise convs")}


def _unknown(key: str) -> ConfigError:
    if key in RENAMED:
        new, why = RENAMED[key]
        return ConfigError(f"config key '{key}' is now '{new}' ({why}): write {new}=... instead")
    close = difflib.get_close_matches(key, known_keys(), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else " (see the config reference in README.md)"
    return ConfigError(f"unknown config key '{key}'{hint}")


def _coerce(key: str, value: Any, annotation) -> Any:
    """Check one value against its declared type; ints are accepted where floats are expected."""
    hints = typing.get_args(annotation) if typing.get_origin(annotation) is typing.Union else ()
    optional = type(None) in hints
    base = next((h for h in hints if h is not type(None)), annotation) if hints else annotation
    if value is None:
        if optional:
            return None
        raise ConfigError(f"config key '{key}' must not be null")
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return _finite(key, float(value))
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
            else:
                return _finite(key, number)
    elif base is str:
        if isinstance(value, str):
            return value
    elif base is list:
        if isinstance(value, (list, tuple)) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            want = _LIST_LENGTHS.get(key)
            if want is not None and len(value) != want:
                raise ConfigError(f"config key '{key}' needs {want} numbers, got {len(value)}")
            return [_finite(key, float(v)) for v in value]
    type_name = getattr(base, "__name__", str(base))
    raise ConfigError(f"config key '{key}' expects {type_name}, got {type(value).__name__} "
                      f"{value!r}")


def _finite(key: str, value: float) -> float:
    """NaN and infinities (YAML .nan/.inf, or 'nan'/'inf' read as floats) would train on NaN."""
    if not math.isfinite(value):
        raise ConfigError(f"config key '{key}' must be a finite number; got {value!r} "
                          f"(set a real value, e.g. the default from the config reference)")
    return value


def _check_range(key: str, value: Any, meta: dict) -> None:
    if value is None:
        return
    choices = meta.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"config key '{key}' must be one of {', '.join(choices)}; got {value!r}")
    low, high = meta.get("min"), meta.get("max")
    if low is not None and isinstance(value, (int, float)):
        if value < low or (meta.get("exclusive_min") and value == low):
            word = "greater than" if meta.get("exclusive_min") else "at least"
            raise ConfigError(f"config key '{key}' must be {word} {low}; got {value!r}")
    if high is not None and isinstance(value, (int, float)) and value > high:
        raise ConfigError(f"config key '{key}' must be at most {high}; got {value!r}")


def _check_consistency(cfg: Config) -> None:
    low, high = cfg.data.crop_scale
    if not 0 < low <= high <= 1:
        raise ConfigError("config key 'data.crop_scale' must be [low, high] with 0 < low <= high <= 1")
    if not 0 < cfg.data.crop_ratio[0] <= cfg.data.crop_ratio[1]:
        raise ConfigError("config key 'data.crop_ratio' must be [low, high] with 0 < low <= high")
    if any(s <= 0 for s in cfg.data.std):
        raise ConfigError("config key 'data.std' must hold positive numbers")
    if cfg.data.eval_resize < cfg.data.image_size:
        raise ConfigError(f"config key 'data.eval_resize' ({cfg.data.eval_resize}) must be at least "
                          f"data.image_size ({cfg.data.image_size})")
    if cfg.model.arch == "modelzoo" and cfg.model.depthwise_padding == "same":
        raise ConfigError("config key 'model.depthwise_padding' same is for MindCV weights "
                          "(model.arch=mobilenet_v3_small); the model-zoo variant pads symmetrically")
    if cfg.optim.lr_end > cfg.optim.lr:
        raise ConfigError("config key 'optim.lr_end' must not exceed optim.lr")
    if cfg.finetune.freeze_backbone_epochs > cfg.train.epochs:
        raise ConfigError(f"config key 'finetune.freeze_backbone_epochs' "
                          f"({cfg.finetune.freeze_backbone_epochs}) must not exceed train.epochs "
                          f"({cfg.train.epochs})")
    if cfg.optim.warmup_epochs > cfg.train.epochs:
        raise ConfigError(f"config key 'optim.warmup_epochs' ({cfg.optim.warmup_epochs}) must not "
                          f"exceed train.epochs ({cfg.train.epochs})")


def set_key(cfg: Config, key: str, value: Any) -> None:
    """Set `section.name` on cfg with type and range checks."""
    parts = key.split(".")
    if len(parts) != 2 or parts[0] not in SECTIONS:
        raise _unknown(key)
    section = getattr(cfg, parts[0])
    fields = {f.name: f for f in dataclasses.fields(section)}
    if parts[1] not in fields:
        raise _unknown(key)
    f = fields[parts[1]]
    annotation = typing.get_type_hints(type(section))[f.name]
    value = _coerce(key, value, annotation)
    _check_range(key, value, f.metadata)
    setattr(section, f.name, value)


# Sections a recipe may carry for other layers (e.g. the cloud adapter's `storage:`); the
# trainer skips them and whoever owns them validates them.
FOREIGN_SECTIONS = ("storage",)


def _flatten(tree: dict, where: str) -> dict:
    if not isinstance(tree, dict):
        raise ConfigError(f"{where}: expected a mapping of sections (model, data, optim, ...)")
    flat = {}
    for section, values in tree.items():
        if section in FOREIGN_SECTIONS:
            continue
        if section not in SECTIONS:
            raise _unknown(str(section))
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: section '{section}' must be a mapping of keys")
        for name, value in values.items():
            flat[f"{section}.{name}"] = value
    return flat


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one
    silently: `epochs: 3` then `epochs: 30` would train 30 epochs without a word)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = key_node.value
                if key in seen:
                    raise ConfigError(f"duplicate key '{key}' at lines {seen[key] + 1} and "
                                      f"{key_node.start_mark.line + 1}; keep one of them")
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_recipe(fh) -> Any:
    """A recipe's YAML tree: safe tags only, no duplicate keys (ConfigError naming both lines)."""
    return yaml.load(fh, Loader=_UniqueKeyLoader)


def parse_override(text: str) -> tuple[str, Any]:
    """`train.epochs=3` -> ('train.epochs', 3); the value is read as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def read_recipe_file(path: str) -> dict:
    """A recipe file's YAML tree ({} when empty); every problem with the file is one ConfigError."""
    try:
        with open(path, encoding="utf-8") as fh:
            tree = read_recipe(fh) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path} (pass an existing YAML recipe, "
                          f"e.g. configs/cpu_demo.yaml)") from None
    except ConfigError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        if isinstance(exc, yaml.constructor.ConstructorError):  # e.g. !!python/object: never run
            raise ConfigError(f"config file {path}{where}: {exc.problem}; recipes hold plain "
                              f"values only (YAML tags such as !!python/... are refused)") from None
        raise ConfigError(f"config file {path} is not valid YAML{where}; fix its syntax") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (model, data, optim, ...)")
    return tree


def load_config(path: Optional[str] = None, overrides: Optional[dict] = None,
                base: Optional[dict] = None, recipe: Optional[dict] = None) -> Config:
    """Defaults <- base (a saved config tree) <- YAML recipe <- overrides (dotted keys),
    then whole-config checks. `recipe`: the tree of `path` when the caller has read it already
    (read_recipe_file), e.g. for its foreign sections."""
    cfg = Config()
    flat: dict = _flatten(base, "saved config") if base else {}
    if path or recipe is not None:
        tree = recipe if recipe is not None else read_recipe_file(path)
        flat.update(_flatten(tree, path or "recipe"))
    flat.update(overrides or {})
    for key, value in flat.items():
        set_key(cfg, key, value)
    _check_consistency(cfg)
    return cfg


def reference_table() -> list[tuple[str, str, Any, str]]:
    """(key, type, default, help) rows for the README's config reference."""
    rows = []
    defaults = Config()
    for section in SECTIONS:
        cls = _section_class(section)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            t = hints[f.name]
            args = [a for a in typing.get_args(t) if a is not type(None)]
            name = f"{args[0].__name__} or null" if args else t.__name__
            rows.append((f"{section}.{f.name}", name, getattr(getattr(defaults, section), f.name),
                         f.metadata.get("help", "")))
    return rows


def reference_markdown() -> str:
    """The README's config reference table (regenerate with `python -m core.config`)."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, type_name, default, text in reference_table():
        shown = "null" if default is None else default
        lines.append(f"| `{key}` | {type_name} | `{shown}` | {text} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference_markdown())
