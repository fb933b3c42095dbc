"""core.checkpoint_store: one rule for a run directory and for a bucket prefix. The same
sequence of checkpoints gives the same manifest, the same keep-K and the same branch rule on a
local Folder and on SeaweedFS (cloud.storage.store.S3Storage)."""
from __future__ import annotations

import json
import os

import pytest

from cloud.storage.store import open_storage
from core.checkpoint import CheckpointError
from core.checkpoint_store import MANIFEST_NAME, CheckpointStore, Folder


@pytest.fixture(params=["folder", "s3"])
def objects(request, tmp_path):
    if request.param == "folder":
        return Folder(tmp_path / "run" / "checkpoints")
    server = request.getfixturevalue("s3_server")
    return open_storage(f"s3://{server.make_bucket()}/out/checkpoints", server.settings())


def local_checkpoint(folder, step, size=2000):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"mbv3-e{step // 10:04d}-s{step:08d}.ckpt"
    path.write_bytes(os.urandom(size))
    return path


def keys(store):
    return [e["key"] for e in store.entries()]


def test_keep_k_latest_and_manifest_are_the_same_on_both_backings(objects, tmp_path):
    store = CheckpointStore(objects, keep=2, name_prefix="mbv3")
    written = [local_checkpoint(tmp_path / "local", s) for s in (10, 20, 30)]
    for path in written:
        store.add(path, {"epoch": 1, "step": int(path.stem[-8:]), "kind": "step"})
    assert keys(store) == [written[2].name, written[1].name]  # newest first, K = 2
    assert not objects.exists(written[0].name)  # dropped after the manifest stopped listing it
    manifest = json.loads(objects.read_bytes(MANIFEST_NAME))
    assert manifest["key"] == written[2].name and manifest["step"] == 30
    assert manifest["meta"] == {"kind": "step"}
    assert [e["step"] for e in manifest["checkpoints"]] == [30, 20]
    assert store.latest()["sha256"] == manifest["sha256"]


def test_keep_k_never_drops_the_checkpoint_just_added(objects, tmp_path):
    store = CheckpointStore(objects, keep=1, name_prefix="mbv3")
    store.add(local_checkpoint(tmp_path / "local", 50), {"step": 50})
    older = local_checkpoint(tmp_path / "local", 40)
    store.add(older, {"step": 40})  # a guard: a resume moves later ones aside first
    assert keys(store) == [older.name]


def test_a_checkpoint_the_manifest_does_not_list_still_counts(objects, tmp_path):
    """Its writer died between the checkpoint and the manifest, or a platform uploaded the
    folder without it: known by its runner name; another prefix's or best.ckpt is not."""
    store = CheckpointStore(objects, keep=3, name_prefix="mbv3")
    store.add(local_checkpoint(tmp_path / "local", 10), {"step": 10})
    orphan = local_checkpoint(tmp_path / "local", 20)
    objects.upload_file(str(orphan), orphan.name)
    for other in ("best.ckpt", "other-e0001-s00000090.ckpt"):
        objects.write_bytes(other, b"x")
    assert store.latest()["key"] == orphan.name and store.latest()["sha256"] is None
    assert keys(store) == [orphan.name, "mbv3-e0001-s00000010.ckpt"]
    path, entry = store.newest_good(str(tmp_path / "cache"))
    assert open(path, "rb").read() == orphan.read_bytes() and entry["step"] == 20


def test_a_listed_checkpoint_that_is_gone_is_not_the_newest(objects, tmp_path):
    store = CheckpointStore(objects, keep=3, name_prefix="mbv3")
    for step in (10, 20):
        store.add(local_checkpoint(tmp_path / "local", step), {"step": step})
    objects.delete("mbv3-e0002-s00000020.ckpt")
    assert keys(store) == ["mbv3-e0001-s00000010.ckpt"]


def test_supersede_moves_the_later_branch_aside_with_its_manifest(objects, tmp_path):
    store = CheckpointStore(objects, keep=5, name_prefix="mbv3")
    for step in (10, 20, 30):
        store.add(local_checkpoint(tmp_path / "local", step), {"step": step})
    aside = store.supersede(10)
    assert aside and keys(store) == ["mbv3-e0001-s00000010.ckpt"]
    folder = aside.rstrip("/").rsplit("/", 1)[-1]
    moved = CheckpointStore(objects, f"{folder}", keep=5)
    assert keys(moved) == ["mbv3-e0003-s00000030.ckpt", "mbv3-e0002-s00000020.ckpt"]
    assert store.supersede(10) is None  # nothing later any more


def test_newest_good_skips_a_corrupt_one_and_names_it(objects, tmp_path, caplog):
    store = CheckpointStore(objects, keep=3, name_prefix="mbv3")
    for step in (10, 20):
        store.add(local_checkpoint(tmp_path / "local", step), {"step": step})
    newest = "mbv3-e0002-s00000020.ckpt"
    objects.write_bytes(newest, os.urandom(2000))  # same size, other bytes
    path, entry = store.newest_good(str(tmp_path / "cache"))
    assert entry["step"] == 10 and newest in caplog.text and "sha256" in caplog.text
    objects.write_bytes("mbv3-e0001-s00000010.ckpt", b"cut")
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        store.newest_good(str(tmp_path / "cache2"))


def test_a_manifest_that_is_not_one_is_one_error(objects):
    objects.write_bytes(MANIFEST_NAME, b"{not json")
    with pytest.raises(CheckpointError, match="is not valid .*fix or delete it"):
        CheckpointStore(objects).latest()


def test_the_store_confirms_its_owner_before_every_write(objects, tmp_path):
    confirmed = []

    class Owner:
        def confirm(self):
            confirmed.append(True)
    store = CheckpointStore(objects, keep=2, name_prefix="mbv3", owner=Owner())
    store.add(local_checkpoint(tmp_path / "local", 10), {"step": 10})
    first = len(confirmed)
    assert first >= 1  # the manifest (and on a bucket the object too)

    class Lost:
        def confirm(self):
            raise CheckpointError("lost")
    store.owner = Lost()
    with pytest.raises(CheckpointError, match="lost"):
        store.add(local_checkpoint(tmp_path / "local", 20), {"step": 20})
    # refused before the object: nothing of the lost writer's reached the store
    assert keys(CheckpointStore(objects, name_prefix="mbv3")) == ["mbv3-e0001-s00000010.ckpt"]
