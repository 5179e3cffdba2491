"""The real CNI plugins (Debian's containernetworking-plugins in /usr/lib/cni) driven by
CniManager: bridge + host-local + portmap in network namespaces made for the test, and
LocalhostRouting for 127.0.0.1:<hostPort>.

Each test gets its own bridge (``oct<8 hex>``), 10.x.y.0/24 subnet and host-local data dir, and
puts back the host as it found it: namespaces, the bridge, its iptables rules and chains, and
net.ipv4.ip_forward (the bridge plugin turns it on for a gateway). Other tests may use CNI at
the same time: only what carries this test's network, bridge or subnet is removed.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ocid.lifecycle.podspec import PortMapping
from ocid.network import netns
from ocid.network.cni import CniError, CniManager, PodNetwork
from ocid.network.hostport import RULE_COMMENT, LocalhostRouting

PLUGIN_DIR = "/usr/lib/cni"
IPTABLES = "/usr/sbin/iptables"
IP6TABLES = "/usr/sbin/ip6tables"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and iptables need root"),
    pytest.mark.skipif(not all(os.access(f"{PLUGIN_DIR}/{p}", os.X_OK)
                               for p in ("bridge", "host-local", "portmap")),
                       reason="containernetworking-plugins is not installed"),
    pytest.mark.skipif(not os.access(IPTABLES, os.X_OK), reason="iptables is not installed"),
]

# A TCP server for a namespace: answers every connection with "hello from <name>" and the
# first line it received; prints "ready" once it listens.
SERVER = r"""
import socket, sys
name, port = sys.argv[1], int(sys.argv[2])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", port))
srv.listen(8)
print("ready", flush=True)
while True:
    conn, peer = srv.accept()
    with conn:
        conn.settimeout(5)
        try:
            data = conn.recv(100)
        except OSError:
            data = b""
        conn.sendall(b"hello from " + name.encode() + b" to " + peer[0].encode() + b": " + data)
"""

CLIENT = r"""
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as s:
    s.sendall(b"ping")
    s.shutdown(socket.SHUT_WR)
    print(s.recv(200).decode())
"""


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=check)


def rules(binary: str, table: str) -> list[str]:
    return run(binary, "-w", "-t", table, "-S").stdout.splitlines()


def remove_own_rules(binary: str, table: str, before: list[str], markers: list[str]) -> None:
    """Delete what appeared in ``table`` since ``before`` and belongs to this test: rules that
    mention one of ``markers`` (its network, bridge, subnet), and new chains holding such rules,
    with the jumps to them. Other tests' rules are left alone (they may run meanwhile), and so
    is portmap's shared scaffolding while any pod anywhere uses it."""
    lines = rules(binary, table)
    new = [line for line in lines if line not in before]
    chain_rules: dict[str, list[str]] = {}
    for line in lines:
        if line.startswith("-A "):
            chain_rules.setdefault(line.split()[1], []).append(line)
    mine = {line.split()[1] for line in new if line.startswith("-N ")
            if any(m in r for r in chain_rules.get(line.split()[1], []) for m in markers)}
    for line in new:
        words = shlex.split(line)
        if words[0] != "-A" or words[1] in mine:
            continue
        target = words[words.index("-j") + 1] if "-j" in words else ""
        if target in mine or any(m in line for m in markers):
            run(binary, "-w", "-t", table, "-D", *words[1:], check=False)
    for chain in mine:
        run(binary, "-w", "-t", table, "-F", chain, check=False)
    for chain in mine:
        run(binary, "-w", "-t", table, "-X", chain, check=False)
    scaffolding = ("CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-SETMARK", "CNI-HOSTPORT-MASQ")
    lines = rules(binary, table)
    if (f"-N {scaffolding[0]}" in new and f"-N {scaffolding[0]}" not in before
            and not any(line.startswith(("-N CNI-DN-", f"-A {scaffolding[0]} "))
                        for line in lines)):
        for line in lines:
            words = shlex.split(line)
            if words[0] == "-A" and words[1] not in scaffolding and "-j" in words \
                    and words[words.index("-j") + 1] in scaffolding:
                run(binary, "-w", "-t", table, "-D", *words[1:], check=False)
        for chain in scaffolding:
            run(binary, "-w", "-t", table, "-F", chain, check=False)
        for chain in scaffolding:
            run(binary, "-w", "-t", table, "-X", chain, check=False)


