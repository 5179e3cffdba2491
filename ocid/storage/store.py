"""The image store: blobs, layers unpacked once per chain ID, image records, container file systems.

ocid (multi-threaded) and kpod (another process) may use one store at the same time: metadata
lives in SQLite (``db.py``: WAL, busy timeout, a transaction per change), files are written to a
temporary name and renamed into place, and flock files (``lock.py``) order the rest.

On disk, under ``root`` (mode 0700)::

    storage.db                       metadata: layers, images, names, repo digests, containers
    blobs/sha256/<hex>               content-addressed blobs (manifests, configs, layer blobs)
    tmp/<hex>-<random>.partial       a blob being received (flock'ed while written)
    overlay/<chain hex>/diff         one unpacked layer, whiteouts in overlay form
    overlay/<chain hex>/link         its short link name <ID>
    overlay/l/<ID> -> ../<chain hex>/diff   short lowerdir names (see overlay.py)
    overlay/.tmp-<chain hex>-<rand>  a layer being unpacked, or being deleted
    overlay-containers/<id>/{upper,work,merged}   a container's writable layer and mount point
    locks/layer-<chain hex>.lock     exclusive while that layer is unpacked
    locks/layer-<chain hex>.pin      shared by every process that applied or looked up the
                                     layer for an image not yet stored; the remover needs it
                                     exclusively, so it never deletes a layer a pull relies on
    locks/container-<id>.lock        mount, unmount and removal of one container

Crash safety: a layer directory is renamed into place only once complete and verified, and its
row is written after; a directory without a row (or a row without a directory) is discarded and
redone by the next ``apply_layer``, and stale temporary files are removed at start-up.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import errno
import json
import logging
import os
import re
import shutil
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ocid.errors import AlreadyExists, FailedPrecondition, InternalError, InvalidArgument, NotFound
from ocid.storage.db import Database
from ocid.storage.digest import (DigestMismatch, chain_id, chain_ids, new_hash, sha256_digest,
                                 split_digest)
from ocid.storage.lock import FileLock
from ocid.storage.overlay import mount_overlay, new_link_id, unmount

__all__ = ["ContainerRecord", "DigestMismatch", "ImageRecord", "ImageStore", "LayerInfo",
           "chain_ids"]

log = logging.getLogger(__name__)

# 64 KiB: 1 MiB buffers churn glibc's heap (page faults, and megabytes left in per-thread
# arenas after a pull); unpacking a 96 MB layer went from 0.58 s to 0.33 s.
CHUNK = 64 * 1024
PIN_TTL = 3600.0  # a pull that never stores its image stops protecting its layers after this
_IMAGE_ID_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_HEX_PREFIX_RE = re.compile(r"^(?:sha256:)?([0-9a-f]{3,64})$")
_CONTAINER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_LINK_RE = re.compile(r"^[A-Z2-7]{26}$")


@dataclass
class LayerInfo:
    """One layer of an image, bottom first."""

    digest: str  # blob digest of the (possibly compressed) layer, as in the manifest
    diff_id: str  # digest of the uncompressed tar
    media_type: str
    size: int  # compressed (blob) size
    chain_id: str  # OCI chain ID
    unpacked_size: int = 0  # bytes of the uncompressed tar


@dataclass
class ImageRecord:
    """An image in the store; ``id`` (the config digest) is the image ID everywhere."""

    id: str
    names: list[str]
    digests: list[str]
    manifest_digest: str
    manifest_media_type: str
    config: dict
    layers: list[LayerInfo]
    size: int
    created: str
    added: float
    top_layer: str | None


@dataclass
class ContainerRecord:
    """A container's root file system: an overlay of its image's layers and its own upper dir."""

    id: str
    name: str
    image_id: str
    created: float


@dataclass
class _Pin:
    lock: FileLock
    count: int
    touched: float = field(default_factory=time.monotonic)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _syncfs(path: str) -> None:
    """Flush the file system holding ``path`` (one call, rather than an fsync per file)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


_DELETED = ".deleted"  # suffix, in tmp/, of a removed container's files not yet deleted


def _rmtree(path: str) -> None:
    """Remove a tree that may or may not exist."""
    if os.path.lexists(path):
        shutil.rmtree(path)


