"""File-based image transports: OCI layouts, oci-archive and docker-archive tarballs.

Pure format readers and writers, driven by the puller and pusher elsewhere. A source serves a
manifest and streams of blobs; a destination takes verified blobs and a manifest and makes
them visible only at ``commit``. Nothing here reads a whole layer into memory: tar members are
streamed straight from their offsets in the archive, each reader with its own file handle, so
the copy pipeline may read several blobs at once from different threads.

    oci:DIR[:NAME]                an OCI image layout directory (index.json, blobs/<alg>/<hex>)
    oci-archive:TAR[:NAME]        a tar of an OCI image layout
    docker-archive:TAR[:NAME]     a ``docker save`` tarball (manifest.json, <config>.json, layers)
    docker://REF or REF           a registry reference (parsed here, served by the registry client)
"""

from __future__ import annotations

import bz2
import fcntl
import gzip
import hashlib
import io
import json
import lzma
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import IO, BinaryIO, Protocol, Self, cast

import zstandard

from ocid.errors import FailedPrecondition, InvalidArgument, NotFound
from ocid.image.manifest import (DOCKER_CONFIG, DOCKER_LAYER, DOCKER_LAYER_GZIP, DOCKER_MANIFEST,
                                 DOCKER_MANIFEST_LIST, OCI_CONFIG, OCI_INDEX, OCI_LAYER,
                                 OCI_LAYER_GZIP, OCI_LAYER_ZSTD, OCI_MANIFEST)
from ocid.image.reference import parse_reference

TRANSPORTS = ("docker", "oci", "oci-archive", "docker-archive")
FILE_TRANSPORTS = ("oci", "oci-archive", "docker-archive")
# containers/image transports ocid does not serve, listed so that "dir:/x" is refused
# instead of being read as an image called "dir".
UNSUPPORTED_TRANSPORTS = ("containers-storage", "dir", "docker-daemon", "ostree", "sif", "tarball")

REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
LAYOUT_VERSION = "1.0.0"

CHUNK = 1 << 20
MAX_JSON_BYTES = 32 << 20  # index.json, manifest.json, manifests and configs are small documents
MAX_LINK_DEPTH = 16

_DIGEST = re.compile(r"^(?P<alg>[a-z0-9]+(?:[.+_-][a-z0-9]+)*):(?P<hex>[a-zA-Z0-9=_-]+)$")
_HEX_LENGTH = {"sha256": 64, "sha384": 96, "sha512": 128}
_PORT_PATH = re.compile(r"^[0-9]+/")
_SOURCE_INDEX = re.compile(r"^@([0-9]+)$")

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_BZIP2_MAGIC = b"BZh"
_XZ_MAGIC = b"\xfd7zXZ\x00"


