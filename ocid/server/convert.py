"""CRI v1 messages ↔ the core's dataclasses, validating what the core cannot check later.

Inbound: ``container_config``, ``container_request`` and ``pod_sandbox_config`` turn a
request into frozen dataclasses (``ocid.oci.spec``, ``ocid.lifecycle.podspec``), raising
``InvalidArgument`` with a message naming the field. Outbound: small builders the status
and list handlers use. Protobuf stays in ``ocid.server``; nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from cri_api.v1 import api_pb2

from ocid.errors import InternalError, InvalidArgument
from ocid.lifecycle.podspec import ContainerRequest, DNSConfig, PodRequest, PortMapping
from ocid.oci import seccomp, spec

# Pod annotations the kubelet used for sysctls before PodSecurityContext.Sysctls (1.11).
SYSCTLS_ANNOTATION = "security.alpha.kubernetes.io/sysctls"
UNSAFE_SYSCTLS_ANNOTATION = "security.alpha.kubernetes.io/unsafe-sysctls"

_PROFILE_TYPES = {
    api_pb2.SecurityProfile.RuntimeDefault: seccomp.RUNTIME_DEFAULT,
    api_pb2.SecurityProfile.Unconfined: seccomp.UNCONFINED,
    api_pb2.SecurityProfile.Localhost: seccomp.LOCALHOST,
}
_CONTAINER_STATES = {
    "created": api_pb2.CONTAINER_CREATED, "running": api_pb2.CONTAINER_RUNNING,
    "exited": api_pb2.CONTAINER_EXITED, "unknown": api_pb2.CONTAINER_UNKNOWN,
}
_SANDBOX_STATES = {"ready": api_pb2.SANDBOX_READY, "notready": api_pb2.SANDBOX_NOTREADY}


# ---------------------------------------------------------------------------- validation


def require_id(value: str, what: str) -> str:
    """``value`` when non-empty; INVALID_ARGUMENT naming the field otherwise.

    ``what`` is the request field ("container_id", "pod_sandbox_id").
    """
    if not value or not value.strip():
        raise InvalidArgument(f"{what}: an ID is required, but the request left it empty")
    return value


def require_timeout(seconds: int, what: str = "timeout") -> int:
    """``seconds`` when zero or more; INVALID_ARGUMENT for a negative timeout."""
    if seconds < 0:
        raise InvalidArgument(f"{what} must not be negative (got {seconds})")
    return seconds


def check_labels(values: Mapping[str, str], what: str = "labels") -> dict[str, str]:
    """A plain dict of labels or annotations; INVALID_ARGUMENT for an empty key."""
    out = dict(values)
    if any(not key.strip() for key in out):
        raise InvalidArgument(f"{what}: keys must not be empty")
    return out


def _enum_name(enum: Any, value: int, what: str) -> str:
    """The proto name of an enum value; INVALID_ARGUMENT for a number it does not define."""
    try:
        return str(enum.Name(value))
    except ValueError:
        raise InvalidArgument(f"{what}: unknown value {value}") from None


def _optional_int(message: Any, name: str) -> int | None:
    """An Int64Value field as an int, or None when the request left it unset."""
    return int(getattr(message, name).value) if message.HasField(name) else None


# ---------------------------------------------------------------------------- profiles


def security_profile(profile: api_pb2.SecurityProfile, what: str) -> spec.SecurityProfile:
    """A CRI SecurityProfile; Localhost needs a localhost_ref."""
    kind = _PROFILE_TYPES.get(profile.profile_type)
    if kind is None:
        raise InvalidArgument(f"{what}: unknown profile type {profile.profile_type}")
    if kind == seccomp.LOCALHOST and not profile.localhost_ref:
        raise InvalidArgument(f"{what}: profile type Localhost needs a localhost_ref")
    ref = profile.localhost_ref if kind == seccomp.LOCALHOST else ""
    return spec.SecurityProfile(kind, ref)


def _profile_from_string(value: str, defaults: tuple[str, ...], what: str) -> spec.SecurityProfile:
    """A deprecated profile string: a default name, "unconfined" or "localhost/<ref>"."""
    if value in defaults:
        return spec.SecurityProfile(seccomp.RUNTIME_DEFAULT)
    if value == "unconfined":
        return spec.SecurityProfile(seccomp.UNCONFINED)
    if value.startswith("localhost/") and value != "localhost/":
        return spec.SecurityProfile(seccomp.LOCALHOST, value.removeprefix("localhost/"))
    raise InvalidArgument(f"{what}: unknown profile {value!r} (expected "
                          f"{', '.join(repr(d) for d in defaults if d)}, 'unconfined' or "
                          "'localhost/<profile>')")


def seccomp_profile(sc: Any) -> spec.SecurityProfile:
    """The seccomp profile of a container or sandbox security context.

    The ``seccomp`` field wins over the deprecated ``seccomp_profile_path``. With neither
    set the container gets the runtime default, as cri-o does with its default
    ``seccomp_use_default_when_empty = true``.
    """
    if sc.HasField("seccomp"):
        return security_profile(sc.seccomp, "seccomp")
    return _profile_from_string(sc.seccomp_profile_path,
                                ("", "runtime/default", "docker/default"),
                                "seccomp_profile_path")


def apparmor_profile(sc: Any) -> spec.SecurityProfile:
    """The AppArmor profile of a security context: ``apparmor``, else ``apparmor_profile``."""
    if sc.HasField("apparmor"):
        return security_profile(sc.apparmor, "apparmor")
    # LinuxSandboxSecurityContext has no deprecated string form.
    legacy = getattr(sc, "apparmor_profile", "")
    return _profile_from_string(legacy, ("", "runtime/default"), "apparmor_profile")


# ---------------------------------------------------------------------------- containers


def namespace_option(message: Any) -> spec.NamespaceOption:
    """The namespace_options of a security context (spec defaults when unset)."""
    if not message.HasField("namespace_options"):
        return spec.NamespaceOption()
    opts = message.namespace_options
    if opts.HasField("userns_options") and opts.userns_options.mode != api_pb2.NODE:
        raise InvalidArgument("namespace_options.userns_options: user namespaces are not "
                              "supported (only mode NODE)")
    modes = [_enum_name(api_pb2.NamespaceMode, getattr(opts, kind),
                        f"namespace_options.{kind}") for kind in ("network", "pid", "ipc")]
    return spec.NamespaceOption(*modes)


def mount(m: api_pb2.Mount) -> spec.Mount:
    """A CRI Mount (selinux_relabel is ignored: ocid has no SELinux support)."""
    if m.HasField("image") and m.image.image:
        raise InvalidArgument(f"mount {m.container_path}: image volume mounts are not supported")
    if m.uidMappings or m.gidMappings:
        raise InvalidArgument(f"mount {m.container_path}: id-mapped mounts are not supported")
    propagation = _enum_name(api_pb2.MountPropagation, m.propagation,
                             f"mount {m.container_path}: propagation")
    return spec.Mount(container_path=m.container_path, host_path=m.host_path,
                      readonly=m.readonly, propagation=propagation,
                      recursive_read_only=m.recursive_read_only)


def resources(r: api_pb2.LinuxContainerResources) -> spec.Resources:
    """CRI LinuxContainerResources (``unified`` is not supported and ignored)."""
    return spec.Resources(
        cpu_period=r.cpu_period, cpu_quota=r.cpu_quota, cpu_shares=r.cpu_shares,
        memory_limit_in_bytes=r.memory_limit_in_bytes,
        memory_swap_limit_in_bytes=r.memory_swap_limit_in_bytes,
        oom_score_adj=r.oom_score_adj, cpuset_cpus=r.cpuset_cpus, cpuset_mems=r.cpuset_mems,
        hugepage_limits=tuple(spec.HugepageLimit(h.page_size, h.limit)
                              for h in r.hugepage_limits))


def security_context(sc: api_pb2.LinuxContainerSecurityContext) -> spec.SecurityContext:
    """CRI LinuxContainerSecurityContext (SELinux options and ambient caps are ignored)."""
    return spec.SecurityContext(
        add_capabilities=tuple(sc.capabilities.add_capabilities),
        drop_capabilities=tuple(sc.capabilities.drop_capabilities),
        privileged=sc.privileged,
        namespace_options=namespace_option(sc),
        run_as_user=_optional_int(sc, "run_as_user"),
        run_as_group=_optional_int(sc, "run_as_group"),
        run_as_username=sc.run_as_username,
        readonly_rootfs=sc.readonly_rootfs,
        supplemental_groups=tuple(sc.supplemental_groups),
        supplemental_groups_policy=_enum_name(api_pb2.SupplementalGroupsPolicy,
                                              sc.supplemental_groups_policy,
                                              "supplemental_groups_policy"),
        no_new_privs=sc.no_new_privs,
        # Empty means "the defaults" here (see the report on ProcMount Unmasked).
        masked_paths=tuple(sc.masked_paths) or None,
        readonly_paths=tuple(sc.readonly_paths) or None,
        seccomp=seccomp_profile(sc),
        apparmor=apparmor_profile(sc),
    )


def _envs(pairs: Iterable[api_pb2.KeyValue]) -> tuple[tuple[str, str], ...]:
    out = tuple((kv.key, kv.value) for kv in pairs)
    if any(not key for key, _ in out):
        raise InvalidArgument("envs: a variable has an empty name")
    return out


def container_config(config: api_pb2.ContainerConfig) -> spec.ContainerConfig:
    """The spec builder's ContainerConfig from a CRI ContainerConfig."""
    name = config.metadata.name
    if not name:
        raise InvalidArgument("container config: metadata.name is required")
    if config.working_dir and not config.working_dir.startswith("/"):
        raise InvalidArgument(f"container {name}: working_dir {config.working_dir!r} "
                              "must be an absolute path")
    if config.CDI_devices:
        raise InvalidArgument(f"container {name}: CDI devices are not supported")
    linux = config.linux
    return spec.ContainerConfig(
        name=name,
        command=tuple(config.command),
        args=tuple(config.args),
        working_dir=config.working_dir,
        envs=_envs(config.envs),
        mounts=tuple(mount(m) for m in config.mounts),
        # An empty permission string means the usual "rwm", as in Docker.
        devices=tuple(spec.Device(d.container_path, d.host_path, d.permissions or "rwm")
                      for d in config.devices),
        annotations=check_labels(config.annotations, "annotations"),
        tty=config.tty,
        resources=resources(linux.resources),
        security_context=security_context(linux.security_context),
    )


