"""ocic's streaming client (exec, attach, port-forward over SPDY and WebSocket) against a real
StreamServer with a fake backend, and the ``ctr exec``, ``ctr attach`` and ``pod port-forward``
commands."""

from __future__ import annotations

import functools
import io
import os
import queue
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from cri_api.v1 import api_pb2

from ocic import streaming
from ocic.cli import main
from ocic.client import CriClient
from ocid import errors
from ocid.oci.streams import StreamIO
from ocid.stream.server import AttachCall, ExecCall, PortForwardCall, StreamServer

pytestmark = pytest.mark.timeout(60)
TRANSPORTS = ["spdy", "websocket"]
POD = "p" * 64
CTR = "c" * 64


def _read_all(read: Any) -> bytes:
    data = b""
    while chunk := read():
        data += chunk
    return data


class FakeBackend:
    """Runs a few canned commands; dials echo servers that prefix replies with the pod port."""

    def __init__(self, echo_ports: dict[int, int]) -> None:
        self.echo_ports = echo_ports
        self.calls: list[Any] = []
        self.sizes: list[tuple[int, int]] = []
        self.dialed: list[int] = []

    def exec(self, call: ExecCall, io: StreamIO) -> int:
        self.calls.append(call)
        name, *args = call.cmd
        if name == "cat":
            assert io.stdin is not None and io.stdout is not None
            io.stdout(_read_all(io.stdin))
            return 0
        if name == "sizes":  # report the first N terminal sizes
            assert io.resizes is not None and io.stdout is not None
            for _ in range(int(args[0])):
                size = io.resizes.get(timeout=10)
                assert size is not None
                self.sizes.append(size)
                io.stdout(b"%dx%d\n" % size)
            return 0
        if name == "fail":
            raise RuntimeError("no such executable")
        # "out ERR CODE": one line on each output, then the exit code
        assert io.stdout is not None and io.stderr is not None
        io.stdout(b"out\n")
        io.stderr(b"err\n")
        return int(args[0]) if args else 0

    def attach(self, call: AttachCall, io: StreamIO) -> None:
        self.calls.append(call)
        assert io.stdout is not None
        io.stdout(b"attached\n")
        if io.stdin is not None:
            io.stdout(_read_all(io.stdin))

    def dial(self, pod_id: str, port: int) -> socket.socket:
        self.dialed.append(port)
        return socket.create_connection(("127.0.0.1", self.echo_ports[port]))


