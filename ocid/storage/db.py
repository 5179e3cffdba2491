"""The storage metadata database: SQLite in WAL mode, shared by ocid and kpod processes.

Why SQLite: its file locking lets several processes read and write one database safely, and
every change is a transaction, so a crash at any point leaves the last committed state.
WAL lets readers go on while one writer commits; ``busy_timeout`` makes a writer wait for
another process's write instead of failing. Writes always start with ``BEGIN IMMEDIATE``
(take the write lock first), so a read-then-write transaction can never deadlock against
another writer.

Why a connection per thread: a sqlite3 connection must not be used by two threads at once.
The daemon serves RPCs on a thread pool; one connection per thread (``threading.local``) lets
reads run in parallel, and SQLite itself serialises the writers, across threads and
processes alike. A connection made before a fork is never reused in the child.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

from ocid.errors import InternalError

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 60_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS layers (
    chain_id TEXT PRIMARY KEY,
    parent TEXT REFERENCES layers(chain_id),
    diff_id TEXT NOT NULL,
    digest TEXT NOT NULL,
    media_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    unpacked_size INTEGER NOT NULL,
    link TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS layers_parent ON layers(parent);
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,
    manifest_digest TEXT NOT NULL,
    manifest_media_type TEXT NOT NULL,
    config TEXT NOT NULL,
    size INTEGER NOT NULL,
    created TEXT NOT NULL,
    added REAL NOT NULL,
    top_layer TEXT
);
CREATE TABLE IF NOT EXISTS image_layers (
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    chain_id TEXT NOT NULL REFERENCES layers(chain_id),
    digest TEXT NOT NULL,
    diff_id TEXT NOT NULL,
    media_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (image_id, position)
);
CREATE INDEX IF NOT EXISTS image_layers_chain ON image_layers(chain_id);
CREATE INDEX IF NOT EXISTS image_layers_digest ON image_layers(digest);
CREATE TABLE IF NOT EXISTS image_names (
    name TEXT PRIMARY KEY,
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS image_names_image ON image_names(image_id);
CREATE TABLE IF NOT EXISTS image_digests (
    digest TEXT PRIMARY KEY,
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS image_digests_image ON image_digests(image_id);
CREATE TABLE IF NOT EXISTS containers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    image_id TEXT NOT NULL REFERENCES images(id),
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS containers_image ON containers(image_id);
"""


class Database:
    """Per-thread connections to one SQLite file, with read and write transactions."""

    def __init__(self, path: str):
        self.path = path
        self._local = threading.local()
        self._guard = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        with self.read() as conn:
            if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
                return  # the common case: no need to take the write lock
        with self.write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise InternalError(f"storage database {path} has schema version {version}, "
                                    f"newer than this ocid understands ({SCHEMA_VERSION})")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves.
            # check_same_thread=False only so that close() may run in any thread.
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            raise InternalError(f"cannot open storage database {self.path}: {exc}") from exc
        self._local.conn, self._local.pid = conn, os.getpid()
        with self._guard:
            self._connections.append(conn)
        return conn

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[sqlite3.Connection]:
        conn = self._connection()
        try:
            conn.execute(begin)
        except sqlite3.Error as exc:
            raise InternalError(f"storage database {self.path}: {exc}") from exc
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the transaction may already be gone (e.g. SQLITE_FULL rolls back)
            if isinstance(exc, sqlite3.Error):
                raise InternalError(f"storage database {self.path}: {exc}") from exc
            raise

    def write(self) -> AbstractContextManager[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE); commits on success, rolls back on error."""
        return self._transaction("BEGIN IMMEDIATE")

    def read(self) -> AbstractContextManager[sqlite3.Connection]:
        """A read transaction: one consistent snapshot for several queries."""
        return self._transaction("BEGIN")

    def close(self) -> None:
        """Close every connection this object opened (in any thread)."""
        with self._guard:
            connections, self._connections = self._connections, []
        for conn in connections:
            try:
                conn.close()
            except sqlite3.Error:
                pass
        self._local = threading.local()