def container_request(config: api_pb2.ContainerConfig) -> ContainerRequest:
    """What CreateContainer needs from a CRI ContainerConfig."""
    built = container_config(config)
    image = config.image.image.strip()
    if not image:
        raise InvalidArgument(f"container {built.name}: image is required "
                              "(ImageSpec.image is empty)")
    signal = _enum_name(api_pb2.Signal, config.stop_signal, "stop_signal")
    return ContainerRequest(
        name=built.name, attempt=config.metadata.attempt, image=image,
        labels=check_labels(config.labels, "labels"), annotations=dict(built.annotations),
        log_path=config.log_path, stdin=config.stdin, stdin_once=config.stdin_once,
        tty=config.tty, stop_signal="" if signal == "RUNTIME_DEFAULT" else signal,
        spec=built)


# ---------------------------------------------------------------------------- pods


def parse_sysctl_annotation(value: str, what: str) -> dict[str, str]:
    """A comma-separated ``name=value`` list, as in the sysctl annotations."""
    out: dict[str, str] = {}
    if not value.strip():
        return out
    for entry in value.split(","):
        name, eq, val = entry.strip().partition("=")
        if not eq or not name or any(c.isspace() for c in name):
            raise InvalidArgument(f"annotation {what}: {entry.strip()!r} is not of the form "
                                  "name=value")
        out[name] = val
    return out


