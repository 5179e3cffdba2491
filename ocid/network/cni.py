"""CNI networks: finding the configuration, and running its plugins for a pod (CNI 1.0).

``default_network`` picks the configuration list from ``network_dir``; ``CniManager`` keeps
it current and runs the list's plugins the way libcni does:

- ADD runs the plugins in order, each getting the previous one's result as ``prevResult``;
  DEL runs them in reverse, CHECK in order, both with the result ADD returned.
- Every plugin config gets the list's ``name`` and ``cniVersion``, and a ``runtimeConfig``
  holding only the capability arguments (``portMappings``,
  ``io.kubernetes.cri.pod-annotations``) that the plugin declares in ``capabilities``.
- ``CNI_ARGS`` is ``IgnoreUnknown=1;K8S_POD_NAMESPACE=…;K8S_POD_NAME=…;
  K8S_POD_INFRA_CONTAINER_ID=…;K8S_POD_UID=…`` as cri-o's ocicni and containerd's go-cni send.

What ADD returned is cached in ``<cache_dir>/<pod id>.json`` with the exact configuration list
and arguments used, so DEL after a restart runs the same plugins with the same config even when
``network_dir`` has changed since (libcni keeps a similar cache in /var/lib/cni/results).
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import logging
import os
import re
import socket
import struct
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ocid.errors import FailedPrecondition, InternalError, InvalidArgument, NotFound, Unavailable
from ocid.network import netns

if TYPE_CHECKING:  # only annotations: health.py imports this module, keep it light
    from ocid.lifecycle.podspec import PortMapping

log = logging.getLogger(__name__)

CONFIG_SUFFIXES = (".conflist", ".conf", ".json")
PLUGIN_TIMEOUT = 60.0  # seconds one plugin invocation may take
CACHE_KIND = "ocidCniCacheV1"
PORT_MAPPINGS = "portMappings"
POD_ANNOTATIONS = "io.kubernetes.cri.pod-annotations"
DEFAULT_IFNAME = "eth0"
DEFAULT_BRIDGE = "cni0"  # the bridge plugin's bridge when its config names none
# Plugins such as portmap run iptables: make sure they find it even if ocid's PATH is bare.
FALLBACK_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# libcni's utils.ValidateContainerID / ValidateInterfaceName, close enough.
_ID_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
SYS_CLASS_NET = "/sys/class/net"
SIOCSIFHWADDR = 0x8924
ARPHRD_ETHER = 1
_IFREQ_HWADDR = "16sH14s8x"  # struct ifreq: name, then a sockaddr in a 24-byte union


class NetworkNotReady(Unavailable):
    """No usable CNI network: the reason says why (Status reports it as NetworkReady false)."""


class CniError(InternalError):
    """A CNI plugin failed; the message names pod, network, plugin and the plugin's own error."""

    def __init__(self, message: str, *, network: str = "", plugin: str = "", command: str = "",
                 code: int | None = None, msg: str = "", details: str = ""):
        super().__init__(message)
        self.network = network
        self.plugin = plugin
        self.command = command
        self.code = code
        self.msg = msg
        self.details = details


@dataclass(frozen=True)
class CniNetwork:
    """A CNI network configuration list as loaded from one file."""

    name: str
    path: str
    cni_version: str
    plugins: tuple[dict[str, Any], ...]
    disable_check: bool = False

    def config_list(self) -> dict[str, Any]:
        """The configuration list as JSON data (what the cache keeps and DEL runs with)."""
        data: dict[str, Any] = {"cniVersion": self.cni_version, "name": self.name,
                                "plugins": [dict(p) for p in self.plugins]}
        if self.disable_check:
            data["disableCheck"] = True
        return data


