"""The single error → gRPC status mapping, and ocic's endpoint parsing."""

from __future__ import annotations

import grpc
import pytest

from ocic.client import socket_path
from ocid import errors
from ocid.server.instrument import _is_read_only, status_code


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.InvalidArgument("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.ConfigError("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFound("x"), grpc.StatusCode.NOT_FOUND),
        (errors.AlreadyExists("x"), grpc.StatusCode.ALREADY_EXISTS),
        (errors.FailedPrecondition("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.Unavailable("x"), grpc.StatusCode.UNAVAILABLE),
        (errors.DeadlineExceeded("x"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (errors.InternalError("x"), grpc.StatusCode.INTERNAL),
        (errors.Unimplemented("x"), grpc.StatusCode.UNIMPLEMENTED),
        (errors.OcidError("x"), grpc.StatusCode.UNKNOWN),
    ],
)
def test_each_core_error_has_one_status_code(error, code):
    assert status_code(error) == code


def test_subclasses_inherit_their_parents_code():
    class PodNotFound(errors.NotFound):
        pass

    assert status_code(PodNotFound("pod x")) == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("name", "read_only"),
    [("ListContainers", True), ("PodSandboxStatus", True), ("Version", True), ("Status", True),
     ("ContainerStats", True), ("RunPodSandbox", False), ("RemoveImage", False), ("ExecSync", False)],
)
def test_mutations_are_told_from_reads(name, read_only):
    assert _is_read_only(name) is read_only


@pytest.mark.parametrize(
    ("endpoint", "path"),
    [("/var/run/ocid.sock", "/var/run/ocid.sock"), ("unix:///run/x.sock", "/run/x.sock"),
     ("unix:/run/y.sock", "/run/y.sock"), ("rel.sock", "rel.sock")],
)
def test_endpoints(endpoint, path):
    assert socket_path(endpoint) == path


def test_tcp_endpoints_are_refused_clearly():
    with pytest.raises(errors.InvalidArgument, match="only unix sockets"):
        socket_path("tcp://127.0.0.1:1234")


def test_debug_log_text_of_messages_drops_credentials_and_shortens_big_ones():
    from cri_api.v1 import api_pb2

    from ocid.server.instrument import BRIEF_MAX_BYTES, _brief

    pull = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image="busybox"),
                                    auth=api_pb2.AuthConfig(password="secret"))
    assert "busybox" in _brief(pull) and "secret" not in _brief(pull)
    big = api_pb2.ListContainersResponse(containers=[
        api_pb2.Container(id=f"{i:064x}") for i in range(BRIEF_MAX_BYTES // 64)])
    assert _brief(big) == f"<ListContainersResponse of {big.ByteSize()} bytes>"
