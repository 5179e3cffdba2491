"""Moving images between the store and the outside: load, save, push and import.

Pulls from registries live in ``service.py``; everything here goes through the same copy
pipeline (``copy.py``) or reads the stored blobs back out unchanged, so an image keeps its ID
(the config digest) through every round trip. (Its manifest digest changes only when a Docker
v2s2 image is written to an OCI layout or archive, which must hold OCI manifests.)
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ocid.errors import FailedPrecondition, InvalidArgument
from ocid.image import manifest as mf
from ocid.image.auth import Credentials
from ocid.image.copy import copy_image
from ocid.image.manifest import Platform
from ocid.image.reference import parse_reference
from ocid.image.service import ImageService
from ocid.image.transports import ImageSource, TransportRef, open_destination, open_source
from ocid.storage.store import ImageRecord

CHUNK = 1 << 20


@dataclass
class TransportSource:
    """A file transport's ImageSource, as a BlobSource for the copy pipeline."""

    source: ImageSource
    description: str

    def fetch_manifest(self, reference: str | None) -> tuple[bytes, str]:
        if reference is None:
            return self.source.get_manifest()
        with self.source.open_blob(reference) as f:
            raw = f.read()
        return raw, _declared_media_type(raw)

    def iter_blob(self, digest: str, size: int | None) -> Iterator[bytes]:
        with self.source.open_blob(digest) as f:
            while chunk := f.read(CHUNK):
                yield chunk


