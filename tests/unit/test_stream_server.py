"""The streaming server's protocols against a fake backend: tokens, upgrades, exec/attach over
SPDY and WebSocket, port-forward over SPDY, WebSocket channels and the SPDY-over-WebSocket tunnel.

Clients are built from our spdy.Session (client role) after a hand-written upgrade request,
and from websockets' sync client. Real containers are tested end to end elsewhere.
"""

from __future__ import annotations

import base64
import errno
import json
import queue
import shutil
import socket
import socketserver
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Opcode
from websockets.protocol import State
from websockets.sync.client import ClientConnection, connect
from websockets.uri import parse_uri

from ocid.errors import ResourceExhausted
from ocid.oci.streams import StreamIO
from ocid.stream import portforward, spdy
from ocid.stream.server import AttachCall, ExecCall, PortForwardCall, StreamServer

pytestmark = pytest.mark.timeout(30)

ALL_VERSIONS = ["v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io",
                "v2.channel.k8s.io", "channel.k8s.io"]
EXIT3 = (b'{"status":"Failure","message":"command terminated with non-zero exit code: '
         b'exit status 3","reason":"NonZeroExitCode","details":{"causes":'
         b'[{"reason":"ExitCode","message":"3"}]}}')
SUCCESS = b'{"status":"Success"}'
REFUSED_PORT = 9999


# --- a fake backend and a fake pod -------------------------------------------------------------


class Pod:
    """Two TCP services standing in for the pod: each reads a line and answers '<name>:<line>'."""

    def __init__(self) -> None:
        self.servers: dict[int, socketserver.ThreadingTCPServer] = {}
        for pod_port, name in ((8080, b"a"), (9090, b"b")):
            class Handler(socketserver.StreamRequestHandler):
                prefix = name

                def handle(self) -> None:
                    line = self.rfile.readline()
                    self.wfile.write(self.prefix + b":" + line)

            server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
            self.servers[pod_port] = server

    def dial(self, port: int) -> socket.socket:
        if port not in self.servers:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "connect: connection refused")
        return socket.create_connection(self.servers[port].server_address)

    def close(self) -> None:
        for server in self.servers.values():
            server.shutdown()
            server.server_close()


class FakeBackend:
    """Runs ``exec_fn``/``attach_fn`` and dials the fake pod; records what it was given."""

    def __init__(self, pod: Pod) -> None:
        self.pod = pod
        self.exec_fn: Callable[[ExecCall, StreamIO], int] = lambda call, io: 0
        self.attach_fn: Callable[[AttachCall, StreamIO], None] = lambda call, io: None
        self.calls: list[object] = []
        self.dials: list[tuple[str, int]] = []

    def exec(self, call: ExecCall, io: StreamIO) -> int:
        self.calls.append(call)
        return self.exec_fn(call, io)

    def attach(self, call: AttachCall, io: StreamIO) -> None:
        self.calls.append(call)
        self.attach_fn(call, io)

    def dial(self, pod_id: str, port: int) -> socket.socket:
        self.dials.append((pod_id, port))
        return self.pod.dial(port)


@pytest.fixture
def backend() -> Iterator[FakeBackend]:
    pod = Pod()
    yield FakeBackend(pod)
    pod.close()


@pytest.fixture
def server(backend: FakeBackend, monkeypatch: pytest.MonkeyPatch) -> Iterator[StreamServer]:
    monkeypatch.setattr(portforward, "GRACE", 0.2)
    srv = StreamServer(backend, "127.0.0.1", 0, stream_creation_timeout=3)
    srv.start()
    yield srv
    srv.stop()


def cat_exec(call: ExecCall, io: StreamIO) -> int:
    """stdin to stdout until EOF."""
    assert io.stdin is not None and io.stdout is not None
    while data := io.stdin():
        io.stdout(data)
    return 0


def out_err_exit3(call: ExecCall, io: StreamIO) -> int:
    assert io.stdout is not None and io.stderr is not None
    io.stdout(b"out\n")
    io.stderr(b"err\n")
    return 3


# --- clients -----------------------------------------------------------------------------------