class ImageStore:
    """Blobs, layers, images and container root file systems under one root directory."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.blobs_dir = os.path.join(self.root, "blobs")
        self.tmp_dir = os.path.join(self.root, "tmp")
        self.overlay_dir = os.path.join(self.root, "overlay")
        self.containers_dir = os.path.join(self.root, "overlay-containers")
        self.locks_dir = os.path.join(self.root, "locks")
        try:
            os.makedirs(self.root, mode=0o700, exist_ok=True)
            for path in (os.path.join(self.blobs_dir, "sha256"),
                         os.path.join(self.blobs_dir, "sha512"), self.tmp_dir,
                         os.path.join(self.overlay_dir, "l"), self.containers_dir, self.locks_dir):
                os.makedirs(path, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise InternalError(
                f"cannot create image storage at {self.root}: {exc.strerror}") from exc
        self._db = Database(os.path.join(self.root, "storage.db"))
        self._pins: dict[str, _Pin] = {}
        self._pins_mutex = threading.Lock()
        self._cleanup()

    def close(self) -> None:
        """Release this object's layer pins and database connections."""
        with self._pins_mutex:
            pins, self._pins = self._pins, {}
        for pin in pins.values():
            pin.lock.release()
        self._db.close()

    # --- blobs ----------------------------------------------------------------------------

    def blob_path(self, digest: str) -> str:
        """The path a blob has (or would have) in the store."""
        algorithm, hexpart = split_digest(digest)
        return os.path.join(self.blobs_dir, algorithm, hexpart)

    def has_blob(self, digest: str) -> bool:
        """Whether the blob is in the store."""
        return os.path.exists(self.blob_path(digest))

    def ingest_blob(self, chunks: Iterable[bytes], digest: str, size: int | None = None,
                    progress: Callable[[int], None] | None = None) -> str:
        """Stream a blob into the store, verifying its size and digest; returns its path."""
        path = self.blob_path(digest)
        if os.path.exists(path):
            return path
        hasher = new_hash(digest)
        received = 0
        tmp_lock, tmp = self._new_partial(digest)
        in_source = False  # errors of the caller's iterable pass through untranslated
        try:
            with open(tmp, "wb", buffering=CHUNK) as out:
                source = iter(chunks)
                while True:
                    in_source = True
                    chunk = next(source, None)
                    in_source = False
                    if chunk is None:
                        break
                    received += len(chunk)
                    if size is not None and received > size:
                        raise InvalidArgument(f"blob {digest}: more data than its size {size}")
                    hasher.update(chunk)
                    out.write(chunk)
                    if progress is not None:
                        progress(len(chunk))
                out.flush()
                os.fsync(out.fileno())
            if size is not None and received != size:
                raise InvalidArgument(f"blob {digest}: got {received} bytes, expected {size}")
            actual = f"{digest.split(':', 1)[0]}:{hasher.hexdigest()}"
            if actual != digest:
                raise DigestMismatch(f"blob {digest}", digest, actual)
            os.rename(tmp, path)  # atomic; a concurrent writer of this blob wrote the same bytes
            _fsync_dir(os.path.dirname(path))
        except OSError as exc:
            if in_source:
                raise
            raise InternalError(f"cannot store blob {digest}: {exc.strerror}") from exc
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)
            tmp_lock.release()
        return path

    def _new_partial(self, digest: str) -> tuple[FileLock, str]:
        """A locked, unique temporary file name for a blob download."""
        name = f"{split_digest(digest)[1][:16]}-{os.urandom(6).hex()}.partial"
        tmp = os.path.join(self.tmp_dir, name)
        lock = FileLock(tmp)
        lock.acquire()  # marks it live, so that start-up cleanup leaves it alone
        return lock, tmp

    def put_blob_bytes(self, data: bytes, digest: str | None = None) -> str:
        """Store a small blob (manifest, config); returns its digest."""
        digest = digest or sha256_digest(data)
        self.ingest_blob([data], digest, len(data))
        return digest

    def read_blob(self, digest: str) -> bytes:
        """The content of a blob."""
        path = self.blob_path(digest)
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError as exc:
            raise NotFound(f"blob {digest} is not in the store") from exc
        except OSError as exc:
            raise InternalError(f"cannot read blob {digest}: {exc.strerror}") from exc

    # --- layers ---------------------------------------------------------------------------

    def _layer_dir(self, chain: str) -> str:
        return os.path.join(self.overlay_dir, split_digest(chain)[1])

    def _lock(self, kind: str, key: str, *, shared: bool = False) -> FileLock:
        return FileLock(os.path.join(self.locks_dir, f"{kind}-{key}"), shared=shared)

    def has_layer(self, chain_id: str) -> bool:
        """Whether the layer with this chain ID is unpacked and recorded."""
        with self._db.read() as conn:
            row = conn.execute("SELECT 1 FROM layers WHERE chain_id = ?", (chain_id,)).fetchone()
        return row is not None and os.path.isdir(os.path.join(self._layer_dir(chain_id), "diff"))

    def layer_info(self, chain_id: str, layer: LayerInfo | None = None) -> LayerInfo:
        """The stored layer (or ``layer`` with unpacked_size filled); pins it until put_image."""
        self._pin(chain_id)
        try:
            with self._db.read() as conn:
                row = conn.execute("SELECT digest, diff_id, media_type, size, unpacked_size "
                                   "FROM layers WHERE chain_id = ?", (chain_id,)).fetchone()
            if row is None:
                raise NotFound(f"layer {chain_id} is not in the store")
        except BaseException:
            self._unpin([chain_id])
            raise
        if layer is not None:
            return dataclasses.replace(layer, unpacked_size=row[4])
        return LayerInfo(digest=row[0], diff_id=row[1], media_type=row[2], size=row[3],
                         chain_id=chain_id, unpacked_size=row[4])

    def apply_layer(self, layer: LayerInfo, parent_chain_id: str | None) -> LayerInfo:
        """Unpack a layer blob once per chain ID (idempotent, safe across processes)."""
        for value in (layer.digest, layer.diff_id, layer.chain_id):
            split_digest(value)
        expected = chain_id(parent_chain_id, layer.diff_id)
        if layer.chain_id != expected:
            raise InvalidArgument(f"layer {layer.digest}: chain ID {layer.chain_id} does not match "
                                  f"its parent and diff ID (expected {expected})")
        # Pin first (shared): a remover holds the pin exclusively while it deletes the layer.
        self._pin(layer.chain_id)
        try:
            with self._lock("layer", f"{split_digest(layer.chain_id)[1]}.lock"):
                return self._apply_locked(layer, parent_chain_id)
        except BaseException:
            self._unpin([layer.chain_id])
            raise

    def _apply_locked(self, layer: LayerInfo, parent: str | None) -> LayerInfo:
        what = f"layer {layer.digest} (chain {layer.chain_id})"
        final = self._layer_dir(layer.chain_id)
        with self._db.read() as conn:
            row = conn.execute("SELECT unpacked_size, link FROM layers WHERE chain_id = ?",
                               (layer.chain_id,)).fetchone()
            has_parent = parent is None or conn.execute(
                "SELECT 1 FROM layers WHERE chain_id = ?", (parent,)).fetchone() is not None
        if row is not None and os.path.isdir(os.path.join(final, "diff")):
            return dataclasses.replace(layer, unpacked_size=row[0])  # done, maybe by another
        if not has_parent:
            raise FailedPrecondition(f"{what}: parent layer {parent} is not applied")
        blob = self.blob_path(layer.digest)
        if not os.path.exists(blob):
            raise NotFound(f"{what}: blob {layer.digest} is not in the store")
        hexpart = split_digest(layer.chain_id)[1]
        tmp = os.path.join(self.overlay_dir, f".tmp-{hexpart}-{os.urandom(6).hex()}")
        link = new_link_id()
        placed = False
        try:
            # Leftovers of a crash (directory without row, row without directory) are redone.
            self._discard_layer_files(hexpart, row[1] if row else None)
            os.mkdir(tmp, 0o700)
            os.mkdir(os.path.join(tmp, "diff"))
            # Imported here, at the first layer: tarfile and zstandard wait for a pull.
            from ocid.storage.unpack import unpack_layer

            size = unpack_layer(blob, os.path.join(tmp, "diff"), layer.diff_id, what)
            with open(os.path.join(tmp, "link"), "w") as f:
                f.write(link)
            _syncfs(tmp)  # the contents must be on disk before a row says the layer exists
            os.rename(tmp, final)
            placed = True
            os.symlink(f"../{hexpart}/diff", os.path.join(self.overlay_dir, "l", link))
            _fsync_dir(self.overlay_dir)
            with self._db.write() as conn:
                if parent is not None and conn.execute("SELECT 1 FROM layers WHERE chain_id = ?",
                                                       (parent,)).fetchone() is None:
                    raise FailedPrecondition(f"{what}: parent layer {parent} was removed")
                conn.execute(
                    "INSERT INTO layers (chain_id, parent, diff_id, digest, media_type, size, "
                    "unpacked_size, link, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (chain_id) DO UPDATE SET unpacked_size = excluded.unpacked_size, "
                    "link = excluded.link",
                    (layer.chain_id, parent, layer.diff_id, layer.digest, layer.media_type,
                     layer.size, size, link, time.time()))
        except BaseException as exc:
            try:
                _rmtree(tmp)
                if placed:
                    self._discard_layer_files(hexpart, link)
            except OSError:
                log.exception("%s: cannot clean up after a failed apply", what)
            if isinstance(exc, OSError):
                raise InternalError(f"cannot apply {what}: {exc.strerror}") from exc
            raise
        log.debug("applied %s (%d bytes)", what, size)
        return dataclasses.replace(layer, unpacked_size=size)

    def _discard_layer_files(self, hexpart: str, link: str | None) -> None:
        """Delete a layer's directory, link and temporary directories (caller holds its locks)."""
        final = os.path.join(self.overlay_dir, hexpart)
        links = {link} if link else set()
        try:
            with open(os.path.join(final, "link")) as f:
                links.add(f.read().strip())
        except OSError:
            pass
        for name in links:
            if _LINK_RE.match(name):
                try:
                    os.unlink(os.path.join(self.overlay_dir, "l", name))
                except FileNotFoundError:
                    pass
        if os.path.lexists(final):
            doomed = os.path.join(self.overlay_dir, f".tmp-{hexpart}-{os.urandom(6).hex()}")
            os.rename(final, doomed)  # disappears at once; the slow delete comes after
        for entry in os.listdir(self.overlay_dir):
            if entry.startswith(f".tmp-{hexpart}-"):
                _rmtree(os.path.join(self.overlay_dir, entry))

    def _pin(self, chain: str) -> None:
        """Hold a shared pin on a layer until an image references it (or PIN_TTL passes)."""
        now = time.monotonic()
        self._expire_pins()
        with self._pins_mutex:
            pin = self._pins.get(chain)
            if pin is not None:
                pin.count += 1
                pin.touched = now
                return
        lock = self._lock("layer", f"{split_digest(chain)[1]}.pin", shared=True)
        lock.acquire()  # outside the mutex: it waits while a remover deletes this layer
        with self._pins_mutex:
            pin = self._pins.get(chain)
            if pin is None:
                self._pins[chain] = _Pin(lock, 1)
                return
            pin.count += 1
        lock.release()

    def _expire_pins(self) -> None:
        """Drop pins of pulls that never stored their image (failed or abandoned)."""
        now = time.monotonic()
        with self._pins_mutex:
            for key in [k for k, p in self._pins.items() if now - p.touched > PIN_TTL]:
                self._pins.pop(key).lock.release()

    def _unpin(self, chains: Iterable[str]) -> None:
        with self._pins_mutex:
            for chain in chains:
                pin = self._pins.get(chain)
                if pin is not None:
                    pin.count -= 1
                    if pin.count <= 0:
                        del self._pins[chain]
                        pin.lock.release()

    def _collect_layers(self) -> None:
        """Delete layers no image uses, top down, skipping those pinned by a pull in progress."""
        self._expire_pins()
        skipped: set[str] = set()
        while True:
            with self._db.read() as conn:
                leaves = [r[0] for r in conn.execute(
                    "SELECT chain_id FROM layers l WHERE NOT EXISTS "
                    "(SELECT 1 FROM image_layers il WHERE il.chain_id = l.chain_id) "
                    "AND NOT EXISTS (SELECT 1 FROM layers c WHERE c.parent = l.chain_id)")]
            leaves = [chain for chain in leaves if chain not in skipped]
            if not leaves:
                return
            for chain in leaves:
                if not self._remove_layer(chain):
                    skipped.add(chain)

    def _remove_layer(self, chain: str) -> bool:
        """Delete one unused layer unless it is pinned; returns whether it was deleted."""
        hexpart = split_digest(chain)[1]
        pin = self._lock("layer", f"{hexpart}.pin")
        if not pin.acquire(blocking=False):
            return False
        try:
            with self._db.write() as conn:
                row = conn.execute(
                    "SELECT link, digest FROM layers l WHERE chain_id = ? AND NOT EXISTS "
                    "(SELECT 1 FROM image_layers il WHERE il.chain_id = l.chain_id) "
                    "AND NOT EXISTS (SELECT 1 FROM layers c WHERE c.parent = l.chain_id)",
                    (chain,)).fetchone()
                if row is None:
                    return False  # an image started using it meanwhile
                conn.execute("DELETE FROM layers WHERE chain_id = ?", (chain,))
            try:
                self._discard_layer_files(hexpart, row[0])
            except OSError as exc:
                raise InternalError(f"cannot delete layer {chain}: {exc.strerror}") from exc
            # Nobody can be applying it (appliers pin it first): its lock files may go too.
            with self._lock("layer", f"{hexpart}.lock") as apply_lock:
                apply_lock.unlink()
            pin.unlink()
            # Its blob was kept while the layer existed (see _remove_blob_if_unused).
            self._remove_blob_if_unused(row[1])
            log.debug("deleted layer %s", chain)
            return True
        finally:
            pin.release()

    # --- images ---------------------------------------------------------------------------

    def put_image(self, record: ImageRecord) -> ImageRecord:
        """Add or update an image, merging names and digests; its layers must be applied."""
        if not _IMAGE_ID_RE.match(record.id):
            raise InvalidArgument(f"invalid image ID {record.id!r} (want sha256:<64 hex>)")
        expected = chain_ids([layer.diff_id for layer in record.layers])
        for layer, chain in zip(record.layers, expected, strict=True):
            if layer.chain_id != chain:
                raise InvalidArgument(f"image {record.id}: layer {layer.digest} has chain ID "
                                      f"{layer.chain_id}, expected {chain}")
        for name in [*record.names, *record.digests]:
            if not isinstance(name, str) or not name.strip():
                raise InvalidArgument(f"image {record.id}: invalid name {name!r}")
        with self._db.write() as conn:
            sizes: dict[str, int] = {}
            for layer in record.layers:
                row = conn.execute("SELECT unpacked_size FROM layers WHERE chain_id = ?",
                                   (layer.chain_id,)).fetchone()
                if row is None:
                    raise FailedPrecondition(f"image {record.id}: layer {layer.chain_id} "
                                             f"(blob {layer.digest}) is not applied")
                sizes[layer.chain_id] = row[0]
            size = sum(sizes[layer.chain_id] for layer in record.layers)
            top = record.layers[-1].chain_id if record.layers else None
            conn.execute(
                "INSERT INTO images (id, manifest_digest, manifest_media_type, config, size, "
                "created, added, top_layer) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO "
                "UPDATE SET manifest_digest = excluded.manifest_digest, manifest_media_type = "
                "excluded.manifest_media_type, config = excluded.config, size = excluded.size, "
                "created = excluded.created, top_layer = excluded.top_layer",
                (record.id, record.manifest_digest, record.manifest_media_type,
                 json.dumps(record.config), size, record.created or "",
                 record.added or time.time(), top))
            conn.execute("DELETE FROM image_layers WHERE image_id = ?", (record.id,))
            conn.executemany(
                "INSERT INTO image_layers (image_id, position, chain_id, digest, diff_id, "
                "media_type, size) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(record.id, i, layer.chain_id, layer.digest, layer.diff_id, layer.media_type,
                  layer.size) for i, layer in enumerate(record.layers)])
            for name in record.names:
                self._move(conn, "image_names", "name", name, record.id)
            for digest in record.digests:
                self._move(conn, "image_digests", "digest", digest, record.id)
            stored = self._records(conn, record.id)[0]
        self._unpin(layer.chain_id for layer in record.layers)
        return stored

    @staticmethod
    def _move(conn: sqlite3.Connection, table: str, column: str, value: str, image_id: str) -> None:
        """Give a name (or repo digest) to ``image_id``, taking it from any other image."""
        conn.execute(f"DELETE FROM {table} WHERE {column} = ? AND image_id != ?", (value, image_id))
        conn.execute(f"INSERT OR IGNORE INTO {table} ({column}, image_id) VALUES (?, ?)",
                     (value, image_id))

    def _resolve(self, conn: sqlite3.Connection, ref: str) -> str:
        """The ID of the image ``ref`` names: ID, bare hex, name, repo digest or ID prefix."""
        ref = ref.strip() if isinstance(ref, str) else ""
        if not ref:
            raise InvalidArgument("empty image reference")
        if _IMAGE_ID_RE.match(ref):
            if conn.execute("SELECT 1 FROM images WHERE id = ?", (ref,)).fetchone():
                return ref
            raise NotFound(f"image {ref} is not in the store")
        for table, column in (("image_names", "name"), ("image_digests", "digest")):
            row = conn.execute(f"SELECT image_id FROM {table} WHERE {column} = ?",
                               (ref,)).fetchone()
            if row:
                return str(row[0])
        match = _HEX_PREFIX_RE.match(ref)
        if match:
            ids = [r[0] for r in conn.execute("SELECT id FROM images WHERE id GLOB ? LIMIT 2",
                                              (f"sha256:{match.group(1)}*",))]
            if len(ids) == 1:
                return str(ids[0])
            if ids:
                raise InvalidArgument(
                    f"image ID prefix {ref!r} is ambiguous: it matches several images")
        raise NotFound(f"image {ref!r} is not in the store")

    def _records(self, conn: sqlite3.Connection, image_id: str | None = None) -> list[ImageRecord]:
        """Image records (all, or one), built with one query per table."""
        args = (image_id,) if image_id else ()

        def where(column: str) -> str:
            return f"WHERE {column} = ?" if image_id else ""

        names: dict[str, list[str]] = {}
        for name, owner in conn.execute(
                f"SELECT name, image_id FROM image_names {where('image_id')} ORDER BY rowid", args):
            names.setdefault(owner, []).append(name)
        digests: dict[str, list[str]] = {}
        for digest, owner in conn.execute(
                f"SELECT digest, image_id FROM image_digests {where('image_id')} ORDER BY rowid",
                args):
            digests.setdefault(owner, []).append(digest)
        layers: dict[str, list[LayerInfo]] = {}
        for owner, *values in conn.execute(
                "SELECT il.image_id, il.digest, il.diff_id, il.media_type, il.size, il.chain_id, "
                f"l.unpacked_size FROM image_layers il JOIN layers l USING (chain_id) "
                f"{where('il.image_id')} ORDER BY il.image_id, il.position",
                args):
            layers.setdefault(owner, []).append(LayerInfo(*values))
        rows = conn.execute(
            "SELECT id, manifest_digest, manifest_media_type, config, size, created, added, "
            f"top_layer FROM images {where('id')} ORDER BY added, id", args)
        return [ImageRecord(id=r[0], names=names.get(r[0], []), digests=digests.get(r[0], []),
                            manifest_digest=r[1], manifest_media_type=r[2], config=json.loads(r[3]),
                            layers=layers.get(r[0], []), size=r[4], created=r[5], added=r[6],
                            top_layer=r[7]) for r in rows]

    def get_image(self, id_or_name: str) -> ImageRecord:
        """An image by full ID, bare hex ID, unique ID prefix (3+), exact name or repo digest."""
        with self._db.read() as conn:
            return self._records(conn, self._resolve(conn, id_or_name))[0]

    def list_images(self) -> list[ImageRecord]:
        """Every image, oldest first."""
        with self._db.read() as conn:
            return self._records(conn)

    def tag_image(self, image_id: str, name: str) -> None:
        """Give ``name`` to an image, taking it from any other image."""
        if not isinstance(name, str) or not name.strip():
            raise InvalidArgument(f"invalid image name {name!r}")
        with self._db.write() as conn:
            self._move(conn, "image_names", "name", name, self._resolve(conn, image_id))

    def untag_image(self, name: str) -> ImageRecord:
        """Remove a name from its image; returns the image."""
        with self._db.write() as conn:
            row = conn.execute("SELECT image_id FROM image_names WHERE name = ?",
                               (name,)).fetchone()
            if row is None:
                raise NotFound(f"image name {name!r} is not in the store")
            conn.execute("DELETE FROM image_names WHERE name = ?", (name,))
            return self._records(conn, row[0])[0]

    def remove_image(self, image_id: str) -> None:
        """Delete an image no container uses, then the layers and blobs nothing else needs."""
        with self._db.write() as conn:
            image = self._resolve(conn, image_id)
            users = conn.execute("SELECT id, name FROM containers WHERE image_id = ? "
                                 "ORDER BY created", (image,)).fetchall()
            if users:
                more = f" and {len(users) - 1} more" if len(users) > 1 else ""
                raise FailedPrecondition(f"image {image} is in use by container {users[0][0]} "
                                         f"({users[0][1]}){more}")
            blobs = {image, conn.execute("SELECT manifest_digest FROM images WHERE id = ?",
                                         (image,)).fetchone()[0]}
            blobs.update(r[0] for r in conn.execute(
                "SELECT digest FROM image_layers WHERE image_id = ?", (image,)))
            conn.execute("DELETE FROM images WHERE id = ?", (image,))
        log.info("removed image %s", image)
        self._collect_layers()
        for digest in sorted(blobs):
            self._remove_blob_if_unused(digest)

    def _remove_blob_if_unused(self, digest: str) -> None:
        try:
            path = self.blob_path(digest)
        except InvalidArgument:
            return  # a malformed digest recorded by a caller names no file of ours
        # Inside a write transaction, so that no put_image can start using it meanwhile.
        with self._db.write() as conn:
            used = conn.execute(
                "SELECT 1 FROM images WHERE id = ?1 OR manifest_digest = ?1 UNION ALL "
                "SELECT 1 FROM image_layers WHERE digest = ?1 UNION ALL "
                # a layer still on disk keeps its blob: a pull in flight may be reusing it
                "SELECT 1 FROM layers WHERE digest = ?1 LIMIT 1", (digest,)).fetchone()
            if used is None:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    raise InternalError(f"cannot delete blob {digest}: {exc.strerror}") from exc

    # --- containers -----------------------------------------------------------------------

    def _container_dir(self, container_id: str) -> str:
        if not isinstance(container_id, str) or not _CONTAINER_ID_RE.match(container_id):
            raise InvalidArgument(f"invalid container ID {container_id!r}")
        return os.path.join(self.containers_dir, container_id)

    def create_container(self, container_id: str, name: str, image_id: str) -> str:
        """Record a container of an image and make its upper, work and merged directories."""
        cdir = self._container_dir(container_id)
        if not isinstance(name, str) or not name:
            raise InvalidArgument(f"container {container_id}: invalid name {name!r}")
        with self._db.write() as conn:
            image = self._resolve(conn, image_id)
            if conn.execute("SELECT 1 FROM containers WHERE id = ?", (container_id,)).fetchone():
                raise AlreadyExists(f"container {container_id} already exists")
            other = conn.execute("SELECT id FROM containers WHERE name = ?", (name,)).fetchone()
            if other:
                raise AlreadyExists(
                    f"container name {name!r} is already used by container {other[0]}")
            conn.execute("INSERT INTO containers (id, name, image_id, created) VALUES (?, ?, ?, ?)",
                         (container_id, name, image, time.time()))
            top = conn.execute("SELECT top_layer FROM images WHERE id = ?", (image,)).fetchone()[0]
        try:
            self._make_container_dirs(cdir, top)
        except OSError as exc:
            with self._db.write() as conn:
                conn.execute("DELETE FROM containers WHERE id = ?", (container_id,))
            _rmtree(cdir)
            raise InternalError(f"cannot create container {container_id}: {exc.strerror}") from exc
        return container_id

    def _make_container_dirs(self, cdir: str, top: str | None) -> None:
        os.makedirs(cdir, mode=0o700, exist_ok=True)
        for sub in ("work", "merged", "empty"):
            os.makedirs(os.path.join(cdir, sub), mode=0o700, exist_ok=True)
        upper = os.path.join(cdir, "upper")
        if not os.path.isdir(upper):
            os.mkdir(upper)
            # Overlay's root takes the upper dir's owner and mode: copy the image's root.
            st = os.stat(os.path.join(self._layer_dir(top), "diff")) if top else None
            os.chown(upper, st.st_uid if st else 0, st.st_gid if st else 0)
            os.chmod(upper, stat.S_IMODE(st.st_mode) if st else 0o755)
        os.chmod(os.path.join(cdir, "merged"), 0o755)

    def mount_container(self, container_id: str) -> str:
        """Overlay-mount a container's image layers and upper dir; returns the mount point."""
        cdir = self._container_dir(container_id)
        merged = os.path.join(cdir, "merged")
        with self._lock("container", f"{container_id}.lock"):
            with self._db.read() as conn:
                row = conn.execute(
                    "SELECT c.image_id, i.top_layer FROM containers c JOIN images i "
                    "ON i.id = c.image_id WHERE c.id = ?", (container_id,)).fetchone()
                if row is None:
                    raise NotFound(f"container {container_id} is not in the store")
                lowers = conn.execute(
                    "SELECT l.link, l.chain_id FROM image_layers il JOIN layers l USING (chain_id) "
                    "WHERE il.image_id = ? ORDER BY il.position DESC", (row[0],)).fetchall()
            if os.path.ismount(merged):
                return merged
            try:
                self._make_container_dirs(cdir, row[1])  # they may predate a crash
            except OSError as exc:
                raise InternalError(f"container {container_id}: {exc.strerror}") from exc
            for link, chain in lowers:
                if not os.path.isdir(os.path.join(self.overlay_dir, "l", link)):
                    raise InternalError(
                        f"container {container_id}: layer {chain} is missing on disk")
            rel = os.path.relpath(cdir, self.overlay_dir)
            # Overlay needs a lower dir: an image without layers gets an empty one.
            names = [f"l/{link}" for link, _ in lowers] or [f"{rel}/empty"]
            mount_overlay(self.overlay_dir, names, f"{rel}/upper", f"{rel}/work", merged,
                          f"container {container_id}")
        return merged

    def unmount_container(self, container_id: str) -> None:
        """Unmount a container's root file system, if mounted."""
        merged = os.path.join(self._container_dir(container_id), "merged")
        with self._lock("container", f"{container_id}.lock"):
            with self._db.read() as conn:
                if conn.execute("SELECT 1 FROM containers WHERE id = ?",
                                (container_id,)).fetchone() is None:
                    raise NotFound(f"container {container_id} is not in the store")
            unmount(merged, f"container {container_id}")

    def remove_container(self, container_id: str, *, defer_delete: bool = False) -> None:
        """Unmount and delete a container's file systems and record; unknown IDs are a no-op.

        ``defer_delete`` only moves the files out of the way (one rename) and leaves deleting
        them to ``empty_trash``, which a daemon runs off the request's path.
        """
        try:
            cdir = self._container_dir(container_id)
        except InvalidArgument:
            return  # no container can have such an ID
        with self._lock("container", f"{container_id}.lock") as lock:
            unmount(os.path.join(cdir, "merged"), f"container {container_id}")
            trashed = os.path.join(self.tmp_dir, f"{container_id}{_DELETED}")
            try:
                if os.path.lexists(cdir):
                    _rmtree(trashed)  # left by a crash between rename and delete
                    try:
                        os.rename(cdir, trashed)
                    except OSError as exc:
                        if exc.errno != errno.EXDEV:  # the containers dir is a mount of its own
                            raise
                        _rmtree(cdir)
            except OSError as exc:
                raise InternalError(
                    f"cannot delete container {container_id}: {exc.strerror}") from exc
            with self._db.write() as conn:
                conn.execute("DELETE FROM containers WHERE id = ?", (container_id,))
            lock.unlink()
        if not defer_delete:
            shutil.rmtree(trashed, ignore_errors=True)

    def empty_trash(self) -> None:
        """Delete the files of removed containers (crash leftovers too: see _cleanup)."""
        for entry in os.listdir(self.tmp_dir):
            if entry.endswith(_DELETED):
                shutil.rmtree(os.path.join(self.tmp_dir, entry), ignore_errors=True)

    def list_containers(self) -> list[ContainerRecord]:
        """Every container, oldest first."""
        with self._db.read() as conn:
            return [ContainerRecord(*r) for r in conn.execute(
                "SELECT id, name, image_id, created FROM containers ORDER BY created, id")]

    # --- usage and upkeep -----------------------------------------------------------------

    def fs_usage(self) -> tuple[int, int]:
        """Bytes and inodes used under the root (hard links once; mounts not entered)."""
        root_dev = os.lstat(self.root).st_dev
        seen: set[int] = set()
        used = 0
        stack = [self.root]
        while stack:
            try:
                entries = list(os.scandir(stack.pop()))
            except OSError:
                continue  # deleted meanwhile, or unreadable
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if st.st_dev != root_dev:
                    continue  # a container's mounted root: not our storage
                if st.st_ino not in seen:
                    seen.add(st.st_ino)
                    used += st.st_blocks * 512
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
        return used, len(seen) + 1

    def _cleanup(self) -> None:
        """Remove what crashed writers left: partial blobs, half-made or half-deleted layers.
        (Files of removed containers wait for ``empty_trash``: a daemon runs it off its path.)"""
        for entry in os.listdir(self.tmp_dir):
            lock = FileLock(os.path.join(self.tmp_dir, entry))
            if entry.endswith(".partial") and lock.acquire(blocking=False):
                try:
                    os.unlink(lock.path)
                except OSError:
                    pass
                lock.release()
        with self._db.read() as conn:
            known = {split_digest(r[0])[1] for r in conn.execute("SELECT chain_id FROM layers")}
        for entry in os.listdir(self.overlay_dir):
            hexpart = entry[5:].split("-")[0] if entry.startswith(".tmp-") else entry
            if entry == "l" or (hexpart in known and not entry.startswith(".tmp-")):
                continue
            if not re.fullmatch(r"[0-9a-f]{64}|[0-9a-f]{128}", hexpart):
                continue
            pin = self._lock("layer", f"{hexpart}.pin")
            if not pin.acquire(blocking=False):
                continue  # being applied or removed right now
            try:
                with self._db.read() as conn:
                    row = conn.execute("SELECT link FROM layers WHERE chain_id LIKE ?",
                                       (f"%:{hexpart}",)).fetchone()
                if row is None:
                    self._discard_layer_files(hexpart, None)
                    pin.unlink()
                elif entry.startswith(".tmp-"):
                    _rmtree(os.path.join(self.overlay_dir, entry))
            except OSError as exc:
                log.warning("cannot clean up %s: %s", entry, exc)
            finally:
                pin.release()
