"""Pod sandboxes: RunPodSandbox, StopPodSandbox, RemovePodSandbox, status and list.

A pod is a directory under ``sandbox_dir/<id>`` holding its record, the infra container's
bundle (config.json, conmon's files), the files its containers see (hostname,
resolv.conf, hosts) and its /dev/shm mount point, plus a persistent network namespace.
The infra container runs the pause executable and holds the pod's IPC, UTS (and, when
shared, PID) namespaces; containers join them through /proc/<infra pid>/ns.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
from dataclasses import replace

from ocid import calls
from ocid.errors import AlreadyExists, FailedPrecondition, InternalError, NotFound, OcidError
from ocid.lifecycle import podfiles
from ocid.lifecycle.context import Context, fingerprint, new_id
from ocid.lifecycle.persist import atomic_write
from ocid.lifecycle.podspec import PodRequest
from ocid.lifecycle.records import (
    CREATING,
    NOTREADY,
    READY,
    Sandbox,
    now_ns,
    select,
)
from ocid.network import netns
from ocid.network.cni import PodNetwork
from ocid.oci import spec, streams
from ocid.oci.runtime import start_time

log = logging.getLogger("ocid.lifecycle")

PAUSE_PATH = "/pause"
PAUSE_COMMAND = (PAUSE_PATH, "-P")  # catatonit's pause mode
INFRA_LOG = "infra.log"
NETNS_PREFIX = "ocid-"


class SandboxManager:
    """Runs, stops, removes and reports pod sandboxes."""

    def __init__(self, ctx: Context, stop_containers, remove_containers):  # type: ignore[no-untyped-def]
        self.ctx = ctx
        self.registry = ctx.registry
        # Callbacks into the container manager (it needs us too, so no import cycle).
        self._stop_containers = stop_containers
        self._remove_containers = remove_containers

    # -- paths -----------------------------------------------------------------------------

    def bundle(self, pod_id: str) -> str:
        return self.ctx.sandboxes.path(pod_id)

    def file_paths(self, sb: Sandbox) -> dict[str, str]:
        """The pod files its containers bind-mount."""
        base = self.bundle(sb.id)
        return {"hostname": f"{base}/hostname", "resolv": f"{base}/resolv.conf",
                "hosts": f"{base}/hosts"}

    def default_log_dir(self, pod_id: str) -> str:
        """Where a pod's container logs go when the request names no log_directory."""
        return os.path.join(self.ctx.config.ocid.log_dir, pod_id)

    def namespace_paths(self, sb: Sandbox) -> dict[str, str]:
        """Where a container finds the pod's namespaces (by OCI type)."""
        if not self.infra_alive(sb):
            raise FailedPrecondition(f"pod sandbox {sb.id} is not running")
        paths = {kind: f"/proc/{sb.infra_pid}/ns/{kind}" for kind in ("ipc", "uts", "pid")}
        if sb.netns_path:
            paths["network"] = sb.netns_path
        return paths

    def infra_alive(self, sb: Sandbox) -> bool:
        """Whether the infra process is the one we started and still runs."""
        return bool(sb.infra_pid) and start_time(sb.infra_pid) == sb.infra_start

    def container_pod_config(self, sb: Sandbox) -> spec.PodSandboxConfig:
        """The pod as the container spec builder sees it (namespaces and files joined)."""
        req = sb.request
        files = self.file_paths(sb)
        return spec.PodSandboxConfig(
            hostname=self._hostname(req), cgroup_parent=req.cgroup_parent,
            sysctls=dict(req.sysctls), namespace_options=req.namespace_options,
            namespace_paths=self.namespace_paths(sb), shm_path=sb.shm_path,
            hosts_path=files["hosts"], resolv_path=files["resolv"],
            hostname_path=files["hostname"])

    @staticmethod
    def _hostname(req: PodRequest) -> str:
        return req.hostname or socket.gethostname()

    # -- run -------------------------------------------------------------------------------

    def run(self, req: PodRequest, runtime_handler: str) -> str:
        """Create and start a pod; on any failure undo everything already made."""
        self.ctx.check_handler(runtime_handler)
        if req.namespace_options.network != spec.NODE:
            self.ctx.cni.network()  # NetworkNotReady (with the reason) before anything is made
        name = req.kube_name
        digest = fingerprint(req, runtime_handler)
        pod_id = new_id()
        try:
            self.registry.reserve(name, pod_id, "pod sandbox")
        except AlreadyExists:
            retried = self._retry_answer(name, digest)
            if retried:
                return retried
            raise
        with self.registry.locked(pod_id):
            sb = Sandbox(id=pod_id, request=req, runtime_handler=runtime_handler,
                         created=now_ns(), fingerprint=digest)
            try:
                self._create(sb)
            except BaseException:
                self.registry.release(name, pod_id)
                self.registry.forget_lock(pod_id)
                raise
        log.info("pod %s (%s) is ready", pod_id, name)
        return pod_id

    def _retry_answer(self, name: str, digest: str) -> str | None:
        """The pod a caller's retry should get: same request, first answer never delivered."""
        pod_id = self.registry.claim_for_retry(self.registry.sandboxes, name, digest,
                                               lambda sb: sb.state == READY,
                                               self.ctx.sandboxes.save)
        if pod_id:
            log.info("pod %s handed to a retry of its RunPodSandbox", pod_id)
        return pod_id

    def _create(self, sb: Sandbox) -> None:
        req = sb.request
        bundle = self.bundle(sb.id)
        ns = req.namespace_options
        runtime = self.ctx.runtime(sb.runtime_handler)
        with contextlib.ExitStack() as undo:
            os.makedirs(bundle, mode=0o700)
            undo.callback(shutil.rmtree, bundle, ignore_errors=True)
            host_network = ns.network == spec.NODE
            # Recorded before they are made, so a rollback after a crash finds them: durable,
            # as the netns's CNI leases outlive a reboot.
            if ns.ipc != spec.NODE:
                sb.shm_path = os.path.join(bundle, "shm")
            if not host_network:
                sb.netns_path = os.path.join(self.ctx.config.network.netns_dir,
                                             NETNS_PREFIX + sb.id[:32])
            self.ctx.sandboxes.save(sb)  # "creating": a restart rolls it back
            self.registry.sandboxes[sb.id] = sb
            undo.callback(self.registry.sandboxes.pop, sb.id, None)

            files = self.file_paths(sb)
            hostname = self._hostname(req)
            podfiles.write_hostname(files["hostname"], hostname)
            podfiles.write_resolv_conf(files["resolv"], req.dns.servers, req.dns.searches,
                                       req.dns.options)
            podfiles.write_hosts(files["hosts"], hostname, host_network)
            if sb.shm_path:
                podfiles.mount_shm(sb.shm_path)
                undo.callback(podfiles.unmount_shm, sb.shm_path)
            if sb.netns_path:
                netns.create(os.path.basename(sb.netns_path),
                             os.path.dirname(sb.netns_path))
                undo.callback(netns.remove, sb.netns_path)
                undo.callback(self._teardown_network, sb)
                self._setup_network(sb)
                if sb.ips:  # the pod's own name resolves to its address
                    podfiles.write_hosts(files["hosts"], hostname, False, pod_ips=sb.ips)

            rootfs = os.path.join(bundle, "rootfs")
            os.makedirs(rootfs, mode=0o755)
            pod = spec.PodSandboxConfig(
                hostname=hostname, cgroup_parent=req.cgroup_parent, sysctls=dict(req.sysctls),
                namespace_options=ns,
                namespace_paths={"network": sb.netns_path} if sb.netns_path else {})
            security = replace(req.infra_security_context(), readonly_rootfs=True)
            pause = spec.Mount(PAUSE_PATH, self.ctx.config.image.pause, readonly=True)
            config, notes = spec.build_sandbox_spec(
                sb.id, pod, PAUSE_COMMAND, rootfs, self.ctx.host,
                self.ctx.spec_options(sb.runtime_handler), security, mounts=(pause,))
            for note in notes:
                log.info("pod %s: %s", sb.id, note)
            atomic_write(os.path.join(bundle, "config.json"), json.dumps(config).encode(),
                         durable=False)  # runc reads it now; after a reboot, nobody

            pid, _ = runtime.create(sb.id, bundle, log_path=os.path.join(bundle, INFRA_LOG),
                                    persist_dir=bundle, name=req.kube_name)
            undo.callback(self._kill_infra, sb)
            sb.infra_pid, sb.infra_start = pid, start_time(pid) or 0
            runtime.start(sb.id)
            sb.state = READY
            # Nobody will get this answer when the caller gave up: keep it for its retry.
            sb.claimed = calls.caller_waiting()
            self.ctx.sandboxes.save(sb)
            undo.pop_all()
        if not sb.claimed:
            log.info("pod %s: its caller gave up; kept for a retry of the same request", sb.id)

    def _setup_network(self, sb: Sandbox) -> None:
        """CNI ADD in the pod's namespace; hostPorts also on 127.0.0.1 through the bridge."""
        req = sb.request
        status = self.ctx.cni.setup(PodNetwork(
            pod_id=sb.id, netns_path=sb.netns_path, name=req.name, namespace=req.namespace,
            uid=req.uid, port_mappings=req.port_mappings, annotations=dict(req.annotations)))
        sb.ips = tuple(status.ips)
        if status.bridge and any(m.host_port > 0 for m in req.port_mappings):
            self.ctx.localhost.acquire(status.bridge)
            sb.localhost_bridge = status.bridge
        self.ctx.sandboxes.save(sb)

    def _teardown_network(self, sb: Sandbox) -> None:
        """CNI DEL with the cached ADD config; repeatable."""
        self.ctx.cni.teardown(sb.id, sb.netns_path)
        if sb.localhost_bridge:
            self.ctx.localhost.release(sb.localhost_bridge)
            sb.localhost_bridge = ""
            if sb.id in self.registry.sandboxes:
                self.ctx.sandboxes.save(sb)

    def _kill_infra(self, sb: Sandbox) -> None:
        runtime = self.ctx.runtime(sb.runtime_handler)
        try:
            runtime.stop(sb.id, 0, signal.SIGKILL, pid=sb.infra_pid,
                             pid_start=sb.infra_start)
        except OcidError as exc:
            log.debug("pod %s: infra stop: %s", sb.id, exc)
        runtime.delete(sb.id)

    # -- stop and remove -------------------------------------------------------------------

    def stop(self, text: str) -> None:
        """Stop every container, then the infra; free the network and shm. Idempotent."""
        try:
            sb = self.registry.sandbox(text)
        except NotFound:
            raise NotFound(f"pod sandbox {text!r} not found") from None
        with self.registry.locked(sb.id):
            if sb.id not in self.registry.sandboxes:
                return  # removed while we waited: stopped for good
            self._stop_containers(sb.id)
            self._release_resources(sb)
            if sb.state != NOTREADY:
                sb.state = NOTREADY
                self.ctx.sandboxes.save(sb)
        log.info("pod %s stopped", sb.id)

    def _release_resources(self, sb: Sandbox) -> None:
        """Stop the infra and take down what the pod holds; every step may repeat."""
        if sb.infra_pid:
            runtime = self.ctx.runtime(sb.runtime_handler)
            if self.infra_alive(sb):
                try:
                    runtime.stop(sb.id, 0, signal.SIGKILL, pid=sb.infra_pid,
                                 pid_start=sb.infra_start)
                except NotFound:
                    pass
        if sb.shm_path:
            podfiles.unmount_shm(sb.shm_path)
        if sb.netns_path:
            self._teardown_network(sb)
            netns.remove(sb.netns_path)

    def remove(self, text: str) -> None:
        """Remove a pod and its containers; an unknown pod is not an error."""
        try:
            sb = self.registry.sandbox(text)
        except NotFound:
            return
        with self.registry.locked(sb.id):
            if sb.id not in self.registry.sandboxes:
                return  # removed while we waited
            self._remove_containers(sb.id)
            self._discard(sb)
        log.info("pod %s removed", sb.id)

    def _discard(self, sb: Sandbox) -> None:
        """Take the pod down completely and forget it (also rolls back a half-made one)."""
        self._release_resources(sb)
        if sb.infra_pid or sb.state == CREATING:
            self.ctx.runtime(sb.runtime_handler).delete(sb.id)
        attach_link = os.path.join(self.ctx.attach_dir, sb.id)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(attach_link)
        if not sb.request.log_directory:  # the default log dir made for this pod
            shutil.rmtree(self.default_log_dir(sb.id), ignore_errors=True)
        try:
            shutil.rmtree(self.bundle(sb.id))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise InternalError(f"cannot delete pod {sb.id}: {exc.strerror}") from exc
        self.registry.sandboxes.pop(sb.id, None)
        self.registry.release(sb.request.kube_name, sb.id)
        self.registry.forget_lock(sb.id)

    # -- exits and restore -----------------------------------------------------------------

    def infra_exited(self, pod_id: str) -> None:
        """The infra process died: the pod is no longer ready (the kubelet recreates it)."""
        sb = self.registry.sandboxes.get(pod_id)
        if sb is None:
            return
        with self.registry.locked(pod_id):
            if sb.state == READY and pod_id in self.registry.sandboxes:
                sb.state = NOTREADY
                self.ctx.sandboxes.save(sb)
                log.warning("pod %s: infra container exited; pod is not ready", pod_id)

    def restore(self, sb: Sandbox) -> bool:
        """Take a pod record found at start; False if it was half-made and rolled back."""
        if sb.state == CREATING:
            log.warning("pod %s was being created when ocid stopped; rolling it back", sb.id)
            self._discard(sb)
            return False
        self.registry.sandboxes[sb.id] = sb
        self.registry.reserve(sb.request.kube_name, sb.id, "pod sandbox")
        if sb.state == READY and not self.infra_alive(sb):
            sb.state = NOTREADY
            self.ctx.sandboxes.save(sb)
            log.warning("pod %s: infra container exited while ocid was down", sb.id)
        return True

    def dial(self, text: str, port: int) -> socket.socket:
        """A TCP connection to ``port`` on the pod's localhost (for port forwarding)."""
        sb = self.registry.sandbox(text)
        if sb.state != READY:
            raise FailedPrecondition(f"pod sandbox {sb.id} is not ready")
        return streams.dial_in_netns(sb.netns_path, port)

    # -- queries ---------------------------------------------------------------------------

    def get(self, text: str) -> Sandbox:
        return self.registry.sandbox(text)

    def list(self, id_prefix: str = "", state: str | None = None,
             labels: dict[str, str] | None = None) -> list[Sandbox]:
        """Pods matching every filter given, oldest first."""
        return select(self.registry.sandboxes, id_prefix, state, labels)

    def verbose_info(self, sb: Sandbox) -> dict:
        """The pod's details for PodSandboxStatus(verbose): runtime view and paths."""
        return {"id": sb.id, "name": sb.request.kube_name, "pid": sb.infra_pid,
                "runtimeHandler": sb.runtime_handler, "netnsPath": sb.netns_path,
                "shmPath": sb.shm_path, "bundle": self.bundle(sb.id),
                "config": json.loads(_read_text(os.path.join(self.bundle(sb.id), "config.json"))),
                "claimed": sb.claimed}


def _read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return "null"

