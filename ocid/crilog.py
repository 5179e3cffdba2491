"""Reading container logs in the CRI format, as conmon writes them and the kubelet reads them.

Each line of a CRI log file is one record::

    2026-11-29T04:55:11.615741483+00:00 stdout F hello world
    <RFC3339Nano timestamp>            <stream> <tag> <content>

The tag is ``F`` for a full line or ``P`` for a partial one: a long line, or output without a
final newline, is split into P records ended by an F record, and the reader joins them
without adding newlines in between. conmon's log reopen (ReopenContainerLog) writes a new
file at ``PATH.tmp`` and renames it over ``PATH``; :func:`follow_records` notices that and
carries on in the new file after finishing the old one.
"""

from __future__ import annotations

import calendar
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

STDOUT = "stdout"
STDERR = "stderr"
_STREAMS = (STDOUT, STDERR)
_BLOCK_SIZE = 64 * 1024

_TIMESTAMP = re.compile(
    rb"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d\d):(\d\d))")


class LogFormatError(ValueError):
    """A line is not a CRI log record."""


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One line of a CRI log file."""

    timestamp: str  # as written, e.g. 2026-11-29T04:55:11.615741483+00:00
    stream: str  # "stdout" or "stderr"
    partial: bool  # tag P: the content continues in the next record of this stream
    content: bytes  # without the line's newline

    @property
    def time_ns(self) -> int:
        """The timestamp as nanoseconds since the epoch."""
        return parse_timestamp(self.timestamp)


def parse_timestamp(text: str | bytes) -> int:
    """An RFC 3339 timestamp (with up to nanoseconds, ``Z`` or an offset) as epoch nanoseconds."""
    raw = text.encode() if isinstance(text, str) else text
    match = _TIMESTAMP.fullmatch(raw)
    if not match:
        raise LogFormatError(f"invalid timestamp {raw.decode(errors='replace')!r}")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, zulu, sign, off_hours, off_minutes = match.groups()[6:]
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    if not zulu:
        offset = int(off_hours) * 3600 + int(off_minutes) * 60
        seconds -= offset if sign == b"+" else -offset
    nanos = int(fraction.ljust(9, b"0")) if fraction else 0
    return seconds * 1_000_000_000 + nanos


def format_timestamp(time_ns: int) -> str:
    """Epoch nanoseconds in UTC, in the RFC3339Nano form conmon writes."""
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}+00:00"


def parse_line(line: bytes) -> LogRecord:
    """Parse one CRI log line (with or without its newline) into a LogRecord."""
    if line.endswith(b"\n"):
        line = line[:-1]
    parts = line.split(b" ", 3)
    if len(parts) < 3:
        raise LogFormatError(f"not a CRI log line: {line[:80]!r}")
    timestamp, stream, tag = parts[0], parts[1].decode(errors="replace"), parts[2]
    if stream not in _STREAMS:
        raise LogFormatError(f"unknown stream {stream!r} in CRI log line")
    if tag not in (b"F", b"P"):
        raise LogFormatError(f"unknown tag {tag!r} in CRI log line")
    parse_timestamp(timestamp)
    content = parts[3] if len(parts) == 4 else b""
    return LogRecord(timestamp.decode(), stream, tag == b"P", content)


def format_record(stream: str, content: bytes | str, *, partial: bool = False,
                  time_ns: int | None = None) -> bytes:
    """One CRI log line, newline included, as conmon would write it (for tests and tools)."""
    if stream not in _STREAMS:
        raise ValueError(f"stream must be stdout or stderr, not {stream!r}")
    data = content.encode() if isinstance(content, str) else content
    stamp = format_timestamp(time.time_ns() if time_ns is None else time_ns)
    return f"{stamp} {stream} {'P' if partial else 'F'} ".encode() + data + b"\n"


def _records(lines: Iterator[bytes]) -> Iterator[LogRecord]:
    for line in lines:
        try:
            yield parse_line(line)
        except LogFormatError:
            # A torn or foreign line must not hide the rest of the log: skip it, as the kubelet does.
            continue


def iter_records(path: str, *, offset: int = 0) -> Iterator[LogRecord]:
    """The records of the file at ``path`` from byte ``offset`` to its current end."""
    with open(path, "rb") as f:
        f.seek(offset)
        yield from _records(iter(f))


def tail_offset(f: BinaryIO, lines: int, *, block_size: int = _BLOCK_SIZE) -> int:
    """The byte offset where the last ``lines`` lines of ``f`` start.

    Reads backwards from the end in blocks, so a big log costs only what the tail holds.
    """
    end = f.seek(0, os.SEEK_END)
    if lines <= 0 or end == 0:
        return end
    # A newline ending the file closes the last line; it does not start another.
    f.seek(end - 1)
    limit = end - 1 if f.read(1) == b"\n" else end
    position, found = limit, 0
    while position > 0:
        start = max(0, position - block_size)
        f.seek(start)
        block = f.read(position - start)
        index = len(block)
        while (index := block.rfind(b"\n", 0, index)) != -1:
            found += 1
            if found == lines:
                return start + index + 1
        position = start
    return 0


def tail_records(path: str, lines: int) -> list[LogRecord]:
    """The records of the last ``lines`` lines of the file at ``path``."""
    with open(path, "rb") as f:
        offset = tail_offset(f, lines)
    return list(iter_records(path, offset=offset))


class _Follower:
    """An open log file, read incrementally, that can move on to a file renamed over its path."""

    def __init__(self, path: str, offset: int) -> None:
        self.path = path
        self.file = open(path, "rb")  # noqa: SIM115 - closed by close()
        self.file.seek(offset)
        self.pending = b""

    def read(self) -> Iterator[LogRecord]:
        """Records completed since the last read; a line still being written waits its newline."""
        if os.fstat(self.file.fileno()).st_size < self.file.tell():
            self.file.seek(0)  # truncated in place (copytruncate): start over
            self.pending = b""
        while chunk := self.file.read(_BLOCK_SIZE):
            lines = (self.pending + chunk).split(b"\n")
            self.pending = lines.pop()
            yield from _records(iter(lines))

    def replaced(self) -> bool:
        """Whether ``path`` now names another file than the one being read."""
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            return False  # between an unlink and the new file: keep reading the old one
        opened = os.fstat(self.file.fileno())
        return (current.st_ino, current.st_dev) != (opened.st_ino, opened.st_dev)

    def reopen(self) -> Iterator[LogRecord]:
        """Finish the old file, then switch to the one at ``path``, from its start."""
        yield from self.read()
        if self.pending:
            yield from _records(iter([self.pending]))
        self.close()
        self.file = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        self.pending = b""

    def close(self) -> None:
        self.file.close()


def follow_records(path: str, *, offset: int = 0,
                   keep_following: Callable[[], bool] | None = None,
                   interval: float = 1.0) -> Iterator[LogRecord]:
    """Records from ``offset`` on, then new ones as they are written, like ``tail -F``.

    Waits with inotify on the file's directory, so growth and a file renamed over ``path``
    (log rotation, conmon's reopen) are both seen. Whenever nothing happened for ``interval``
    seconds, ``keep_following()`` is asked whether to go on (the kubelet stops once the
    container is no longer running); without it, following ends only when the caller stops.
    """
    from inotify_simple import INotify, flags

    directory, name = os.path.split(os.path.abspath(path))
    follower = _Follower(path, offset)
    inotify: INotify | None = None
    try:
        try:
            inotify = INotify()
            inotify.add_watch(directory, flags.MODIFY | flags.CREATE | flags.MOVED_TO
                              | flags.CLOSE_WRITE | flags.DELETE)
        except OSError:
            # Out of inotify instances or watches (EMFILE, ENOSPC): look every interval instead.
            if inotify is not None:
                inotify.close()
            inotify = None
        wait_ms, timeout_ms = max(1, int(interval * 1000)), 0  # first look at keep_following: now
        last_check = float("-inf")
        while True:
            yield from follower.read()
            if follower.replaced():
                yield from follower.reopen()
                continue
            if inotify is not None:
                events = inotify.read(timeout=timeout_ms)
            else:
                time.sleep(timeout_ms / 1000)
                events = []
            timeout_ms = wait_ms
            if keep_following is None or any(event.name == name for event in events):
                continue
            # Other containers' logs in the same directory wake us too: ask at most once per interval.
            if time.monotonic() - last_check < interval:
                continue
            last_check = time.monotonic()
            if not keep_following():
                # The writer is gone: whatever it wrote last is already in the file.
                yield from follower.read()
                if follower.replaced():
                    yield from follower.reopen()
                    yield from follower.read()
                return
    finally:
        follower.close()
        if inotify is not None:
            inotify.close()


def read_log(path: str, *, tail: int | None = None, follow: bool = False,
             keep_following: Callable[[], bool] | None = None,
             interval: float = 1.0) -> Iterator[LogRecord]:
    """The records of a CRI log: all or the last ``tail`` lines, then new ones when following."""
    offset = 0
    if tail is not None:
        with open(path, "rb") as f:
            offset = tail_offset(f, tail)
    if follow:
        return follow_records(path, offset=offset, keep_following=keep_following, interval=interval)
    return iter_records(path, offset=offset)
