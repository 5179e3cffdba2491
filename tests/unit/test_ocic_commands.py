"""``ocic pod`` and ``ocic ctr`` against a fake RuntimeService: the requests sent, what is printed."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from cri_api.v1 import api_pb2

from ocic.cli import main
from ocic.client import CriClient
from ocid import errors
from ocid.crilog import format_record

TESTDATA = Path(__file__).resolve().parents[2] / "testdata"
POD_ID = "a" * 64
CTR_ID = "c" * 64


class FakeRuntime:
    """Stands in for CriClient.runtime: records calls, answers from ``answers``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, float]] = []
        self.answers: dict[str, Any] = {}

    def __call__(self, client: CriClient, method: str, request: Any) -> Any:
        self.calls.append((method, request, client.timeout))
        answer = self.answers.get(method)
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, Callable):
            return answer(request)
        if answer is not None:
            return answer
        return getattr(api_pb2, f"{method}Response")()

    def requests(self, method: str) -> list[Any]:
        return [request for name, request, _ in self.calls if name == method]


@pytest.fixture
def fake(monkeypatch) -> FakeRuntime:
    runtime = FakeRuntime()
    monkeypatch.setattr(CriClient, "runtime", lambda self, method, request: runtime(self, method, request))
    return runtime


@pytest.fixture
def run(capsysbinary):
    def invoke(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = capsysbinary.readouterr()
        return code, out.decode(), err.decode()

    return invoke


def pod_status_response() -> Any:
    return api_pb2.PodSandboxStatusResponse(status=api_pb2.PodSandboxStatus(
        id=POD_ID, metadata=api_pb2.PodSandboxMetadata(name="web", uid="u1", namespace="ns", attempt=1),
        state=api_pb2.SANDBOX_READY, created_at=1795928111_000000000,
        network=api_pb2.PodSandboxNetworkStatus(ip="10.88.0.5")))


def test_pod_create_overrides_name_and_adds_labels(fake, run):
    fake.answers["RunPodSandbox"] = api_pb2.RunPodSandboxResponse(pod_sandbox_id=POD_ID)
    code, out, _ = run("pod", "create", "--config", str(TESTDATA / "sandbox_config.json"),
                       "--name", "web", "--label", "tier=front", "--label", "x=a=b",
                       "--runtime-handler", "crun")
    assert (code, out) == (0, POD_ID + "\n")
    [(_, request, timeout)] = fake.calls
    assert request.config.metadata.name == "web"
    assert request.config.metadata.uid == "ocid-test-pod-1"
    assert dict(request.config.labels) == {"group": "test", "tier": "front", "x": "a=b"}
    assert request.runtime_handler == "crun"
    assert timeout >= 120  # starting a pod may take longer than a query


def test_bad_label_is_a_usage_error(fake, run):
    code, _, err = run("pod", "create", "--config", str(TESTDATA / "sandbox_config.json"),
                       "--label", "novalue")
    assert code == 2
    assert "'novalue' is not key=value" in err
    assert fake.calls == []


def test_bad_config_file_is_one_line(fake, run, tmp_path):
    path = tmp_path / "pod.json"
    path.write_text('{"metadata": {"name": "x", "foo": 1}}')
    code, _, err = run("pod", "create", "--config", str(path))
    assert code == 1
    assert err == f'ocic: {path}: unknown field "foo" at PodSandboxConfig.metadata\n'
    assert fake.calls == []


@pytest.mark.parametrize(("command", "method"), [("stop", "StopPodSandbox"),
                                                 ("remove", "RemovePodSandbox")])
def test_pod_stop_and_remove_print_the_id(fake, run, command, method):
    code, out, _ = run("pod", command, "--id", "abc")
    assert (code, out) == (0, "abc\n")
    assert fake.requests(method)[0].pod_sandbox_id == "abc"


def test_pod_errors_come_back_as_one_line(fake, run):
    fake.answers["PodSandboxStatus"] = errors.NotFound("PodSandboxStatus: pod nope not found (NOT_FOUND)")
    code, out, err = run("pod", "status", "--id", "nope")
    assert (code, out) == (1, "")
    assert err == "ocic: PodSandboxStatus: pod nope not found (NOT_FOUND)\n"


def test_pod_status_text_and_yaml(fake, run):
    fake.answers["PodSandboxStatus"] = pod_status_response()
    code, out, _ = run("pod", "status", "--id", "aaa")
    assert code == 0
    assert out.startswith(f"ID: {POD_ID}\nName: web\nUID: u1\nNamespace: ns\nAttempt: 1\n"
                          "Status: SANDBOX_READY\nCreated: ")
    assert "IP Address: 10.88.0.5\n" in out
    code, out, _ = run("pod", "status", "--id", "aaa", "-o", "yaml")
    data = yaml.safe_load(out)
    assert data["status"]["network"]["ip"] == "10.88.0.5"
    assert data["status"]["state"] == "SANDBOX_READY"


def test_pod_list_filters_and_quiet(fake, run):
    fake.answers["ListPodSandbox"] = api_pb2.ListPodSandboxResponse(
        items=[api_pb2.PodSandbox(id=POD_ID), api_pb2.PodSandbox(id="b" * 64)])
    code, out, _ = run("pod", "list", "--id", "aa", "--state", "notready", "--label", "a=1",
                       "--label", "b=2", "--quiet")
    assert (code, out) == (0, f"{POD_ID}\n{'b' * 64}\n")
    request = fake.requests("ListPodSandbox")[0]
    assert request.filter.id == "aa"
    assert request.filter.state.state == api_pb2.SANDBOX_NOTREADY
    assert dict(request.filter.label_selector) == {"a": "1", "b": "2"}


def test_pod_list_without_filters_sends_no_state(fake, run):
    run("pod", "list")
    assert not fake.requests("ListPodSandbox")[0].filter.HasField("state")


def test_pod_list_text_blocks_are_separated_by_blank_lines(fake, run):
    fake.answers["ListPodSandbox"] = api_pb2.ListPodSandboxResponse(
        items=[api_pb2.PodSandbox(id=POD_ID), api_pb2.PodSandbox(id="b" * 64)])
    _, out, _ = run("pod", "list")
    blocks = out.rstrip("\n").split("\n\n")
    assert [b.splitlines()[0] for b in blocks] == [f"ID: {POD_ID}", f"ID: {'b' * 64}"]
    _, out, _ = run("pod", "list", "-o", "json")
    assert [item["id"] for item in json.loads(out)["items"]] == [POD_ID, "b" * 64]
    _, out, _ = run("pod", "list", "-o", "table")
    assert out.splitlines()[0].split()[:2] == ["POD", "ID"]


def test_ctr_create_sends_the_pods_metadata(fake, run):
    fake.answers["PodSandboxStatus"] = pod_status_response()
    fake.answers["CreateContainer"] = api_pb2.CreateContainerResponse(container_id=CTR_ID)
    code, out, _ = run("ctr", "create", "--pod", "aaa", "--config",
                       str(TESTDATA / "container_config.json"), "--name", "c2", "--label", "k=v")
    assert (code, out) == (0, CTR_ID + "\n")
    request = fake.requests("CreateContainer")[0]
    assert request.pod_sandbox_id == POD_ID  # the prefix, resolved by the status call
    assert request.sandbox_config.metadata.name == "web"
    assert request.config.metadata.name == "c2"
    assert request.config.labels["k"] == "v" and request.config.labels["type"] == "small"


def test_ctr_create_with_a_pod_config_asks_nothing_else(fake, run):
    code, _, _ = run("ctr", "create", "--pod", "aaa", "--config", str(TESTDATA / "container_config.json"),
                     "--pod-config", str(TESTDATA / "sandbox_config.json"))
    assert code == 0
    assert [method for method, _, _ in fake.calls] == ["CreateContainer"]
    request = fake.requests("CreateContainer")[0]
    assert request.pod_sandbox_id == "aaa"
    assert request.sandbox_config.hostname == "ocic-host"


def test_ctr_create_needs_a_pod(fake, run):
    code, _, err = run("ctr", "create", "--config", str(TESTDATA / "container_config.json"))
    assert code == 2 and "--pod" in err


def test_ctr_start_stop_remove(fake, run):
    assert run("ctr", "start", "--id", "c1")[:2] == (0, "c1\n")
    assert run("ctr", "stop", "--id", "c1", "--timeout", "30")[:2] == (0, "c1\n")
    assert run("ctr", "remove", "--id", "c1")[:2] == (0, "c1\n")
    assert fake.requests("StartContainer")[0].container_id == "c1"
    stop = [(request, timeout) for method, request, timeout in fake.calls if method == "StopContainer"]
    assert stop[0][0].timeout == 30
    assert stop[0][1] > 30  # the call outlives the grace period
    assert fake.requests("RemoveContainer")[0].container_id == "c1"


def test_ctr_list_filters(fake, run):
    run("ctr", "list", "--pod", "aa", "--state", "exited", "--id", "cc", "--label", "app=web")
    request = fake.requests("ListContainers")[0]
    assert (request.filter.pod_sandbox_id, request.filter.id) == ("aa", "cc")
    assert request.filter.state.state == api_pb2.CONTAINER_EXITED
    assert dict(request.filter.label_selector) == {"app": "web"}


def test_ctr_status_text(fake, run):
    fake.answers["ContainerStatus"] = api_pb2.ContainerStatusResponse(status=api_pb2.ContainerStatus(
        id=CTR_ID, metadata=api_pb2.ContainerMetadata(name="c1"), state=api_pb2.CONTAINER_EXITED,
        exit_code=3, finished_at=1795928111_000000000, log_path="/l.log"))
    code, out, _ = run("ctr", "status", "--id", "cc")
    assert code == 0
    assert "Status: CONTAINER_EXITED\n" in out and "Exit Code: 3\n" in out
    assert "Log path: /l.log\n" in out


def test_execsync_passes_output_and_exit_code(fake, run):
    fake.answers["ExecSync"] = api_pb2.ExecSyncResponse(stdout=b"out\x00bytes\n", stderr=b"err\n",
                                                        exit_code=3)
    code, out, err = run("ctr", "execsync", "--id", "c1", "ls", "-l", "/")
    assert (code, out, err) == (3, "out\x00bytes\n", "err\n")
    request = fake.requests("ExecSync")[0]
    assert list(request.cmd) == ["ls", "-l", "/"]  # options after the command are the command's
    assert request.timeout == 0


def test_execsync_timeout_is_clear(fake, run):
    fake.answers["ExecSync"] = errors.DeadlineExceeded("ExecSync: no answer within 12s (--timeout)")
    code, out, err = run("ctr", "execsync", "--id", "c1", "--timeout", "2", "sleep", "9")
    assert code != 0 and out == ""
    assert err.startswith("ocic: command timed out after 2s in container c1")
    assert fake.calls[0][2] > 2


def test_execsync_timeout_answered_by_the_runtime(fake, run):
    fake.answers["ExecSync"] = api_pb2.ExecSyncResponse(stdout=b"partial\n",
                                                        stderr=b"command timed out", exit_code=-1)
    code, out, err = run("ctr", "execsync", "--id", "c1", "--timeout", "1", "sleep", "9")
    assert (code, out) == (1, "partial\n")
    assert err == "ocic: command timed out after 1s in container c1\n"


def write_log(path: Path) -> None:
    path.write_bytes(b"".join([
        format_record("stdout", "one", time_ns=1795928111_000000001),
        format_record("stderr", "warn", time_ns=1795928111_000000002),
        format_record("stdout", "two-", partial=True, time_ns=1795928111_000000003),
        format_record("stdout", "halves", time_ns=1795928111_000000004),
    ]))


def log_status(path: Path, state: int = api_pb2.CONTAINER_EXITED) -> Callable[[Any], Any]:
    return lambda request: api_pb2.ContainerStatusResponse(status=api_pb2.ContainerStatus(
        id=CTR_ID, state=state, log_path=str(path)))


def test_logs_split_streams_and_join_partials(fake, run, tmp_path):
    write_log(tmp_path / "c.log")
    fake.answers["ContainerStatus"] = log_status(tmp_path / "c.log")
    code, out, err = run("ctr", "logs", "--id", "cc")
    assert (code, out, err) == (0, "one\ntwo-halves\n", "warn\n")


def test_logs_tail_and_timestamps(fake, run, tmp_path):
    write_log(tmp_path / "c.log")
    fake.answers["ContainerStatus"] = log_status(tmp_path / "c.log")
    code, out, err = run("ctr", "logs", "--id", "cc", "--tail", "3", "-t")
    assert code == 0
    assert out == "2026-11-29T04:55:11.000000003+00:00 two-halves\n"
    assert err == "2026-11-29T04:55:11.000000002+00:00 warn\n"


def test_logs_follow_of_an_exited_container_ends(fake, run, tmp_path):
    write_log(tmp_path / "c.log")
    fake.answers["ContainerStatus"] = log_status(tmp_path / "c.log")
    code, out, _ = run("ctr", "logs", "--id", "cc", "-f")
    assert (code, out) == (0, "one\ntwo-halves\n")
    assert all(request.container_id in ("cc", CTR_ID) for request in fake.requests("ContainerStatus"))


def test_logs_of_a_missing_file(fake, run, tmp_path):
    fake.answers["ContainerStatus"] = log_status(tmp_path / "gone.log")
    code, _, err = run("ctr", "logs", "--id", "cc")
    assert code == 1
    assert err.startswith(f"ocic: log file {tmp_path / 'gone.log'} of container cc does not exist")


def test_logs_without_a_log_path(fake, run):
    fake.answers["ContainerStatus"] = api_pb2.ContainerStatusResponse(
        status=api_pb2.ContainerStatus(id=CTR_ID))
    code, _, err = run("ctr", "logs", "--id", "cc")
    assert code == 1 and "has no log file" in err
