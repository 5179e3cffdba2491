"""The runtime side of CRI streaming: interactive exec, attach to conmon, port-forward dialing.

The streaming server (``ocid/stream``) speaks the protocols; these functions move the bytes.
Facts about conmon 2.1.6 and runc 1.1.5 are in /work/shared/notes/conmon.md (§3 exec, §4 attach).

Exec runs ``runc exec --process F --pid-file P ID`` directly, as cri-o's ExecContainer does.
Without a tty, runc gets three pipes. With a tty, runc's stdio is the slave of a pty we own
(cri-o's ttyCmd). runc then makes the container's pty itself, copies between the two and copies our
window size at start and on every SIGWINCH. The other way, ``runc exec -t --console-socket``,
is refused unless runc also detaches (``-d``), and a detached runc cannot report the exit code: the
process would be reparented to the daemon's subreaper.

Every session runs on the caller's thread, plus a thread pumping ``io.stdin`` (a blocking callable)
and one reading ``io.resizes``. The stdin thread stays blocked in ``io.stdin()`` until that returns,
even after the session has ended: the caller must make it return ``b""`` when its stream closes.
Writes from those threads go through ``_Writer``, whose lock means a late write can never reach
an fd number the session has already closed and the process has reused.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import queue
import select
import signal
import socket
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ocid import sysmount
from ocid.errors import FailedPrecondition, InternalError, InvalidArgument, NotFound
from ocid.oci.runtime import OciRuntime

log = logging.getLogger(__name__)

ATTACH_RECV = 8193  # conmon's packets: 1 stream byte + at most 8192 data bytes (§4)
ATTACH_SEND_MAX = 32768  # conmon reads this much per packet; the rest of a bigger one is lost
_STREAM_STDOUT, _STREAM_STDERR = 2, 3
_READ_CHUNK = 65536
_RESIZE_GAP = 0.1  # between ctl writes: conmon 2.1.6 handles only the first line of a read (§4)
_DRAIN_GRACE = 1.0  # output read after runc exits, should a background process hold the pipes
_CANCEL_POLL = 0.2  # how often a session with a cancel event checks it
_QUEUE_POLL = 0.25  # how often the resize thread checks whether its session ended
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path holds 108 bytes including the NUL

Resize = tuple[int, int]  # (width = columns, height = rows), as CRI's TerminalSize


@dataclass(slots=True)
class StreamIO:
    """The client's side of a stream session; None where the client asked for no such stream.

    ``stdin`` blocks for data and returns ``b""`` at EOF. ``stdout``/``stderr`` may raise when the
    client is gone. ``resizes`` carries (width, height) events; a None in it ends them.
    ``gone`` is set when the client went away: an exec is then killed, an attach detaches.
    """

    stdin: Callable[[], bytes] | None = None
    stdout: Callable[[bytes], None] | None = None
    stderr: Callable[[bytes], None] | None = None  # unused with a tty: the pty has one output
    resizes: queue.Queue[Resize | None] | None = None
    gone: threading.Event = field(default_factory=threading.Event)


# -- shared plumbing ------------------------------------------------------------------------


class _Writer:
    """The write end of a session, written by its stdin thread, closed by the session."""

    def __init__(self, fd: int, *, owned: bool, on_eof: Callable[[], None] | None = None):
        self.fd = fd
        self._owned = owned  # close the fd at EOF and at close (a pipe); else the session does
        self._on_eof = on_eof
        self._lock = threading.Lock()
        self._closed = False

    def write(self, data: bytes) -> bool:
        """Write everything (an fd in non-blocking mode); False once closed or the reader is gone."""
        view = memoryview(data)
        while view:
            with self._lock:
                if self._closed:
                    return False
                try:
                    n = os.write(self.fd, view)
                except BlockingIOError:
                    n = 0
                except OSError:  # EPIPE, EIO, ECONNRESET: nobody reads any more
                    return False
            view = view[n:]
            if view and not n:
                # Outside the lock, so the session can close meanwhile; then poll just returns.
                poller = select.poll()
                poller.register(self.fd, select.POLLOUT)
                poller.poll(100)
        return True

    def call(self, fn: Callable[[], object]) -> bool:
        """Run ``fn`` under the lock unless the session has closed; whether it ran."""
        with self._lock:
            if self._closed:
                return False
            fn()
            return True

    def eof(self) -> None:
        """The input ended: close the pipe, or do ``on_eof`` (a socket's SHUT_WR)."""
        with self._lock:
            if self._closed:
                return
            if self._on_eof is not None:
                with contextlib.suppress(OSError):
                    self._on_eof()
            if self._owned:
                self._closed = True
                os.close(self.fd)

    def close(self) -> None:
        """The session is over: no write happens after this returns."""
        with self._lock:
            if not self._closed:
                self._closed = True
                if self._owned:
                    os.close(self.fd)


class _Sink:
    """One output stream of the client; after it fails once, output is dropped."""

    def __init__(self, write: Callable[[bytes], None] | None, name: str):
        self._write = write
        self.name = name
        self.broken = False

    def __call__(self, data: bytes) -> None:
        if self._write is None or self.broken:
            return
        try:
            self._write(data)
        except Exception as exc:  # noqa: BLE001 - any failure means the client is gone
            self.broken = True
            log.debug("stream %s: client gone: %s", self.name, exc)


def _pump_stdin(
    source: Callable[[], bytes], writer: _Writer, chunk: int, done: Callable[[], None] | None = None
) -> None:
    """Copy ``source`` to ``writer`` until EOF or the reader is gone, then signal the EOF."""
    try:
        while True:
            try:
                data = source()
            except Exception as exc:  # noqa: BLE001 - a broken client stream is an EOF
                log.debug("stdin: client stream failed: %s", exc)
                break
            if not data:
                break
            if not all(writer.write(data[i : i + chunk]) for i in range(0, len(data), chunk)):
                break
    finally:
        writer.eof()
        if done is not None:
            done()


def _pump_resizes(
    sizes: queue.Queue[Resize | None], apply: Callable[[int, int], None], ended: threading.Event
) -> None:
    """Apply (width, height) events until a None, or the session ends; keep only the latest
    of those queued meanwhile."""
    while not ended.is_set():
        try:
            size = sizes.get(timeout=_QUEUE_POLL)
        except queue.Empty:
            continue
        last = False
        while size is not None:
            try:
                following = sizes.get_nowait()
            except queue.Empty:
                break
            if following is None:
                last = True
                break
            size = following
        if size is None:
            return
        try:
            width, height = (max(0, min(int(v), 0xFFFF)) for v in size)
            apply(width, height)
        except (OSError, TypeError, ValueError) as exc:
            log.debug("resize to %r failed: %s", size, exc)
        if last:
            return


def _start_thread(target: Callable[..., None], *args: object, name: str) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    thread.start()
    return thread


# -- exec -----------------------------------------------------------------------------------


def exec_interactive(
    runtime: OciRuntime,
    container_id: str,
    bundle: str,
    cmd: list[str],
    io: StreamIO,
    *,
    tty: bool,
    cancel: threading.Event | None = None,
) -> int:
    """Run ``cmd`` in the container with ``runc exec``, streaming ``io``; return its exit code.

    The container's process spec (bundle/config.json) with ``args`` replaced and ``terminal=tty``
    is what runs, as in cri-o. Stdin EOF closes the process's stdin pipe; with a tty nothing is
    sent (cri-o's behaviour) and the process runs until it exits by itself. A failing client
    output is dropped from then on without stopping the process. Setting ``cancel`` SIGKILLs the
    process (137 is then returned). When runc itself fails (executable not found, container not
    running), its logfmt error arrives on stderr (the tty output with a tty) and runc's 255 is
    returned, which is what cri-o's streaming exec reports.
    """
    if not cmd:
        raise InvalidArgument(f"exec in container {container_id}: empty command")
    with runtime.exec_command(container_id, bundle, cmd, tty=tty) as (argv, pidfile, process):
        user = process.get("user") or {}
        owner = (int(user.get("uid", 0)), int(user.get("gid", 0)))
        run = _exec_tty if tty else _exec_pipes
        code = run(argv, io, owner, pidfile, cancel if cancel is not None else io.gone)
    log.debug("exec %s in %s: exit code %d", cmd[0], container_id, code)
    return code


def _spawn(argv: list[str], **kwargs: object) -> subprocess.Popen:
    """Popen runc in its own session, so the daemon's terminal signals never reach it."""
    try:
        return subprocess.Popen(argv, start_new_session=True, **kwargs)  # type: ignore[call-overload]
    except OSError as exc:
        raise InternalError(f"cannot run {argv[0]}: {exc}") from exc


def _exit_code(proc: subprocess.Popen) -> int:
    """runc's return code, which is the process's; 128+N when runc itself died of signal N."""
    code = proc.wait()
    return 128 - code if code < 0 else code


def _exec_tty(
    argv: list[str],
    io: StreamIO,
    owner: tuple[int, int],
    pidfile: str,
    cancel: threading.Event | None,
) -> int:
    """runc on our pty: runc copies it to the container's pty and forwards window sizes."""
    master, slave = os.openpty()  # both close-on-exec: parallel execs never inherit them
    try:
        sizes_ended = _apply_queued_size(master, io.resizes)
        proc = _spawn(argv, stdin=slave, stdout=slave, stderr=slave)
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)  # runc holds the only slave now: its exit gives us EIO on the master
    os.set_blocking(master, False)
    pidfd = os.pidfd_open(proc.pid)  # signals through it cannot hit a reused PID
    writer = _Writer(master, owned=False)
    ended = threading.Event()

    def resize(width: int, height: int) -> None:
        def apply() -> None:
            _set_winsize(master, width, height)
            # runc re-reads the size of its stdin on SIGWINCH. The pty is not runc's controlling
            # terminal (Popen cannot set one), so the kernel does not send it: we do.
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGWINCH)

        writer.call(apply)

    try:
        if io.stdin is not None:
            _start_thread(_pump_stdin, io.stdin, writer, _READ_CHUNK, name="exec-stdin")
        if io.resizes is not None and not sizes_ended:
            _start_thread(_pump_resizes, io.resizes, resize, ended, name="exec-resize")
        _pump_output(
            {master: _Sink(io.stdout, "stdout")}, pidfd, cancel, lambda: _kill_exec(proc, pidfile)
        )
        return _exit_code(proc)
    finally:
        ended.set()
        writer.close()
        os.close(master)
        os.close(pidfd)
        if proc.returncode is None:  # an exception got us here: do not leave runc unreaped
            proc.kill()
            proc.wait()


