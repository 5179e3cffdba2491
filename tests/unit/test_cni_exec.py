"""Running CNI plugins as libcni does, with fake plugins: shell scripts that record their
environment and stdin, and print what the test asks for."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from ocid.errors import InternalError, NotFound
from ocid.lifecycle.podspec import PortMapping
from ocid.network.cni import (
    CniError,
    CniManager,
    NetworkNotReady,
    NetworkStatus,
    PodNetwork,
)

# Records one call as a line "<plugin> <command>" in calls, its stdin as <n>.stdin and its
# environment as <n>.env; prints <plugin>.<command>.out if present (on ADD, by default, a
# result naming the plugin), and exits with <plugin>.<command>.rc if present.
FAKE_PLUGIN = """#!/bin/sh
ctl='{ctl}'
name=$(basename "$0")
echo "$name $CNI_COMMAND" >> "$ctl/calls"
n=$(wc -l < "$ctl/calls" | tr -d ' ')
cat > "$ctl/$n.stdin"
env > "$ctl/$n.env"
if [ -f "$ctl/$name.$CNI_COMMAND.sleep" ]; then sleep "$(cat "$ctl/$name.$CNI_COMMAND.sleep")"; fi
if [ -f "$ctl/$name.$CNI_COMMAND.out" ]; then
  cat "$ctl/$name.$CNI_COMMAND.out"
elif [ "$CNI_COMMAND" = ADD ]; then
  printf '{{"cniVersion":"1.0.0","dns":{{}},"from":"%s"}}' "$name"
