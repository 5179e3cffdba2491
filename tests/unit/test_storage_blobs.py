"""Blobs in the image store: streaming ingest, verification, small blobs; digests and chain IDs."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Iterator

import pytest

from ocid.errors import InternalError, InvalidArgument, NotFound
from ocid.storage import DigestMismatch, ImageStore, chain_ids
from ocid.storage.digest import sha256_digest, split_digest


@pytest.fixture
def store(tmp_path) -> Iterator[ImageStore]:
    s = ImageStore(str(tmp_path / "storage"))
    yield s
    s.close()


def _chunks(data: bytes, size: int = 1000) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


def _leftovers(store: ImageStore) -> list[str]:
    return os.listdir(store.tmp_dir) + os.listdir(os.path.join(store.blobs_dir, "sha256"))


def test_root_is_created_private(tmp_path) -> None:
    root = tmp_path / "a" / "storage"
    ImageStore(str(root)).close()
    assert (root.stat().st_mode & 0o777) == 0o700
    assert (root / "storage.db").exists()


def test_database_uses_wal(store: ImageStore) -> None:
    conn = sqlite3.connect(os.path.join(store.root, "storage.db"))
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_ingest_streams_verifies_and_reports_progress(store: ImageStore) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    digest = sha256_digest(data)
    seen: list[int] = []
    path = store.ingest_blob(_chunks(data, 64 * 1024), digest, len(data), progress=seen.append)
    assert path == store.blob_path(digest)
    assert open(path, "rb").read() == data
    assert sum(seen) == len(data) and len(seen) == len(data) // (64 * 1024) + 1
    assert store.has_blob(digest)
    assert os.listdir(store.tmp_dir) == []


def test_ingest_of_a_present_blob_drains_nothing(store: ImageStore) -> None:
    digest = store.put_blob_bytes(b"hello")

    def exploding() -> Iterator[bytes]:
        raise AssertionError("the source must not be read")
        yield b""  # pragma: no cover

    assert store.ingest_blob(exploding(), digest, 5) == store.blob_path(digest)


def test_digest_mismatch_leaves_nothing(store: ImageStore) -> None:
    data = b"some content" * 1000
    wrong = sha256_digest(b"other")
    with pytest.raises(DigestMismatch) as info:
        store.ingest_blob(_chunks(data), wrong, len(data))
    assert isinstance(info.value, InvalidArgument)
    assert wrong in str(info.value) and sha256_digest(data) in str(info.value)
    assert info.value.expected == wrong and info.value.actual == sha256_digest(data)
    assert _leftovers(store) == [] and not store.has_blob(wrong)


@pytest.mark.parametrize("size", [5, 50])
def test_size_mismatch_leaves_nothing(store: ImageStore, size: int) -> None:
    data = b"0123456789"
    with pytest.raises(InvalidArgument, match="bytes|size"):
        store.ingest_blob(_chunks(data, 3), sha256_digest(data), size)
    assert _leftovers(store) == []


def test_failing_source_leaves_nothing_and_keeps_its_error(store: ImageStore) -> None:
    def broken() -> Iterator[bytes]:
        yield b"partial"
        raise ConnectionResetError("peer went away")

    with pytest.raises(ConnectionResetError):
        store.ingest_blob(broken(), sha256_digest(b"partial and more"))
    assert _leftovers(store) == []


def test_sha512_blobs(store: ImageStore) -> None:
    data = b"x" * 100
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    assert store.put_blob_bytes(data, digest) == digest
    assert store.read_blob(digest) == data
    assert store.blob_path(digest).endswith("/blobs/sha512/" + digest[7:])


def test_put_and_read_small_blobs(store: ImageStore) -> None:
    digest = store.put_blob_bytes(b'{"a": 1}')
    assert digest == sha256_digest(b'{"a": 1}')
    assert store.read_blob(digest) == b'{"a": 1}'
    with pytest.raises(DigestMismatch):
        store.put_blob_bytes(b"abc", sha256_digest(b"abd"))


def test_read_missing_blob_is_not_found(store: ImageStore) -> None:
    missing = sha256_digest(b"nope")
    with pytest.raises(NotFound, match=missing):
        store.read_blob(missing)


@pytest.mark.parametrize("bad", ["", "sha256:abc", "md5:" + "0" * 32, "sha256:" + "G" * 64,
                                 "sha256:../../etc/passwd", "SHA256:" + "0" * 64])
def test_invalid_digests_are_refused(store: ImageStore, bad: str) -> None:
    with pytest.raises(InvalidArgument):
        store.blob_path(bad)
    with pytest.raises(InvalidArgument):
        split_digest(bad)


def test_stale_partial_downloads_are_removed_at_start(tmp_path) -> None:
    store = ImageStore(str(tmp_path / "s"))
    stale = os.path.join(store.tmp_dir, "0123-abcd.partial")
    open(stale, "wb").write(b"half a blob")
    store.close()
    ImageStore(str(tmp_path / "s")).close()
    assert not os.path.exists(stale)


def test_unwritable_store_is_an_internal_error(tmp_path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(InternalError, match="storage"):
        ImageStore(str(tmp_path / "file" / "storage"))


def test_chain_ids() -> None:
    d = [sha256_digest(b"a"), sha256_digest(b"b"), sha256_digest(b"c")]
    c1 = "sha256:" + hashlib.sha256(f"{d[0]} {d[1]}".encode()).hexdigest()
    c2 = "sha256:" + hashlib.sha256(f"{c1} {d[2]}".encode()).hexdigest()
    assert chain_ids(d) == [d[0], c1, c2]
    assert chain_ids([]) == []
    with pytest.raises(InvalidArgument):
        chain_ids(["nonsense"])