def _apply_queued_size(master: int, sizes: queue.Queue[Resize | None] | None) -> bool:
    """Set the latest size already queued (runc copies it when it starts); whether sizes ended."""
    if sizes is None:
        return False
    latest, ended = None, False
    while True:
        try:
            item = sizes.get_nowait()
        except queue.Empty:
            break
        if item is None:
            ended = True
            break
        latest = item
    if latest is not None:
        _set_winsize(master, *(max(0, min(int(v), 0xFFFF)) for v in latest))
    return ended


def _set_winsize(fd: int, width: int, height: int) -> None:
    """TIOCSWINSZ: struct winsize is rows, columns, then two unused pixel sizes."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


def _exec_pipes(
    argv: list[str],
    io: StreamIO,
    owner: tuple[int, int],
    pidfile: str,
    cancel: threading.Event | None,
) -> int:
    """runc with a pipe per requested stream (/dev/null for the others), as cri-o does."""
    child_fds: list[int] = []
    outputs: dict[int, _Sink] = {}
    stdin_w = None
    try:
        std: list[int] = []
        if io.stdin is not None:
            r, stdin_w = os.pipe()
            # cri-o gives the read end to the container's user, who may reopen /dev/stdin.
            os.fchown(r, *owner)
            os.set_blocking(stdin_w, False)
            child_fds.append(r)
            std.append(r)
        else:
            std.append(subprocess.DEVNULL)
        for write, name in ((io.stdout, "stdout"), (io.stderr, "stderr")):
            if write is None:
                std.append(subprocess.DEVNULL)
                continue
            r, w = os.pipe()
            outputs[r] = _Sink(write, name)
            child_fds.append(w)
            std.append(w)
        proc = _spawn(argv, stdin=std[0], stdout=std[1], stderr=std[2])
    except BaseException:
        for fd in (*outputs, *([stdin_w] if stdin_w is not None else [])):
            os.close(fd)
        raise
    finally:
        for fd in child_fds:
            os.close(fd)
    pidfd = os.pidfd_open(proc.pid)
    writer = _Writer(stdin_w, owned=True) if stdin_w is not None else None
    ended = threading.Event()
    try:
        if writer is not None and io.stdin is not None:
            _start_thread(_pump_stdin, io.stdin, writer, _READ_CHUNK, name="exec-stdin")
        if io.resizes is not None:  # no terminal to size: just consume the events
            _start_thread(_pump_resizes, io.resizes, lambda w, h: None, ended, name="exec-resize")
        _pump_output(outputs, pidfd, cancel, lambda: _kill_exec(proc, pidfile))
        return _exit_code(proc)
    finally:
        ended.set()
        if writer is not None:
            writer.close()
        for fd in outputs:
            os.close(fd)
        os.close(pidfd)
        if proc.returncode is None:
            proc.kill()
            proc.wait()


def _pump_output(
    outputs: dict[int, _Sink], pidfd: int, cancel: threading.Event | None, kill: Callable[[], None]
) -> None:
    """Copy each readable fd to its sink until all reach EOF (EIO for a pty master) and runc
    has exited. After runc exits, output still in flight is read for _DRAIN_GRACE seconds at
    most: a background process of the exec could hold the pipes open for ever."""
    poller = select.poll()
    for fd in outputs:
        poller.register(fd, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    open_fds = set(outputs)
    runc_alive = True
    deadline: float | None = None
    killed = False
    while open_fds or runc_alive:
        timeout = None
        if deadline is not None:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                log.debug("exec: output still open %.1fs after runc exited; dropped", _DRAIN_GRACE)
                return
        if cancel is not None:
            timeout = _CANCEL_POLL if timeout is None else min(timeout, _CANCEL_POLL)
        events = poller.poll(None if timeout is None else timeout * 1000)
        if cancel is not None and not killed and cancel.is_set() and runc_alive:
            killed = True
            kill()
        for fd, _ in events:
            if fd == pidfd:
                poller.unregister(pidfd)
                runc_alive = False
                deadline = time.monotonic() + _DRAIN_GRACE
                continue
            try:
                data = os.read(fd, _READ_CHUNK)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno != errno.EIO:  # EIO: the pty's slave side is closed
                    raise
                data = b""
            if data:
                outputs[fd](data)
            else:
                poller.unregister(fd)
                open_fds.discard(fd)


def _kill_exec(proc: subprocess.Popen, pidfile: str) -> None:
    """SIGKILL the exec'd process (its group if it leads one, as with a tty); runc if there is
    no process yet. runc then exits with 137."""
    try:
        pid = int(Path(pidfile).read_text().strip())
    except (OSError, ValueError):
        pid = 0
    if not pid:
        proc.kill()
        return
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# -- attach ---------------------------------------------------------------------------------


def attach(
    attach_dir: str,
    container_id: str,
    bundle: str,
    io: StreamIO,
    *,
    tty: bool,
    stdin_once: bool,
    cancel: threading.Event | None = None,
) -> None:
    """Stream ``io`` to and from a container through conmon's attach socket (§4), as cri-o does.

    Returns when the container's output ends (conmon closes the socket as the container exits),
    when the client's output fails or ``cancel`` is set (a detach: the container keeps running),
    or, for a stdin attach to a container without ``stdin_once`` and without a tty, at stdin EOF.
    Stdin EOF always does SHUT_WR, after which conmon closes the container's stdin unless it runs
    with ``--leave-stdin-open`` (a container with stdin but not stdin_once). With a tty, resizes
    go to conmon's ctl FIFO in the bundle. ``stdin_once`` and ``tty`` are the container's config.
    Raises FailedPrecondition when there is no attach socket (the container is not running).
    """
    if cancel is None:
        cancel = io.gone
    sock = _connect_attach(attach_dir, container_id)
    sock.setblocking(False)
    writer = _Writer(sock.fileno(), owned=False, on_eof=lambda: sock.shutdown(socket.SHUT_WR))
    wake_r, wake_w = os.pipe()
    ended = threading.Event()
    return_at_stdin_eof = io.stdin is not None and not stdin_once and not tty
    out, err = _Sink(io.stdout, "stdout"), _Sink(io.stderr, "stderr")
    ctl = os.path.join(bundle, "ctl")

    def stdin_done() -> None:
        writer.call(lambda: os.write(wake_w, b"\0"))

    def resize(width: int, height: int) -> None:
        if tty:  # conmon has no terminal to size otherwise
            _write_ctl(ctl, f"1 {height} {width}\n")
            ended.wait(_RESIZE_GAP)

    try:
        if io.stdin is not None:
            _start_thread(
                _pump_stdin, io.stdin, writer, ATTACH_SEND_MAX, stdin_done, name="attach-stdin"
            )
        if io.resizes is not None:
            _start_thread(_pump_resizes, io.resizes, resize, ended, name="attach-resize")
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        poller.register(wake_r, select.POLLIN)
        while True:
            events = poller.poll(None if cancel is None else _CANCEL_POLL * 1000)
            if cancel is not None and cancel.is_set():
                log.debug("attach %s: detached", container_id)
                return
            for fd, _ in events:
                if fd == wake_r:
                    poller.unregister(wake_r)
                    if return_at_stdin_eof:
                        return
                    continue
                try:
                    packet = sock.recv(ATTACH_RECV)
                except BlockingIOError:
                    continue
                except OSError as exc:  # ECONNRESET: conmon went away
                    log.debug("attach %s: %s", container_id, exc)
                    return
                if not packet:
                    return
                stream, data = packet[0], packet[1:]
                if stream == _STREAM_STDOUT:
                    out(data)
                elif stream == _STREAM_STDERR:
                    err(data)
                if out.broken or err.broken:
                    log.debug("attach %s: client gone, detaching", container_id)
                    return
    finally:
        ended.set()
        writer.close()
        sock.close()
        os.close(wake_r)
        os.close(wake_w)


def _connect_attach(attach_dir: str, container_id: str) -> socket.socket:
    """A SOCK_SEQPACKET connection to ``<attach_dir>/<id>/attach``, via /proc/self/fd when the
    path does not fit in sun_path."""
    directory = os.path.join(attach_dir, container_id)
    path = os.path.join(directory, "attach")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        if len(os.fsencode(path)) <= _SUN_PATH_MAX:
            sock.connect(path)
        else:
            dirfd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                sock.connect(f"/proc/self/fd/{dirfd}/attach")
            finally:
                os.close(dirfd)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        sock.close()
        raise FailedPrecondition(
            f"attach to container {container_id}: it is not running (no attach socket at {path})"
        ) from exc
    except OSError as exc:
        sock.close()
        raise InternalError(f"attach to container {container_id}: connect {path}: {exc}") from exc
    return sock


def _write_ctl(ctl: str, command: str) -> bool:
    """One command to conmon's ctl FIFO (never blocking); False when conmon is gone."""
    try:
        fd = os.open(ctl, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:  # ENXIO: no reader, the monitor is gone; ENOENT: no FIFO
        log.debug("ctl %s: %s", ctl, exc)
        return False
    try:
        os.write(fd, command.encode())
        return True
    except OSError as exc:  # EAGAIN: conmon is not reading; EPIPE: it just went away
        log.debug("ctl %s: %s", ctl, exc)
        return False
    finally:
        os.close(fd)


# -- port forward ---------------------------------------------------------------------------



def dial_in_netns(netns_path: str, port: int, timeout: float = 10) -> socket.socket:
    """A TCP connection to localhost:``port`` in the network namespace at ``netns_path``
    ("" for the daemon's own, as for host-network pods); blocking, no timeout set.

    127.0.0.1 is tried first, then ::1 (as containerd does). Only a short-lived thread enters the
    namespace, to create the sockets, and exits at once: a socket stays in the namespace it was
    created in, and no daemon thread is left inside the pod's. Raises ConnectionRefusedError
    when nothing listens, TimeoutError, another OSError for other network errors, NotFound
    when the namespace file is gone, InvalidArgument for a bad port.
    """
    if not 0 < port < 65536:
        raise InvalidArgument(f"port forward: invalid port {port}")
    where = f"network namespace {netns_path}" if netns_path else "the host network namespace"
    sockets = _sockets_in_netns(netns_path) if netns_path else _new_sockets()
    deadline = time.monotonic() + timeout
    refused: OSError | None = None
    try:
        for sock, host in zip(sockets, ("127.0.0.1", "::1")):
            if sock is None:
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                sock.connect((host, port))
            except ConnectionRefusedError as exc:
                refused = refused or exc
                continue
            except TimeoutError as exc:
                raise TimeoutError(
                    f"connect to {host}:{port} in {where}: timed out after {timeout}s"
                ) from exc
            except OSError as exc:
                if host == "::1":  # no IPv6 loopback there: the IPv4 answer stands
                    continue
                raise OSError(
                    exc.errno, f"connect to {host}:{port} in {where}: {exc.strerror}"
                ) from exc
            sock.settimeout(None)
            sockets.remove(sock)
            return sock
        if refused is None:
            raise TimeoutError(
                f"connect to localhost:{port} in {where}: timed out after {timeout}s"
            )
        raise ConnectionRefusedError(
            errno.ECONNREFUSED,
            f"connection refused: nothing listens on localhost:{port} in {where}",
        ) from refused
    finally:
        for sock in sockets:
            if sock is not None:
                sock.close()


def _new_sockets() -> list[socket.socket | None]:
    """A TCP socket for IPv4 and, when the namespace has IPv6, one for IPv6."""
    v4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        v6: socket.socket | None = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:  # EAFNOSUPPORT: IPv6 disabled
        v6 = None
    return [v4, v6]


def _sockets_in_netns(netns_path: str) -> list[socket.socket | None]:
    """_new_sockets() made in the namespace at ``netns_path`` by a thread that then exits."""
    try:
        nsfd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise NotFound(f"network namespace {netns_path} does not exist") from exc
    except OSError as exc:
        raise InternalError(f"open network namespace {netns_path}: {exc}") from exc
    result: list[list[socket.socket | None]] = []
    failure: list[BaseException] = []

    def body() -> None:
        try:
            try:
                sysmount.setns(nsfd, sysmount.CLONE_NEWNET)
            except OSError as exc:
                raise InternalError(f"enter network namespace {netns_path}: {exc.strerror}") from exc
            result.append(_new_sockets())
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
            failure.append(exc)
        # Returning ends this OS thread, the only one that ever entered the namespace.

    try:
        thread = threading.Thread(target=body, name="ocid-netns-dial", daemon=True)
        thread.start()
        thread.join()
    finally:
        os.close(nsfd)
    if failure:
        raise failure[0]
    return result[0]
