"""Exec, Attach and PortForward end to end: CRI URL → ocid's streaming server → real
containers, over SPDY and WebSocket, with ocic's clients."""

from __future__ import annotations

import io
import socket
import threading
import time
import urllib.error
import urllib.request

import grpc
import pytest
from cri_api.v1 import api_pb2

from ocic import streaming
from ocid.errors import Unavailable
from tests.integration.test_lifecycle import SLEEP, _pod
from tests.support.cri import container_config, wait_for

TRANSPORTS = ["spdy", "websocket"]


def _exec_url(cri, cid: str, *cmd: str, tty: bool = False, stdin: bool = False) -> str:
    return cri.call("Exec", api_pb2.ExecRequest(container_id=cid, cmd=cmd, tty=tty, stdin=stdin,
                                                stdout=True, stderr=not tty)).url


def _exec(cri, cid: str, *cmd: str, transport: str, stdin: bytes | None = None,
          tty: bool = False, sizes=None) -> tuple[int, bytes, bytes]:
    url = _exec_url(cri, cid, *cmd, tty=tty, stdin=stdin is not None)
    out, err = io.BytesIO(), io.BytesIO()
    code = streaming.exec_stream(url, stdin=io.BytesIO(stdin) if stdin is not None else None,
                                 stdout=out, stderr=None if tty else err, tty=tty,
                                 resize_source=sizes, transport=transport)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def ctr(cri):
    pod_id, _ = _pod(cri)
    cri.pod_id = pod_id
    return cri.run(pod_id, container_config(cri.image, SLEEP))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exec_output_exit_codes_and_stdin(cri, ctr, transport):
    assert _exec(cri, ctr, "sh", "-c", "echo out; echo err >&2", transport=transport) == \
        (0, b"out\n", b"err\n")
    assert _exec(cri, ctr, "sh", "-c", "exit 3", transport=transport)[0] == 3
    code, out, _ = _exec(cri, ctr, "cat", transport=transport, stdin=b"round trip\n")
    assert (code, out) == (0, b"round trip\n")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exec_with_a_tty_and_resize(cri, ctr, transport):
    code, out, _ = _exec(cri, ctr, "sh", "-c", "[ -t 1 ] && sleep 0.5 && stty size",
                         transport=transport, tty=True, stdin=b"", sizes=iter([(100, 30)]))
    assert code == 0 and out.strip().endswith(b"30 100")


def test_ten_parallel_execs(cri, ctr):
    results: dict[int, tuple] = {}

    def one(n: int) -> None:
        results[n] = _exec(cri, ctr, "sh", "-c", f"echo {n}; exit {n}",
                           transport=TRANSPORTS[n % 2])

    threads = [threading.Thread(target=one, args=(n,)) for n in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {n: (n, f"{n}\n".encode(), b"") for n in range(10)}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_urls_are_single_use_and_need_a_known_token(cri, ctr, transport):
    url = _exec_url(cri, ctr, "sh", "-c", "echo ran >> /tmp/runs")
    assert _exec_with_url(url, transport) == 0
    with pytest.raises(Exception, match="404|expired or was already used"):
        _exec_with_url(url, transport)
    assert cri.exec(ctr, "cat", "/tmp/runs").stdout == b"ran\n"  # it ran once only
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url.rsplit("/", 1)[0] + "/AAAAAAAA", timeout=5)  # noqa: S310
    assert err.value.code == 404


def _exec_with_url(url: str, transport: str = "spdy") -> int:
    return streaming.exec_stream(url, stdin=None, stdout=io.BytesIO(), stderr=io.BytesIO(),
                                 transport=transport)


def test_bad_streaming_requests_get_clear_errors(cri, ctr):
    with pytest.raises(grpc.RpcError) as err:
        cri.call("Exec", api_pb2.ExecRequest(container_id=ctr, cmd=["true"], tty=True,
                                             stdout=True, stderr=True))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        cri.call("Exec", api_pb2.ExecRequest(container_id="0" * 64, cmd=["true"], stdout=True))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_attach_sees_output_and_feeds_stdin(cri, transport):
    pod_id, _ = _pod(cri)
    ticker = cri.run(pod_id, container_config(
        cri.image, ["sh", "-c", "while true; do echo tick; sleep 0.2; done"]))
    url = cri.call("Attach", api_pb2.AttachRequest(container_id=ticker, stdout=True,
                                                   stderr=True)).url
    out = _Collector()
    thread = threading.Thread(target=streaming.attach_stream, kwargs=dict(
        url=url, stdin=None, stdout=out, stderr=io.BytesIO(), transport=transport), daemon=True)
    thread.start()
    wait_for(lambda: out.getvalue(), lambda v: v.count(b"tick") >= 2, within=15)
    _detach_raw(cri, ticker)  # a client that just goes away: the container runs on
    time.sleep(0.5)
    assert cri.status(ticker).state == api_pb2.CONTAINER_RUNNING
    log = cri.status(ticker).log_path
    before = open(log).read().count("tick")
    wait_for(lambda: open(log).read().count("tick"), lambda n: n > before)

    reader = container_config(cri.image, ["sh", "-c", "read line; echo got:$line"],
                              stdin=True, stdin_once=True)
    cid = cri.run(pod_id, reader)
    url = cri.call("Attach", api_pb2.AttachRequest(container_id=cid, stdin=True, stdout=True,
                                                   stderr=True)).url
    got = io.BytesIO()
    code = streaming.attach_stream(url, stdin=io.BytesIO(b"hello\n"), stdout=got,
                                   stderr=io.BytesIO(), transport=transport)
    assert code == 0 and got.getvalue() == b"got:hello\n"
    assert cri.wait_exited(cid).exit_code == 0