def pod_sysctls(config: api_pb2.PodSandboxConfig) -> dict[str, str]:
    """linux.sysctls over the sysctl annotations (safe, then unsafe); linux.sysctls wins."""
    merged: dict[str, str] = {}
    for key in (SYSCTLS_ANNOTATION, UNSAFE_SYSCTLS_ANNOTATION):
        if key in config.annotations:
            merged.update(parse_sysctl_annotation(config.annotations[key], key))
    merged.update(config.linux.sysctls)
    return merged


def port_mapping(p: api_pb2.PortMapping) -> PortMapping:
    """A CRI PortMapping; ports must be 0-65535 and the container port set."""
    if not 0 < p.container_port <= 65535 or not 0 <= p.host_port <= 65535:
        raise InvalidArgument(f"port mapping {p.host_port}:{p.container_port}: "
                              "ports must be between 1 and 65535")
    return PortMapping(container_port=p.container_port, host_port=p.host_port,
                       protocol=_enum_name(api_pb2.Protocol, p.protocol, "port mapping protocol"),
                       host_ip=p.host_ip)


def pod_sandbox_config(config: api_pb2.PodSandboxConfig) -> PodRequest:
    """What RunPodSandbox needs from a CRI PodSandboxConfig."""
    meta = config.metadata
    for field_name in ("name", "uid", "namespace"):
        if not getattr(meta, field_name):
            raise InvalidArgument(f"pod sandbox config: metadata.{field_name} is required")
    sc = config.linux.security_context
    dns = config.dns_config
    return PodRequest(
        name=meta.name, uid=meta.uid, namespace=meta.namespace, attempt=meta.attempt,
        hostname=config.hostname,
        log_directory=config.log_directory,
        dns=DNSConfig(tuple(dns.servers), tuple(dns.searches), tuple(dns.options)),
        port_mappings=tuple(port_mapping(p) for p in config.port_mappings),
        labels=check_labels(config.labels, "labels"),
        annotations=check_labels(config.annotations, "annotations"),
        cgroup_parent=config.linux.cgroup_parent,
        sysctls=pod_sysctls(config),
        namespace_options=namespace_option(sc),
        privileged=sc.privileged,
        run_as_user=_optional_int(sc, "run_as_user"),
        run_as_group=_optional_int(sc, "run_as_group"),
        readonly_rootfs=sc.readonly_rootfs,
        supplemental_groups=tuple(sc.supplemental_groups),
        supplemental_groups_policy=_enum_name(api_pb2.SupplementalGroupsPolicy,
                                              sc.supplemental_groups_policy,
                                              "supplemental_groups_policy"),
        seccomp=seccomp_profile(sc),
        apparmor=apparmor_profile(sc),
    )