fi
if [ -f "$ctl/$name.$CNI_COMMAND.rc" ]; then exit "$(cat "$ctl/$name.$CNI_COMMAND.rc")"; fi
exit 0
"""

GONE_NETNS = "/nonexistent/netns/ocid-gone"


@dataclass
class Call:
    plugin: str
    command: str
    env: dict[str, str]
    config: dict

    @property
    def cni_env(self) -> dict[str, str]:
        return {k: v for k, v in self.env.items() if k.startswith("CNI_")}


class Fakes:
    """A plugin directory of fake plugins, a network directory and a cache directory."""

    def __init__(self, root: Path):
        self.root = root
        self.bin = root / "bin"
        self.ctl = root / "ctl"
        self.net = root / "net.d"
        self.cache = root / "cache"
        for directory in (self.bin, self.ctl, self.net):
            directory.mkdir()

    def plugin(self, *names: str) -> None:
        for name in names:
            path = self.bin / name
            path.write_text(FAKE_PLUGIN.format(ctl=self.ctl))
            path.chmod(0o755)

    def answer(self, plugin: str, command: str, out: dict | str | None = None,
               rc: int | None = None, sleep: float | None = None) -> None:
        if out is not None:
            text = out if isinstance(out, str) else json.dumps(out)
            (self.ctl / f"{plugin}.{command}.out").write_text(text)
        if rc is not None:
            (self.ctl / f"{plugin}.{command}.rc").write_text(str(rc))
        if sleep is not None:
            (self.ctl / f"{plugin}.{command}.sleep").write_text(str(sleep))

    def forget(self, plugin: str, command: str) -> None:
        for suffix in ("out", "rc", "sleep"):
            (self.ctl / f"{plugin}.{command}.{suffix}").unlink(missing_ok=True)

    def conflist(self, file_name: str, name: str, *plugins: dict | str,
                 version: str = "1.0.0") -> Path:
        data = {"cniVersion": version, "name": name,
                "plugins": [{"type": p} if isinstance(p, str) else p for p in plugins]}
        path = self.net / file_name
        path.write_text(json.dumps(data))
        return path

    def calls(self) -> list[Call]:
        calls_file = self.ctl / "calls"
        if not calls_file.exists():
            return []
        found = []
        for n, line in enumerate(calls_file.read_text().splitlines(), start=1):
            plugin, command = line.split()
            env = dict(entry.split("=", 1) for entry in
                       (self.ctl / f"{n}.env").read_text().splitlines() if "=" in entry)
            config = json.loads((self.ctl / f"{n}.stdin").read_text())
            found.append(Call(plugin, command, env, config))
        return found

    def reset_calls(self) -> None:
        for path in self.ctl.iterdir():
            if path.name == "calls" or path.suffix in (".stdin", ".env"):
                path.unlink()

    def manager(self, **kwargs) -> CniManager:
        return CniManager(str(self.net), [str(self.bin)], str(self.cache), **kwargs)


@pytest.fixture
def fakes(tmp_path: Path) -> Fakes:
    return Fakes(tmp_path)


def pod(pod_id: str = "pod1", netns_path: str = GONE_NETNS, **kwargs) -> PodNetwork:
    defaults = {"name": "web", "namespace": "default", "uid": "uid-1"}
    return PodNetwork(pod_id=pod_id, netns_path=netns_path, **{**defaults, **kwargs})


def result_100(ip: str = "10.88.0.5/16", bridge: str = "cni0") -> dict:
    return {"cniVersion": "1.0.0",
            "interfaces": [{"name": bridge, "mac": "aa:bb:cc:dd:ee:01"},
                           {"name": "veth1", "mac": "aa:bb:cc:dd:ee:02"},
                           {"name": "eth0", "mac": "aa:bb:cc:dd:ee:03", "sandbox": "/ns"}],
            "ips": [{"address": ip, "gateway": "10.88.0.1", "interface": 2}],
            "routes": [{"dst": "0.0.0.0/0"}], "dns": {}}


# -- ADD ---------------------------------------------------------------------------------------

def test_add_chains_prev_result_and_injects_name_and_version(fakes: Fakes):
    fakes.plugin("bridge", "portmap")
    fakes.conflist("10-net.conflist", "ocidnet", {"type": "bridge", "bridge": "cni0"},
                   {"type": "portmap", "cniVersion": "0.1.0", "name": "other"})
    first = result_100()
    final = {**result_100(), "dns": {"nameservers": ["10.88.0.1"]}}
    fakes.answer("bridge", "ADD", first)
    fakes.answer("portmap", "ADD", final)

    status = fakes.manager().setup(pod())

    add_bridge, add_portmap = fakes.calls()
    assert (add_bridge.plugin, add_bridge.command) == ("bridge", "ADD")
    assert "prevResult" not in add_bridge.config
    assert add_portmap.config["prevResult"] == first
    for call in (add_bridge, add_portmap):
        assert (call.config["name"], call.config["cniVersion"]) == ("ocidnet", "1.0.0")
    assert status.result == final
    assert status.ips == ("10.88.0.5",)
    assert status.bridge == "cni0"
    assert status.network == "ocidnet"
    assert [i.name for i in status.interfaces] == ["cni0", "veth1", "eth0"]


def test_runtime_config_only_for_declared_capabilities(fakes: Fakes):
    fakes.plugin("ports", "annotated", "plain", "disabled")
    fakes.conflist("10-net.conflist", "caps",
                   {"type": "ports", "capabilities": {"portMappings": True}},
                   {"type": "annotated",
                    "capabilities": {"io.kubernetes.cri.pod-annotations": True, "bandwidth": True}},
                   {"type": "plain", "runtimeConfig": {"stale": 1}},
                   {"type": "disabled", "capabilities": {"portMappings": False}})
    mappings = (PortMapping(container_port=80, host_port=8080, protocol="TCP"),
                PortMapping(container_port=53, host_port=5353, protocol="UDP", host_ip="127.0.0.1"),
                PortMapping(container_port=9000))  # no host port: not published
    fakes.manager().setup(pod(port_mappings=mappings, annotations={"a": "b"}))

    configs = {c.plugin: c.config for c in fakes.calls()}
    assert configs["ports"]["runtimeConfig"] == {"portMappings": [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""},
        {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"}]}
    assert configs["annotated"]["runtimeConfig"] == {
        "io.kubernetes.cri.pod-annotations": {"a": "b"}}
    assert configs["plain"]["runtimeConfig"] == {"stale": 1}  # the config's own, untouched
    assert "runtimeConfig" not in configs["disabled"]


def test_no_port_mappings_means_no_port_mappings_key(fakes: Fakes):
    fakes.plugin("ports")
    fakes.conflist("10-net.conflist", "caps",
                   {"type": "ports", "capabilities": {"portMappings": True}})
    fakes.manager().setup(pod(port_mappings=(PortMapping(container_port=80),)))
    assert "runtimeConfig" not in fakes.calls()[0].config


def test_environment_of_a_plugin(fakes: Fakes):
    fakes.plugin("bridge")
    fakes.conflist("10-net.conflist", "envnet", "bridge")
    other_bin = str(fakes.root / "other-bin")
    manager = CniManager(str(fakes.net), [other_bin, str(fakes.bin)], str(fakes.cache))
    manager.setup(pod("abc123", "/var/run/netns/ocid-abc123", name="nginx", namespace="web",
                      uid="u-42", ifname="net1"))
    call = fakes.calls()[0]
    assert call.cni_env == {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "abc123",
        "CNI_NETNS": "/var/run/netns/ocid-abc123",
        "CNI_IFNAME": "net1",
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=web;K8S_POD_NAME=nginx;"
                    "K8S_POD_INFRA_CONTAINER_ID=abc123;K8S_POD_UID=u-42",
        "CNI_PATH": f"{other_bin}:{fakes.bin}",
    }
    assert call.env.get("PATH")  # plugins such as portmap need to find iptables


def test_stray_cni_variables_of_ocid_do_not_leak(fakes: Fakes, monkeypatch):
    monkeypatch.setenv("CNI_ARGS", "EVIL=1")
    monkeypatch.setenv("CNI_SOMETHING", "x")
    fakes.plugin("bridge")
    fakes.conflist("10-net.conflist", "envnet", "bridge")
    fakes.manager().setup(pod())
    env = fakes.calls()[0].cni_env
    assert "CNI_SOMETHING" not in env
    assert env["CNI_ARGS"].startswith("IgnoreUnknown=1;")


def test_plugin_error_json_reaches_the_exception(fakes: Fakes):
    fakes.plugin("bridge", "portmap")
    fakes.conflist("10-net.conflist", "errnet", "bridge", "portmap")
    fakes.answer("portmap", "ADD", {"cniVersion": "1.0.0", "code": 7,
                                    "msg": "invalid port mapping",
                                    "details": "hostPort 0 is not allowed"}, rc=1)
    with pytest.raises(CniError) as info:
        fakes.manager().setup(pod("p1"))
    error = info.value
    assert isinstance(error, InternalError)
    message = str(error)
    for part in ("p1", "'errnet'", "portmap", "invalid port mapping", "hostPort 0 is not allowed",
                 "ADD"):
        assert part in message, part
    assert (error.network, error.plugin, error.command, error.code) == ("errnet", "portmap",
                                                                        "ADD", 7)
    assert (error.msg, error.details) == ("invalid port mapping", "hostPort 0 is not allowed")


def test_plugin_failure_without_json_reports_stderr(fakes: Fakes):
    script = fakes.bin / "broken"
    script.write_text("#!/bin/sh\necho 'cannot open netns' >&2\nexit 3\n")
    script.chmod(0o755)
    fakes.conflist("10-net.conflist", "brokennet", "broken")
    with pytest.raises(CniError, match=r"broken: failed \(exit status 3\): cannot open netns"):
        fakes.manager().setup(pod())


def test_invalid_add_result_is_an_error(fakes: Fakes):
    fakes.plugin("bridge")
    fakes.conflist("10-net.conflist", "n", "bridge")
    fakes.answer("bridge", "ADD", "this is not json")
    with pytest.raises(CniError, match="invalid result 'this is not json'"):
        fakes.manager().setup(pod())


def test_failed_add_deletes_the_whole_list_in_reverse(fakes: Fakes):
    fakes.plugin("a", "b", "c")
    fakes.conflist("10-net.conflist", "n", "a", "b", "c")
    fakes.answer("b", "ADD", {"code": 11, "msg": "try again later"}, rc=1)
    manager = fakes.manager()
    with pytest.raises(CniError, match="try again later"):
        manager.setup(pod("p2"))
    assert [(c.plugin, c.command) for c in fakes.calls()] == [
        ("a", "ADD"), ("b", "ADD"), ("c", "DEL"), ("b", "DEL"), ("a", "DEL")]
    assert all("prevResult" not in c.config for c in fakes.calls()[2:])
    assert manager.cached("p2") is None
    assert not (fakes.cache / "p2.json").exists()


def test_plugin_timeout(fakes: Fakes):
    fakes.plugin("slow")
    fakes.conflist("10-net.conflist", "n", "slow")
    fakes.answer("slow", "ADD", sleep=5)
    started = time.monotonic()
    with pytest.raises(CniError, match=r"slow: timed out after 0.5s"):
        fakes.manager(timeout=0.5).setup(pod())
    assert time.monotonic() - started < 4.5


# -- the cache and DEL -----------------------------------------------------------------------

def test_teardown_uses_the_cached_config_after_the_directory_changed(fakes: Fakes):
    fakes.plugin("bridge", "portmap", "firewall")
    fakes.conflist("10-net.conflist", "first", "bridge",
                   {"type": "portmap", "capabilities": {"portMappings": True}})
    fakes.answer("bridge", "ADD", result_100("10.88.0.7/16"))
    fakes.answer("portmap", "ADD", result_100("10.88.0.7/16"))
    manager = fakes.manager()
    mappings = (PortMapping(container_port=80, host_port=8080),)
    manager.setup(pod("p3", port_mappings=mappings))
    cache = json.loads((fakes.cache / "p3.json").read_text())
    assert cache["config"]["name"] == "first"
    assert cache["result"] == result_100("10.88.0.7/16")

    # The configuration changes (and later disappears); a new manager (a restart) tears down.
    (fakes.net / "10-net.conflist").unlink()
    fakes.conflist("05-other.conflist", "second", "firewall")
    fakes.reset_calls()
    restarted = fakes.manager()
    assert restarted.network().name == "second"
    assert restarted.cached("p3").ips == ("10.88.0.7",)
    for path in fakes.net.iterdir():
        path.unlink()
    fakes.net.rmdir()

    restarted.teardown("p3", GONE_NETNS)

    calls = fakes.calls()
    assert [(c.plugin, c.command) for c in calls] == [("portmap", "DEL"), ("bridge", "DEL")]
    for call in calls:
        assert call.config["name"] == "first"
        assert call.config["prevResult"] == result_100("10.88.0.7/16")
        assert call.cni_env["CNI_NETNS"] == ""  # the netns is gone: libcni allows ""
        assert call.cni_env["CNI_ARGS"].endswith("K8S_POD_INFRA_CONTAINER_ID=p3;K8S_POD_UID=uid-1")
    assert calls[0].config["runtimeConfig"] == {"portMappings": [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""}]}
    assert not (fakes.cache / "p3.json").exists()
    assert restarted.cached("p3") is None


def test_teardown_is_idempotent(fakes: Fakes):
    fakes.plugin("bridge")
    fakes.conflist("10-net.conflist", "n", "bridge")
    manager = fakes.manager()
    manager.teardown("never-set-up", GONE_NETNS)
    assert fakes.calls() == []
    manager.setup(pod("p4"))
    manager.teardown("p4", GONE_NETNS)
    manager.teardown("p4", GONE_NETNS)
    assert [(c.plugin, c.command) for c in fakes.calls()] == [("bridge", "ADD"), ("bridge", "DEL")]


def test_del_errors_are_ignored_when_the_netns_is_gone(fakes: Fakes):
    fakes.plugin("a", "b")
    fakes.conflist("10-net.conflist", "n", "a", "b")
    manager = fakes.manager()
    manager.setup(pod("p5"))
    fakes.answer("b", "DEL", {"code": 3, "msg": "no such container"}, rc=1)
    manager.teardown("p5", GONE_NETNS)
    assert [(c.plugin, c.command) for c in fakes.calls()][2:] == [("b", "DEL"), ("a", "DEL")]
    assert manager.cached("p5") is None


def test_del_errors_with_a_live_netns_fail_and_keep_the_cache(fakes: Fakes):
    live = "/proc/self/ns/net"  # a real network namespace file; the fakes never enter it
    fakes.plugin("a", "b")
    fakes.conflist("10-net.conflist", "n", "a", "b")
    manager = fakes.manager()
    manager.setup(pod("p6", live))
    fakes.answer("b", "DEL", {"code": 5, "msg": "iptables is locked"}, rc=1)
    with pytest.raises(CniError, match="iptables is locked"):
        manager.teardown("p6", live)
    calls = fakes.calls()
    assert [(c.plugin, c.command) for c in calls][2:] == [("b", "DEL"), ("a", "DEL")]  # a still ran
    assert calls[2].cni_env["CNI_NETNS"] == live
    assert manager.cached("p6") is not None

    fakes.forget("b", "DEL")
    manager.teardown("p6", "")  # "": the netns ADD was given
    assert fakes.calls()[-1].cni_env["CNI_NETNS"] == live
    assert manager.cached("p6") is None


def test_add_cut_short_is_deleted_without_prev_result(fakes: Fakes):
    fakes.plugin("a", "b")
    fakes.conflist("10-net.conflist", "n", "a", "b")
    fakes.answer("b", "ADD", {"msg": "boom"}, rc=1)
    fakes.answer("a", "DEL", {"msg": "still broken"}, rc=1)
    manager = fakes.manager()
    with pytest.raises(CniError, match="boom"):
        manager.setup(pod("p7", "/proc/self/ns/net"))
    # The DEL after the failed ADD failed too: the cache stays, without a result.
    assert json.loads((fakes.cache / "p7.json").read_text())["result"] is None
    assert manager.cached("p7") is None
    fakes.forget("a", "DEL")
    fakes.reset_calls()
    manager.teardown("p7", GONE_NETNS)
    assert [(c.plugin, c.command) for c in fakes.calls()] == [("b", "DEL"), ("a", "DEL")]
    assert all("prevResult" not in c.config for c in fakes.calls())
    assert not (fakes.cache / "p7.json").exists()


def test_del_of_an_old_version_gets_no_prev_result(fakes: Fakes):
    fakes.plugin("bridge")
    fakes.conflist("10-net.conflist", "n", "bridge", version="0.3.1")
    fakes.answer("bridge", "ADD", {"cniVersion": "0.3.1", "ips": [
        {"version": "4", "address": "10.1.0.2/24", "interface": 0}],
        "interfaces": [{"name": "eth0", "sandbox": "/ns"}]})
    manager = fakes.manager()
    assert manager.setup(pod("p8")).ips == ("10.1.0.2",)
    manager.teardown("p8", GONE_NETNS)
    delete = fakes.calls()[-1]
    assert delete.command == "DEL" and "prevResult" not in delete.config
    assert delete.config["cniVersion"] == "0.3.1"


def test_cache_survives_a_restart_and_is_written_atomically(fakes: Fakes):
    fakes.plugin("bridge")
    fakes.conflist("10-net.conflist", "n", "bridge")
    fakes.answer("bridge", "ADD", result_100("10.88.3.4/16"))
    fakes.manager().setup(pod("p9"))
    assert sorted(os.listdir(fakes.cache)) == ["p9.json"]  # no temporary files left
    assert oct(os.stat(fakes.cache / "p9.json").st_mode & 0o777) == "0o600"
    restarted = fakes.manager()
    assert restarted.cached("p9").ips == ("10.88.3.4",)
    assert restarted.cached_pods() == ["p9"]
    assert restarted.cached("nope") is None


def test_unreadable_cache_is_ignored(fakes: Fakes):
    fakes.cache.mkdir()
    (fakes.cache / "bad.json").write_text("{broken")
    manager = fakes.manager()
    assert manager.cached("bad") is None
    manager.teardown("bad", GONE_NETNS)


def test_check_uses_the_cached_result(fakes: Fakes):
    fakes.plugin("bridge", "portmap")
    fakes.conflist("10-net.conflist", "n", "bridge", "portmap", version="0.4.0")
    fakes.answer("portmap", "ADD", result_100())
    manager = fakes.manager()
    with pytest.raises(NotFound):
        manager.check("p10", GONE_NETNS)
    manager.setup(pod("p10"))
    fakes.reset_calls()
    manager.check("p10", "/var/run/netns/x")
    calls = fakes.calls()
    assert [(c.plugin, c.command) for c in calls] == [("bridge", "CHECK"), ("portmap", "CHECK")]
    assert all(c.config["prevResult"] == result_100() for c in calls)
    assert calls[0].cni_env["CNI_NETNS"] == "/var/run/netns/x"
    fakes.answer("portmap", "CHECK", {"code": 999, "msg": "chain missing"}, rc=1)
    with pytest.raises(CniError, match="chain missing"):
        manager.check("p10", "/var/run/netns/x")


def test_check_is_skipped_before_0_4_0(fakes: Fakes):
    fakes.plugin("bridge")
    fakes.conflist("10-net.conflist", "n", "bridge", version="0.3.1")
    manager = fakes.manager()
    manager.setup(pod("p11"))
    manager.check("p11", GONE_NETNS)
    assert [c.command for c in fakes.calls()] == ["ADD"]


def test_invalid_ids_are_refused(fakes: Fakes):
    manager = fakes.manager()
    for bad in ("", "../etc", "a/b"):
        with pytest.raises(Exception, match="invalid pod ID"):
            manager.teardown(bad, GONE_NETNS)


# -- reading results ---------------------------------------------------------------------------

def test_ips_of_the_sandbox_interface_ipv4_first_without_loopback():
    result = {"cniVersion": "0.4.0",
              "interfaces": [{"name": "br0"}, {"name": "lo", "sandbox": "/ns"},
                             {"name": "eth0", "sandbox": "/ns"},
                             {"name": "net1", "sandbox": "/ns"}],
              "ips": [{"version": "6", "address": "fd00::5/64", "interface": 2},
                      {"version": "4", "address": "127.0.0.1/8", "interface": 1},
                      {"version": "4", "address": "10.0.0.1/24", "interface": 0},
                      {"version": "4", "address": "10.0.0.5/24", "interface": 2},
                      {"version": "4", "address": "10.9.0.5/24", "interface": 3}]}
    config = {"name": "n", "plugins": [{"type": "bridge", "bridge": "br0"}]}
    status = NetworkStatus.from_result(result, config, "eth0")
    assert status.ips == ("10.0.0.5", "fd00::5")
    assert status.bridge == "br0"
    assert NetworkStatus.from_result(result, config, "net1").ips == ("10.9.0.5",)


def test_ips_when_no_interface_is_named_ifname():
    result = {"cniVersion": "1.0.0",
              "interfaces": [{"name": "cni0"}, {"name": "veth0"},
                             {"name": "ens0", "sandbox": "/ns"}],
              "ips": [{"address": "::1/128"}, {"address": "fd00::9/64"},
                      {"address": "10.0.0.1/24", "interface": 0},
                      {"address": "10.0.0.9/24", "interface": 2}]}
    config = {"name": "n", "plugins": [{"type": "bridge"}, {"type": "portmap"}]}
    status = NetworkStatus.from_result(result, config, "eth0")
    assert status.ips == ("10.0.0.9", "fd00::9")
    assert status.bridge == "cni0"  # the bridge plugin's default name


def test_ips_of_an_ipam_only_result_and_of_0_2_0_results():
    ipam_only = {"cniVersion": "1.0.0", "ips": [{"address": "10.2.0.3/16", "gateway": "10.2.0.1"}]}
    assert NetworkStatus.from_result(ipam_only, {"plugins": []}).ips == ("10.2.0.3",)
    old = {"cniVersion": "0.2.0", "ip4": {"ip": "10.3.0.4/16"}, "ip6": {"ip": "fd01::4/64"}}
    status = NetworkStatus.from_result(old, {"plugins": [{"type": "ptp"}]})
    assert status.ips == ("10.3.0.4", "fd01::4")
    assert status.bridge == ""


# -- the configuration -----------------------------------------------------------------------

def bump(path: Path) -> None:
    """Make sure a rewrite shows in the mtime even on a coarse clock."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_reload_on_add_modify_and_remove_without_a_new_manager(fakes: Fakes):
    fakes.plugin("bridge", "portmap")
    manager = fakes.manager()
    with pytest.raises(NetworkNotReady, match="no valid CNI network configuration"):
        manager.network()
    fakes.conflist("20-b.conflist", "b", "bridge")
    assert manager.network().name == "b"
    first = manager.network()
    assert manager.network() is first  # unchanged: not reloaded

    fakes.conflist("10-a.conflist", "a", "bridge")
    assert manager.network().name == "a"

    path = fakes.conflist("10-a.conflist", "a2", "bridge", "portmap")
    bump(path)
    network = manager.network()
    assert network.name == "a2"
    assert [p["type"] for p in network.plugins] == ["bridge", "portmap"]

    path.unlink()
    assert manager.network().name == "b"
    (fakes.net / "20-b.conflist").unlink()
    with pytest.raises(NetworkNotReady):
        manager.network()


