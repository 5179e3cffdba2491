"""mount(2), umount2(2), unshare(2) and setns(2) through ctypes: no mount(8)/umount(8) process per call.

Spawning mount(8)/umount(8) adds a fork+exec (and a PATH search) to every pod and container
start and stop, on top of the syscall the tool makes anyway. Like ``os``, failures raise
``OSError(errno, strerror, path)``, and a string with a NUL byte raises ValueError.

Relative paths in a mount (overlay's short ``l/<ID>`` lowerdirs) resolve against the calling
task's working directory, which all threads of the daemon share. ``mount_in_dir`` therefore
mounts from a short-lived thread that first takes a private copy of the cwd with
``unshare(CLONE_FS)`` and then chdirs: the process's cwd never moves, and the thread's copy
dies with it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import threading

MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SHARED = 1 << 20
MNT_DETACH = 0x2  # umount2: lazy unmount, detached now and cleaned up once no longer busy
CLONE_FS = 0x00000200  # unshare: private cwd, root and umask for the calling thread
CLONE_NEWNET = 0x40000000  # unshare/setns: a network namespace

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_void_p]
_libc.mount.restype = ctypes.c_int
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.umount2.restype = ctypes.c_int
_libc.unshare.argtypes = [ctypes.c_int]
_libc.unshare.restype = ctypes.c_int
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.setns.restype = ctypes.c_int


def _error(path: str | None) -> OSError:
    err = ctypes.get_errno()
    if path is None:
        return OSError(err, os.strerror(err))
    return OSError(err, os.strerror(err), path)


def _encode(value: str | None) -> bytes | None:
    if value is None:
        return None
    raw = os.fsencode(value)
    if b"\0" in raw:  # c_char_p would silently cut the string there
        raise ValueError(f"embedded null byte in {value!r}")
    return raw


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
    """mount(2): ``data`` is the file-system-specific option string (``-o`` minus MS_* flags)."""
    if _libc.mount(_encode(source), _encode(target), _encode(fstype), flags, _encode(data)) != 0:
        raise _error(target)


def unmount(target: str, flags: int = 0) -> None:
    """umount2(2); EINVAL means ``target`` is not a mount point, EBUSY that it is in use."""
    if _libc.umount2(_encode(target), flags) != 0:
        raise _error(target)


def unshare(flags: int) -> None:
    """unshare(2) for the calling thread (CLONE_FS, CLONE_NEWNET, ...)."""
    if _libc.unshare(flags) != 0:
        raise _error(None)


def setns(fd: int, nstype: int) -> None:
    """setns(2) for the calling thread (os.setns comes with Python 3.12)."""
    if _libc.setns(fd, nstype) != 0:
        raise _error(None)


def mount_in_dir(directory: str, source: str | None, target: str, fstype: str | None,
                 flags: int = 0, data: str | None = None) -> None:
    """mount(2) with relative paths (source, target, paths in ``data``) resolved in ``directory``.

    Runs in a throwaway thread with its own cwd (see the module docstring); its error, if any,
    is raised here. A failed ``chdir`` raises with ``directory`` as the path.
    """
    errors: list[Exception] = []

    def body() -> None:
        try:
            unshare(CLONE_FS)  # from here on, chdir moves this thread only
            os.chdir(directory)
            mount(source, target, fstype, flags, data)
        except Exception as exc:  # noqa: BLE001 - handed to the calling thread
            errors.append(exc)
        # Returning ends the OS thread and frees its private fs struct (cwd) with it.

    thread = threading.Thread(target=body, name="ocid-mount", daemon=True)
    try:
        thread.start()
    except RuntimeError as exc:  # no thread could be started
        raise OSError(errno.EAGAIN, f"cannot start a mount thread: {exc}", target) from exc
    thread.join()
    if errors:
        raise errors[0]
