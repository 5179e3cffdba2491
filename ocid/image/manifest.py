"""Image manifests and indexes: Docker v2 schema 2 and OCI, parsed into value objects.

Follows the OCI image spec (manifest.md, image-index.md, descriptor.md) and Docker's
"Image Manifest V2, Schema 2". Schema 1 manifests are recognised only to be refused.
"""

from __future__ import annotations

import json
import platform as _platform
import re
from dataclasses import dataclass
from typing import Any

from ocid.errors import InvalidArgument, NotFound
from ocid.storage.digest import sha256_digest as _sha256_digest

# Manifests and indexes.
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

# Image configs.
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"

# Layers.
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"  # what `docker save` archives hold
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDIST = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_NONDIST_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"

MANIFEST_TYPES = (DOCKER_MANIFEST, OCI_MANIFEST)
INDEX_TYPES = (DOCKER_MANIFEST_LIST, OCI_INDEX)
SCHEMA1_TYPES = (DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED)
# What a registry client accepts; schema 1 is listed so that old images get a clear refusal
# instead of a registry-side conversion or a 404.
ALL_MANIFEST_TYPES = (*INDEX_TYPES, *MANIFEST_TYPES, *SCHEMA1_TYPES)
LAYER_TYPES = (DOCKER_LAYER_GZIP, DOCKER_FOREIGN_LAYER_GZIP, OCI_LAYER, OCI_LAYER_GZIP,
               OCI_LAYER_ZSTD, OCI_LAYER_NONDIST, OCI_LAYER_NONDIST_GZIP, OCI_LAYER_NONDIST_ZSTD)

# fullmatch, so a trailing newline is not accepted as "$" would
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}")
# Go architecture names (GOARCH) for what platform.machine() reports.
_GO_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
            "i386": "386", "i686": "386", "ppc64le": "ppc64le", "s390x": "s390x",
            "riscv64": "riscv64", "mips64": "mips64"}
# The variant an architecture has when none is written (containerd's normalisation).
_DEFAULT_VARIANT = {"arm64": "v8", "arm": "v7"}