def http_request(url: str, headers: list[tuple[str, str]], *, method: str = "POST",
                 tls: ssl.SSLContext | None = None
                 ) -> tuple[socket.socket, int, list[tuple[str, str]], bytes]:
    """Send a request by hand; the socket, status, headers and (non-101) body."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    if tls is not None:
        sock = tls.wrap_socket(sock, server_hostname="localhost")
    lines = [f"{method} {parts.path} HTTP/1.1", f"Host: {parts.netloc}",
             "User-Agent: Go-http-client/1.1", "Content-Length: 0",
             *(f"{k}: {v}" for k, v in headers)]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        assert byte, f"connection closed in the response head: {head!r}"
        head += byte
    status_line, *header_lines = head.decode("latin-1").split("\r\n")[:-2]
    status = int(status_line.split()[1])
    reply = [(k, v.strip()) for k, v in (line.split(":", 1) for line in header_lines)]
    body = b""
    if status != 101:
        length = int(next((v for k, v in reply if k.lower() == "content-length"), "0"))
        while len(body) < length:
            chunk = sock.recv(length - len(body))
            if not chunk:
                break
            body += chunk
    sock.settimeout(None)
    return sock, status, reply, body


def spdy_upgrade(url: str, protocols: list[str], **kwargs: object
                 ) -> tuple[socket.socket, int, list[tuple[str, str]], bytes]:
    headers = [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")]
    headers += [("X-Stream-Protocol-Version", p) for p in protocols]
    return http_request(url, headers, **kwargs)  # type: ignore[arg-type]


def header_values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in headers if k.lower() == name.lower()]


def read_all(stream: spdy.Stream) -> bytes:
    out = b""
    while chunk := stream.read():
        out += chunk
    return out


def spdy_client(url: str, protocols: list[str], types: list[str], **kwargs: object
                ) -> tuple[spdy.Session, dict[str, spdy.Stream], str]:
    """Upgrade, then open the streams in client-go's order; (session, streams, protocol)."""
    sock, status, headers, body = spdy_upgrade(url, protocols, **kwargs)
    assert status == 101, body
    session = spdy.Session(sock, server=False)
    session.start()
    streams = {t: session.open_stream({"streamtype": t}, timeout=5) for t in types}
    return session, streams, header_values(headers, "X-Stream-Protocol-Version")[0]


def ws_url(url: str) -> str:
    return "ws" + url[len("http"):]


def ws_messages(ws: ClientConnection) -> list[bytes | str]:
    """Every message until the server closes (which must be a normal close)."""
    out: list[bytes | str] = []
    while True:
        try:
            out.append(ws.recv(timeout=10))
        except ConnectionClosed:
            break
    assert ws.close_code == 1000
    return out


# --- tokens and handshakes ---------------------------------------------------------------------


def test_url_shape(server: StreamServer) -> None:
    url = server.exec_url(ExecCall("c1", ("true",), False, False, True, False))
    parts = urlsplit(url)
    assert parts.scheme == "http" and parts.netloc == f"127.0.0.1:{server.port}"
    kind, token = parts.path.strip("/").split("/")
    assert kind == "exec" and len(token) == 8
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert server.attach_url(AttachCall("c1", False, True, True, True)).split("/")[-2] == "attach"
    assert server.port_forward_url(PortForwardCall("p", (80,))).split("/")[-2] == "portforward"


def test_ipv6_url_is_bracketed(backend: FakeBackend) -> None:
    srv = StreamServer(backend, "::1", 4711)
    assert srv.base_url == "http://[::1]:4711"


def test_token_is_single_use_even_after_a_failed_upgrade(server: StreamServer) -> None:
    url = server.exec_url(ExecCall("c1", ("true",), False, False, True, False))
    _, status, _, body = http_request(url, [])  # no upgrade at all: 400, token used up
    assert status == 400 and b"X-Stream-Protocol-Version" in body
    _, status, _, body = spdy_upgrade(url, ALL_VERSIONS)
    assert (status, body) == (404, b"404 page not found\n")