class _Closing:
    """Sources and destinations close themselves at the end of a ``with`` block."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _FileDestination(_Closing):
    """What the layout and docker-archive writers share: blobs as files, one commit."""

    label: str
    _done: bool

    def _blob_path(self, digest: str) -> str:
        raise NotImplementedError

    def _check_open(self) -> None:
        if self._done:
            raise FailedPrecondition(f"{self.label}: destination already committed or closed")

    def has_blob(self, digest: str) -> bool:
        """Whether the blob was already put."""
        return os.path.isfile(self._blob_path(digest))


# ---- references ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TransportRef:
    """A parsed transport reference."""

    transport: str      # "docker", "oci", "oci-archive", "docker-archive"
    path: str           # the directory or tar path of a file transport; "" for docker
    name: str | None    # oci: ref.name; docker-archive: "repo:tag" or "@N"; docker: the reference

    def __str__(self) -> str:
        if self.transport == "docker":
            return f"docker://{self.name}"
        return f"{self.transport}:{self.path}" + (f":{self.name}" if self.name else "")


def parse_transport_ref(text: str) -> TransportRef:
    """Parse ``[docker://]REF``, ``oci:DIR[:NAME]``, ``oci-archive:TAR[:NAME]`` and the like."""
    text = text.strip()
    if not text:
        raise InvalidArgument("empty image reference")
    if text.startswith("docker://"):
        ref = text.removeprefix("docker://")
        if not ref:
            raise InvalidArgument(f"{text!r}: no image reference after docker://")
        normalize_name(ref)  # validates
        return TransportRef("docker", "", ref)
    prefix, sep, rest = text.partition(":")
    if sep and prefix in FILE_TRANSPORTS:
        # Like containers/image: the path ends at the first ':' after the transport.
        path, _, name = rest.partition(":")
        if not path:
            raise InvalidArgument(f"{text!r}: no path after {prefix}:")
        if prefix == "docker-archive" and name and not _SOURCE_INDEX.match(name):
            if "@" in name:
                raise InvalidArgument(f"{text!r}: a docker-archive name must be repo:tag, "
                                      "not a digest")
            normalize_name(name)  # validates
        return TransportRef(prefix, path, name or None)
    if "://" in text:
        raise InvalidArgument(f"{text!r}: unknown transport {text.split('://', 1)[0]!r} "
                              f"(known: {', '.join(TRANSPORTS)})")
    if sep and (prefix in UNSUPPORTED_TRANSPORTS
                or ("/" not in prefix and "/" in rest and not _PORT_PATH.match(rest))):
        raise InvalidArgument(f"{text!r}: unsupported transport {prefix!r} "
                              f"(known: {', '.join(TRANSPORTS)})")
    normalize_name(text)  # validates
    return TransportRef("docker", "", text)


def normalize_name(text: str) -> str:
    """The fully qualified name: ``busybox`` -> ``docker.io/library/busybox:latest``."""
    return str(parse_reference(text))


def _same_name(a: str, b: str) -> bool:
    """Whether two image names are equal once normalised (``busybox`` ~ ``docker.io/...``)."""
    if a == b:
        return True
    try:
        return normalize_name(a) == normalize_name(b)
    except InvalidArgument:
        return False


# ---- interfaces --------------------------------------------------------------------------------

class ImageSource(Protocol):
    """The reading side of a transport: what a pull or load needs."""

    names: list[str]  # image names the source carries (RepoTags, ref.name); may be empty

    def get_manifest(self) -> tuple[bytes, str]:
        """The raw manifest (or index) bytes and their media type."""

    def open_blob(self, digest: str) -> BinaryIO:
        """A readable stream of the blob ``digest``; the caller verifies what it reads."""

    def blob_size(self, digest: str) -> int | None:
        """The size of blob ``digest``, or None when the source does not have it."""

    def close(self) -> None:
        """Release files and temporary data."""

    def __enter__(self) -> ImageSource: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...


class ImageDestination(Protocol):
    """The writing side of a transport: what a push or save needs."""

    def has_blob(self, digest: str) -> bool:
        """Whether the destination already has (or was given) blob ``digest``."""

    def put_blob(self, digest: str, size: int, stream: BinaryIO) -> None:
        """Copy a blob, verifying its digest and size (``size`` < 0: unknown)."""

    def put_manifest(self, raw: bytes, media_type: str, names: list[str]) -> None:
        """Add an image by its manifest; every blob it references must have been put."""

    def commit(self) -> None:
        """Make the images visible (index.json, the tarball); nothing is visible before."""

    def close(self) -> None:
        """Release temporary data; without a commit, the destination is left as it was."""

    def __enter__(self) -> ImageDestination: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...


def open_source(ref: TransportRef) -> ImageSource:
    """Open the image of an ``oci``, ``oci-archive`` or ``docker-archive`` reference for reading."""
    if ref.transport == "oci":
        return OciLayoutSource(_DirFiles(ref.path), ref.name, label=f"oci:{ref.path}")
    if ref.transport == "oci-archive":
        archive = _TarArchive(ref.path)
        try:
            return OciLayoutSource(archive, ref.name, label=f"oci-archive:{ref.path}")
        except BaseException:
            archive.close()
            raise
    if ref.transport == "docker-archive":
        return DockerArchiveSource(ref.path, ref.name)
    raise InvalidArgument(f"{ref}: the {ref.transport!r} transport is not a file transport")


def open_destination(ref: TransportRef) -> ImageDestination:
    """Open an ``oci``, ``oci-archive`` or ``docker-archive`` reference for writing."""
    if ref.name and _SOURCE_INDEX.match(ref.name):
        raise InvalidArgument(f"{ref}: an @N source index cannot name an image being written")
    if ref.transport == "oci":
        return OciLayoutDestination(ref.path, ref.name)
    if ref.transport == "oci-archive":
        return OciArchiveDestination(ref.path, ref.name)
    if ref.transport == "docker-archive":
        return DockerArchiveDestination(ref.path, ref.name)
    raise InvalidArgument(f"{ref}: the {ref.transport!r} transport is not a file transport")


# ---- helpers -----------------------------------------------------------------------------------

def _split_digest(digest: str, where: str) -> tuple[str, str]:
    """``sha256:abc…`` -> (``sha256``, ``abc…``), rejecting what could escape a path."""
    match = _DIGEST.match(digest) if isinstance(digest, str) else None
    if not match:
        raise InvalidArgument(f"{where}: invalid digest {digest!r}")
    alg, hexpart = match["alg"], match["hex"]
    if alg in _HEX_LENGTH and (len(hexpart) != _HEX_LENGTH[alg]
                               or not re.fullmatch(r"[0-9a-f]+", hexpart)):
        raise InvalidArgument(f"{where}: invalid {alg} digest {digest!r}")
    return alg, hexpart


def _hasher(digest: str, where: str) -> hashlib._Hash:
    alg, _ = _split_digest(digest, where)
    if alg not in _HEX_LENGTH:
        raise InvalidArgument(f"{where}: unsupported digest algorithm in {digest!r}")
    return hashlib.new(alg)


def _sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _read_limited(stream: IO[bytes], where: str, limit: int = MAX_JSON_BYTES) -> bytes:
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise InvalidArgument(f"{where} is too large (over {limit} bytes)")
    return data


def _parse_json(raw: bytes, where: str) -> object:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"{where} is not valid JSON: {exc}") from exc


def _compression(head: bytes) -> str:
    """``gzip``, ``zstd``, ``bzip2``, ``xz`` or ``""`` from a stream's first bytes."""
    for magic, kind in ((_GZIP_MAGIC, "gzip"), (_ZSTD_MAGIC, "zstd"),
                        (_BZIP2_MAGIC, "bzip2"), (_XZ_MAGIC, "xz")):
        if head.startswith(magic):
            return kind
    return ""


def _decompressor(kind: str, stream: IO[bytes]) -> IO[bytes]:
    if kind == "gzip":
        return cast(IO[bytes], gzip.GzipFile(fileobj=stream, mode="rb"))
    if kind == "zstd":
        reader = zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True)
        return cast(IO[bytes], reader)
    if kind == "bzip2":
        return cast(IO[bytes], bz2.BZ2File(stream))
    if kind == "xz":
        return cast(IO[bytes], lzma.LZMAFile(stream))
    return stream


def _copy_stream(src: IO[bytes], dst: IO[bytes], *hashes: hashlib._Hash) -> int:
    total = 0
    while chunk := src.read(CHUNK):
        for h in hashes:
            h.update(chunk)
        dst.write(chunk)
        total += len(chunk)
    return total


def _write_verified(stream: IO[bytes], digest: str, size: int, final: str, where: str) -> None:
    """Copy ``stream`` to ``final`` through a temporary file, checking digest and size first."""
    hasher = _hasher(digest, where)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(final), prefix=".tmp-blob-")
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                written = _copy_stream(stream, out, hasher)
            except (OSError, EOFError, zstandard.ZstdError) as exc:
                raise InvalidArgument(f"{where}: cannot read blob {digest}: {exc}") from exc
        actual = f"{digest.split(':', 1)[0]}:{hasher.hexdigest()}"
        if actual != digest:
            raise InvalidArgument(f"{where}: blob {digest} has the wrong content "
                                  f"(its digest is {actual})")
        if size >= 0 and written != size:
            raise InvalidArgument(f"{where}: blob {digest} is {written} bytes, expected {size}")
        os.replace(tmp, final)
    except BaseException:
        _unlink(tmp)
        raise


