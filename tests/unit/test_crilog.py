"""The CRI log reader: parsing records, tailing big files, following growth and rotation."""

from __future__ import annotations

import io
import os
import threading
import time

import pytest

from ocid import crilog
from ocid.crilog import LogFormatError, LogRecord, format_record, parse_line


def test_parse_full_stdout_line():
    record = parse_line(b"2026-11-29T04:55:11.615741483+00:00 stdout F hello world\n")
    assert record == LogRecord("2026-11-29T04:55:11.615741483+00:00", "stdout", False, b"hello world")
    assert record.time_ns == 1795928111_615741483


def test_parse_partial_stderr_line_with_z_and_spaces_kept():
    record = parse_line(b"2026-11-29T04:55:11Z stderr P  two  spaces ")
    assert (record.stream, record.partial, record.content) == ("stderr", True, b" two  spaces ")
    assert record.time_ns == 1795928111_000000000


def test_parse_empty_content():
    assert parse_line(b"2026-11-29T04:55:11.5Z stdout F\n").content == b""
    assert parse_line(b"2026-11-29T04:55:11.5Z stdout F \n").content == b""


def test_offsets_are_applied():
    assert (parse_line(b"2026-11-29T06:55:11.000000001+02:00 stdout F x").time_ns
            == parse_line(b"2026-11-29T04:55:11.000000001Z stdout F x").time_ns)


@pytest.mark.parametrize("line", [b"", b"garbage", b"2026-11-29T04:55:11Z stdin F x",
                                  b"2026-11-29T04:55:11Z stdout X x", b"yesterday stdout F x"])
def test_bad_lines_are_refused(line):
    with pytest.raises(LogFormatError):
        parse_line(line)


def test_format_round_trips():
    line = format_record("stderr", "oops", partial=True, time_ns=1795928111_615741483)
    assert line == b"2026-11-29T04:55:11.615741483+00:00 stderr P oops\n"
    record = parse_line(line)
    assert (record.stream, record.partial, record.content) == ("stderr", True, b"oops")
    assert record.time_ns == 1795928111_615741483


def test_iter_records_skips_torn_lines(tmp_path):
    path = tmp_path / "c.log"
    path.write_bytes(format_record("stdout", "a") + b"torn\n" + format_record("stderr", "b"))
    assert [(r.stream, r.content) for r in crilog.iter_records(str(path))] == [
        ("stdout", b"a"), ("stderr", b"b")]


class CountingFile(io.BufferedReader):
    """A file that counts the bytes read through it."""

    def __init__(self, raw):
        super().__init__(raw)
        self.bytes_read = 0

    def read(self, size=-1):
        data = super().read(size)
        self.bytes_read += len(data)
        return data


def test_tail_reads_only_the_end_of_a_big_file(tmp_path):
    path = tmp_path / "big.log"
    with open(path, "wb") as f:
        f.writelines(format_record("stdout", f"line {i}", time_ns=i) for i in range(100_000))
    size = os.path.getsize(path)
    assert size > 5_000_000
    with CountingFile(io.FileIO(path)) as f:
        offset = crilog.tail_offset(f, 3, block_size=4096)
        assert f.bytes_read < 10_000
    records = list(crilog.iter_records(str(path), offset=offset))
    assert [r.content for r in records] == [b"line 99997", b"line 99998", b"line 99999"]


@pytest.mark.parametrize(("content", "lines", "expected"), [
    (b"a\nb\nc\n", 2, 2), (b"a\nb\nc", 2, 2), (b"a\nb\nc\n", 5, 0), (b"a\nb\nc\n", 0, 6),
    (b"", 3, 0), (b"a\n", 1, 0), (b"\n\n", 1, 1)])
def test_tail_offset_edges(content, lines, expected):
    assert crilog.tail_offset(io.BytesIO(content), lines, block_size=2) == expected


def test_tail_records_across_blocks(tmp_path):
    path = tmp_path / "c.log"
    path.write_bytes(b"".join(format_record("stdout", "x" * 100 + str(i)) for i in range(50)))
    records = crilog.tail_records(str(path), 7)
    assert [r.content[-2:] for r in records] == [str(i).encode() for i in range(43, 50)]


def _follow_in_thread(path, stop, **kwargs):
    seen: list[LogRecord] = []
    thread = threading.Thread(
        target=lambda: seen.extend(crilog.follow_records(
            path, keep_following=lambda: not stop.is_set(), interval=0.05, **kwargs)),
        daemon=True)
    thread.start()
    return seen, thread


def _wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_follow_sees_appended_lines_and_survives_a_rename_over(tmp_path):
    path = str(tmp_path / "c.log")
    with open(path, "wb") as f:
        f.write(format_record("stdout", "first"))
    stop = threading.Event()
    seen, thread = _follow_in_thread(path, stop)
    assert _wait_for(lambda: len(seen) == 1)

    with open(path, "ab") as f:
        f.write(format_record("stdout", "second"))
        f.flush()
        f.write(format_record("stderr", "half", partial=True)[:20])  # a line still being written
        f.flush()
        assert _wait_for(lambda: len(seen) == 2)
        f.write(format_record("stderr", "half", partial=True)[20:])
    assert _wait_for(lambda: len(seen) == 3)

    # conmon's reopen: the last lines go to the old file, then a new file at PATH.tmp is
    # renamed over PATH; the old file must be read to its end before moving on.
    with open(path, "ab") as f:
        f.write(format_record("stdout", "last in the old file"))
    with open(path + ".tmp", "wb") as f:
        f.write(format_record("stdout", "after reopen"))
    os.rename(path + ".tmp", path)
    assert _wait_for(lambda: len(seen) == 5)
    with open(path, "ab") as f:
        f.write(format_record("stderr", "more"))
    assert _wait_for(lambda: len(seen) == 6)

    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
    contents = [r.content for r in seen]
    assert contents == [b"first", b"second", b"half", b"last in the old file", b"after reopen",
                        b"more"]
    assert seen[2].partial


def test_follow_from_an_offset_stops_when_told(tmp_path):
    path = tmp_path / "c.log"
    path.write_bytes(b"".join(format_record("stdout", str(i)) for i in range(10)))
    with open(path, "rb") as f:
        offset = crilog.tail_offset(f, 2)
    stop = threading.Event()
    stop.set()  # the container already exited: print what is there and return
    seen, thread = _follow_in_thread(str(path), stop, offset=offset)
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert [r.content for r in seen] == [b"8", b"9"]


def test_read_log_combines_tail_and_reading(tmp_path):
    path = tmp_path / "c.log"
    path.write_bytes(b"".join(format_record("stdout", str(i)) for i in range(5)))
    assert [r.content for r in crilog.read_log(str(path), tail=2)] == [b"3", b"4"]
    assert len(list(crilog.read_log(str(path)))) == 5


def test_follow_polls_when_inotify_is_unavailable(tmp_path, monkeypatch):
    import inotify_simple

    def no_inotify(*args, **kwargs):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(inotify_simple, "INotify", no_inotify)
    path = str(tmp_path / "c.log")
    with open(path, "wb") as f:
        f.write(format_record("stdout", "first"))
    stop = threading.Event()
    seen, thread = _follow_in_thread(path, stop)
    assert _wait_for(lambda: len(seen) == 1)
    with open(path, "ab") as f:
        f.write(format_record("stdout", "second"))
    assert _wait_for(lambda: len(seen) == 2)
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
