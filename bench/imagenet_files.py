"""A miniature ILSVRC2012 in exactly the official file structure (tests and bench use it).

What the real files look like, and where that is documented:
- torchvision/datasets/imagenet.py (pytorch/vision): ARCHIVE_META names the three files;
  parse_devkit_archive reads `ILSVRC2012_devkit_t12/data/meta.mat` with
  scipy.io.loadmat(squeeze_me=True)['synsets'], takes field 4 (num_children) == 0 as the
  leaves and fields 0-2 as (ILSVRC2012_ID, WNID, words); it reads
  `data/ILSVRC2012_validation_ground_truth.txt` as one ILSVRC2012_ID per line;
  parse_train_archive extracts the train tar, then each inner `<wnid>.tar`;
  parse_val_archive pairs the sorted flat val files with the ground truth lines.
- The devkit's meta.mat `synsets` is an 1860x1 struct array (1,000 leaves with IDs 1-1000
  not in wnid order, e.g. ID 1 is n02119789, then 860 inner synsets) with fields
  ILSVRC2012_ID, WNID, words, gloss, num_children, children, wordnet_height, num_train_images;
  written here with scipy.io.savemat from an (N, 1) object struct array, the same shape.
- Kaggle's "ImageNet Object Localization Challenge": LOC_synset_mapping.txt
  ("n01440764 tench, Tinca tinca" in wnid order), LOC_val_solution.csv
  (ImageId,PredictionString whose tokens are "<wnid> x0 y0 x1 y1 ..."),
  ILSVRC/Data/CLS-LOC/train/<wnid>/<wnid>_<n>.JPEG and ILSVRC/Data/CLS-LOC/val/*.JPEG.
"""
from __future__ import annotations

import csv
import io
import random
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

WNIDS = ("n01440764", "n01443537", "n01484850", "n01491361", "n01494475")
WORDS = ("tench, Tinca tinca", "goldfish, Carassius auratus", "great white shark",
         "tiger shark, Galeocerdo cuvieri", "hammerhead, hammerhead shark")
IDS = (449, 1, 490, 391, 7)     # ILSVRC2012_IDs, deliberately not in wnid order


@dataclass
class MiniImageNet:
    root: Path
    train: dict[str, bytes] = field(default_factory=dict)        # "<wnid>/<file>" -> bytes
    val: dict[str, str] = field(default_factory=dict)            # val file -> wnid
    val_bytes: dict[str, bytes] = field(default_factory=dict)
    special: dict[str, str] = field(default_factory=dict)        # kind -> "<wnid>/<file>"


def jpeg(rng: random.Random, size: int, mode: str = "RGB", fmt: str = "JPEG",
         quality: int = 90) -> bytes:
    from PIL import Image
    colour = tuple(rng.randrange(256) for _ in range(3))
    image = Image.new("RGB", (size, size - 8), colour)
    noise = np.array(image, dtype=np.int16) + np.asarray(
        [[[rng.randrange(-20, 20)] * 3 for _ in range(size)] for _ in range(size - 8)], np.int16)
    image = Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8))
    if mode != "RGB":
        image = image.convert(mode)
    out = io.BytesIO()
    image.save(out, fmt, quality=quality) if fmt == "JPEG" else image.save(out, fmt)
    return out.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 1_336_000_000, 0o644
    tar.addfile(info, io.BytesIO(data))


def _tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            _add(tar, name, data)
    return out.getvalue()


