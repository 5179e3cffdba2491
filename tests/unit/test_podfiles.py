"""The files a pod gives its containers: resolv.conf, hosts, hostname."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ocid.errors import InvalidArgument
from ocid.lifecycle import podfiles


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_resolv_conf_from_dns_config(tmp_path: Path):
    path = tmp_path / "resolv.conf"
    podfiles.write_resolv_conf(str(path), ["10.96.0.10", "fd00::a"],
                               ["default.svc.cluster.local", "svc.cluster.local"],
                               ["ndots:5", "timeout:2"])
    assert path.read_text() == (
        "search default.svc.cluster.local svc.cluster.local\n"
        "nameserver 10.96.0.10\n"
        "nameserver fd00::a\n"
        "options ndots:5 timeout:2\n"
    )
    assert mode(path) == 0o644
    assert os.listdir(tmp_path) == ["resolv.conf"]  # no temp file left behind


def test_resolv_conf_partial_config(tmp_path: Path):
    path = tmp_path / "resolv.conf"
    podfiles.write_resolv_conf(str(path), [], ["example.com"], [])
    assert path.read_text() == "search example.com\n"
    podfiles.write_resolv_conf(str(path), ["1.1.1.1"], ["."], ["edns0"])
    assert path.read_text() == "nameserver 1.1.1.1\noptions edns0\n"  # "search ." is dropped


def test_resolv_conf_copies_the_host_file_when_empty(tmp_path: Path):
    host = tmp_path / "host-resolv.conf"
    host.write_text("# host\nnameserver 192.0.2.53\nsearch lan\n")
    link = tmp_path / "link.conf"  # like /etc/resolv.conf -> systemd-resolved's file
    link.symlink_to(host)
    path = tmp_path / "resolv.conf"
    podfiles.write_resolv_conf(str(path), [], [], [], host_resolv=str(link))
    assert path.read_text() == host.read_text()
    assert not path.is_symlink() and mode(path) == 0o644


def test_resolv_conf_missing_host_file_gives_empty(tmp_path: Path):
    path = tmp_path / "resolv.conf"
    podfiles.write_resolv_conf(str(path), [], [], [], host_resolv=str(tmp_path / "absent"))
    assert path.read_text() == ""


@pytest.mark.parametrize("server", ["dns.example.com", "10.0.0.256", "", "1.2.3.4 5.6.7.8"])
def test_resolv_conf_rejects_a_bad_nameserver(tmp_path: Path, server: str):
    path = tmp_path / "resolv.conf"
    with pytest.raises(InvalidArgument, match="DNS server"):
        podfiles.write_resolv_conf(str(path), ["10.0.0.1", server], [], [])
    assert not path.exists()


@pytest.mark.parametrize("searches,options", [(["a b"], []), ([""], []), ([], ["ndots:1\nx"])])
def test_resolv_conf_rejects_entries_that_would_forge_lines(tmp_path: Path, searches, options):
    with pytest.raises(InvalidArgument):
        podfiles.write_resolv_conf(str(tmp_path / "r"), ["10.0.0.1"], searches, options)


def test_resolv_conf_replaces_atomically(tmp_path: Path):
    path = tmp_path / "resolv.conf"
    podfiles.write_resolv_conf(str(path), ["10.0.0.1"], [], [])
    inode = path.stat().st_ino
    podfiles.write_resolv_conf(str(path), ["10.0.0.2"], [], [])
    assert path.read_text() == "nameserver 10.0.0.2\n"
    assert path.stat().st_ino != inode  # a new file renamed over the old one


def test_hosts_for_a_pod_network(tmp_path: Path):
    path = tmp_path / "hosts"
    podfiles.write_hosts(str(path), "web-0", host_network=False)
    text = path.read_text()
    assert "127.0.0.1\tlocalhost\n" in text
    assert "::1\tlocalhost ip6-localhost ip6-loopback\n" in text
    assert "web-0" not in text  # no IP yet: no line for the pod itself
    assert mode(path) == 0o644
    podfiles.write_hosts(str(path), "web-0", host_network=False, pod_ips=["10.88.0.5", "fd00::5"])
    assert path.read_text().endswith("10.88.0.5\tweb-0\nfd00::5\tweb-0\n")


def test_hosts_for_the_host_network_copies_the_host_file(tmp_path: Path):
    host = tmp_path / "host-hosts"
    host.write_text("127.0.0.1 localhost\n192.0.2.7 node1\n")
    path = tmp_path / "hosts"
    podfiles.write_hosts(str(path), "ignored", host_network=True, host_hosts=str(host))
    assert path.read_text() == host.read_text()


def test_hosts_rejects_bad_input(tmp_path: Path):
    with pytest.raises(InvalidArgument):
        podfiles.write_hosts(str(tmp_path / "h"), "two words", host_network=False)
    with pytest.raises(InvalidArgument):
        podfiles.write_hosts(str(tmp_path / "h"), "web", host_network=False, pod_ips=["nope"])


def test_hostname(tmp_path: Path):
    path = tmp_path / "hostname"
    podfiles.write_hostname(str(path), "web-0")
    assert path.read_text() == "web-0\n"
    assert mode(path) == 0o644
    with pytest.raises(InvalidArgument):
        podfiles.write_hostname(str(path), "")


def test_mount_shm_rejects_a_bad_size(tmp_path: Path):
    with pytest.raises(InvalidArgument):
        podfiles.mount_shm(str(tmp_path / "shm"), 0)
    assert not (tmp_path / "shm").exists()


def test_unmount_shm_of_an_unmounted_or_absent_path(tmp_path: Path):
    podfiles.unmount_shm(str(tmp_path / "absent"))
    (tmp_path / "plain").mkdir()
    podfiles.unmount_shm(str(tmp_path / "plain"))