def _write_file_atomic(path: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".",
                               prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _referenced_blobs(raw: bytes, where: str) -> tuple[dict, list[str]]:
    """The parsed manifest or index and the digests it references (config, layers, manifests)."""
    doc = _parse_json(raw, where)
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{where} is not a JSON object")
    digests: list[str] = []
    try:
        if "manifests" in doc:
            digests = [m["digest"] for m in doc["manifests"]]
        else:
            digests = [doc["config"]["digest"], *(layer["digest"] for layer in doc["layers"])]
    except (KeyError, TypeError) as exc:
        raise InvalidArgument(f"{where} is not an image manifest or index: missing {exc}") from exc
    for digest in digests:
        _split_digest(digest, where)
    return doc, digests


# ---- file access: a directory or a tar archive -------------------------------------------------

class _Files(Protocol):
    """Read access to the files of an OCI layout, wherever they live."""

    def exists(self, rel: str) -> bool: ...

    def size(self, rel: str) -> int: ...

    def open(self, rel: str) -> BinaryIO: ...

    def close(self) -> None: ...


class _DirFiles:
    """An OCI layout directory."""

    def __init__(self, root: str):
        if not os.path.isdir(root):
            raise InvalidArgument(f"oci:{root}: not a directory")
        self.root = root

    def exists(self, rel: str) -> bool:
        return os.path.isfile(os.path.join(self.root, rel))

    def size(self, rel: str) -> int:
        return os.path.getsize(os.path.join(self.root, rel))

    def open(self, rel: str) -> BinaryIO:
        return open(os.path.join(self.root, rel), "rb")

    def close(self) -> None:
        pass


class _MemberReader(io.RawIOBase):
    """The bytes of one tar member, read from its offset through a file handle of its own."""

    def __init__(self, path: str, offset: int, size: int):
        super().__init__()
        self._file = open(path, "rb")
        self._file.seek(offset)
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._left <= 0:
            return 0
        view = memoryview(buffer)[:min(len(buffer), self._left)]
        got = self._file.readinto(view)
        if not got:
            raise EOFError(f"{self._file.name}: archive ends inside a member")
        self._left -= got
        return got

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()


def _clean_member_name(name: str, where: str) -> str:
    """A member's path inside the archive, normalised; names escaping the archive are rejected."""
    clean = posixpath.normpath(name) if name else "."
    if name.startswith("/") or clean == ".." or clean.startswith("../"):
        raise InvalidArgument(f"{where}: member {name!r} points outside the archive")
    return clean


def _link_target(name: str, info: tarfile.TarInfo, where: str) -> str:
    """The member a symlink or hard link points to; symlinks are relative to their directory."""
    if info.islnk():
        return _clean_member_name(info.linkname, where)
    target = info.linkname.lstrip("/") if info.linkname.startswith("/") else \
        posixpath.join(posixpath.dirname(name), info.linkname)
    clean = posixpath.normpath(target)
    if clean == ".." or clean.startswith("../"):
        raise InvalidArgument(f"{where}: member {name!r} links to {info.linkname!r}, "
                              "outside the archive")
    return clean


class _TarArchive:
    """A tar archive indexed once. Members are streamed from their offsets, never extracted;
    a compressed archive is first decompressed to a temporary file (offsets need a plain tar)."""

    def __init__(self, path: str):
        self.path = path
        self._tmp: str | None = None
        self.members: dict[str, tarfile.TarInfo] = {}
        try:
            with open(path, "rb") as f:
                kind = _compression(f.read(6))
        except OSError as exc:
            raise InvalidArgument(f"{path}: cannot read the archive: {exc.strerror}") from exc
        try:
            self._data = self._decompress(kind) if kind else path
            self._index()
        except BaseException:
            self.close()
            raise

    def _decompress(self, kind: str) -> str:
        fd, self._tmp = tempfile.mkstemp(prefix="ocid-archive-", suffix=".tar")
        with open(self.path, "rb") as raw, os.fdopen(fd, "wb") as out:
            try:
                _copy_stream(_decompressor(kind, raw), out)
            except (OSError, EOFError, lzma.LZMAError, zstandard.ZstdError) as exc:
                raise InvalidArgument(f"{self.path}: cannot decompress the {kind} archive: "
                                      f"{exc}") from exc
        return self._tmp

    def _index(self) -> None:
        end = os.path.getsize(self._data)
        try:
            with tarfile.open(self._data, "r:") as tar:
                for info in tar:
                    name = _clean_member_name(info.name, self.path)
                    if info.isdir():
                        continue
                    if info.issym() or info.islnk():
                        _link_target(name, info, self.path)  # reject links out of the archive now
                    if info.isreg() and info.offset_data + info.size > end:
                        raise InvalidArgument(f"{self.path}: member {info.name!r} is truncated")
                    self.members[name] = info  # a later member wins, as when extracting
        except (tarfile.TarError, EOFError) as exc:
            raise InvalidArgument(f"{self.path}: not a tar archive ({exc})") from exc

    def find(self, name: str) -> tarfile.TarInfo | None:
        """The regular-file member ``name`` with links followed, or None when there is none."""
        current = _clean_member_name(name, self.path)
        for _ in range(MAX_LINK_DEPTH):
            info = self.members.get(current)
            if info is None:
                return None
            if info.issym() or info.islnk():
                current = _link_target(current, info, self.path)
            elif info.isreg() and not info.issparse():
                return info
            else:
                raise InvalidArgument(f"{self.path}: member {name!r} is not a regular file")
        raise InvalidArgument(f"{self.path}: member {name!r}: too many levels of links")

    def exists(self, rel: str) -> bool:
        return self.find(rel) is not None

    def _member(self, rel: str) -> tarfile.TarInfo:
        info = self.find(rel)
        if info is None:
            raise InvalidArgument(f"{self.path}: no member {rel!r}")
        return info

    def size(self, rel: str) -> int:
        return self._member(rel).size

    def open(self, rel: str) -> BinaryIO:
        info = self._member(rel)
        reader = _MemberReader(self._data, info.offset_data, info.size)
        return cast(BinaryIO, io.BufferedReader(reader, CHUNK))

    def close(self) -> None:
        if self._tmp:
            _unlink(self._tmp)
            self._tmp = None


# ---- OCI layout: reading -----------------------------------------------------------------------

def _blob_rel(digest: str, where: str) -> str:
    alg, hexpart = _split_digest(digest, where)
    return f"blobs/{alg}/{hexpart}"


class OciLayoutSource(_Closing):
    """One image (manifest or index) of an OCI layout, in a directory or an archive."""

    def __init__(self, files: _Files, name: str | None, *, label: str):
        self._files = files
        self.label = label
        self._check_layout()
        index = self._read_json("index.json")
        manifests = index.get("manifests") if isinstance(index, dict) else None
        if not isinstance(manifests, list) or not all(isinstance(m, dict) for m in manifests):
            raise InvalidArgument(f"{label}: index.json has no list of manifests")
        self._descriptor = self._choose(manifests, name)
        ref_name = (self._descriptor.get("annotations") or {}).get(REF_NAME_ANNOTATION)
        self.names: list[str] = [ref_name] if isinstance(ref_name, str) and ref_name else []
        self.digest: str = self._descriptor.get("digest", "")
        _split_digest(self.digest, f"{label}: index.json")

    def _check_layout(self) -> None:
        if not self._files.exists("oci-layout"):
            raise InvalidArgument(f"{self.label}: no oci-layout file, not an OCI image layout")
        layout = self._read_json("oci-layout")
        version = layout.get("imageLayoutVersion") if isinstance(layout, dict) else None
        if version != LAYOUT_VERSION:
            raise InvalidArgument(f"{self.label}: oci-layout: unsupported imageLayoutVersion "
                                  f"{version!r}")

    def _read_json(self, rel: str) -> object:
        where = f"{self.label}: {rel}"
        if not self._files.exists(rel):
            raise InvalidArgument(f"{self.label}: no {rel}, not an OCI image layout")
        with self._files.open(rel) as f:
            return _parse_json(_read_limited(f, where), where)

    def _choose(self, manifests: list[dict], name: str | None) -> dict:
        def ref_name(m: dict) -> str:
            value = (m.get("annotations") or {}).get(REF_NAME_ANNOTATION)
            return value if isinstance(value, str) else ""

        listed = ", ".join(repr(ref_name(m) or m.get("digest")) for m in manifests) or "none"
        if name is None:
            if len(manifests) == 1:
                return manifests[0]
            if not manifests:
                raise InvalidArgument(f"{self.label}: index.json lists no images")
            raise InvalidArgument(f"{self.label}: index.json lists {len(manifests)} images, "
                                  f"name one of them: {listed}")
        if index := _SOURCE_INDEX.match(name):
            if int(index[1]) >= len(manifests):
                raise NotFound(f"{self.label}: no image @{index[1]} in index.json "
                               f"({len(manifests)} images)")
            return manifests[int(index[1])]
        for m in manifests:
            if ref_name(m) == name:
                return m
        # containerd writes full references as ref.name, skopeo bare tags: accept either spelling.
        for m in manifests:
            if ref_name(m) and _same_name(ref_name(m), name):
                return m
        raise NotFound(f"{self.label}: no image named {name!r} in index.json (names: {listed})")

    def get_manifest(self) -> tuple[bytes, str]:
        """The chosen manifest (or image index, returned as is) and its media type."""
        where = f"{self.label}: manifest {self.digest}"
        with self.open_blob(self.digest) as f:
            raw = _read_limited(f, where)
        alg = self.digest.split(":", 1)[0]
        if alg in _HEX_LENGTH and f"{alg}:{hashlib.new(alg, raw).hexdigest()}" != self.digest:
            raise InvalidArgument(f"{where}: blob content does not match its digest")
        media_type = self._descriptor.get("mediaType")
        if not isinstance(media_type, str) or not media_type:
            doc = _parse_json(raw, where)
            media_type = doc.get("mediaType") if isinstance(doc, dict) else None
            if not isinstance(media_type, str) or not media_type:
                is_index = isinstance(doc, dict) and "manifests" in doc
                media_type = OCI_INDEX if is_index else OCI_MANIFEST
        return raw, media_type

    def open_blob(self, digest: str) -> BinaryIO:
        """A stream of blob ``digest`` from blobs/<alg>/<hex>."""
        rel = _blob_rel(digest, self.label)
        if not self._files.exists(rel):
            raise NotFound(f"{self.label}: blob {digest} ({rel}) is missing")
        return self._files.open(rel)

    def blob_size(self, digest: str) -> int | None:
        """The size of blob ``digest``, or None when it is missing."""
        rel = _blob_rel(digest, self.label)
        return self._files.size(rel) if self._files.exists(rel) else None

    def close(self) -> None:
        """Release the archive's temporary data, if any."""
        self._files.close()



# ---- OCI layout: writing -----------------------------------------------------------------------

class OciLayoutDestination(_FileDestination):
    """Adds images to an OCI layout directory, created if missing.

    A new layout is built in a hidden sibling directory and renamed into place at commit; an
    existing one gets its blobs in place (content-addressed, invisible until referenced) and
    index.json replaced atomically at commit.
    """

    def __init__(self, path: str, name: str | None):
        self.path = os.path.abspath(path)
        self.name = name
        self.label = f"oci:{path}"
        self._entries: list[dict] = []
        self._done = False
        self._staging: str | None = None
        self._created: list[str] = []  # directories we made inside an existing root
        if os.path.lexists(self.path):
            if not os.path.isdir(self.path):
                raise InvalidArgument(f"{self.label}: exists and is not a directory")
            if os.listdir(self.path) and not os.path.isfile(os.path.join(self.path, "oci-layout")):
                raise InvalidArgument(f"{self.label}: not empty and not an OCI image layout "
                                      "(no oci-layout file)")
            self.root = self.path
        else:
            parent = os.path.dirname(self.path)
            os.makedirs(parent, exist_ok=True)
            self._staging = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(self.path)}.")
            self.root = self._staging

    def _blob_path(self, digest: str) -> str:
        return os.path.join(self.root, _blob_rel(digest, self.label))

    def _ensure_dir(self, path: str) -> None:
        missing: list[str] = []
        while not os.path.isdir(path):
            missing.append(path)
            path = os.path.dirname(path)
        for directory in reversed(missing):
            os.mkdir(directory)
            if self._staging is None:
                self._created.append(directory)

    def put_blob(self, digest: str, size: int, stream: BinaryIO) -> None:
        """Copy a blob into blobs/<alg>/<hex>, verifying digest and size."""
        self._check_open()
        final = self._blob_path(digest)
        if os.path.isfile(final):
            return
        self._ensure_dir(os.path.dirname(final))
        _write_verified(stream, digest, size, final, self.label)

    def put_manifest(self, raw: bytes, media_type: str, names: list[str]) -> None:
        """Store the manifest blob (Docker v2s2 converted to OCI) and record one index.json entry
        per name (``ref.name``)."""
        self._check_open()
        raw, media_type = _docker_to_oci(raw, media_type, self.label)
        digest = _sha256(raw)
        _, referenced = _referenced_blobs(raw, f"{self.label}: manifest {digest}")
        missing = [d for d in referenced if not self.has_blob(d)]
        if missing:
            raise InvalidArgument(f"{self.label}: manifest {digest} references blobs that were "
                                  f"not written: {', '.join(missing)}")
        self.put_blob(digest, len(raw), io.BytesIO(raw))
        descriptor = {"mediaType": media_type, "digest": digest, "size": len(raw)}
        wanted = [n for n in names if n] or ([self.name] if self.name else [])
        if not wanted:
            self._entries.append(descriptor)
        for name in dict.fromkeys(wanted):
            self._entries = [e for e in self._entries if _entry_name(e) != name]
            self._entries.append({**descriptor, "annotations": {REF_NAME_ANNOTATION: name}})

    def commit(self) -> None:
        """Write oci-layout and the merged index.json, then move a new layout into place."""
        self._check_open()
        if not self._entries:
            raise FailedPrecondition(f"{self.label}: commit without a manifest")
        layout_file = os.path.join(self.root, "oci-layout")
        if not os.path.isfile(layout_file):
            layout = json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode()
            _write_file_atomic(layout_file, layout)
        # Two writers adding to one layout must not lose each other's entries: lock the
        # directory across the read-modify-write of index.json.
        lock = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._merge_index()
        finally:
            os.close(lock)
        if self._staging is not None:
            try:
                os.rename(self._staging, self.path)
            except OSError as exc:
                raise InvalidArgument(f"{self.label}: cannot create the layout: "
                                      f"{exc.strerror}") from exc
            os.chmod(self.path, 0o755)
            self._staging = None
        self._done = True

    def _merge_index(self) -> None:
        """Replace entries of the same ref.name (or the same unnamed digest) and add ours."""
        index_file = os.path.join(self.root, "index.json")
        index: dict = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
        if os.path.isfile(index_file):
            where = f"{self.label}: index.json"
            with open(index_file, "rb") as f:
                existing = _parse_json(_read_limited(f, where), where)
            listed = existing.get("manifests", []) if isinstance(existing, dict) else None
            if not isinstance(listed, list):
                raise InvalidArgument(f"{self.label}: index.json has no list of manifests")
            index = cast(dict, existing)
        replaced = {_entry_name(e) for e in self._entries if _entry_name(e)}
        added = {e["digest"] for e in self._entries if not _entry_name(e)}
        kept = [m for m in index.get("manifests", []) if not isinstance(m, dict) or (
            _entry_name(m) not in replaced if _entry_name(m) else m.get("digest") not in added)]
        index["manifests"] = kept + self._entries
        _write_file_atomic(index_file, json.dumps(index, separators=(",", ":")).encode())

    def close(self) -> None:
        """Without a commit, remove what this destination created (orphan blobs in an existing
        layout are left: another writer may be about to reference them)."""
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None
        if not self._done:
            for directory in reversed(self._created):
                shutil.rmtree(directory, ignore_errors=True)
        self._done = True



