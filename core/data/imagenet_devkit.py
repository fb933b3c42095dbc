"""ImageNet (ILSVRC2012) class list and val labels, from the official devkit or Kaggle's csv.

Classes are the 1,000 leaf synsets of the devkit's `data/meta.mat` (`synsets` rows with
`num_children == 0`), indexed in sorted-wnid order: the order of the ImageFolder layout and of
torchvision's ImageNet, so imported torchvision weights score correctly. Val labels come from
`data/ILSVRC2012_validation_ground_truth.txt`: one ILSVRC2012_ID per line, line i for
`ILSVRC2012_val_<i>.JPEG`, mapped ID -> wnid -> index (the IDs are not in wnid order).

Kaggle's copy (`LOC_synset_mapping.txt`: "<wnid> <words>" lines; `LOC_val_solution.csv`:
`ImageId,PredictionString` whose first token is the wnid) gives the same two things.

meta.mat is read with scipy.io.loadmat (pinned in requirements.txt): MATLAB v5 struct arrays
with mixed cell fields are a format worth not re-implementing.
"""
from __future__ import annotations

import csv
import io
import re
import tarfile
from dataclasses import dataclass, field
from typing import BinaryIO

from core.data.pipeline import DatasetError

META_MAT = "data/meta.mat"
GROUND_TRUTH = "data/ILSVRC2012_validation_ground_truth.txt"
_VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})\.JPEG$")


@dataclass(frozen=True)
class ImageNetMeta:
    """wnids (sorted, index = label), their words, and each val image's label by number."""
    wnids: tuple[str, ...]
    words: tuple[str, ...]
    val_labels: tuple[int, ...]      # val_labels[i - 1]: label of ILSVRC2012_val_<i>.JPEG
    label_of: dict = field(init=False, repr=False, compare=False)  # wnid -> label

    def __post_init__(self):
        object.__setattr__(self, "label_of", {w: i for i, w in enumerate(self.wnids)})

    def val_label(self, file_name: str, source: str) -> int:
        """Label of a val file `ILSVRC2012_val_<number>.JPEG`."""
        match = _VAL_NAME.search(file_name)
        if not match or not 1 <= int(match.group(1)) <= len(self.val_labels):
            raise DatasetError(f"{source}: {file_name} is not one of the {len(self.val_labels)} "
                               f"val images the ground truth labels; use the official val archive")
        return self.val_labels[int(match.group(1)) - 1]


def _leaf_synsets(meta_mat: bytes, where: str) -> list[tuple[int, str, str]]:
    """(ILSVRC2012_ID, wnid, words) of the leaf synsets in meta.mat."""
    import scipy.io
    try:
        synsets = scipy.io.loadmat(io.BytesIO(meta_mat), squeeze_me=True)["synsets"]
        rows = [(int(s["ILSVRC2012_ID"]), str(s["WNID"]), str(s["words"]))
                for s in synsets if int(s["num_children"]) == 0]
    except (ValueError, KeyError, TypeError, IndexError, NotImplementedError) as exc:
        raise DatasetError(f"{where}: {META_MAT} is not the devkit's synset table ({exc}); "
                           f"download ILSVRC2012_devkit_t12.tar.gz again") from None
    if not rows:
        raise DatasetError(f"{where}: {META_MAT} lists no leaf synsets; download the devkit again")
    return rows


def _meta(leaves: list[tuple[int, str, str]], id_of_val: list[int], where: str) -> ImageNetMeta:
    leaves = sorted(leaves, key=lambda row: row[1])
    wnids = tuple(row[1] for row in leaves)
    label_of_id = {row[0]: i for i, row in enumerate(leaves)}
    unknown = sorted(set(id_of_val) - set(label_of_id))
    if unknown:
        raise DatasetError(f"{where}: the val ground truth uses ILSVRC2012_ID {unknown[0]}, not a "
                           f"leaf class of meta.mat; the devkit files do not belong together")
    return ImageNetMeta(wnids, tuple(row[2] for row in leaves),
                        tuple(label_of_id[i] for i in id_of_val))


def read_devkit(stream: BinaryIO, where: str) -> ImageNetMeta:
    """Parse ILSVRC2012_devkit_t12.tar.gz (a stream); `where` names it in errors."""
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                for wanted in (META_MAT, GROUND_TRUTH):
                    if member.isfile() and member.name.endswith("/" + wanted):
                        found[wanted] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DatasetError(f"{where} is not a readable tar.gz ({exc}); download "
                           f"ILSVRC2012_devkit_t12.tar.gz again") from None
    for wanted in (META_MAT, GROUND_TRUTH):
        if wanted not in found:
            raise DatasetError(f"{where} has no ILSVRC2012_devkit_t12/{wanted}; it is not the "
                               f"ILSVRC2012 devkit: download ILSVRC2012_devkit_t12.tar.gz again")
    try:
        ids = [int(line) for line in found[GROUND_TRUTH].decode().split()]
    except ValueError:
        raise DatasetError(f"{where}: {GROUND_TRUTH} holds something other than one "
                           f"ILSVRC2012_ID per line; download the devkit again") from None
    return _meta(_leaf_synsets(found[META_MAT], where), ids, where)


def read_kaggle(mapping: bytes, solution: bytes, where: str) -> ImageNetMeta:
    """Parse Kaggle's LOC_synset_mapping.txt and LOC_val_solution.csv."""
    leaves = []
    for number, line in enumerate(mapping.decode().splitlines(), 1):
        wnid, _, words = line.strip().partition(" ")
        if not re.fullmatch(r"n\d{8}", wnid):
            raise DatasetError(f"{where}/LOC_synset_mapping.txt line {number} is not "
                               f"'<wnid> <words>'; download the Kaggle files again")
        leaves.append((number, wnid, words))
    id_of_wnid = {wnid: number for number, wnid, _ in leaves}
    by_number: dict[int, int] = {}
    for row in csv.DictReader(io.StringIO(solution.decode())):
        match = _VAL_NAME.search((row.get("ImageId") or "") + ".JPEG")
        wnid = (row.get("PredictionString") or "").split(" ")[0]
        if not match or wnid not in id_of_wnid:
            raise DatasetError(f"{where}/LOC_val_solution.csv: row {row} is not "
                               f"'ILSVRC2012_val_<n>,<wnid> ...'; download the Kaggle files again")
        by_number[int(match.group(1))] = id_of_wnid[wnid]
    if sorted(by_number) != list(range(1, len(by_number) + 1)):
        raise DatasetError(f"{where}/LOC_val_solution.csv does not label val images 1..N "
                           f"without gaps; download the Kaggle files again")
    return _meta(leaves, [by_number[i] for i in sorted(by_number)], where)
