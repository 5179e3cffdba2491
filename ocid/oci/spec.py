"""Build an OCI runtime spec (config.json) for a CRI container: the pure-logic half of
CreateContainer and RunPodSandbox.

Inputs mirror the CRI v1 messages (``ContainerConfig``, ``LinuxContainerSecurityContext``,
``LinuxContainerResources``, ``Mount``, ``Device``, ``PodSandboxConfig``) as frozen
dataclasses, so this module needs no protobuf. Facts about the host (capability bounding
set, the daemon's oom_score_adj, AppArmor) come in as ``HostInfo`` so tests can fake them.

    spec, notes = build_container_spec(cid, config, pod, image, rootfs, host, options)

``notes`` lists what was adjusted rather than refused (an oom_score_adj raised to the
daemon's own, capabilities the host cannot grant). The spec is validated against the
runtime-spec JSON schema shipped in ``data/schema`` before it is returned.
"""

from __future__ import annotations

import functools
import json
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib import resources as pkg_resources
from pathlib import Path
from typing import Any

from ocid.errors import InternalError, InvalidArgument
from ocid.oci import seccomp

OCI_VERSION = "1.0.2"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Capability numbers, as in linux/capability.h; CapBnd is a bit mask over these.
CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
)
# cri-o's default_capabilities: narrower than Docker's (no NET_RAW, MKNOD, SYS_CHROOT...).
DEFAULT_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_SETGID", "CAP_SETUID",
    "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_KILL",
)
DEFAULT_MASKED_PATHS = (
    "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
    "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/fs/selinux",
    "/sys/dev/block", "/sys/devices/virtual/powercap",
)
DEFAULT_READONLY_PATHS = (
    "/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
)
# CRI MountPropagation → the bind mount's propagation option.
PROPAGATION = {"PROPAGATION_PRIVATE": "rprivate", "PROPAGATION_HOST_TO_CONTAINER": "rslave",
               "PROPAGATION_BIDIRECTIONAL": "rshared"}
# CRI NamespaceMode values.
POD, CONTAINER, NODE, TARGET = "POD", "CONTAINER", "NODE", "TARGET"
APPARMOR_DEFAULT_PROFILE = "ocid-default"
_SYSCTL_NAME = re.compile(r"^[a-z0-9]([-_a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-_/a-z0-9]*[a-z0-9])?)*$")
_IPC_SYSCTLS = ("kernel.shmmax", "kernel.shmall", "kernel.shmmni", "kernel.shm_rmid_forced",
                "kernel.msgmax", "kernel.msgmni", "kernel.msgmnb", "kernel.sem")


# ---------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an OCI image config that shape the process."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""


@dataclass(frozen=True)
class Mount:
    """CRI Mount: a host path bind-mounted into the container."""

    container_path: str
    host_path: str
    readonly: bool = False
    propagation: str = "PROPAGATION_PRIVATE"
    recursive_read_only: bool = False


@dataclass(frozen=True)
class Device:
    """CRI Device: a host device node made available in the container."""

    container_path: str
    host_path: str
    permissions: str = "rwm"


@dataclass(frozen=True)
class HugepageLimit:
    """CRI HugepageLimit: page size ("2MB", "1GB") and limit in bytes."""

    page_size: str
    limit: int


@dataclass(frozen=True)
class Resources:
    """CRI LinuxContainerResources; zero means unset, as in the proto."""

    cpu_period: int = 0
    cpu_quota: int = 0
    cpu_shares: int = 0
    memory_limit_in_bytes: int = 0
    memory_swap_limit_in_bytes: int = 0
    oom_score_adj: int = 0
    cpuset_cpus: str = ""
    cpuset_mems: str = ""
    hugepage_limits: tuple[HugepageLimit, ...] = ()


@dataclass(frozen=True)
class SecurityProfile:
    """CRI SecurityProfile: RuntimeDefault, Unconfined or Localhost with a reference."""

    profile_type: str = seccomp.RUNTIME_DEFAULT
    localhost_ref: str = ""


@dataclass(frozen=True)
class NamespaceOption:
    """CRI NamespaceOption: POD, CONTAINER or NODE for network, pid and ipc."""

    network: str = POD
    pid: str = CONTAINER
    ipc: str = POD


