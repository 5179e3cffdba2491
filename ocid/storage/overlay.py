"""Overlay mounts of layer stacks, as containers/storage's overlay driver makes them.

The kernel takes mount options of at most one page. Absolute lowerdir paths of 60+ layers
overflow it, so each layer has a short random link ``overlay/l/<ID>`` -> ``../<chain>/diff``
and the mount names lowers as ``l/<ID>`` relative to ``overlay/``. The relative paths are
resolved against the mounting task's working directory: ``sysmount.mount_in_dir`` calls
mount(2) from a throwaway thread with its own cwd, rather than chdir in the multi-threaded
daemon (or spawn mount(8) per container).
"""

from __future__ import annotations

import base64
import errno
import os

from ocid import sysmount
from ocid.errors import InternalError, InvalidArgument

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
    target = os.path.abspath(target)  # only the options are relative to overlay_dir
    try:
        sysmount.mount_in_dir(overlay_dir, "overlay", target, "overlay", 0, options)
    except OSError as exc:
        # mount(2) names the target, already in the message; a failed chdir names overlay_dir.
        where = f"{exc.filename}: " if exc.filename not in (None, target) else ""
        raise InternalError(f"{what}: mount of the overlay at {target} failed: "
                            f"{where}{exc.strerror}") from exc


def unmount(target: str, what: str) -> None:
    """Unmount ``target`` if it is a mount point; lazily (MNT_DETACH) when it is busy."""
    if not os.path.ismount(target):
        return
    try:
        try:
            sysmount.unmount(target)
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            # Still in use (an exec's cwd, an open file): detach it now, the kernel frees it
            # when the last user goes, as the old ``umount`` + MNT_DETACH fallback did.
            sysmount.unmount(target, sysmount.MNT_DETACH)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOENT):  # unmounted (or removed) since ismount
            return
        raise InternalError(f"{what}: cannot unmount {target}: {exc.strerror}") from exc