@dataclass
class MemorySource:
    """Blobs held in files or memory (for ``import``), as a BlobSource."""

    manifest: bytes
    media_type: str
    blobs: dict[str, bytes | str] = field(default_factory=dict)
    description: str = "imported image"

    def fetch_manifest(self, reference: str | None) -> tuple[bytes, str]:
        return self.manifest, self.media_type

    def iter_blob(self, digest: str, size: int | None) -> Iterator[bytes]:
        blob = self.blobs[digest]
        if isinstance(blob, bytes):
            yield blob
            return
        with open(blob, "rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk


def _declared_media_type(raw: bytes) -> str:
    try:
        return str(json.loads(raw).get("mediaType", ""))
    except (ValueError, AttributeError):
        return ""


def _name_or_none(text: str | None) -> str | None:
    if not text:
        return None
    try:
        ref = parse_reference(text)
    except InvalidArgument:
        return None
    return None if ref.digest and not ref.tag else str(ref)


def load(service: ImageService, ref: TransportRef, *, platform: Platform | None = None,
         extra_names: list[str] | None = None) -> ImageRecord:
    """Copy the image of a file transport (oci, oci-archive, docker-archive) into the store.

    policy.json applies as for pulls, with the file's absolute path as the scope.
    """
    _, policy = service.config_files()
    policy.check(ref.transport, None, os.path.abspath(ref.path))
    with open_source(ref) as source:
        progress = service.pulls.start(f"{ref.transport}:{ref.path}")
        try:
            record, _ = copy_image(service.store, TransportSource(source, f"{ref.transport}:{ref.path}"),
                                None, platform=platform or Platform.host(), progress=progress,
                                max_parallel=service.config.image.max_parallel_downloads)
        finally:
            service.pulls.finish(progress)
        names = [n for n in (_name_or_none(x) for x in [*source.names, *(extra_names or [])]) if n]
    record.names = list(dict.fromkeys(names))
    return service.store.put_image(record)


def _stored_manifest(service: ImageService, record: ImageRecord) -> tuple[bytes, mf.Manifest]:
    raw = service.store.read_blob(record.manifest_digest)
    parsed = mf.parse_manifest(raw, record.manifest_media_type)
    if not isinstance(parsed, mf.Manifest):
        raise InvalidArgument(f"image {record.id} has no single-platform manifest stored")
    return raw, parsed


def save(service: ImageService, text: str, dest: TransportRef) -> ImageRecord:
    """Write a stored image to a file transport, blobs unchanged (same ID and digests)."""
    record = service.get(text)
    raw, manifest = _stored_manifest(service, record)
    names = [dest.name] if dest.name and dest.transport == "docker-archive" else (
        record.names[:1] if dest.transport == "docker-archive" else [dest.name or ""])
    destination = open_destination(dest)
    try:
        for desc in (manifest.config, *manifest.layers):
            if not destination.has_blob(desc.digest):
                with open(service.store.blob_path(desc.digest), "rb") as f:
                    destination.put_blob(desc.digest, desc.size, f)
        destination.put_manifest(raw, manifest.media_type, [n for n in names if n])
        destination.commit()
    finally:
        destination.close()
    return record


def push(service: ImageService, text: str, destination: str, *,
         credentials: Credentials | None = None, tls_verify: bool | None = None,
         progress: Callable[[str, int, int], None] | None = None) -> str:
    """Push a stored image to a registry (``docker://`` or a plain name); returns the manifest digest.

    Blobs the registry has are skipped; the manifest goes last.
    """
    record = service.get(text)
    raw, manifest = _stored_manifest(service, record)
    target = parse_reference(destination.removeprefix("docker://"))
    registries, _ = service.config_files()
    registry = registries.find_registry(target)
    if registry is not None and registry.blocked:
        raise FailedPrecondition(f"registry {registry.prefix} is blocked in {registries.path}")
    insecure = registries.is_insecure(target.domain) if tls_verify is None else not tls_verify
    with service.client_for(target.domain, repository=target.path, insecure=insecure,
                            credentials=credentials) as client:
        for desc in (*manifest.layers, manifest.config):
            path = service.store.blob_path(desc.digest)
            uploaded = client.push_blob(target.path, desc.digest, desc.size,
                                        lambda p=path: open(p, "rb"))
            if progress:
                progress(desc.digest, desc.size, desc.size if uploaded else 0)
        return client.put_manifest(target.path, target.tag or target.digest or "latest", raw,
                                   manifest.media_type)


# ---- import: a root file system tarball becomes a one-layer image --------------------------

CHANGE_KEYS = ("CMD", "ENTRYPOINT", "ENV", "WORKDIR", "USER", "LABEL", "EXPOSE", "STOPSIGNAL")


def apply_changes(image_config: dict, changes: list[str]) -> None:
    """Apply Dockerfile-style ``--change`` lines (CMD, ENTRYPOINT, ENV, ...) to a config."""
    for change in changes:
        key, _, value = change.strip().partition(" ")
        key, value = key.upper(), value.strip()
        if key not in CHANGE_KEYS or not value:
            raise InvalidArgument(f"invalid change {change!r}: expected one of "
                                  f"{', '.join(CHANGE_KEYS)} followed by a value")
        if key in ("CMD", "ENTRYPOINT"):
            try:
                parsed = json.loads(value) if value.startswith("[") else ["/bin/sh", "-c", value]
            except ValueError as exc:
                raise InvalidArgument(f"invalid change {change!r}: {exc}") from exc
            image_config["Cmd" if key == "CMD" else "Entrypoint"] = parsed
        elif key == "ENV":
            name, sep, env_value = value.partition("=")
            if not sep:
                name, _, env_value = value.partition(" ")
            env = [e for e in image_config.get("Env", []) if not e.startswith(f"{name}=")]
            image_config["Env"] = [*env, f"{name}={env_value.strip()}"]
        elif key == "LABEL":
            name, _, label_value = value.partition("=")
            image_config.setdefault("Labels", {})[name] = label_value.strip('"')
        elif key == "EXPOSE":
            port = value if "/" in value else f"{value}/tcp"
            image_config.setdefault("ExposedPorts", {})[port] = {}
        else:
            image_config[{"WORKDIR": "WorkingDir", "USER": "User", "STOPSIGNAL": "StopSignal"}[key]] = value


def import_rootfs(service: ImageService, tarball: str, name: str | None = None, *,
                  changes: list[str] | None = None, message: str = "",
                  platform: Platform | None = None) -> ImageRecord:
    """Make a one-layer image from a root file system tarball (plain or gzip-compressed)."""
    platform = platform or Platform.host()
    with tempfile.TemporaryDirectory(dir=service.store.root, prefix="import-") as tmp:
        layer_path = os.path.join(tmp, "layer.tar.gz")
        diff_hash, blob_hash = hashlib.sha256(), hashlib.sha256()
        try:
            source = open(tarball, "rb") if tarball != "-" else os.fdopen(os.dup(0), "rb")
        except OSError as exc:
            raise InvalidArgument(f"cannot read {tarball}: {exc.strerror}") from exc
        with source:
            head = source.peek(2)[:2] if hasattr(source, "peek") else b""
            reader = gzip.GzipFile(fileobj=source) if head == b"\x1f\x8b" else source

            class _Hashing(io.RawIOBase):
                def writable(self) -> bool:
                    return True

                def write(self, b: bytes) -> int:  # type: ignore[override]
                    blob_hash.update(b)
                    out.write(b)
                    return len(b)

            with open(layer_path, "wb") as out:
                # mtime=0 keeps the compressed blob reproducible for the same input.
                with gzip.GzipFile(fileobj=_Hashing(), mode="wb", mtime=0, compresslevel=6) as gz:
                    try:
                        while chunk := reader.read(CHUNK):
                            diff_hash.update(chunk)
                            gz.write(chunk)
                    except (OSError, EOFError) as exc:
                        raise InvalidArgument(f"{tarball} is not a readable tarball: {exc}") from exc
        diff_id, blob_digest = f"sha256:{diff_hash.hexdigest()}", f"sha256:{blob_hash.hexdigest()}"
        blob_size = os.path.getsize(layer_path)
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        image_config: dict = {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}
        apply_changes(image_config, changes or [])
        config = {
            "created": created, "architecture": platform.architecture, "os": platform.os,
            "config": image_config,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": created, "created_by": "kpod import", "comment": message}
                        if message else {"created": created, "created_by": "kpod import"}],
        }
        if platform.variant:
            config["variant"] = platform.variant
        config_raw = json.dumps(config, separators=(",", ":")).encode()
        config_digest = mf.sha256_digest(config_raw)
        manifest = {
            "schemaVersion": 2, "mediaType": mf.OCI_MANIFEST,
            "config": {"mediaType": mf.OCI_CONFIG, "digest": config_digest, "size": len(config_raw)},
            "layers": [{"mediaType": mf.OCI_LAYER_GZIP, "digest": blob_digest, "size": blob_size}],
        }
        source_blobs = MemorySource(json.dumps(manifest, separators=(",", ":")).encode(),
                                    mf.OCI_MANIFEST, {config_digest: config_raw, blob_digest: layer_path})
        progress = service.pulls.start(f"import:{tarball}")
        try:
            record, _ = copy_image(service.store, source_blobs, None, platform=platform,
                                   progress=progress)
        finally:
            service.pulls.finish(progress)
    record.names = [str(parse_reference(name))] if name else []
    return service.store.put_image(record)
