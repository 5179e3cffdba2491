"""A small CRI v1 client: one channel to a unix-socket endpoint, errors turned into OcidErrors."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import grpc
from cri_api.v1 import api_pb2_grpc

from ocid import errors

DEFAULT_ENDPOINT = "/var/run/ocid.sock"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

_CODE_ERRORS: dict[grpc.StatusCode, type[errors.OcidError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
}


class ConnectError(errors.Unavailable):
    """The endpoint cannot be reached at all."""


def socket_path(endpoint: str) -> str:
    """The filesystem path of a ``unix://`` URL or a bare socket path."""
    if endpoint.startswith("unix://"):
        return endpoint[len("unix://"):]
    if endpoint.startswith("unix:"):
        return endpoint[len("unix:"):]
    if "://" in endpoint:
        raise errors.InvalidArgument(f"unsupported endpoint {endpoint!r}: only unix sockets are supported")
    return endpoint


def _unreachable_reason(path: str, details: str) -> str:
    if not os.path.exists(path):
        return "no such socket"
    if not os.access(path, os.R_OK | os.W_OK):
        return "permission denied"
    return details or "connection refused"


@dataclass
class CriClient:
    """Calls RuntimeService and ImageService methods on one endpoint with one timeout."""

    endpoint: str = DEFAULT_ENDPOINT
    timeout: float = 10.0
    _channel: grpc.Channel | None = field(default=None, repr=False)

    @property
    def path(self) -> str:
        return socket_path(self.endpoint)

    def _stubs(self) -> tuple[Any, Any]:
        if self._channel is None:
            # 16 MiB answers, as the kubelet allows (ListContainers, ExecSync output).
            self._channel = grpc.insecure_channel(
                f"unix://{os.path.abspath(self.path)}",
                options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
            self._runtime = api_pb2_grpc.RuntimeServiceStub(self._channel)
            self._image = api_pb2_grpc.ImageServiceStub(self._channel)
        return self._runtime, self._image

    def runtime(self, method: str, request: Any) -> Any:
        """Call a RuntimeService method."""
        return self._call(self._stubs()[0], method, request)

    def image(self, method: str, request: Any) -> Any:
        """Call an ImageService method."""
        return self._call(self._stubs()[1], method, request)

    def _call(self, stub: Any, method: str, request: Any) -> Any:
        try:
            return getattr(stub, method)(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise self._translate(method, exc) from None

    def _translate(self, method: str, exc: grpc.RpcError) -> errors.OcidError:
        code, details = exc.code(), exc.details() or ""
        connect_failure = code == grpc.StatusCode.UNAVAILABLE and (
            "connect" in details.lower() or not os.path.exists(self.path))
        if connect_failure:
            reason = _unreachable_reason(self.path, details)
            return ConnectError(f"cannot connect to ocid at {self.path}: {reason}: is ocid running?")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return errors.DeadlineExceeded(f"{method}: no answer within {self.timeout:g}s (--timeout)")
        error_class = _CODE_ERRORS.get(code, errors.OcidError)
        return error_class(f"{method}: {details} ({code.name})")

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