def test_unknown_wrong_kind_and_bad_paths_are_404(server: StreamServer) -> None:
    base = server.base_url
    for path in ("/exec/AAAAAAAA", "/nothing/here", "/exec/", "/"):
        _, status, _, body = spdy_upgrade(base + path, ALL_VERSIONS, method="GET")
        assert (status, body) == (404, b"404 page not found\n"), path
    token = server.exec_url(ExecCall("c1", ("true",), False, False, True, False)).split("/")[-1]
    _, status, _, _ = spdy_upgrade(f"{base}/attach/{token}", ALL_VERSIONS)
    assert status == 404
    _, status, _, _ = spdy_upgrade(f"{base}/exec/{token}", ALL_VERSIONS)  # consumed above
    assert status == 404


def test_token_expires(backend: FakeBackend) -> None:
    srv = StreamServer(backend, "127.0.0.1", 0, token_ttl=0.05)
    srv.start()
    try:
        url = srv.exec_url(ExecCall("c1", ("true",), False, False, True, False))
        time.sleep(0.1)
        _, status, _, _ = spdy_upgrade(url, ALL_VERSIONS)
        assert status == 404
    finally:
        srv.stop()


def test_too_many_tokens(backend: FakeBackend) -> None:
    srv = StreamServer(backend, "127.0.0.1", 0, max_tokens=2)
    call = PortForwardCall("p", ())
    srv.port_forward_url(call)
    srv.port_forward_url(call)
    with pytest.raises(ResourceExhausted, match="maximum number of in-flight streaming requests"):
        srv.port_forward_url(call)


def test_missing_protocol_header_is_400(server: StreamServer) -> None:
    url = server.exec_url(ExecCall("c1", ("true",), False, False, True, False))
    _, status, _, body = spdy_upgrade(url, [])
    assert status == 400
    assert body.startswith(b"unable to upgrade: header X-Stream-Protocol-Version does not exist")


def test_no_common_protocol_is_403_with_accepted_versions(server: StreamServer) -> None:
    url = server.exec_url(ExecCall("c1", ("true",), False, False, True, False))
    _, status, headers, body = spdy_upgrade(url, ["v5.channel.k8s.io"])
    assert status == 403
    assert header_values(headers, "X-Accepted-Stream-Protocol-Versions") == [
        "v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"]
    assert body.startswith(b"unable to upgrade: unable to negotiate protocol")


def test_client_order_wins_and_upgrade_headers_are_checked(server: StreamServer) -> None:
    call = ExecCall("c1", ("true",), False, False, True, False)
    sock, status, headers, _ = spdy_upgrade(server.exec_url(call),
                                            ["v5.channel.k8s.io, v3.channel.k8s.io",
                                             "v4.channel.k8s.io"])
    sock.close()
    assert status == 101
    assert header_values(headers, "X-Stream-Protocol-Version") == ["v3.channel.k8s.io"]
    assert header_values(headers, "Upgrade") == ["SPDY/3.1"]
    _, status, _, _ = http_request(server.exec_url(call), [
        ("Connection", "Upgrade"), ("Upgrade", "h2c"),
        ("X-Stream-Protocol-Version", "v4.channel.k8s.io")])
    assert status == 400


# --- exec and attach over SPDY -----------------------------------------------------------------


def test_exec_spdy_v4_exit_code(server: StreamServer, backend: FakeBackend) -> None:
    backend.exec_fn = out_err_exit3
    call = ExecCall("c1", ("sh", "-c", "exit 3"), False, False, True, True)
    session, streams, protocol = spdy_client(server.exec_url(call), ALL_VERSIONS,
                                             ["error", "stdout", "stderr"])
    assert protocol == "v4.channel.k8s.io"  # offered v5 first: not served over SPDY
    assert read_all(streams["stdout"]) == b"out\n"
    assert read_all(streams["stderr"]) == b"err\n"
    assert read_all(streams["error"]) == EXIT3
    assert session.wait_closed(5)  # the server's GOAWAY
    assert backend.calls == [call]


def test_exec_spdy_v4_success_and_stdin_round_trip(server: StreamServer,
                                                   backend: FakeBackend) -> None:
    backend.exec_fn = cat_exec
    call = ExecCall("c1", ("cat",), False, True, True, False)
    session, streams, _ = spdy_client(server.exec_url(call), ALL_VERSIONS,
                                      ["error", "stdin", "stdout"])
    streams["stdin"].write(b"hello ")
    streams["stdin"].write(b"world")
    streams["stdin"].close()
    assert read_all(streams["stdout"]) == b"hello world"
    assert read_all(streams["error"]) == SUCCESS
    assert session.wait_closed(5)