def mounts_at_or_under(root: str) -> list[str]:
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == root or point.startswith(root + "/"):
            found.append(point)
    return found


def link_exists(name: str, netns_path: str | None = None) -> bool:
    prefix = ["nsenter", f"--net={netns_path}"] if netns_path else []
    return subprocess.run([*prefix, "ip", "link", "show", name], capture_output=True,
                          check=False).returncode == 0


def localhost_rules(bridge: str) -> list[str]:
    """ocid's localhost masquerading rules for ``bridge`` (other tests may have their own)."""
    return [r for r in rules(IPTABLES, "nat") if RULE_COMMENT in r and f"-o {bridge} " in r]


def free_subnet() -> str:
    """A 10.x.y.0/24 no route of the host overlaps."""
    routes = run("ip", "-4", "route", "show", "table", "all").stdout
    while True:
        prefix = f"10.{random.randint(64, 250)}.{random.randint(0, 255)}."
        if prefix not in routes and ".".join(prefix.split(".")[:2]) + ".0.0/16" not in routes:
            return prefix + "0/24"


def free_port() -> int:
    while True:
        port = random.randint(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port


@dataclass
class Env:
    tmp: Path
    bridge: str
    subnet: str
    network: str
    netns_dir: str
    manager: CniManager

    @property
    def gateway(self) -> str:
        return self.subnet.rsplit(".", 1)[0] + ".1"

    @property
    def ipam_dir(self) -> Path:
        return self.tmp / "ipam" / self.network

    def netns(self, name: str) -> str:
        return netns.create(name, self.netns_dir)

    def edit_config(self, **changes: object) -> None:
        """Change top-level keys of the conflist, or ``<plugin type>__<key>`` of a plugin."""
        path = self.tmp / "net.d" / "10-test.conflist"
        conf = json.loads(path.read_text())
        for key, value in changes.items():
            plugin_type, _, plugin_key = key.partition("__")
            if plugin_key:
                next(p for p in conf["plugins"] if p["type"] == plugin_type)[plugin_key] = value
            else:
                conf[key] = value
        path.write_text(json.dumps(conf))
        st = path.stat()  # a visible change even on a coarse clock
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))

    def pod(self, pod_id: str, netns_path: str, ports: tuple[PortMapping, ...] = ()) -> PodNetwork:
        return PodNetwork(pod_id=pod_id, netns_path=netns_path, name=f"pod-{pod_id}",
                          namespace="test", uid=f"uid-{pod_id}", port_mappings=ports)


