"""Which checkpoints a run has, which is newest, keep K, move the later ones aside: one rule,
written once, for the run directory and for a bucket prefix.

A store is a place of objects (`Objects`: the run directory's `checkpoints/` folder is a
`Folder`; cloud.storage.store.Storage gives an s3:// or obs:// prefix the same methods) and
a manifest beside the checkpoints::

    <checkpoint file name>        one object per checkpoint
    latest.json                   the manifest, always written after its checkpoint
    superseded-<S>-<UTC time>/    the checkpoints after step S, moved aside when a run
                                  continued from S (with the manifest they had)

The manifest (format 1)::

    {"format": 1, "key": "mobilenetv3-e0003-s00000300.ckpt", "epoch": 3, "step": 300,
     "size": 123, "sha256": "...", "time": "2026-11-27T20:39:41Z", "meta": {"kind": "epoch"},
     "checkpoints": [ {the same fields for each kept checkpoint}, ... ]}   newest first

Keys are relative to the store's prefix, so a prefix can be copied or moved. A checkpoint file
the manifest does not list (its writer died between the two writes; a folder the platform
uploaded without its manifest) still counts, known by its runner name
(`<prefix>-e<epoch>-s<step>.ckpt`). Newest means the highest step, then the latest written. An
old object is deleted only after the manifest stopped listing it, and a store with an `owner`
(core.ownership: the run lock, the output URL's lease) confirms it before every write.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple, Optional, Protocol

from core.checkpoint import RUNNER_NAME, CheckpointError, step_of_name
from core.digest import sha256_file

log = logging.getLogger("core.checkpoint_store")

MANIFEST_NAME = "latest.json"
MANIFEST_FORMAT = 1
ENTRY_FIELDS = ("key", "epoch", "step", "size", "sha256", "time")
SUPERSEDED = "superseded-"


class Listed(NamedTuple):
    key: str
    size: int
    mtime: float


class Objects(Protocol):
    """What a checkpoint store needs of the place that holds it. Keys are relative, with "/"."""

    def list(self, prefix: str = "") -> Iterable: ...          # items with .key, .size, .mtime
    def exists(self, key: str) -> bool: ...
    def read_bytes(self, key: str) -> bytes: ...
    def write_bytes(self, key: str, data: bytes) -> None: ...  # atomic
    def upload_file(self, local_path: str, key: str) -> None: ...
    def download_file(self, key: str, local_path: str) -> None: ...
    def copy(self, src: str, dst: str) -> None: ...
    def delete(self, key: str) -> None: ...                    # a missing key is no error
    def describe(self, key: str = "") -> str: ...
    def local_file(self, key: str) -> Optional[str]: ...       # the object as a local file, if it is one


class Folder:
    """A local directory as `Objects` (the run directory's checkpoints/)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*key.split("/"))

    def list(self, prefix: str = "") -> Iterator[Listed]:
        top = self._path(prefix) if prefix else self.root
        if not top.is_dir():
            return
        for path in sorted(top.rglob("*")):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            if path.is_file():
                yield Listed(path.relative_to(self.root).as_posix(), st.st_size, st.st_mtime)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def read_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def upload_file(self, local_path: str, key: str) -> None:
        self._copy_file(Path(local_path), self._path(key))

    def download_file(self, key: str, local_path: str) -> None:
        self._copy_file(self._path(key), Path(local_path))

    def copy(self, src: str, dst: str) -> None:
        """A hard link where the filesystem allows (a move is then copy + delete at no cost)."""
        target = self._path(dst)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(self._path(src), target)
        except OSError:
            self._copy_file(self._path(src), target)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def describe(self, key: str = "") -> str:
        return str(self._path(key)) if key else str(self.root)

    def local_file(self, key: str) -> Optional[str]:
        return str(self._path(key))

    @staticmethod
    def _copy_file(src: Path, dst: Path) -> None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class CheckpointStore:
    """The checkpoints of one run at one place. `name_prefix`: only checkpoints of that
    checkpoint.prefix count (None: every `.ckpt` but best.ckpt, for a folder a user names);
    `owner`: confirmed before every write (core.ownership)."""

    def __init__(self, objects: Objects, prefix: str = "", keep: int = 5,
                 name_prefix: Optional[str] = None, owner: Any = None):
        if keep < 1:
            raise CheckpointError("checkpoint.keep must be at least 1 (the manifest needs its "
                                  "checkpoint)")
        self.objects = objects
        self.prefix = prefix.strip("/")
        self.keep = keep
        self.name_prefix = name_prefix
        self.owner = owner

    def key(self, name: str) -> str:
        return _join(self.prefix, name)

    def describe(self, name: str = "") -> str:
        return self.objects.describe(self.key(name) if name else self.prefix)

    # -- reading

    def manifest(self) -> Optional[dict]:
        """The manifest, None if there is none; CheckpointError if it is not one."""
        key = self.key(MANIFEST_NAME)
        if not self.objects.exists(key):
            return None
        try:
            manifest = json.loads(self.objects.read_bytes(key))
            if not isinstance(manifest, dict) or "key" not in manifest:
                raise ValueError("no 'key' field")
        except ValueError as exc:
            raise CheckpointError(f"checkpoint manifest {self.objects.describe(key)} is not valid "
                                  f"({exc}): fix or delete it, or resume from an explicit "
                                  f"checkpoint") from None
        return manifest

    def entries(self) -> list[dict]:
        """The live branch's checkpoints, newest first: what the manifest lists that is there,
        and the checkpoint files it does not list."""
        present = self._present()
        manifest = self.manifest()
        listed = (manifest or {}).get("checkpoints") or ([_entry(manifest)] if manifest else [])
        found = {str(e.get("key")): dict(e) for e in listed
                 if isinstance(e, dict) and str(e.get("key")) in present}
        for name, item in present.items():
            if name not in found and self._counts(name):
                found[name] = {"key": name, "epoch": None, "step": step_of_name(name),
                               "size": item.size, "sha256": None, "time": None}
        order = {name: (_step(e), present[name].mtime) for name, e in found.items()}
        return sorted(found.values(), key=lambda e: order[e["key"]], reverse=True)

    def latest(self) -> Optional[dict]:
        entries = self.entries()
        return entries[0] if entries else None

    def fetch(self, entry: Mapping, cache_dir: str | os.PathLike = "") -> str:
        """A local path of `entry`: the file itself in a folder, else a download into
        `cache_dir` (a verified copy already there is reused). Size and sha256 are checked
        where the manifest recorded them; CheckpointError names a bad one."""
        key = self.key(str(entry["key"]))
        in_place = self.objects.local_file(key)
        local = in_place or os.path.join(cache_dir, os.path.basename(key))
        if in_place is None:
            if os.path.exists(local) and _mismatch(local, entry) is None:
                log.info("using cached checkpoint %s (verified)", local)
                return local
            os.makedirs(cache_dir, exist_ok=True)
            self.objects.download_file(key, local)
        problem = _mismatch(local, entry) if os.path.exists(local) else "it does not exist"
        if problem:
            if in_place is None:  # a bad download: not kept in the cache
                os.remove(local)
            raise CheckpointError(f"checkpoint {self.objects.describe(key)} is corrupt: {problem}")
        return local

    def newest_good(self, cache_dir: str | os.PathLike = "",
                    check: Optional[Callable[[str], Any]] = None) -> Optional[tuple[str, dict]]:
        """(local path, entry) of the newest checkpoint that fetches (and passes `check`, e.g.
        core.checkpoint.load's CRC), trying older ones past a bad one with a warning naming it;
        None when the store holds none; CheckpointError when none of them is good."""
        entries = self.entries()
        problems = []
        for entry in entries:
            try:
                path = self.fetch(entry, cache_dir)
                if check is not None:
                    check(path)
            except Exception as exc:  # a store error, a corrupt or vanished file: try the older
                problems.append(str(exc))
                log.warning("skipping checkpoint: %s; trying the previous one", exc)
                continue
            if entry is not entries[0]:
                log.warning("resuming from an older checkpoint %s (step %s): the newer ones are bad",
                            self.describe(entry["key"]), entry.get("step"))
            return path, entry
        if entries:
            raise CheckpointError(f"no usable checkpoint in {self.describe()}: " + "; ".join(problems)
                                  + " (move them away to start afresh)")
        return None

    # -- writing

    def add(self, local_path: str | os.PathLike, meta: Mapping[str, Any],
            name: Optional[str] = None, entry: Optional[Mapping] = None) -> dict:
        """Record a checkpoint (`meta`: its epoch and step; other fields, e.g. kind, go into the
        manifest's "meta" while it is the newest) (put first unless it is already the store's file), then the
        manifest, then delete what keep-K dropped: the K newest stay, and never the one just
        added. `entry`: its size and sha256 when the caller has them (a mirror of another
        store). Returns the entry."""
        name = name or os.path.basename(local_path)
        key = self.key(name)
        entry = dict(entry or {}, key=name, epoch=meta.get("epoch"), step=meta.get("step"),
                     time=_now())
        if not entry.get("sha256"):
            entry.update(size=os.path.getsize(local_path), sha256=sha256_file(local_path))
        local = self.objects.local_file(key)
        if local is None or os.path.realpath(local) != os.path.realpath(local_path):
            self._confirm()
            self.objects.upload_file(str(local_path), key)
        ranked = [e for e in self.entries() if e["key"] != name]
        ranked = sorted([entry, *ranked], key=_step, reverse=True)  # stable: new first on ties
        kept = ranked[:self.keep] if entry in ranked[:self.keep] else [entry, *ranked[:self.keep - 1]]
        extra = {k: v for k, v in meta.items() if k not in ENTRY_FIELDS}
        self._write_manifest(kept, extra if kept[0] is entry else None)
        for old in ranked:
            if old not in kept:
                self.objects.delete(self.key(old["key"]))
        return entry

    def supersede(self, step: int) -> Optional[str]:
        """The branch rule: continuing from step `step` moves the checkpoints after it under
        `superseded-<step>-<UTC time>/` (kept, named in one log line), so keep-K and
        `latest()` see only the live branch. Order: copy, manifests, delete, so a reader never
        sees a manifest naming a missing object. Returns the folder, or None."""
        entries = self.entries()
        later = [e for e in entries if _step(e) > step]
        if not later:
            return None
        self._confirm()
        aside = f"{SUPERSEDED}{step}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        for e in later:
            self.objects.copy(self.key(e["key"]), self.key(f"{aside}/{e['key']}"))
        self.objects.write_bytes(self.key(f"{aside}/{MANIFEST_NAME}"),
                                 json.dumps(_manifest(later), indent=1, default=str).encode())
        kept = [e for e in entries if e not in later]
        if kept:
            self._write_manifest(kept, (self.manifest() or {}).get("meta"))
        else:
            self.objects.delete(self.key(MANIFEST_NAME))
        for e in later:
            self.objects.delete(self.key(e["key"]))
        log.warning("continuing from step %d: moved %d later checkpoint(s) of the earlier branch "
                    "(up to step %s) to %s", step, len(later), later[0].get("step"),
                    self.describe(aside))
        return self.objects.describe(self.key(aside))

    # -- internals

    def _present(self) -> dict:
        """name -> listed object, for the objects directly under the prefix."""
        start = len(self.prefix) + 1 if self.prefix else 0
        found = {}
        for item in self.objects.list(self.prefix):
            name = item.key[start:]
            if "/" not in name:
                found[name] = item
        return found

    def _counts(self, name: str) -> bool:
        """A checkpoint file of this run that the manifest does not list."""
        if not name.endswith(".ckpt") or name == "best.ckpt" or ".tmp." in name or name.startswith("."):
            return False
        if self.name_prefix is None:
            return True
        m = RUNNER_NAME.match(name)
        return bool(m) and m.group("prefix") == self.name_prefix

    def _confirm(self) -> None:
        if self.owner is not None:
            self.owner.confirm()

    def _write_manifest(self, kept: list[dict], extra: Optional[Mapping]) -> None:
        self._confirm()
        manifest = _manifest(kept, extra)
        self.objects.write_bytes(self.key(MANIFEST_NAME),
                                 json.dumps(manifest, indent=1, default=str).encode())


def _manifest(entries: list[dict], extra: Optional[Mapping] = None) -> dict:
    newest = entries[0]
    return {"format": MANIFEST_FORMAT, **{f: newest.get(f) for f in ENTRY_FIELDS},
            "meta": dict(extra or {}), "checkpoints": [{f: e.get(f) for f in ENTRY_FIELDS}
                                                       for e in entries]}


def _entry(manifest: Mapping) -> dict:
    return {f: manifest.get(f) for f in ENTRY_FIELDS}


def _step(entry: Mapping) -> int:
    step = entry.get("step")
    return step if isinstance(step, int) else step_of_name(str(entry.get("key")))


def _mismatch(path: str, entry: Mapping) -> Optional[str]:
    """None if `path` matches the entry's size and sha256 (where recorded), else why not."""
    size = os.path.getsize(path)
    if entry.get("size") is not None and size != int(entry["size"]):
        return f"size {size} != manifest size {entry['size']}"
    if entry.get("sha256"):
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            return f"sha256 {digest[:12]}... != manifest {str(entry['sha256'])[:12]}..."
    return None


def run_checkpoints(run_dir: str | os.PathLike, checkpoint_cfg, owner: Any = None) -> CheckpointStore:
    """The store of a run directory's periodic checkpoints (`<run dir>/checkpoints/`)."""
    return CheckpointStore(Folder(Path(run_dir) / "checkpoints"), "", checkpoint_cfg.keep,
                           checkpoint_cfg.prefix, owner)
