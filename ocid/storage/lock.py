"""Inter-process file locks (flock(2)) shared by ocid and kpod working on the same storage.

flock locks belong to an open file description, not to a process, so two ``FileLock``
objects on the same path exclude each other across processes *and* across threads of one
process. A lock file may be unlinked by whoever holds its lock (when the object it guards is
deleted): ``acquire`` checks, once it has the lock, that the path still names the inode it
locked, and starts again on the new file if not, so mutual exclusion survives the unlink.
"""

from __future__ import annotations

import fcntl
import os
from types import TracebackType

from ocid.errors import InternalError


class FileLock:
    """An exclusive or shared flock on one path; a context manager (blocking)."""

    def __init__(self, path: str, *, shared: bool = False):
        self.path = path
        self.shared = shared
        self._fd: int | None = None

    @property
    def locked(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self, *, blocking: bool = True) -> bool:
        """Take the lock; with ``blocking=False`` return False instead of waiting."""
        if self._fd is not None:
            raise InternalError(f"lock {self.path} is already held by this object")
        op = (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB)
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                             0o600)
            except OSError as exc:
                raise InternalError(f"cannot open lock file {self.path}: {exc.strerror}") from exc
            try:
                fcntl.flock(fd, op)
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    self._fd = fd
                    return True
            except BlockingIOError:
                os.close(fd)
                return False
            except FileNotFoundError:
                pass  # unlinked by its holder while we waited: lock the new file
            except OSError as exc:
                os.close(fd)
                raise InternalError(f"cannot lock {self.path}: {exc.strerror}") from exc
            os.close(fd)

    def unlink(self) -> None:
        """Delete the lock file, while holding the lock (the guarded object is gone)."""
        if self._fd is None:
            raise InternalError(f"lock {self.path} must be held to unlink it")
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise InternalError(f"cannot remove lock file {self.path}: {exc.strerror}") from exc

    def release(self) -> None:
        """Drop the lock (closing the descriptor releases it); a no-op when not held."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()
