"""Real network namespaces (in a temporary dir, never /var/run/netns) and the pod's shm tmpfs."""

from __future__ import annotations

import os
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocid.errors import AlreadyExists, InvalidArgument
from ocid.lifecycle import podfiles
from ocid.network import netns
from tests.support.cleanup import mounts

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and mounts need root")


def mounts_at_or_under(root: str) -> list[str]:
    return [m[0] for m in mounts() if m[0] == root or m[0].startswith(root + "/")]


def nsenter(path: str, *cmd: str) -> str:
    return subprocess.run(["nsenter", f"--net={path}", *cmd], capture_output=True, text=True,
                          timeout=30, check=True).stdout


def own_netns() -> str:
    return os.readlink("/proc/thread-self/ns/net")


@pytest.fixture
def netns_dir(tmp_path: Path) -> Iterator[str]:
    directory = str(tmp_path / "netns")
    yield directory
    if os.path.isdir(directory):
        for name in os.listdir(directory):
            netns.remove(os.path.join(directory, name))
    # create() made the dir a shared bind mount of itself, as iproute2 does with its own.
    for point in reversed(mounts_at_or_under(directory)):
        subprocess.run(["umount", "-l", point], check=False)
    assert mounts_at_or_under(directory) == []


def test_create_pins_a_namespace_with_lo_up(netns_dir: str):
    before = own_netns()
    path = netns.create("ocid-0123456789ab", netns_dir)
    assert path == os.path.join(netns_dir, "ocid-0123456789ab")
    assert netns.exists(path)
    assert own_netns() == before  # the calling thread did not move
    assert [m[1] for m in mounts() if m[0] == path] == ["nsfs"]
    # No process is in it, yet a new one can join: it persists through the bind mount.
    joined = nsenter(path, "readlink", "/proc/self/ns/net").strip()
    assert joined == f"net:[{os.stat(path).st_ino}]" != before
    links = nsenter(path, "ip", "-o", "link", "show")
    assert len(links.splitlines()) == 1  # a fresh namespace: only lo
    lo_flags = links.split("<", 1)[1].split(">", 1)[0].split(",")
    assert "UP" in lo_flags and "LOWER_UP" in lo_flags
    assert "inet 127.0.0.1/8" in nsenter(path, "ip", "-o", "addr", "show", "lo")


def test_remove_twice_is_fine(netns_dir: str):
    path = netns.create("ocid-remove-me", netns_dir)
    netns.remove(path)
    assert not os.path.exists(path) and not netns.exists(path)
    assert path not in mounts_at_or_under(netns_dir)
    netns.remove(path)
    netns.remove(os.path.join(netns_dir, "never-created"))


def test_a_duplicate_name_is_rejected(netns_dir: str):
    path = netns.create("ocid-dup", netns_dir)
    inode = os.stat(path).st_ino
    with pytest.raises(AlreadyExists):
        netns.create("ocid-dup", netns_dir)
    assert netns.exists(path) and os.stat(path).st_ino == inode
    assert [m[0] for m in mounts()].count(path) == 1


def test_a_stale_unmounted_file_is_reused(netns_dir: str):
    os.makedirs(netns_dir)
    Path(netns_dir, "ocid-stale").touch()  # left by a crash between create and mount
    assert not netns.exists(os.path.join(netns_dir, "ocid-stale"))
    path = netns.create("ocid-stale", netns_dir)
    assert netns.exists(path)


@pytest.mark.parametrize("name", ["", "a/b", ".", ".."])
def test_invalid_names(netns_dir: str, name: str):
    with pytest.raises(InvalidArgument):
        netns.create(name, netns_dir)


def test_exists_is_false_for_other_files(tmp_path: Path):
    plain = tmp_path / "plain"
    plain.write_text("x")
    assert not netns.exists(str(plain))
    assert not netns.exists(str(tmp_path / "absent"))


def test_concurrent_creates_from_many_threads(netns_dir: str):
    before = own_netns()
    paths: list[str] = []
    errors: list[Exception] = []
    lock = threading.Lock()

    def make(i: int) -> None:
        try:
            mine = own_netns()
            path = netns.create(f"ocid-{i:012d}", netns_dir)
            assert own_netns() == mine  # no thread is left in another namespace
            with lock:
                paths.append(path)
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=make, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len({os.stat(p).st_ino for p in paths}) == 16
    assert own_netns() == before
    for path in paths:
        netns.remove(path)
    assert mounts_at_or_under(netns_dir) == [netns_dir]  # only the shared dir itself is left


# -- shm ----------------------------------------------------------------------------------------


@pytest.fixture
def shm_path(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "userdata" / "shm")
    yield path
    for point in reversed(mounts_at_or_under(path)):
        subprocess.run(["umount", "-l", point], check=False)


def test_shm_is_a_tmpfs_with_the_right_options(shm_path: str):
    size = 16 * 1024 * 1024
    podfiles.mount_shm(shm_path, size)
    [(_point, fstype, opts, super_opts)] = [m for m in mounts() if m[0] == shm_path]
    assert fstype == "tmpfs"
    assert {"nosuid", "nodev", "noexec"} <= set(opts.split(","))
    assert f"size={size // 1024}k" in super_opts.split(",")  # mode=1777, the default, is unlisted
    vfs = os.statvfs(shm_path)
    assert vfs.f_blocks * vfs.f_frsize == size
    assert stat.S_IMODE(os.stat(shm_path).st_mode) == 0o1777
    podfiles.mount_shm(shm_path, size)  # already mounted: not stacked
    assert [m[0] for m in mounts()].count(shm_path) == 1

    podfiles.unmount_shm(shm_path)
    assert mounts_at_or_under(shm_path) == []
    assert stat.S_IMODE(os.stat(shm_path).st_mode) == 0o700  # the mount point underneath
    podfiles.unmount_shm(shm_path)


def test_shm_default_size_is_64m(shm_path: str):
    podfiles.mount_shm(shm_path)
    vfs = os.statvfs(shm_path)
    assert vfs.f_blocks * vfs.f_frsize == 64 * 1024 * 1024
    podfiles.unmount_shm(shm_path)
    assert mounts_at_or_under(shm_path) == []
