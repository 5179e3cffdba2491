"""The OCI runtime driver: runc (or crun) under conmon, like cri-o's internal/oci RuntimeOCI.

Facts about conmon 2.1.6 and runc 1.1.5 this follows are in /work/shared/notes/conmon.md;
section numbers (§1 …) below point there.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import select
import selectors
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ocid.errors import DeadlineExceeded, FailedPrecondition, InternalError, NotFound, OcidError

_LOGFMT_MSG = re.compile(r'\bmsg=("(?:[^"\\]|\\.)*"|\S+)')
_NOT_FOUND = ("does not exist",)
_NOT_RUNNING = ("container not running", "invalid process", "no such process")
_EXIT_FILE_WAIT = 5.0  # how long state() waits for conmon to write the exit file (§7 race)
_KILL_WAIT = 10.0  # how long stop() waits for the init after SIGKILL
_RUNC_QUICK = 1.0  # seconds for a runc call on a stop path, which must keep its timeout
_POLL_CHUNK = 86400.0
# Bytes kept of each of an ExecSync's stdout and stderr: together they stay within cri-o's
# 16 MiB and the gRPC message limit.
MAX_EXEC_OUTPUT = 8 * 1024 * 1024
_MAX_WAIT = 365 * 86400.0  # poll() cannot wait longer than ~24 days; nobody needs more


@dataclass(frozen=True, slots=True)
class RuntimePaths:
    """Where the runtime, conmon and their state live."""

    runtime_path: str
    runtime_root: str
    conmon_path: str
    conmon_env: tuple[str, ...]
    exits_dir: str
    attach_dir: str
    systemd_cgroup: bool = False  # the systemd cgroup manager: runc --systemd-cgroup, conmon -s


@dataclass
class ContainerState:
    """A container's status as runc and conmon's exit files report it."""

    status: str  # runc's created|running|paused|stopped, or unknown
    pid: int
    exit_code: int | None
    finished_at: float | None
    oom_killed: bool


@dataclass
class ExecResult:
    """The outcome of exec_sync; a timeout is a result, not an error."""

    stdout: bytes
    stderr: bytes
    exit_code: int
    timed_out: bool


def runc_message(stderr: str) -> str:
    """The last ``msg=`` of runc's logfmt stderr, or the stripped text when there is none."""
    found = _LOGFMT_MSG.findall(stderr)
    if not found:
        return stderr.strip()
    msg = found[-1]
    if msg.startswith('"'):
        try:
            return json.loads(msg)  # logfmt quoting is Go's strconv.Quote, a JSON superset
        except ValueError:
            return msg[1:-1]
    return msg