def parse_network_data(data: Any, path: str) -> CniNetwork:
    """A CniNetwork from the JSON data of a ``.conflist`` or a single-plugin ``.conf``.

    Raises ValueError with a message naming what is wrong.
    """
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    if "plugins" in data:
        plugins = data["plugins"]
        if not isinstance(plugins, list) or not plugins:
            raise ValueError("'plugins' must be a non-empty list")
    elif path.endswith(".conflist"):
        raise ValueError("a .conflist needs a 'plugins' list")
    else:
        plugins = [data]  # a single-plugin .conf is a list of one
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("missing 'name'")
    for index, plugin in enumerate(plugins):
        if not isinstance(plugin, dict) or not isinstance(plugin.get("type"), str):
            raise ValueError(f"plugin {index} has no 'type'")
        capabilities = plugin.get("capabilities", {})
        if not isinstance(capabilities, dict):
            raise ValueError(f"plugin {index} ({plugin['type']}): 'capabilities' must be an object")
    version = data.get("cniVersion", "")
    if not isinstance(version, str) or (version and _version(version) is None):
        raise ValueError(f"invalid cniVersion {version!r}")
    return CniNetwork(name=name, path=path, cni_version=version, plugins=tuple(plugins),
                      disable_check=data.get("disableCheck") is True)


def parse_network_file(path: str) -> CniNetwork:
    """Parse one ``.conflist`` (or a single-plugin ``.conf``/``.json``) file.

    Raises ValueError with a message naming what is wrong.
    """
    with open(path, "rb") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"invalid JSON: {exc}") from exc
    return parse_network_data(data, path)


def find_plugin(plugin_type: str, plugin_dirs: list[str]) -> str | None:
    """The path of the plugin binary for ``plugin_type``, searched in ``plugin_dirs`` in order."""
    if not plugin_type or "/" in plugin_type or plugin_type in (".", ".."):
        return None
    for directory in plugin_dirs:
        candidate = os.path.join(directory, plugin_type)
        if os.access(candidate, os.X_OK) and os.path.isfile(candidate):
            return candidate
    return None


def default_network(network_dir: str, plugin_dirs: list[str], name: str = "") -> CniNetwork:
    """The default network: the lexically first valid configuration whose plugins all exist,
    or, when ``name`` is given, the first valid one of that name.

    Raises NetworkNotReady with the reason when there is none.
    """
    try:
        names = sorted(n for n in os.listdir(network_dir) if n.endswith(CONFIG_SUFFIXES))
    except FileNotFoundError:
        raise NetworkNotReady(f"CNI configuration directory {network_dir} does not exist") from None
    except OSError as exc:
        raise NetworkNotReady(f"cannot read CNI configuration directory {network_dir}: "
                              f"{exc.strerror}") from exc
    problems = []
    for file_name in names:
        path = os.path.join(network_dir, file_name)
        try:
            network = parse_network_file(path)
        except (OSError, ValueError) as exc:
            problems.append(f"{file_name}: {exc}")
            continue
        if name and network.name != name:
            continue
        missing = [p["type"] for p in network.plugins if not find_plugin(p["type"], plugin_dirs)]
        if missing:
            problems.append(f"{file_name}: plugin {', '.join(missing)} not found in "
                            f"{':'.join(plugin_dirs)}")
            continue
        return network
    detail = f" ({'; '.join(problems)})" if problems else ""
    if name:
        raise NetworkNotReady(f"no valid CNI network configuration named {name!r} in "
                              f"{network_dir}{detail}")
    raise NetworkNotReady(f"no valid CNI network configuration in {network_dir}{detail}")


@dataclass(frozen=True, slots=True)
class PodNetwork:
    """What setting up a pod's network needs: its IDs, netns and published ports."""

    pod_id: str
    netns_path: str
    name: str
    namespace: str
    uid: str
    port_mappings: tuple[PortMapping, ...] = ()
    annotations: dict[str, str] = field(default_factory=dict)
    ifname: str = DEFAULT_IFNAME


@dataclass(frozen=True, slots=True)
class CniInterface:
    """One interface of a CNI result; ``sandbox`` is the netns path for the pod's side."""

    name: str
    mac: str = ""
    sandbox: str = ""


