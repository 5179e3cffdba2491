"""Files a pod sandbox gives its containers: resolv.conf, hosts, hostname and the /dev/shm tmpfs.

They live in the sandbox's run directory and are bind-mounted into every container of the pod,
as cri-o does in RunPodSandbox (server/sandbox_run_linux.go). Files are replaced atomically
(temp file + rename, mode 0644): a reader never sees half a file. A container that already
bind-mounted the old file keeps seeing it, so write them before the first container is created.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence

from ocid import sysmount
from ocid.errors import InternalError, InvalidArgument
from ocid.lifecycle.persist import atomic_write
from ocid.storage.overlay import unmount

FILE_MODE = 0o644
DEFAULT_SHM_SIZE = 64 * 1024 * 1024  # cri-o's DefaultShmSize
SHM_DIR_MODE = 0o700  # the mount point; the tmpfs root itself gets mode=1777

# The kubelet's managed hosts file (pkg/kubelet/kubelet_pods.go managedHostsHeader and
# localhost entries); the pod's own line needs its IP.
_HOSTS_LOCAL = (
    "# Kubernetes-managed hosts file.\n"
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "fe00::0\tip6-mcastprefix\n"
    "fe00::1\tip6-allnodes\n"
    "fe00::2\tip6-allrouters\n"
)


def _atomic_write(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` (mode 0644); no fsync: rebuilt after a reboot."""
    try:
        atomic_write(path, data, FILE_MODE, durable=False)
    except OSError as exc:
        raise InternalError(f"write {path}: {exc}") from exc


def _read_host_file(path: str) -> bytes:
    """The host's file (following symlinks, e.g. to systemd-resolved's); empty when absent."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""
    except OSError as exc:
        raise InternalError(f"read {path}: {exc}") from exc


def _check_words(kind: str, values: Sequence[str]) -> None:
    """Each search domain or option is one word: whitespace would forge resolv.conf lines."""
    for value in values:
        if not value or any(c.isspace() or c == "\0" for c in value):
            raise InvalidArgument(f"invalid DNS {kind} {value!r}")


def resolv_conf_content(servers: Sequence[str], searches: Sequence[str],
                        options: Sequence[str]) -> bytes:
    """resolv.conf text for a CRI DNSConfig, as cri-o builds it (docker's resolvconf.Build)."""
    for server in servers:
        try:
            ipaddress.ip_address(server)
        except ValueError as exc:
            raise InvalidArgument(f"invalid DNS server {server!r}: not an IP address") from exc
    _check_words("search domain", searches)
    _check_words("option", options)
    lines = []
    if searches and " ".join(searches).strip() != ".":  # "search ." means no search list
        lines.append("search " + " ".join(searches))
    lines += [f"nameserver {server}" for server in servers]
    if options:
        lines.append("options " + " ".join(options))
    return "".join(line + "\n" for line in lines).encode()


def write_resolv_conf(path: str, servers: Sequence[str], searches: Sequence[str],
                      options: Sequence[str], host_resolv: str = "/etc/resolv.conf") -> None:
    """Write the pod's resolv.conf from its DNSConfig; a copy of the host's when all are empty.

    Raises InvalidArgument for a nameserver that is not an IP address, or a search domain or
    option that is empty or holds whitespace. Limits (6 domains, 256 characters) are the
    kubelet's to enforce; what passes is written as given.
    """
    if not servers and not searches and not options:
        _atomic_write(path, _read_host_file(host_resolv))
        return
    _atomic_write(path, resolv_conf_content(servers, searches, options))


def hosts_content(hostname: str, pod_ips: Sequence[str] = ()) -> bytes:
    """The kubelet's managed hosts file: localhost entries, then ``<ip>\t<hostname>`` per pod IP."""
    _check_hostname(hostname)
    text = _HOSTS_LOCAL + "".join(f"{ip}\t{hostname}\n" for ip in pod_ips)
    return text.encode()


def write_hosts(path: str, hostname: str, host_network: bool, host_hosts: str = "/etc/hosts",
                *, pod_ips: Sequence[str] = ()) -> None:
    """Write the pod's /etc/hosts.

    Host network: a copy of the host's file (cri-o bind-mounts the host's own). Otherwise the
    kubelet's managed file: localhost entries, plus the hostname for each of ``pod_ips``. The IPs
    are known only once the CNI plugins ran; without them the hostname gets no line (as when
    the kubelet writes it before the pod has an IP), so call again with them to add it.
    """
    if host_network:
        _atomic_write(path, _read_host_file(host_hosts))
        return
    for ip in pod_ips:
        try:
            ipaddress.ip_address(ip)
        except ValueError as exc:
            raise InvalidArgument(f"invalid pod IP {ip!r}") from exc
    _atomic_write(path, hosts_content(hostname, pod_ips))


def _check_hostname(hostname: str) -> None:
    if not hostname or any(c.isspace() or c == "\0" for c in hostname):
        raise InvalidArgument(f"invalid hostname {hostname!r}")


def write_hostname(path: str, hostname: str) -> None:
    """Write the pod's /etc/hostname: the name and a newline, as cri-o does."""
    _check_hostname(hostname)
    _atomic_write(path, f"{hostname}\n".encode())


def mount_shm(path: str, size_bytes: int = DEFAULT_SHM_SIZE) -> None:
    """Mount the pod's /dev/shm: a tmpfs at ``path`` (made 0700), mode=1777, nosuid,nodev,noexec.

    A ``path`` that already is a mount point is left as it is (a retried RunPodSandbox).
    """
    if size_bytes <= 0:
        raise InvalidArgument(f"invalid shm size {size_bytes}: must be positive")
    try:
        os.makedirs(path, mode=SHM_DIR_MODE, exist_ok=True)
    except OSError as exc:
        raise InternalError(f"create shm directory {path}: {exc}") from exc
    if os.path.ismount(path):
        return
    # mount(8)'s "-o nosuid,nodev,noexec,mode=1777,size=N": the flag words are MS_* flags,
    # the rest is tmpfs's own option string.
    flags = sysmount.MS_NOSUID | sysmount.MS_NODEV | sysmount.MS_NOEXEC
    try:
        sysmount.mount("shm", path, "tmpfs", flags, f"mode=1777,size={size_bytes}")
    except OSError as exc:
        raise InternalError(f"mount shm at {path} failed: {exc.strerror}") from exc


def unmount_shm(path: str) -> None:
    """Unmount the pod's shm tmpfs; a path that is not mounted (or absent) is fine."""
    unmount(path, f"pod shm {path}")