def test_exec_spdy_v2_status_is_text(server: StreamServer, backend: FakeBackend) -> None:
    backend.exec_fn = out_err_exit3
    call = ExecCall("c1", ("sh",), False, False, True, True)
    session, streams, protocol = spdy_client(server.exec_url(call), ["v2.channel.k8s.io"],
                                             ["error", "stdout", "stderr"])
    assert protocol == "v2.channel.k8s.io"
    assert read_all(streams["stdout"]) == b"out\n"
    assert read_all(streams["error"]) == (
        b"command terminated with non-zero exit code: exit status 3")
    assert session.wait_closed(5)


def test_exec_spdy_v2_success_sends_nothing(server: StreamServer, backend: FakeBackend) -> None:
    call = ExecCall("c1", ("true",), False, False, True, False)
    session, streams, _ = spdy_client(server.exec_url(call), ["v2.channel.k8s.io"],
                                      ["error", "stdout"])
    assert read_all(streams["error"]) == b""
    assert session.wait_closed(5)


def test_exec_spdy_v1_resets_the_error_stream(server: StreamServer,
                                              backend: FakeBackend) -> None:
    backend.exec_fn = out_err_exit3
    call = ExecCall("c1", ("sh",), False, False, True, True)
    session, streams, protocol = spdy_client(server.exec_url(call), ["channel.k8s.io"],
                                             ["error", "stdout", "stderr"])
    assert protocol == "channel.k8s.io"
    assert read_all(streams["stdout"]) == b"out\n"
    assert read_all(streams["error"]) == b""  # reset at setup, as 1.0 kubelets did
    assert streams["error"].reset_status == spdy.CANCEL
    assert session.wait_closed(5)


def test_missing_streams_time_out(backend: FakeBackend) -> None:
    srv = StreamServer(backend, "127.0.0.1", 0, stream_creation_timeout=0.3)
    srv.start()
    try:
        call = ExecCall("c1", ("true",), False, False, True, True)
        session, _, _ = spdy_client(srv.exec_url(call), ALL_VERSIONS, ["error", "stdout"])
        assert session.wait_closed(5)  # no stderr stream: the server gives up and closes
        assert backend.calls == []
    finally:
        srv.stop()


def test_exec_spdy_tty_resize(server: StreamServer, backend: FakeBackend) -> None:
    def sizes(call: ExecCall, io: StreamIO) -> int:
        assert io.resizes is not None and io.stdout is not None and io.stderr is None
        for _ in range(2):
            width, height = io.resizes.get(timeout=5)  # type: ignore[misc]
            io.stdout(f"{width}x{height}\n".encode())
        return 0

    backend.exec_fn = sizes
    call = ExecCall("c1", ("sh",), True, True, True, False)
    session, streams, _ = spdy_client(server.exec_url(call), ALL_VERSIONS,
                                      ["error", "stdin", "stdout", "resize"])
    streams["resize"].write(b'{"Width":100,"Height":30}\n')
    streams["resize"].write(b'{"Width":120,')  # a value split over two frames
    streams["resize"].write(b'"Height":40}\n')
    assert read_all(streams["stdout"]) == b"100x30\n120x40\n"
    assert read_all(streams["error"]) == SUCCESS
    assert session.wait_closed(5)


def test_backend_error_is_internal_error_status(server: StreamServer,
                                                backend: FakeBackend) -> None:
    def broken(call: AttachCall, io: StreamIO) -> None:
        raise OSError("no attach socket")

    backend.attach_fn = broken
    call = AttachCall("c1", False, False, True, True)
    session, streams, _ = spdy_client(server.attach_url(call), ALL_VERSIONS,
                                      ["error", "stdout", "stderr"])
    status = json.loads(read_all(streams["error"]))
    assert status == {"status": "Failure",
                      "message": "Internal error occurred: error attaching to container: "
                                 "no attach socket",
                      "reason": "InternalError", "code": 500}
    assert session.wait_closed(5)


