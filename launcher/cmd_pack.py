"""`launcher/local.py pack`: an ImageFolder (local, s3:// or obs://) to packed MindRecord shards.

    launcher/local.py pack --src s3://bucket/imagenet --dst s3://bucket/imagenet-packed
    launcher/local.py pack --imagenet obs://bucket/ilsvrc2012 --dst obs://bucket/imagenet-packed

(--imagenet: the official archives read as streams by core.data.imagenet_pack; see
`pack_imagenet_command`.)

core.data.packing knows local folders only, so URLs end here: a remote source is staged into the
cache first (cloud.storage.sync, resumable); a remote destination is packed into the cache and then
uploaded, shards first and index.json last, so a reader never sees an index whose shards
are not all there. Re-running after an interruption resumes every step.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from launcher.cli import DEFAULT_CACHE, add_config_flags, add_debug_flag

log = logging.getLogger("launcher.pack")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("pack", help="convert an ImageFolder into MindRecord shards",
                              description=__doc__.splitlines()[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--src", help="ImageFolder root with train/ (and val/): a "
                                      "folder, s3://bucket/prefix or obs://bucket/prefix")
    source.add_argument("--imagenet", metavar="SRC",
                        help="folder or URL holding ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar "
                             "and ILSVRC2012_devkit_t12.tar.gz as downloaded (or Kaggle's "
                             "LOC_*.txt/csv and ILSVRC/): read as streams, never unpacked")
    p.add_argument("--layout", choices=("packed", "imagefolder"), default="packed",
                   help="with --imagenet: packed shards (default) or an extracted ImageFolder")
    p.add_argument("--max-image-mb", type=float, default=16,
                   help="with --imagenet: the largest image the shards hold (sets their page size)")
    p.add_argument("--dst", required=True, help="where the shards and index.json go (folder or URL)")
    p.add_argument("--shard-size-mb", type=float, default=256, help="payload per shard (MB)")
    p.add_argument("--workers", type=int, default=None, help="pack processes (default: CPUs)")
    p.add_argument("--splits", default="train,val",
                   help="split folders to pack, the first naming the classes (data.train_dir, "
                        "data.val_dir); a missing later one is skipped")
    add_config_flags(p, config_help="YAML recipe whose storage: section reaches the bucket",
                     set_help="override a storage setting", set_metavar="storage.KEY=VALUE")
    p.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help="staging cache for URLs")
    add_debug_flag(p)
    p.set_defaults(func=cmd_pack)


def _location(text: str):
    """(parsed URL, is remote); a malformed URL is a one-line StorageError."""
    from cloud.storage.errors import StorageError
    from cloud.storage.urls import parse_url
    try:
        url = parse_url(text)
    except ValueError as exc:
        raise StorageError(str(exc)) from None
    return url, url.is_remote


def cmd_pack(args) -> int:
    from cloud.job import cache_path
    from cloud.storage.store import open_storage
    from cloud.storage.sync import download_tree
    from core.config import parse_override
    from core.data.packing import pack_imagefolder
    from core.data.pipeline import DatasetError
    from launcher.common import load_job_config, setup_logging

    setup_logging()
    texts = list(args.sets) + list(getattr(args, "overrides", None) or ())  # --set or KEY=VALUE
    cfg, settings = load_job_config(args.config, dict(parse_override(t) for t in texts))
    cache = Path(args.cache_dir)
    if args.imagenet:
        return pack_imagenet_command(args, settings, cache)
    src_url, src_remote = _location(args.src)
    dst_url, dst_remote = _location(args.dst)

    src = src_url.path
    if src_remote:
        storage = open_storage(src_url, settings)
        storage.check()
        src = str(cache_path(cache, "pack-src", args.src))
        stats = download_tree(storage, "", src)
        log.info("source %s staged in %s (%s)", args.src, src, stats.summary())
    dst = str(cache_path(cache, "pack-dst", args.dst)) if dst_remote else dst_url.path

    try:
        index = pack_imagefolder(src, dst, args.shard_size_mb, args.workers,
                                 splits=[s for s in args.splits.split(",") if s],
                                 max_pixels=cfg.data.max_image_pixels)
    except DatasetError as exc:
        if not src_remote:
            raise
        raise DatasetError(f"{exc} (staged from {args.src})") from None
    if dst_remote:
        publish_packed(dst, open_storage(dst_url, settings), cache)

    _print_index(index)
    print(f"packed dataset: {args.dst}")
    staged = [path for path, remote in ((src, src_remote), (dst, dst_remote)) if remote]
    if staged:
        print(f"local copies (kept so a re-run resumes; delete when done): {', '.join(staged)}")
    return 0


def pack_imagenet_command(args, settings, cache: Path) -> int:
    """`pack --imagenet SRC`: a local source is read in place, a remote one streamed (ranged
    GETs, cloud.storage.stream); a remote destination is packed in the cache, then published."""
    from cloud.storage.errors import StorageError
    from cloud.job import cache_path
    from cloud.storage.store import open_storage
    from cloud.storage.stream import StorageFiles
    from cloud.storage.sync import upload_tree
    from core.data.imagenet_archives import LocalFiles
    from core.data.imagenet_pack import damaged_images, pack_imagenet

    src_url, src_remote = _location(args.imagenet)
    dst_url, dst_remote = _location(args.dst)
    if src_remote:
        storage = open_storage(src_url, settings)
        storage.check()
        files = StorageFiles(storage)
    elif os.path.isdir(src_url.path):
        files = LocalFiles(src_url.path)
    else:
        raise StorageError(f"--imagenet {args.imagenet}: no such folder; give the folder that "
                           f"holds the downloaded ILSVRC2012 archives")
    dst = str(cache_path(cache, "pack-dst", args.dst)) if dst_remote else dst_url.path
    result = pack_imagenet(files, dst, args.layout, args.shard_size_mb, args.max_image_mb,
                           args.workers)
    if args.layout == "imagefolder":
        if dst_remote:
            stats = upload_tree(dst, open_storage(dst_url, settings), "")
            log.info("ImageFolder uploaded to %s (%s)", args.dst, stats.summary())
        damaged = result["damaged"]
        for split, count in result["splits"].items():
            print(f"{split}: {count} images")
    else:
        if dst_remote:
            publish_packed(dst, open_storage(dst_url, settings), cache)
        damaged = damaged_images(result)
        _print_index(result)
    if damaged:
        print(f"{len(damaged)} damaged image(s) kept out of training: {', '.join(damaged[:20])}"
              f"{' ...' if len(damaged) > 20 else ''}")
    print(f"{'packed dataset' if args.layout == 'packed' else 'ImageFolder'}: {args.dst}")
    if dst_remote:
        print(f"local copy (kept so a re-run resumes; delete when done): {dst}")
    return 0


def _print_index(index: dict) -> None:
    for split, entry in index["splits"].items():
        size = sum(f["size"] for shard in entry["shards"] for f in shard["files"])
        print(f"{split}: {entry['samples']} samples in {len(entry['shards'])} shards "
              f"({size / 2 ** 20:.1f} MB)")


def publish_packed(local: str, storage, cache: Path) -> None:
    """Upload a finished pack: first drop the remote index (the old shards and the new ones
    must never be read under one index), then the shards, then index.json; finally remove
    shards of an earlier pack that this index does not list."""
    from cloud.storage.sync import upload_tree
    from core.data.packed import INDEX_NAME, read_index

    index = read_index(local)
    names = [f["name"] for entry in index["splits"].values()
             for shard in entry["shards"] for f in shard["files"]]
    storage.delete(INDEX_NAME)
    # upload_tree sends a whole folder: give it one that holds just the shards (links).
    view = cache / "pack-upload" / Path(local).name
    shutil.rmtree(view, ignore_errors=True)
    view.mkdir(parents=True)
    try:
        for name in names:
            os.symlink(os.path.join(local, name), view / name)
        stats = upload_tree(str(view), storage, "")
        log.info("shards uploaded to %s (%s)", storage.describe(), stats.summary())
    finally:
        shutil.rmtree(view, ignore_errors=True)
    stale = re.compile(rf"^({'|'.join(map(re.escape, index['splits']))})-\d{{5}}\.mindrecord")
    keep = set(names)
    for info in list(storage.list("")):
        if "/" not in info.key and stale.match(info.key) and info.key not in keep:
            log.info("removing %s (a shard of an earlier pack)", storage.describe(info.key))
            storage.delete(info.key)
    with open(os.path.join(local, INDEX_NAME), "rb") as fh:
        storage.write_bytes(INDEX_NAME, fh.read())
    log.info("index written: %s", storage.describe(INDEX_NAME))
