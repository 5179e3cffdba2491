"""Helpers for tests: build layer tarballs and whole images in a store, without a registry."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import time
from dataclasses import dataclass, field

import zstandard

from ocid.storage.digest import chain_ids, sha256_digest
from ocid.storage.store import ImageRecord, ImageStore, LayerInfo

LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
_KINDS = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
          "hardlink": tarfile.LNKTYPE, "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE,
          "fifo": tarfile.FIFOTYPE}


@dataclass
class Entry:
    """One member of a test layer."""

    name: str
    kind: str = "file"  # file, dir, symlink, hardlink, char, block, fifo
    data: bytes = b""
    target: str = ""  # of a symlink or hard link
    mode: int | None = None  # 0o644 for files, 0o755 for directories
    uid: int = 0
    gid: int = 0
    mtime: float = 1_600_000_000
    xattrs: dict[str, bytes] = field(default_factory=dict)
    major: int = 0
    minor: int = 0


def make_tar(entries: list[Entry]) -> bytes:
    """An uncompressed PAX tar of ``entries``, in order."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = _KINDS[e.kind]
            info.mode = e.mode if e.mode is not None else (0o755 if e.kind == "dir" else 0o644)
            info.uid, info.gid, info.mtime = e.uid, e.gid, e.mtime
            info.linkname = e.target
            info.devmajor, info.devminor = e.major, e.minor
            info.pax_headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
                                for k, v in e.xattrs.items()}
            if e.kind == "file":
                info.size = len(e.data)
                tf.addfile(info, io.BytesIO(e.data))
            else:
                tf.addfile(info)
    return out.getvalue()


def compress(data: bytes, compression: str) -> bytes:
    """``data`` compressed with "gzip", "zstd" or "none"."""
    if compression == "gzip":
        return gzip.compress(data, compresslevel=1, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=1).compress(data)
    return data


def make_layer(entries: list[Entry], compression: str = "gzip") -> tuple[bytes, LayerInfo]:
    """A layer blob and its LayerInfo (chain_id set as if it were a bottom layer)."""
    tar = make_tar(entries)
    blob = compress(tar, compression)
    media = {"gzip": LAYER_GZIP, "zstd": LAYER_ZSTD}.get(compression, LAYER_TAR)
    diff_id = sha256_digest(tar)
    return blob, LayerInfo(digest=sha256_digest(blob), diff_id=diff_id, media_type=media,
                           size=len(blob), chain_id=diff_id)


def add_image(store: ImageStore, layers: list[list[Entry]], names: list[str] | None = None,
              compression: str = "gzip", label: str = "") -> ImageRecord:
    """Build, apply and store an image of ``layers`` (lists of entries); returns its record."""
    blobs, infos = [], []
    for entries in layers:
        blob, info = make_layer(entries, compression)
        blobs.append(blob)
        infos.append(info)
    for info, chain in zip(infos, chain_ids([i.diff_id for i in infos]), strict=True):
        info.chain_id = chain
    parent: str | None = None
    applied = []
    for blob, info in zip(blobs, infos, strict=True):
        store.put_blob_bytes(blob, info.digest)
        applied.append(store.apply_layer(info, parent))
        parent = info.chain_id
    manifest_type, created = "application/vnd.oci.image.manifest.v1+json", "2024-01-01T00:00:00Z"
    config = {"architecture": "amd64", "os": "linux", "created": created,
              "config": {"Labels": {"test": label}} if label else {},
              "rootfs": {"type": "layers", "diff_ids": [i.diff_id for i in infos]}}
    config_raw = json.dumps(config, sort_keys=True).encode()
    config_digest = store.put_blob_bytes(config_raw)
    manifest = {"schemaVersion": 2, "mediaType": manifest_type,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": config_digest, "size": len(config_raw)},
                "layers": [{"mediaType": i.media_type, "digest": i.digest, "size": i.size}
                           for i in infos]}
    manifest_digest = store.put_blob_bytes(json.dumps(manifest, sort_keys=True).encode())
    return store.put_image(ImageRecord(
        id=config_digest, names=list(names or []), digests=[], manifest_digest=manifest_digest,
        manifest_media_type=manifest_type, config=config, layers=applied,
        size=sum(i.unpacked_size for i in applied), created=created, added=time.time(),
        top_layer=applied[-1].chain_id if applied else None))