@dataclass(frozen=True, slots=True)
class Platform:
    """An OS, a CPU architecture (Go names) and an optional variant."""

    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse "os/arch[/variant]", e.g. "linux/arm64/v8"; Go arch aliases are normalised."""
        parts = text.strip().lower().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise InvalidArgument(f"invalid platform {text!r}: want os/arch[/variant], "
                                  "e.g. linux/amd64 or linux/arm64/v8")
        arch = _GO_ARCH.get(parts[1], parts[1])
        return cls(parts[0], arch, parts[2] if len(parts) == 3 else "")

    @classmethod
    def host(cls) -> Platform:
        """The platform this machine runs images of."""
        machine = _platform.machine().lower()
        if machine.startswith("armv") and machine[4:5].isdigit():
            return cls("linux", "arm", f"v{machine[4]}")  # armv7l -> arm/v7
        return cls("linux", _GO_ARCH.get(machine, machine))

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A reference to content by media type, digest and size (OCI descriptor)."""

    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    urls: tuple[str, ...] = ()
    annotations: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Manifest:
    """One image: its config and its layers, bottom first."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    raw: bytes
    digest: str
    annotations: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Index:
    """A multi-platform image: an OCI index or a Docker manifest list."""

    media_type: str
    manifests: tuple[Descriptor, ...]
    raw: bytes
    digest: str
    annotations: dict[str, str] | None = None


def sha256_digest(data: bytes) -> str:
    """The "sha256:<hex>" digest of ``data``."""
    return _sha256_digest(data)


def validate_digest(d: str) -> str:
    """Return ``d`` if it is a well-formed sha256/sha512 digest; InvalidArgument otherwise."""
    if not isinstance(d, str) or not _DIGEST_RE.fullmatch(d):
        raise InvalidArgument(f"invalid digest {d!r} (want sha256:<64 hex> or sha512:<128 hex>)")
    return d


def detect_media_type(raw: bytes, declared: str | None = None) -> str:
    """The manifest media type of ``raw``: the declared one if specific, else from the JSON."""
    return _detect(_load(raw), declared)


def _load(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"manifest is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidArgument(f"manifest is not a JSON object but {type(doc).__name__}")
    return doc


def _detect(doc: dict[str, Any], declared: str | None) -> str:
    declared = (declared or "").partition(";")[0].strip().lower()
    inner = doc.get("mediaType")
    if inner is not None and not isinstance(inner, str):
        raise InvalidArgument("manifest mediaType is not a string")
    if doc.get("schemaVersion") == 1 or declared in SCHEMA1_TYPES or inner in SCHEMA1_TYPES:
        return DOCKER_SCHEMA1_SIGNED if "signatures" in doc else DOCKER_SCHEMA1
    if declared in ALL_MANIFEST_TYPES and inner in ALL_MANIFEST_TYPES and declared != inner:
        raise InvalidArgument(f"manifest is served as {declared} but its mediaType is {inner}")
    if inner:
        return inner
    if declared in ALL_MANIFEST_TYPES:
        return declared
    # No usable type (e.g. served as application/json): OCI lets mediaType be omitted.
    if "manifests" in doc:
        return OCI_INDEX
    if "layers" in doc or "config" in doc:
        return OCI_MANIFEST
    raise InvalidArgument("cannot tell the manifest type: no mediaType, manifests or layers")


def _str_map(value: Any, where: str) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise InvalidArgument(f"{where}: annotations must map strings to strings")
    return dict(value)


def _platform_of(value: Any, where: str) -> Platform | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where}: platform is not an object")
    fields = [value.get(k, "") for k in ("os", "architecture", "variant")]
    if not all(isinstance(f, str) for f in fields) or not fields[0] or not fields[1]:
        raise InvalidArgument(f"{where}: platform needs string os and architecture")
    return Platform(*fields)


def _descriptor(value: Any, where: str, *, need_type: bool = True) -> Descriptor:
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where} is not a descriptor object")
    media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
    if not isinstance(media_type, str) or (need_type and not media_type):
        raise InvalidArgument(f"{where} has no mediaType")
    if not isinstance(digest, str):
        raise InvalidArgument(f"{where} has no digest")
    try:
        validate_digest(digest)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{where}: {exc}") from exc
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidArgument(f"{where} ({digest}) has no valid size")
    urls = value.get("urls") or []
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise InvalidArgument(f"{where} ({digest}): urls must be a list of strings")
    return Descriptor(media_type, digest, size, _platform_of(value.get("platform"), where),
                      tuple(urls), _str_map(value.get("annotations"), where))


def _descriptor_list(doc: dict[str, Any], key: str, what: str) -> tuple[Descriptor, ...]:
    items = doc.get(key)
    if not isinstance(items, list):
        raise InvalidArgument(f"manifest has no {key} list")
    return tuple(_descriptor(item, f"{what} {i}") for i, item in enumerate(items))


def parse_manifest(raw: bytes, media_type: str | None = None) -> Manifest | Index:
    """Parse an image manifest or index (Docker v2s2 or OCI); InvalidArgument if malformed."""
    doc = _load(raw)
    kind = _detect(doc, media_type)
    if kind in SCHEMA1_TYPES:
        raise InvalidArgument("Docker schema 1 manifests are not supported; push the image again "
                              "with a current client")
    if kind not in MANIFEST_TYPES and kind not in INDEX_TYPES:
        raise InvalidArgument(f"unsupported manifest media type {kind!r}")
    if doc.get("schemaVersion") != 2:
        raise InvalidArgument(f"{kind} manifest has schemaVersion {doc.get('schemaVersion')!r}, "
                              "want 2")
    digest = sha256_digest(raw)
    annotations = _str_map(doc.get("annotations"), "manifest")
    if kind in INDEX_TYPES:
        return Index(kind, _descriptor_list(doc, "manifests", "index entry"), raw, digest,
                     annotations)
    if "config" not in doc:
        raise InvalidArgument("manifest has no config descriptor")
    return Manifest(kind, _descriptor(doc["config"], "config"),
                    _descriptor_list(doc, "layers", "layer"), raw, digest, annotations)


def _compatible_variants(arch: str, variant: str) -> list[str]:
    """Variants that run on ``arch``/``variant``, best first (an armv7 CPU runs v6 and v5)."""
    wanted = variant or _DEFAULT_VARIANT.get(arch, "")
    if arch == "arm" and wanted[1:].isdigit():
        return [f"v{n}" for n in range(int(wanted[1:]), 4, -1)]
    return [wanted]


def select_platform(index: Index, want: Platform) -> Descriptor:
    """The index entry for ``want``: exact match first, then variant fallback; else NotFound."""
    arch = _GO_ARCH.get(want.architecture, want.architecture)
    candidates = [d for d in index.manifests if d.platform is not None
                  and d.platform.os == want.os
                  and _GO_ARCH.get(d.platform.architecture, d.platform.architecture) == arch]
    for d in candidates:
        if d.platform is not None and d.platform.variant == want.variant:
            return d
    for variant in _compatible_variants(arch, want.variant):
        for d in candidates:
            if d.platform is not None and (
                    d.platform.variant or _DEFAULT_VARIANT.get(arch, "")) == variant:
                return d
    if candidates and not want.variant:
        return candidates[0]  # no variant asked for: any build of the architecture will do
    offered = sorted({str(d.platform) for d in index.manifests if d.platform is not None})
    raise NotFound(f"image index {index.digest} has no image for platform {want}; it offers: "
                   f"{', '.join(offered) or 'no platform-tagged images'}")
