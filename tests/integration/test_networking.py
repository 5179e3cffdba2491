"""Pod networking through the real CNI plugins: pod IPs, pod-to-pod traffic, hostPorts."""

from __future__ import annotations

import json
import os
import random
import subprocess
import urllib.request
import uuid
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2

from tests.integration.test_images import insecure, write_registries
from tests.support.cri import Cri, container_config, pod_config, wait_for

HTTPD = ["sh", "-c", "echo hello-from-$HOSTNAME > /tmp/index.html; exec httpd -f -p 8080 -h /tmp"]


def bridge_conflist(bridge: str, subnet: str, data_dir: str, ipam_subnet: str = "") -> dict:
    return {"cniVersion": "1.0.0", "name": f"net-{bridge}", "plugins": [
        {"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": True,
         "hairpinMode": True,
         "ipam": {"type": "host-local", "dataDir": data_dir,
                  "ranges": [[{"subnet": ipam_subnet or subnet}]],
                  "routes": [{"dst": "0.0.0.0/0"}]}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ]}


class Network:
    """A bridge network of this test, with its own host-local store."""

    def __init__(self, workdir: Path):
        self.bridge = f"oct{uuid.uuid4().hex[:8]}"
        self.subnet_prefix = f"10.{random.randint(100, 250)}.{random.randint(0, 255)}"
        self.subnet = f"{self.subnet_prefix}.0/24"
        self.data_dir = str(workdir / "cni-ipam")
        self.path = workdir / "net.d" / "10-bridge.conflist"

    def write(self, **kwargs: str) -> None:
        self.path.write_text(json.dumps(bridge_conflist(self.bridge, self.subnet, self.data_dir,
                                                        **kwargs)))

    def allocated(self) -> list[str]:
        """IPs host-local holds for this network."""
        store = Path(self.data_dir, f"net-{self.bridge}")
        return [p.name for p in store.glob(f"{self.subnet_prefix}.*")] if store.exists() else []

    def remove(self) -> None:
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)


IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


@pytest.fixture
def net(start_ocid, registry, busybox_image):
    forwarding = IP_FORWARD.read_text()  # the bridge plugin turns it on for its gateway
    daemon = start_ocid()
    write_registries(daemon, insecure(registry.host))
    cri = Cri(daemon)
    cri.image = busybox_image.reference  # type: ignore[attr-defined]
    cri.pull(busybox_image.reference)
    network = Network(daemon.workdir)
    network.write()
    cri.network = network  # type: ignore[attr-defined]
    yield cri
    from tests.integration.conftest import remove_all_pods

    remove_all_pods(cri.daemon)
    network.remove()
    IP_FORWARD.write_text(forwarding)


def _run_httpd(cri, **pod_kwargs) -> tuple[str, str, str]:
    config = pod_config(log_dir=str(cri.daemon.workdir / "logs"), **pod_kwargs)
    pod_id = cri.run_pod(config)
    cid = cri.run(pod_id, container_config(cri.image, HTTPD))
    return pod_id, cid, cri.pod_status(pod_id).network.ip


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - a test URL
        return response.read().decode()


def test_pods_get_ips_and_reach_each_other(net):
    pod_a, _, ip_a = _run_httpd(net)
    pod_b, client, ip_b = _run_httpd(net)
    assert ip_a.startswith(net.network.subnet_prefix + ".")
    assert ip_b.startswith(net.network.subnet_prefix + ".") and ip_a != ip_b
    fetched = wait_for(lambda: net.exec(client, "wget", "-q", "-O", "-",
                                        f"http://{ip_a}:8080/index.html"),
                       lambda r: r.exit_code == 0)
    assert fetched.stdout.decode().startswith("hello-from-")
    # The pod's own name resolves to its address; eth0 carries it.
    assert ip_b in net.exec(client, "cat", "/etc/hosts").stdout.decode()
    assert ip_b in net.exec(client, "cat", "/proc/net/fib_trie").stdout.decode()
    assert sorted(net.network.allocated()) == sorted([ip_a, ip_b])
    netns_dir = net.daemon.workdir / "netns"
    assert len(os.listdir(netns_dir)) == 2

    net.remove_pod(pod_a)
    net.stop_pod(pod_b)
    net.stop_pod(pod_b)  # DEL twice is fine
    net.remove_pod(pod_b)
    assert net.network.allocated() == []
    assert os.listdir(netns_dir) == []


