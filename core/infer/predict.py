"""Top-k classes for image files, from a checkpoint or an exported MINDIR graph.

Images go through exactly the eval preprocessing (the native decoder of core.data.jpeg_eval, or
core.data.pipeline.eval_transforms' MindSpore ops run eagerly on the file's bytes, as the eval
pipeline picks), so a prediction here is what evaluation scores. An
exported graph has a fixed batch size; its model card (written beside it by export) supplies
the preprocessing and the class names.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from core.data.image_formats import image_problem
from core.data.pipeline import DatasetError, eval_transforms, native_augmentation

CHECKPOINT_BATCH = 16


@dataclass
class Prediction:
    file: str
    top: list[tuple[str, float]]  # (class name, probability), most likely first
    logits: np.ndarray


def preprocess(data: bytes, data_cfg, name: str = "image") -> np.ndarray:
    """(3, S, S) float32: the eval pipeline's preprocessing of the encoded image bytes (the
    native decoder, core.data.jpeg_eval, or MindSpore's ops, as core.data.pipeline.eval_pipeline picks).
    Checked first as the pipelines check: a damaged JPEG header would take the process down
    inside MindSpore's decoder (core/data/jpeg_check.py)."""
    problem = image_problem(data, data_cfg.max_image_pixels)
    if problem and problem.startswith("too large"):  # intact, but over data.max_image_pixels
        raise DatasetError(f"{name}: {problem}")
    if problem:
        raise DatasetError(f"cannot decode {name}: {problem}; pass an intact image file "
                           f"(JPEG, PNG, WebP, BMP, TIFF, GIF, PPM/PGM)")
    image = np.frombuffer(data, np.uint8)
    if native_augmentation(data_cfg):
        from core.data.jpeg_eval import DecodeError, EvalDecode
        try:
            return EvalDecode(data_cfg)(image)
        except DecodeError:
            raise DatasetError(f"cannot decode {name} as an image; pass an intact image file") from None
    try:
        for op in eval_transforms(data_cfg):
            image = op(image)
    except (RuntimeError, ValueError):  # MindSpore's message names its pipeline, not the file
        raise DatasetError(f"cannot decode {name} as an image; pass an intact image file") from None
    return np.ascontiguousarray(image, dtype=np.float32)


def read_image(path: str | Path, data_cfg) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"image not found: {path}")
    return preprocess(path.read_bytes(), data_cfg, str(path))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def top_k(logits: np.ndarray, class_names: Sequence[str], k: int) -> list[tuple[str, float]]:
    probs = softmax(logits)
    order = np.argsort(-probs, kind="stable")[:min(k, len(probs))]
    return [(class_names[i], float(probs[i])) for i in order]