def _wait_pidfd(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` exits (or is a zombie); True if it did within ``timeout``."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return _poll_fd(fd, timeout)
    finally:
        os.close(fd)


def _poll_fd(fd: int, timeout: float) -> bool:
    """Whether ``fd`` becomes readable within ``timeout`` seconds."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while timeout > _POLL_CHUNK:  # poll() takes at most 2**31 ms
        if poller.poll(_POLL_CHUNK * 1000):
            return True
        timeout -= _POLL_CHUNK
    return bool(poller.poll(max(timeout, 0) * 1000))


def _reap(pid: int, timeout: float) -> int | None:
    """waitpid our child ``pid`` within ``timeout``; SIGKILL it if it overstays. Return its status."""
    if not _wait_pidfd(pid, timeout):
        _kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _kill(pid: int, signum: int) -> None:
    """Send a signal, ignoring a process that is already gone."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


class OciRuntime:
    """Create, start, signal, inspect and delete containers through conmon and runc."""

    def __init__(self, paths: RuntimePaths):
        self.paths = paths
        for d in (paths.exits_dir, paths.attach_dir):
            os.makedirs(d, mode=0o755, exist_ok=True)  # conmon fails silently without them (§7)

    # -- runc ------------------------------------------------------------------------------

    def _runc(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run one runc subcommand; raise the ocid error matching its message on failure."""
        cmd = [*self.global_args(), *args]
        try:
            proc = subprocess.run(
                cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
                check=False,  # a failure becomes the matching ocid error below
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            raise DeadlineExceeded(f"runtime {args[0]} timed out after {timeout}s") from exc
        except OSError as exc:
            raise InternalError(f"cannot run {cmd[0]}: {exc}") from exc
        if proc.returncode != 0:
            raise self._error(args[0], args[-1] if len(args) > 1 else "", proc.stderr)
        return proc

    def global_args(self) -> list[str]:
        """The runtime binary and the flags every runc call takes."""
        systemd = ["--systemd-cgroup"] if self.paths.systemd_cgroup else []
        return [self.paths.runtime_path, "--root", self.paths.runtime_root, *systemd]

    @staticmethod
    def _error(op: str, container_id: str, stderr: str) -> OcidError:
        """Map a runc failure to NotFound, FailedPrecondition or InternalError."""
        msg = runc_message(stderr) or "unknown runtime error"
        text = f"{op} container {container_id}: {msg}"
        if any(s in msg for s in _NOT_FOUND):
            return NotFound(text)
        if any(s in msg for s in _NOT_RUNNING) or "not paused" in msg or "cannot start" in msg:
            return FailedPrecondition(text)
        return InternalError(text)

    # -- create ----------------------------------------------------------------------------

    def create(
        self,
        container_id: str,
        bundle: str,
        *,
        log_path: str,
        persist_dir: str,
        name: str = "",
        terminal: bool = False,
        stdin: bool = False,
        stdin_once: bool = False,
        timeout: float = 240,
    ) -> tuple[int, int]:
        """`runc create` through conmon (§1); return (container init pid, conmon pid)."""
        p = self.paths
        os.makedirs(persist_dir, mode=0o700, exist_ok=True)
        conmon_pidfile = os.path.join(bundle, "conmon-pidfile")
        argv = [
            p.conmon_path, "-b", bundle, "-c", container_id, "--exit-dir", p.exits_dir,
            "-l", log_path, "--log-level", "error", "-n", name or container_id,
            "-P", conmon_pidfile, "-p", os.path.join(bundle, "pidfile"),
            "--persist-dir", persist_dir, "-r", p.runtime_path,
            "--runtime-arg", f"--root={p.runtime_root}", "--socket-dir-path", p.attach_dir,
            "--syslog", "-u", container_id,
        ]  # fmt: skip
        if p.systemd_cgroup:
            argv.append("-s")
        if terminal:
            argv.append("-t")
        elif stdin:
            argv += ["-i"] if stdin_once else ["--leave-stdin-open", "-i"]
        env = dict(e.split("=", 1) for e in p.conmon_env)
        env.setdefault("PATH", os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"))
        env.update(_OCI_SYNCPIPE="3", _OCI_STARTPIPE="4")

        with contextlib.suppress(FileNotFoundError):
            os.unlink(conmon_pidfile)  # a stale one would name the wrong monitor
        with tempfile.TemporaryFile() as errfile:
            try:
                # conmon works in its cwd (the `oom` marker, attach FIFOs): that must be the
                # bundle, as in cri-o. os.posix_spawn cannot chdir before Python 3.13, so
                # coreutils' env does it and execs conmon (one exec, no shell).
                status, line = _spawn_conmon(
                    [ENV_PATH, f"--chdir={bundle}", *argv], env, errfile.fileno(),
                    time.monotonic() + timeout
                )
            except OSError as exc:
                raise InternalError(f"cannot run {p.conmon_path}: {exc}") from exc
            errfile.seek(0)
            detail = errfile.read().decode(errors="replace").strip()
        conmon_pid = _read_pid(conmon_pidfile)
        what = f"create container {container_id}"
        try:
            if line is None:
                raise DeadlineExceeded(f"{what}: timed out after {timeout}s")
            if not line.strip():  # conmon died before reporting: its stderr says why (§7)
                raise InternalError(f"{what}: conmon exited ({status}) without a result: {detail}")
            try:
                result = json.loads(line)
                pid = int(result["pid"])
            except (ValueError, KeyError, TypeError) as exc:
                raise InternalError(f"{what}: bad conmon reply {line!r}") from exc
            if pid <= 0:
                raise self._error("create", container_id, result.get("message", ""))
            if conmon_pid is None:
                raise InternalError(f"{what}: conmon wrote no pid file")
        except OcidError:
            self._discard(container_id, conmon_pid)
            raise
        return pid, conmon_pid

    def _discard(self, container_id: str, conmon_pid: int | None) -> None:
        """Undo a failed create: stop the monitor and remove what runc may have made."""
        if conmon_pid is not None and not _wait_pidfd(conmon_pid, 2):
            _kill(conmon_pid, signal.SIGKILL)  # it forwards SIGTERM to the container: use KILL
            _wait_pidfd(conmon_pid, 2)
        try:
            self.delete(container_id)
        except OcidError:
            pass  # the original failure is the one worth reporting

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, container_id: str) -> None:
        """`runc start`: run the user process of a created container."""
        self._runc("start", container_id)

    def kill(self, container_id: str, signal: int, *, all_processes: bool = False,
             timeout: float = 60) -> None:
        """Send ``signal`` to the init (or every process, for ``all_processes``)."""
        self._runc("kill", *(["--all"] if all_processes else []), container_id, str(int(signal)),
                   timeout=timeout)

    def stop(self, container_id: str, timeout: float, stop_signal: int = 15, *,
             pid: int = 0, pid_start: int = 0) -> None:
        """Send ``stop_signal``, then SIGKILL once ``timeout`` ends; wait for the init to exit.

        The signals go to the init through a pidfd, as ``runc kill`` would send them. With the
        ``pid`` and ``pid_start`` (start time) recorded at create, no runc call is needed at all,
        as containerd's shim keeps them in memory; without them ``runc state`` names the init,
        with a second to answer so the timeout holds even when the runtime hangs.
        """
        timeout = min(max(timeout, 0), _MAX_WAIT)
        pidfd = self._init_pidfd(container_id, pid, pid_start)
        if pidfd is None:
            return  # not running
        try:
            for signum, wait in ((stop_signal, timeout), (signal.SIGKILL, _KILL_WAIT)):
                phase_end = time.monotonic() + wait
                try:
                    signal.pidfd_send_signal(pidfd, signum)
                except ProcessLookupError:
                    return  # exited (and reaped) on its own meanwhile
                if signum == signal.SIGKILL and not _poll_fd(pidfd, _RUNC_QUICK):
                    self._resume_if_paused(container_id)  # a frozen task outlives SIGKILL
                if _poll_fd(pidfd, phase_end - time.monotonic()):
                    return
            raise DeadlineExceeded(f"stop container {container_id}: still alive after SIGKILL")
        finally:
            os.close(pidfd)

    def _resume_if_paused(self, container_id: str) -> None:
        """Thaw a paused (frozen) container, so that its pending SIGKILL lands."""
        with contextlib.suppress(OcidError, ValueError, KeyError):
            if self._runc_state(container_id, timeout=_RUNC_QUICK)["status"] == "paused":
                self._runc("resume", container_id, timeout=_RUNC_QUICK)

    def _init_pidfd(self, container_id: str, pid: int, pid_start: int) -> int | None:
        """A pidfd on the container's init, or None when it no longer runs.

        A pidfd is opened before any signal, so a PID reused later is never signalled; the
        start time check covers a reuse that happened before.
        """
        if not (pid and pid_start):
            try:
                state = self._runc_state(container_id, timeout=_RUNC_QUICK)
            except DeadlineExceeded:
                if not pid:
                    raise
                state = {"status": "running", "pid": pid}
            if state["status"] == "stopped" or not state["pid"]:
                return None
            if state["status"] == "paused":
                self._runc("resume", container_id, timeout=_RUNC_QUICK)
            pid = state["pid"]
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return None
        if pid_start:
            started = start_time(pid, zombie=True)  # a zombie's PID is not reused yet
            if started is None:  # reaped just now, or /proc unreadable: ask runc
                os.close(pidfd)
                return self._init_pidfd(container_id, pid, 0)
            if started != pid_start:
                os.close(pidfd)
                return None  # our init exited and its PID went to another process
        return pidfd

    def delete(self, container_id: str) -> None:
        """`runc delete --force`; an unknown ID is not an error."""
        try:
            self._runc("delete", "--force", container_id)
        except NotFound:
            pass
        try:
            os.unlink(os.path.join(self.paths.exits_dir, container_id))
        except FileNotFoundError:
            pass

    def list_ids(self) -> list[str]:
        """IDs of every container in this runtime's root (restore finds leftovers with it)."""
        if not os.path.isdir(self.paths.runtime_root):
            return []
        listed = json.loads(self._runc("list", "--format", "json").stdout or "null") or []
        return [c["id"] for c in listed]

    def supports_mount_option(self, option: str) -> bool:
        """Whether ``runtime features`` lists a mount option (runc >= 1.1; crun lacks it)."""
        try:
            features = json.loads(self._runc("features", timeout=10).stdout)
        except (OcidError, ValueError):
            return False
        return option in (features.get("mountOptions") or [])

    # -- state -----------------------------------------------------------------------------

    def _runc_state(self, container_id: str, timeout: float = 60) -> dict:
        """runc's state JSON (§6)."""
        return json.loads(self._runc("state", container_id, timeout=timeout).stdout)

    def state(self, container_id: str, persist_dir: str) -> ContainerState:
        """runc state plus conmon's exit file (code, ctime as finish time) and oom marker."""
        exit_path = Path(persist_dir, "exit")
        try:
            st = self._runc_state(container_id)
        except NotFound:
            if not exit_path.exists():
                raise
            st = {"status": "stopped", "pid": 0, "bundle": ""}  # deleted after it exited
        status = (
            st["status"]
            if st["status"] in ("created", "running", "paused", "stopped")
            else "unknown"
        )
        bundle = st.get("bundle") or ""
        if status != "stopped":
            return ContainerState(status, int(st["pid"]), None, None, _oom(persist_dir, bundle))
        return self.exit_state(container_id, persist_dir, bundle)

    def exit_state(self, container_id: str, persist_dir: str, bundle: str) -> ContainerState:
        """The state of a container whose init is known to have exited, from conmon's files
        alone (no runc call): the exit code, its ctime as the finish time, the oom marker.

        conmon writes the exit file once it has drained the output, a moment after the init
        exits (§7): wait for conmon to finish when the file is not there yet.
        """
        exit_path = Path(persist_dir, "exit")
        if not exit_path.exists() and bundle:
            conmon_pid = _read_pid(os.path.join(bundle, "conmon-pidfile"))
            if conmon_pid and _is_conmon_of(conmon_pid, container_id):
                _wait_pidfd(conmon_pid, _EXIT_FILE_WAIT)
        try:
            code = int(exit_path.read_text().strip())
            finished: float | None = exit_path.stat().st_ctime
        except (FileNotFoundError, ValueError):
            code, finished = 255, None  # CRI-O's answer when the monitor left no exit file
        return ContainerState("stopped", 0, code, finished, _oom(persist_dir, bundle))

    # -- exec ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def exec_command(self, container_id: str, bundle: str, args: list[str], *,
                     tty: bool) -> Iterator[tuple[list[str], str, dict]]:
        """The ``runc exec`` command line running ``args`` as the container's process spec
        (its user, env, capabilities) would, with its pid file and that process spec.

        The temporary process.json and pid file live until the context ends.
        """
        try:
            process = json.loads(Path(bundle, "config.json").read_text())["process"]
        except (OSError, ValueError, KeyError) as exc:
            raise NotFound(f"container {container_id}: no process spec in {bundle}") from exc
        process.update(args=list(args), terminal=tty)
        with tempfile.TemporaryDirectory(prefix="ocid-exec-") as tmp:
            spec, pidfile = os.path.join(tmp, "process.json"), os.path.join(tmp, "pid")
            Path(spec).write_text(json.dumps(process))
            yield ([*self.global_args(), "exec", "--process", spec, "--pid-file", pidfile,
                    container_id], pidfile, process)

    def exec_sync(
        self, container_id: str, bundle: str, args: list[str], timeout: float | None
    ) -> ExecResult:
        """Run ``args`` in the container with runc exec directly (§3); SIGKILL it on timeout."""
        with self.exec_command(container_id, bundle, args, tty=False) as (cmd, pidfile, _):
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            deadline = None if timeout is None else time.monotonic() + timeout
            output = _read_capped(proc, deadline)
            if output is None:
                self._kill_exec(proc, pidfile)
                return ExecResult(b"", b"command timed out", -1, True)
            out, err = output
        if (
            proc.returncode == 255 and b"level=error" in err
        ):  # runc's own failure, not the command's
            raise self._error("exec in", container_id, err.decode(errors="replace"))
        return ExecResult(out, err, proc.returncode, False)

    @staticmethod
    def _kill_exec(proc: subprocess.Popen, pidfile: str) -> None:
        """SIGKILL the exec'd process (and its group, if it leads one), then reap runc."""
        pid = _read_pid(pidfile)
        if pid is None:
            proc.kill()  # runc has not started the process yet
        else:
            try:
                if os.getpgid(pid) == pid:
                    os.killpg(pid, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        # Output is dropped, as conmon does on timeout; a stray holder of the pipes must not block us.
        for f in (proc.stdout, proc.stderr):
            if f:
                f.close()

    # -- logs ------------------------------------------------------------------------------

    def reopen_log(self, bundle: str) -> None:
        """Ask conmon to reopen the container log through the ctl FIFO (§4, §5)."""
        try:
            fd = os.open(os.path.join(bundle, "ctl"), os.O_WRONLY | os.O_NONBLOCK)
        except FileNotFoundError as exc:
            raise NotFound(f"no conmon control FIFO in {bundle}") from exc
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no reader: conmon is gone
                raise FailedPrecondition(f"container monitor for {bundle} is not running") from exc
            raise InternalError(f"open {bundle}/ctl: {exc}") from exc
        try:
            os.write(fd, b"2 0 0\n")
        finally:
            os.close(fd)


ENV_PATH = "/usr/bin/env"


def _dup_above_4(fd: int) -> int:
    """A close-on-exec duplicate of ``fd`` numbered 5 or more."""
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 5)


def _spawn_conmon(
    argv: list[str], env: dict[str, str], stderr_fd: int, deadline: float
) -> tuple[int, str | None]:
    """Spawn conmon with sync/start pipes on fds 3/4, release it, reap the intermediate,
    and read its one-line JSON reply (§1). Return (intermediate status, line or None on timeout).
    """
    sync_parent, sync_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    start_parent, start_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with sync_parent, start_parent:
        with sync_child, start_child:
            # Dup the child ends above 4 so the dup2s to 3 and 4 cannot clobber them.
            fds = [_dup_above_4(sync_child.fileno()), _dup_above_4(start_child.fileno())]
            null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            try:
                intermediate = os.posix_spawn(
                    argv[0], argv, env,
                    file_actions=[
                        (os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, null, 1),
                        (os.POSIX_SPAWN_DUP2, stderr_fd, 2),
                        (os.POSIX_SPAWN_DUP2, fds[0], 3), (os.POSIX_SPAWN_DUP2, fds[1], 4),
                    ],
                    setpgroup=0,  # its own process group, as CRI-O does
                )  # fmt: skip
            finally:
                for fd in (*fds, null):
                    os.close(fd)
        start_parent.sendall(b"\0")  # let conmon go on (§1 step 2)
        start_parent.close()
        status = _reap(intermediate, max(deadline - time.monotonic(), 0))
        return status, _read_line(sync_parent, deadline)


def _read_capped(proc: subprocess.Popen, deadline: float | None) -> tuple[bytes, bytes] | None:
    """``proc``'s stdout and stderr, each cut at MAX_EXEC_OUTPUT (as cri-o does: a chatty
    probe must not grow the daemon), once it exited; None when ``deadline`` passes first."""
    assert proc.stdout is not None and proc.stderr is not None
    buffers = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    with selectors.DefaultSelector() as selector:
        for fd in buffers:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            for key, _ in selector.select(left):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                buffer = buffers[key.fd]
                buffer += chunk[:max(MAX_EXEC_OUTPUT - len(buffer), 0)]
    try:
        proc.wait(None if deadline is None else max(deadline - time.monotonic(), 0))
    except subprocess.TimeoutExpired:
        return None
    proc.stdout.close()
    proc.stderr.close()
    out, err = buffers.values()
    return bytes(out), bytes(err)


def _read_line(sock: socket.socket, deadline: float) -> str | None:
    """Read one line from conmon's sync socket; "" on EOF, None on timeout. Never reads to EOF."""
    buf = b""
    while b"\n" not in buf:
        if not _poll_fd(sock.fileno(), deadline - time.monotonic()):
            return None
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    return buf.split(b"\n", 1)[0].decode(errors="replace")


def start_time(pid: int, *, zombie: bool = False) -> int | None:
    """A process's start time in clock ticks (field 22 of /proc/PID/stat), None if gone
    (or a zombie, unless ``zombie``).

    Saved next to a PID so that a later PID reuse is never mistaken for our process.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the name may hold spaces and parens
    return int(fields[19]) if zombie or fields[0] not in ("Z", "X") else None


def _oom(persist_dir: str, bundle: str) -> bool:
    """Whether conmon left an OOM marker (in the persist dir, or in its cwd: the bundle)."""
    return Path(persist_dir, "oom").exists() or bool(bundle and Path(bundle, "oom").exists())


def _read_pid(path: str) -> int | None:
    """A PID from a pid file, or None when it is absent or empty."""
    try:
        return int(Path(path).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _is_conmon_of(pid: int, container_id: str) -> bool:
    """Whether ``pid`` is still the conmon monitoring ``container_id`` (guards PID reuse)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(argv) and argv[0].endswith(b"conmon") and container_id.encode() in argv
