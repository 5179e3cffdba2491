"""What a RunPodSandbox or CreateContainer request asks for, as the core sees it.

``ocid.server.convert`` builds these from the CRI messages and validates them on the
way; the managers take them as they are and keep them in their records. They are frozen
and made of plain types so ``persist`` can write and read them back.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field

from ocid.errors import InvalidArgument
from ocid.oci.spec import (
    ContainerConfig,
    NamespaceOption,
    SecurityContext,
    SecurityProfile,
)

# The kubelet's naming scheme for the names it reserves (dockershim's and cri-o's).
KUBE_PREFIX = "k8s"


@dataclass(frozen=True, slots=True)
class PortMapping:
    """CRI PortMapping: a container port published on the host (host_port 0: none)."""

    container_port: int
    host_port: int = 0
    protocol: str = "TCP"  # "TCP", "UDP" or "SCTP"
    host_ip: str = ""


@dataclass(frozen=True, slots=True)
class DNSConfig:
    """CRI DNSConfig: what goes into the pod's resolv.conf (empty: the host's)."""

    servers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PodRequest:
    """Everything RunPodSandbox needs from a CRI PodSandboxConfig."""

    name: str
    uid: str
    namespace: str
    attempt: int = 0
    hostname: str = ""
    log_directory: str = ""
    dns: DNSConfig = field(default_factory=DNSConfig)
    port_mappings: tuple[PortMapping, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    cgroup_parent: str = ""
    # linux.sysctls merged over the security.alpha.kubernetes.io sysctl annotations.
    sysctls: dict[str, str] = field(default_factory=dict)
    namespace_options: NamespaceOption = field(default_factory=NamespaceOption)
    privileged: bool = False
    run_as_user: int | None = None
    run_as_group: int | None = None
    readonly_rootfs: bool = False
    supplemental_groups: tuple[int, ...] = ()
    supplemental_groups_policy: str = "Merge"
    seccomp: SecurityProfile = field(default_factory=SecurityProfile)
    apparmor: SecurityProfile = field(default_factory=SecurityProfile)

    @property
    def kube_name(self) -> str:
        """The name the pod reserves: ``k8s_<name>_<namespace>_<uid>_<attempt>``."""
        return "_".join((KUBE_PREFIX, self.name, self.namespace, self.uid, str(self.attempt)))

    def infra_security_context(self) -> SecurityContext:
        """The pod-level security settings as the infra container's security context."""
        return SecurityContext(
            privileged=self.privileged, namespace_options=self.namespace_options,
            run_as_user=self.run_as_user, run_as_group=self.run_as_group,
            readonly_rootfs=self.readonly_rootfs, supplemental_groups=self.supplemental_groups,
            supplemental_groups_policy=self.supplemental_groups_policy,
            seccomp=self.seccomp, apparmor=self.apparmor)


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerRequest:
    """Everything CreateContainer needs from a CRI ContainerConfig."""

    name: str
    attempt: int = 0
    image: str  # ImageSpec.image as the kubelet sent it (a reference or an image ID)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    log_path: str = ""  # relative to the pod's log_directory
    stdin: bool = False
    stdin_once: bool = False
    tty: bool = False
    stop_signal: str = ""  # a CRI Signal name ("SIGTERM"); "": unset (the image's, or SIGTERM)
    spec: ContainerConfig

    def kube_name(self, pod: PodRequest) -> str:
        """The name the container reserves: ``k8s_<name>_<pod>_<namespace>_<uid>_<attempt>``."""
        return "_".join((KUBE_PREFIX, self.name, pod.name, pod.namespace, pod.uid,
                         str(self.attempt)))


def signal_number(name: str) -> int | None:
    """A signal's number from a CRI Signal name ("SIGRTMINPLUS1") or an image's StopSignal
    ("SIGTERM", "TERM", "15", "SIGRTMIN+1"); None for ""."""
    text = name.strip().upper()
    if not text:
        return None
    if text.isdigit():
        number = int(text)
    else:
        text = text if text.startswith("SIG") else f"SIG{text}"
        text = text.replace("PLUS", "+").replace("MINUS", "-")
        base, sign, offset = text.partition("+") if "+" in text else text.partition("-")
        try:
            if base in ("SIGRTMIN", "SIGRTMAX") and (not sign or offset.isdigit()):
                root = signal.SIGRTMIN if base == "SIGRTMIN" else signal.SIGRTMAX
                number = root + int(offset or 0) * (1 if sign != "-" else -1)
            else:
                number = signal.Signals[text].value
        except KeyError:
            raise InvalidArgument(f"unknown signal {name!r}") from None
    if not 0 < number <= signal.SIGRTMAX:
        raise InvalidArgument(f"signal {name!r} is out of range")
    return number