class Predictor:
    """Logits for preprocessed images through `forward` (a Cell or a GraphCell), in batches
    of `batch_size`; the last batch is padded, so one compiled shape serves every call."""

    def __init__(self, forward: Callable, class_names: Sequence[str], data_cfg, batch_size: int):
        self.forward = forward
        self.class_names = list(class_names)
        self.data_cfg = data_cfg
        self.batch_size = batch_size

    def logits(self, images: np.ndarray) -> np.ndarray:
        import mindspore as ms
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            n = len(chunk)
            if n < self.batch_size:
                pad = np.zeros((self.batch_size - n,) + chunk.shape[1:], chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            result = self.forward(ms.Tensor.from_numpy(np.ascontiguousarray(chunk)))
            out.append(np.asarray(result.asnumpy() if hasattr(result, "asnumpy") else result)[:n])
        logits = np.concatenate(out).astype(np.float32)
        if logits.shape[1] != len(self.class_names):
            raise DatasetError(f"the model gives {logits.shape[1]} scores but there are "
                               f"{len(self.class_names)} class names; pass the matching class list")
        return logits

    def predict_files(self, files: Sequence[str | Path], k: int = 5) -> list[Prediction]:
        images = np.stack([read_image(f, self.data_cfg) for f in files])
        logits = self.logits(images)
        return [Prediction(str(f), top_k(row, self.class_names, k), row) for f, row in zip(files, logits)]


def from_network(net, class_names: Sequence[str], data_cfg, batch_size: int = CHECKPOINT_BATCH) -> Predictor:
    net.set_train(False)
    return Predictor(net, class_names, data_cfg, batch_size)


# --------------------------------------------------------------------------- exported graphs


def card_path(graph: str | Path) -> Path:
    """export writes each graph's own card beside it: `<file_name>.mindir` and
    `<file_name>.mindir.card.json`, `<file_name>.onnx` and `<file_name>.onnx.card.json`. An
    export made before that has one `<file_name>.card.json`, used when it names this file."""
    graph = Path(graph)
    own = graph.with_name(graph.name + ".card.json")
    older = graph.with_name(graph.stem + ".card.json")
    if not own.is_file() and older.is_file():
        try:
            if json.loads(older.read_text()).get("file") == graph.name:
                return older
        except (OSError, ValueError):
            pass
    return own


def data_config_from_card(card: dict):
    """The eval transform the card describes, as a DataConfig."""
    from core.config import load_config
    pre = card["preprocess"]
    return load_config(None, {"data.image_size": pre["center_crop"],
                              "data.eval_resize": pre["resize_shorter_side"],
                              "data.mean": pre["mean"], "data.std": pre["std"]}).data


def read_card(graph: str | Path) -> dict:
    from core.checkpoint import CheckpointError
    path = card_path(graph)
    if not path.is_file():
        raise CheckpointError(f"model card {path} not found beside {Path(graph).name}; predict "
                              f"needs it for the preprocessing (re-export with launcher/local.py "
                              f"export, which writes it)")
    card = json.loads(path.read_text())
    if not card.get("class_names"):
        classes = Path(graph).with_name("classes.json")
        if classes.is_file():
            card["class_names"] = json.loads(classes.read_text())
    return card


def card_and_names(graph: Path, class_names: Optional[Sequence[str]]) -> tuple[dict, list]:
    """An exported graph's card and the class names to print: given ones, else the card's."""
    from core.checkpoint import CheckpointError
    card = read_card(graph)
    names = list(class_names) if class_names else card.get("class_names")
    if not names:
        raise CheckpointError(f"no class names for {graph.name} (neither in its card nor in "
                              f"classes.json); pass --classes")
    return card, names


def from_mindir(graph: str | Path, class_names: Optional[Sequence[str]] = None) -> Predictor:
    import mindspore as ms

    from core.checkpoint import CheckpointError
    graph = Path(graph)
    if not graph.is_file():
        raise CheckpointError(f"exported model not found: {graph}")
    card, names = card_and_names(graph, class_names)
    try:
        cell = ms.nn.GraphCell(ms.load(str(graph)))
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{graph} is not a loadable MINDIR ({type(exc).__name__}); "
                              f"re-export it") from None
    batch = int(card["input"]["shape"][0])
    return Predictor(cell, names, data_config_from_card(card), batch)


GRAPH_SUFFIXES = (".mindir", ".onnx")
ACCEPTED = ("a .ckpt checkpoint, a run directory (its newest checkpoint), an s3:// or obs:// "
            "URL of either, or an exported .mindir or .onnx (onnxruntime) with its card beside it")


def from_onnx(graph: str | Path, class_names: Optional[Sequence[str]] = None) -> Predictor:
    """An ONNX export run by onnxruntime (when installed), with its card's preprocessing."""
    from core.checkpoint import CheckpointError
    graph = Path(graph)
    if not graph.is_file():
        raise CheckpointError(f"exported model not found: {graph}")
    try:
        import onnxruntime
    except ImportError:
        raise CheckpointError(f"{graph.name} is an ONNX export, which predict runs with onnxruntime: "
                              f"not installed (pip install onnxruntime); else pass a .ckpt, a run "
                              f"directory or an exported .mindir") from None
    card, names = card_and_names(graph, class_names)
    try:
        session = onnxruntime.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for a bad file
        raise CheckpointError(f"{graph} is not a loadable ONNX model ({type(exc).__name__}); "
                              f"re-export it") from None
    input_name = session.get_inputs()[0].name

    def forward(tensor):
        return session.run(None, {input_name: tensor.asnumpy()})[0]

    return Predictor(forward, names, data_config_from_card(card), int(card["input"]["shape"][0]))


def printable(text: str) -> str:
    """`text` on one line: control characters (a class folder named with a newline or a tab)
    written as escapes, so each table row stays one row."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def format_predictions(predictions: Sequence[Prediction]) -> str:
    lines = []
    for p in predictions:
        lines.append(printable(p.file))
        names = [printable(name) for name, _ in p.top]
        width = max(len(name) for name in names)
        lines += [f"  {rank}. {name:<{width}}  {prob * 100:6.2f}%" for rank, (name, (_, prob))
                  in enumerate(zip(names, p.top), start=1)]
    return "\n".join(lines)


def predictions_json(predictions: Sequence[Prediction]) -> str:
    return json.dumps([{"file": p.file, "top": [{"class": n, "probability": round(pr, 6)}
                                                for n, pr in p.top]} for p in predictions], indent=1)