_DOCKER_TO_OCI_LAYER = {
    DOCKER_LAYER: OCI_LAYER,
    DOCKER_LAYER_GZIP: OCI_LAYER_GZIP,
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip":
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
}


def _docker_to_oci(raw: bytes, media_type: str, where: str) -> tuple[bytes, str]:
    """A Docker v2s2 manifest rewritten as OCI, as skopeo does (containers/image ignores non-OCI
    entries of index.json); the config and layer blobs, hence the image ID, are unchanged."""
    if media_type != DOCKER_MANIFEST:
        return raw, media_type
    doc, _ = _referenced_blobs(raw, f"{where}: manifest {_sha256(raw)}")
    layers = []
    for layer in doc["layers"]:
        if layer.get("mediaType") not in _DOCKER_TO_OCI_LAYER:
            raise InvalidArgument(f"{where}: cannot convert layer {layer.get('digest')} of "
                                  f"media type {layer.get('mediaType')!r} to OCI")
        layers.append({**layer, "mediaType": _DOCKER_TO_OCI_LAYER[layer["mediaType"]]})
    converted = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                 "config": {**doc["config"], "mediaType": OCI_CONFIG}, "layers": layers}
    if "annotations" in doc:
        converted["annotations"] = doc["annotations"]
    return json.dumps(converted, separators=(",", ":")).encode(), OCI_MANIFEST


