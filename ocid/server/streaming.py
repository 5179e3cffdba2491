"""Streaming RPCs: Exec, Attach and PortForward answer with a URL on ocid's streaming server.

The RPC checks the request and the object now, so errors come back as gRPC statuses; the
streaming server then runs the session through ``StreamBackend`` when the client connects.
"""

from __future__ import annotations

import socket

from cri_api.v1 import api_pb2

from ocid.errors import InvalidArgument
from ocid.lifecycle.service import Lifecycle
from ocid.oci.streams import StreamIO
from ocid.stream.server import AttachCall, ExecCall, PortForwardCall, StreamServer

from . import convert


class StreamBackend:
    """What the streaming server runs, on this daemon's pods and containers."""

    def __init__(self, lifecycle: Lifecycle):
        self.containers = lifecycle.containers
        self.pods = lifecycle.pods

    def exec(self, call: ExecCall, io: StreamIO) -> int:
        return self.containers.exec_stream(call.container_id, list(call.cmd), io, tty=call.tty)

    def attach(self, call: AttachCall, io: StreamIO) -> None:
        self.containers.attach_stream(call.container_id, io, tty=call.tty)

    def dial(self, pod_id: str, port: int) -> socket.socket:
        return self.pods.dial(pod_id, port)


def _check_streams(tty: bool, stdin: bool, stdout: bool, stderr: bool) -> None:
    """The rules of the kubelet's streaming server for the requested streams."""
    if tty and stderr:
        raise InvalidArgument("tty and stderr cannot both be true: a terminal has one output")
    if not (stdin or stdout or stderr):
        raise InvalidArgument("one of stdin, stdout and stderr must be true")


class StreamingHandlers:
    """Thin handlers: validate, then hand out a single-use URL."""

    def __init__(self, lifecycle: Lifecycle, server: StreamServer):
        self.containers = lifecycle.containers
        self.pods = lifecycle.pods
        self.server = server

    def Exec(self, request: api_pb2.ExecRequest) -> api_pb2.ExecResponse:
        cid = convert.require_id(request.container_id, "container_id")
        if not request.cmd:
            raise InvalidArgument("cmd: no command given to run in the container")
        _check_streams(request.tty, request.stdin, request.stdout, request.stderr)
        c = self.containers.check_streamable(cid, stdin=False)
        return api_pb2.ExecResponse(url=self.server.exec_url(ExecCall(
            c.id, tuple(request.cmd), request.tty, request.stdin, request.stdout,
            request.stderr)))

    def Attach(self, request: api_pb2.AttachRequest) -> api_pb2.AttachResponse:
        cid = convert.require_id(request.container_id, "container_id")
        _check_streams(request.tty, request.stdin, request.stdout, request.stderr)
        c = self.containers.check_streamable(cid, stdin=request.stdin)
        return api_pb2.AttachResponse(url=self.server.attach_url(AttachCall(
            c.id, request.tty, request.stdin, request.stdout, request.stderr)))

    def PortForward(self, request: api_pb2.PortForwardRequest) -> api_pb2.PortForwardResponse:
        sb = self.pods.get(convert.require_id(request.pod_sandbox_id, "pod_sandbox_id"))
        for port in request.port:
            if not 0 < port < 65536:
                raise InvalidArgument(f"port {port} is not between 1 and 65535")
        return api_pb2.PortForwardResponse(url=self.server.port_forward_url(
            PortForwardCall(sb.id, tuple(request.port))))
