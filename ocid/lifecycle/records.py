"""What ocid remembers about each pod and container, and the in-memory index over them.

Records are plain dataclasses saved by ``persist.RecordDir``; the ``Registry`` holds the
live ones, the reserved names, and one lock per object so that requests on the same
pod or container are serialised while different ones run in parallel.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ocid.errors import AlreadyExists, InvalidArgument, NotFound
from ocid.lifecycle.podspec import ContainerRequest, PodRequest

# Pod states. "creating" is on disk only while RunPodSandbox runs: a restart that finds
# it rolls the pod back, so a kill -9 halfway through leaks nothing.
CREATING = "creating"
READY, NOTREADY = "ready", "notready"
# Container states (CREATING as above).
CREATED, RUNNING, EXITED, UNKNOWN = "created", "running", "exited", "unknown"


def now_ns() -> int:
    """Wall-clock time in nanoseconds, the CRI's timestamp unit."""
    return time.time_ns()


@dataclass
class Sandbox:
    """A pod sandbox: its request, where its pieces live, and its state."""

    id: str
    request: PodRequest
    runtime_handler: str = ""
    state: str = CREATING
    created: int = 0
    netns_path: str = ""
    shm_path: str = ""
    infra_pid: int = 0
    infra_start: int = 0  # the infra's start time, so a reused PID is never taken for it
    ips: tuple[str, ...] = ()  # from CNI: IPv4 first, then IPv6
    localhost_bridge: str = ""  # the bridge whose hostPorts this pod made reachable on 127.0.0.1
    fingerprint: str = ""  # digest of the request, to recognise a caller's retry
    claimed: bool = True  # False when the caller gave up before the answer came


@dataclass
class ContainerUser:
    """The identity the container's process runs with."""

    uid: int = 0
    gid: int = 0
    groups: tuple[int, ...] = ()


@dataclass
class Container:
    """A container of a pod: its request, its image, its runtime state."""

    id: str
    pod_id: str
    request: ContainerRequest
    image_id: str = ""
    image_ref: str = ""
    log_path: str = ""
    user: ContainerUser = field(default_factory=ContainerUser)
    stop_signal: int = 15
    state: str = CREATING
    created: int = 0
    started: int = 0
    finished: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    pid: int = 0
    pid_start: int = 0  # the init's start time: a stop signals it with no runc call
    conmon_pid: int = 0
    fingerprint: str = ""
    claimed: bool = True

    @property
    def name(self) -> str:
        return self.request.name


class Registry:
    """The live pods and containers, reserved names, and per-object locks."""

    def __init__(self) -> None:
        self.sandboxes: dict[str, Sandbox] = {}
        self.containers: dict[str, Container] = {}
        self._names: dict[str, str] = {}  # reserved name -> owner ID
        self._mutex = threading.Lock()
        self._locks: dict[str, threading.RLock] = {}

    # -- names -----------------------------------------------------------------------------

    def reserve(self, name: str, owner: str, what: str) -> None:
        """Reserve ``name`` for ``owner``; ALREADY_EXISTS naming the holder when taken."""
        with self._mutex:
            holder = self._names.get(name)
            if holder is not None and holder != owner:
                raise AlreadyExists(f"{what} name {name!r} is already reserved for {what} {holder}")
            self._names[name] = owner

    def release(self, name: str, owner: str) -> None:
        """Free ``name`` if ``owner`` holds it."""
        with self._mutex:
            if self._names.get(name) == owner:
                del self._names[name]

    def holder(self, name: str) -> str | None:
        """The ID that holds ``name``, if any."""
        with self._mutex:
            return self._names.get(name)

    def claim_for_retry(self, table: dict, name: str, digest: str,
                        usable: Callable[[Any], bool], save: Callable[[Any], None]) -> str | None:
        """The ID of the object holding ``name`` when it was made for an identical request
        (``digest``) whose caller gave up before the answer; it is then claimed, once.

        Waits for the object's lock, so a retry arriving during the first request's work
        gets that work's result.
        """
        found = table.get(self.holder(name) or "")
        if found is None:
            return None
        with self.locked(found.id):
            if found.fingerprint == digest and not found.claimed and usable(found):
                found.claimed = True
                save(found)
                return found.id
        return None

    # -- locks -----------------------------------------------------------------------------

    def lock_of(self, object_id: str) -> threading.RLock:
        """The lock serialising work on one pod or container.

        Holders re-check that their object still exists once they have it: the lock of a
        removed object is forgotten, and IDs are never reused.
        """
        with self._mutex:
            return self._locks.setdefault(object_id, threading.RLock())

    @contextlib.contextmanager
    def locked(self, object_id: str) -> Iterator[None]:
        """Serialise work on one pod or container."""
        with self.lock_of(object_id):
            yield

    def forget_lock(self, object_id: str) -> None:
        with self._mutex:
            self._locks.pop(object_id, None)

    # -- lookup ----------------------------------------------------------------------------

    def sandbox(self, text: str) -> Sandbox:
        """A pod by full ID or unique ID prefix; NOT_FOUND otherwise."""
        return _by_prefix(self.sandboxes, text, "pod sandbox")

    def container(self, text: str) -> Container:
        """A container by full ID or unique ID prefix; NOT_FOUND otherwise."""
        return _by_prefix(self.containers, text, "container")

    def containers_of(self, pod_id: str) -> list[Container]:
        return [c for c in list(self.containers.values()) if c.pod_id == pod_id]


def _by_prefix(table: dict, text: str, what: str):  # type: ignore[no-untyped-def]
    if not text:
        raise InvalidArgument(f"no {what} ID given")
    found = table.get(text)
    if found is not None:
        return found
    matches = [v for k, v in list(table.items()) if k.startswith(text)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise InvalidArgument(f"{what} ID prefix {text!r} is ambiguous: "
                              f"{len(matches)} match")
    raise NotFound(f"{what} {text!r} not found")


def matching_ids(table: dict, text: str) -> list[str]:
    """IDs equal to ``text`` or, failing that, starting with it (list filters)."""
    if text in table:
        return [text]
    return [k for k in list(table) if k.startswith(text)]


def select(table: dict, id_prefix: str, state: str | None, labels: dict[str, str] | None,
           also: Callable[[Any], bool] | None = None) -> list:
    """The CRI list filters over pods or containers: ID (or ID prefix), state, label
    selector and ``also``; half-made objects left out; oldest first."""
    ids = matching_ids(table, id_prefix) if id_prefix else list(table)
    found = []
    for object_id in ids:
        obj = table.get(object_id)
        if obj is None or obj.state == CREATING:
            continue
        if state is not None and obj.state != state:
            continue
        if labels and any(obj.request.labels.get(k) != v for k, v in labels.items()):
            continue
        if also is not None and not also(obj):
            continue
        found.append(obj)
    return sorted(found, key=lambda o: o.created)