@dataclass(frozen=True)
class SecurityContext:
    """CRI LinuxContainerSecurityContext (None for the masked/readonly lists = defaults)."""

    add_capabilities: tuple[str, ...] = ()
    drop_capabilities: tuple[str, ...] = ()
    privileged: bool = False
    namespace_options: NamespaceOption = NamespaceOption()
    run_as_user: int | None = None
    run_as_group: int | None = None
    run_as_username: str = ""
    readonly_rootfs: bool = False
    supplemental_groups: tuple[int, ...] = ()
    supplemental_groups_policy: str = "Merge"
    no_new_privs: bool = False
    masked_paths: tuple[str, ...] | None = None
    readonly_paths: tuple[str, ...] | None = None
    seccomp: SecurityProfile = SecurityProfile()
    apparmor: SecurityProfile = SecurityProfile()


@dataclass(frozen=True)
class ContainerConfig:
    """CRI ContainerConfig with its LinuxContainerConfig flattened in."""

    name: str
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    working_dir: str = ""
    envs: tuple[tuple[str, str], ...] = ()
    mounts: tuple[Mount, ...] = ()
    devices: tuple[Device, ...] = ()
    annotations: dict[str, str] = field(default_factory=dict)
    tty: bool = False
    resources: Resources = Resources()
    security_context: SecurityContext = SecurityContext()


@dataclass(frozen=True)
class PodSandboxConfig:
    """CRI PodSandboxConfig, plus what the sandbox already made (namespaces, files)."""

    hostname: str = ""
    cgroup_parent: str = ""
    sysctls: dict[str, str] = field(default_factory=dict)
    namespace_options: NamespaceOption = NamespaceOption()
    # Paths of the pod's namespaces by OCI type ("network", "ipc", "uts", "pid"); absent → new.
    namespace_paths: dict[str, str] = field(default_factory=dict)
    shm_path: str = ""
    hosts_path: str = ""
    resolv_path: str = ""
    hostname_path: str = ""


@dataclass(frozen=True)
class HostInfo:
    """What the host allows; ``probe()`` reads it, tests build it by hand."""

    cap_bounding: frozenset[str]
    oom_score_adj: int = 0
    apparmor_enabled: bool = False
    arch: str = field(default_factory=seccomp.host_arch)

    @classmethod
    def probe(cls, status: str = "/proc/self/status", oom: str = "/proc/self/oom_score_adj",
              apparmor: str = "/sys/module/apparmor/parameters/enabled") -> HostInfo:
        """Read the bounding set, our oom_score_adj and whether AppArmor is on."""
        return cls(cap_bounding=parse_capbnd(Path(status).read_text()),
                   oom_score_adj=int(Path(oom).read_text().strip()),
                   apparmor_enabled=_read(apparmor).strip() == "Y")


@dataclass(frozen=True)
class SpecOptions:
    """Daemon configuration that shapes every spec."""

    cgroup_manager: str = "cgroupfs"  # or "systemd"
    default_cgroup_parent: str = "/ocid"  # "system.slice" for systemd
    default_capabilities: tuple[str, ...] = DEFAULT_CAPABILITIES
    pids_limit: int = 0  # 0: no limit
    restrict_oom_score_adj: bool = True
    rro_supported: bool = False  # runc >= 1.2 on kernel >= 5.12 understands "rro"
    stat: Callable[[str], os.stat_result] = os.stat  # for devices; tests substitute it


def _read(path: str) -> str:
    """A file's text, or "" when it does not exist (an absent module, a missing file)."""
    try:
        return Path(path).read_text()
    except (FileNotFoundError, NotADirectoryError):
        return ""


def parse_capbnd(status_text: str) -> frozenset[str]:
    """The CAP_ names set in the CapBnd line of /proc/<pid>/status."""
    for line in status_text.splitlines():
        if line.startswith("CapBnd:"):
            mask = int(line.split()[1], 16)
            return frozenset(f"CAP_{n}" for i, n in enumerate(CAPABILITIES) if mask >> i & 1)
    raise InternalError("no CapBnd line in the process status")


# ---------------------------------------------------------------------------- process


def process_args(config: ContainerConfig, image: ImageConfig) -> list[str]:
    """The kubelet's rule: command replaces Entrypoint, args replace Cmd."""
    if config.command:
        args = [*config.command, *config.args]
    else:
        args = [*image.entrypoint, *(config.args or image.cmd)]
    if not args:
        raise InvalidArgument(f"container {config.name}: no command: neither the request "
                              "nor the image gives one")
    return args