def _entry_name(entry: dict) -> str:
    value = (entry.get("annotations") or {}).get(REF_NAME_ANNOTATION)
    return value if isinstance(value, str) else ""


# ---- tar writing -------------------------------------------------------------------------------

def _tar_info(name: str, size: int = 0, *, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    """A reproducible header: root-owned, mtime 0."""
    info = tarfile.TarInfo(name)
    info.size, info.type, info.mtime = size, kind, 0
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class _TarOutput:
    """A tarball written next to its final path and renamed into place when finished."""

    def __init__(self, path: str, label: str):
        self.path = os.path.abspath(path)
        self.label = label
        if os.path.isdir(self.path):
            raise InvalidArgument(f"{label}: is a directory")
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(dir=os.path.dirname(self.path),
                                         prefix=f".{os.path.basename(self.path)}.")
        self._file = os.fdopen(fd, "wb")
        self.tar = tarfile.open(fileobj=self._file, mode="w:", format=tarfile.PAX_FORMAT)

    def add_bytes(self, name: str, data: bytes) -> None:
        self.tar.addfile(_tar_info(name, len(data)), io.BytesIO(data))

    def add_file(self, name: str, path: str) -> None:
        with open(path, "rb") as f:
            self.tar.addfile(_tar_info(name, os.fstat(f.fileno()).st_size), f)

    def add_dir(self, name: str) -> None:
        self.tar.addfile(_tar_info(name, kind=tarfile.DIRTYPE))

    def finish(self) -> None:
        self.tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.chmod(self._tmp, 0o644)
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self.tar.close()
        self._file.close()
        _unlink(self._tmp)


# ---- oci-archive: writing ----------------------------------------------------------------------

class OciArchiveDestination(_Closing):
    """Builds an OCI layout in a temporary directory and tars it at commit, replacing ``path``."""

    def __init__(self, path: str, name: str | None):
        self.path = path
        self.label = f"oci-archive:{path}"
        if os.path.isdir(path):
            raise InvalidArgument(f"{self.label}: is a directory")
        self._tmp = tempfile.mkdtemp(prefix="ocid-oci-archive-")
        self._layout = OciLayoutDestination(os.path.join(self._tmp, "layout"), name)
        self._layout.label = self.label

    def has_blob(self, digest: str) -> bool:
        """Whether the blob was already put."""
        return self._layout.has_blob(digest)

    def put_blob(self, digest: str, size: int, stream: BinaryIO) -> None:
        """Copy a blob into the staged layout, verifying digest and size."""
        self._layout.put_blob(digest, size, stream)

    def put_manifest(self, raw: bytes, media_type: str, names: list[str]) -> None:
        """Add an image to the staged layout's index.json."""
        self._layout.put_manifest(raw, media_type, names)

    def commit(self) -> None:
        """Tar the staged layout next to ``path`` and rename it into place."""
        self._layout.commit()
        root = self._layout.path
        out = _TarOutput(self.path, self.label)
        try:
            out.add_file("oci-layout", os.path.join(root, "oci-layout"))
            out.add_file("index.json", os.path.join(root, "index.json"))
            out.add_dir("blobs")
            for alg in sorted(os.listdir(os.path.join(root, "blobs"))):
                out.add_dir(f"blobs/{alg}")
                for blob in sorted(os.listdir(os.path.join(root, "blobs", alg))):
                    out.add_file(f"blobs/{alg}/{blob}", os.path.join(root, "blobs", alg, blob))
            out.finish()
        except BaseException:
            out.abort()
            raise

    def close(self) -> None:
        """Remove the staged layout."""
        self._layout.close()
        shutil.rmtree(self._tmp, ignore_errors=True)



# ---- docker-archive: reading -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _ArchivedBlob:
    """A blob served from a docker-archive member."""

    member: str
    size: int


class DockerArchiveSource(_Closing):
    """One image of a ``docker save`` tarball, with a synthesised Docker v2s2 manifest.

    Layer digests are the sha256 of the layer members as stored, so for the uncompressed layers
    ``docker save`` writes they equal the config's diff_ids, and the image ID survives a round trip.
    """

    def __init__(self, path: str, name: str | None):
        self.label = f"docker-archive:{path}"
        self._archive = _TarArchive(path)
        try:
            item = self._choose(self._read_items(), name)
            self.names: list[str] = list(item["RepoTags"])
            self._config_member: str = item["Config"]
            self._layer_members: list[str] = item["Layers"]
            for member in [self._config_member, *self._layer_members]:
                if self._archive.find(member) is None:
                    raise InvalidArgument(f"{self.label}: manifest.json names {member!r}, "
                                          "which is not in the archive")
        except BaseException:
            self._archive.close()
            raise
        self._lock = threading.Lock()
        self._manifest: bytes | None = None
        self._media_type = DOCKER_MANIFEST
        self._blobs: dict[str, _ArchivedBlob] = {}

    def _read_items(self) -> list[dict]:
        where = f"{self.label}: manifest.json"
        if self._archive.find("manifest.json") is None:
            hint = (" (it has an index.json: try oci-archive:)"
                    if self._archive.exists("index.json") else "")
            raise InvalidArgument(f"{self.label}: no manifest.json, not a docker-archive{hint}")
        with self._archive.open("manifest.json") as f:
            items = _parse_json(_read_limited(f, where), where)
        if not isinstance(items, list) or not items:
            raise InvalidArgument(f"{where}: expected a non-empty list of images")
        for number, item in enumerate(items):
            if not isinstance(item, dict):
                raise InvalidArgument(f"{where}: entry {number} is not an object")
            item.setdefault("RepoTags", [])
            if item["RepoTags"] is None:
                item["RepoTags"] = []
            if (not isinstance(item.get("Config"), str)
                    or not isinstance(item.get("Layers"), list)
                    or not all(isinstance(x, str) for x in item["Layers"])
                    or not isinstance(item["RepoTags"], list)
                    or not all(isinstance(x, str) for x in item["RepoTags"])):
                raise InvalidArgument(f"{where}: entry {number} needs Config (a string), Layers "
                                      "and RepoTags (lists of strings)")
        return items

    def _choose(self, items: list[dict], name: str | None) -> dict:
        listed = ", ".join(repr(t) for item in items for t in item["RepoTags"]) or "none"
        if name is None:
            if len(items) == 1:
                return items[0]
            raise InvalidArgument(f"{self.label}: manifest.json lists {len(items)} images, "
                                  f"name one of them (repo:tag or @N): {listed}")
        if index := _SOURCE_INDEX.match(name):
            if int(index[1]) >= len(items):
                raise NotFound(f"{self.label}: no image @{index[1]} in manifest.json "
                               f"({len(items)} images)")
            return items[int(index[1])]
        for item in items:
            if any(_same_name(tag, name) for tag in item["RepoTags"]):
                return item
        raise NotFound(f"{self.label}: no image named {name!r} in manifest.json (names: {listed})")

    def _hash_member(self, member: str) -> tuple[str, str, int]:
        """(sha256 digest, compression, size) of a member, read once."""
        hasher = hashlib.sha256()
        with self._archive.open(member) as f:
            head = f.read(CHUNK)
            hasher.update(head)
            size = len(head)
            while chunk := f.read(CHUNK):
                hasher.update(chunk)
                size += len(chunk)
        return f"sha256:{hasher.hexdigest()}", _compression(head[:6]), size

    def _build(self) -> None:
        with self._lock:
            if self._manifest is not None:
                return
            where = f"{self.label}: {self._config_member}"
            with self._archive.open(self._config_member) as f:
                config_raw = _read_limited(f, where)
            config = _parse_json(config_raw, where)
            try:
                diff_ids = list(config["rootfs"]["diff_ids"])  # type: ignore[index]
            except (KeyError, TypeError) as exc:
                raise InvalidArgument(f"{where}: not an image config (no rootfs.diff_ids)") from exc
            if len(diff_ids) != len(self._layer_members):
                raise InvalidArgument(f"{self.label}: manifest.json lists "
                                      f"{len(self._layer_members)} layers but "
                                      f"{self._config_member} has {len(diff_ids)} diff_ids")
            config_digest = _sha256(config_raw)
            blobs = {config_digest: _ArchivedBlob(self._config_member, len(config_raw))}
            seen: dict[str, tuple[str, str, int]] = {}  # the same file may back several layers
            layers = []
            for member, diff_id in zip(self._layer_members, diff_ids):
                info = self._archive.find(member)
                assert info is not None  # checked in __init__
                key = f"{info.offset_data}"
                if key not in seen:
                    seen[key] = self._hash_member(member)
                digest, kind, size = seen[key]
                if kind not in ("", "gzip", "zstd"):
                    raise InvalidArgument(f"{self.label}: layer {member!r} is {kind}-compressed, "
                                          "which images cannot carry")
                if not kind and digest != diff_id:
                    raise InvalidArgument(f"{self.label}: layer {member!r} has digest {digest} but "
                                          f"the config says its diff_id is {diff_id}")
                layers.append((digest, kind, size))
                blobs[digest] = _ArchivedBlob(member, size)
            # Docker v2s2 has no zstd layer type: an archive with one is described as OCI.
            oci = any(kind == "zstd" for _, kind, _ in layers)
            types = ({"": OCI_LAYER, "gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD} if oci
                     else {"": DOCKER_LAYER, "gzip": DOCKER_LAYER_GZIP})
            self._media_type = OCI_MANIFEST if oci else DOCKER_MANIFEST
            manifest = {
                "schemaVersion": 2,
                "mediaType": self._media_type,
                "config": {"mediaType": OCI_CONFIG if oci else DOCKER_CONFIG,
                           "size": len(config_raw), "digest": config_digest},
                "layers": [{"mediaType": types[kind], "size": size, "digest": digest}
                           for digest, kind, size in layers],
            }
            self._blobs = blobs
            self._manifest = json.dumps(manifest, indent=3).encode()

    def get_manifest(self) -> tuple[bytes, str]:
        """A manifest synthesised from manifest.json; layer files are hashed once, here."""
        self._build()
        assert self._manifest is not None
        return self._manifest, self._media_type

    def open_blob(self, digest: str) -> BinaryIO:
        """A stream of the config or a layer, straight from the archive."""
        _split_digest(digest, self.label)
        self._build()
        if self._manifest is not None and digest == _sha256(self._manifest):
            return cast(BinaryIO, io.BytesIO(self._manifest))
        blob = self._blobs.get(digest)
        if blob is None:
            raise NotFound(f"{self.label}: no blob {digest} in the image")
        return self._archive.open(blob.member)

    def blob_size(self, digest: str) -> int | None:
        """The size of the config or a layer as stored, None for other digests."""
        self._build()
        blob = self._blobs.get(digest)
        return blob.size if blob else None

    def close(self) -> None:
        """Release the archive's temporary data, if any."""
        self._archive.close()



# ---- docker-archive: writing -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _ArchiveImage:
    """One image staged for a docker-archive."""

    config_digest: str
    config: dict
    diff_ids: tuple[str, ...]
    repo_tags: tuple[str, ...]


def _legacy_layers(config: dict, diff_ids: tuple[str, ...]) -> list[tuple[str, bytes]]:
    """(v1 ID, v1 json) per layer for the legacy ``<id>/layer.tar`` directories.

    The IDs chain the diff_ids (so a layer repeated in one image still gets its own directory),
    as containers/image computes them; ``docker load`` reads manifest.json and ignores them.
    """
    result: list[tuple[str, bytes]] = []
    parent, chain = "", ""
    for number, diff_id in enumerate(diff_ids):
        layer: dict = {}
        if parent:
            layer["parent"] = parent
        if number == len(diff_ids) - 1:
            for key in ("architecture", "config", "container", "container_config", "created",
                        "docker_version", "os"):
                if key in config:
                    layer[key] = config[key]
        chain = diff_id if not chain else _sha256(f"{chain} {diff_id}".encode())
        keyed = json.dumps({**layer, "layer_id": chain}, sort_keys=True).encode()
        v1_id = hashlib.sha256(keyed).hexdigest()
        layer["id"] = v1_id
        result.append((v1_id, json.dumps(layer, sort_keys=True).encode()))
        parent = v1_id
    return result


class DockerArchiveDestination(_FileDestination):
    """Writes a ``docker save`` tarball: ``<hex>.json`` configs, ``<v1 id>/layer.tar`` uncompressed
    layers (with legacy ``json`` and ``VERSION``), ``manifest.json`` and ``repositories``."""

    def __init__(self, path: str, name: str | None):
        self.path = path
        self.name = name
        self.label = f"docker-archive:{path}"
        if os.path.isdir(path):
            raise InvalidArgument(f"{self.label}: is a directory")
        self._tmp = tempfile.mkdtemp(prefix="ocid-docker-archive-")
        os.mkdir(os.path.join(self._tmp, "blobs"))
        os.mkdir(os.path.join(self._tmp, "layers"))
        self._images: list[_ArchiveImage] = []
        self._done = False

    def _blob_path(self, digest: str) -> str:
        alg, hexpart = _split_digest(digest, self.label)
        return os.path.join(self._tmp, "blobs", f"{alg}-{hexpart}")

    def _layer_path(self, diff_id: str) -> str:
        alg, hexpart = _split_digest(diff_id, self.label)
        return os.path.join(self._tmp, "layers", f"{alg}-{hexpart}.tar")

    def put_blob(self, digest: str, size: int, stream: BinaryIO) -> None:
        """Stage a blob as given, verifying digest and size (layers are decompressed later)."""
        self._check_open()
        final = self._blob_path(digest)
        if not os.path.isfile(final):
            _write_verified(stream, digest, size, final, self.label)

    def put_manifest(self, raw: bytes, media_type: str, names: list[str]) -> None:
        """Add the image; its layers are decompressed into diff tars checked against diff_ids."""
        self._check_open()
        where = f"{self.label}: manifest {_sha256(raw)}"
        doc, _ = _referenced_blobs(raw, where)
        if "manifests" in doc or media_type in (OCI_INDEX, DOCKER_MANIFEST_LIST):
            raise InvalidArgument(f"{where}: a docker-archive holds single-platform images, "
                                  "not an index")
        config_digest: str = doc["config"]["digest"]
        layer_digests: list[str] = [layer["digest"] for layer in doc["layers"]]
        missing = [d for d in [config_digest, *layer_digests] if not self.has_blob(d)]
        if missing:
            raise InvalidArgument(f"{where}: references blobs that were not written: "
                                  f"{', '.join(missing)}")
        with open(self._blob_path(config_digest), "rb") as f:
            config_where = f"{where}: config {config_digest}"
            config = _parse_json(_read_limited(f, config_where), config_where)
        try:
            diff_ids = tuple(config["rootfs"]["diff_ids"])  # type: ignore[index]
        except (KeyError, TypeError) as exc:
            raise InvalidArgument(f"{where}: config {config_digest} has no "
                                  "rootfs.diff_ids") from exc
        if len(diff_ids) != len(layer_digests):
            raise InvalidArgument(f"{where}: {len(layer_digests)} layers but config "
                                  f"{config_digest} has {len(diff_ids)} diff_ids")
        for digest, diff_id in zip(layer_digests, diff_ids):
            self._stage_layer(digest, diff_id, where)
        wanted = [n for n in names if n] or ([self.name] if self.name else [])
        repo_tags = []
        for name in dict.fromkeys(wanted):
            if "@" in name:
                raise InvalidArgument(f"{self.label}: {name!r}: docker-archive names need a tag, "
                                      "not a digest")
            repo_tags.append(normalize_name(name))
        self._images.append(_ArchiveImage(config_digest, cast(dict, config), diff_ids,
                                          tuple(dict.fromkeys(repo_tags))))

    def _stage_layer(self, digest: str, diff_id: str, where: str) -> None:
        """Decompress blob ``digest`` into the diff tar ``diff_id``, checking its digest."""
        target = self._layer_path(diff_id)
        if os.path.isfile(target):
            return
        source = self._blob_path(digest)
        with open(source, "rb") as f:
            kind = _compression(f.read(6))
        if not kind:
            if digest != diff_id:
                raise InvalidArgument(f"{where}: uncompressed layer {digest} does not match its "
                                      f"diff_id {diff_id}")
            os.link(source, target)
            return
        if kind not in ("gzip", "zstd"):
            raise InvalidArgument(f"{where}: layer {digest} is {kind}-compressed, which images "
                                  "cannot carry")
        hasher = _hasher(diff_id, where)
        tmp = f"{target}.tmp"
        try:
            with open(source, "rb") as raw, open(tmp, "wb") as out:
                try:
                    _copy_stream(_decompressor(kind, raw), out, hasher)
                except (OSError, EOFError, zstandard.ZstdError) as exc:
                    raise InvalidArgument(f"{where}: cannot decompress layer {digest}: "
                                          f"{exc}") from exc
            actual = f"{diff_id.split(':', 1)[0]}:{hasher.hexdigest()}"
            if actual != diff_id:
                raise InvalidArgument(f"{where}: layer {digest} decompresses to {actual}, but the "
                                      f"config says its diff_id is {diff_id}")
            os.replace(tmp, target)
        finally:
            _unlink(tmp)

    def commit(self) -> None:
        """Write the tarball next to ``path`` and rename it into place."""
        self._check_open()
        if not self._images:
            raise FailedPrecondition(f"{self.label}: commit without a manifest")
        out = _TarOutput(self.path, self.label)
        try:
            self._write(out)
            out.finish()
        except BaseException:
            out.abort()
            raise
        self._done = True

    def _write(self, out: _TarOutput) -> None:
        items: list[dict] = []
        repositories: dict[str, dict[str, str]] = {}
        written: set[str] = set()
        for image in self._images:
            config_name = f"{_split_digest(image.config_digest, self.label)[1]}.json"
            if config_name not in written:
                out.add_file(config_name, self._blob_path(image.config_digest))
                written.add(config_name)
            layer_names = []
            for (v1_id, v1_json), diff_id in zip(_legacy_layers(image.config, image.diff_ids),
                                                 image.diff_ids):
                if v1_id not in written:
                    out.add_dir(v1_id)
                    out.add_bytes(f"{v1_id}/VERSION", b"1.0")
                    out.add_bytes(f"{v1_id}/json", v1_json)
                    out.add_file(f"{v1_id}/layer.tar", self._layer_path(diff_id))
                    written.add(v1_id)
                layer_names.append(f"{v1_id}/layer.tar")
            items.append({"Config": config_name, "RepoTags": list(image.repo_tags),
                          "Layers": layer_names})
            if layer_names:
                top = layer_names[-1].split("/", 1)[0]
                for repo_tag in image.repo_tags:
                    repo, _, tag = repo_tag.rpartition(":")
                    repositories.setdefault(repo, {})[tag] = top
        out.add_bytes("manifest.json", json.dumps(items, separators=(",", ":")).encode())
        out.add_bytes("repositories", json.dumps(repositories, separators=(",", ":")).encode())

    def close(self) -> None:
        """Remove the staged blobs."""
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._done = True


