"""Crash-safe records: dataclasses written as JSON with write, fsync, rename.

Each pod and container keeps one ``state.json`` in its own directory. A write either
lands whole or not at all, so the state a restart finds is always one ocid wrote.
The JSON mapping is generic over (nested, frozen) dataclasses so records stay plain
dataclasses and the CRI-shaped configs inside them need no converters of their own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import shutil
import tempfile
import types
import typing
from typing import Any, TypeVar

from ocid.errors import InternalError

T = TypeVar("T")
STATE_FILE = "state.json"
TRASH_DIR = ".trash"  # record directories on their way out (see RecordDir.discard)


def atomic_write(path: str, data: bytes, mode: int = 0o600, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` through a temp file and a rename.

    ``durable`` also fsyncs the file and its directory, for records a crash must not lose;
    files rebuilt on demand skip it. Raises OSError; the temp file never stays behind.
    """
    directory, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), mode)  # mkstemp makes 0600
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def to_data(value: Any) -> Any:
    """A dataclass (or container of them) as JSON-ready data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_data(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [to_data(v) for v in value]
    if isinstance(value, dict):
        return {k: to_data(v) for k, v in value.items()}
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_data(kind: Any, data: Any) -> Any:
    """Rebuild a value of type ``kind`` from ``to_data`` output (unknown keys are dropped)."""
    if data is None:
        return None
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        return from_data(options[0], data) if len(options) == 1 else data
    if dataclasses.is_dataclass(kind):
        hints = _hints(kind)
        known = {f.name for f in dataclasses.fields(kind) if f.init}
        return kind(**{k: from_data(hints[k], v) for k, v in data.items() if k in known})
    if origin is tuple:
        args = typing.get_args(kind)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_data(args[0], v) for v in data)
        return tuple(from_data(a, v) for a, v in zip(args, data))
    if origin is list:
        (item,) = typing.get_args(kind)
        return [from_data(item, v) for v in data]
    if origin is dict:
        _, item = typing.get_args(kind)
        return {k: from_data(item, v) for k, v in data.items()}
    return data


class RecordDir:
    """Records of one kind, each in ``<root>/<id>/state.json``."""

    def __init__(self, root: str, kind: type[T]):
        self.root = root
        self.kind = kind
        os.makedirs(root, mode=0o700, exist_ok=True)

    def path(self, record_id: str) -> str:
        """The record's own directory (bundle, files, state)."""
        return os.path.join(self.root, record_id)

    def save(self, record: Any, *, durable: bool = True) -> None:
        """Write the record atomically (its directory must exist).

        Not ``durable`` (no fsync) is only for the first record of an object being made: a
        daemon crash finds it in the page cache anyway, and a power cut that loses or tears
        it leaves a half-made object the sweep of leftovers removes at the next start. A
        record that replaces another is always durable: a torn one would lose the object.
        """
        data = json.dumps(to_data(record), sort_keys=True).encode()
        try:
            atomic_write(os.path.join(self.path(record.id), STATE_FILE), data, durable=durable)
        except OSError as exc:
            raise InternalError(f"cannot save the state of {record.id}: {exc.strerror}") from exc

    def discard(self, record_id: str) -> None:
        """Take a record's directory away with one rename; ``empty_trash`` deletes it later,
        off the request's path. An absent directory is fine."""
        trash = os.path.join(self.root, TRASH_DIR)
        os.makedirs(trash, mode=0o700, exist_ok=True)
        try:
            os.rename(self.path(record_id), os.path.join(trash, f"{record_id}.{os.urandom(4).hex()}"))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise InternalError(f"cannot delete the record of {record_id}: {exc.strerror}") from exc

    def empty_trash(self) -> None:
        """Delete what ``discard`` moved away (at start too: a crash may have left some)."""
        trash = os.path.join(self.root, TRASH_DIR)
        with contextlib.suppress(FileNotFoundError):
            for entry in os.listdir(trash):
                shutil.rmtree(os.path.join(trash, entry), ignore_errors=True)

    def load_all(self) -> tuple[list[Any], list[str]]:
        """Every readable record, and the IDs of directories without a usable one."""
        records, broken = [], []
        for entry in sorted(os.listdir(self.root)):
            if entry == TRASH_DIR:
                continue
            path = os.path.join(self.root, entry, STATE_FILE)
            try:
                with open(path, "rb") as f:
                    records.append(from_data(self.kind, json.load(f)))
            except (OSError, ValueError, TypeError, KeyError):
                broken.append(entry)  # made before its first save, or not ours
        return records, broken
