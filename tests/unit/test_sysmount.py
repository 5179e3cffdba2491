"""mount(2)/umount2(2) through ocid.sysmount: overlay mounts with relative lowers, unmount, shm."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ocid import sysmount
from ocid.errors import InternalError, InvalidArgument
from ocid.lifecycle import podfiles
from ocid.storage import overlay
from tests.support.cleanup import mounts

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root")


def mounts_under(root: Path) -> list[str]:
    prefix = str(root) + "/"
    return [m[0] for m in mounts() if m[0].startswith(prefix)]


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """A scratch directory; whatever a test left mounted under it is detached afterwards."""
    yield tmp_path
    for point in reversed(mounts_under(tmp_path)):
        subprocess.run(["umount", "-l", point], check=False)
    assert mounts_under(tmp_path) == []


def make_overlay_dir(root: Path, layers: int = 2) -> tuple[str, list[str], str]:
    """An overlay/ directory as the store lays it out: (overlay dir, relative lowers, merged)."""
    od = root / "overlay"
    (od / "l").mkdir(parents=True)
    lowers = []
    for i in range(layers):
        diff = od / f"layer{i}" / "diff"
        diff.mkdir(parents=True)
        (diff / f"only{i}").write_text(str(i))
        (diff / "shared").write_text(f"from layer {i}")
        link = overlay.new_link_id()
        (od / "l" / link).symlink_to(f"../layer{i}/diff")
        lowers.append(f"l/{link}")
    for sub in ("upper", "work", "merged"):
        (od / "c" / sub).mkdir(parents=True)
    return str(od), lowers[::-1], str(od / "c" / "merged")  # top first


@needs_root
def test_overlay_with_relative_lowers_leaves_the_cwd_alone(root: Path,
                                                           monkeypatch: pytest.MonkeyPatch):
    od, lowers, merged = make_overlay_dir(root)
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative paths must not resolve here
    overlay.mount_overlay(od, lowers, "c/upper", "c/work", merged, "container c")
    assert os.getcwd() == str(elsewhere)
    assert os.readlink("/proc/self/cwd") == str(elsewhere)  # the kernel's view, not Python's
    [(fstype, super_opts)] = [(m[1], m[3]) for m in mounts() if m[0] == merged]
    assert fstype == "overlay"
    assert "lowerdir=l/" in super_opts  # mounted with the short relative names
    assert Path(merged, "only0").read_text() == "0" and Path(merged, "only1").read_text() == "1"
    assert Path(merged, "shared").read_text() == "from layer 1"  # the top layer wins
    Path(merged, "new").write_text("x")
    assert Path(od, "c", "upper", "new").read_text() == "x"

    overlay.unmount(merged, "container c")
    assert mounts_under(root) == []
    assert os.readlink("/proc/self/cwd") == str(elsewhere)


@needs_root
def test_concurrent_mounts_each_resolve_in_their_own_dir(root: Path):
    cwd = os.getcwd()
    dirs = []
    for i in range(8):
        (root / str(i)).mkdir()
        dirs.append(make_overlay_dir(root / str(i)))
    errors: list[Exception] = []

    def mount(od: str, lowers: list[str], merged: str) -> None:
        try:
            overlay.mount_overlay(od, lowers, "c/upper", "c/work", merged, "concurrent")
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=mount, args=d) for d in dirs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert os.getcwd() == cwd
    for od, _lowers, merged in dirs:
        # Each mount's lowers are its own: the links of one dir do not exist in another.
        assert Path(merged, "only0").read_text() == "0"
        overlay.unmount(merged, "concurrent")
    assert mounts_under(root) == []


@needs_root
def test_a_missing_lower_names_the_target_and_the_errno(root: Path):
    od, lowers, merged = make_overlay_dir(root)
    cwd = os.getcwd()
    with pytest.raises(InternalError) as info:
        overlay.mount_overlay(od, [*lowers, "l/MISSING"], "c/upper", "c/work", merged, "container c")
    message = str(info.value)
    assert message.startswith("container c: mount of the overlay at ")
    assert merged in message and os.strerror(errno.ENOENT) in message
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.ENOENT
    assert mounts_under(root) == []
    assert os.getcwd() == cwd


@needs_root
def test_a_missing_overlay_dir_is_named(root: Path):
    od, lowers, merged = make_overlay_dir(root)
    with pytest.raises(InternalError, match=f"{od}/absent: {os.strerror(errno.ENOENT)}"):
        overlay.mount_overlay(od + "/absent", lowers, "c/upper", "c/work", merged, "container c")
    assert mounts_under(root) == []


def test_options_longer_than_a_page_are_refused(tmp_path: Path):
    lowers = [f"l/{overlay.new_link_id()}" for _ in range(os.sysconf("SC_PAGE_SIZE") // 20)]
    with pytest.raises(InvalidArgument, match="longer than a page"):
        overlay.mount_overlay(str(tmp_path), lowers, "u", "w", str(tmp_path / "m"), "container c")


def test_unmount_of_a_non_mount_is_a_no_op(tmp_path: Path):
    (tmp_path / "plain").mkdir()
    overlay.unmount(str(tmp_path / "plain"), "plain")
    overlay.unmount(str(tmp_path / "absent"), "absent")


@needs_root
@pytest.mark.parametrize("holder", ["open fd", "process cwd"])
def test_unmount_of_a_busy_mount_detaches_it(root: Path, holder: str):
    target = root / "busy"
    target.mkdir()
    sysmount.mount("tmpfs", str(target), "tmpfs", 0, "size=1m")
    (target / "file").write_text("still readable")
    fd = os.open(target / "file", os.O_RDONLY) if holder == "open fd" else -1
    proc = subprocess.Popen(["sleep", "60"], cwd=target) if holder == "process cwd" else None
    try:
        with pytest.raises(OSError) as info:  # held: a plain umount2 fails
            sysmount.unmount(str(target))
        assert info.value.errno == errno.EBUSY
        overlay.unmount(str(target), "busy")
        assert mounts_under(root) == []
        # Detached, not gone: the holder still sees the file system.
        if proc is not None:
            assert os.listdir(f"/proc/{proc.pid}/cwd") == ["file"]
        else:
            assert os.pread(fd, 100, 0) == b"still readable"
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        if fd >= 0:
            os.close(fd)


@needs_root
def test_unmount_race_and_errors(root: Path, monkeypatch: pytest.MonkeyPatch):
    target = root / "m"
    target.mkdir()
    sysmount.mount("tmpfs", str(target), "tmpfs", 0, "size=1m")
    real_unmount = sysmount.unmount

    def fail(err: int) -> Callable[..., None]:
        def unmount(path: str, flags: int = 0) -> None:
            raise OSError(err, os.strerror(err), path)
        return unmount

    monkeypatch.setattr(sysmount, "unmount", fail(errno.EINVAL))  # someone else unmounted it
    overlay.unmount(str(target), "raced")
    monkeypatch.setattr(sysmount, "unmount", fail(errno.EPERM))
    with pytest.raises(InternalError, match=f"denied: cannot unmount {target}: "
                                            f"{os.strerror(errno.EPERM)}"):
        overlay.unmount(str(target), "denied")
    monkeypatch.setattr(sysmount, "unmount", real_unmount)
    overlay.unmount(str(target), "m")
    assert mounts_under(root) == []


@needs_root
def test_shm_is_a_tmpfs_with_size_mode_and_flags(root: Path):
    path = str(root / "userdata" / "shm")
    size = 8 * 1024 * 1024
    podfiles.mount_shm(path, size)
    [(fstype, opts, super_opts)] = [(m[1], m[2], m[3]) for m in mounts() if m[0] == path]
    assert fstype == "tmpfs"
    assert {"nosuid", "nodev", "noexec"} <= set(opts.split(","))
    assert f"size={size // 1024}k" in super_opts.split(",")
    vfs = os.statvfs(path)
    assert vfs.f_blocks * vfs.f_frsize == size
    wanted = os.ST_NOSUID | os.ST_NODEV | os.ST_NOEXEC
    assert vfs.f_flag & wanted == wanted
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o1777
    podfiles.mount_shm(path, size)  # already a mount point: left alone, not stacked
    assert [m[0] for m in mounts()].count(path) == 1

    podfiles.unmount_shm(path)
    assert mounts_under(root) == []
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    podfiles.unmount_shm(path)


@needs_root
def test_shm_mount_failure_is_an_internal_error(root: Path, monkeypatch: pytest.MonkeyPatch):
    def refuse(*_args: object) -> None:
        raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM), str(root / "shm"))

    monkeypatch.setattr(sysmount, "mount", refuse)
    with pytest.raises(InternalError, match=f"mount shm at {root}/shm failed: "
                                            f"{os.strerror(errno.ENOMEM)}"):
        podfiles.mount_shm(str(root / "shm"))


@needs_root
def test_sysmount_errors_are_oserrors_naming_the_path(root: Path):
    with pytest.raises(OSError) as info:
        sysmount.mount("none", str(root / "absent"), "tmpfs", 0, None)
    assert info.value.errno == errno.ENOENT and info.value.filename == str(root / "absent")
    with pytest.raises(OSError) as info:
        sysmount.unmount(str(root))  # not a mount point
    assert info.value.errno == errno.EINVAL and info.value.filename == str(root)
    with pytest.raises(ValueError, match="null byte"):
        sysmount.mount("none", str(root) + "\0/etc", "tmpfs")
    with pytest.raises(OSError) as info:
        sysmount.mount_in_dir(str(root / "absent"), "none", "m", "tmpfs")
    assert info.value.errno == errno.ENOENT and info.value.filename == str(root / "absent")
    assert mounts_under(root) == []
