"""What a container's spec does once runc runs it: security, mounts, devices, namespaces."""

from __future__ import annotations

import json
import os
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2

from ocid.oci.spec import parse_capbnd
from tests.integration.test_lifecycle import SLEEP, _pod
from tests.support.cri import container_config, pod_config, wait_for


def _status_field(cri, cid: str, name: str) -> str:
    out = cri.exec(cid, "cat", "/proc/self/status").stdout.decode()
    return next(line.split(":", 1)[1].strip() for line in out.splitlines()
                if line.startswith(f"{name}:"))


def _spec(cri, cid: str) -> dict:
    info = cri.call("ContainerStatus", api_pb2.ContainerStatusRequest(
        container_id=cid, verbose=True)).info["info"]
    return json.loads(info)["runtimeSpec"]


def test_privileged_gets_the_hosts_bounding_set_and_default_caps_are_narrow(cri):
    pod_id, _ = _pod(cri)
    privileged = container_config(cri.image, SLEEP)
    privileged.linux.security_context.privileged = True
    cid = cri.run(pod_id, privileged)
    host_bound = parse_capbnd(Path("/proc/self/status").read_text())
    eff = int(_status_field(cri, cid, "CapEff"), 16)
    assert parse_capbnd(f"CapBnd: {eff:x}\n") == host_bound

    plain = cri.run(pod_id, container_config(cri.image, SLEEP))
    caps = parse_capbnd(f"CapBnd: {_status_field(cri, plain, 'CapEff')}\n")
    assert "CAP_CHOWN" in caps and "CAP_NET_RAW" not in caps and "CAP_SYS_ADMIN" not in caps

    added = container_config(cri.image, SLEEP)
    added.linux.security_context.capabilities.add_capabilities.append("NET_ADMIN")
    added.linux.security_context.capabilities.drop_capabilities.append("CHOWN")
    caps = parse_capbnd(f"CapBnd: {_status_field(cri, cri.run(pod_id, added), 'CapEff')}\n")
    assert "CAP_NET_ADMIN" in caps and "CAP_CHOWN" not in caps


def test_oom_score_adj_below_the_daemons_is_raised_not_refused(cri):
    pod_id, _ = _pod(cri)
    config = container_config(cri.image, SLEEP)
    config.linux.resources.oom_score_adj = -999
    cid = cri.run(pod_id, config)
    own = int(Path(f"/proc/{cri.daemon.proc.pid}/oom_score_adj").read_text())
    seen = int(cri.exec(cid, "cat", "/proc/self/oom_score_adj").stdout)
    assert seen == max(-999, own)
    if own > -999:
        assert "raised to the daemon's own" in cri.daemon.log


def test_seccomp_profiles_and_no_new_privs(cri):
    pod_id, _ = _pod(cri)
    default = container_config(cri.image, SLEEP)
    default.linux.security_context.seccomp.profile_type = api_pb2.SecurityProfile.RuntimeDefault
    default.linux.security_context.no_new_privs = True
    cid = cri.run(pod_id, default)
    assert _status_field(cri, cid, "Seccomp") == "2"
    assert _status_field(cri, cid, "NoNewPrivs") == "1"
    unconfined = container_config(cri.image, SLEEP)
    unconfined.linux.security_context.seccomp.profile_type = api_pb2.SecurityProfile.Unconfined
    assert _status_field(cri, cri.run(pod_id, unconfined), "Seccomp") == "0"


def test_mounts_readonly_recursive_and_devices(cri, tmp_path):
    host_dir = tmp_path / "data"
    host_dir.mkdir()
    (host_dir / "hello").write_text("from the host\n")
    pod_id, _ = _pod(cri)
    config = container_config(cri.image, SLEEP)
    config.mounts.add(container_path="/data", host_path=str(host_dir), readonly=True)
    config.mounts.add(container_path="/rw", host_path=str(host_dir))
    config.mounts.add(container_path="/rro", host_path=str(host_dir), readonly=True,
                      recursive_read_only=True)
    config.devices.add(container_path="/dev/mynull", host_path="/dev/null", permissions="rw")
    cid = cri.run(pod_id, config)
    assert cri.exec(cid, "cat", "/data/hello").stdout == b"from the host\n"
    assert cri.exec(cid, "sh", "-c", "echo x > /data/new").exit_code != 0
    assert cri.exec(cid, "sh", "-c", "echo x > /rro/new").exit_code != 0
    assert cri.exec(cid, "sh", "-c", "echo x > /rw/new").exit_code == 0
    assert (host_dir / "new").read_text() == "x\n"
    assert cri.exec(cid, "sh", "-c", "echo x > /dev/mynull").exit_code == 0
    listing = cri.exec(cid, "ls", "-l", "/dev/mynull").stdout.decode()
    assert listing.startswith("c") and "1,   3" in listing
    mounts = {m.container_path: m for m in cri.status(cid).mounts}
    assert mounts["/data"].readonly and mounts["/data"].host_path == str(host_dir)
    assert not mounts["/rw"].readonly


