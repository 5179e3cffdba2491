"""File transports: references, OCI layouts, oci-archive and docker-archive, read and written."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
import tempfile
import threading
from dataclasses import FrozenInstanceError, dataclass

import pytest
import zstandard

from ocid.errors import FailedPrecondition, InvalidArgument, NotFound
from ocid.image import transports as tp
from ocid.image.transports import (
    TransportRef,
    normalize_name,
    open_destination,
    open_source,
    parse_transport_ref,
)

# ---- building images by hand -------------------------------------------------------------------


def sha(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def layer_tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def compress(data: bytes, kind: str) -> bytes:
    if kind == "gzip":
        return gzip.compress(data, mtime=0)
    if kind == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


LAYER_TYPES = {"": tp.OCI_LAYER, "gzip": tp.OCI_LAYER_GZIP, "zstd": tp.OCI_LAYER_ZSTD}


@dataclass(frozen=True)
class Built:
    """An image made by hand: its blobs, manifest and expected identities."""

    manifest: bytes
    config: bytes
    blobs: dict[str, bytes]
    diff_ids: list[str]

    @property
    def config_digest(self) -> str:
        return sha(self.config)

    @property
    def manifest_digest(self) -> str:
        return sha(self.manifest)


def build_image(tag: str = "a", compressions: tuple[str, ...] = ("gzip", "")) -> Built:
    diffs = [layer_tar({f"{tag}-{i}.txt": f"layer {i} of {tag}\n".encode() * 50})
             for i in range(len(compressions))]
    blobs = [compress(d, kind) for d, kind in zip(diffs, compressions)]
    diff_ids = [sha(d) for d in diffs]
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": tp.OCI_MANIFEST,
        "config": {"mediaType": tp.OCI_CONFIG, "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": LAYER_TYPES[kind], "digest": sha(b), "size": len(b)}
                   for b, kind in zip(blobs, compressions)],
    }).encode()
    return Built(manifest, config, {sha(b): b for b in [config, *blobs]}, diff_ids)


def write_layout(root, images: dict[str | None, Built], *, layout: bool = True) -> None:
    """An OCI layout holding ``images`` by ref.name (None: no annotation)."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    entries = []
    for name, image in images.items():
        for digest, data in {**image.blobs, image.manifest_digest: image.manifest}.items():
            (blobs / digest.split(":")[1]).write_bytes(data)
        entry = {"mediaType": tp.OCI_MANIFEST, "digest": image.manifest_digest,
                 "size": len(image.manifest)}
        if name is not None:
            entry["annotations"] = {tp.REF_NAME_ANNOTATION: name}
        entries.append(entry)
    if layout:
        (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": entries}))


def tar_dir(root, path, *, extra: dict[str, bytes] | None = None, mode: str = "w") -> None:
    with tarfile.open(path, mode) as tar:
        for name in sorted(os.listdir(root)):
            tar.add(root / name, arcname=name)
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def write_docker_archive(path, images: list[tuple[list[str] | None, Built]], *,
                         symlinks: bool = False, compressed_layers: bool = False,
                         drop: str | None = None, config: bytes | None = None) -> None:
    """A ``docker save`` tarball: ``<v1>/layer.tar`` (or skopeo's ``<hex>.tar`` + symlinks)."""
    members: dict[str, bytes] = {}
    links: dict[str, str] = {}
    items = []
    for tags, image in images:
        diffs = {sha(d): d for d in _diffs(image)}
        config_raw = config or image.config
        config_name = f"{sha(config_raw).split(':')[1]}.json"
        members[config_name] = config_raw
        layers = []
        for number, diff_id in enumerate(image.diff_ids):
            hexpart = diff_id.split(":")[1]
            data = diffs[diff_id]
            if compressed_layers:
                data = gzip.compress(data, mtime=0)
            if symlinks:
                members[f"{hexpart}.tar"] = data
                links[f"v1-{number}-{hexpart[:8]}/layer.tar"] = f"../{hexpart}.tar"
                layers.append(f"{hexpart}.tar")
            else:
                members[f"{hexpart}/layer.tar"] = data
                members[f"{hexpart}/VERSION"] = b"1.0"
                layers.append(f"./{hexpart}/layer.tar")
        items.append({"Config": config_name, "RepoTags": tags, "Layers": layers})
    members["manifest.json"] = json.dumps(items).encode()
    members["repositories"] = b"{}"
    if drop:
        members.pop(drop)
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in links.items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)


def _diffs(image: Built) -> list[bytes]:
    """The uncompressed layers of a built image."""
    manifest = json.loads(image.manifest)
    out = []
    for layer in manifest["layers"]:
        blob = image.blobs[layer["digest"]]
        if blob[:2] == b"\x1f\x8b":
            blob = gzip.decompress(blob)
        elif blob[:4] == b"\x28\xb5\x2f\xfd":
            blob = zstandard.ZstdDecompressor().decompressobj().decompress(blob)
        out.append(blob)
    return out


