"""The file transports and skopeo (containers/image) each read what the other writes."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from ocid.image import transports as tp
from ocid.image.manifest import sha256_digest
from ocid.image.transports import TransportRef, open_destination, open_source
from tests.support.images import LayerSpec

SKOPEO = shutil.which("skopeo")
pytestmark = pytest.mark.skipif(SKOPEO is None, reason="skopeo is not installed")


def sha(data: bytes) -> str:
    return sha256_digest(data)


def layer_tar(files: dict[str, bytes]) -> bytes:
    return LayerSpec(files=files, compression="none").tar_bytes()


def build_layout(root) -> tuple[str, list[str]]:
    """An OCI layout with one image, ``v1``: a gzip and a plain layer; (config digest, diff_ids)."""
    import gzip

    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> str:
        (blobs / sha(data).split(":")[1]).write_bytes(data)
        return sha(data)

    first = layer_tar({"etc/hello": b"hello\n", "bin/tool": b"#!/bin/sh\necho tool\n" * 100})
    second = layer_tar({"etc/world": b"world\n"})
    packed = gzip.compress(first, mtime=0)
    diff_ids = [sha(first), sha(second)]
    # Compact, in Go's field order: containers/image re-serialises configs it converts
    # (docker v2s2 -> OCI), and must reproduce these exact bytes for the ID to stay the same.
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/tool"]},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}},
                        separators=(",", ":")).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": tp.OCI_MANIFEST,
        "config": {"mediaType": tp.OCI_CONFIG, "digest": put(config), "size": len(config)},
        "layers": [{"mediaType": tp.OCI_LAYER_GZIP, "digest": put(packed), "size": len(packed)},
                   {"mediaType": tp.OCI_LAYER, "digest": put(second), "size": len(second)}],
    }).encode()
    put(manifest)
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": tp.OCI_MANIFEST, "digest": sha(manifest), "size": len(manifest),
         "annotations": {tp.REF_NAME_ANNOTATION: "v1"}}]}))
    return sha(config), diff_ids


def skopeo(*args: str) -> bytes:
    result = subprocess.run([SKOPEO, *args], capture_output=True, timeout=120, check=False)
    assert result.returncode == 0, f"skopeo {' '.join(args)}: {result.stderr.decode()}"
    return result.stdout


def identity(source) -> tuple[str, list[str]]:
    raw, _ = source.get_manifest()
    digest = json.loads(raw)["config"]["digest"]
    with source.open_blob(digest) as f:
        config = f.read()
    assert sha(config) == digest
    return digest, json.loads(config)["rootfs"]["diff_ids"]


def copy(source, destination, names: list[str]) -> None:
    raw, media_type = source.get_manifest()
    doc = json.loads(raw)
    for digest in [doc["config"]["digest"], *(layer["digest"] for layer in doc["layers"])]:
        with source.open_blob(digest) as f:
            destination.put_blob(digest, source.blob_size(digest), f)
    destination.put_manifest(raw, media_type, names)
    destination.commit()
    destination.close()


def test_we_read_skopeos_docker_archive(tmp_path):
    config_digest, diff_ids = build_layout(tmp_path / "lay")
    archive = tmp_path / "x.tar"
    skopeo("copy", "-q", f"oci:{tmp_path}/lay:v1", f"docker-archive:{archive}:busybox:1.36")
    with open_source(TransportRef("docker-archive", str(archive), "busybox:1.36")) as source:
        assert source.names == ["docker.io/library/busybox:1.36"]
        assert identity(source) == (config_digest, diff_ids)
        raw, media_type = source.get_manifest()
        assert media_type == tp.DOCKER_MANIFEST
        assert [layer["digest"] for layer in json.loads(raw)["layers"]] == diff_ids


def test_we_read_skopeos_oci_archive(tmp_path):
    config_digest, diff_ids = build_layout(tmp_path / "lay")
    skopeo("copy", "-q", f"oci:{tmp_path}/lay:v1", f"oci-archive:{tmp_path}/o.tar:named")
    with open_source(TransportRef("oci-archive", str(tmp_path / "o.tar"), "named")) as source:
        assert source.names == ["named"]
        assert identity(source) == (config_digest, diff_ids)


def test_skopeo_reads_our_oci_archive(tmp_path):
    config_digest, diff_ids = build_layout(tmp_path / "lay")
    archive = tmp_path / "ours.tar"
    with open_source(TransportRef("oci", str(tmp_path / "lay"), "v1")) as source:
        raw, _ = source.get_manifest()
        copy(source, open_destination(TransportRef("oci-archive", str(archive), "saved")), [])
    assert skopeo("inspect", "--raw", f"oci-archive:{archive}:saved") == raw
    config = skopeo("inspect", "--config", "--raw", f"oci-archive:{archive}:saved")
    assert sha(config) == config_digest
    skopeo("copy", "-q", f"oci-archive:{archive}:saved", f"oci:{tmp_path}/back:again")
    with open_source(TransportRef("oci", str(tmp_path / "back"), "again")) as source:
        assert identity(source) == (config_digest, diff_ids)


def test_skopeo_reads_our_docker_archive(tmp_path):
    config_digest, diff_ids = build_layout(tmp_path / "lay")
    archive = tmp_path / "ours.tar"
    with open_source(TransportRef("oci", str(tmp_path / "lay"), "v1")) as source:
        copy(source, open_destination(TransportRef("docker-archive", str(archive), "app:2")), [])
    info = json.loads(skopeo("inspect", f"docker-archive:{archive}"))
    assert info["Layers"] == diff_ids
    # skopeo finds the image by the name we wrote into RepoTags
    config = skopeo("inspect", "--config", "--raw", f"docker-archive:{archive}:app:2")
    assert sha(config) == config_digest
    skopeo("copy", "-q", f"docker-archive:{archive}", f"oci:{tmp_path}/out:copied")
    with open_source(TransportRef("oci", str(tmp_path / "out"), "copied")) as source:
        assert identity(source) == (config_digest, diff_ids)
