"""Persistent network namespaces, as ``ip netns add`` makes them.

A namespace lives on as a bind mount of its nsfs file at ``<netns_dir>/<name>`` after every
process has left it; ``ip netns exec <name>`` (default dir) and ``nsenter --net=<path>`` (any dir)
can join it, and runc joins it through the spec's network namespace path.

Why not ``pyroute2.netns.create``: it does accept a full path, but it runs the work in a child
made with ``os.fork()``, which in ocid would fork a multi-threaded gRPC server and run Python in
the child (locks held by other threads at the fork stay held there; grpc's at-fork handlers
run). ``unshare(CLONE_NEWNET)`` acts on the calling *thread* only, so instead a short-lived
thread unshares, bind-mounts its own namespace (``/proc/self/task/<tid>/ns/net``: ``/proc/self/ns``
would name the main thread's) and exits. No thread of the daemon ever changes namespace for
longer than that, and nothing forks. Like iproute2, the namespace directory is first made a
shared mount (bind-mounted on itself if needed), so a later umount propagates to mount
namespaces copied meanwhile and does not leave the namespace pinned there.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import struct
import threading
from collections.abc import Iterator

from ocid import sysmount
from ocid.errors import AlreadyExists, InternalError, InvalidArgument, OcidError
from ocid.sysmount import CLONE_NEWNET, MNT_DETACH, MS_BIND, MS_REC, MS_SHARED

log = logging.getLogger(__name__)

NETNS_RUN_DIR = "/var/run/netns"

NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3): the CLONE_NEW* type of an nsfs file
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
_IFREQ = "16sH22x"  # struct ifreq: name, then ifr_flags in a 24-byte union

_lock = threading.Lock()
_creating: set[str] = set()


@contextlib.contextmanager
def _naming(call: str, path: str) -> Iterator[None]:
    """Re-raise an OSError with the failed call in it: "[Errno N] <call>: <strerror>: <path>"."""
    try:
        yield
    except OSError as exc:
        raise OSError(exc.errno, f"{call}: {exc.strerror}", path) from exc


def create(name: str, netns_dir: str = NETNS_RUN_DIR) -> str:
    """Create the persistent netns ``<netns_dir>/<name>`` with ``lo`` up; return its path.

    Raises AlreadyExists when a namespace is already mounted there (or is being created),
    InvalidArgument for a bad name, InternalError when the kernel refuses.
    """
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise InvalidArgument(f"invalid network namespace name {name!r}")
    path = os.path.join(os.path.abspath(netns_dir), name)
    with _lock:
        if path in _creating:
            raise AlreadyExists(f"network namespace {path} is being created")
        try:
            os.makedirs(netns_dir, mode=0o755, exist_ok=True)
            _make_shared(netns_dir)
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0)
            os.close(fd)
        except OSError as exc:
            raise InternalError(f"create network namespace {path}: {exc}") from exc
        if exists(path):
            raise AlreadyExists(f"network namespace {path} already exists")
        _creating.add(path)  # a stale unmounted file left by a crash is reused
    try:
        _pin_new_netns(path)
    except (OSError, RuntimeError) as exc:  # RuntimeError: no thread could be started
        try:
            remove(path)
        except OcidError as cleanup:
            log.warning("cleaning up after a failed create: %s", cleanup)
        raise InternalError(f"create network namespace {path}: {exc}") from exc
    finally:
        with _lock:
            _creating.discard(path)
    return path


def _make_shared(netns_dir: str) -> None:
    """Make ``netns_dir`` a shared mount, bind-mounting it on itself first if need be (iproute2)."""
    with _naming("mount --make-rshared", netns_dir):
        try:
            sysmount.mount("none", netns_dir, None, MS_SHARED | MS_REC)
            return
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: not a mount point yet
                raise
    with _naming("mount", netns_dir):
        sysmount.mount(netns_dir, netns_dir, None, MS_BIND | MS_REC)
        sysmount.mount("none", netns_dir, None, MS_SHARED | MS_REC)


def _pin_new_netns(path: str) -> None:
    """In a throwaway thread: unshare a new netns, bind-mount it at ``path``, bring ``lo`` up."""
    errors: list[Exception] = []

    def body() -> None:
        try:
            with _naming("unshare(CLONE_NEWNET)", path):
                sysmount.unshare(CLONE_NEWNET)
            with _naming("mount", path):
                own = f"/proc/self/task/{threading.get_native_id()}/ns/net"
                sysmount.mount(own, path, None, MS_BIND)
            _set_lo_up()  # a socket made by this thread lives in the new namespace
        except Exception as exc:  # noqa: BLE001 - handed to the calling thread
            errors.append(exc)
        # Returning ends the OS thread, and with it this thread's hold on the new namespace.

    thread = threading.Thread(target=body, name="ocid-netns", daemon=True)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def _set_lo_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        ifreq = fcntl.ioctl(sock, SIOCGIFFLAGS, struct.pack(_IFREQ, b"lo", 0))
        flags = struct.unpack(_IFREQ, ifreq)[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack(_IFREQ, b"lo", flags | IFF_UP))


def remove(path: str) -> None:
    """Unmount and delete a namespace file; an absent or unmounted path is fine."""
    for _ in range(16):  # stacked mounts, if someone mounted twice
        try:
            sysmount.unmount(path, MNT_DETACH)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOENT):  # not a mount point / no such path
                break
            raise InternalError(f"unmount network namespace {path}: {exc.strerror}") from exc
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise InternalError(f"remove network namespace {path}: {exc}") from exc


def exists(path: str) -> bool:
    """Whether ``path`` is a network namespace file (a mounted nsfs file, under a netns dir)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNET
    except OSError:  # ENOTTY: an ordinary file
        return False
    finally:
        os.close(fd)