def copy(source, destination, names: list[str]) -> str:
    """What the pusher does: blobs the destination lacks, then the manifest, then commit."""
    raw, media_type = source.get_manifest()
    doc = json.loads(raw)
    for digest in [doc["config"]["digest"], *(layer["digest"] for layer in doc["layers"])]:
        if not destination.has_blob(digest):
            with source.open_blob(digest) as f:
                destination.put_blob(digest, source.blob_size(digest), f)
    destination.put_manifest(raw, media_type, names)
    destination.commit()
    destination.close()
    return doc["config"]["digest"]


def identity(source) -> tuple[str, list[str]]:
    """(config digest, diff_ids) of a source's image, read through its blobs."""
    raw, _ = source.get_manifest()
    digest = json.loads(raw)["config"]["digest"]
    with source.open_blob(digest) as f:
        config_raw = f.read()
    assert sha(config_raw) == digest
    return digest, json.loads(config_raw)["rootfs"]["diff_ids"]


def read_all(source, digest: str) -> bytes:
    with source.open_blob(digest) as f:
        return f.read()


@pytest.fixture(autouse=True)
def private_tmpdir(tmp_path, monkeypatch):
    """Temporary files of the transports go to a directory the tests can inspect."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return scratch


# ---- references --------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("docker://busybox", ("docker", "", "busybox")),
    ("busybox", ("docker", "", "busybox")),
    ("busybox:1.36", ("docker", "", "busybox:1.36")),
    ("docker:latest", ("docker", "", "docker:latest")),
    ("localhost:5000/team/app:v1", ("docker", "", "localhost:5000/team/app:v1")),
    ("quay.io/a/b@sha256:" + "a" * 64, ("docker", "", "quay.io/a/b@sha256:" + "a" * 64)),
    ("oci:/path/dir:tag", ("oci", "/path/dir", "tag")),
    ("oci:/path/dir", ("oci", "/path/dir", None)),
    ("oci:/path/dir:", ("oci", "/path/dir", None)),
    ("oci:relative/dir:v1.0", ("oci", "relative/dir", "v1.0")),
    ("oci-archive:/x.tar:name", ("oci-archive", "/x.tar", "name")),
    ("docker-archive:/x.tar", ("docker-archive", "/x.tar", None)),
    ("docker-archive:/x.tar:busybox:latest", ("docker-archive", "/x.tar", "busybox:latest")),
    ("docker-archive:/x.tar:@1", ("docker-archive", "/x.tar", "@1")),
])
def test_parse_transport_ref(text, expected):
    assert parse_transport_ref(text) == TransportRef(*expected)


@pytest.mark.parametrize("text", [
    "", "docker://", "oci:", "oci-archive::tag", "ftp://host/x", "dir:/tmp/x",
    "containers-storage:busybox", "sif:/x.sif", "foo:/some/path", "Busybox",
    "docker-archive:/x.tar:busybox@sha256:" + "a" * 64, "docker-archive:/x.tar:BAD",
])
def test_parse_transport_ref_rejects(text):
    with pytest.raises(InvalidArgument):
        parse_transport_ref(text)


def test_transport_ref_is_frozen_and_prints_back():
    ref = parse_transport_ref("oci:/d:t")
    with pytest.raises(FrozenInstanceError):
        ref.name = "x"  # type: ignore[misc]
    assert str(ref) == "oci:/d:t"
    assert str(parse_transport_ref("busybox")) == "docker://busybox"


@pytest.mark.parametrize(("text", "expected"), [
    ("busybox", "docker.io/library/busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36"),
    ("library/busybox", "docker.io/library/busybox:latest"),
    ("index.docker.io/busybox", "docker.io/library/busybox:latest"),
    ("user/app:v2", "docker.io/user/app:v2"),
    ("localhost/app", "localhost/app:latest"),
    ("localhost:5000/app:v1", "localhost:5000/app:v1"),
    ("quay.io/org/app@sha256:" + "b" * 64, "quay.io/org/app@sha256:" + "b" * 64),
    ("docker.io/library/busybox:latest", "docker.io/library/busybox:latest"),
])
def test_normalize_name(text, expected):
    assert normalize_name(text) == expected


@pytest.mark.parametrize("text", ["", "Busybox", "busybox:bad tag", "a/b@sha256:short", "-x",
                                  "a//b"])
def test_normalize_name_rejects(text):
    with pytest.raises(InvalidArgument):
        normalize_name(text)


# ---- OCI layout: reading -----------------------------------------------------------------------

def test_oci_layout_source_serves_the_named_image(tmp_path):
    first, second = build_image("a"), build_image("b")
    write_layout(tmp_path / "lay", {"v1": first, "v2": second})
    with open_source(parse_transport_ref(f"oci:{tmp_path}/lay:v2")) as source:
        raw, media_type = source.get_manifest()
        assert (raw, media_type) == (second.manifest, tp.OCI_MANIFEST)
        assert source.names == ["v2"]
        for digest, data in second.blobs.items():
            assert read_all(source, digest) == data
            assert source.blob_size(digest) == len(data)
        assert source.blob_size(sha(b"nothing")) is None
        with pytest.raises(NotFound, match="blob"):
            source.open_blob(sha(b"nothing"))
        with pytest.raises(InvalidArgument, match="invalid digest"):
            source.open_blob("sha256:../../etc/passwd")


def test_oci_layout_without_name_needs_a_single_image(tmp_path):
    write_layout(tmp_path / "one", {None: build_image("a")})
    with open_source(TransportRef("oci", str(tmp_path / "one"), None)) as source:
        assert source.names == []
        assert identity(source)[0] == build_image("a").config_digest
    write_layout(tmp_path / "two", {"v1": build_image("a"), "v2": build_image("b")})
    with pytest.raises(InvalidArgument, match="'v1', 'v2'"):
        open_source(TransportRef("oci", str(tmp_path / "two"), None))
    with open_source(TransportRef("oci", str(tmp_path / "two"), "@1")) as source:
        assert source.names == ["v2"]


def test_oci_layout_missing_name_is_not_found(tmp_path):
    write_layout(tmp_path / "lay", {"v1": build_image()})
    with pytest.raises(NotFound, match=r"'nope'.*'v1'"):
        open_source(TransportRef("oci", str(tmp_path / "lay"), "nope"))


def test_oci_layout_matches_full_reference_ref_names(tmp_path):
    write_layout(tmp_path / "lay", {"docker.io/library/busybox:latest": build_image()})
    with open_source(TransportRef("oci", str(tmp_path / "lay"), "busybox")) as source:
        assert source.names == ["docker.io/library/busybox:latest"]


def test_oci_layout_index_entry_is_returned_as_is(tmp_path):
    image = build_image()
    root = tmp_path / "lay"
    write_layout(root, {None: image})
    index = json.dumps({"schemaVersion": 2, "mediaType": tp.OCI_INDEX, "manifests": [
        {"mediaType": tp.OCI_MANIFEST, "digest": image.manifest_digest, "size": len(image.manifest),
         "platform": {"architecture": "amd64", "os": "linux"}}]}).encode()
    (root / "blobs" / "sha256" / sha(index).split(":")[1]).write_bytes(index)
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": tp.OCI_INDEX, "digest": sha(index), "size": len(index),
         "annotations": {tp.REF_NAME_ANNOTATION: "multi"}}]}))
    with open_source(TransportRef("oci", str(root), "multi")) as source:
        assert source.get_manifest() == (index, tp.OCI_INDEX)
        assert read_all(source, image.manifest_digest) == image.manifest


@pytest.mark.parametrize("damage", ["no-index", "bad-json", "no-manifests", "no-layout",
                                    "bad-version", "not-a-dir"])
def test_malformed_oci_layouts_are_invalid(tmp_path, damage):
    root = tmp_path / "lay"
    write_layout(root, {"v1": build_image()})
    if damage == "no-index":
        (root / "index.json").unlink()
    elif damage == "bad-json":
        (root / "index.json").write_text("{not json")
    elif damage == "no-manifests":
        (root / "index.json").write_text('{"schemaVersion": 2}')
    elif damage == "no-layout":
        (root / "oci-layout").unlink()
    elif damage == "bad-version":
        (root / "oci-layout").write_text('{"imageLayoutVersion": "9"}')
    elif damage == "not-a-dir":
        root = tmp_path / "file"
        root.write_text("x")
    with pytest.raises(InvalidArgument, match=str(root)):
        open_source(TransportRef("oci", str(root), "v1"))


def test_oci_manifest_with_wrong_content_is_invalid(tmp_path):
    image = build_image()
    root = tmp_path / "lay"
    write_layout(root, {"v1": image})
    (root / "blobs" / "sha256" / image.manifest_digest.split(":")[1]).write_bytes(b"{}")
    with open_source(TransportRef("oci", str(root), "v1")) as source:
        with pytest.raises(InvalidArgument, match="does not match"):
            source.get_manifest()


# ---- OCI layout: writing -----------------------------------------------------------------------

def test_oci_destination_creates_a_layout_only_at_commit(tmp_path):
    image, target = build_image(), tmp_path / "new" / "lay"
    write_layout(tmp_path / "src", {"v1": image})
    with open_source(TransportRef("oci", str(tmp_path / "src"), "v1")) as source:
        destination = open_destination(TransportRef("oci", str(target), "saved"))
        raw, media_type = source.get_manifest()
        for digest in image.blobs:
            with source.open_blob(digest) as f:
                destination.put_blob(digest, len(image.blobs[digest]), f)
        destination.put_manifest(raw, media_type, [])
        assert not target.exists()
        destination.commit()
        destination.close()
    assert json.loads((target / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert [p.name for p in tmp_path.joinpath("new").iterdir()] == ["lay"]
    with open_source(TransportRef("oci", str(target), "saved")) as copied:
        assert copied.get_manifest() == (image.manifest, tp.OCI_MANIFEST)
        assert copied.names == ["saved"]


def test_oci_destination_adds_to_and_replaces_in_an_existing_layout(tmp_path):
    a, b, c = build_image("a"), build_image("b"), build_image("c")
    write_layout(tmp_path / "src", {"a": a, "b": b, "c": c})
    root = tmp_path / "lay"
    write_layout(root, {"keep": a, "swap": a})
    with open_source(TransportRef("oci", str(tmp_path / "src"), "b")) as source:
        copy(source, open_destination(TransportRef("oci", str(root), "swap")), [])
    with open_source(TransportRef("oci", str(tmp_path / "src"), "c")) as source:
        copy(source, open_destination(TransportRef("oci", str(root), None)), ["new1", "new2"])
    index = json.loads((root / "index.json").read_text())
    names = {m["annotations"][tp.REF_NAME_ANNOTATION]: m["digest"] for m in index["manifests"]}
    assert names == {"keep": a.manifest_digest, "swap": b.manifest_digest,
                     "new1": c.manifest_digest, "new2": c.manifest_digest}
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


def test_put_blob_verifies_digest_and_size(tmp_path):
    destination = open_destination(TransportRef("oci", str(tmp_path / "lay"), "x"))
    with pytest.raises(InvalidArgument, match="wrong content"):
        destination.put_blob(sha(b"right"), 5, io.BytesIO(b"wrong"))
    with pytest.raises(InvalidArgument, match="expected 9"):
        destination.put_blob(sha(b"right"), 9, io.BytesIO(b"right"))
    with pytest.raises(InvalidArgument, match="invalid digest"):
        destination.put_blob("sha256:../../x", 1, io.BytesIO(b"x"))
    assert not destination.has_blob(sha(b"right"))
    destination.put_blob(sha(b"right"), -1, io.BytesIO(b"right"))
    assert destination.has_blob(sha(b"right"))
    destination.close()
    assert os.listdir(tmp_path) == ["scratch"]  # no layout, no staging directory left


def test_oci_destination_rejects_a_manifest_with_missing_blobs(tmp_path):
    image = build_image()
    with open_destination(TransportRef("oci", str(tmp_path / "lay"), "x")) as destination:
        with pytest.raises(InvalidArgument, match="not written"):
            destination.put_manifest(image.manifest, tp.OCI_MANIFEST, [])
        with pytest.raises(FailedPrecondition):
            destination.commit()


def test_oci_destination_abort_leaves_an_existing_empty_dir_empty(tmp_path):
    (tmp_path / "empty").mkdir()
    with open_destination(TransportRef("oci", str(tmp_path / "empty"), "x")) as destination:
        destination.put_blob(sha(b"data"), 4, io.BytesIO(b"data"))
    assert os.listdir(tmp_path / "empty") == []


def test_oci_destination_refuses_a_directory_that_is_not_a_layout(tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("mine")
    with pytest.raises(InvalidArgument, match="not an OCI image layout"):
        open_destination(TransportRef("oci", str(tmp_path / "home"), "x"))


def test_oci_destination_converts_docker_manifests(tmp_path):
    """containers/image skips non-OCI index entries, so v2s2 is stored as OCI, same blobs."""
    image = build_image(compressions=("gzip",))
    doc = json.loads(image.manifest)
    doc["mediaType"] = tp.DOCKER_MANIFEST
    doc["config"]["mediaType"] = tp.DOCKER_CONFIG
    doc["layers"][0]["mediaType"] = tp.DOCKER_LAYER_GZIP
    raw = json.dumps(doc).encode()
    with open_destination(TransportRef("oci", str(tmp_path / "lay"), "x")) as destination:
        for digest, data in image.blobs.items():
            destination.put_blob(digest, len(data), io.BytesIO(data))
        destination.put_manifest(raw, tp.DOCKER_MANIFEST, [])
        destination.commit()
    with open_source(TransportRef("oci", str(tmp_path / "lay"), "x")) as source:
        stored, media_type = source.get_manifest()
        assert media_type == tp.OCI_MANIFEST
        assert json.loads(stored) == json.loads(image.manifest)
        assert identity(source) == (image.config_digest, image.diff_ids)


# ---- oci-archive -------------------------------------------------------------------------------

def copy_through(layout: Path, image: Built, dest: TransportRef) -> None:
    """Copy image ``v1`` of ``layout`` to ``dest``; the archive must not exist before commit."""
    with open_source(TransportRef("oci", str(layout), "v1")) as source:
        destination = open_destination(dest)
        raw, media_type = source.get_manifest()
        for digest, data in image.blobs.items():
            with source.open_blob(digest) as f:
                destination.put_blob(digest, len(data), f)
        destination.put_manifest(raw, media_type, [])
        assert not os.path.exists(dest.path)
        destination.commit()
        destination.close()


def test_oci_archive_round_trip(tmp_path, private_tmpdir):
    image = build_image(compressions=("gzip", "zstd", ""))
    write_layout(tmp_path / "src", {"v1": image})
    archive = tmp_path / "out" / "image.tar"
    copy_through(tmp_path / "src", image, TransportRef("oci-archive", str(archive), "named"))
    with tarfile.open(archive) as tar:
        assert tar.getnames()[:3] == ["oci-layout", "index.json", "blobs"]
    with open_source(TransportRef("oci-archive", str(archive), None)) as source:
        assert source.get_manifest() == (image.manifest, tp.OCI_MANIFEST)
        assert source.names == ["named"]
        for digest, data in image.blobs.items():
            assert read_all(source, digest) == data
    assert os.listdir(private_tmpdir) == []
    assert os.listdir(tmp_path / "out") == ["image.tar"]


def test_oci_archive_reads_skopeo_style_and_compressed_archives(tmp_path, private_tmpdir):
    image = build_image()
    write_layout(tmp_path / "lay", {"v1": image})
    tar_dir(tmp_path / "lay", tmp_path / "plain.tar")
    tar_dir(tmp_path / "lay", tmp_path / "packed.tar.gz", mode="w:gz")
    for name in ("plain.tar", "packed.tar.gz"):
        with open_source(TransportRef("oci-archive", str(tmp_path / name), "v1")) as source:
            assert identity(source) == (image.config_digest, image.diff_ids)
    assert os.listdir(private_tmpdir) == []


def test_oci_archive_blobs_stream_concurrently(tmp_path):
    image = build_image(compressions=("gzip", "", "zstd", ""))
    write_layout(tmp_path / "lay", {"v1": image})
    tar_dir(tmp_path / "lay", tmp_path / "a.tar")
    results: dict[str, bytes] = {}
    with open_source(TransportRef("oci-archive", str(tmp_path / "a.tar"), "v1")) as source:
        def read(digest: str) -> None:
            with source.open_blob(digest) as f:
                parts = []
                while chunk := f.read(7):
                    parts.append(chunk)
            results[digest] = b"".join(parts)
        threads = [threading.Thread(target=read, args=(d,)) for d in image.blobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results == image.blobs


@pytest.mark.parametrize("evil", ["../x", "blobs/../../x", "/etc/evil"])
def test_oci_archive_with_a_path_traversal_member_is_invalid(tmp_path, evil, private_tmpdir):
    write_layout(tmp_path / "lay", {"v1": build_image()})
    tar_dir(tmp_path / "lay", tmp_path / "evil.tar", extra={evil: b"gotcha"})
    with pytest.raises(InvalidArgument, match="outside the archive"):
        open_source(TransportRef("oci-archive", str(tmp_path / "evil.tar"), "v1"))
    assert not (tmp_path / "x").exists()
    assert os.listdir(private_tmpdir) == []


def test_oci_archive_symlink_escaping_the_archive_is_invalid(tmp_path):
    image = build_image()
    write_layout(tmp_path / "lay", {"v1": image})
    config = image.config_digest.split(":")[1]
    (tmp_path / "lay" / "blobs" / "sha256" / config).unlink()
    (tmp_path / "lay" / "blobs" / "sha256" / config).symlink_to("../../../../etc/passwd")
    tar_dir(tmp_path / "lay", tmp_path / "link.tar")
    with pytest.raises(InvalidArgument, match="outside the archive"):
        open_source(TransportRef("oci-archive", str(tmp_path / "link.tar"), "v1"))


@pytest.mark.parametrize("content", [b"", b"this is not a tar file at all" * 40,
                                     gzip.compress(b"gzip but not a tar" * 100)])
def test_not_a_tar_is_invalid(tmp_path, content):
    path = tmp_path / "bad.tar"
    path.write_bytes(content)
    for transport in ("oci-archive", "docker-archive"):
        with pytest.raises(InvalidArgument, match="bad.tar"):
            open_source(TransportRef(transport, str(path), None))


def test_missing_archive_is_invalid(tmp_path):
    with pytest.raises(InvalidArgument, match="cannot read"):
        open_source(TransportRef("oci-archive", str(tmp_path / "none.tar"), None))


def test_oci_archive_without_index_is_invalid(tmp_path):
    write_layout(tmp_path / "lay", {"v1": build_image()})
    (tmp_path / "lay" / "index.json").unlink()
    tar_dir(tmp_path / "lay", tmp_path / "a.tar")
    with pytest.raises(InvalidArgument, match="no index.json"):
        open_source(TransportRef("oci-archive", str(tmp_path / "a.tar"), None))


def test_oci_archive_destination_abort_leaves_nothing(tmp_path, private_tmpdir):
    image = build_image()
    path = tmp_path / "a.tar"
    path.write_bytes(b"previous")
    with open_destination(TransportRef("oci-archive", str(path), "x")) as destination:
        for digest, data in image.blobs.items():
            destination.put_blob(digest, len(data), io.BytesIO(data))
        destination.put_manifest(image.manifest, tp.OCI_MANIFEST, [])
    assert path.read_bytes() == b"previous"
    assert sorted(os.listdir(tmp_path)) == ["a.tar", "scratch"]
    assert os.listdir(private_tmpdir) == []


# ---- docker-archive: reading -------------------------------------------------------------------

def test_docker_archive_source_synthesises_a_v2s2_manifest(tmp_path):
    image = build_image(compressions=("gzip", ""))
    write_docker_archive(tmp_path / "d.tar", [(["busybox:latest"], image)])
    with open_source(TransportRef("docker-archive", str(tmp_path / "d.tar"), None)) as source:
        raw, media_type = source.get_manifest()
        assert media_type == tp.DOCKER_MANIFEST
        doc = json.loads(raw)
        assert doc["mediaType"] == tp.DOCKER_MANIFEST
        assert doc["config"] == {"mediaType": tp.DOCKER_CONFIG, "size": len(image.config),
                                 "digest": image.config_digest}
        assert [layer["digest"] for layer in doc["layers"]] == image.diff_ids
        assert {layer["mediaType"] for layer in doc["layers"]} == {tp.DOCKER_LAYER}
        assert source.names == ["busybox:latest"]
        diffs = _diffs(image)
        for layer, diff in zip(doc["layers"], diffs):
            assert read_all(source, layer["digest"]) == diff
            assert layer["size"] == source.blob_size(layer["digest"]) == len(diff)
        assert read_all(source, image.config_digest) == image.config
        assert read_all(source, sha(raw)) == raw
        assert source.get_manifest()[0] == raw
        with pytest.raises(NotFound):
            source.open_blob(sha(b"other"))


@pytest.mark.parametrize(("name", "wanted"), [
    ("busybox", 0), ("busybox:latest", 0), ("docker.io/library/busybox:latest", 0),
    ("quay.io/app:v1", 1), ("alpine:3", 1), ("@1", 1), ("@0", 0),
])
def test_docker_archive_picks_by_normalised_name(tmp_path, name, wanted):
    images = [build_image("a"), build_image("b")]
    write_docker_archive(tmp_path / "d.tar", [(["docker.io/library/busybox:latest"], images[0]),
                                              (["quay.io/app:v1", "alpine:3"], images[1])])
    with open_source(TransportRef("docker-archive", str(tmp_path / "d.tar"), name)) as source:
        assert identity(source)[0] == images[wanted].config_digest


def test_docker_archive_name_errors(tmp_path):
    write_docker_archive(tmp_path / "d.tar", [(["a:1"], build_image("a")),
                                              (None, build_image("b"))])
    with pytest.raises(InvalidArgument, match="2 images.*'a:1'"):
        open_source(TransportRef("docker-archive", str(tmp_path / "d.tar"), None))
    with pytest.raises(NotFound, match="'b:1'"):
        open_source(TransportRef("docker-archive", str(tmp_path / "d.tar"), "b:1"))
    with pytest.raises(NotFound, match="@5"):
        open_source(TransportRef("docker-archive", str(tmp_path / "d.tar"), "@5"))
    with open_source(TransportRef("docker-archive", str(tmp_path / "d.tar"), "@1")) as source:
        assert source.names == []


def test_docker_archive_skopeo_layout_with_symlinks(tmp_path):
    image = build_image()
    write_docker_archive(tmp_path / "d.tar", [(["x:1"], image)], symlinks=True)
    with open_source(TransportRef("docker-archive", str(tmp_path / "d.tar"), None)) as source:
        assert identity(source) == (image.config_digest, image.diff_ids)
        raw, _ = source.get_manifest()
        assert [layer["digest"] for layer in json.loads(raw)["layers"]] == image.diff_ids


def test_docker_archive_hard_links_resolve_and_link_loops_are_invalid(tmp_path):
    image = build_image(compressions=("",))
    diff = _diffs(image)[0]
    config_name = f"{image.config_digest.split(':')[1]}.json"

    def archive(path, links: dict[str, tuple[bytes, str]]) -> None:
        with tarfile.open(path, "w") as tar:
            for name, data in {config_name: image.config, "real.tar": diff,
                               "manifest.json": json.dumps([{"Config": config_name, "RepoTags": [],
                                                             "Layers": ["a/layer.tar"]}]).encode()
                               }.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            for name, (kind, target) in links.items():
                info = tarfile.TarInfo(name)
                info.type, info.linkname = kind, target
                tar.addfile(info)

    archive(tmp_path / "hard.tar", {"a/layer.tar": (tarfile.LNKTYPE, "real.tar")})
    with open_source(TransportRef("docker-archive", str(tmp_path / "hard.tar"), None)) as source:
        assert identity(source) == (image.config_digest, image.diff_ids)
        assert read_all(source, image.diff_ids[0]) == diff
    archive(tmp_path / "loop.tar", {"a/layer.tar": (tarfile.SYMTYPE, "../b/layer.tar"),
                                    "b/layer.tar": (tarfile.SYMTYPE, "../a/layer.tar")})
    with pytest.raises(InvalidArgument, match="too many levels"):
        open_source(TransportRef("docker-archive", str(tmp_path / "loop.tar"), None))


def test_docker_archive_gzip_layers_keep_their_own_digest(tmp_path):
    image = build_image()
    write_docker_archive(tmp_path / "d.tar", [(["x:1"], image)], compressed_layers=True)
    with open_source(TransportRef("docker-archive", str(tmp_path / "d.tar"), None)) as source:
        doc = json.loads(source.get_manifest()[0])
        assert {layer["mediaType"] for layer in doc["layers"]} == {tp.DOCKER_LAYER_GZIP}
        for layer in doc["layers"]:
            assert sha(read_all(source, layer["digest"])) == layer["digest"]


def test_compressed_docker_archive_is_read(tmp_path, private_tmpdir):
    image = build_image()
    write_docker_archive(tmp_path / "d.tar", [(["x:1"], image)])
    (tmp_path / "d.tar.gz").write_bytes(gzip.compress((tmp_path / "d.tar").read_bytes()))
    with open_source(TransportRef("docker-archive", str(tmp_path / "d.tar.gz"), None)) as source:
        assert identity(source) == (image.config_digest, image.diff_ids)
        assert len(os.listdir(private_tmpdir)) == 1
    assert os.listdir(private_tmpdir) == []


@pytest.mark.parametrize(("drop", "match"), [
    ("manifest.json", "no manifest.json"),
    ("config", "manifest.json names '[0-9a-f]{64}.json'"),
    ("layer", "layer.tar', which is not in the archive"),
])
def test_docker_archive_missing_members_are_invalid(tmp_path, drop, match):
    image = build_image()
    member = {"manifest.json": "manifest.json",
              "config": f"{image.config_digest.split(':')[1]}.json",
              "layer": f"{image.diff_ids[1].split(':')[1]}/layer.tar"}[drop]
    write_docker_archive(tmp_path / "d.tar", [(["x:1"], image)], drop=member)
    with pytest.raises(InvalidArgument, match=match):
        open_source(TransportRef("docker-archive", str(tmp_path / "d.tar"), None))


def test_oci_archive_given_as_docker_archive_gets_a_hint(tmp_path):
    write_layout(tmp_path / "lay", {"v1": build_image()})
    tar_dir(tmp_path / "lay", tmp_path / "o.tar")
    with pytest.raises(InvalidArgument, match="try oci-archive"):
        open_source(TransportRef("docker-archive", str(tmp_path / "o.tar"), None))


@pytest.mark.parametrize("manifest", [b"{}", b"[]", b"not json", b'[{"Config": 1, "Layers": []}]',
                                      b'[{"Config": "c.json", "Layers": "x"}]'])
def test_malformed_manifest_json_is_invalid(tmp_path, manifest):
    with tarfile.open(tmp_path / "d.tar", "w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
    with pytest.raises(InvalidArgument, match="manifest.json"):
        open_source(TransportRef("docker-archive", str(tmp_path / "d.tar"), None))


def test_docker_archive_layer_not_matching_its_diff_id_is_invalid(tmp_path):
    image = build_image(compressions=("", ""))
    config = json.loads(image.config)
    config["rootfs"]["diff_ids"].reverse()
    write_docker_archive(tmp_path / "d.tar", [(["x:1"], image)], config=json.dumps(config).encode())
    with open_source(TransportRef("docker-archive", str(tmp_path / "d.tar"), None)) as source:
        with pytest.raises(InvalidArgument, match="diff_id"):
            source.get_manifest()


# ---- docker-archive: writing -------------------------------------------------------------------

def test_docker_archive_destination_writes_docker_save_format(tmp_path, private_tmpdir):
    image = build_image(compressions=("gzip", "zstd", ""))
    write_layout(tmp_path / "src", {"v1": image})
    archive = tmp_path / "d.tar"
    copy_through(tmp_path / "src", image, TransportRef("docker-archive", str(archive), "busybox"))
    assert os.listdir(private_tmpdir) == []
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        items = json.load(tar.extractfile("manifest.json"))
        repositories = json.load(tar.extractfile("repositories"))
        assert items[0]["Config"] == f"{image.config_digest.split(':')[1]}.json"
        assert tar.extractfile(items[0]["Config"]).read() == image.config
        assert items[0]["RepoTags"] == ["docker.io/library/busybox:latest"]
        diffs = [tar.extractfile(layer).read() for layer in items[0]["Layers"]]
        assert diffs == _diffs(image)
        top = items[0]["Layers"][-1].split("/")[0]
        assert repositories == {"docker.io/library/busybox": {"latest": top}}
        for layer in items[0]["Layers"]:
            v1_id = layer.split("/")[0]
            assert {f"{v1_id}/VERSION", f"{v1_id}/json"} <= set(names)
            assert json.load(tar.extractfile(f"{v1_id}/json"))["id"] == v1_id
    with open_source(TransportRef("docker-archive", str(archive), "busybox:latest")) as source:
        assert identity(source) == (image.config_digest, image.diff_ids)


def test_docker_archive_destination_checks_diff_ids(tmp_path):
    image = build_image(compressions=("gzip",))
    config = json.loads(image.config)
    config["rootfs"]["diff_ids"] = [sha(b"something else")]
    forged = json.dumps(config).encode()
    manifest = json.loads(image.manifest)
    manifest["config"].update(digest=sha(forged), size=len(forged))
    layer = manifest["layers"][0]["digest"]
    with open_destination(TransportRef("docker-archive", str(tmp_path / "d.tar"), "x:1")) as dest:
        dest.put_blob(sha(forged), len(forged), io.BytesIO(forged))
        dest.put_blob(layer, -1, io.BytesIO(image.blobs[layer]))
        with pytest.raises(InvalidArgument, match="diff_id"):
            dest.put_manifest(json.dumps(manifest).encode(), tp.OCI_MANIFEST, [])
    assert not (tmp_path / "d.tar").exists()


def test_docker_archive_destination_rejects_indexes_and_digest_names(tmp_path):
    image = build_image()
    index = json.dumps({"schemaVersion": 2, "mediaType": tp.OCI_INDEX, "manifests": [
        {"mediaType": tp.OCI_MANIFEST, "digest": image.manifest_digest,
         "size": len(image.manifest)}]}).encode()
    with open_destination(TransportRef("docker-archive", str(tmp_path / "d.tar"), None)) as dest:
        with pytest.raises(InvalidArgument, match="not an index"):
            dest.put_manifest(index, tp.OCI_INDEX, [])
        for digest, data in image.blobs.items():
            dest.put_blob(digest, len(data), io.BytesIO(data))
        with pytest.raises(InvalidArgument, match="need a tag"):
            dest.put_manifest(image.manifest, tp.OCI_MANIFEST, ["x@sha256:" + "a" * 64])
    with pytest.raises(InvalidArgument, match="@N"):
        open_destination(TransportRef("docker-archive", str(tmp_path / "d.tar"), "@0"))


def test_open_source_refuses_the_docker_transport():
    with pytest.raises(InvalidArgument, match="not a file transport"):
        open_source(parse_transport_ref("docker://busybox"))
    with pytest.raises(InvalidArgument, match="not a file transport"):
        open_destination(parse_transport_ref("busybox"))


# ---- the round trip ----------------------------------------------------------------------------

def test_round_trip_keeps_image_id_diff_ids_and_names(tmp_path, private_tmpdir):
    """OCI layout -> docker-archive -> oci-archive -> back: same config digest and diff_ids."""
    image = build_image(compressions=("gzip", "zstd", ""))
    write_layout(tmp_path / "lay", {"v1": image})
    docker_tar, oci_tar = tmp_path / "d.tar", tmp_path / "o.tar"
    with open_source(TransportRef("oci", str(tmp_path / "lay"), "v1")) as source:
        assert identity(source) == (image.config_digest, image.diff_ids)
        copy(source, open_destination(TransportRef("docker-archive", str(docker_tar), None)),
             ["example.com/team/app:1.0", "app:latest"])
    with open_source(TransportRef("docker-archive", str(docker_tar),
                                  "example.com/team/app:1.0")) as source:
        assert identity(source) == (image.config_digest, image.diff_ids)
        assert source.names == ["example.com/team/app:1.0", "docker.io/library/app:latest"]
        copy(source, open_destination(TransportRef("oci-archive", str(oci_tar), None)),
             source.names)
    for name in ("example.com/team/app:1.0", "docker.io/library/app:latest"):
        with open_source(TransportRef("oci-archive", str(oci_tar), name)) as source:
            assert identity(source) == (image.config_digest, image.diff_ids)
            assert source.names == [name]
    # and back into a docker-archive, whose layers are now the uncompressed ones
    with open_source(TransportRef("oci-archive", str(oci_tar), "@0")) as source:
        d2 = TransportRef("docker-archive", str(tmp_path / "d2.tar"), None)
        copy(source, open_destination(d2), source.names)
    with open_source(TransportRef("docker-archive", str(tmp_path / "d2.tar"), None)) as source:
        assert identity(source) == (image.config_digest, image.diff_ids)
    assert os.listdir(private_tmpdir) == []