def test_default_name_picks_that_network(fakes: Fakes):
    fakes.plugin("bridge")
    fakes.conflist("10-a.conflist", "a", "bridge")
    fakes.conflist("20-b.conflist", "b", "bridge")
    assert fakes.manager(default_name="b").network().name == "b"
    with pytest.raises(NetworkNotReady, match="named 'c'"):
        fakes.manager(default_name="c").network()


def test_not_ready_reasons(fakes: Fakes):
    manager = CniManager(str(fakes.root / "missing"), [str(fakes.bin)], str(fakes.cache))
    with pytest.raises(NetworkNotReady, match="does not exist"):
        manager.network()
    with pytest.raises(NetworkNotReady, match="does not exist"):
        manager.setup(pod())

    manager = fakes.manager()
    with pytest.raises(NetworkNotReady, match=r"no valid CNI network configuration in \S+net.d$"):
        manager.network()
    (fakes.net / "10-bad.conflist").write_text("{oops")
    with pytest.raises(NetworkNotReady, match="10-bad.conflist: invalid JSON"):
        manager.network()
    fakes.conflist("20-good.conflist", "good", "bridge", "portmap")
    with pytest.raises(NetworkNotReady, match="20-good.conflist: plugin bridge, portmap not found"):
        manager.network()
    # Installing the plugins later is noticed without touching the configuration.
    fakes.plugin("bridge", "portmap")
    assert manager.network().name == "good"


