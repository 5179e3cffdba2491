"""What the pod and container managers share: config, stores, runtimes and host facts."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
from dataclasses import dataclass, field
from typing import Any

from ocid.config import Config
from ocid.errors import InvalidArgument, NotFound
from ocid.image.service import ImageService
from ocid.lifecycle.persist import RecordDir, to_data
from ocid.lifecycle.records import Container, Registry, Sandbox
from ocid.network.cni import CniManager
from ocid.network.hostport import LocalhostRouting
from ocid.oci.runtime import OciRuntime, RuntimePaths
from ocid.oci.spec import HostInfo, SpecOptions

log = logging.getLogger("ocid.lifecycle")


def new_id() -> str:
    """A fresh 64-hex-digit ID, as cri-o and the kubelet expect."""
    return secrets.token_hex(32)


def fingerprint(*parts: Any) -> str:
    """A digest of a request, to tell a caller's retry from a different request."""
    return hashlib.sha256(json.dumps(to_data(parts), sort_keys=True).encode()).hexdigest()


@dataclass
class Context:
    """Shared state of one daemon's pod and container managers."""

    config: Config
    images: ImageService
    host: HostInfo
    registry: Registry = field(default_factory=Registry)
    sandboxes: RecordDir = field(init=False)
    containers: RecordDir = field(init=False)
    cni: CniManager = field(init=False)
    localhost: LocalhostRouting = field(default_factory=LocalhostRouting)
    _runtimes: dict[str, OciRuntime] = field(default_factory=dict)
    _options: dict[str, SpecOptions] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sandboxes = RecordDir(self.config.ocid.sandbox_dir, Sandbox)
        self.containers = RecordDir(self.config.ocid.container_dir, Container)
        net = self.config.network
        # The ADD results live beside the records, so a DEL after a restart finds them.
        self.cni = CniManager(net.network_dir, net.plugin_dirs,
                              os.path.join(self.config.ocid.root, "networks"))

    @property
    def exits_dir(self) -> str:
        return os.path.join(self.config.ocid.runroot, "exits")

    @property
    def attach_dir(self) -> str:
        return os.path.join(self.config.ocid.runroot, "attach")

    def runtime(self, handler: str) -> OciRuntime:
        """The runtime driver of a handler ("" is the default runtime)."""
        found = self._runtimes.get(handler)
        if found is not None:
            return found
        try:
            h = self.config.runtime_handler(handler)
        except KeyError:
            known = ", ".join(sorted(self.config.runtime.runtimes)) or "none"
            raise NotFound(f"runtime handler {handler!r} is not configured "
                           f"(configured: {known})") from None
        rt = self.config.runtime
        driver = OciRuntime(RuntimePaths(
            runtime_path=h.runtime_path, runtime_root=h.runtime_root, conmon_path=rt.conmon,
            conmon_env=tuple(rt.conmon_env), exits_dir=self.exits_dir, attach_dir=self.attach_dir,
            systemd_cgroup=rt.cgroup_manager == "systemd"))
        self._runtimes[handler] = driver
        return driver

    def all_runtimes(self) -> dict[str, OciRuntime]:
        """Every configured handler's driver (restore lists leftovers in each root)."""
        handlers = ["", *self.config.runtime.runtimes]
        return {h: self.runtime(h) for h in handlers}

    def spec_options(self, handler: str) -> SpecOptions:
        """Spec options for a handler; what the runtime supports is asked once."""
        found = self._options.get(handler)
        if found is None:
            manager = self.config.runtime.cgroup_manager
            found = SpecOptions(
                cgroup_manager=manager,
                default_cgroup_parent="system.slice" if manager == "systemd" else "/ocid",
                rro_supported=self.runtime(handler).supports_mount_option("rro"))
            self._options[handler] = found
        return found

    def check_handler(self, handler: str) -> None:
        """INVALID_ARGUMENT for a runtime handler that is not configured."""
        try:
            self.runtime(handler)
        except NotFound as exc:
            raise InvalidArgument(str(exc)) from None