def _echo_server(label: bytes) -> tuple[socket.socket, int]:
    """A TCP server answering ``label:`` and then all it got, once the client half-closes."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                data = _read_all(functools.partial(conn.recv, 4096))
                conn.sendall(label + b":" + data)

    threading.Thread(target=serve, daemon=True).start()
    return listener, listener.getsockname()[1]


@pytest.fixture
def backend() -> Iterator[FakeBackend]:
    servers = {8080: _echo_server(b"8080"), 9090: _echo_server(b"9090")}
    yield FakeBackend({port: real for port, (_, real) in servers.items()})
    for listener, _ in servers.values():
        listener.close()


@pytest.fixture
def server(backend: FakeBackend) -> Iterator[StreamServer]:
    stream_server = StreamServer(backend, "127.0.0.1", 0)
    stream_server.start()
    yield stream_server
    stream_server.stop()


def exec_url(server: StreamServer, *cmd: str, tty: bool = False, stdin: bool = False) -> str:
    return server.exec_url(ExecCall(CTR, tuple(cmd), tty=tty, stdin=stdin, stdout=True,
                                    stderr=not tty))


def run_exec(url: str, transport: str, stdin: bytes | None = None, *, tty: bool = False,
             sizes: Any = None) -> tuple[int, bytes, bytes]:
    out, err = io.BytesIO(), io.BytesIO()
    code = streaming.exec_stream(url, stdin=io.BytesIO(stdin) if stdin is not None else None,
                                 stdout=out, stderr=None if tty else err, tty=tty,
                                 resize_source=sizes, transport=transport)
    return code, out.getvalue(), err.getvalue()


# --- exec and attach ---------------------------------------------------------------------------

@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("code", [0, 3])
def test_exec_streams_output_and_exit_code(server, transport, code):
    url = exec_url(server, "out", str(code))
    assert run_exec(url, transport) == (code, b"out\n", b"err\n")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exec_stdin_round_trip_and_half_close(server, transport):
    data = bytes(range(256)) * 1000  # more than one frame
    code, out, _ = run_exec(exec_url(server, "cat", stdin=True), transport, data)
    assert (code, out) == (0, data)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exec_failure_other_than_exit_code_is_an_internal_error(server, transport):
    with pytest.raises(errors.InternalError, match="no such executable"):
        run_exec(exec_url(server, "fail"), transport)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_tty_sends_initial_size_and_changes(server, backend, transport):
    sizes: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
    sizes.put((100, 30))
    sizes.put((120, 40))
    sizes.put(None)
    code, out, err = run_exec(exec_url(server, "sizes", "2", tty=True, stdin=True), transport,
                              b"", tty=True, sizes=iter(sizes.get, None))
    assert (code, out, err) == (0, b"100x30\n120x40\n", b"")
    assert backend.sizes == [(100, 30), (120, 40)]


def test_resize_message_is_what_go_json_encoder_writes():
    assert streaming.resize_message(100, 30) == b'{"Width":100,"Height":30}\n'


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_attach_ends_when_stdin_ends(server, backend, transport):
    url = server.attach_url(AttachCall(CTR, tty=False, stdin=True, stdout=True, stderr=True))
    out = io.BytesIO()
    code = streaming.attach_stream(url, stdin=io.BytesIO(b"typed\n"), stdout=out,
                                   stderr=io.BytesIO(), transport=transport)
    assert (code, out.getvalue()) == (0, b"attached\ntyped\n")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_used_url_is_a_clear_error(server, transport):
    url = exec_url(server, "out")
    assert run_exec(url, transport)[0] == 0
    with pytest.raises(errors.NotFound, match="expired or was already used"):
        run_exec(url, transport)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_refused_connection_is_a_clear_error(transport):
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    with pytest.raises(errors.Unavailable, match="connection refused"):
        run_exec(f"http://127.0.0.1:{port}/exec/abcdefgh", transport)


def _one_answer_server(answer: bytes) -> tuple[socket.socket, str]:
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    return listener, f"http://127.0.0.1:{listener.getsockname()[1]}/exec/abcdefgh"


def test_no_common_protocol_names_what_the_server_accepts():
    listener, url = _one_answer_server(
        b"HTTP/1.1 403 Forbidden\r\nX-Accepted-Stream-Protocol-Versions: v9.channel.k8s.io\r\n"
        b"Content-Length: 4\r\n\r\nnope")
    with listener, pytest.raises(errors.Unimplemented, match="accepts v9.channel.k8s.io"):
        run_exec(url, "spdy")


def test_websocket_403_says_no_common_protocol():
    listener, url = _one_answer_server(b"HTTP/1.1 403 Forbidden\r\n\r\n")
    with listener, pytest.raises(errors.Unimplemented, match="v5.channel.k8s.io"):
        run_exec(url, "websocket")


def test_v4_status_decoding():
    failure = (b'{"status":"Failure","message":"command terminated with non-zero exit code: '
               b'exit status 3","reason":"NonZeroExitCode","details":{"causes":'
               b'[{"reason":"ExitCode","message":"3"}]}}')
    assert streaming.decode_status(failure, "v4.channel.k8s.io") == 3
    assert streaming.decode_status(b'{"status":"Success"}', "v4.channel.k8s.io") == 0
    assert streaming.decode_status(b"", "v2.channel.k8s.io") == 0
    with pytest.raises(errors.InternalError, match="boom"):
        streaming.decode_status(b"boom", "v2.channel.k8s.io")
    with pytest.raises(errors.InternalError, match="Internal error occurred: x"):
        streaming.decode_status(b'{"status":"Failure","message":"Internal error occurred: x",'
                                b'"reason":"InternalError","code":500}', "v4.channel.k8s.io")


# --- port-forward ------------------------------------------------------------------------------

def _round_trip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        return _read_all(functools.partial(conn.recv, 4096))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_port_forward_two_ports_two_connections_each(server, backend, transport):
    url = server.port_forward_url(PortForwardCall(POD, (8080, 9090)))
    stop, bound = threading.Event(), queue.SimpleQueue()
    lines: list[str] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            streaming.port_forward(url, [("127.0.0.1", 0, 8080), ("127.0.0.1", 0, 9090)],
                                   transport, stop=stop, out=lines.append, err=lines.append,
                                   ready=bound.put)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failure.append(exc)
            bound.put(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    mappings = bound.get(timeout=10)
    assert mappings is not None, failure
    (_, first, _), (_, second, _) = mappings
    for n in range(2):
        assert _round_trip(first, b"a%d" % n) == b"8080:a%d" % n
        assert _round_trip(second, b"b%d" % n) == b"9090:b%d" % n
    stop.set()
    thread.join(10)
    assert not thread.is_alive() and not failure
    assert backend.dialed == [8080, 9090, 8080, 9090]
    assert f"Forwarding from 127.0.0.1:{first} -> 8080" in lines
    assert f"Forwarding from 127.0.0.1:{second} -> 9090" in lines
    assert lines.count(f"Handling connection for {first}") == 2


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_port_forward_used_url_fails_before_listening(server, transport):
    url = server.port_forward_url(PortForwardCall(POD, (8080,)))
    with socket.create_connection(("127.0.0.1", server.port)) as conn:  # use the token up
        path = url.split(str(server.port), 1)[1]
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        conn.recv(4096)
    with pytest.raises(errors.NotFound, match="expired or was already used"):
        streaming.port_forward(url, [("127.0.0.1", 0, 8080)], transport)


def test_port_forward_error_on_a_connection_ends_the_session(server):
    url = server.port_forward_url(PortForwardCall(POD, (7070,)))  # the backend knows no 7070
    bound: queue.SimpleQueue = queue.SimpleQueue()
    lines: list[str] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            streaming.port_forward(url, [("127.0.0.1", 0, 7070)], "spdy", err=lines.append,
                                   ready=bound.put)
        except BaseException as exc:  # noqa: BLE001 - checked below
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    [(_, port, _)] = bound.get(timeout=10)
    _round_trip(port, b"x")
    thread.join(20)
    assert not thread.is_alive()
    [lost] = failure
    assert isinstance(lost, errors.Unavailable) and "lost connection to pod" in str(lost)
    assert any("an error occurred forwarding" in line and "7070" in line for line in lines)


# --- the commands ------------------------------------------------------------------------------

@pytest.fixture
def cri(monkeypatch, server):
    """CriClient.runtime answering Exec/Attach/PortForward with URLs of the real server."""
    requests: list[tuple[str, Any]] = []

    def runtime(self: CriClient, method: str, request: Any) -> Any:
        requests.append((method, request))
        if method == "Exec":
            call = ExecCall(request.container_id, tuple(request.cmd), request.tty, request.stdin,
                            request.stdout, request.stderr)
            return api_pb2.ExecResponse(url=server.exec_url(call))
        if method == "Attach":
            call = AttachCall(request.container_id, request.tty, request.stdin, request.stdout,
                              request.stderr)
            return api_pb2.AttachResponse(url=server.attach_url(call))
        if method == "PortForward":
            call = PortForwardCall(request.pod_sandbox_id, tuple(request.port))
            return api_pb2.PortForwardResponse(url=server.port_forward_url(call))
        raise AssertionError(method)

    monkeypatch.setattr(CriClient, "runtime", runtime)
    return requests


@pytest.fixture
def run(capsysbinary):
    def invoke(*args: str) -> tuple[int, bytes, bytes]:
        code = main(list(args))
        out, err = capsysbinary.readouterr()
        return code, out, err

    return invoke


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_ctr_exec_exits_with_the_command_code_and_prints_nothing_more(cri, run, transport):
    assert run("ctr", "exec", "--id", CTR, "--transport", transport, "out", "3") == \
        (3, b"out\n", b"err\n")
    [(method, request)] = cri
    assert method == "Exec" and list(request.cmd) == ["out", "3"]
    assert (request.stdout, request.stderr, request.stdin, request.tty) == \
        (True, True, False, False)


def test_ctr_exec_interactive_sends_stdin(cri, run, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"from stdin")))
    assert run("ctr", "exec", "--id", CTR, "-i", "cat") == (0, b"from stdin", b"")
    assert cri[0][1].stdin is True


def test_ctr_exec_tty_needs_interactive_and_a_terminal(cri, run, monkeypatch):
    code, _, err = run("ctr", "exec", "--id", CTR, "-t", "sh")
    assert code == 2 and b"-t/--tty needs -i/--interactive" in err
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    code, _, err = run("ctr", "exec", "--id", CTR, "-it", "sh")
    assert code == 2 and b"needs a terminal" in err
    assert cri == []  # no URL asked for, none wasted


def test_ctr_exec_used_url_prints_one_line(cri, run, server, monkeypatch):
    url = exec_url(server, "out")
    run_exec(url, "spdy")
    monkeypatch.setattr(CriClient, "runtime",
                        lambda self, method, request: api_pb2.ExecResponse(url=url))
    code, out, err = run("ctr", "exec", "--id", CTR, "out")
    assert (code, out) == (1, b"")
    assert err.decode().startswith("ocic: streaming URL") and "already used" in err.decode()


def test_ctr_attach(cri, run, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"in\n")))
    assert run("ctr", "attach", "--id", CTR, "-i") == (0, b"attached\nin\n", b"")
    [(method, request)] = cri
    assert method == "Attach"
    assert (request.stdin, request.tty, request.stdout, request.stderr) == (True, False, True, True)


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return probe.getsockname()[1]


def test_pod_port_forward_until_sigint(cri, run):
    local = _free_port()
    answers: list[bytes] = []

    def client() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                answers.append(_round_trip(local, b"hi"))
                break
            except OSError:
                time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=client, daemon=True).start()
    code, out, err = run("pod", "port-forward", "--id", POD, f"{local}:8080", ":9090")
    assert (code, answers) == (0, [b"8080:hi"]), err
    assert f"Forwarding from 127.0.0.1:{local} -> 8080\n".encode() in out
    assert re.search(rb"Forwarding from 127\.0\.0\.1:\d+ -> 9090\n", out)
    [(method, request)] = cri
    assert (method, request.pod_sandbox_id) == ("PortForward", POD)
    assert list(request.port) == [8080, 9090]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("spec", ["http", "0:0", "70000", "1:2:3"])
def test_pod_port_forward_rejects_bad_ports(cri, run, spec):
    code, _, err = run("pod", "port-forward", "--id", POD, spec)
    assert code == 2
    assert b"is not [LOCAL:]REMOTE" in err or b"ports go from 1 to 65535" in err
    assert cri == []


CHILD = """
import sys
from cri_api.v1 import api_pb2
from ocic.cli import main
from ocic.client import CriClient
CriClient.runtime = lambda self, method, request: api_pb2.ExecResponse(url=sys.argv[1])
raise SystemExit(main(["ctr", "exec", "--id", "c", "-it", "sizes", "2"]))
"""


def _set_size(fd: int, width: int, height: int) -> None:
    import fcntl
    import struct
    import termios

    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


def test_ctr_exec_tty_raw_mode_sizes_and_restore(server, backend):
    import subprocess
    import termios

    url = exec_url(server, "sizes", "2", tty=True, stdin=True)
    master, slave = os.openpty()
    try:
        _set_size(master, 100, 30)
        before = termios.tcgetattr(slave)
        child = subprocess.Popen([sys.executable, "-c", CHILD, url], stdin=slave, stdout=slave,
                                 stderr=slave, start_new_session=True)
        deadline = time.monotonic() + 20
        while not backend.sizes and time.monotonic() < deadline:
            time.sleep(0.02)
        assert backend.sizes == [(100, 30)]
        assert not termios.tcgetattr(slave)[3] & termios.ICANON  # raw while it runs
        _set_size(master, 120, 40)
        child.send_signal(signal.SIGWINCH)
        assert child.wait(20) == 0
        assert backend.sizes == [(100, 30), (120, 40)]
        assert os.read(master, 4096) == b"100x30\n120x40\n"
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)
