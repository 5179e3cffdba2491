"""Make ocid a child subreaper and reap orphans reparented to it, never a child someone waits for.

conmon double-forks: once its intermediate process exits, the long-lived monitor is reparented to
the nearest subreaper (conmon.md §1, §7; machine.md "Zombies"). With ``PR_SET_CHILD_SUBREAPER``
that is ocid, so ocid must reap those monitors (and anything else orphaned below it) when they
exit. A catch-all ``waitpid(-1)`` would steal exit statuses from ``subprocess`` and from the
``os.posix_spawn`` + ``os.waitpid`` in ``ocid.oci.runtime`` (Popen then reports a return code of 0
for a child it could not wait for). So every child this process spawns itself is *owned*, and the
reaper only reaps zombie children that are not owned.

How children become owned: while a reaper runs, ``os.posix_spawn``, ``os.posix_spawnp``,
``os.fork``, ``os.forkpty`` and ``subprocess.Popen._execute_child`` are wrapped so that the new PID
is registered *before* the spawning call returns, inside a gate that holds reaping passes off.
Registering after the spawn returned is not enough: a child that exits at once (``sh -c 'exit 7'``,
conmon with a bad option) could be reaped in between. An entry is dropped once its owner has
reaped the child (the PID is no longer our child, or is a different process: start times are
compared), so a Popen garbage-collected without wait leaks nothing. Other ways of creating
children (``os.system``, multiprocessing's "spawn"/"forkserver" start methods, C extensions) are
not seen: wrap them in ``spawning()`` and ``own()`` the PID, or do not use them in the daemon.

How the reaper wakes: a SIGCHLD handler plus ``signal.set_wakeup_fd`` on a pipe the reaper thread
polls. SIGCHLD goes to the thread that forked the child (usually a gRPC worker), and a
Python-level handler runs only when the main thread next executes bytecode; ocid's main thread
sleeps in ``Event.wait()`` for the daemon's whole life, so only the C-level wakeup fd wakes the
reaper promptly. If another component already owns the wakeup fd, the handler writes to the
pipe instead (best effort). No periodic polling.

How a pass finds zombies: ``/proc/<pid>/task/<tid>/children`` needs CONFIG_PROC_CHILDREN, which
this kernel lacks, so a pass asks ``waitid(P_ALL, WNOHANG|WNOWAIT)`` for a zombie child without
reaping it, reaps it if it is not owned and asks again. A zombie that is owned hides the ones
behind it; usually its owner is collecting it that very moment, so the pass waits up to 20 ms for
that and asks again. Only if it stays (an owner that does not wait) does the pass scan
``/proc/*/stat`` for our other zombies, which costs about 20 us per process on the host.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36

ExitCallback = Callable[[int, int], None]


# -- /proc ------------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time) of ``pid`` from /proc/<pid>/stat, or None when it is gone."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    # comm (field 2) may hold spaces and parentheses: the fields we want follow the last ')'.
    fields = data.rpartition(b")")[2].split()
    try:
        return fields[0].decode(), int(fields[1]), int(fields[19])  # fields 3, 4 and 22
    except (IndexError, ValueError):
        return None


def _collected_soon(pid: int, wait: float = 0.02) -> bool:
    """Whether our zombie child ``pid`` stops being one within ``wait`` s (its owner reaps it)."""
    me = os.getpid()
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        time.sleep(0.001)  # lets the owner's thread take the GIL and call waitpid
        st = _stat(pid)
        if st is None or st[0] != "Z" or st[1] != me:
            return True
    return False


def _children(zombies_only: bool = False) -> list[int]:
    """PIDs of our children (only the zombies, if asked), from a scan of /proc."""
    me = os.getpid()
    found = []
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            st = _stat(int(entry.name))
            if st is not None and st[1] == me and (st[0] == "Z" or not zombies_only):
                found.append(int(entry.name))
    return found


def _zombie_children() -> list[int]:
    """PIDs of our zombie children."""
    return _children(zombies_only=True)


# -- owned children and the spawn gate -------------------------------------------------------


class _Registry:
    """PIDs whose owner waits for them itself, with their start time to catch PID reuse."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pids: dict[int, int | None] = {}

    def add(self, pid: int) -> None:
        st = _stat(pid)
        with self._lock:
            self._pids[pid] = st[2] if st else None

    def discard(self, pid: int) -> None:
        with self._lock:
            self._pids.pop(pid, None)

    def owns(self, pid: int) -> bool:
        """Whether ``pid`` is owned; an entry naming an older process of that PID is dropped."""
        with self._lock:
            if pid not in self._pids:
                return False
            recorded = self._pids[pid]
        st = _stat(pid)
        if recorded is not None and st is not None and st[2] != recorded:
            self.discard(pid)  # the owner reaped its child and the PID was reused
            return False
        return True

    def prune(self) -> None:
        """Drop entries whose child the owner has reaped (gone, not ours, or a newer process)."""
        me = os.getpid()
        with self._lock:
            items = list(self._pids.items())
        for pid, recorded in items:
            st = _stat(pid)
            if st is None or st[1] != me or (recorded is not None and st[2] != recorded):
                self.discard(pid)

    def pids(self) -> set[int]:
        with self._lock:
            return set(self._pids)