def process_env(config: ContainerConfig, image: ImageConfig) -> list[str]:
    """Image Env with CRI envs merged over it; a variable keeps its first position."""
    merged: dict[str, str] = {}
    for item in image.env:
        key, _, value = item.partition("=")
        merged[key] = value
    for key, value in config.envs:
        merged[key] = value
    env = [f"{k}={v}" for k, v in merged.items()]
    # An image without PATH still needs one for runc to find a relative args[0].
    return env if "PATH" in merged else [DEFAULT_PATH, *env]


def _passwd(rootfs: str) -> list[list[str]]:
    """The rootfs's /etc/passwd rows (name, x, uid, gid, ...)."""
    return [r.split(":") for r in _read(f"{rootfs}/etc/passwd").splitlines()
            if r and not r.startswith("#") and r.count(":") >= 3]


def _groups(rootfs: str) -> list[list[str]]:
    """The rootfs's /etc/group rows (name, x, gid, members)."""
    return [r.split(":") for r in _read(f"{rootfs}/etc/group").splitlines()
            if r and not r.startswith("#") and r.count(":") >= 2]


def _find_group(rootfs: str, group: str) -> int:
    """A group's gid by number or by name in /etc/group."""
    if group.isdigit():
        return int(group)
    for row in _groups(rootfs):
        if row[0] == group:
            return int(row[2])
    raise InvalidArgument(f"group {group!r} not found in the container's /etc/group")


def resolve_user(rootfs: str, user: str) -> tuple[int, int, str]:
    """Resolve "name", "uid", "name:group" or "uid:gid" to (uid, gid, user name or "")."""
    name, _, group = (user or "0").partition(":")
    uid, gid, username = None, 0, ""
    for row in _passwd(rootfs):
        if row[0] == name or (name.isdigit() and row[2] == name):
            uid, gid, username = int(row[2]), int(row[3]), row[0]
            break
    if uid is None:
        if not name.isdigit():
            raise InvalidArgument(f"user {name!r} not found in the container's /etc/passwd")
        uid = int(name)  # a numeric uid need not exist in passwd; its group is then 0
    if group:
        gid = _find_group(rootfs, group)
    return uid, gid, username


def member_groups(rootfs: str, username: str) -> list[int]:
    """The gids of /etc/group entries listing this user as a member."""
    if not username:
        return []
    return [int(r[2]) for r in _groups(rootfs) if len(r) > 3 and username in r[3].split(",")]


def process_user(sc: SecurityContext, image: ImageConfig, rootfs: str) -> dict[str, Any]:
    """process.user from run_as_user / run_as_username / the image's User, and groups."""
    if sc.run_as_group is not None and sc.run_as_user is None and not sc.run_as_username:
        raise InvalidArgument("run_as_group needs run_as_user or run_as_username")
    # The CRI fields replace the image's User entirely, group included (as in cri-o).
    if sc.run_as_user is not None:
        spec = str(sc.run_as_user)
    else:
        spec = sc.run_as_username or image.user
    uid, gid, username = resolve_user(rootfs, spec)
    if sc.run_as_group is not None:
        gid = sc.run_as_group
    if sc.supplemental_groups_policy == "Strict":
        extra: list[int] = list(sc.supplemental_groups)
    elif sc.supplemental_groups_policy in ("Merge", ""):
        extra = [*member_groups(rootfs, username), *sc.supplemental_groups]
    else:
        raise InvalidArgument(f"unknown supplemental_groups_policy "
                              f"{sc.supplemental_groups_policy!r}")
    user: dict[str, Any] = {"uid": uid, "gid": gid}
    gids = list(dict.fromkeys(g for g in extra if g != gid))
    if gids:
        user["additionalGids"] = gids
    return user


def _cap_name(name: str) -> str:
    """Normalise "net_admin" / "CAP_NET_ADMIN" to "CAP_NET_ADMIN"; unknown → InvalidArgument."""
    upper = name.upper()
    upper = upper if upper.startswith("CAP_") else f"CAP_{upper}"
    if upper[4:] not in CAPABILITIES:
        raise InvalidArgument(f"unknown capability {name!r}")
    return upper


