"""Containers: create, start, stop, remove, status, list, ExecSync and log reopening.

A container is a directory under ``container_dir/<id>`` holding its record and its
bundle (config.json, conmon's pid files, FIFOs and exit/oom markers); its root file
system is an overlay mount from the image store. conmon monitors it, so it outlives
an ocid restart; its exit reaches us through conmon's exit file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from inotify_simple import INotify
from inotify_simple import flags as inotify_flags

from ocid import calls
from ocid.errors import (
    AlreadyExists,
    FailedPrecondition,
    InternalError,
    InvalidArgument,
    NotFound,
    OcidError,
)
from ocid.lifecycle.context import Context, fingerprint, new_id
from ocid.lifecycle.persist import atomic_write
from ocid.lifecycle.pods import SandboxManager
from ocid.lifecycle.podspec import ContainerRequest, signal_number
from ocid.lifecycle.records import (
    CREATED,
    CREATING,
    EXITED,
    READY,
    RUNNING,
    Container,
    ContainerUser,
    Sandbox,
    matching_ids,
    now_ns,
    select,
)
from ocid.oci import spec, streams
from ocid.oci.runtime import ExecResult, start_time
from ocid.oci.streams import StreamIO

log = logging.getLogger("ocid.lifecycle")

REOPEN_WAIT = 5.0  # seconds ReopenContainerLog waits for conmon to make the new file


def image_process_config(image_config: dict[str, Any]) -> spec.ImageConfig:
    """The process-shaping parts of an OCI image config."""
    c = image_config.get("config") or {}
    return spec.ImageConfig(entrypoint=tuple(c.get("Entrypoint") or ()),
                            cmd=tuple(c.get("Cmd") or ()), env=tuple(c.get("Env") or ()),
                            working_dir=c.get("WorkingDir") or "", user=c.get("User") or "")


class ContainerManager:
    """Creates and drives containers inside pods."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.registry = ctx.registry
        self.pods = SandboxManager(ctx, self.stop_all_in_pod, self.remove_all_in_pod)
        # Exited containers give back their runtime state and rootfs mount in the
        # background, off the RPC that saw the exit (see _release).
        self._releaser = ThreadPoolExecutor(max_workers=1, thread_name_prefix="release")
        self._released: set[str] = set()
        # Removed containers' files are deleted by a thread of their own, one pass at a
        # time, so a big delete never holds up a release.
        self._trash = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trash")
        self._trash_queued = threading.Event()

    def close(self) -> None:
        """Finish the work under way (the next start redoes the rest)."""
        self._releaser.shutdown(wait=True, cancel_futures=True)
        self._trash.shutdown(wait=True, cancel_futures=True)

    def empty_trash_later(self) -> None:
        """Delete the files of removed containers in the background (one pass queued at most)."""
        if self._trash_queued.is_set():
            return
        self._trash_queued.set()
        with contextlib.suppress(RuntimeError):  # shutting down: the next start does it
            self._trash.submit(self._empty_trash)

    def _empty_trash(self) -> None:
        self._trash_queued.clear()  # first: a removal from now on queues another pass
        self.ctx.images.store.empty_trash()
        self.ctx.containers.empty_trash()

    def bundle(self, cid: str) -> str:
        return self.ctx.containers.path(cid)

    def _runtime(self, c: Container):  # type: ignore[no-untyped-def]
        sb = self.registry.sandboxes.get(c.pod_id)
        return self.ctx.runtime(sb.runtime_handler if sb else "")

    # -- create ----------------------------------------------------------------------------

    def create(self, pod_text: str, req: ContainerRequest) -> str:
        """Create a container in a ready pod; on any failure undo what was made."""
        sb = self.registry.sandbox(pod_text)
        cid = new_id()
        name = self.kube_name(sb, req)
        digest = fingerprint(sb.id, req)
        try:
            self.registry.reserve(name, cid, "container")
        except AlreadyExists:
            retried = self._retry_answer(name, digest)  # may wait for the first request
            if retried:
                return retried
            raise
        try:
            with self.registry.locked(sb.id):
                if sb.state != READY or sb.id not in self.registry.sandboxes:
                    raise FailedPrecondition(f"pod sandbox {sb.id} is not ready")
                c = Container(id=cid, pod_id=sb.id, request=req, created=now_ns(),
                              fingerprint=digest)
                self.registry.containers[cid] = c
                lock = self.registry.locked(cid)
                lock.__enter__()  # taken before the pod lock is released: stop waits for us
            try:
                self._create(sb, c, name)
            finally:
                lock.__exit__(None, None, None)
        except BaseException:
            self.registry.containers.pop(cid, None)
            self.registry.release(name, cid)
            self.registry.forget_lock(cid)
            raise
        log.info("container %s (%s) created", cid, name)
        return cid

    @staticmethod
    def kube_name(sb: Sandbox, req: ContainerRequest) -> str:
        p = sb.request
        return f"k8s_{req.name}_{p.name}_{p.namespace}_{p.uid}_{req.attempt}"

    def _retry_answer(self, name: str, digest: str) -> str | None:
        """The container a caller's retry should get (see Registry.claim_for_retry)."""
        return self.registry.claim_for_retry(self.registry.containers, name, digest,
                                             lambda c: c.state != CREATING,
                                             self.ctx.containers.save)

    def _create(self, sb: Sandbox, c: Container, name: str) -> None:
        req = c.request
        store = self.ctx.images.store
        image = self.ctx.images.get(req.image)
        c.image_id = c.image_ref = image.id
        bundle = self.bundle(c.id)
        runtime = self.ctx.runtime(sb.runtime_handler)
        with contextlib.ExitStack() as undo:
            os.makedirs(bundle, mode=0o700)
            undo.callback(shutil.rmtree, bundle, ignore_errors=True)
            self.ctx.containers.save(c, durable=False)  # "creating": a restart rolls it back
            store.create_container(c.id, name, image.id)
            undo.callback(store.remove_container, c.id)
            rootfs = store.mount_container(c.id)

            image_config = image_process_config(image.config)
            image_signal = (image.config.get("config") or {}).get("StopSignal") or ""
            c.stop_signal = signal_number(req.stop_signal or image_signal) or signal.SIGTERM
            config, notes = spec.build_container_spec(
                c.id, self._in_pod(req.spec, sb), self.pods.container_pod_config(sb),
                image_config, rootfs,
                self.ctx.host, self.ctx.spec_options(sb.runtime_handler))
            for note in notes:
                log.info("container %s: %s", c.id, note)
            user = config["process"]["user"]
            c.user = ContainerUser(user["uid"], user["gid"], tuple(user.get("additionalGids", ())))
            atomic_write(os.path.join(bundle, "config.json"), json.dumps(config).encode(),
                         durable=False)  # runc reads it now; after a reboot, nobody

            c.log_path = self._log_path(sb, c)
            try:
                os.makedirs(os.path.dirname(c.log_path), mode=0o755, exist_ok=True)
            except OSError as exc:
                raise InvalidArgument(f"cannot make the log directory of {c.log_path}: "
                                      f"{exc.strerror}") from exc
            c.pid, c.conmon_pid = runtime.create(c.id, bundle, log_path=c.log_path,
                                                 persist_dir=bundle, name=name, terminal=req.tty,
                                                 stdin=req.stdin, stdin_once=req.stdin_once)
            c.pid_start = start_time(c.pid) or 0
            c.state = CREATED
            c.claimed = calls.caller_waiting()  # kept for a retry when nobody awaits it
            self.ctx.containers.save(c)
            undo.pop_all()

    @staticmethod
    def _in_pod(config: spec.ContainerConfig, sb: Sandbox) -> spec.ContainerConfig:
        """The container's config with the pod's network and IPC modes: a container
        cannot leave its pod's network or IPC (the PID mode may differ)."""
        sc = config.security_context
        pod_ns = sb.request.namespace_options
        ns = replace(sc.namespace_options, network=pod_ns.network, ipc=pod_ns.ipc)
        return replace(config, security_context=replace(sc, namespace_options=ns))

    def _log_path(self, sb: Sandbox, c: Container) -> str:
        """The pod's log_directory joined with the container's log_path (cri-o's rule)."""
        log_dir = sb.request.log_directory or self.pods.default_log_dir(sb.id)
        relative = c.request.log_path or f"{c.id}.log"
        path = os.path.normpath(os.path.join(log_dir, relative))
        if ":" in path:  # conmon splits its -l value at colons
            raise InvalidArgument(f"log path {path!r} must not contain ':'")
        return path

    # -- start, stop, remove ---------------------------------------------------------------

    def start(self, text: str) -> None:
        """Run a created container's process."""
        c = self.registry.container(text)
        with self.registry.locked(c.id):
            self._check_present(c)
            if c.state != CREATED:
                raise FailedPrecondition(f"container {c.id} is {c.state}, not created")
            try:
                self._runtime(c).start(c.id)
            except OcidError:
                self._refresh(c)
                raise
            c.started = now_ns()
            c.state = RUNNING
            self.ctx.containers.save(c)
        log.info("container %s started", c.id)

    def _check_present(self, c: Container) -> None:
        """NOT_FOUND when the container was removed while we waited for its lock."""
        if c.id not in self.registry.containers:
            raise NotFound(f"container {c.id} not found")

    @contextlib.contextmanager
    def _stopping(self, c: Container, timeout: float) -> Iterator[bool]:
        """The container's lock for a stop; yields whether the container still exists.

        Another request may hold the lock through a long stop grace period: once our own
        ``timeout`` ends, SIGKILL the container so that both finish now (as cri-o lets a
        shorter stop timeout win).
        """
        lock = self.registry.lock_of(c.id)
        if not lock.acquire(timeout=min(max(timeout, 0), threading.TIMEOUT_MAX)):
            with contextlib.suppress(OcidError):
                self._runtime(c).kill(c.id, signal.SIGKILL, timeout=5)
            lock.acquire()
        try:
            yield c.id in self.registry.containers
        finally:
            lock.release()

    def stop(self, text: str, timeout: float) -> None:
        """Stop signal, then SIGKILL once ``timeout`` ends; a stopped container is fine."""
        if timeout < 0:
            raise InvalidArgument(f"timeout {timeout} must not be negative")
        c = self.registry.container(text)
        with self._stopping(c, timeout) as present:
            if present:
                self._stop(c, timeout)
        log.info("container %s stopped", c.id)

    def _stop(self, c: Container, timeout: float) -> None:
        if c.state in (CREATED, RUNNING):
            try:
                self._runtime(c).stop(c.id, timeout, c.stop_signal, pid=c.pid,
                                      pid_start=c.pid_start)
            except NotFound:
                pass
            else:
                # released now, as cri-o unmounts in StopContainer: a remove has nothing to wait for
                self._refresh(c, exited=True, release_now=True)
                return
            self._refresh(c)

    def _refresh(self, c: Container, *, exited: bool = False, release_now: bool = False) -> None:
        """Bring a created/running container's record in line with runc and conmon;
        ``exited``: the init is known to be gone, so conmon's files say all (no runc call).
        An exit found is released (see _release) now, or else in the background."""
        if c.state not in (CREATED, RUNNING) or c.id not in self.registry.containers:
            return
        runtime = self._runtime(c)
        bundle = self.bundle(c.id)
        try:
            st = (runtime.exit_state(c.id, bundle, bundle) if exited
                  else runtime.state(c.id, bundle))
        except NotFound:
            self._mark_exited(c, 255, None, False, "the runtime has no record of the container",
                              release_now)
            return
        if st.status == "stopped":
            self._mark_exited(c, st.exit_code if st.exit_code is not None else 255,
                              st.finished_at, st.oom_killed, "", release_now)
        elif st.status in ("running", "paused") and c.state == CREATED:
            c.started = c.started or now_ns()
            c.state = RUNNING
            self.ctx.containers.save(c)

    def _mark_exited(self, c: Container, code: int, finished: float | None, oom: bool,
                     message: str, release_now: bool) -> None:
        c.exit_code = code
        c.finished = int(finished * 1e9) if finished else now_ns()
        # An exit seen for a container still "created" here (ocid was killed right after
        # runc start) means it did start.
        c.started = c.started or c.finished
        c.reason = "OOMKilled" if oom else ("Completed" if code == 0 else "Error")
        c.message = message
        c.pid = 0
        c.state = EXITED  # last: status readers take no lock and must never see half of it
        self.ctx.containers.save(c)
        log.info("container %s exited with %d (%s)", c.id, code, c.reason)
        if release_now:
            self._release(c)
        else:
            self._release_later(c)

    def _release_later(self, c: Container) -> None:
        with contextlib.suppress(RuntimeError):  # shutting down: RemoveContainer does it
            self._releaser.submit(self._release, c)

    def _release(self, c: Container) -> None:
        """Free what an exited container no longer needs: runc's state (``runc delete``
        also kills what its init left in the cgroup) and the rootfs mount, as containerd
        deletes the task at exit and cri-o unmounts at stop. The record, the upper dir and
        the log stay until RemoveContainer."""
        if c.id not in self.registry.containers:
            return  # removed meanwhile (taking its lock would make it anew)
        with self.registry.locked(c.id):
            if c.state != EXITED or c.id in self._released or c.id not in self.registry.containers:
                return
            try:
                self._runtime(c).delete(c.id)
                self.ctx.images.store.unmount_container(c.id)
            except OcidError as exc:
                log.warning("container %s: releasing after its exit: %s", c.id, exc)
                return  # RemoveContainer tries again
            self._released.add(c.id)

    def remove(self, text: str) -> None:
        """Kill if needed and remove a container; an unknown container is not an error."""
        try:
            c = self.registry.container(text)
        except NotFound:
            return
        self._remove(c)
        log.info("container %s removed", c.id)

    def _remove(self, c: Container) -> None:
        with self._stopping(c, 0) as present:
            if present:
                self._stop(c, 0)
                self._discard(c)

    def _discard(self, c: Container) -> None:
        """Delete a container everywhere (also rolls back a half-made one)."""
        if c.id not in self._released:
            self._runtime(c).delete(c.id)
        # The files go in one rename each; deleting them is left to the releaser thread.
        self.ctx.images.store.remove_container(c.id, defer_delete=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.ctx.attach_dir, c.id))
        self.ctx.containers.discard(c.id)
        self.empty_trash_later()
        self.registry.containers.pop(c.id, None)
        self._released.discard(c.id)
        sb = self.registry.sandboxes.get(c.pod_id)
        if sb is not None:
            self.registry.release(self.kube_name(sb, c.request), c.id)
        self.registry.forget_lock(c.id)

    def stop_all_in_pod(self, pod_id: str) -> None:
        """StopPodSandbox's first step: kill every container of the pod (as containerd)."""
        for c in self.registry.containers_of(pod_id):
            with self._stopping(c, 0) as present:
                if present:
                    self._stop(c, 0)

    def remove_all_in_pod(self, pod_id: str) -> None:
        for c in self.registry.containers_of(pod_id):
            self._remove(c)

    # -- exec and logs ---------------------------------------------------------------------

    def _running(self, text: str) -> Container:
        c = self.registry.container(text)
        if c.state != RUNNING:
            raise FailedPrecondition(f"container {c.id} is not running ({c.state})")
        return c

    def exec_sync(self, text: str, command: list[str], timeout: float) -> ExecResult:
        """Run a command in a running container; a timeout is a result, not an error."""
        if not command:
            raise InvalidArgument("no command given to run in the container")
        if timeout < 0:
            raise InvalidArgument(f"timeout {timeout} must not be negative")
        c = self._running(text)
        return self._runtime(c).exec_sync(c.id, self.bundle(c.id), command, timeout or None)

    def exec_stream(self, text: str, command: list[str], io: StreamIO, *, tty: bool) -> int:
        """Run a command in a running container with streamed stdio; its exit code."""
        if not command:
            raise InvalidArgument("no command given to run in the container")
        c = self._running(text)
        return streams.exec_interactive(self._runtime(c), c.id, self.bundle(c.id), command, io,
                                        tty=tty)

    def attach_stream(self, text: str, io: StreamIO, *, tty: bool) -> None:
        """Stream a running container's main process through conmon's attach socket."""
        c = self._running(text)
        streams.attach(self.ctx.attach_dir, c.id, self.bundle(c.id), io, tty=tty,
                       stdin_once=c.request.stdin_once)

    def check_streamable(self, text: str, *, stdin: bool) -> Container:
        """A running container, and one that has a stdin when an attach asks for it."""
        c = self._running(text)
        if stdin and not c.request.stdin:
            raise InvalidArgument(f"container {c.id} was created without stdin")
        return c

    def reopen_log(self, text: str) -> None:
        """Make conmon reopen the log file (after the kubelet rotated it); wait for it."""
        c = self._running(text)
        directory, name = os.path.split(c.log_path)
        with INotify() as watch:
            watch.add_watch(directory, inotify_flags.CREATE | inotify_flags.MOVED_TO)
            self._runtime(c).reopen_log(self.bundle(c.id))
            deadline = time.monotonic() + REOPEN_WAIT
            while not os.path.exists(c.log_path):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise InternalError(f"container {c.id}: conmon did not reopen {c.log_path}")
                for event in watch.read(timeout=int(left * 1000)):
                    if event.name == name:
                        return

    # -- exits and restore -----------------------------------------------------------------

    def on_exit(self, object_id: str) -> None:
        """conmon wrote an exit file: update the container (or the pod, for an infra)."""
        if object_id in self.registry.sandboxes:
            self.pods.infra_exited(object_id)
        c = self.registry.containers.get(object_id)
        if c is not None:
            with self.registry.locked(c.id):
                self._refresh(c, exited=True)  # a no-op for a container removed meanwhile
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.ctx.exits_dir, object_id))

    def on_child_exit(self, pid: int) -> None:
        """A monitor or an init re-parented to us died (see ocid.reaper): if it was a
        container's, its state may have changed without any exit file (a killed conmon)."""
        for c in list(self.registry.containers.values()):
            if pid in (c.pid, c.conmon_pid) and c.state in (CREATED, RUNNING):
                with self.registry.locked(c.id):
                    self._refresh(c)

    def restore(self, c: Container) -> None:
        """Take a container record found at start, reconciled with the runtime."""
        sb = self.registry.sandboxes.get(c.pod_id)
        if c.state == CREATING or sb is None:
            why = "was being created when ocid stopped" if sb else "has no pod"
            log.warning("container %s %s; removing it", c.id, why)
            self.registry.containers[c.id] = c
            try:
                self._stop(c, 0)
            finally:
                self._discard(c)
            return
        self.registry.containers[c.id] = c
        self.registry.reserve(self.kube_name(sb, c.request), c.id, "container")
        if c.state == EXITED:
            self._release_later(c)  # a crash may have come between its exit and the release
        self._refresh(c)

    # -- queries ---------------------------------------------------------------------------

    def get(self, text: str) -> Container:
        return self.registry.container(text)

    def list(self, id_prefix: str = "", pod_prefix: str = "", state: str | None = None,
             labels: dict[str, str] | None = None) -> list[Container]:
        """Containers matching every filter given, oldest first."""
        pods = set(matching_ids(self.registry.sandboxes, pod_prefix)) if pod_prefix else None
        return select(self.registry.containers, id_prefix, state, labels,
                      None if pods is None else lambda c: c.pod_id in pods)

    def verbose_info(self, c: Container) -> dict:
        """Details for ContainerStatus(verbose): the runtime's view and the spec."""
        try:
            with open(os.path.join(self.bundle(c.id), "config.json")) as f:
                config = json.load(f)
        except (OSError, ValueError):
            config = None
        return {"id": c.id, "sandboxID": c.pod_id, "pid": c.pid, "conmonPid": c.conmon_pid,
                "bundle": self.bundle(c.id),
                "runtimeSpec": config, "stopSignal": signal.Signals(c.stop_signal).name
                if c.stop_signal in signal.Signals._value2member_map_ else c.stop_signal}
