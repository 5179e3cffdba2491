"""ocid as a daemon: the CRI socket, Version/Status/RuntimeConfig, lifecycle and logging."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess

import grpc
import pytest
from cri_api.v1 import api_pb2

from ocid import __version__

from .conftest import OCIC, OCID


def test_version_answers_as_crictl_expects(ocid):
    # The call `crictl version` makes: RuntimeService/Version with version "v1".
    response = ocid.runtime_stub().Version(api_pb2.VersionRequest(version="v1"), timeout=10)
    assert response.runtime_name == "ocid"
    assert response.runtime_api_version == "v1"
    assert response.runtime_version == __version__
    assert response.version == "0.1.0"


def test_ocic_runtimeversion_prints_the_original_line(ocid):
    result = ocid.ocic("runtimeversion")
    assert result.stdout == (f"VersionResponse: Version: 0.1.0, RuntimeName: ocid, "
                             f"RuntimeVersion: {__version__}, RuntimeApiVersion: v1\n")


def test_status_reports_runtime_ready_and_network_not_ready_with_reason(ocid):
    response = ocid.runtime_stub().Status(api_pb2.StatusRequest(), timeout=10)
    conditions = {c.type: c for c in response.status.conditions}
    assert conditions["RuntimeReady"].status is True
    network = conditions["NetworkReady"]
    assert network.status is False
    assert network.reason == "NetworkPluginNotReady"
    assert f"no valid CNI network configuration in {ocid.workdir}/net.d" in network.message
    assert dict(response.info) == {}  # info only when verbose


def test_status_network_ready_follows_the_cni_directory(ocid):
    stub = ocid.runtime_stub()
    conflist = {"cniVersion": "1.0.0", "name": "test",
                "plugins": [{"type": "bridge", "bridge": "ocidtest0"}, {"type": "portmap"}]}
    (ocid.workdir / "net.d" / "10-test.conflist").write_text(json.dumps(conflist))
    conditions = {c.type: c for c in stub.Status(api_pb2.StatusRequest(), timeout=10).status.conditions}
    assert conditions["NetworkReady"].status is True, conditions["NetworkReady"].message


def test_status_runtime_not_ready_names_the_missing_binary(start_ocid):
    ocid = start_ocid("--conmon", "/nonexistent/conmon")
    response = ocid.runtime_stub().Status(api_pb2.StatusRequest(), timeout=10)
    runtime = next(c for c in response.status.conditions if c.type == "RuntimeReady")
    assert runtime.status is False
    assert "conmon /nonexistent/conmon not found" in runtime.message


def test_verbose_status_carries_the_effective_config(ocid):
    response = ocid.runtime_stub().Status(api_pb2.StatusRequest(verbose=True), timeout=10)
    config = json.loads(response.info["config"])
    assert config["ocid"]["root"] == str(ocid.workdir / "root")
    assert config["ocid"]["api"]["listen"] == ocid.socket


@pytest.mark.parametrize(("manager", "driver"), [("cgroupfs", api_pb2.CgroupDriver.CGROUPFS),
                                                 ("systemd", api_pb2.CgroupDriver.SYSTEMD)])
def test_runtime_config_reports_the_cgroup_driver(start_ocid, manager, driver):
    ocid = start_ocid(config_text=f'[ocid.runtime]\ncgroup_manager = "{manager}"\n')
    response = ocid.runtime_stub().RuntimeConfig(api_pb2.RuntimeConfigRequest(), timeout=10)
    assert response.linux.cgroup_driver == driver


@pytest.mark.parametrize(("service", "method", "request_type"), [
    ("runtime", "ContainerStats", api_pb2.ContainerStatsRequest),
    ("runtime", "UpdateContainerResources", api_pb2.UpdateContainerResourcesRequest),
    ("runtime", "CheckpointContainer", api_pb2.CheckpointContainerRequest),
])
def test_other_rpcs_answer_unimplemented_with_their_name(ocid, service, method, request_type):
    stub = ocid.runtime_stub() if service == "runtime" else ocid.image_stub()
    with pytest.raises(grpc.RpcError) as info:
        getattr(stub, method)(request_type(), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert method in info.value.details()
    # the daemon is still serving
    assert ocid.runtime_stub().Version(api_pb2.VersionRequest(), timeout=10).runtime_name == "ocid"


def test_ocic_info_shows_conditions_and_config(ocid):
    data = json.loads(ocid.ocic("info").stdout)
    types = {c["type"]: c["status"] for c in data["status"]["conditions"]}
    assert types == {"RuntimeReady": True, "NetworkReady": False}
    assert data["config"]["ocid"]["api"]["listen"] == ocid.socket
    yaml_out = ocid.ocic("info", "--output", "yaml").stdout
    assert "type: NetworkReady" in yaml_out


def test_ocic_reads_the_endpoint_from_the_environment(ocid):
    env = {**os.environ, "CONTAINER_RUNTIME_ENDPOINT": f"unix://{ocid.socket}"}
    result = subprocess.run([OCIC, "runtimeversion"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "RuntimeName: ocid" in result.stdout


@pytest.mark.parametrize("make_socket", [False, True])
def test_ocic_on_a_missing_or_dead_socket_says_so_in_one_line(workdir, make_socket):
    path = workdir / "dead.sock"
    if make_socket:  # a socket file nobody listens on
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()
    result = subprocess.run([OCIC, "--connect", str(path), "runtimeversion"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"ocic: cannot connect to ocid at {path}: ")
    assert lines[0].endswith("is ocid running?")


def test_socket_is_mode_0660(ocid):
    mode = os.stat(ocid.socket).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660


def test_second_daemon_on_a_live_socket_refuses_to_start(ocid, start_ocid, workdir):
    # Same socket, different state directories: only the socket is shared.
    second = subprocess.run(
        [OCID, "--config", str(workdir / "ocid.conf"), "--root", str(workdir / "root2"),
         "--runroot", str(workdir / "run2"), "--listen", ocid.socket],
        capture_output=True, text=True, timeout=60)
    assert second.returncode != 0
    assert f"already serving {ocid.socket}" in second.stderr
    assert "Traceback" not in second.stderr
    # the first one is untouched and still answers
    assert ocid.ocic("runtimeversion").returncode == 0


def test_second_daemon_on_the_same_state_refuses_to_start(ocid, workdir):
    second = subprocess.run(
        [OCID, "--config", str(workdir / "ocid.conf"), "--root", str(workdir / "root"),
         "--runroot", str(workdir / "run"), "--listen", str(workdir / "other.sock")],
        capture_output=True, text=True, timeout=60)
    assert second.returncode != 0
    assert f"another ocid is using the state directory {workdir / 'run'}" in second.stderr
    assert not (workdir / "other.sock").exists()


def test_stale_socket_file_is_replaced(start_ocid, workdir):
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(workdir / "ocid.sock"))
    stale.close()
    ocid = start_ocid()
    assert ocid.ocic("runtimeversion").returncode == 0
    assert "removing stale socket" in ocid.log


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_gracefully_and_removes_the_socket(ocid, signum):
    assert os.path.exists(ocid.socket)
    assert ocid.stop(signum) == 0
    assert not os.path.exists(ocid.socket)
    assert "ocid stopped" in ocid.log


def test_debug_logs_every_request_and_result_in_json(start_ocid):
    ocid = start_ocid("--debug", "--log-format", "json")
    ocid.ocic("runtimeversion")
    with pytest.raises(grpc.RpcError):
        ocid.runtime_stub().StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id="abc"),
                                           timeout=10)
    ocid.stop()
    entries = [json.loads(line) for line in ocid.log.splitlines()]
    messages = [e["msg"] for e in entries]
    assert {"time", "level", "logger", "msg"} <= set(entries[0])
    assert any(m.startswith("Version request") for m in messages)
    assert any(m.startswith('Version response: version: "0.1.0" runtime_name: "ocid"') for m in messages)
    assert any(m.startswith('StopPodSandbox request: pod_sandbox_id: "abc"') for m in messages)


def test_without_debug_reads_are_not_logged(ocid):
    ocid.ocic("runtimeversion")
    ocid.stop()
    assert "Version request" not in ocid.log


def test_bad_config_stops_the_daemon_with_the_key(start_ocid, workdir):
    daemon = start_ocid(config_text='[ocid.api]\nlisten = 42\n', wait=False)
    assert daemon.proc.wait(timeout=60) == 1
    err = daemon.proc.stderr.read()
    assert "ocid.api.listen must be a string" in err
    assert ":2:" in err
    assert not (workdir / "ocid.sock").exists()


def test_streaming_rpc_answers_unimplemented_too(ocid):
    events = ocid.runtime_stub().GetContainerEvents(api_pb2.GetEventsRequest(), timeout=10)
    with pytest.raises(grpc.RpcError) as info:
        next(iter(events))
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "GetContainerEvents" in info.value.details()