def _ws_url(url: str) -> str:
    return "ws" + url[len("http"):]


def _detach_raw(cri, cid: str) -> None:
    """Attach over WebSocket, read the first output, then drop the connection."""
    from websockets.sync.client import connect

    url = cri.call("Attach", api_pb2.AttachRequest(container_id=cid, stdout=True,
                                                   stderr=True)).url
    with connect(_ws_url(url), subprotocols=["v4.channel.k8s.io"]) as ws:
        ws.recv(timeout=10)


def test_a_client_that_goes_away_ends_its_exec(cri, ctr):
    from websockets.sync.client import connect

    url = _exec_url(cri, ctr, "sh", "-c", "sleep 4711")
    with connect(_ws_url(url), subprotocols=["v4.channel.k8s.io"]) as ws:
        ws.recv(timeout=10)  # the session is up
        wait_for(lambda: cri.exec(ctr, "cat", "/proc/1/cmdline").stdout, bool)
        assert b"4711" in _cmdlines(cri, ctr)
    wait_for(lambda: _cmdlines(cri, ctr), lambda text: b"4711" not in text, within=10)


def _cmdlines(cri, cid: str) -> bytes:
    return cri.exec(cid, "sh", "-c", "cat /proc/[0-9]*/cmdline").stdout


class _Collector(io.BytesIO):
    """A BytesIO that other threads may read while it is written."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def write(self, data) -> int:  # type: ignore[override]
        with self._lock:
            return super().write(data)

    def getvalue(self) -> bytes:
        with self._lock:
            return super().getvalue()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_port_forward_two_ports(cri, transport):
    pod_id, _ = _pod(cri)
    for port in (8080, 8081):
        cri.run(pod_id, container_config(cri.image, [
            "sh", "-c", f"echo port-{port} > /tmp/i{port}.html; "
                        f"exec httpd -f -p {port} -h /tmp"]))
    url = cri.call("PortForward", api_pb2.PortForwardRequest(pod_sandbox_id=pod_id,
                                                             port=[8080, 8081])).url
    stop = threading.Event()
    bound: list = []
    thread = threading.Thread(target=streaming.port_forward, kwargs=dict(
        url=url, mappings=[("127.0.0.1", 0, 8080), ("127.0.0.1", 0, 8081)], transport=transport,
        stop=stop, ready=bound.extend, out=lambda line: None, err=lambda line: None),
        daemon=True)
    thread.start()
    wait_for(lambda: len(bound), lambda n: n == 2)
    try:
        for _, local, remote in bound:
            for _ in range(2):  # two connections in turn on each port
                body = wait_for(lambda local=local, remote=remote: _get(
                    f"http://127.0.0.1:{local}/i{remote}.html"), bool)
                assert body == f"port-{remote}\n"
    finally:
        stop.set()
        thread.join(10)


def _get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310
            return response.read().decode()
    except OSError:
        time.sleep(0.1)
        return ""


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_port_forward_to_a_closed_port_fails_that_connection(cri, transport):
    pod_id, _ = _pod(cri)
    url = cri.call("PortForward", api_pb2.PortForwardRequest(pod_sandbox_id=pod_id,
                                                             port=[9999])).url
    stop = threading.Event()
    bound: list = []
    errors: list[str] = []

    def forward() -> None:
        try:
            streaming.port_forward(url, [("127.0.0.1", 0, 9999)], transport, stop=stop,
                                   ready=bound.extend, out=lambda line: None, err=errors.append)
        except Unavailable as exc:  # crictl's rule: an error on a connection ends the session
            errors.append(str(exc))

    thread = threading.Thread(target=forward, daemon=True)
    thread.start()
    wait_for(lambda: len(bound), lambda n: n == 1)
    with socket.create_connection(("127.0.0.1", bound[0][1]), timeout=10) as conn:
        conn.settimeout(10)
        assert conn.recv(100) == b""  # closed, not hanging
    wait_for(lambda: errors, bool)
    assert any("9999" in e for e in errors)
    stop.set()
    thread.join(10)


def test_ocic_exec_command_over_both_transports(cri, ctr):
    daemon = cri.daemon
    result = daemon.ocic("ctr", "exec", "--id", ctr, "sh", "-c", "echo hi; exit 4", check=False)
    assert (result.returncode, result.stdout) == (4, "hi\n")
    result = daemon.ocic("ctr", "exec", "--transport", "websocket", "--id", ctr, "echo", "ws")
    assert result.stdout == "ws\n"


def test_ocic_exec_with_a_terminal_follows_its_size(cri, ctr):
    import fcntl
    import os
    import pty
    import struct
    import termios

    from tests.integration.conftest import OCIC

    pid, master = pty.fork()
    if pid == 0:  # the child: ocic on a terminal of 33 rows and 111 columns
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))
        os.execv(OCIC, [OCIC, "--connect", cri.daemon.socket, "ctr", "exec", "-it", "--id", ctr,
                        "sh", "-c", "sleep 0.5; stty size; exit 6"])
    output = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    _, status = os.waitpid(pid, 0)
    os.close(master)
    assert b"33 111" in output
    assert os.waitstatus_to_exitcode(status) == 6
