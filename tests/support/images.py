"""Offline OCI test images built from the static busybox, deterministic to the byte.

Tars have sorted entries, a fixed mtime and root ownership, and gzip/zstd output is fixed,
so layer digests, config digests (image IDs) and manifest digests are stable across runs.
"""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from ocid.image import manifest as mf
from ocid.image.manifest import Platform

BUSYBOX = Path("/usr/bin/busybox")
MTIME = 1_700_000_000  # 2023-11-14, any fixed time will do
CREATED = "2023-11-14T22:13:20Z"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
BUSYBOX_APPLETS = ("sh", "ls", "cat", "echo", "sleep", "true", "false", "id", "sysctl", "nc",
                   "wget", "httpd", "stty")
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PASSWD = ("root:x:0:0:root:/root:/bin/sh\n"
          "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
          "tester:x:1000:1000:tester:/home/tester:/bin/sh\n")
GROUP = ("root:x:0:\n"
         "nobody:x:65534:\n"
         "testers:x:1000:tester\n"
         "extra:x:2000:tester\n")
_LAYER_TYPES = {"gzip": mf.OCI_LAYER_GZIP, "zstd": mf.OCI_LAYER_ZSTD, "none": mf.OCI_LAYER}


@dataclass(frozen=True)
class LayerSpec:
    """The content of one layer; paths are absolute or relative to the root, parents implied.

    ``modes`` and ``owners`` apply to any entry (files, dirs); a setuid file is just
    ``modes={"/bin/su": 0o4755}``. ``whiteouts`` delete a lower path (``dir/.wh.name``),
    ``opaque_dirs`` hide a lower directory's content (``dir/.wh..wh..opq``).
    """

    files: dict[str, bytes] = field(default_factory=dict)
    dirs: tuple[str, ...] = ()
    symlinks: dict[str, str] = field(default_factory=dict)  # path -> target
    hardlinks: dict[str, str] = field(default_factory=dict)  # path -> path of a file here
    whiteouts: tuple[str, ...] = ()
    opaque_dirs: tuple[str, ...] = ()
    modes: dict[str, int] = field(default_factory=dict)
    owners: dict[str, tuple[int, int]] = field(default_factory=dict)  # path -> (uid, gid)
    compression: str = "gzip"  # gzip | zstd | none

    def tar_bytes(self) -> bytes:
        """The uncompressed, deterministic tar of this layer."""
        entries: dict[str, tarfile.TarInfo] = {}
        data: dict[str, bytes] = {}

        def add(path: str, kind: bytes, mode: int, **attrs: Any) -> tarfile.TarInfo:
            name = _rel(path)
            parts = name.split("/")
            for i in range(1, len(parts)):  # implied parent directories
                parent = "/".join(parts[:i])
                if parent not in entries:
                    entries[parent] = _info(parent, tarfile.DIRTYPE, 0o755)
            info = _info(name, kind, mode, **attrs)
            entries[name] = info
            return info

        for path in self.dirs:
            add(path, tarfile.DIRTYPE, 0o755)
        for path in self.opaque_dirs:
            add(path, tarfile.DIRTYPE, 0o755)
            add(f"{_rel(path)}/.wh..wh..opq", tarfile.REGTYPE, 0o644)
        for path in self.whiteouts:
            head, _, tail = _rel(path).rpartition("/")
            add(f"{head}/.wh.{tail}" if head else f".wh.{tail}", tarfile.REGTYPE, 0o644)
        for path, content in self.files.items():
            add(path, tarfile.REGTYPE, 0o644, size=len(content))
            data[_rel(path)] = content
        for path, target in self.symlinks.items():
            add(path, tarfile.SYMTYPE, 0o777, linkname=target)
        hardlinks = [add(path, tarfile.LNKTYPE, 0o644, linkname=_rel(target))
                     for path, target in self.hardlinks.items()]
        for path, mode in self.modes.items():
            entries[_rel(path)].mode = mode
        for path, (uid, gid) in self.owners.items():
            entries[_rel(path)].uid, entries[_rel(path)].gid = uid, gid
        for info in hardlinks:
            info.mode = entries[info.linkname].mode  # a hard link shares its target's inode

        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            # Parents before children, links after their targets.
            order = sorted(entries.values(), key=lambda i: (i.type == tarfile.LNKTYPE,
                                                             i.name.split("/")))
            for info in order:
                content = data.get(info.name) if info.type == tarfile.REGTYPE else None
                tar.addfile(info, io.BytesIO(content) if content is not None else None)
        return out.getvalue()

    def blob(self) -> tuple[bytes, str, str]:
        """(compressed blob, its media type, diff ID of the uncompressed tar)."""
        tar = self.tar_bytes()
        if self.compression == "gzip":
            out = io.BytesIO()
            with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="", compresslevel=6) as gz:
                gz.write(tar)
            blob = out.getvalue()
        elif self.compression == "zstd":
            blob = zstandard.ZstdCompressor(level=3).compress(tar)
        elif self.compression == "none":
            blob = tar
        else:
            raise ValueError(f"unknown compression {self.compression!r}")
        return blob, _LAYER_TYPES[self.compression], mf.sha256_digest(tar)