def capabilities(sc: SecurityContext, host: HostInfo, defaults: tuple[str, ...],
                 notes: list[str]) -> list[str]:
    """The capability set: defaults, then add/drop ("ALL" included), within the host's bound."""
    every = sorted(host.cap_bounding, key=lambda c: CAPABILITIES.index(c[4:]))
    if sc.privileged:
        return every  # only what the host can grant, not a fixed list (CapBnd may lack some)
    adds = [a for a in sc.add_capabilities if a.upper() != "ALL"]
    drops = [d for d in sc.drop_capabilities if d.upper() != "ALL"]
    caps = [_cap_name(c) for c in defaults]
    if any(a.upper() == "ALL" for a in sc.add_capabilities):
        caps = list(every)
    if any(d.upper() == "ALL" for d in sc.drop_capabilities):
        caps = []
    caps += [_cap_name(a) for a in adds]
    dropped = {_cap_name(d) for d in drops}
    result = []
    for cap in dict.fromkeys(caps):
        if cap in dropped:
            continue
        if cap not in host.cap_bounding:
            notes.append(f"capability {cap} is not in the host's bounding set; not granted")
            continue
        result.append(cap)
    return result


def oom_score_adj(requested: int, host: HostInfo, options: SpecOptions,
                  notes: list[str]) -> int:
    """The requested adj, raised to the daemon's own when lower (restrict_oom_score_adj)."""
    # Without CAP_SYS_RESOURCE the runtime cannot go below the daemon's value.
    if options.restrict_oom_score_adj and requested < host.oom_score_adj:
        notes.append(f"oom_score_adj {requested} raised to the daemon's own "
                     f"{host.oom_score_adj}")
        return host.oom_score_adj
    return requested


def build_process(config: ContainerConfig, image: ImageConfig, rootfs: str, host: HostInfo,
                  options: SpecOptions, notes: list[str]) -> dict[str, Any]:
    """The spec's process object."""
    sc = config.security_context
    caps = capabilities(sc, host, options.default_capabilities, notes)
    process: dict[str, Any] = {
        "terminal": config.tty,
        "user": process_user(sc, image, rootfs),
        "args": process_args(config, image),
        "env": process_env(config, image),
        "cwd": config.working_dir or image.working_dir or "/",
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "noNewPrivileges": sc.no_new_privs,
        "oomScoreAdj": oom_score_adj(config.resources.oom_score_adj, host, options, notes),
    }
    profile = apparmor_profile(sc, host)
    if profile:
        process["apparmorProfile"] = profile
    return process


def apparmor_profile(sc: SecurityContext, host: HostInfo) -> str:
    """The AppArmor profile name, or "" when AppArmor is off, unconfined or privileged."""
    if not host.apparmor_enabled or sc.privileged:
        return ""
    kind, ref = sc.apparmor.profile_type, sc.apparmor.localhost_ref
    if kind in ("", seccomp.RUNTIME_DEFAULT):
        return APPARMOR_DEFAULT_PROFILE
    if kind == seccomp.LOCALHOST:
        if not ref:
            raise InvalidArgument("apparmor profile type Localhost needs a localhost_ref")
        return ref
    if kind == seccomp.UNCONFINED:
        return ""
    raise InvalidArgument(f"unknown apparmor profile type {kind!r}")


# ---------------------------------------------------------------------------- mounts


def default_mounts(pod: PodSandboxConfig, privileged: bool) -> list[dict[str, Any]]:
    """proc, /dev, devpts, shm, mqueue, sysfs and cgroup; sysfs/cgroup rw when privileged."""
    ro = [] if privileged else ["ro"]
    if pod.shm_path:
        shm = {"destination": "/dev/shm", "type": "bind", "source": pod.shm_path,
               "options": ["rbind", "rprivate", "nosuid", "noexec", "nodev"]}
    else:
        shm = {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}
    return [
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        shm,
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", *ro]},
        # runc mounts cgroup2 here on a unified host and the v1 hierarchies otherwise.
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", *ro]},
    ]


def pod_file_mounts(pod: PodSandboxConfig, readonly_rootfs: bool) -> list[dict[str, Any]]:
    """/etc/hosts, /etc/resolv.conf and /etc/hostname from the pod, where it made them."""
    ro = ["ro"] if readonly_rootfs else []
    files = (("/etc/hosts", pod.hosts_path), ("/etc/resolv.conf", pod.resolv_path),
             ("/etc/hostname", pod.hostname_path))
    return [{"destination": dest, "type": "bind", "source": src,
             "options": ["bind", "rprivate", "nosuid", "nodev", "noexec", *ro]}
            for dest, src in files if src]


