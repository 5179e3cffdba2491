"""The configuration of ocid: one dataclass per TOML table, defaults and help in one place.

Each option's help text sits next to its field, so ``ocid config``, ``ocid.conf(5)`` and
``ocid --help`` all come from this module. A field whose metadata names a ``flag`` is also
a command-line flag of ``ocid`` (and the flag overrides the file).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any

DEFAULT_CONFIG_PATH = "/etc/ocid/ocid.conf"
DEFAULT_CONMON_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def option(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    choices: tuple[str, ...] | None = None,
    absolute: bool = False,
) -> Any:
    """A config field: its default, its help text and, optionally, its ocid flag and checks.

    ``absolute`` asks that a non-empty value be an absolute path.
    """
    metadata = {"help": help, "flag": flag, "choices": choices, "absolute": absolute}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class RuntimeHandler:
    """An OCI runtime a pod can select with its runtime handler (``[ocid.runtime.runtimes.NAME]``)."""

    runtime_path: str = option("", "Path of the OCI runtime binary.", absolute=True)
    runtime_root: str = option(
        "",
        "State directory of the runtime (its --root); empty means <runroot>/runtime/<handler>.",
        absolute=True,
    )
    runtime_type: str = option("oci", "How the runtime is driven; only \"oci\" (through conmon).",
                               choices=("oci",))


@dataclass
class RootSection:
    """``[ocid]``: where ocid keeps its state."""

    root: str = option("/var/lib/ocid",
                       "Persistent state: image storage, pod and container records, bundles.",
                       flag="--root", absolute=True)
    runroot: str = option("/var/run/ocid",
                          "Volatile state: exit files, attach sockets, conmon pid files, locks.",
                          flag="--runroot", absolute=True)
    sandbox_dir: str = option("", "Pod sandbox records; empty means <root>/sandboxes.",
                              flag="--sandboxdir", absolute=True)
    container_dir: str = option("", "Container records and bundles; empty means <root>/containers.",
                                flag="--containerdir", absolute=True)
    log_dir: str = option("/var/log/ocid/pods",
                          "Pod log directory used when the kubelet names none.", absolute=True)


@dataclass
class ApiSection:
    """``[ocid.api]``: the CRI socket and the streaming server."""

    listen: str = option("/var/run/ocid.sock", "Path of the CRI gRPC unix socket.",
                         flag="--listen", absolute=True)
    stream_address: str = option("127.0.0.1",
                                 "Address of the streaming server (exec, attach, port-forward).")
    stream_port: int = option(10010, "Port of the streaming server; 0 picks a free port.")
    stream_tls_cert: str = option("", "TLS certificate of the streaming server; empty: plain HTTP.",
                                  absolute=True)
    stream_tls_key: str = option("", "TLS key of the streaming server (with stream_tls_cert).",
                                 absolute=True)


@dataclass
class RuntimeSection:
    """``[ocid.runtime]``: the OCI runtimes, conmon and the security defaults."""

    runtime: str = option("/usr/sbin/runc",
                          "OCI runtime used for pods that name no runtime handler.",
                          flag="--runtime", absolute=True)
    runtimes: dict[str, RuntimeHandler] = option(
        {
            "runc": RuntimeHandler(runtime_path="/usr/sbin/runc"),
            "crun": RuntimeHandler(runtime_path="/usr/bin/crun"),
        },
        "Runtime handlers pods can select by name, one [ocid.runtime.runtimes.NAME] table each.",
    )
    conmon: str = option("/usr/bin/conmon", "Path of conmon, the per-container monitor.",
                         flag="--conmon", absolute=True)
    conmon_env: list[str] = option([DEFAULT_CONMON_PATH],
                                   "Environment given to conmon, as NAME=value strings.")
    selinux: bool = option(False, "Label containers with SELinux (skipped where SELinux is off).",
                           flag="--selinux")
    seccomp_profile: str = option(
        "", "Default seccomp profile (JSON); empty means the profile shipped with ocid.",
        flag="--seccomp-profile", absolute=True)
    apparmor_profile: str = option(
        "ocid-default", "Default AppArmor profile (skipped where AppArmor is off).",
        flag="--apparmor-profile")
    cgroup_manager: str = option("cgroupfs", "Cgroup driver: cgroupfs or systemd.",
                                 choices=("cgroupfs", "systemd"))


@dataclass
class ImageSection:
    """``[ocid.image]``: the pause process and the containers-image configuration files."""

    pause: str = option("/usr/bin/catatonit",
                        "Pause executable run by each pod's infra container.",
                        flag="--pause", absolute=True)
    registries_conf: str = option("/etc/containers/registries.conf",
                                  "registries.conf (v2): search registries, mirrors, insecure.",
                                  absolute=True)
    signature_policy: str = option("/etc/containers/policy.json",
                                   "policy.json: which images may be pulled.", absolute=True)
    auth_file: str = option("/run/containers/0/auth.json",
                            "auth.json with registry credentials (containers-auth.json).",
                            absolute=True)
    certs_dirs: list[str] = option(
        ["/etc/containers/certs.d", "/etc/docker/certs.d"],
        "Per-registry TLS files: <dir>/<host:port>/*.crt are extra CAs, *.cert/*.key a client "
        "certificate.")
    registries_conf_dir: str = option("/etc/containers/registries.conf.d",
                                      "Drop-in directory of registries.conf files, read in order.",
                                      absolute=True)
    pull_progress_timeout: int = option(
        60, "Seconds a pull may go without receiving a byte before it is cancelled; 0 disables.")
    max_parallel_downloads: int = option(3, "Layers of one image downloaded at the same time.")


@dataclass
class NetworkSection:
    """``[ocid.network]``: where CNI configurations and plugins are found."""

    network_dir: str = option("/etc/cni/net.d", "Directory of CNI network configurations.",
                              absolute=True)
    netns_dir: str = option("/var/run/netns",
                            "Where pods' persistent network namespaces are mounted "
                            "(ip netns uses /var/run/netns).", absolute=True)
    plugin_dirs: list[str] = option(["/opt/cni/bin", "/usr/lib/cni"],
                                    "Directories searched for CNI plugin binaries, in order.")


@dataclass
class Config:
    """The whole configuration; attribute names follow the TOML tables."""

    ocid: RootSection = field(default_factory=RootSection)
    api: ApiSection = field(default_factory=ApiSection)
    runtime: RuntimeSection = field(default_factory=RuntimeSection)
    image: ImageSection = field(default_factory=ImageSection)
    network: NetworkSection = field(default_factory=NetworkSection)

    def finalize(self) -> Config:
        """Fill the values derived from others (empty dirs under root/runroot)."""
        if not self.ocid.sandbox_dir:
            self.ocid.sandbox_dir = os.path.join(self.ocid.root, "sandboxes")
        if not self.ocid.container_dir:
            self.ocid.container_dir = os.path.join(self.ocid.root, "containers")
        for name, handler in self.runtime.runtimes.items():
            if not handler.runtime_root:
                handler.runtime_root = os.path.join(self.ocid.runroot, "runtime", name)
        return self

    @property
    def storage_root(self) -> str:
        """Where images, layers and container root filesystems are stored."""
        return os.path.join(self.ocid.root, "storage")

    def runtime_handler(self, name: str) -> RuntimeHandler:
        """The handler a pod's runtime_handler names; "" is the default runtime."""
        if name == "":
            return RuntimeHandler(runtime_path=self.runtime.runtime,
                                  runtime_root=os.path.join(self.ocid.runroot, "runtime", "default"))
        return self.runtime.runtimes[name]


#: TOML table path -> attribute of Config, in the order they are written.
SECTIONS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("ocid",), "ocid"),
    (("ocid", "api"), "api"),
    (("ocid", "runtime"), "runtime"),
    (("ocid", "image"), "image"),
    (("ocid", "network"), "network"),
)
