"""The ocid daemon: claims its state and socket, serves the CRI until SIGTERM/SIGINT."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
import socket
import stat
import threading
from dataclasses import dataclass, field
from types import FrameType

from ocid import __version__
from ocid.config import Config
from ocid.errors import FailedPrecondition, OcidError
from ocid.server import create_server

log = logging.getLogger("ocid")

SOCKET_MODE = 0o660
STOP_GRACE_SECONDS = 5.0


class AlreadyRunning(FailedPrecondition):
    """Another daemon holds the socket or the state directory."""


def socket_is_live(path: str) -> bool:
    """Whether something accepts connections on the unix socket at ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        raise
    finally:
        probe.close()
    return True


def claim_socket_path(path: str) -> None:
    """Make ``path`` free for our socket: refuse a live one, replace a stale one."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FailedPrecondition(f"{path} exists and is not a socket; remove it or choose another --listen")
    if socket_is_live(path):
        raise AlreadyRunning(f"another ocid (or another server) is already serving {path}; "
                             "stop it or choose another --listen")
    log.info("removing stale socket %s", path)
    os.unlink(path)


def take_notify_socket() -> str | None:
    """Remove $NOTIFY_SOCKET from our environment and return it.

    It is ours alone: runc passes an inherited NOTIFY_SOCKET on to the container (and
    fails when the path is long), as sd_notify's unset_environment flag also avoids.
    """
    return os.environ.pop("NOTIFY_SOCKET", None)


def notify_systemd(message: str, address: str | None) -> None:
    """sd_notify: tell the service manager (or a test) our state through its socket.

    Written by hand: it is one datagram, and the PyPI packages for it are unmaintained.
    """
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:  # best effort: the listener may be gone
        log.debug("sd_notify %s to %s failed: %s", message, address, exc)


@dataclass
class Daemon:
    """One ocid process serving one configuration."""

    config: Config
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock_fd: int | None = None

    def _lock_state(self) -> None:
        """Hold the runroot lock for our lifetime: one daemon per state directory."""
        runroot = self.config.ocid.runroot
        os.makedirs(runroot, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(runroot, "ocid.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunning(f"another ocid is using the state directory {runroot}") from None
        self._lock_fd = fd

    def _prepare_dirs(self) -> None:
        cfg = self.config.ocid
        for directory in (cfg.root, cfg.sandbox_dir, cfg.container_dir):
            os.makedirs(directory, mode=0o700, exist_ok=True)

    def stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        """Ask the serving loop to end (a signal handler)."""
        if signum is not None:
            log.info("received %s, shutting down", signal.Signals(signum).name)
        self._stop.set()

    def run(self) -> None:
        """Serve until stopped. Raises OcidError when the daemon cannot start."""
        listen = self.config.api.listen
        notify_address = take_notify_socket()
        self._lock_state()
        claim_socket_path(listen)
        self._prepare_dirs()
        from ocid.image.service import ImageService
        from ocid.lifecycle.service import Lifecycle
        from ocid.reaper import Reaper
        from ocid.server.streaming import StreamBackend
        from ocid.stream.server import StreamServer

        # conmon processes re-parent to us, not to a slow init, and we reap them; a monitor
        # or init that dies that way may change a container's state.
        lifecycle: Lifecycle | None = None

        def child_exited(pid: int, code: int) -> None:
            if lifecycle is not None:
                lifecycle.containers.on_child_exit(pid)

        reaper = Reaper(on_exit=child_exited)
        reaper.start()
        images = ImageService(self.config)
        lifecycle = Lifecycle(self.config, images)
        lifecycle.start()
        api = self.config.api
        streams = StreamServer(StreamBackend(lifecycle), api.stream_address, api.stream_port,
                               tls_cert=api.stream_tls_cert, tls_key=api.stream_tls_key)
        streams.start()  # an address in use or bad TLS files: an OcidError naming them
        server = create_server(self.config, images, lifecycle, streams)
        old_umask = os.umask(0o117)  # the socket is created 0660, never briefly wider
        try:
            bound = server.add_insecure_port(f"unix:{listen}")
        except RuntimeError as exc:
            raise OcidError(f"cannot listen on {listen}: {exc}") from exc
        finally:
            os.umask(old_umask)
        if not bound:
            raise OcidError(f"cannot listen on {listen}")
        os.chmod(listen, SOCKET_MODE)
        server.start()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.stop)
        log.info("ocid %s serving the CRI on %s", __version__, listen)
        notify_systemd("READY=1", notify_address)
        try:
            self._stop.wait()
        finally:
            notify_systemd("STOPPING=1", notify_address)
            server.stop(STOP_GRACE_SECONDS).wait()
            streams.stop()
            lifecycle.close()
            images.close()
            reaper.stop()
            try:
                os.unlink(listen)
            except FileNotFoundError:
                pass
            log.info("ocid stopped")