def test_the_stamp_is_checked_without_rereading_files(fakes: Fakes, monkeypatch):
    fakes.plugin("bridge")
    fakes.conflist("10-a.conflist", "a", "bridge")
    manager = fakes.manager()
    manager.network()
    from ocid.network import cni

    def no_reload(*args, **kwargs):
        raise AssertionError("reloaded although nothing changed")

    monkeypatch.setattr(cni, "default_network", no_reload)
    for _ in range(3):
        assert manager.network().name == "a"


# -- the shipped example -------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_example_network_is_valid():
    from ocid.network.cni import default_network, parse_network_file

    network = parse_network_file(str(ROOT / "contrib/cni/10-ocid-bridge.conflist"))
    assert (network.name, network.cni_version) == ("ocid", "1.0.0")
    bridge, portmap = network.plugins
    assert (bridge["type"], bridge["bridge"], bridge["ipam"]["type"]) == ("bridge", "ocid0",
                                                                         "host-local")
    assert bridge["isGateway"] and bridge["ipMasq"] and bridge["hairpinMode"]
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.88.0.0/16", "gateway": "10.88.0.1"}]]
    assert portmap == {"type": "portmap", "capabilities": {"portMappings": True}}
    if all(os.access(f"/usr/lib/cni/{t}", os.X_OK) for t in ("bridge", "host-local", "portmap")):
        assert default_network(str(ROOT / "contrib/cni"), ["/usr/lib/cni"]).name == "ocid"