def test_attach_ends_at_stdin_half_close(server: StreamServer, backend: FakeBackend) -> None:
    def attach(call: AttachCall, io: StreamIO) -> None:
        assert io.stdin is not None and io.stdout is not None
        while data := io.stdin():
            io.stdout(data.upper())

    backend.attach_fn = attach
    call = AttachCall("c1", False, True, True, False)
    session, streams, _ = spdy_client(server.attach_url(call), ALL_VERSIONS,
                                      ["error", "stdin", "stdout"])
    streams["stdin"].write(b"hi")
    streams["stdin"].close()
    assert read_all(streams["stdout"]) == b"HI"
    assert read_all(streams["error"]) == SUCCESS
    assert session.wait_closed(5)


def test_spdy_over_tls(backend: FakeBackend, tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    srv = StreamServer(backend, "127.0.0.1", 0, tls_cert=str(cert), tls_key=str(key))
    srv.start()
    try:
        backend.exec_fn = out_err_exit3
        url = srv.exec_url(ExecCall("c1", ("sh",), False, False, True, True))
        assert url.startswith("https://127.0.0.1:")
        client = ssl.create_default_context(cafile=str(cert))
        client.check_hostname = False
        session, streams, _ = spdy_client(url, ALL_VERSIONS, ["error", "stdout", "stderr"],
                                          tls=client)
        assert read_all(streams["stdout"]) == b"out\n"
        assert read_all(streams["error"]) == EXIT3
        assert session.wait_closed(5)
    finally:
        srv.stop()


# --- exec over WebSocket -----------------------------------------------------------------------


def test_exec_websocket_v4_binary(server: StreamServer, backend: FakeBackend) -> None:
    backend.exec_fn = out_err_exit3
    url = server.exec_url(ExecCall("c1", ("sh",), False, False, True, True))
    with connect(ws_url(url), subprotocols=["v4.channel.k8s.io"]) as ws:
        assert ws.subprotocol == "v4.channel.k8s.io"
        messages = ws_messages(ws)
    assert messages == [b"\x01", b"\x01out\n", b"\x02err\n", b"\x03" + EXIT3]


def test_exec_websocket_v4_base64(server: StreamServer, backend: FakeBackend) -> None:
    backend.exec_fn = cat_exec
    url = server.exec_url(ExecCall("c1", ("cat",), False, True, True, False))
    with connect(ws_url(url), subprotocols=["v4.base64.channel.k8s.io"]) as ws:
        assert ws.recv(timeout=5) == "1"  # the ready message: empty stdout
        ws.send("0" + base64.b64encode(b"ping").decode())
        assert ws.recv(timeout=5) == "1" + base64.b64encode(b"ping").decode()
        ws.close()  # no stdin half-close before v5: the close is the EOF
    assert backend.calls


def test_exec_websocket_v5_stdin_close(server: StreamServer, backend: FakeBackend) -> None:
    backend.exec_fn = cat_exec
    url = server.exec_url(ExecCall("c1", ("cat",), False, True, True, False))
    with connect(ws_url(url), subprotocols=["v5.channel.k8s.io"]) as ws:
        assert ws.subprotocol == "v5.channel.k8s.io"
        ws.send(b"\x00hello")
        ws.send(b"\xff\x00")  # CLOSE stdin
        messages = ws_messages(ws)
    assert messages == [b"\x01", b"\x01hello", b"\x03" + SUCCESS]


def test_exec_websocket_v1_text_status_and_resize(server: StreamServer,
                                                  backend: FakeBackend) -> None:
    got: queue.Queue[tuple[int, int] | None] = queue.Queue()

    def tty(call: ExecCall, io: StreamIO) -> int:
        assert io.resizes is not None
        got.put(io.resizes.get(timeout=5))
        return 2

    backend.exec_fn = tty
    url = server.exec_url(ExecCall("c1", ("sh",), True, True, True, False))
    with connect(ws_url(url), subprotocols=["channel.k8s.io"]) as ws:
        ws.send(b'\x04{"Width":80,"Height":24}')
        messages = ws_messages(ws)
    assert got.get(timeout=1) == (80, 24)
    assert messages == [b"\x01", b"\x03command terminated with non-zero exit code: exit status 2"]


def test_websocket_refusals(server: StreamServer) -> None:
    call = ExecCall("c1", ("true",), False, False, True, False)
    with pytest.raises(InvalidStatus) as info:
        connect(ws_url(server.exec_url(call)), subprotocols=["v9.channel.k8s.io"])
    assert info.value.response.status_code == 403
    assert info.value.response.body == b""
    with pytest.raises(InvalidStatus) as info:
        connect(ws_url(server.port_forward_url(PortForwardCall("p", ()))),
                subprotocols=["portforward.k8s.io"])
    assert info.value.response.status_code == 403
    url = server.exec_url(call)
    _, status, _, _ = http_request(url, [("Connection", "Upgrade"), ("Upgrade", "websocket"),
                                         ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                                         ("Sec-WebSocket-Version", "13")], method="POST")
    assert status == 405


def test_websocket_without_offer_echoes_empty_protocol(server: StreamServer) -> None:
    url = server.port_forward_url(PortForwardCall("p", ()))
    sock, status, headers, _ = http_request(url, [
        ("Connection", "Upgrade"), ("Upgrade", "websocket"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13")],
        method="GET")
    assert status == 101
    assert header_values(headers, "Sec-WebSocket-Protocol") == [""]
    assert header_values(headers, "Sec-WebSocket-Accept") == ["s3pPLMBiTxaQ9kYGzzhZRbK+xOo="]
    # No ports: the server closes at once with 1000 (a close frame: 0x88, length 2, 03 e8).
    assert sock.recv(4) == b"\x88\x02\x03\xe8"
    sock.close()


# --- port-forward ------------------------------------------------------------------------------


def test_port_forward_spdy_two_connections_and_a_refused_port(
        server: StreamServer, backend: FakeBackend) -> None:
    url = server.port_forward_url(PortForwardCall("pod1", ()))
    sock, status, headers, _ = spdy_upgrade(url, ["portforward.k8s.io"])
    assert status == 101
    assert header_values(headers, "X-Stream-Protocol-Version") == ["portforward.k8s.io"]
    session = spdy.Session(sock, server=False)
    session.start()
    ids = []
    for request_id, port, answer in ((0, 8080, b"a:one\n"), (1, 9090, b"b:two\n")):
        common = {"port": str(port), "requestid": str(request_id)}
        error = session.open_stream({"streamtype": "error", **common})
        error.close()
        data = session.open_stream({"streamtype": "data", **common})
        data.write(answer[2:])
        data.close()
        assert read_all(data) == answer
        assert read_all(error) == b""
        ids += [error.id, data.id]
    assert ids == [1, 3, 5, 7]

    common = {"port": str(REFUSED_PORT), "requestid": "2"}
    error = session.open_stream({"streamtype": "error", **common})
    error.close()
    data = session.open_stream({"streamtype": "data", **common})
    assert read_all(error) == (b"error forwarding port 9999 to pod pod1, uid : "
                               b"connect: connection refused")
    assert read_all(data) == b""
    assert backend.dials == [("pod1", 8080), ("pod1", 9090), ("pod1", 9999)]

    # A stream without a valid port, or of an unknown type, is reset.
    with pytest.raises(spdy.StreamRefused):
        session.open_stream({"streamtype": "data", "requestid": "3"})
    with pytest.raises(spdy.StreamRefused):
        session.open_stream({"streamtype": "data", "port": "70000", "requestid": "3"})
    with pytest.raises(spdy.StreamRefused):
        session.open_stream({"streamtype": "stdin", "port": "80", "requestid": "3"})
    session.close()


def test_port_forward_websocket_channels(server: StreamServer, backend: FakeBackend) -> None:
    url = server.port_forward_url(PortForwardCall("pod1", (8080, 9090)))
    with connect(ws_url(url), subprotocols=["v4.channel.k8s.io"]) as ws:
        first = [ws.recv(timeout=5) for _ in range(4)]
        assert first == [b"\x00\x90\x1f", b"\x01\x90\x1f", b"\x02\x82\x23", b"\x03\x82\x23"]
        ws.send(b"\x00hello\n")
        ws.send(b"\x02world\n")
        rest = ws_messages(ws)
    by_channel: dict[int, bytes] = {}
    for msg in rest:
        assert isinstance(msg, bytes)
        by_channel[msg[0]] = by_channel.get(msg[0], b"") + msg[1:]
    assert by_channel == {0: b"a:hello\n", 2: b"b:world\n"}


def test_port_forward_websocket_refused_port(server: StreamServer) -> None:
    url = server.port_forward_url(PortForwardCall("pod1", (REFUSED_PORT,)))
    with connect(ws_url(url), subprotocols=["v4.base64.channel.k8s.io"]) as ws:
        messages = ws_messages(ws)
    port = base64.b64encode(b"\x0f\x27").decode()
    text = b"error forwarding port 9999 to pod pod1, uid : connect: connection refused"
    assert messages == ["0" + port, "1" + port, "1" + base64.b64encode(text).decode()]


class TunnelClient:
    """A WebSocket client for the tunnel, as a byte-stream Transport for a SPDY client session.

    websockets' own client refuses ``SPDY/3.1+portforward.k8s.io`` (not an HTTP token), so the
    handshake is written by hand and websockets' sans-I/O ClientProtocol does the framing.
    """

    def __init__(self, url: str):
        sock, status, headers, body = http_request(url, [
            ("Connection", "Upgrade"), ("Upgrade", "websocket"),
            ("Sec-WebSocket-Key", base64.b64encode(b"0123456789abcdef").decode()),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Protocol", "SPDY/3.1+portforward.k8s.io")], method="GET")
        assert status == 101, body
        self.subprotocol = header_values(headers, "Sec-WebSocket-Protocol")[0]
        self.sock = sock
        self.proto = ClientProtocol(parse_uri(ws_url(url)), state=State.OPEN)
        self.lock = threading.Lock()
        self.buf = b""

    def recv(self, n: int) -> bytes:
        while not self.buf:
            try:
                data = self.sock.recv(65536)
            except OSError:
                data = b""
            with self.lock:
                if data:
                    self.proto.receive_data(data)
                else:
                    self.proto.receive_eof()
                frames = self.proto.events_received()
                self._flush()
            if not data:
                return b""
            self.buf += b"".join(f.data for f in frames if f.opcode in (Opcode.BINARY,
                                                                         Opcode.CONT))
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def sendall(self, data: bytes) -> None:
        with self.lock:
            # Split like Go does: message boundaries must not matter to the server.
            for i in range(0, len(data), 5):
                self.proto.send_binary(data[i:i + 5])
            self._flush()

    def close(self) -> None:
        with self.lock:
            if self.proto.state is State.OPEN:
                self.proto.send_close(1000)
                self._flush()
        self.sock.close()

    def _flush(self) -> None:
        for chunk in self.proto.data_to_send():
            if chunk:
                self.sock.sendall(chunk)


def test_port_forward_spdy_over_websocket(server: StreamServer) -> None:
    url = server.port_forward_url(PortForwardCall("pod1", ()))
    tunnel = TunnelClient(url)
    assert tunnel.subprotocol == "SPDY/3.1+portforward.k8s.io"
    session = spdy.Session(tunnel, server=False)
    session.start()
    for request_id, port, answer in ((0, 8080, b"a:x\n"), (1, 9090, b"b:y\n")):
        common = {"port": str(port), "requestid": str(request_id)}
        error = session.open_stream({"streamtype": "error", **common})
        error.close()
        data = session.open_stream({"streamtype": "data", **common})
        data.write(answer[2:])
        data.close()
        assert read_all(data) == answer
        assert read_all(error) == b""
    assert session.ping() >= 0
    session.close()
    assert session.wait_closed(5)


def test_a_slow_request_head_is_cut_at_one_deadline(backend: FakeBackend,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import ocid.stream.server as server_module

    monkeypatch.setattr(server_module, "HEADER_TIMEOUT", 1.0)
    srv = StreamServer(backend, "127.0.0.1", 0)
    srv.start()
    try:
        host, port = srv.base_url.split("//", 1)[1].split(":")
        started = time.monotonic()
        with socket.create_connection((host, int(port))) as conn:
            conn.settimeout(0.2)
            closed = False
            for byte in b"GET /exec/xxxxxxxx HTTP/1.1\r\n":  # one byte every 0.2 s: slowloris
                try:
                    conn.sendall(bytes([byte]))
                    if conn.recv(1) == b"":
                        closed = True
                        break
                except socket.timeout:
                    continue
                except OSError:
                    closed = True
                    break
        assert closed and time.monotonic() - started < 3
    finally:
        srv.stop()
