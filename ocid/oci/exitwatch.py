"""Watch conmon's exits directory and report each container that exited (conmon.md §2, §7).

conmon writes ``EXITS/<id>`` with g_file_set_contents: a temp file ``<id>.XXXXXX``, then a rename,
so inotify sees IN_MOVED_TO for ``<id>``. IN_CLOSE_WRITE is watched too, for a writer that does
not rename; temp names (``*.XXXXXX``) and dot files are skipped. Exits that happened while the
daemon was down raise no event, so ``start()`` reports the files already there first. After an
inotify queue overflow the directory is listed again. The callback should therefore be
idempotent: the same ID can be reported again (cri-o's handler is, and removes the file).
"""

from __future__ import annotations

import logging
import os
import re
import select
import threading
from collections.abc import Callable

from inotify_simple import INotify, flags

log = logging.getLogger(__name__)

_TEMP_NAME = re.compile(r"\.[A-Za-z0-9]{6}$")  # g_mkstemp's XXXXXX
_MASK = flags.MOVED_TO | flags.CLOSE_WRITE | flags.ONLYDIR


def is_exit_file_name(name: str) -> bool:
    """Whether ``name`` in the exits dir is a container's exit file (not a temp or dot file)."""
    return bool(name) and not name.startswith(".") and not _TEMP_NAME.search(name)


class ExitWatcher:
    """Calls ``callback(container_id)`` from a daemon thread for each exit file in ``exits_dir``."""

    def __init__(self, exits_dir: str, callback: Callable[[str], None]) -> None:
        self.exits_dir = exits_dir
        self._callback = callback
        self._thread: threading.Thread | None = None
        self._wake_w = -1
        self._stopping = threading.Event()

    def start(self) -> None:
        """Watch the directory, then report the files already in it, then follow new ones."""
        if self._thread is not None:
            raise RuntimeError("ExitWatcher already started")
        os.makedirs(self.exits_dir, mode=0o755, exist_ok=True)
        inotify = INotify(nonblocking=True)
        try:
            inotify.add_watch(self.exits_dir, _MASK)
        except OSError:
            inotify.close()
            raise
        wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stopping = threading.Event()
        # The watch exists before the listing, so no exit falls between the two.
        existing = self._list()
        self._thread = threading.Thread(
            target=self._run, args=(inotify, wake_r, self._stopping, existing),
            name="ocid-exit-watcher", daemon=True,
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """End the watcher thread promptly (a pipe wakes it); it closes its inotify fd on exit."""
        thread = self._thread
        if thread is None:
            return
        self._thread = None
        self._stopping.set()
        try:
            os.write(self._wake_w, b"\0")
        except OSError:
            pass
        if thread is not threading.current_thread():  # stop() from inside the callback
            thread.join(timeout)
            if thread.is_alive():
                log.warning("exit watcher on %s still busy in a callback after %ss",
                            self.exits_dir, timeout)
        os.close(self._wake_w)  # a thread still running sees POLLHUP and ends
        self._wake_w = -1

    # -- internals ----------------------------------------------------------------------------

    def _list(self) -> list[str]:
        try:
            names = os.listdir(self.exits_dir)
        except OSError as exc:
            log.error("cannot list exits dir %s: %s", self.exits_dir, exc)
            return []
        return sorted(n for n in names if is_exit_file_name(n))

    def _report(self, container_id: str) -> None:
        try:
            self._callback(container_id)
        except Exception:
            log.exception("exit callback failed for container %s", container_id)

    def _run(self, inotify: INotify, wake_r: int, stopping: threading.Event,
             existing: list[str]) -> None:
        try:
            self._watch(inotify, wake_r, stopping, existing)
        finally:
            inotify.close()
            os.close(wake_r)

    def _watch(self, inotify: INotify, wake_r: int, stopping: threading.Event,
               existing: list[str]) -> None:
        for name in existing:
            if stopping.is_set():
                return
            self._report(name)
        # Events queued while we listed may repeat the listing: a rename is queued when it
        # happens, so any such duplicate is already in the queue now. Drop those once.
        seen_in_listing = set(existing)
        first_batch = True
        poller = select.poll()
        poller.register(inotify.fileno(), select.POLLIN)
        poller.register(wake_r, select.POLLIN)
        while not stopping.is_set():
            if not first_batch:
                poller.poll()
            if stopping.is_set():
                return
            try:
                events = inotify.read(timeout=0)
            except OSError as exc:
                log.error("reading inotify events on %s failed: %s", self.exits_dir, exc)
                return
            for event in events:
                if stopping.is_set():
                    return
                if event.mask & flags.Q_OVERFLOW:
                    log.warning("inotify queue overflow on %s: listing it again",
                                self.exits_dir)
                    for name in self._list():
                        self._report(name)
                    continue
                if event.mask & flags.IGNORED:
                    log.error("exits dir %s is gone: no more exit events", self.exits_dir)
                    return
                if not event.mask & (flags.MOVED_TO | flags.CLOSE_WRITE):
                    continue
                if not is_exit_file_name(event.name):
                    continue
                if first_batch and event.name in seen_in_listing:
                    seen_in_listing.discard(event.name)
                    continue
                self._report(event.name)
            first_batch = False