def test_install_script_only_fills_an_empty_directory(tmp_path: Path):
    import subprocess

    script = str(ROOT / "hack/install-cni-config")
    conflist = str(ROOT / "contrib/cni/10-ocid-bridge.conflist")
    target = tmp_path / "etc" / "net.d"
    subprocess.run([script, conflist, str(target)], check=True, capture_output=True)
    assert sorted(os.listdir(target)) == ["10-ocid-bridge.conflist"]
    (target / "10-ocid-bridge.conflist").unlink()
    (target / "50-mine.conf").write_text("{}")
    (target / "README").write_text("not a config")
    subprocess.run([script, conflist, str(target)], check=True, capture_output=True)
    assert sorted(os.listdir(target)) == ["50-mine.conf", "README"]


# -- localhost hostport routing, with a fake iptables and /proc/sys ------------------------------

FAKE_IPTABLES = """#!/bin/sh
# Keeps rules as lines in $rules: -C greps, -A appends, -D removes one, -S prints.
rules='{rules}'
touch "$rules"
echo "$*" >> '{log}'
while [ "$1" = -w ] || [ "$1" = -t ]; do
  if [ "$1" = -t ]; then shift; fi
  shift
done
op=$1; shift; shift
rule="$*"
case $op in
  -C) grep -qxF -- "$rule" "$rules" || exit 1 ;;
  -A) echo "$rule" >> "$rules" ;;
  -D) grep -qxF -- "$rule" "$rules" || exit 1
      awk -v r="$rule" 'done || $0 != r {{print; next}} {{done=1}}' "$rules" > "$rules.new"
      mv "$rules.new" "$rules" ;;
  -S) sed 's/^/-A POSTROUTING /; s/--comment \\(ocid hostport localhost\\)/--comment "\\1"/' \\
        "$rules" ;;
esac
"""


