"""The content digest stored files are checked by: packed shards against index.json,
checkpoints against their store's manifest, converted weights against their source."""
from __future__ import annotations

import hashlib
import os

BLOCK = 8 * 1024 * 1024


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()
