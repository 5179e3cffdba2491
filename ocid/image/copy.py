"""Copying an image from a source (a registry, an OCI layout, an archive) into the store.

One pipeline for every transport: resolve an index to the wanted platform, store the config,
download the missing layer blobs in parallel, and unpack them in order as soon as each one and
its parent are ready, so downloading and unpacking overlap.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from ocid.errors import DeadlineExceeded, InvalidArgument, OcidError
from ocid.image.manifest import Index, Manifest, Platform, parse_manifest, select_platform, sha256_digest
from ocid.image.progress import LayerProgress, PullProgress
from ocid.storage.store import ImageRecord, ImageStore, LayerInfo, chain_ids

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_CONFIG_BYTES = 8 * 1024 * 1024


class BlobSource(Protocol):
    """Where manifests and blobs come from."""

    description: str

    def fetch_manifest(self, reference: str | None) -> tuple[bytes, str]:
        """The raw manifest (or index) and its media type; ``None`` means the source's own."""

    def iter_blob(self, digest: str, size: int | None) -> Iterator[bytes]:
        """The blob's bytes, in chunks (the caller verifies the digest)."""


class PullCancelled(OcidError):
    """Another part of the same pull failed; this download stops."""


def _watch_stall(chunks: Iterator[bytes], pull: PullProgress, layer: LayerProgress,
                 stall_timeout: float, cancelled: threading.Event) -> Iterator[bytes]:
    """Pass chunks through, recording progress; name the stalled blob when the source stops."""
    try:
        for chunk in chunks:
            if cancelled.is_set():
                raise PullCancelled(f"download of {layer.digest} cancelled")
            pull.advance(layer, len(chunk))
            yield chunk
    except OcidError as exc:
        idle = time.monotonic() - pull.last_progress
        if stall_timeout and idle >= stall_timeout:
            raise DeadlineExceeded(
                f"pull of {pull.image} made no progress for {idle:.0f}s: blob {layer.digest} "
                f"stalled at {layer.done} of {layer.total} bytes ({exc})") from exc
        raise


def copy_image(
    store: ImageStore,
    source: BlobSource,
    reference: str | None,
    *,
    platform: Platform,
    progress: PullProgress,
    max_parallel: int = 3,
    stall_timeout: float = 0,
) -> tuple[ImageRecord, str]:
    """Bring the image ``reference`` of ``source`` into ``store``.

    Returns its record, unnamed and not yet stored (the caller adds names and digests and
    calls ``put_image``), and the digest of what ``reference`` named: the index for a
    multi-platform image (the repo digest users pull by), else the manifest.
    """
    raw, media_type = source.fetch_manifest(reference)
    top_digest = sha256_digest(raw)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise InvalidArgument(f"manifest of {source.description} is too large ({len(raw)} bytes)")
    parsed = parse_manifest(raw, media_type)
    if isinstance(parsed, Index):
        chosen = select_platform(parsed, platform)
        raw, media_type = source.fetch_manifest(chosen.digest)
        if len(raw) > MAX_MANIFEST_BYTES or sha256_digest(raw) != chosen.digest:
            raise InvalidArgument(f"{source.description}: the manifest for {chosen.platform} does "
                                  f"not match its digest {chosen.digest} in the index")
        parsed = parse_manifest(raw, media_type)
        if isinstance(parsed, Index):
            raise InvalidArgument(f"{source.description}: an index inside an index is not supported")
    manifest: Manifest = parsed
    manifest_digest = sha256_digest(raw)

    config_desc = manifest.config
    if config_desc.size > MAX_CONFIG_BYTES:
        raise InvalidArgument(f"image config {config_desc.digest} is too large ({config_desc.size} bytes)")
    if not store.has_blob(config_desc.digest):
        store.ingest_blob(source.iter_blob(config_desc.digest, config_desc.size),
                          config_desc.digest, config_desc.size)
    try:
        config = json.loads(store.read_blob(config_desc.digest))
        diff_ids = list(config["rootfs"]["diff_ids"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument(f"image config {config_desc.digest} of {source.description} is "
                              f"malformed: {exc}") from exc
    if len(diff_ids) != len(manifest.layers):
        raise InvalidArgument(
            f"{source.description}: the manifest lists {len(manifest.layers)} layers but the config "
            f"has {len(diff_ids)} diff IDs")

    layers = [LayerInfo(digest=d.digest, diff_id=diff_id, media_type=d.media_type, size=d.size,
                        chain_id=chain)
              for d, diff_id, chain in zip(manifest.layers, diff_ids, chain_ids(diff_ids))]
    progress.layers = [LayerProgress(layer.digest, layer.size) for layer in layers]

    def fetch(index: int) -> None:
        layer, state = layers[index], progress.layers[index]
        if store.has_blob(layer.digest):
            state.state, state.done = "exists", state.total
            return
        chunks = _watch_stall(source.iter_blob(layer.digest, layer.size), progress, state,
                              stall_timeout, cancelled)
        store.ingest_blob(chunks, layer.digest, layer.size)

    # One small pool per pull: at most max_parallel downloads of this image at once, and a
    # failure stops the others (they check `cancelled` between chunks).
    cancelled = threading.Event()
    executor = ThreadPoolExecutor(max_workers=max_parallel, thread_name_prefix="blob")
    downloads: list[Future[None] | None] = []
    for index, layer in enumerate(layers):
        # A layer already unpacked (shared base) needs no download, unless its blob is gone.
        needed = not (store.has_layer(layer.chain_id) and store.has_blob(layer.digest))
        downloads.append(executor.submit(fetch, index) if needed else None)
        if not needed:
            progress.layers[index].state, progress.layers[index].done = "exists", layer.size
    try:
        parent: str | None = None
        for index, future in enumerate(downloads):
            if future is not None:
                future.result()
            state = progress.layers[index]
            if not store.has_layer(layers[index].chain_id):
                state.state = "unpacking"
                layers[index] = store.apply_layer(layers[index], parent)
            else:
                layers[index] = store.layer_info(layers[index].chain_id, layers[index])
            state.state = "done"
            parent = layers[index].chain_id
    except BaseException:
        cancelled.set()
        raise
    finally:
        executor.shutdown(wait=True, cancel_futures=True)

    store.put_blob_bytes(raw, manifest_digest)
    return ImageRecord(
        id=config_desc.digest,
        names=[],
        digests=[],
        manifest_digest=manifest_digest,
        manifest_media_type=manifest.media_type,
        config=config,
        layers=layers,
        size=sum(layer.unpacked_size for layer in layers),
        created=str(config.get("created", "")),
        added=time.time(),
        top_layer=layers[-1].chain_id if layers else None,
    ), top_digest