@pytest.fixture
def fake_routing(tmp_path: Path):
    from ocid.network.hostport import LocalhostRouting

    iptables = tmp_path / "iptables"
    rules, calls = tmp_path / "rules", tmp_path / "iptables.log"
    iptables.write_text(FAKE_IPTABLES.format(rules=rules, log=calls))
    iptables.chmod(0o755)
    proc_sys = tmp_path / "sys"
    for bridge in ("br0", "br1"):
        conf = proc_sys / "net/ipv4/conf" / bridge
        conf.mkdir(parents=True)
        (conf / "route_localnet").write_text("0\n")

    def state(bridge: str) -> tuple[int, str]:
        lines = rules.read_text().splitlines() if rules.exists() else []
        sysctl = proc_sys / "net/ipv4/conf" / bridge / "route_localnet"
        value = sysctl.read_text().strip() if sysctl.exists() else ""
        return sum(f"-o {bridge} " in line for line in lines), value

    return LocalhostRouting(str(iptables), str(proc_sys)), state, calls


def test_localhost_routing_counts_per_bridge(fake_routing):
    routing, state, calls = fake_routing
    routing.acquire("br0")
    assert state("br0") == (1, "1")
    assert "-t nat -C POSTROUTING -s 127.0.0.0/8 -o br0 -m comment --comment ocid hostport " \
           "localhost -j MASQUERADE" in calls.read_text()
    routing.acquire("br0")
    routing.acquire("br1")
    assert (state("br0"), state("br1")) == ((1, "1"), (1, "1"))
    routing.release("br0")
    assert state("br0") == (1, "1")
    routing.release("br0")
    assert state("br0") == (0, "0")
    routing.release("br0")  # not held
    assert routing.counts() == {"br1": 1}
    with pytest.raises(InternalError, match="no such interface"):
        routing.acquire("gone0")
    assert routing.counts() == {"br1": 1}


