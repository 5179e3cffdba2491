"""Concurrency: flock helper, two processes applying one layer or storing one image at once."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest

from ocid.storage import FileLock, ImageStore
from tests.support.layers import Entry, add_image, make_layer

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="unpacking layers needs root")
PAYLOAD = bytes(range(256)) * 40_000  # 10 MB, the same in every process


@pytest.fixture
def store(tmp_path) -> Iterator[ImageStore]:
    s = ImageStore(str(tmp_path / "storage"))
    yield s
    s.close()


def run_together(script: str, *argsets: list[str], tmp_path) -> list[dict]:
    """Start one python process per argument list, release them at once, return their JSON."""
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), str(go), *args],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for args in argsets]
    try:
        time.sleep(0.3)  # let both import and wait
        go.touch()
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
    return [json.loads(out) for out, _ in results]


WAIT = """
import json, os, sys, time
go = sys.argv[1]
while not os.path.exists(go):
    time.sleep(0.001)
"""


def test_exclusive_lock_excludes_threads_and_processes(tmp_path) -> None:
    path = str(tmp_path / "x.lock")
    with FileLock(path):
        assert not FileLock(path).acquire(blocking=False)
        assert not FileLock(path, shared=True).acquire(blocking=False)
        probe = subprocess.run(
            [sys.executable, "-c", ("import sys; from ocid.storage import FileLock; "
             "sys.exit(0 if FileLock(sys.argv[1]).acquire(blocking=False) else 3)"), path],
            check=False)
        assert probe.returncode == 3
    lock = FileLock(path)
    assert lock.acquire(blocking=False) and lock.locked
    lock.release()
    assert not lock.locked


def test_shared_locks_coexist(tmp_path) -> None:
    path = str(tmp_path / "x.lock")
    with FileLock(path, shared=True), FileLock(path, shared=True):
        assert not FileLock(path).acquire(blocking=False)


def test_blocking_lock_waits_for_the_holder(tmp_path) -> None:
    path = str(tmp_path / "x.lock")
    order: list[str] = []
    holder = FileLock(path)
    holder.acquire()

    def waiter() -> None:
        with FileLock(path):
            order.append("waiter")

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.2)
    order.append("holder")
    holder.release()
    thread.join(5)
    assert order == ["holder", "waiter"]


def test_lock_survives_its_file_being_unlinked_by_the_holder(tmp_path) -> None:
    path = str(tmp_path / "x.lock")
    got: list[bool] = []
    holder = FileLock(path)
    holder.acquire()

    def waiter() -> None:
        with FileLock(path):
            got.append(os.path.exists(path))

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.2)  # the waiter has opened the old file and waits on it
    holder.unlink()
    holder.release()
    thread.join(5)
    assert got == [True]  # it locked the new file, not the unlinked one


@ROOT_ONLY
def test_two_processes_apply_the_same_layer(store: ImageStore, tmp_path) -> None:
    blob, layer = make_layer([Entry(f"f{i}", data=PAYLOAD) for i in range(3)], "gzip")
    store.put_blob_bytes(blob, layer.digest)
    script = WAIT + """
from ocid.storage import ImageStore, LayerInfo
store = ImageStore(sys.argv[2])
layer = store.apply_layer(LayerInfo(**json.loads(sys.argv[3])), None)
print(json.dumps({"size": layer.unpacked_size}))
"""
    args = [store.root, json.dumps(dataclasses.asdict(layer))]
    results = run_together(script, args, args, tmp_path=tmp_path)
    assert results[0] == results[1] and results[0]["size"] > 30_000_000
    assert [e for e in os.listdir(store.overlay_dir) if e != "l"] == [layer.chain_id[7:]]
    assert len(os.listdir(os.path.join(store.overlay_dir, "l"))) == 1
    assert store.has_layer(layer.chain_id)


@ROOT_ONLY
def test_two_processes_put_the_same_image(store: ImageStore, tmp_path) -> None:
    script = WAIT + """
from ocid.storage import ImageStore
from tests.support.layers import Entry, add_image
payload = bytes(range(256)) * 40_000
store = ImageStore(sys.argv[2])
image = add_image(store, [[Entry("base", data=payload)], [Entry("top", data=payload[::-1])]],
                  names=[sys.argv[3]])
print(json.dumps({"id": image.id}))
"""
    results = run_together(script, [store.root, "x:1"], [store.root, "x:2"], tmp_path=tmp_path)
    assert results[0] == results[1]
    [image] = store.list_images()
    assert image.id == results[0]["id"] and sorted(image.names) == ["x:1", "x:2"]
    assert len([e for e in os.listdir(store.overlay_dir) if e != "l"]) == 2
    assert len(os.listdir(store.tmp_dir)) == 0


@ROOT_ONLY
def test_threads_share_a_store(store: ImageStore) -> None:
    base = [Entry("base", data=b"b")]
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(5):
                add_image(store, [base, [Entry(f"t{n}-{i}")]], names=[f"img{n}:{i}"])
                store.list_images()
                store.get_image(f"img{n}:{i}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(store.list_images()) == 20
    for image in store.list_images():
        store.remove_image(image.id)
    assert [e for e in os.listdir(store.overlay_dir) if e != "l"] == []