def meta_mat(wnids=WNIDS, words=WORDS, ids=IDS) -> bytes:
    """meta.mat's `synsets` as the devkit has it: leaves, then inner synsets (children > 0)."""
    import scipy.io
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children",
              "wordnet_height", "num_train_images"]
    rows = sorted(zip(ids, wnids, words), key=lambda r: r[0])
    inner = [(len(rows) + 1, "n01440000", "fish", [r[0] for r in rows[:3]]),
             (len(rows) + 2, "n00015388", "animal, animate being", [len(rows) + 1])]
    synsets = np.empty((len(rows) + len(inner), 1), dtype=[(f, object) for f in fields])
    for i, (number, wnid, word) in enumerate(rows):
        synsets[i, 0] = (np.array([[number]], float), np.array([wnid]), np.array([word]),
                         np.array([f"a {word}"]), np.array([[0.0]]), np.zeros((1, 0)),
                         np.array([[0.0]]), np.array([[4.0]]))
    for i, (number, wnid, word, children) in enumerate(inner, len(rows)):
        synsets[i, 0] = (np.array([[number]], float), np.array([wnid]), np.array([word]),
                         np.array([f"a {word}"]), np.array([[float(len(children))]]),
                         np.array([children], float), np.array([[1.0]]), np.array([[0.0]]))
    out = io.BytesIO()
    scipy.io.savemat(out, {"synsets": synsets}, format="5")
    return out.getvalue()


def devkit(ground_truth_ids: list[int], with_meta: bool = True, wnids=WNIDS, words=WORDS,
           ids=IDS) -> bytes:
    top = "ILSVRC2012_devkit_t12"
    members = [(f"{top}/COPYING", b"licence\n"),
               (f"{top}/data/ILSVRC2012_validation_ground_truth.txt",
                "".join(f"{i}\n" for i in ground_truth_ids).encode())]
    if with_meta:
        members.insert(1, (f"{top}/data/meta.mat", meta_mat(wnids, words, ids)))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in members:
            _add(tar, name, data)
    return out.getvalue()


def make_mini_imagenet(root: Path, per_class: int = 6, val_images: int = 10, size: int = 64,
                       seed: int = 0, specials: bool = True) -> MiniImageNet:
    """The three official files in `root`; train holds one CMYK JPEG, one PNG named .JPEG and
    one damaged (truncated) JPEG when `specials`."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    mini = MiniImageNet(root)
    outer = []
    for c, wnid in enumerate(WNIDS):
        inner = []
        for k in range(per_class):
            data, name = jpeg(rng, size), f"{wnid}_{1000 + 37 * k}.JPEG"
            if specials and (c, k) == (1, 0):
                data, mini.special["cmyk"] = jpeg(rng, size, mode="CMYK"), f"{wnid}/{name}"
            elif specials and (c, k) == (2, 1):
                data, mini.special["png"] = jpeg(rng, size, fmt="PNG"), f"{wnid}/{name}"
            elif specials and (c, k) == (3, 2):
                data, mini.special["damaged"] = data[:len(data) // 2], f"{wnid}/{name}"
            inner.append((name, data))
            mini.train[f"{wnid}/{name}"] = data
        outer.append((f"{wnid}.tar", _tar_bytes(inner)))
    (root / "ILSVRC2012_img_train.tar").write_bytes(_tar_bytes(outer))
    truth = [rng.randrange(len(WNIDS)) for _ in range(val_images)]
    val = []
    for i, c in enumerate(truth, 1):
        name = f"ILSVRC2012_val_{i:08d}.JPEG"
        data = jpeg(rng, size)
        val.append((name, data))
        mini.val[name], mini.val_bytes[name] = WNIDS[c], data
    (root / "ILSVRC2012_img_val.tar").write_bytes(_tar_bytes(val))
    (root / "ILSVRC2012_devkit_t12.tar.gz").write_bytes(devkit([IDS[c] for c in truth]))
    return mini


def make_kaggle(mini: MiniImageNet, root: Path) -> Path:
    """The same images in Kaggle's layout."""
    data = root / "ILSVRC" / "Data" / "CLS-LOC"
    for name, blob in mini.train.items():
        path = data / "train" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
    (data / "val").mkdir(parents=True, exist_ok=True)
    for name, blob in mini.val_bytes.items():
        (data / "val" / name).write_bytes(blob)
    (root / "LOC_synset_mapping.txt").write_text(
        "".join(f"{w} {words}\n" for w, words in sorted(zip(WNIDS, WORDS))))
    with open(root / "LOC_val_solution.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["ImageId", "PredictionString"])
        for name, wnid in sorted(mini.val.items(), reverse=True):  # not in file order
            writer.writerow([name[:-len(".JPEG")], f"{wnid} 10 12 30 31 {wnid} 1 2 20 21 "])
    return root