@dataclass(frozen=True, slots=True)
class NetworkStatus:
    """A pod's network as ADD left it: its IPs (IPv4 first), interfaces, host bridge, result."""

    ips: tuple[str, ...]
    interfaces: tuple[CniInterface, ...] = ()
    bridge: str = ""  # the host bridge the pod hangs off, when the bridge plugin made one
    result: dict[str, Any] = field(default_factory=dict)
    network: str = ""

    @classmethod
    def from_result(cls, result: dict[str, Any], config_list: dict[str, Any],
                    ifname: str = DEFAULT_IFNAME) -> NetworkStatus:
        """Read a CNI result of any version (1.0.0, 0.4.0, 0.3.x; 0.2.0/0.1.0 ``ip4``/``ip6``)."""
        interfaces = tuple(
            CniInterface(name=str(i.get("name", "")), mac=str(i.get("mac", "")),
                         sandbox=str(i.get("sandbox", "")))
            for i in result.get("interfaces") or () if isinstance(i, dict))
        plugins = [p for p in config_list.get("plugins", ()) if isinstance(p, dict)]
        bridges = {p.get("bridge") or DEFAULT_BRIDGE for p in plugins if p.get("type") == "bridge"}
        bridges |= {p["bridge"] for p in plugins if isinstance(p.get("bridge"), str)}
        bridge = next((i.name for i in interfaces if not i.sandbox and i.name in bridges), "")
        return cls(ips=_pod_ips(result, interfaces, ifname), interfaces=interfaces, bridge=bridge,
                   result=result, network=str(config_list.get("name", "")))


def _pod_ips(result: dict[str, Any], interfaces: tuple[CniInterface, ...],
             ifname: str) -> tuple[str, ...]:
    """The addresses of the sandbox interface ``ifname`` (of any sandbox interface if the result
    names none so), IPv4 first, without prefix lengths, duplicates or loopback addresses."""
    named = {n for n, i in enumerate(interfaces) if i.sandbox and i.name == ifname}
    sandboxed = {n for n, i in enumerate(interfaces) if i.sandbox}
    addresses: list[str] = []
    for entry in result.get("ips") or ():
        if not isinstance(entry, dict) or not isinstance(entry.get("address"), str):
            continue
        index = entry.get("interface")
        if named:
            if index not in named:
                continue
        elif index is not None and index not in sandboxed:
            continue  # an address of a host-side interface (the bridge's gateway)
        addresses.append(entry["address"])
    for key in ("ip4", "ip6"):  # results of cniVersion 0.1.0 and 0.2.0
        entry = result.get(key)
        if isinstance(entry, dict) and isinstance(entry.get("ip"), str):
            addresses.append(entry["ip"])
    parsed: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for address in addresses:
        try:
            ip = ipaddress.ip_interface(address).ip
        except ValueError:
            log.warning("ignoring the invalid address %r in a CNI result", address)
            continue
        if not ip.is_loopback and ip not in parsed:
            parsed.append(ip)
    parsed.sort(key=lambda ip: ip.version)  # stable: keeps the plugin's order within a family
    return tuple(str(ip) for ip in parsed)


def _version(text: str) -> tuple[int, int, int] | None:
    """``"0.4.0"`` → (0, 4, 0); ``""`` is 0.1.0 as plugins read it; None when invalid."""
    if not text:
        return (0, 1, 0)
    match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", text)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def _at_least(version: str, minimum: tuple[int, int, int]) -> bool:
    parsed = _version(version)
    return parsed is not None and parsed >= minimum


def capability_args(req: PodNetwork) -> dict[str, Any]:
    """The runtimeConfig arguments ocid offers; each plugin gets those it declares."""
    args: dict[str, Any] = {}
    mappings = [{"hostPort": m.host_port, "containerPort": m.container_port,
                 "protocol": (m.protocol or "TCP").lower(), "hostIP": m.host_ip}
                for m in req.port_mappings if m.host_port > 0]
    if mappings:  # a mapping without a host port publishes nothing (as in cri-o)
        args[PORT_MAPPINGS] = mappings
    args[POD_ANNOTATIONS] = dict(req.annotations)
    return args


def cni_args(req: PodNetwork) -> list[tuple[str, str]]:
    """CNI_ARGS as (key, value) pairs, in the order cri-o's ocicni sends them."""
    return [("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", req.namespace),
            ("K8S_POD_NAME", req.name), ("K8S_POD_INFRA_CONTAINER_ID", req.pod_id),
            ("K8S_POD_UID", req.uid)]


