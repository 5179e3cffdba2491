"""Manifest and index parsing, digests and platform selection (ocid.image.manifest)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ocid.errors import InvalidArgument, NotFound
from ocid.image import manifest as mf
from ocid.image.manifest import (Descriptor, Index, Manifest, Platform, parse_manifest,
                                 select_platform, sha256_digest, validate_digest)

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64


def _raw(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def _manifest(media_type: str | None = mf.OCI_MANIFEST, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "config": {"mediaType": mf.OCI_CONFIG, "digest": D1, "size": 10},
        "layers": [{"mediaType": mf.OCI_LAYER_GZIP, "digest": D2, "size": 20},
                   {"mediaType": mf.OCI_LAYER_ZSTD, "digest": D3, "size": 30,
                    "urls": ["https://example.com/l"], "annotations": {"a": "b"}}],
        **extra}
    if media_type:
        doc["mediaType"] = media_type
    return doc


def _entry(digest: str, platform: str | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"mediaType": mf.OCI_MANIFEST, "digest": digest, "size": 100}
    if platform:
        os_, arch, *variant = platform.split("/")
        entry["platform"] = {"os": os_, "architecture": arch}
        if variant:
            entry["platform"]["variant"] = variant[0]
    return entry


def _index(*platforms: str | None, media_type: str = mf.OCI_INDEX) -> Index:
    entries = [_entry("sha256:" + f"{i:064x}", p) for i, p in enumerate(platforms)]
    parsed = parse_manifest(_raw({"schemaVersion": 2, "mediaType": media_type,
                                  "manifests": entries}))
    assert isinstance(parsed, Index)
    return parsed


def _pick(index: Index, want: str) -> str:
    platform = select_platform(index, Platform.parse(want)).platform
    assert platform is not None
    return str(platform)


# ---- constants, digests ---------------------------------------------------------------------

def test_media_type_constants() -> None:
    assert mf.DOCKER_MANIFEST == "application/vnd.docker.distribution.manifest.v2+json"
    assert mf.DOCKER_MANIFEST_LIST == "application/vnd.docker.distribution.manifest.list.v2+json"
    assert mf.OCI_INDEX == "application/vnd.oci.image.index.v1+json"
    assert mf.DOCKER_LAYER_GZIP.endswith("rootfs.diff.tar.gzip")
    assert mf.OCI_LAYER_NONDIST_ZSTD == ("application/vnd.oci.image.layer.nondistributable"
                                         ".v1.tar+zstd")
    assert mf.DOCKER_SCHEMA1_SIGNED.endswith("+prettyjws")
    assert set(mf.ALL_MANIFEST_TYPES) >= {mf.OCI_MANIFEST, mf.OCI_INDEX, mf.DOCKER_MANIFEST,
                                          mf.DOCKER_MANIFEST_LIST}


def test_sha256_digest_and_validate() -> None:
    assert sha256_digest(b"") == ("sha256:e3b0c44298fc1c149afbf4c8996fb924"
                                  "27ae41e4649b934ca495991b7852b855")
    assert validate_digest(D1) == D1
    for bad in ("sha256:abc", "md5:" + "1" * 32, "sha256:" + "G" * 64, D1.upper(), "", D1 + "\n"):
        with pytest.raises(InvalidArgument, match="invalid digest"):
            validate_digest(bad)


# ---- platforms ------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("linux/amd64", Platform("linux", "amd64")),
    ("linux/arm64/v8", Platform("linux", "arm64", "v8")),
    ("Linux/x86_64", Platform("linux", "amd64")),
    ("linux/aarch64", Platform("linux", "arm64")),
    ("windows/amd64", Platform("windows", "amd64")),
])
def test_platform_parse(text: str, expected: Platform) -> None:
    assert Platform.parse(text) == expected


@pytest.mark.parametrize("text", ["linux", "linux/", "/amd64", "linux/arm/v7/x", ""])
def test_platform_parse_rejects(text: str) -> None:
    with pytest.raises(InvalidArgument, match="os/arch"):
        Platform.parse(text)


@pytest.mark.parametrize("machine, expected", [
    ("x86_64", "linux/amd64"), ("aarch64", "linux/arm64"), ("armv7l", "linux/arm/v7"),
    ("ppc64le", "linux/ppc64le"), ("s390x", "linux/s390x"),
])
def test_platform_host(monkeypatch: pytest.MonkeyPatch, machine: str, expected: str) -> None:
    monkeypatch.setattr(mf._platform, "machine", lambda: machine)
    assert str(Platform.host()) == expected


def test_platform_is_frozen() -> None:
    with pytest.raises(AttributeError):
        Platform("linux", "amd64").os = "windows"  # type: ignore[misc]


# ---- manifests ------------------------------------------------------------------------------

def test_parse_oci_manifest() -> None:
    raw = _raw(_manifest(annotations={"org.example": "x"}))
    parsed = parse_manifest(raw, mf.OCI_MANIFEST)
    assert isinstance(parsed, Manifest)
    assert parsed.media_type == mf.OCI_MANIFEST
    assert parsed.config == Descriptor(mf.OCI_CONFIG, D1, 10)
    assert [layer.digest for layer in parsed.layers] == [D2, D3]
    assert parsed.layers[1].urls == ("https://example.com/l",)
    assert parsed.layers[1].annotations == {"a": "b"}
    assert parsed.raw == raw and parsed.digest == sha256_digest(raw)
    assert parsed.annotations == {"org.example": "x"}


def test_parse_docker_manifest_and_content_type_parameters() -> None:
    doc = _manifest(mf.DOCKER_MANIFEST)
    doc["config"]["mediaType"] = mf.DOCKER_CONFIG
    parsed = parse_manifest(_raw(doc), mf.DOCKER_MANIFEST + "; charset=utf-8")
    assert isinstance(parsed, Manifest) and parsed.media_type == mf.DOCKER_MANIFEST


@pytest.mark.parametrize("declared", [None, "application/json", "text/plain", mf.OCI_MANIFEST])
def test_detects_type_without_media_type_field(declared: str | None) -> None:
    parsed = parse_manifest(_raw(_manifest(None)), declared)
    assert isinstance(parsed, Manifest) and parsed.media_type == mf.OCI_MANIFEST


def test_detects_index_without_media_type_field() -> None:
    parsed = parse_manifest(_raw({"schemaVersion": 2, "manifests": [_entry(D1, "linux/amd64")]}))
    assert isinstance(parsed, Index) and parsed.media_type == mf.OCI_INDEX


def test_declared_type_only() -> None:
    parsed = parse_manifest(_raw({"schemaVersion": 2, "manifests": []}), mf.DOCKER_MANIFEST_LIST)
    assert isinstance(parsed, Index) and parsed.media_type == mf.DOCKER_MANIFEST_LIST
    assert parsed.manifests == ()


def test_parse_index_platforms() -> None:
    index = _index("linux/amd64", "linux/arm64/v8", None, media_type=mf.DOCKER_MANIFEST_LIST)
    assert index.media_type == mf.DOCKER_MANIFEST_LIST
    assert [d.platform for d in index.manifests] == [
        Platform("linux", "amd64"), Platform("linux", "arm64", "v8"), None]
    assert index.digest == sha256_digest(index.raw)


@pytest.mark.parametrize("doc, declared", [
    ({"schemaVersion": 1, "name": "x", "tag": "y", "fsLayers": []}, None),
    ({"schemaVersion": 1, "fsLayers": [], "signatures": []}, mf.DOCKER_SCHEMA1_SIGNED),
    ({"schemaVersion": 2, "layers": []}, mf.DOCKER_SCHEMA1),
])
def test_schema1_refused(doc: dict[str, Any], declared: str | None) -> None:
    with pytest.raises(InvalidArgument, match="Docker schema 1 manifests are not supported; "
                                              "push the image again with a current client"):
        parse_manifest(_raw(doc), declared)


def _broken(**changes: Any) -> bytes:
    doc = _manifest()
    for key, value in changes.items():
        if value is None:
            doc.pop(key)
        else:
            doc[key] = value
    return _raw(doc)


@pytest.mark.parametrize("raw, match", [
    (b"\x00garbage", "not valid JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b"{}", "cannot tell the manifest type"),
    (_broken(config=None), "no config"),
    (_broken(layers=None), "no layers"),
    (_broken(layers={"a": 1}), "no layers"),
    (_broken(schemaVersion=3), "schemaVersion 3"),
    (_broken(mediaType="application/vnd.example+json"), "unsupported manifest media type"),
    (_broken(config={"mediaType": mf.OCI_CONFIG, "digest": "sha256:xyz", "size": 1}),
     "invalid digest"),
    (_broken(config={"mediaType": mf.OCI_CONFIG, "size": 1}), "config has no digest"),
    (_broken(config={"mediaType": mf.OCI_CONFIG, "digest": D1, "size": -1}), "no valid size"),
    (_broken(config={"mediaType": mf.OCI_CONFIG, "digest": D1, "size": True}), "no valid size"),
    (_broken(config={"digest": D1, "size": 1}), "config has no mediaType"),
    (_broken(layers=["nope"]), "layer 0 is not a descriptor"),
    (_broken(annotations={"a": 1}), "annotations"),
    (_raw({"schemaVersion": 2, "manifests": [{"mediaType": mf.OCI_MANIFEST, "digest": D1,
                                              "size": 1, "platform": {"os": "linux"}}]}),
     "platform needs"),
])
def test_malformed(raw: bytes, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        parse_manifest(raw)


def test_declared_and_inner_type_disagree() -> None:
    with pytest.raises(InvalidArgument, match="served as .*index.* but its mediaType is"):
        parse_manifest(_raw(_manifest()), mf.OCI_INDEX)


# ---- platform selection ---------------------------------------------------------------------

def test_select_exact() -> None:
    index = _index("linux/arm/v6", "linux/amd64", "linux/arm64/v8", "linux/arm/v7")
    assert _pick(index, "linux/amd64") == "linux/amd64"
    assert _pick(index, "linux/arm/v6") == "linux/arm/v6"
    assert _pick(index, "linux/arm64/v8") == "linux/arm64/v8"


def test_select_arm64_v8_is_the_default_variant() -> None:
    assert _pick(_index("linux/amd64", "linux/arm64/v8"), "linux/arm64") == "linux/arm64/v8"
    assert _pick(_index("linux/amd64", "linux/arm64"), "linux/arm64/v8") == "linux/arm64"


def test_select_arm_v7_default_and_older_variants() -> None:
    assert _pick(_index("linux/arm/v6", "linux/arm/v7"), "linux/arm") == "linux/arm/v7"
    assert _pick(_index("linux/arm"), "linux/arm/v7") == "linux/arm"  # unwritten means v7
    assert _pick(_index("linux/arm/v5", "linux/arm/v6"), "linux/arm/v7") == "linux/arm/v6"
    with pytest.raises(NotFound):
        select_platform(_index("linux/arm/v7"), Platform.parse("linux/arm/v6"))


def test_select_any_variant_when_none_asked() -> None:
    assert _pick(_index("linux/amd64/v3"), "linux/amd64") == "linux/amd64/v3"


def test_select_skips_entries_without_platform_and_attestations() -> None:
    index = _index(None, "unknown/unknown", "linux/amd64")
    assert select_platform(index, Platform("linux", "amd64")) == index.manifests[2]


def test_select_not_found_lists_platforms() -> None:
    index = _index("linux/amd64", "linux/arm64/v8", None)
    with pytest.raises(NotFound) as info:
        select_platform(index, Platform.parse("linux/s390x"))
    message = str(info.value)
    assert index.digest in message and "linux/s390x" in message
    assert "it offers: linux/amd64, linux/arm64/v8" in message
    with pytest.raises(NotFound, match="no platform-tagged images"):
        select_platform(_index(None), Platform.parse("linux/amd64"))