def test_localhost_routing_is_thread_safe(fake_routing):
    import threading

    routing, state, calls = fake_routing

    def churn() -> None:
        for _ in range(5):
            routing.acquire("br0")
            assert state("br0") == (1, "1")
            routing.release("br0")

    routing.acquire("br0")  # held throughout: the others never add or remove the rule
    threads = [threading.Thread(target=churn) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls.read_text().count(" -A POSTROUTING") == 1
    routing.release("br0")
    assert state("br0") == (0, "0")


def test_localhost_routing_reset(fake_routing):
    routing, state, _calls = fake_routing
    LocalhostRouting = type(routing)
    previous = LocalhostRouting(routing.iptables, routing.proc_sys)
    previous.acquire("br1")  # a bridge still there: maybe another ocid's, the rule stays
    (Path(routing.proc_sys) / "net/ipv4/conf/gone0").mkdir()
    previous.acquire("gone0")
    (Path(routing.proc_sys) / "net/ipv4/conf/gone0/route_localnet").unlink()
    (Path(routing.proc_sys) / "net/ipv4/conf/gone0").rmdir()  # the bridge went away
    routing.reset({"br0": 2, "br9": 0})
    assert (state("br0"), state("br1"), state("gone0")[0]) == ((1, "1"), (1, "1"), 0)
    assert routing.counts() == {"br0": 2}
    previous.release("br1")
    routing.reset({"br0": 1, "missing0": 1})  # a bridge that is gone is left out, not fatal
    assert routing.counts() == {"br0": 1}
    routing.release("br0")
    assert state("br0") == (0, "0")