@dataclass
class _Attachment:
    """A pod's attachment to a network: what the cache file holds."""

    pod_id: str
    netns: str
    ifname: str
    config: dict[str, Any]  # the network configuration list
    args: list[tuple[str, str]]
    capability_args: dict[str, Any]
    result: dict[str, Any] | None = None  # None while ADD runs (or if ocid died during it)

    @property
    def network(self) -> str:
        return str(self.config.get("name", ""))

    @property
    def cni_version(self) -> str:
        return str(self.config.get("cniVersion", ""))

    @property
    def plugins(self) -> list[dict[str, Any]]:
        return list(self.config.get("plugins", ()))

    def to_json(self) -> dict[str, Any]:
        return {"kind": CACHE_KIND, "podId": self.pod_id, "netns": self.netns,
                "ifName": self.ifname, "networkName": self.network, "config": self.config,
                "cniArgs": [list(a) for a in self.args], "capabilityArgs": self.capability_args,
                "result": self.result}

    @classmethod
    def from_json(cls, data: Any) -> _Attachment:
        if not isinstance(data, dict) or data.get("kind") != CACHE_KIND:
            raise ValueError("not an ocid CNI cache file")
        config = data["config"]
        parse_network_data(config, "cache.conflist")  # raises ValueError if unusable
        result = data.get("result")
        if result is not None and not isinstance(result, dict):
            raise ValueError("'result' is not an object")
        return cls(pod_id=str(data["podId"]), netns=str(data.get("netns", "")),
                   ifname=str(data.get("ifName") or DEFAULT_IFNAME), config=config,
                   args=[(str(k), str(v)) for k, v in data.get("cniArgs", ())],
                   capability_args=dict(data.get("capabilityArgs") or {}), result=result)