def cri_mount(m: Mount, rro_supported: bool) -> dict[str, Any]:
    """One CRI mount as a bind mount with its propagation and read-only options."""
    if not m.container_path.startswith("/"):
        raise InvalidArgument(f"mount {m.container_path!r}: container_path must be absolute")
    if m.propagation not in PROPAGATION:
        raise InvalidArgument(f"mount {m.container_path}: unknown propagation {m.propagation}")
    options = ["rbind", PROPAGATION[m.propagation], "ro" if m.readonly else "rw"]
    if m.recursive_read_only:
        if not m.readonly or m.propagation != "PROPAGATION_PRIVATE":
            raise InvalidArgument(f"mount {m.container_path}: recursive_read_only needs "
                                  "readonly and PROPAGATION_PRIVATE")
        if not rro_supported:
            raise InvalidArgument(f"mount {m.container_path}: recursive read-only mounts are "
                                  "not supported by this runtime")
        options.append("rro")
    return {"destination": m.container_path, "type": "bind", "source": m.host_path,
            "options": options}


def build_mounts(config: ContainerConfig, pod: PodSandboxConfig,
                 rro_supported: bool) -> list[dict[str, Any]]:
    """Defaults and pod files, overridden by CRI mounts at the same destination."""
    sc = config.security_context
    user = [cri_mount(m, rro_supported) for m in config.mounts]
    taken = {m["destination"] for m in user}
    base = [*default_mounts(pod, sc.privileged), *pod_file_mounts(pod, sc.readonly_rootfs)]
    kept = [m for m in base if m["destination"] not in taken]
    # Parents before children, so a mount is not hidden by one of its ancestors.
    return kept + sorted(user, key=lambda m: m["destination"].rstrip("/").count("/"))


def rootfs_propagation(mounts: tuple[Mount, ...]) -> str:
    """rshared when any mount is bidirectional, rslave for host-to-container, else ""."""
    kinds = {m.propagation for m in mounts}
    if "PROPAGATION_BIDIRECTIONAL" in kinds:
        return "rshared"
    return "rslave" if "PROPAGATION_HOST_TO_CONTAINER" in kinds else ""


# ---------------------------------------------------------------------------- linux


def namespaces(pod: PodSandboxConfig, opts: NamespaceOption) -> list[dict[str, str]]:
    """pid/ipc/uts/mount/network/cgroup: joined by path, new, or (NODE) left out."""
    if TARGET in (opts.network, opts.pid, opts.ipc):
        raise InvalidArgument("namespace mode TARGET is not supported")
    modes = {"network": opts.network, "ipc": opts.ipc, "pid": opts.pid,
             "uts": NODE if opts.network == NODE else POD,  # host network shares host UTS
             "mount": CONTAINER, "cgroup": CONTAINER}
    result = []
    for kind in ("pid", "network", "ipc", "uts", "mount", "cgroup"):
        mode = modes[kind]
        if mode == NODE:
            continue
        path = pod.namespace_paths.get(kind) if mode == POD else None
        result.append({"type": kind, "path": path} if path else {"type": kind})
    return result