def _rel(path: str) -> str:
    return path.strip("/")


def _info(name: str, kind: bytes, mode: int, *, size: int = 0,
          linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.linkname = kind, mode, size, linkname
    info.mtime, info.uid, info.gid, info.uname, info.gname = MTIME, 0, 0, "", ""
    return info


def busybox_layer(compression: str = "gzip") -> LayerSpec:
    """A minimal root: static busybox and applet links, users, groups and a sticky /tmp."""
    return LayerSpec(
        files={"/bin/busybox": BUSYBOX.read_bytes(), "/etc/passwd": PASSWD.encode(),
               "/etc/group": GROUP.encode()},
        dirs=("/tmp", "/root", "/home/tester", "/var", "/proc", "/sys", "/dev"),
        symlinks={f"/bin/{applet}": "busybox" for applet in BUSYBOX_APPLETS},
        modes={"/bin/busybox": 0o755, "/tmp": 0o1777, "/root": 0o700},
        owners={"/home/tester": (1000, 1000)},
        compression=compression)


@dataclass(frozen=True)
class BuiltImage:
    """An image written into an OCI layout: its digests and raw documents."""

    layout_dir: Path
    ref_name: str
    platform: Platform
    manifest_digest: str
    manifest_raw: bytes
    config_digest: str
    config_raw: bytes
    layer_digests: tuple[str, ...]
    diff_ids: tuple[str, ...]


@dataclass(frozen=True)
class BuiltIndex:
    """A multi-platform image (OCI index) written into an OCI layout."""

    layout_dir: Path
    ref_name: str
    index_digest: str
    index_raw: bytes
    images: dict[str, BuiltImage]  # "os/arch[/variant]" -> image


def _json(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _put_blob(layout_dir: Path, content: bytes) -> str:
    digest = mf.sha256_digest(content)
    path = layout_dir / "blobs" / "sha256" / digest.removeprefix("sha256:")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_bytes(content)
    return digest


def _add_ref(layout_dir: Path, ref_name: str, descriptor: dict[str, Any]) -> None:
    """Point ``ref_name`` at ``descriptor`` in index.json, replacing an older entry."""
    (layout_dir / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    index_path = layout_dir / "index.json"
    index = (json.loads(index_path.read_text()) if index_path.exists()
             else {"schemaVersion": 2, "mediaType": mf.OCI_INDEX, "manifests": []})
    index["manifests"] = [m for m in index["manifests"]
                          if (m.get("annotations") or {}).get(REF_NAME_ANNOTATION) != ref_name]
    index["manifests"].append({**descriptor, "annotations": {REF_NAME_ANNOTATION: ref_name}})
    index_path.write_bytes(_json(index))


def _write_image(layout_dir: Path, ref_name: str, layers: list[LayerSpec],
                 config_overrides: dict[str, Any] | None, platform: Platform) -> BuiltImage:
    layout_dir.mkdir(parents=True, exist_ok=True)
    descriptors, diff_ids = [], []
    for layer in layers:
        blob, media_type, diff_id = layer.blob()
        descriptors.append({"mediaType": media_type, "digest": _put_blob(layout_dir, blob),
                            "size": len(blob)})
        diff_ids.append(diff_id)
    runtime_config: dict[str, Any] = {"Env": [DEFAULT_PATH], "Cmd": ["/bin/sh"]}
    runtime_config.update(config_overrides or {})
    config: dict[str, Any] = {
        "created": CREATED, "architecture": platform.architecture, "os": platform.os,
        "config": runtime_config, "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": CREATED, "created_by": f"ocid tests: layer {i}"}
                    for i in range(len(layers))]}
    if platform.variant:
        config["variant"] = platform.variant
    config_raw = _json(config)
    config_digest = _put_blob(layout_dir, config_raw)
    manifest_raw = _json({
        "schemaVersion": 2, "mediaType": mf.OCI_MANIFEST,
        "config": {"mediaType": mf.OCI_CONFIG, "digest": config_digest, "size": len(config_raw)},
        "layers": descriptors})
    return BuiltImage(layout_dir, ref_name, platform, _put_blob(layout_dir, manifest_raw),
                      manifest_raw, config_digest, config_raw,
                      tuple(d["digest"] for d in descriptors), tuple(diff_ids))


def build_layout(layout_dir: Path, ref_name: str, layers: list[LayerSpec], *,
                 config_overrides: dict[str, Any] | None = None,
                 platform: Platform | None = None) -> BuiltImage:
    """Write a one-platform image into the OCI layout ``layout_dir`` under ``ref_name``.

    ``config_overrides`` update the runtime part of the config (``Cmd``, ``Env``, ``User``,
    ``Entrypoint``, ``WorkingDir``, ``Labels``...). Several images may share one layout.
    """
    image = _write_image(layout_dir, ref_name, layers, config_overrides,
                         platform or Platform.host())
    _add_ref(layout_dir, ref_name, {"mediaType": mf.OCI_MANIFEST,
                                    "digest": image.manifest_digest,
                                    "size": len(image.manifest_raw)})
    return image


def build_index(layout_dir: Path, ref_name: str,
                platforms: dict[str, list[LayerSpec]] | None = None, *,
                config_overrides: dict[str, Any] | None = None) -> BuiltIndex:
    """Write a multi-platform image (an OCI index) into ``layout_dir`` under ``ref_name``.

    By default: the host platform runs busybox, and the other of linux/amd64 and
    linux/arm64 (a fake) holds only a text file naming its platform.
    """
    if platforms is None:
        host = Platform.host()
        other = "linux/arm64" if host.architecture != "arm64" else "linux/amd64"
        platforms = {str(host): [busybox_layer()],
                     other: [LayerSpec(files={"/platform.txt": f"{other}\n".encode()})]}
    images: dict[str, BuiltImage] = {}
    entries = []
    for text, layers in platforms.items():
        plat = Platform.parse(text)
        image = _write_image(layout_dir, ref_name, layers, config_overrides, plat)
        images[str(plat)] = image
        platform_doc = {"os": plat.os, "architecture": plat.architecture}
        if plat.variant:
            platform_doc["variant"] = plat.variant
        entries.append({"mediaType": mf.OCI_MANIFEST, "digest": image.manifest_digest,
                        "size": len(image.manifest_raw), "platform": platform_doc})
    index_raw = _json({"schemaVersion": 2, "mediaType": mf.OCI_INDEX, "manifests": entries})
    index_digest = _put_blob(layout_dir, index_raw)
    _add_ref(layout_dir, ref_name, {"mediaType": mf.OCI_INDEX, "digest": index_digest,
                                    "size": len(index_raw)})
    return BuiltIndex(layout_dir, ref_name, index_digest, index_raw, images)


def push_layout(layout_dir: Path, registry_url_ref: str, *, ref_name: str | None = None,
                creds: tuple[str, str] | None = None) -> str:
    """Push an image of the layout with skopeo to ``HOST:PORT/REPO:TAG``; returns its digest.

    ``ref_name`` defaults to the layout's only image; an index is pushed with ``--all``.
    """
    entries = json.loads((layout_dir / "index.json").read_text())["manifests"]
    if ref_name is None:
        if len(entries) != 1:
            raise ValueError(f"{layout_dir} holds {len(entries)} images: pass ref_name")
        ref_name = entries[0]["annotations"][REF_NAME_ANNOTATION]
    entry = next(e for e in entries
                 if (e.get("annotations") or {}).get(REF_NAME_ANNOTATION) == ref_name)
    destination = registry_url_ref.removeprefix("docker://")
    with tempfile.TemporaryDirectory(prefix="ocid-push-") as tmp:
        digest_file = Path(tmp) / "digest"
        _skopeo_copy(layout_dir, ref_name, destination, digest_file,
                     entry["mediaType"] in mf.INDEX_TYPES, creds)
        return digest_file.read_text().strip()


def _skopeo_copy(layout_dir: Path, ref_name: str, destination: str, digest_file: Path,
                 all_images: bool, creds: tuple[str, str] | None) -> None:
    # --preserve-digests: pushed digests (image IDs included) are the ones built here;
    # without it skopeo gzips uncompressed layers on the way to a registry.
    args = ["skopeo", "--insecure-policy", "copy", "-q", "--dest-tls-verify=false",
            "--preserve-digests",
            "--digestfile", str(digest_file)]
    if all_images:
        args.append("--all")
    if creds:
        args += ["--dest-creds", f"{creds[0]}:{creds[1]}"]
    args += [f"oci:{layout_dir}:{ref_name}", f"docker://{destination}"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"skopeo copy to {destination} failed: {result.stderr.strip()}")
