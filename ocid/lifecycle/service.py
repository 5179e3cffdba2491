"""The pod and container lifecycle of one daemon: managers, exit watching and restore.

    lifecycle = Lifecycle(config, images)
    lifecycle.start()      # restore records, reconcile with runc and exit files, watch exits
    lifecycle.pods.run(request, handler); lifecycle.containers.create(pod_id, request) ...
    lifecycle.close()
"""

from __future__ import annotations

import logging
import os
import shutil

from ocid.config import Config
from ocid.errors import OcidError
from ocid.image.service import ImageService
from ocid.lifecycle.containers import ContainerManager
from ocid.lifecycle.context import Context
from ocid.lifecycle.pods import SandboxManager
from ocid.oci.exitwatch import ExitWatcher
from ocid.oci.spec import HostInfo

log = logging.getLogger("ocid.lifecycle")


class Lifecycle:
    """Owns the pod and container managers and keeps their records true."""

    def __init__(self, config: Config, images: ImageService, host: HostInfo | None = None):
        self.ctx = Context(config, images, host or HostInfo.probe())
        self.containers = ContainerManager(self.ctx)
        self.pods: SandboxManager = self.containers.pods
        os.makedirs(self.ctx.exits_dir, mode=0o755, exist_ok=True)
        os.makedirs(self.ctx.attach_dir, mode=0o755, exist_ok=True)
        self._watcher = ExitWatcher(self.ctx.exits_dir, self._on_exit)

    def start(self) -> None:
        """Load what a previous ocid left, reconcile it, then watch for exits."""
        self.restore()
        self._watcher.start()  # reports exits that happened while we were down, too

    def close(self) -> None:
        self._watcher.stop()
        self.containers.close()

    def _on_exit(self, object_id: str) -> None:
        self.containers.on_exit(object_id)

    def restore(self) -> None:
        """Take every saved pod and container; roll back half-made ones; drop leftovers."""
        self.containers.empty_trash_later()  # files of containers removed before a restart
        sandboxes, broken_pods = self.ctx.sandboxes.load_all()
        containers, broken_ctrs = self.ctx.containers.load_all()
        # Pods whose hostPorts are reachable on 127.0.0.1 hold the bridge's routing.
        holders: dict[str, int] = {}
        for sb in sandboxes:
            if sb.localhost_bridge:
                holders[sb.localhost_bridge] = holders.get(sb.localhost_bridge, 0) + 1
        self.ctx.localhost.reset(holders)
        kept_pods = sum(self._attempt(self.pods.restore, sb) for sb in sandboxes)
        for c in sorted(containers, key=lambda c: c.created):
            self._attempt(self.containers.restore, c)
        self._remove_leftovers(broken_pods, broken_ctrs)
        log.info("restored %d pods and %d containers", kept_pods,
                 len(self.ctx.registry.containers))

    @staticmethod
    def _attempt(step, record) -> bool:  # type: ignore[no-untyped-def]
        """Run one restore step; a failure is logged and never stops the daemon."""
        try:
            return step(record) is not False
        except OcidError as exc:
            log.error("cannot restore %s: %s", record.id, exc)
            return False

    def _remove_leftovers(self, broken_pods: list[str], broken_ctrs: list[str]) -> None:
        """Runtime containers, storage containers and directories that no record owns."""
        known = set(self.ctx.registry.sandboxes) | set(self.ctx.registry.containers)
        for handler, runtime in self.ctx.all_runtimes().items():
            try:
                ids = runtime.list_ids()
            except OcidError as exc:
                log.warning("cannot list containers of runtime %r: %s", handler, exc)
                continue
            for cid in ids:
                if cid not in known:
                    log.warning("deleting runtime container %s that no record owns", cid)
                    try:
                        runtime.stop(cid, 0, 9)
                    except OcidError:
                        pass
                    runtime.delete(cid)
        store = self.ctx.images.store
        for record in store.list_containers():
            if record.id not in known:
                log.warning("removing container storage %s that no record owns", record.id)
                store.remove_container(record.id)
        for record_dir, ids in ((self.ctx.sandboxes, broken_pods),
                                (self.ctx.containers, broken_ctrs)):
            for entry in ids:
                if entry not in known:
                    shutil.rmtree(record_dir.path(entry), ignore_errors=True)