def devices(config: ContainerConfig,
            stat_fn: Callable[[str], os.stat_result]) -> tuple[list[dict], list[dict]]:
    """linux.devices and the matching device-cgroup allow rules for CRI devices."""
    nodes, rules = [], []
    for d in config.devices:
        if not d.permissions or set(d.permissions) - set("rwm"):
            raise InvalidArgument(f"device {d.host_path}: bad permissions {d.permissions!r}")
        try:
            st = stat_fn(d.host_path)
        except OSError as exc:
            raise InvalidArgument(f"device {d.host_path}: {exc.strerror}") from exc
        if stat.S_ISCHR(st.st_mode):
            kind = "c"
        elif stat.S_ISBLK(st.st_mode):
            kind = "b"
        else:
            raise InvalidArgument(f"device {d.host_path}: not a device node")
        major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
        nodes.append({"path": d.container_path, "type": kind, "major": major, "minor": minor,
                      "fileMode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid})
        rules.append({"allow": True, "type": kind, "major": major, "minor": minor,
                      "access": d.permissions})
    return nodes, rules


def resources(r: Resources, pids_limit: int) -> dict[str, Any]:
    """linux.resources from CRI LinuxContainerResources; unset (zero) fields are left out."""
    cpu = {k: v for k, v in (("shares", r.cpu_shares), ("quota", r.cpu_quota),
                             ("period", r.cpu_period), ("cpus", r.cpuset_cpus),
                             ("mems", r.cpuset_mems)) if v}
    out: dict[str, Any] = {}
    if cpu:
        out["cpu"] = cpu
    if r.memory_limit_in_bytes:
        # swap is memory+swap in cgroup v1 terms: equal to the limit means no swap.
        swap = r.memory_swap_limit_in_bytes or r.memory_limit_in_bytes
        out["memory"] = {"limit": r.memory_limit_in_bytes, "swap": swap}
    if r.hugepage_limits:
        out["hugepageLimits"] = [{"pageSize": h.page_size, "limit": h.limit}
                                 for h in r.hugepage_limits]
    if pids_limit:
        out["pids"] = {"limit": pids_limit}
    return out


def cgroups_path(container_id: str, parent: str, options: SpecOptions) -> str:
    """cgroupfs "/parent/ocid-<id>" or systemd "slice:ocid:<id>"."""
    parent = parent or options.default_cgroup_parent
    if options.cgroup_manager == "systemd":
        parent = parent if parent != "/ocid" else "system.slice"
        if not parent.endswith(".slice") or "/" in parent:
            raise InvalidArgument(f"cgroup parent {parent!r} is not a systemd slice")
        return f"{parent}:ocid:{container_id}"
    if options.cgroup_manager != "cgroupfs":
        raise InvalidArgument(f"unknown cgroup manager {options.cgroup_manager!r}")
    if parent.endswith(".slice"):
        raise InvalidArgument(f"cgroup parent {parent!r} is a systemd slice; "
                              "the cgroupfs manager needs a path")
    return f"/{parent.strip('/')}/ocid-{container_id}".replace("//", "/")


def sysctls(values: dict[str, str], opts: NamespaceOption) -> dict[str, str]:
    """Namespaced sysctls only: net.* without host network, IPC ones without host IPC."""
    out = {}
    for raw, value in values.items():
        name = raw
        if "/" in raw and ("." not in raw or raw.index("/") < raw.index(".")):
            name = raw.translate(str.maketrans("/.", "./"))  # kubelet's slash form
        if not _SYSCTL_NAME.match(name):
            raise InvalidArgument(f"sysctl {raw!r}: invalid name")
        if name.startswith("net."):
            if opts.network == NODE:
                raise InvalidArgument(f"sysctl {name}: not allowed with host network")
        elif name in _IPC_SYSCTLS or name.startswith("fs.mqueue."):
            if opts.ipc == NODE:
                raise InvalidArgument(f"sysctl {name}: not allowed with host IPC")
        else:
            raise InvalidArgument(f"sysctl {name}: not namespaced")
        out[name] = value
    return out


def build_linux(cid: str, config: ContainerConfig, pod: PodSandboxConfig, caps: list[str],
                host: HostInfo, options: SpecOptions) -> dict[str, Any]:
    """The spec's linux object."""
    sc = config.security_context
    nodes, rules = devices(config, options.stat)
    res = resources(config.resources, options.pids_limit)
    # Deny every device, then allow the requested ones; runc adds its own default set.
    res["devices"] = [{"allow": True, "access": "rwm"}] if sc.privileged else \
        [{"allow": False, "access": "rwm"}, *rules]
    linux: dict[str, Any] = {
        "namespaces": namespaces(pod, sc.namespace_options),
        "resources": res,
        "cgroupsPath": cgroups_path(cid, pod.cgroup_parent, options),
        "maskedPaths": [] if sc.privileged else
        list(DEFAULT_MASKED_PATHS if sc.masked_paths is None else sc.masked_paths),
        "readonlyPaths": [] if sc.privileged else
        list(DEFAULT_READONLY_PATHS if sc.readonly_paths is None else sc.readonly_paths),
    }
    if nodes:
        linux["devices"] = nodes
    if pod.sysctls:
        linux["sysctl"] = sysctls(pod.sysctls, sc.namespace_options)
    propagation = rootfs_propagation(config.mounts)
    if propagation:
        linux["rootfsPropagation"] = propagation
    # Privileged containers always run unconfined (Kubernetes' documented rule).
    if not sc.privileged:
        profile = seccomp.seccomp_for(sc.seccomp.profile_type, sc.seccomp.localhost_ref,
                                      frozenset(caps), host.arch)
        if profile is not None:
            linux["seccomp"] = profile
    return linux


# ---------------------------------------------------------------------------- the spec


def build_container_spec(container_id: str, config: ContainerConfig, pod: PodSandboxConfig,
                         image: ImageConfig, rootfs: str, host: HostInfo,
                         options: SpecOptions = SpecOptions()
                         ) -> tuple[dict[str, Any], list[str]]:
    """The validated config.json for a container, and notes on what was adjusted."""
    notes: list[str] = []
    process = build_process(config, image, rootfs, host, options, notes)
    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": rootfs, "readonly": config.security_context.readonly_rootfs},
        "mounts": build_mounts(config, pod, options.rro_supported),
        "annotations": dict(config.annotations),
        "linux": build_linux(container_id, config, pod, process["capabilities"]["bounding"],
                             host, options),
    }
    # Setting a hostname needs a UTS namespace of our own; with host network there is none.
    if pod.hostname and config.security_context.namespace_options.network != NODE:
        spec["hostname"] = pod.hostname
    validate(spec)
    return spec, notes


@functools.cache
def _validator() -> Any:
    """A Draft 4 validator for config-schema.json with its sibling files registered.

    jsonschema is imported here, at the first spec: ~8 MB a daemon that runs no container
    never needs.
    """
    import jsonschema
    import referencing
    from referencing.jsonschema import DRAFT4

    folder = pkg_resources.files("ocid.oci").joinpath("data/schema")
    registry: referencing.Registry = referencing.Registry()
    for entry in folder.iterdir():
        if entry.name.endswith(".json"):
            contents = json.loads(entry.read_text())
            registry = registry.with_resource(
                entry.name, DRAFT4.create_resource(contents))
    root = registry.contents("config-schema.json")
    return jsonschema.Draft4Validator(root, registry=registry)


def validate(spec: dict[str, Any]) -> None:
    """Check a spec against the runtime-spec schema; failure is InternalError naming where.

    The seccomp profile (hundreds of syscall rules, ~2/3 of the work) is the same for most
    containers: it is checked once per distinct profile, the rest of the spec every time.
    """
    linux = spec.get("linux")
    if isinstance(linux, dict) and "seccomp" in linux:
        _validate_seccomp(json.dumps(linux["seccomp"], sort_keys=True))
        spec = {**spec, "linux": {**linux, "seccomp": _CHECKED_SECCOMP}}
    _check(spec)


# Stands in for a profile already checked: the smallest valid one.
_CHECKED_SECCOMP = {"defaultAction": "SCMP_ACT_ALLOW"}


@functools.lru_cache(maxsize=64)
def _validate_seccomp(profile_json: str) -> None:
    """Check one seccomp profile, in a spec of its own (so errors name /linux/seccomp/...)."""
    _check({"ociVersion": OCI_VERSION, "linux": {"seccomp": json.loads(profile_json)}})


def _check(spec: dict[str, Any]) -> None:
    from jsonschema.exceptions import best_match

    error = best_match(_validator().iter_errors(spec))
    if error is not None:
        where = "/" + "/".join(str(p) for p in error.absolute_path)
        raise InternalError(f"generated OCI spec is invalid at {where}: {error.message}")


def build_sandbox_spec(pod_id: str, pod: PodSandboxConfig, pause_command: tuple[str, ...],
                       rootfs: str, host: HostInfo, options: SpecOptions = SpecOptions(),
                       security_context: SecurityContext = SecurityContext(),
                       mounts: tuple[Mount, ...] = (),
                       ) -> tuple[dict[str, Any], list[str]]:
    """The config.json of a pod's infra (pause) container, which creates the namespaces.

    ``mounts`` brings the pause executable in (it is bind-mounted from the host).
    """
    sc = replace(security_context, namespace_options=pod.namespace_options)
    # -998 as in the kubelet, so the infra outlives its containers under OOM; clamped above.
    config = ContainerConfig(name="POD", command=pause_command, security_context=sc,
                             mounts=mounts, resources=Resources(oom_score_adj=-998))
    # Only the network namespace (made by the CNI manager) exists beforehand.
    own = {k: v for k, v in pod.namespace_paths.items() if k == "network"}
    return build_container_spec(pod_id, config, replace(pod, namespace_paths=own), ImageConfig(),
                                rootfs, host, options)