# ---------------------------------------------------------------------------- outbound


def mount_to_pb(m: spec.Mount) -> api_pb2.Mount:
    """A mount as ContainerStatus reports it."""
    return api_pb2.Mount(container_path=m.container_path, host_path=m.host_path,
                         readonly=m.readonly,
                         propagation=api_pb2.MountPropagation.Value(m.propagation),
                         recursive_read_only=m.recursive_read_only)


def resources_to_pb(r: spec.Resources) -> api_pb2.ContainerResources:
    """A container's resources as ContainerStatus reports them (the linux part)."""
    return api_pb2.ContainerResources(linux=api_pb2.LinuxContainerResources(
        cpu_period=r.cpu_period, cpu_quota=r.cpu_quota, cpu_shares=r.cpu_shares,
        memory_limit_in_bytes=r.memory_limit_in_bytes,
        memory_swap_limit_in_bytes=r.memory_swap_limit_in_bytes,
        oom_score_adj=r.oom_score_adj, cpuset_cpus=r.cpuset_cpus, cpuset_mems=r.cpuset_mems,
        hugepage_limits=[api_pb2.HugepageLimit(page_size=h.page_size, limit=h.limit)
                         for h in r.hugepage_limits]))


def namespace_option_to_pb(n: spec.NamespaceOption) -> api_pb2.NamespaceOption:
    """Namespace modes as PodSandboxStatus reports them."""
    return api_pb2.NamespaceOption(network=api_pb2.NamespaceMode.Value(n.network),
                                   pid=api_pb2.NamespaceMode.Value(n.pid),
                                   ipc=api_pb2.NamespaceMode.Value(n.ipc))


def container_state_to_pb(state: str) -> api_pb2.ContainerState:
    """"created", "running", "exited" or "unknown" as the CRI enum."""
    try:
        return _CONTAINER_STATES[state]
    except KeyError:
        raise InternalError(f"container state {state!r} has no CRI equivalent") from None


def sandbox_state_to_pb(state: str) -> api_pb2.PodSandboxState:
    """"ready" or "notready" as the CRI enum."""
    try:
        return _SANDBOX_STATES[state]
    except KeyError:
        raise InternalError(f"pod sandbox state {state!r} has no CRI equivalent") from None


def _state_name(table: dict[str, int], value: int, what: str) -> str:
    for name, number in table.items():
        if number == value:
            return name
    raise InvalidArgument(f"{what} filter: unknown state {value}")


def container_filter_state(filt: api_pb2.ContainerFilter) -> str | None:
    """The state a ListContainers filter asks for ("created"...), or None for any state."""
    if not filt.HasField("state"):
        return None
    return _state_name(_CONTAINER_STATES, filt.state.state, "container")


def sandbox_filter_state(filt: api_pb2.PodSandboxFilter) -> str | None:
    """The state a ListPodSandbox filter asks for ("ready", "notready"), or None for any."""
    if not filt.HasField("state"):
        return None
    return _state_name(_SANDBOX_STATES, filt.state.state, "pod sandbox")


def filter_state(filt: api_pb2.ContainerFilter | api_pb2.PodSandboxFilter) -> str | None:
    """The state a container or pod list filter asks for, or None for any state.

    The state is a wrapper message (``ContainerStateValue``) so that "unset" differs from
    the enum's zero (CONTAINER_CREATED / SANDBOX_READY): pass the filter, not the enum.
    """
    if isinstance(filt, api_pb2.ContainerFilter):
        return container_filter_state(filt)
    return sandbox_filter_state(filt)