TABLES = [(IPTABLES, "nat"), (IPTABLES, "filter"), (IP6TABLES, "nat"), (IP6TABLES, "filter")]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    tag = secrets.token_hex(4)
    bridge = f"oct{tag}"
    subnet = free_subnet()
    network = f"ocid-test-{tag}"
    before = {t: rules(*t) for t in TABLES}
    forward = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    net_dir = tmp_path / "net.d"
    net_dir.mkdir()
    (net_dir / "10-test.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0",
        "name": network,
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": True,
             "hairpinMode": True,
             "ipam": {"type": "host-local", "dataDir": str(tmp_path / "ipam"),
                      "ranges": [[{"subnet": subnet}]], "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ]}))
    netns_dir = str(tmp_path / "netns")
    manager = CniManager(str(net_dir), [PLUGIN_DIR], str(tmp_path / "cache"))
    yield Env(tmp_path, bridge, subnet, network, netns_dir, manager)
    for pod_id in manager.cached_pods():  # a test that failed half-way
        manager.teardown(pod_id, "")
    if os.path.isdir(netns_dir):
        for name in os.listdir(netns_dir):
            netns.remove(os.path.join(netns_dir, name))
    for point in reversed(mounts_at_or_under(netns_dir)):
        run("umount", "-l", point, check=False)
    if link_exists(bridge):
        run("ip", "link", "del", bridge)
    # The bridge plugin turns forwarding on for a gateway; nothing here needs it afterwards
    # (pod-to-pod and node-to-pod traffic is not forwarded).
    Path("/proc/sys/net/ipv4/ip_forward").write_text(forward)
    markers = [f'"{network}"', bridge, subnet.rsplit(".", 1)[0] + "."]
    for table in TABLES:
        remove_own_rules(*table, before[table], markers)
    assert not link_exists(bridge)
    assert mounts_at_or_under(netns_dir) == []
    for table in TABLES:
        assert not [r for r in rules(*table) if any(m in r for m in markers)], table


@pytest.fixture
def servers() -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait(timeout=10)


def serve(servers: list[subprocess.Popen], netns_path: str, name: str, port: int) -> None:
    proc = subprocess.Popen(["nsenter", f"--net={netns_path}", sys.executable, "-c", SERVER,
                             name, str(port)], stdout=subprocess.PIPE, text=True)
    servers.append(proc)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"


def talk(host: str, port: int, netns_path: str | None = None) -> str:
    """Connect to host:port (from ``netns_path``, or from the host) and return the answer."""
    if netns_path:
        return run("nsenter", f"--net={netns_path}", sys.executable, "-c", CLIENT, host,
                   str(port)).stdout.strip()
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"ping")
        s.shutdown(socket.SHUT_WR)
        return s.recv(200).decode()


def reachable(host: str, port: int) -> bool:
    try:
        return talk(host, port).startswith("hello")
    except OSError:
        return False


def in_subnet(ip: str, subnet: str) -> bool:
    import ipaddress

    return ipaddress.ip_address(ip) in ipaddress.ip_network(subnet)


def test_two_pods_get_addresses_and_reach_each_other(env: Env, servers):
    ns_a, ns_b = env.netns("a"), env.netns("b")
    a = env.manager.setup(env.pod("pod-a", ns_a))
    b = env.manager.setup(env.pod("pod-b", ns_b))

    assert len(a.ips) == 1 and len(b.ips) == 1 and a.ips != b.ips
    assert in_subnet(a.ips[0], env.subnet) and in_subnet(b.ips[0], env.subnet)
    assert a.bridge == b.bridge == env.bridge
    assert [i.name for i in a.interfaces if i.sandbox] == ["eth0"]
    assert f"inet {a.ips[0]}/24" in run("nsenter", f"--net={ns_a}", "ip", "-o", "addr", "show",
                                         "eth0").stdout
    assert (env.ipam_dir / a.ips[0]).read_text().splitlines()[0] == "pod-a"
    assert env.manager.cached("pod-a").ips == a.ips

    serve(servers, ns_b, "b", 8080)
    assert talk(b.ips[0], 8080, ns_a) == f"hello from b to {a.ips[0]}: ping"
    serve(servers, ns_a, "a", 8080)
    assert talk(a.ips[0], 8080, ns_b) == f"hello from a to {b.ips[0]}: ping"
    env.manager.check("pod-a", ns_a)  # CHECK of bridge, host-local and portmap passes

    env.manager.teardown("pod-a", ns_a)
    assert not (env.ipam_dir / a.ips[0]).exists()
    assert (env.ipam_dir / b.ips[0]).exists()
    assert not link_exists("eth0", ns_a)
    assert env.manager.cached("pod-a") is None
    env.manager.teardown("pod-a", ns_a)  # idempotent

    # The netns is gone before the DEL (a restart after a crash): DEL still frees the IP.
    netns.remove(ns_b)
    env.manager.teardown("pod-b", ns_b)
    assert not (env.ipam_dir / b.ips[0]).exists()
    assert env.manager.cached_pods() == []


def test_a_failed_add_leaves_nothing_behind(env: Env):
    """host-local runs out of addresses (a /30 has one besides the gateway): the pod's ADD fails
    with the plugin's message, and the DEL of the whole list leaves no veth or address."""
    env.edit_config(bridge__ipam={"type": "host-local", "dataDir": str(env.tmp / "ipam"),
                                  "ranges": [[{"subnet": env.subnet.replace(".0/24", ".0/30")}]]})
    ns_a, ns_b = env.netns("a"), env.netns("b")
    a = env.manager.setup(env.pod("full-a", ns_a))
    veths = run("ip", "-o", "link", "show", "master", env.bridge).stdout.splitlines()
    with pytest.raises(CniError, match=r"CNI ADD of pod full-b on network 'ocid-test-\w+': "
                                       r"plugin bridge: .*no IP addresses available"):
        env.manager.setup(env.pod("full-b", ns_b))
    assert not link_exists("eth0", ns_b)
    assert run("ip", "-o", "link", "show", "master", env.bridge).stdout.splitlines() == veths
    assert sorted(p.name for p in env.ipam_dir.iterdir() if p.name[0].isdigit()) == list(a.ips)
    assert env.manager.cached_pods() == ["full-a"]
    env.manager.teardown("full-a", ns_a)


def test_a_failed_first_add_does_not_spoil_the_bridge(env: Env):
    """The first ADD on a new bridge fails after the bridge plugin made the bridge: the DEL
    leaves it without ports, so the kernel zeroes its MAC, on which the plugin's next ADD would
    fail ("could not set bridge's mac: invalid argument"). The next ADD works anyway."""
    env.edit_config(bridge__ipam={"type": "host-local", "dataDir": str(env.tmp / "ipam"),
                                  "ranges": [[{"subnet": "10.0.0.0/33"}]]})
    ns = env.netns("first")
    with pytest.raises(CniError, match="10.0.0.0/33"):
        env.manager.setup(env.pod("first", ns))
    assert link_exists(env.bridge)
    assert Path(f"/sys/class/net/{env.bridge}/address").read_text().strip() == \
        "00:00:00:00:00:00"
    env.edit_config(bridge__ipam={"type": "host-local", "dataDir": str(env.tmp / "ipam"),
                                  "ranges": [[{"subnet": env.subnet}]]})
    status = env.manager.setup(env.pod("first", ns))
    assert in_subnet(status.ips[0], env.subnet)
    mac = Path(f"/sys/class/net/{env.bridge}/address").read_text().strip()
    assert mac != "00:00:00:00:00:00" and int(mac[:2], 16) & 0x03 == 0x02
    env.manager.teardown("first", ns)


def test_old_cni_versions_work_with_the_plugins(env: Env):
    for version in ("0.3.1", "0.4.0"):
        env.edit_config(cniVersion=version)
        assert env.manager.network().cni_version == version
        ns = env.netns(f"v{version}")
        status = env.manager.setup(env.pod(f"old-{version}", ns))
        assert status.result["cniVersion"] == version
        assert len(status.ips) == 1 and in_subnet(status.ips[0], env.subnet)
        env.manager.check(f"old-{version}", ns)
        env.manager.teardown(f"old-{version}", ns)
        assert not (env.ipam_dir / status.ips[0]).exists()


def test_host_port_reaches_the_pod_and_localhost_with_routing(env: Env, servers):
    host_port = free_port()
    ns = env.netns("web")
    status = env.manager.setup(env.pod(
        "web", ns, (PortMapping(container_port=8080, host_port=host_port, protocol="TCP"),)))
    pod_ip = status.ips[0]
    serve(servers, ns, "web", 8080)
    assert any(f"--dport {host_port}" in r for r in rules(IPTABLES, "nat"))

    # From the node to its own bridge address: portmap's DNAT in OUTPUT.
    assert talk(env.gateway, host_port).startswith("hello from web")

    routing = LocalhostRouting()
    routing.acquire(env.bridge)
    routing.acquire(env.bridge)  # a second pod on the same bridge: nothing added twice
    try:
        masq = localhost_rules(env.bridge)
        assert len(masq) == 1 and "-s 127.0.0.0/8" in masq[0] and "-j MASQUERADE" in masq[0]
        assert Path(f"/proc/sys/net/ipv4/conf/{env.bridge}/route_localnet").read_text() == "1\n"
        # The pod sees the bridge's address, not 127.0.0.1.
        assert talk("127.0.0.1", host_port) == f"hello from web to {env.gateway}: ping"
        routing.release(env.bridge)
        assert localhost_rules(env.bridge) == masq
    finally:
        routing.release(env.bridge)
    assert localhost_rules(env.bridge) == []
    assert Path(f"/proc/sys/net/ipv4/conf/{env.bridge}/route_localnet").read_text() == "0\n"
    assert routing.counts() == {}
    assert talk(pod_ip, 8080).startswith("hello from web")  # the pod itself is still fine

    env.manager.teardown("web", ns)
    # DEL removed the pod's chains (portmap's CNI-DN-…, the bridge's masquerading); what stays
    # is portmap's scaffolding shared by every pod (CNI-HOSTPORT-*), removed by the fixture.
    prefix = env.subnet.rsplit(".", 1)[0] + "."
    assert [r for r in rules(IPTABLES, "nat") if f"--dport {host_port}" in r or prefix in r
            or f'"{env.network}"' in r] == []


def test_localhost_routing_alone_makes_127_0_0_1_work(env: Env, servers):
    """With portmap's own masquerading off (``snat: false``), 127.0.0.1:<hostPort> works only
    while LocalhostRouting holds the bridge. (With portmap's default ``snat: true``, Debian's
    portmap 1.1.1 also masquerades connections from 127.0.0.1 itself.)"""
    env.edit_config(portmap__snat=False)
    host_port = free_port()
    ns = env.netns("nosnat")
    env.manager.setup(env.pod(
        "nosnat", ns, (PortMapping(container_port=8080, host_port=host_port, protocol="TCP"),)))
    serve(servers, ns, "nosnat", 8080)
    assert not reachable("127.0.0.1", host_port)
    routing = LocalhostRouting()
    routing.acquire(env.bridge)
    try:
        assert talk("127.0.0.1", host_port) == f"hello from nosnat to {env.gateway}: ping"
    finally:
        routing.release(env.bridge)
    env.manager.teardown("nosnat", ns)


def test_reset_rebuilds_counts_and_drops_rules_of_vanished_bridges(env: Env):
    ns = env.netns("r")
    env.manager.setup(env.pod("r", ns))
    stale = f"oct{secrets.token_hex(4)}"  # a bridge that went away while ocid was down
    # The previous ocid's rule for it:
    run(IPTABLES, "-w", "-t", "nat", "-A", "POSTROUTING", "-s", "127.0.0.0/8", "-o", stale,
        "-m", "comment", "--comment", RULE_COMMENT, "-j", "MASQUERADE")

    routing = LocalhostRouting()
    try:
        routing.reset({env.bridge: 2, "oct-none": 0})
        assert localhost_rules(stale) == []
    finally:
        for _ in localhost_rules(stale):
            run(IPTABLES, "-w", "-t", "nat", "-D", "POSTROUTING", "-s", "127.0.0.0/8", "-o",
                stale, "-m", "comment", "--comment", RULE_COMMENT, "-j", "MASQUERADE")
    assert len(localhost_rules(env.bridge)) == 1
    assert routing.counts() == {env.bridge: 2}
    routing.release(env.bridge)
    assert len(localhost_rules(env.bridge)) == 1
    routing.release(env.bridge)
    assert localhost_rules(env.bridge) == []
    routing.release(env.bridge)  # not held: nothing happens
    env.manager.teardown("r", ns)
