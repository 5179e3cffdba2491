"""Making pods' hostPorts reachable from the node itself at 127.0.0.1.

The portmap plugin DNATs ``127.0.0.1:<hostPort>`` to the pod, but the kernel then drops the
packet: a 127/8 source may not be routed out of a non-loopback interface, and the pod could
not answer it anyway. kubenet's hostport code fixed this with two settings per bridge, which
``LocalhostRouting`` applies while at least one pod on that bridge publishes a hostPort:

- ``net.ipv4.conf.<bridge>.route_localnet=1``: 127/8 may be routed out of the bridge;
- ``iptables -t nat -A POSTROUTING -s 127.0.0.0/8 -o <bridge> -j MASQUERADE``: the pod sees
  (and answers) the bridge's address instead of 127.0.0.1.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import threading

from ocid.errors import InternalError, InvalidArgument

log = logging.getLogger(__name__)

RULE_COMMENT = "ocid hostport localhost"
LOCALHOST_NET = "127.0.0.0/8"
IPTABLES_TIMEOUT = 30.0
_SBIN_PATH = "/usr/sbin:/sbin:/usr/bin:/bin"
_IFNAME_RE = re.compile(r"^[^/\s:]{1,15}$")


def _default_iptables() -> str:
    return shutil.which("iptables", path=_SBIN_PATH) or "/usr/sbin/iptables"


class LocalhostRouting:
    """Per-bridge reference counts of pods that need 127.0.0.1:<hostPort>; thread-safe."""

    def __init__(self, iptables: str | None = None, proc_sys: str = "/proc/sys"):
        self.iptables = iptables or _default_iptables()
        self.proc_sys = proc_sys
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def acquire(self, bridge: str) -> None:
        """Count one more pod with hostPorts on ``bridge``; the first enables localhost routing.

        Raises InternalError (and counts nothing) when the sysctl or iptables fails.
        """
        _check_name(bridge)
        with self._lock:
            count = self._counts.get(bridge, 0)
            if count == 0:
                self._enable(bridge)
            self._counts[bridge] = count + 1

    def release(self, bridge: str) -> None:
        """Count one pod fewer on ``bridge``; the last one removes the rule and the sysctl.

        Releasing a bridge nobody holds does nothing. Raises InternalError if iptables fails
        (the count is dropped anyway: the next acquire adds the rule again if it is missing).
        """
        _check_name(bridge)
        with self._lock:
            count = self._counts.get(bridge, 0)
            if count <= 0:
                log.debug("localhost hostport routing: %s is not held", bridge)
                return
            if count > 1:
                self._counts[bridge] = count - 1
                return
            del self._counts[bridge]
            self._disable(bridge)

    def reset(self, counts: dict[str, int]) -> None:
        """Start over from ``counts`` (bridge → pods with hostPorts), at daemon start: enable
        the bridges in it, and remove the rules ocid left for bridges that no longer exist.

        A rule for an existing bridge that is not in ``counts`` stays: another ocid (a test
        daemon, say) may be using it. Failures are logged, not raised: a bridge that cannot be
        enabled is left out of the counts (its pods' releases then do nothing), so the daemon
        still starts.
        """
        wanted = {b: c for b, c in counts.items() if c > 0}
        for bridge in wanted:
            _check_name(bridge)
        with self._lock:
            try:
                stale = [b for b in self._rule_bridges()
                         if b not in wanted and not os.path.isdir(self._conf_dir(b))]
            except InternalError as exc:
                log.warning("localhost hostport routing: cannot list the rules: %s", exc)
                stale = []
            for bridge in stale:
                log.info("localhost hostport routing: removing the stale rule for %s", bridge)
                try:
                    self._disable(bridge)
                except InternalError as exc:
                    log.warning("localhost hostport routing: %s", exc)
            self._counts = {}
            for bridge, count in wanted.items():
                try:
                    self._enable(bridge)
                except InternalError as exc:
                    log.warning("localhost hostport routing: %s", exc)
                    continue
                self._counts[bridge] = count

    def counts(self) -> dict[str, int]:
        """A copy of the current counts."""
        with self._lock:
            return dict(self._counts)

    # -- the host's settings ----------------------------------------------------------------

    def _enable(self, bridge: str) -> None:
        previous = self._read_route_localnet(bridge)
        self._write_route_localnet(bridge, "1")
        try:
            if not self._rule_exists(bridge):
                self._iptables("-A", bridge)
        except InternalError:
            if previous is not None:
                self._write_route_localnet(bridge, previous, missing_ok=True)
            raise
        log.info("localhost hostport routing enabled on %s", bridge)

    def _disable(self, bridge: str) -> None:
        try:
            while self._rule_exists(bridge):  # in case someone added it twice
                self._iptables("-D", bridge)
        finally:
            # The bridge may be gone already (its last pod deleted it): nothing to restore.
            self._write_route_localnet(bridge, "0", missing_ok=True)
        log.info("localhost hostport routing disabled on %s", bridge)

    def _conf_dir(self, bridge: str) -> str:
        return os.path.join(self.proc_sys, "net", "ipv4", "conf", bridge)

    def _sysctl_path(self, bridge: str) -> str:
        return os.path.join(self._conf_dir(bridge), "route_localnet")

    def _read_route_localnet(self, bridge: str) -> str | None:
        try:
            with open(self._sysctl_path(bridge)) as f:
                return f.read().strip()
        except OSError:
            return None

    def _write_route_localnet(self, bridge: str, value: str, missing_ok: bool = False) -> None:
        path = self._sysctl_path(bridge)
        try:
            with open(path, "w") as f:
                f.write(value)
        except FileNotFoundError as exc:
            if missing_ok:
                return
            raise InternalError(f"bridge {bridge}: cannot set route_localnet, no such "
                                f"interface ({path})") from exc
        except OSError as exc:
            raise InternalError(f"bridge {bridge}: cannot set route_localnet={value}: "
                                f"{exc}") from exc

    def _rule(self, op: str, bridge: str) -> list[str]:
        return [self.iptables, "-w", "-t", "nat", op, "POSTROUTING", "-s", LOCALHOST_NET,
                "-o", bridge, "-m", "comment", "--comment", RULE_COMMENT, "-j", "MASQUERADE"]

    def _rule_exists(self, bridge: str) -> bool:
        proc = self._exec(self._rule("-C", bridge))
        if proc.returncode == 0:
            return True
        if proc.returncode == 1:  # "does a matching rule exist in that chain?" no
            return False
        raise InternalError(f"bridge {bridge}: iptables -C failed: {_output(proc)}")

    def _iptables(self, op: str, bridge: str) -> None:
        proc = self._exec(self._rule(op, bridge))
        if proc.returncode != 0:
            raise InternalError(f"bridge {bridge}: iptables {op} POSTROUTING failed: "
                                f"{_output(proc)}")

    def _rule_bridges(self) -> list[str]:
        """The bridges ocid's rules in nat POSTROUTING name."""
        proc = self._exec([self.iptables, "-w", "-t", "nat", "-S", "POSTROUTING"])
        if proc.returncode != 0:
            raise InternalError(f"iptables -S POSTROUTING failed: {_output(proc)}")
        bridges = []
        for line in proc.stdout.splitlines():
            if f'"{RULE_COMMENT}"' not in line:
                continue
            match = re.search(r"\s-o\s+(\S+)", line)
            if match and match[1] not in bridges:
                bridges.append(match[1])
        return bridges

    def _exec(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(argv, capture_output=True, text=True, check=False,
                                  timeout=IPTABLES_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise InternalError(f"cannot run {' '.join(argv[:6])} …: {exc}") from exc


def _check_name(bridge: str) -> None:
    if not _IFNAME_RE.match(bridge or "") or bridge in (".", ".."):
        raise InvalidArgument(f"invalid bridge name {bridge!r}")


def _output(proc: subprocess.CompletedProcess[str]) -> str:
    text = (proc.stderr or proc.stdout).strip()
    return text or f"exit status {proc.returncode}"
