"""Container root file systems: real overlay mounts of stored layers."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocid.storage import ImageStore
from tests.support.layers import Entry, add_image

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="overlay mounts need root")


def mounts_under(root: Path) -> list[str]:
    """Mount points below ``root``, deepest first."""
    prefix = str(root) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4].encode().decode("unicode_escape") for line in f]
    return sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True)


@pytest.fixture
def store(tmp_path) -> Iterator[ImageStore]:
    root = tmp_path / "storage"
    s = ImageStore(str(root))
    yield s
    try:
        for container in s.list_containers():
            s.remove_container(container.id)
    finally:
        for point in mounts_under(root):  # whatever a failed test left behind
            subprocess.run(["umount", "-l", point], check=False)
        s.close()
    assert mounts_under(root) == []


def test_seventy_layers_mount_with_whiteouts_and_opaque_dirs(store: ImageStore) -> None:
    layers = [[Entry("bottom", data=b"from the bottom"), Entry("etc/", "dir"),
               Entry("etc/passwd", data=b"root:x:0:0"), Entry("etc/hosts", data=b"127.0.0.1"),
               Entry("opt/", "dir"), Entry("opt/old1", data=b"1"), Entry("opt/old2", data=b"2"),
               Entry("bin/", "dir"), Entry("bin/su", data=b"su", mode=0o4755)]]
    layers += [[Entry(f"layer{i}", data=str(i).encode())] for i in range(1, 68)]
    layers.append([Entry("etc/.wh.passwd"), Entry("opt/.wh..wh..opq"), Entry("opt/new", data=b"n")])
    layers.append([Entry("top", data=b"from the top"), Entry("layer5", data=b"overridden")])
    image = add_image(store, layers, names=["many:layers"])
    assert len(image.layers) == 70
    # Absolute lowerdirs would not fit in the kernel's one page of mount options.
    assert sum(len(store.overlay_dir) + 72 for _ in image.layers) > os.sysconf("SC_PAGE_SIZE")

    store.create_container("c1", "many", "many:layers")
    merged = Path(store.mount_container("c1"))
    assert os.path.ismount(merged)
    assert store.mount_container("c1") == str(merged)  # idempotent
    assert (merged / "bottom").read_bytes() == b"from the bottom"
    assert (merged / "top").read_bytes() == b"from the top"
    assert (merged / "layer40").read_bytes() == b"40"
    assert (merged / "layer5").read_bytes() == b"overridden"
    assert (merged / "etc/hosts").read_bytes() == b"127.0.0.1"
    assert not (merged / "etc/passwd").exists()  # whiteout
    assert sorted(os.listdir(merged / "opt")) == ["new"]  # opaque directory
    assert stat.S_IMODE(os.stat(merged / "bin/su").st_mode) == 0o4755
    assert stat.S_IMODE(os.stat(merged).st_mode) == 0o755

    # Writes land in the container's upper directory, never in a shared layer.
    (merged / "bottom").write_text("changed")
    (merged / "etc/hosts").unlink()
    upper = Path(store.containers_dir) / "c1" / "upper"
    assert (upper / "bottom").read_text() == "changed"
    assert stat.S_ISCHR(os.lstat(upper / "etc/hosts").st_mode)
    bottom_diff = Path(store.overlay_dir) / image.layers[0].chain_id[7:] / "diff"
    assert (bottom_diff / "bottom").read_bytes() == b"from the bottom"
    assert (bottom_diff / "etc/hosts").exists()

    store.unmount_container("c1")
    assert not os.path.ismount(merged)
    store.unmount_container("c1")  # idempotent
    assert (Path(store.mount_container("c1")) / "bottom").read_text() == "changed"  # kept
    store.remove_container("c1")  # unmounts too
    assert not merged.exists()
    assert mounts_under(Path(store.root)) == []


def test_two_containers_share_layers(store: ImageStore) -> None:
    add_image(store, [[Entry("shared", data=b"s")]], names=["one:layer"])
    a = Path(store.create_container("a", "a", "one:layer") and store.mount_container("a"))
    b = Path(store.create_container("b", "b", "one:layer") and store.mount_container("b"))
    (a / "shared").write_text("a's copy")
    assert (b / "shared").read_text() == "s"
    store.remove_container("a")
    assert (b / "shared").read_text() == "s"


def test_image_without_layers_mounts(store: ImageStore) -> None:
    from ocid.storage import ImageRecord

    store.put_image(ImageRecord(id="sha256:" + "e" * 64, names=["scratch:1"], digests=[],
                                manifest_digest="sha256:" + "f" * 64, manifest_media_type="m",
                                config={}, layers=[], size=0, created="", added=0.0,
                                top_layer=None))
    store.create_container("s", "scratch", "scratch:1")
    merged = Path(store.mount_container("s"))
    assert os.listdir(merged) == []
    (merged / "file").write_text("x")
    store.remove_container("s")


def test_long_storage_root_still_mounts(tmp_path) -> None:
    root = tmp_path / ("d" * 200) / ("e" * 200) / "storage"
    store = ImageStore(str(root))
    try:
        add_image(store, [[Entry(f"f{i}", data=b"x")] for i in range(40)], names=["deep:1"])
        store.create_container("deep", "deep", "deep:1")
        merged = Path(store.mount_container("deep"))
        assert sorted(os.listdir(merged)) == sorted(f"f{i}" for i in range(40))
    finally:
        try:
            store.remove_container("deep")
        finally:
            for point in mounts_under(root):
                subprocess.run(["umount", "-l", point], check=False)
            store.close()
    assert mounts_under(root) == []