def test_cgroup_parent_and_host_namespaces(cri):
    parent = f"/ocid-test-{os.getpid()}"
    config = pod_config(log_dir=str(cri.daemon.workdir / "logs"), cgroup_parent=parent,
                        security_context=api_pb2.LinuxSandboxSecurityContext(
                            namespace_options=api_pb2.NamespaceOption(
                                network=api_pb2.NODE, pid=api_pb2.NODE, ipc=api_pb2.NODE)))
    pod_id = cri.run_pod(config)
    ctr = container_config(cri.image, SLEEP)
    ctr.linux.security_context.namespace_options.network = api_pb2.NODE
    ctr.linux.security_context.namespace_options.pid = api_pb2.NODE
    ctr.linux.security_context.namespace_options.ipc = api_pb2.NODE
    cid = cri.run(pod_id, ctr)
    assert _spec(cri, cid)["linux"]["cgroupsPath"].startswith(parent + "/")
    # Host network: the host's interfaces; host PID: the host's init as PID 1.
    host_links = sorted(os.listdir("/sys/class/net"))
    assert sorted(cri.exec(cid, "ls", "/sys/class/net").stdout.decode().split()) == host_links
    assert cri.exec(cid, "cat", "/proc/1/cmdline").stdout == Path("/proc/1/cmdline").read_bytes()
    assert "network" not in {n["type"] for n in _spec(cri, cid)["linux"]["namespaces"]}
    cri.remove_pod(pod_id)
    for hierarchy in ("memory", "pids", "cpu,cpuacct"):
        leaf = Path("/sys/fs/cgroup", hierarchy, parent.lstrip("/"), f"ocid-{cid}")
        assert not leaf.exists()
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        try:
            (hierarchy / parent.lstrip("/")).rmdir()  # the parent is the test's to remove
        except OSError:
            pass


def test_pod_network_namespace_is_its_own(cri):
    pod_id, _ = _pod(cri)
    cid = cri.run(pod_id, container_config(cri.image, SLEEP))
    assert cri.exec(cid, "ls", "/sys/class/net").stdout.split() == [b"lo"]
    netns = json.loads(cri.call("PodSandboxStatus", api_pb2.PodSandboxStatusRequest(
        pod_sandbox_id=pod_id, verbose=True)).info["info"])["netnsPath"]
    assert os.path.exists(netns)
    cri.stop_pod(pod_id)
    assert not os.path.exists(netns)
    cri.stop_pod(pod_id)  # the namespace is gone already: still fine


def test_tty_container_logs_through_the_terminal(cri):
    pod_id, _ = _pod(cri)
    cid = cri.run(pod_id, container_config(cri.image, ["sh", "-c", "echo on-a-tty; [ -t 1 ]"],
                                           tty=True))
    s = cri.wait_exited(cid)
    assert s.exit_code == 0  # stdout was a terminal
    assert b"stdout F on-a-tty\r\n" in Path(s.log_path).read_bytes()  # ONLCR, as conmon sets


def test_stop_signal_from_the_request_is_used(cri):
    pod_id, _ = _pod(cri)
    config = container_config(
        cri.image, ["sh", "-c", "trap 'exit 42' INT; while true; do sleep 0.1; done"],
        stop_signal=api_pb2.SIGINT)
    cid = cri.run(pod_id, config)
    wait_for(lambda: cri.exec(cid, "true").exit_code, lambda code: code == 0)
    cri.stop(cid, timeout=10)
    s = cri.status(cid)
    assert s.exit_code == 42 and s.stop_signal == api_pb2.SIGINT


def test_container_in_a_stopped_pod_cannot_be_created(cri):
    pod_id, _ = _pod(cri)
    cri.stop_pod(pod_id)
    with pytest.raises(grpc.RpcError) as err:
        cri.create(pod_id, container_config(cri.image, SLEEP))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