def test_host_port_reachable_from_the_node(net):
    host_port = random.randint(31000, 32000)
    config = pod_config(log_dir=str(net.daemon.workdir / "logs"))
    config.port_mappings.add(container_port=8080, host_port=host_port,
                             protocol=api_pb2.TCP)
    pod_id = net.run_pod(config)
    net.run(pod_id, container_config(net.image, HTTPD))
    ip = net.pod_status(pod_id).network.ip
    body = wait_for(lambda: _try_get(f"http://{ip}:8080/index.html"), bool)
    assert body.startswith("hello-from-")
    assert _try_get(f"http://127.0.0.1:{host_port}/index.html") == body
    net.remove_pod(pod_id)
    assert _try_get(f"http://127.0.0.1:{host_port}/index.html", attempts=1) == ""
    rules = subprocess.run(["iptables", "-t", "nat", "-S", "POSTROUTING"], capture_output=True,
                           text=True, check=True).stdout
    assert net.network.bridge not in rules  # the localhost masquerade went with the last pod


def _try_get(url: str, attempts: int = 20) -> str:
    import time

    for _ in range(attempts):
        try:
            return _get(url)
        except OSError:
            time.sleep(0.25)
    return ""


def test_restart_between_create_and_stop_still_deletes_cleanly(net, start_ocid):
    pod_id, _, ip = _run_httpd(net)
    assert net.network.allocated() == [ip]
    net.daemon.stop()
    net.network.path.unlink()  # even with the config gone, DEL uses the cached one
    again = Cri(start_ocid())
    assert again.pod_status(pod_id).network.ip == ip
    again.stop_pod(pod_id)
    assert net.network.allocated() == []
    again.remove_pod(pod_id)


def test_network_readiness_follows_the_config_dir(net):
    def network_ready() -> api_pb2.RuntimeCondition:
        response = net.call("Status", api_pb2.StatusRequest())
        return next(c for c in response.status.conditions if c.type == "NetworkReady")

    assert network_ready().status is True
    net.network.path.write_text("{ not json")
    condition = network_ready()
    assert condition.status is False and "10-bridge.conflist" in condition.message
    with pytest.raises(grpc.RpcError) as err:
        net.run_pod(pod_config())
    assert "10-bridge.conflist" in err.value.details()
    # Host-network pods need no CNI and still work.
    hostnet = pod_config(security_context=api_pb2.LinuxSandboxSecurityContext(
        namespace_options=api_pb2.NamespaceOption(network=api_pb2.NODE)))
    net.remove_pod(net.run_pod(hostnet))
    net.network.write()
    assert network_ready().status is True
    net.remove_pod(net.run_pod(pod_config()))


def test_a_failing_plugin_error_reaches_the_caller_and_nothing_is_left(net):
    net.network.write(ipam_subnet="10.0.0.0/33")
    config = pod_config()
    with pytest.raises(grpc.RpcError) as err:
        net.run_pod(config)
    assert "bridge" in err.value.details() and "10.0.0.0/33" in err.value.details()
    assert net.pods() == [] and os.listdir(net.daemon.workdir / "netns") == []
    net.network.write()
    assert net.run_pod(config)  # the name was released


def test_ocic_pod_status_shows_the_ip(net):
    pod_id, _, ip = _run_httpd(net)
    out = net.daemon.ocic("pod", "status", "--id", pod_id).stdout
    assert f"IP Address: {ip}" in out
