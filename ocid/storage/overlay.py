"""Overlay mounts of layer stacks, as containers/storage's overlay driver makes them.

The kernel takes mount options of at most one page. Absolute lowerdir paths of 60+ layers
overflow it, so each layer has a short random link ``overlay/l/<ID>`` -> ``../<chain>/diff``
and the mount names lowers as ``l/<ID>`` relative to ``overlay/``. The relative paths are
resolved against the mounting process's working directory: we run mount(8) with
``cwd=overlay/`` rather than chdir in the multi-threaded daemon.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import os
import subprocess

from ocid.errors import InternalError, InvalidArgument

MNT_DETACH = 2
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def new_link_id() -> str:
    """A short random layer link name (26 base32 characters, as containers/storage uses)."""
    return base64.b32encode(os.urandom(16)).decode().rstrip("=")


def mount_overlay(overlay_dir: str, lowers: list[str], upper: str, work: str, target: str,
                  what: str) -> None:
    """Mount an overlay at ``target``; lowers (top first), upper, work: relative to overlay_dir."""
    options = f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work}"
    if len(options) >= _PAGE_SIZE:
        raise InvalidArgument(f"{what}: {len(lowers)} layers make mount options longer than a page")
    try:
        result = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, target],
                                cwd=overlay_dir, capture_output=True, text=True, timeout=60,
                                check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InternalError(f"{what}: cannot run mount: {exc}") from exc
    if result.returncode != 0:
        raise InternalError(f"{what}: mount of the overlay at {target} failed: "
                            f"{result.stderr.strip() or result.returncode}")


def unmount(target: str, what: str) -> None:
    """Unmount ``target`` if it is a mount point; lazily (MNT_DETACH) when it is busy."""
    if not os.path.ismount(target):
        return
    try:
        result = subprocess.run(["umount", target], capture_output=True, text=True, timeout=60,
                                check=False)
        if result.returncode == 0 or not os.path.ismount(target):
            return
        detail = result.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        detail = str(exc)
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.umount2(os.fsencode(target), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise InternalError(f"{what}: cannot unmount {target}: {detail}; "
                            f"umount2: {os.strerror(err)}")