class CniManager:
    """Runs the default CNI network's plugins for pods, and keeps what they did in a cache."""

    def __init__(self, network_dir: str, plugin_dirs: list[str], cache_dir: str,
                 default_name: str = "", *, timeout: float = PLUGIN_TIMEOUT):
        self.network_dir = network_dir
        self.plugin_dirs = list(plugin_dirs)
        self.cache_dir = cache_dir
        self.default_name = default_name
        self.timeout = timeout
        self._lock = threading.Lock()
        self._stamp: object = None
        self._network: CniNetwork | None = None
        self._reason = "CNI configuration not loaded yet"

    # -- the configuration -------------------------------------------------------------------

    def network(self) -> CniNetwork:
        """The current default network, reloaded when the configuration files (or the plugin
        directories) changed since the last call. Raises NetworkNotReady with the reason."""
        stamp = self._current_stamp()  # taken before loading: a change meanwhile reloads again
        with self._lock:
            if stamp != self._stamp:
                try:
                    network: CniNetwork | None = default_network(
                        self.network_dir, self.plugin_dirs, self.default_name)
                    reason = ""
                except NetworkNotReady as exc:
                    network, reason = None, str(exc)
                self._log_change(network, reason)
                self._stamp, self._network, self._reason = stamp, network, reason
            if self._network is None:
                raise NetworkNotReady(self._reason)
            return self._network

    def _log_change(self, network: CniNetwork | None, reason: str) -> None:
        if network is not None and network != self._network:
            log.info("CNI network %r from %s (cniVersion %s, plugins %s)", network.name,
                     network.path, network.cni_version,
                     ", ".join(p["type"] for p in network.plugins))
        elif network is None and reason != self._reason:
            log.warning("CNI network not ready: %s", reason)

    def _current_stamp(self) -> object:
        """What identifies the state of the configuration: each config file's name, inode,
        mtime and size, plus each plugin directory's mtime (a plugin installed later)."""
        files: list[tuple[Any, ...]] = []
        try:
            with os.scandir(self.network_dir) as entries:
                for entry in entries:
                    if not entry.name.endswith(CONFIG_SUFFIXES):
                        continue
                    try:
                        st = os.stat(entry.path)
                        files.append((entry.name, st.st_ino, st.st_mtime_ns, st.st_size))
                    except OSError as exc:
                        files.append((entry.name, exc.errno))
        except OSError as exc:
            files.append(("", exc.errno))
        dirs: list[tuple[Any, ...]] = []
        for directory in self.plugin_dirs:
            try:
                st = os.stat(directory)
                dirs.append((directory, st.st_ino, st.st_mtime_ns))
            except OSError as exc:
                dirs.append((directory, exc.errno))
        return (tuple(sorted(files)), tuple(dirs))

    # -- pods ---------------------------------------------------------------------------------

    def setup(self, req: PodNetwork) -> NetworkStatus:
        """ADD the pod to the default network; on failure DEL it again and raise CniError.

        Raises NetworkNotReady when there is no usable network.
        """
        _check_ids(req.pod_id, req.ifname)
        network = self.network()
        attachment = _Attachment(pod_id=req.pod_id, netns=req.netns_path, ifname=req.ifname,
                                 config=network.config_list(), args=cni_args(req),
                                 capability_args=capability_args(req))
        # Written before the first plugin runs, so a crash during ADD still leaves what
        # teardown needs to DEL what was done.
        self._write_cache(attachment)
        _repair_portless_bridges(attachment.plugins)
        result: dict[str, Any] | None = None
        try:
            for plugin in attachment.plugins:
                result = self._run("ADD", attachment, plugin, req.netns_path, result)
            attachment.result = result
            self._write_cache(attachment)
        except Exception as exc:
            log.warning("pod %s: ADD to CNI network %r failed, deleting it again: %s",
                        req.pod_id, network.name, exc)
            errors = self._del_all(attachment, req.netns_path, None)
            if errors:
                log.warning("pod %s: DEL after a failed ADD failed too (kept %s for a later "
                            "teardown): %s", req.pod_id, self._cache_path(req.pod_id),
                            "; ".join(str(e) for e in errors))
            else:
                self._remove_cache(req.pod_id)
            raise
        status = NetworkStatus.from_result(result or {}, attachment.config, req.ifname)
        log.info("pod %s: attached to CNI network %r with IPs %s", req.pod_id, network.name,
                 ", ".join(status.ips) or "(none)")
        return status

    def teardown(self, pod_id: str, netns_path: str) -> None:
        """DEL the pod from the network it was added to (from the cache); idempotent.

        ``netns_path`` "" means the one ADD was given. Plugin errors are ignored (logged) when
        the netns is already gone; otherwise the first is raised after every plugin had its
        turn, and the cache stays for a retry.
        """
        _check_ids(pod_id)
        attachment = self._read_cache(pod_id)
        if attachment is None:
            log.debug("pod %s: no CNI attachment to tear down", pod_id)
            return
        netns_path = netns_path or attachment.netns
        present = bool(netns_path) and netns.exists(netns_path)
        # libcni hands DEL the cached result from cniVersion 0.4.0 on.
        prev = attachment.result if _at_least(attachment.cni_version, (0, 4, 0)) else None
        errors = self._del_all(attachment, netns_path if present else "", prev)
        if errors and present:
            raise errors[0]
        for error in errors:
            log.warning("pod %s: ignoring a DEL error, the netns %s is gone: %s", pod_id,
                        netns_path or "(none)", error)
        self._remove_cache(pod_id)
        log.info("pod %s: detached from CNI network %r", pod_id, attachment.network)

    def check(self, pod_id: str, netns_path: str) -> None:
        """CHECK that the pod's network is still as ADD left it; raises CniError if not.

        ``netns_path`` "" means the one ADD was given. Networks older than cniVersion 0.4.0
        (which has no CHECK) or with ``disableCheck`` pass.
        """
        _check_ids(pod_id)
        attachment = self._read_cache(pod_id)
        if attachment is None:
            raise NotFound(f"pod {pod_id} is attached to no CNI network")
        if attachment.result is None:
            raise FailedPrecondition(f"pod {pod_id}: ADD to CNI network {attachment.network!r} "
                                     "did not complete")
        if attachment.config.get("disableCheck") is True:
            return
        if not _at_least(attachment.cni_version, (0, 4, 0)):
            log.debug("pod %s: CNI network %r has cniVersion %s, which has no CHECK", pod_id,
                      attachment.network, attachment.cni_version or "(none)")
            return
        for plugin in attachment.plugins:
            self._run("CHECK", attachment, plugin, netns_path or attachment.netns,
                      attachment.result)

    def cached(self, pod_id: str) -> NetworkStatus | None:
        """The pod's network as ADD left it (e.g. its IPs after a restart); None if none."""
        _check_ids(pod_id)
        attachment = self._read_cache(pod_id)
        if attachment is None or attachment.result is None:
            return None
        return NetworkStatus.from_result(attachment.result, attachment.config, attachment.ifname)

    def cached_pods(self) -> list[str]:
        """The IDs of the pods with a cache entry (attached, or an ADD cut short)."""
        try:
            names = os.listdir(self.cache_dir)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise InternalError(f"cannot list the CNI cache {self.cache_dir}: {exc}") from exc
        return sorted(n[:-5] for n in names if n.endswith(".json") and _ID_RE.match(n[:-5]))

    # -- running plugins ----------------------------------------------------------------------

    def _del_all(self, attachment: _Attachment, netns_path: str,
                 prev: dict[str, Any] | None) -> list[CniError]:
        """DEL every plugin in reverse order, going on after a failure; the errors."""
        errors = []
        for plugin in reversed(attachment.plugins):
            try:
                self._run("DEL", attachment, plugin, netns_path, prev)
            except CniError as exc:
                errors.append(exc)
        return errors

    def _run(self, command: str, attachment: _Attachment, plugin: dict[str, Any],
             netns_path: str, prev: dict[str, Any] | None) -> dict[str, Any] | None:
        """Run one plugin; its result for ADD. Raises CniError naming the plugin's error."""
        plugin_type = str(plugin.get("type", ""))
        where = (f"CNI {command} of pod {attachment.pod_id} on network "
                 f"{attachment.network!r}: plugin {plugin_type}")

        def fail(text: str, **extra: Any) -> CniError:
            return CniError(f"{where}: {text}", network=attachment.network, plugin=plugin_type,
                            command=command, **extra)

        path = find_plugin(plugin_type, self.plugin_dirs)
        if path is None:
            raise fail(f"not found in {':'.join(self.plugin_dirs)}")
        stdin = json.dumps(_plugin_config(attachment, plugin, prev)).encode()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        env.setdefault("PATH", FALLBACK_PATH)
        env.update(CNI_COMMAND=command, CNI_CONTAINERID=attachment.pod_id, CNI_NETNS=netns_path,
                   CNI_IFNAME=attachment.ifname,
                   CNI_ARGS=";".join(f"{k}={v}" for k, v in attachment.args),
                   CNI_PATH=":".join(self.plugin_dirs))
        log.debug("%s: running %s", where, path)
        try:
            proc = subprocess.run([path], input=stdin, capture_output=True, env=env, cwd="/",
                                  timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise fail(f"timed out after {self.timeout:g}s") from exc
        except OSError as exc:
            raise fail(f"cannot run {path}: {exc}") from exc
        stderr = proc.stderr.decode(errors="replace").strip()
        if stderr:
            log.debug("%s: stderr: %s", where, stderr)
        if proc.returncode != 0:
            raise _plugin_error(fail, proc.returncode, proc.stdout, stderr)
        if command != "ADD":
            return None
        try:
            result = json.loads(proc.stdout)
        except ValueError as exc:
            raise fail(f"invalid result {_excerpt(proc.stdout)}: {exc}") from exc
        if not isinstance(result, dict):
            raise fail(f"invalid result {_excerpt(proc.stdout)}: not a JSON object")
        return result

    # -- the cache ----------------------------------------------------------------------------

    def _cache_path(self, pod_id: str) -> str:
        return os.path.join(self.cache_dir, f"{pod_id}.json")

    def _write_cache(self, attachment: _Attachment) -> None:
        """Replace the pod's cache file atomically (a temporary file, fsync, rename)."""
        path = self._cache_path(attachment.pod_id)
        data = json.dumps(attachment.to_json(), indent=1).encode()
        tmp = ""
        try:
            os.makedirs(self.cache_dir, mode=0o700, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{attachment.pod_id}.", dir=self.cache_dir)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            tmp = ""
            dir_fd = os.open(self.cache_dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise InternalError(f"pod {attachment.pod_id}: cannot write the CNI cache "
                                f"{path}: {exc}") from exc
        finally:
            if tmp:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass

    def _read_cache(self, pod_id: str) -> _Attachment | None:
        """The pod's cached attachment; None if there is none, or it is unreadable (logged)."""
        path = self._cache_path(pod_id)
        try:
            with open(path, "rb") as f:
                return _Attachment.from_json(json.load(f))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("pod %s: ignoring the unusable CNI cache %s: %s", pod_id, path, exc)
            return None

    def _remove_cache(self, pod_id: str) -> None:
        try:
            os.unlink(self._cache_path(pod_id))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise InternalError(f"pod {pod_id}: cannot remove the CNI cache: {exc}") from exc


def _repair_portless_bridges(plugins: list[dict[str, Any]]) -> None:
    """Give a MAC back to a bridge the ``bridge`` plugin would otherwise fail on.

    The kernel zeroes the MAC of a bridge whose last port left unless the MAC was set
    explicitly, and the bridge plugin (up to at least 1.1.1) pins the MAC it read before adding
    the new port, so it fails with "could not set bridge's mac: invalid argument". That happens
    when the first ADD on a new bridge fails: its DEL removes the only port. As the plugins'
    own fix (containernetworking/plugins#1265) does, set a random local MAC, as the kernel does
    for a new bridge; with no ports, nobody can hold the old one.
    """
    for plugin in plugins:
        if plugin.get("type") != "bridge":
            continue
        name = str(plugin.get("bridge") or DEFAULT_BRIDGE)
        base = os.path.join(SYS_CLASS_NET, name)
        try:
            with open(os.path.join(base, "address")) as f:
                zeroed = f.read().strip() == "00:00:00:00:00:00"
            if not zeroed or os.listdir(os.path.join(base, "brif")):
                continue
        except OSError:
            continue  # no such bridge (yet), or not a bridge
        mac = bytearray(os.urandom(6))
        mac[0] = (mac[0] & 0xFE) | 0x02  # unicast, locally administered
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                fcntl.ioctl(sock, SIOCSIFHWADDR, struct.pack(
                    _IFREQ_HWADDR, name.encode(), ARPHRD_ETHER, bytes(mac).ljust(14, b"\0")))
        except OSError as exc:
            log.warning("bridge %s has no ports and no MAC; setting one failed: %s", name, exc)
            continue
        log.info("bridge %s had no ports and no MAC: gave it %s", name,
                 ":".join(f"{b:02x}" for b in mac))


def _check_ids(pod_id: str, ifname: str = DEFAULT_IFNAME) -> None:
    if not _ID_RE.match(pod_id or ""):
        raise InvalidArgument(f"invalid pod ID {pod_id!r} for CNI")
    if not _ID_RE.match(ifname or "") or len(ifname) > 15:
        raise InvalidArgument(f"invalid interface name {ifname!r} for CNI")


def _plugin_config(attachment: _Attachment, plugin: dict[str, Any],
                   prev: dict[str, Any] | None) -> dict[str, Any]:
    """One plugin's stdin: its config with the list's name and version, the previous result
    and the capability arguments it declares (libcni's buildOneConfig)."""
    config = dict(plugin)
    config["name"] = attachment.network
    config["cniVersion"] = attachment.cni_version
    if prev is not None:
        config["prevResult"] = prev
    capabilities = plugin.get("capabilities") or {}
    runtime_config = {name: attachment.capability_args[name]
                      for name, enabled in capabilities.items()
                      if enabled is True and name in attachment.capability_args}
    if runtime_config:
        config["runtimeConfig"] = runtime_config
    return config


def _plugin_error(fail: Callable[..., CniError], returncode: int, stdout: bytes,
                  stderr: str) -> CniError:
    """The CniError for a plugin that exited non-zero, from its error JSON when it wrote one."""
    if not stdout.strip():
        text = f"failed (exit status {returncode})" + (f": {stderr}" if stderr else "")
        return fail(text)
    try:
        data = json.loads(stdout)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return fail(f"failed (exit status {returncode}) with output {_excerpt(stdout)}"
                    + (f": {stderr}" if stderr else ""))
    msg = str(data.get("msg", "") or "")
    details = str(data.get("details", "") or "")
    code = data.get("code")
    code = code if isinstance(code, int) else None
    text = msg or f"failed (exit status {returncode})"
    if details:
        text += f"; {details}"
    if code is not None:
        text += f" (CNI error code {code})"
    return fail(text, code=code, msg=msg, details=details)


def _excerpt(data: bytes, limit: int = 200) -> str:
    text = data.decode(errors="replace").strip()
    return repr(text if len(text) <= limit else text[:limit] + "…")