class _Gate:
    """Spawners hold it shared (re-entrantly, per thread); a reaping pass holds it exclusively.

    While a pass runs no child can be born unregistered; waiting passes block new spawners,
    so a stream of spawns cannot starve the reaper.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._spawning = 0
        self._reaping = False
        self._local = threading.local()

    def enter(self) -> None:
        depth = getattr(self._local, "depth", 0)
        if depth == 0:  # a nested spawn (Popen -> os.posix_spawn) must not wait for the pass
            with self._cond:
                while self._reaping:
                    self._cond.wait()
                self._spawning += 1
        self._local.depth = depth + 1

    def leave(self) -> None:
        self._local.depth -= 1
        if self._local.depth == 0:
            with self._cond:
                self._spawning -= 1
                if self._spawning == 0:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._reaping:
                self._cond.wait()
            self._reaping = True
            while self._spawning:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._reaping = False
                self._cond.notify_all()


_registry = _Registry()
_gate = _Gate()
_active: Reaper | None = None


def _after_fork_in_child() -> None:
    # Locks held by other threads at fork time stay locked forever in the child, and the child
    # is no subreaper and has no reaper thread: start from scratch, with registration off.
    global _registry, _gate, _active
    _registry, _gate, _active = _Registry(), _Gate(), None


os.register_at_fork(after_in_child=_after_fork_in_child)


@contextlib.contextmanager
def spawning() -> Iterator[Callable[[int], None]]:
    """Hold reaping off while spawning a child by a means the reaper does not wrap.

    Yields ``own``: call it with the new PID before leaving the block, then wait for the child
    yourself and ``disown`` it afterwards (or let the reaper prune the entry)::

        with reaper.spawning() as own:
            own(start_child_somehow())
    """
    _gate.enter()
    try:
        yield own
    finally:
        _gate.leave()


def own(pid: int) -> None:
    """Mark ``pid`` as waited for by its spawner: the reaper will not reap it.

    Only safe for a child that cannot have exited yet; otherwise call it inside ``spawning()``.
    """
    _registry.add(pid)


def disown(pid: int) -> None:
    """Hand ``pid`` back to the reaper (call it after reaping the child yourself)."""
    _registry.discard(pid)


@contextlib.contextmanager
def owned(pid: int) -> Iterator[int]:
    """``own(pid)`` for the duration of the block, ``disown(pid)`` after it."""
    own(pid)
    try:
        yield pid
    finally:
        disown(pid)


def owned_pids() -> set[int]:
    """The PIDs currently registered as owned (for tests and debugging)."""
    return _registry.pids()


# -- wrappers around the ways this process spawns children ----------------------------------


def _owning_spawn(spawn: Callable[..., Any], pid_of: Callable[[Any], int]) -> Callable[..., Any]:
    """Wrap ``spawn`` so that, while a reaper runs, the child is registered before it returns."""

    @functools.wraps(spawn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _active is None:
            return spawn(*args, **kwargs)
        gate, registry = _gate, _registry
        gate.enter()
        try:
            result = spawn(*args, **kwargs)
            pid = pid_of(result)
            if pid == 0:  # the child of a fork: the at-fork hook reset the gate, leave it be
                return result
            registry.add(pid)
        except BaseException:
            gate.leave()
            raise
        gate.leave()
        return result

    wrapper.__ocid_reaper__ = True  # type: ignore[attr-defined]
    return wrapper


def _popen_execute_child(original: Callable[..., None]) -> Callable[..., None]:
    """Wrap ``Popen._execute_child``: the one place every Popen (and run, check_output) spawns."""

    @functools.wraps(original)
    def _execute_child(self: subprocess.Popen, *args: Any, **kwargs: Any) -> None:
        if _active is None:
            return original(self, *args, **kwargs)
        gate, registry = _gate, _registry
        gate.enter()
        try:
            original(self, *args, **kwargs)  # on an exec failure it has reaped the child itself
            registry.add(self.pid)
        finally:
            gate.leave()

    _execute_child.__ocid_reaper__ = True  # type: ignore[attr-defined]
    return _execute_child


def _patch_targets() -> list[tuple[Any, str, Callable[[Callable[..., Any]], Callable[..., Any]]]]:
    targets: list[tuple[Any, str, Callable[[Callable[..., Any]], Callable[..., Any]]]] = [
        (os, "posix_spawn", lambda f: _owning_spawn(f, lambda pid: pid)),
        (os, "posix_spawnp", lambda f: _owning_spawn(f, lambda pid: pid)),
        (os, "fork", lambda f: _owning_spawn(f, lambda pid: pid)),
        (os, "forkpty", lambda f: _owning_spawn(f, lambda r: r[0])),
        (subprocess.Popen, "_execute_child", _popen_execute_child),
    ]
    return [(obj, name, wrap) for obj, name, wrap in targets if hasattr(obj, name)]


# -- the reaper -------------------------------------------------------------------------------


def _set_subreaper(on: bool) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


class Reaper:
    """Makes this process a child subreaper and reaps unowned zombie children on SIGCHLD.

    ``start()`` and ``stop()`` must run in the main thread (they install a signal handler).
    ``on_exit(pid, exit_code)`` is called for every child the reaper reaps (exit_code is
    negative for a signal, as in subprocess), from the reaper thread; errors are logged.
    """

    def __init__(self, on_exit: ExitCallback | None = None) -> None:
        self._on_exit = on_exit
        self._pass_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._rfd = self._wfd = -1
        self._stopping = False
        self._old_handler: Any = None
        self._handler_installed = False
        self._old_wakeup_fd = -1
        self._own_wakeup_fd = False
        self._patched: list[tuple[Any, str, Any]] = []

    def start(self) -> None:
        """Become a subreaper, wrap the spawn functions, install the SIGCHLD wakeup, reap once.

        Children that exist already are taken as owned: whoever spawned them may wait for them.
        """
        global _active
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("Reaper.start() must be called from the main thread")
        if _active is not None:
            raise RuntimeError("a Reaper is already running in this process")
        self._rfd, self._wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stopping = False
        try:
            for pid in _children():  # before the flag: no orphan can be among them yet
                _registry.add(pid)
            _set_subreaper(True)
            for obj, name, wrap in _patch_targets():
                original = getattr(obj, name)
                setattr(obj, name, wrap(original))
                self._patched.append((obj, name, original))
            _active = self
            self._old_handler = signal.signal(signal.SIGCHLD, self._on_sigchld)
            self._handler_installed = True
            signal.siginterrupt(signal.SIGCHLD, False)  # SA_RESTART: spare C threads EINTRs
            self._old_wakeup_fd = signal.set_wakeup_fd(self._wfd, warn_on_full_buffer=False)
            self._own_wakeup_fd = self._old_wakeup_fd == -1
            if not self._own_wakeup_fd:
                signal.set_wakeup_fd(self._old_wakeup_fd)  # taken: rely on the Python handler
                log.warning("signal wakeup fd already in use: orphans are reaped only when "
                            "the main thread runs Python code")
            self._thread = threading.Thread(target=self._run, name="ocid-reaper", daemon=True)
            self._thread.start()
        except BaseException:
            self._undo()
            raise

    def stop(self) -> None:
        """Undo start(): end the thread, restore the handler and the spawn functions."""
        if self._thread is None:
            return
        self._stopping = True
        self._wake()
        self._thread.join(timeout=10)  # first, so no pass runs once spawns are unregistered
        self._thread = None
        self._undo()

    def _undo(self) -> None:
        global _active
        if self._handler_installed:
            if self._own_wakeup_fd:
                current = signal.set_wakeup_fd(-1)
                if current != self._wfd:
                    signal.set_wakeup_fd(current)  # someone replaced ours meanwhile: keep theirs
            # None: a handler not set from Python, which cannot be put back; use the default.
            old = self._old_handler if self._old_handler is not None else signal.SIG_DFL
            signal.signal(signal.SIGCHLD, old)
            self._handler_installed = False
            self._own_wakeup_fd = False
        for obj, name, original in reversed(self._patched):
            if getattr(getattr(obj, name), "__ocid_reaper__", False):
                setattr(obj, name, original)
        self._patched.clear()
        if _active is self:
            _active = None
        try:
            _set_subreaper(False)
        except OSError as exc:
            log.warning("cannot clear the child subreaper flag: %s", exc)
        for fd in (self._rfd, self._wfd):
            if fd >= 0:
                os.close(fd)
        self._rfd = self._wfd = -1

    def reap_now(self) -> list[tuple[int, int]]:
        """Run one pass now; return the (pid, exit code) of every child it reaped."""
        with self._pass_lock:
            reaped = self._reap_unowned()
        for pid, code in reaped:
            log.debug("reaped orphan %d (exit %d)", pid, code)
            if self._on_exit is not None:
                try:
                    self._on_exit(pid, code)
                except Exception:
                    log.exception("reaper exit callback failed for pid %d", pid)
        return reaped

    # -- internals ----------------------------------------------------------------------------

    def _on_sigchld(self, signum: int, frame: object) -> None:
        # Runs in the main thread. Only needed when the wakeup fd was taken; harmless otherwise.
        if not self._own_wakeup_fd:
            self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wfd, b"\0")
        except OSError:  # full pipe: a wakeup is pending anyway
            pass

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._rfd, select.POLLIN)
        while not self._stopping:
            try:
                self.reap_now()
            except Exception:  # a bug must not end reaping for the daemon's lifetime
                log.exception("reaper pass failed")
            poller.poll()
            try:
                while os.read(self._rfd, 4096):  # drained before the pass: a signal that
                    pass  # comes during the pass causes another one
            except BlockingIOError:
                pass

    def _reap_unowned(self) -> list[tuple[int, int]]:
        reaped: list[tuple[int, int]] = []
        waited: set[int] = set()
        while True:
            with _gate.exclusive():
                _registry.prune()
                blocker = self._reap_in_wait_order(reaped)
            if blocker is None:
                return reaped
            # The owned zombie waitid found hides the ones behind it. Usually its owner is
            # collecting it right now: give it a moment (without the gate) before scanning.
            if blocker in waited or not _collected_soon(blocker):
                break
            waited.add(blocker)
        # The scan needs no gate: a zombie it finds is checked against the registry, under
        # the gate, before it is reaped, and a child spawned meanwhile is registered by then.
        candidates = _zombie_children()
        if candidates:
            with _gate.exclusive():
                for pid in candidates:
                    if not _registry.owns(pid):
                        self._reap(pid, reaped)
        return reaped

    def _reap_in_wait_order(self, reaped: list[tuple[int, int]]) -> int | None:
        """Reap unowned zombies as waitid reports them; return the owned one that stops us."""
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return None  # no children at all
            if info is None:
                return None  # no zombie
            if _registry.owns(info.si_pid) or not self._reap(info.si_pid, reaped):
                return info.si_pid

    @staticmethod
    def _reap(pid: int, reaped: list[tuple[int, int]]) -> bool:
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return False
        if got != pid:
            return False
        reaped.append((pid, os.waitstatus_to_exitcode(status)))
        return True
