"""The exits-dir watcher: conmon's rename-in is reported once, temp names never."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocid.oci.exitwatch import ExitWatcher, is_exit_file_name

CID = "4f3c" * 16


class Recorder:
    """A callback that records IDs and lets a test wait for a count of them."""

    def __init__(self, fail_first: bool = False) -> None:
        self.ids: list[str] = []
        self.fail_first = fail_first
        self._cond = threading.Condition()

    def __call__(self, container_id: str) -> None:
        with self._cond:
            self.ids.append(container_id)
            self._cond.notify_all()
        if self.fail_first and len(self.ids) == 1:
            raise ValueError("handler bug")

    def wait_for(self, count: int, timeout: float = 5.0) -> list[str]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.ids) >= count, timeout)
            return list(self.ids)


def conmon_write(exits: Path, name: str, code: str = "0") -> None:
    """What g_file_set_contents does: a temp file <name>.XXXXXX, then a rename over <name>."""
    tmp = exits / f"{name}.Ab12Z9"
    tmp.write_text(code)
    os.rename(tmp, exits / name)


@pytest.fixture
def watch(tmp_path: Path) -> Iterator:
    watchers: list[ExitWatcher] = []

    def start(recorder: Recorder) -> ExitWatcher:
        watcher = ExitWatcher(str(tmp_path / "exits"), recorder)
        watcher.start()
        watchers.append(watcher)
        return watcher

    yield start
    for watcher in watchers:
        watcher.stop()


def test_rename_in_is_reported_once(tmp_path: Path, watch):
    rec = Recorder()
    watch(rec)
    conmon_write(tmp_path / "exits", CID, "137")
    assert rec.wait_for(1) == [CID]
    time.sleep(0.2)
    assert rec.ids == [CID]


def test_files_present_at_start_are_reported(tmp_path: Path, watch):
    exits = tmp_path / "exits"
    exits.mkdir()
    conmon_write(exits, "aaa")
    conmon_write(exits, "bbb")
    (exits / "ccc.Qw3rty").write_text("0")  # a temp file left by a crash
    rec = Recorder()
    watch(rec)
    assert sorted(rec.wait_for(2)) == ["aaa", "bbb"]
    conmon_write(exits, "ddd")
    assert rec.wait_for(3)[2] == "ddd"
    time.sleep(0.2)
    assert sorted(rec.ids) == ["aaa", "bbb", "ddd"]


def test_temp_and_dot_names_are_ignored(tmp_path: Path, watch):
    rec = Recorder()
    watch(rec)
    exits = tmp_path / "exits"
    (exits / f"{CID}.XyZ123").write_text("0")  # conmon's temp name, closed after writing
    (exits / ".hidden").write_text("0")
    (exits / "direct").write_text("1")  # a writer that does not rename: IN_CLOSE_WRITE
    assert rec.wait_for(1) == ["direct"]
    time.sleep(0.2)
    assert rec.ids == ["direct"]


def test_exit_file_names():
    assert is_exit_file_name(CID)
    assert is_exit_file_name("abc.d")  # a dot, but not a 6-character temp suffix
    assert not is_exit_file_name(f"{CID}.a1B2c3")
    assert not is_exit_file_name(".x")
    assert not is_exit_file_name("")


def test_stop_is_prompt_and_closes_the_fd(tmp_path: Path):
    watcher = ExitWatcher(str(tmp_path / "exits"), Recorder())
    fds_before = len(os.listdir("/proc/self/fd"))
    watcher.start()
    time.sleep(0.1)  # the thread now blocks in poll
    started = time.monotonic()
    watcher.stop()
    assert time.monotonic() - started < 0.5
    assert not any(t.name == "ocid-exit-watcher" and t.is_alive() for t in threading.enumerate())
    assert len(os.listdir("/proc/self/fd")) == fds_before
    watcher.stop()  # twice is fine


def test_callback_error_does_not_stop_the_watcher(tmp_path: Path, watch, caplog):
    rec = Recorder(fail_first=True)
    with caplog.at_level(logging.ERROR, logger="ocid.oci.exitwatch"):
        watch(rec)
        conmon_write(tmp_path / "exits", "first")
        assert rec.wait_for(1) == ["first"]
        conmon_write(tmp_path / "exits", "second")
        assert rec.wait_for(2) == ["first", "second"]
    assert any("first" in r.getMessage() and r.exc_info for r in caplog.records)


def test_many_exits_each_reported(tmp_path: Path, watch):
    rec = Recorder()
    watch(rec)
    names = [f"c{i:03d}" for i in range(200)]
    for name in names:
        conmon_write(tmp_path / "exits", name)
    assert sorted(rec.wait_for(200)) == names
