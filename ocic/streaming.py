"""The client side of CRI streaming: exec, attach and port-forward, as crictl and client-go do it.

The URL comes from the ``Exec``, ``Attach`` or ``PortForward`` RPC and works once. Two transports:

- ``spdy``: an HTTP/1.1 ``POST`` upgraded to SPDY/3.1 (``ocid.stream.spdy``), one SPDY stream per
  channel. exec and attach offer ``v4.channel.k8s.io`` first (v4 reports exit codes), then v3, v2
  and ``channel.k8s.io``; port-forward offers ``portforward.k8s.io``.
- ``websocket``: exec and attach offer ``v5.channel.k8s.io`` then ``v4.channel.k8s.io``, one channel
  byte before each binary message. Port-forward tunnels the very same SPDY session through binary
  messages (``SPDY/3.1+portforward.k8s.io``), so several connections and ports work alike.

Failures become ``ocid.errors``: a used or expired URL is NotFound, no common protocol is
Unimplemented, an unreachable server Unavailable, and a remote failure other than a non-zero exit
code InternalError with the server's message. See docs/ocic.md and the streaming note.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import socket
import ssl
import string
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import urlsplit, urlunsplit

from ocid import errors

if TYPE_CHECKING:
    from ocid.stream import spdy

TRANSPORTS: tuple[str, ...] = ("spdy", "websocket")
TerminalSize = tuple[int, int]  # (width, height) in characters
PortMapping = tuple[str, int, int]  # (local host, local port, remote port)

# Best first; the server keeps the first it knows (client-go also offers v5, which no CRI
# server speaks over SPDY).
SPDY_PROTOCOLS = ("v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io")
WEBSOCKET_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
STATUS_PROTOCOLS = ("v4.channel.k8s.io", "v5.channel.k8s.io")  # JSON status on the error channel
RESIZE_PROTOCOLS = ("v3.channel.k8s.io", *STATUS_PROTOCOLS)
PORT_FORWARD_PROTOCOL = "portforward.k8s.io"
TUNNEL_PROTOCOL = "SPDY/3.1+portforward.k8s.io"

STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255  # WebSocket channels
STREAM_CREATION_TIMEOUT = 30.0  # client-go's DefaultStreamCreationTimeout
HANDSHAKE_TIMEOUT = 30.0
PING_PERIOD = 5.0  # client-go pings every SPDY connection this often
COPY_CHUNK = 32 * 1024
MAX_HEAD = 64 * 1024
POLL = 0.2  # seconds between checks of a stop request


@dataclass(frozen=True, slots=True)
class TLSOptions:
    """How to check an ``https`` streaming server and, optionally, who we are to it."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


@dataclass(frozen=True, slots=True)
class _Stdio:
    """The local ends of one exec or attach."""

    stdin: BinaryIO | None
    stdout: BinaryIO | None
    stderr: BinaryIO | None
    tty: bool
    resize_source: Iterable[TerminalSize] | None


def exec_stream(url: str, *, stdin: BinaryIO | None, stdout: BinaryIO | None,
                stderr: BinaryIO | None, tty: bool = False,
                resize_source: Iterable[TerminalSize] | None = None,
                transport: str = "spdy", tls: TLSOptions | None = None) -> int:
    """Run the exec behind ``url``, copying the local streams; return the command's exit code.

    ``stdin`` is half-closed at its end; ``resize_source`` yields terminal sizes (the first one
    right away) while the command runs. Pass the streams the Exec request asked for: stderr is
    None with a tty.
    """
    io = _Stdio(stdin, stdout, stderr if not tty else None, tty, resize_source if tty else None)
    return _remote_command(url, io, transport, tls)


def attach_stream(url: str, *, stdin: BinaryIO | None, stdout: BinaryIO | None,
                  stderr: BinaryIO | None, tty: bool = False,
                  resize_source: Iterable[TerminalSize] | None = None,
                  transport: str = "spdy", tls: TLSOptions | None = None) -> int:
    """Attach to the container behind ``url`` until the stream ends; 0 when it ends well."""
    io = _Stdio(stdin, stdout, stderr if not tty else None, tty, resize_source if tty else None)
    return _remote_command(url, io, transport, tls)


def _remote_command(url: str, io: _Stdio, transport: str, tls: TLSOptions | None) -> int:
    if transport == "websocket":
        return _websocket_remote_command(url, io, tls)
    if transport != "spdy":
        raise errors.InvalidArgument(f"unknown streaming transport {transport!r}")
    return _spdy_remote_command(url, io, tls)


# --- remotecommand over SPDY ---------------------------------------------------------------------

def _spdy_remote_command(url: str, io: _Stdio, tls: TLSOptions | None) -> int:
    connection, protocol = _upgrade_spdy(url, SPDY_PROTOCOLS, tls)
    session = _start_session(connection)
    try:
        # client-go's order; the server counts the streams it expects from the cached request.
        error = _open_stream(session, {"streamtype": "error"})
        stdin = _open_stream(session, {"streamtype": "stdin"}) if io.stdin is not None else None
        stdout = _open_stream(session, {"streamtype": "stdout"}) if io.stdout is not None else None
        stderr = _open_stream(session, {"streamtype": "stderr"}) if io.stderr is not None else None
        resize = None
        if io.tty and protocol in RESIZE_PROTOCOLS:
            resize = _open_stream(session, {"streamtype": "resize"})

        if stdin is not None and io.stdin is not None:
            # v1 servers do not expect a half-close; from v2 on it ends an attach.
            half_close = stdin.close if protocol != "channel.k8s.io" else None
            _daemon(_copy_in, io.stdin, stdin.write, half_close)
        if resize is not None and io.resize_source is not None:
            _daemon(_send_sizes, io.resize_source, resize.write)
        copies = [_daemon(_copy_out, stream.read, sink)
                  for stream, sink in ((stdout, io.stdout), (stderr, io.stderr))
                  if stream is not None and sink is not None]
        for thread in copies:
            thread.join()
        return decode_status(_read_all(error.read), protocol)
    finally:
        session.close()


def _start_session(connection: Any) -> spdy.Session:
    from ocid.stream import spdy

    session = spdy.Session(connection, server=False)
    session.start()
    _daemon(_keepalive, session)
    return session


def _keepalive(session: spdy.Session) -> None:
    """PING now and then, as client-go does, so idle sessions outlive the server's idle timeout."""
    while not session.wait_closed(PING_PERIOD):
        # A late pong or a closing session is not our business here.
        with contextlib.suppress(Exception):
            session.ping(timeout=PING_PERIOD)


def _open_stream(session: spdy.Session, headers: dict[str, str]) -> spdy.Stream:
    from ocid.stream.spdy import SpdyError, StreamRefused

    kind = headers.get("streamtype", "")
    try:
        return session.open_stream(headers, timeout=STREAM_CREATION_TIMEOUT)
    except StreamRefused:
        raise errors.Unavailable(f"the streaming server refused the {kind} stream") from None
    except (SpdyError, OSError) as exc:
        raise errors.Unavailable(f"cannot open the {kind} stream: {exc}") from exc


def decode_status(data: bytes, protocol: str | None) -> int:
    """The exit code the error stream's content stands for, as client-go's decoders read it.

    Raises InternalError for a failure that is not a non-zero exit code.
    """
    if not data.strip():
        return 0
    if protocol not in STATUS_PROTOCOLS:
        raise errors.InternalError(data.decode(errors="replace").strip())
    try:
        status = json.loads(data)
    except ValueError:
        raise errors.InternalError(f"error stream protocol error: {data[:200]!r}") from None
    if not isinstance(status, dict):
        raise errors.InternalError(f"error stream protocol error: {data[:200]!r}")
    if status.get("status") == "Success":
        return 0
    if status.get("status") != "Failure":
        raise errors.InternalError("error stream protocol error: unknown error")
    if status.get("reason") == "NonZeroExitCode":
        details = status.get("details") or {}
        for cause in details.get("causes") or []:
            if cause.get("reason") != "ExitCode":
                continue
            value = str(cause.get("message", ""))
            if not value.isdigit() or int(value) > 255:
                raise errors.InternalError(
                    f"error stream protocol error: invalid exit code value {value!r}")
            return int(value)
    raise errors.InternalError(status.get("message") or "the remote command failed")


# --- remotecommand over WebSocket ----------------------------------------------------------------

def _websocket_remote_command(url: str, io: _Stdio, tls: TLSOptions | None) -> int:
    from websockets.exceptions import ConnectionClosedError

    ws = _connect_websocket(url, WEBSOCKET_PROTOCOLS, tls)
    protocol = ws.subprotocol
    lock = threading.Lock()

    def send(channel: int, data: bytes) -> None:
        with lock:
            ws.send(bytes([channel]) + data)

    def half_close() -> None:
        send(CLOSE, bytes([STDIN]))

    try:
        if io.stdin is not None:
            # Only v5 can say "no more input"; v4 servers just see silence.
            _daemon(_copy_in, io.stdin, lambda data: send(STDIN, data),
                    half_close if protocol == "v5.channel.k8s.io" else None)
        if io.tty and io.resize_source is not None:
            _daemon(_send_sizes, io.resize_source, lambda data: send(RESIZE, data))
        error = bytearray()
        sinks = {STDOUT: io.stdout, STDERR: io.stderr}
        for message in ws:  # ends at the server's normal close
            if isinstance(message, str):
                raise errors.InternalError("the streaming server sent a text message "
                                           f"on a binary protocol ({protocol})")
            if not message:
                continue
            channel, data = message[0], message[1:]
            if channel == ERROR:
                error += data
            elif data and (sink := sinks.get(channel)) is not None:
                sink.write(data)
                sink.flush()
        return decode_status(bytes(error), protocol)
    except ConnectionClosedError as exc:
        raise errors.Unavailable(f"lost the stream connection to {_where(url)}: {exc}") from None
    finally:
        ws.close()


# --- copy loops ----------------------------------------------------------------------------------

def _daemon(target: Callable[..., Any], *args: Any) -> threading.Thread:
    # Daemon threads: a copy blocked on a terminal read must not keep ocic alive.
    thread = threading.Thread(target=target, args=args, daemon=True, name=f"ocic-{target.__name__}")
    thread.start()
    return thread


def _chunks(source: BinaryIO) -> Iterator[bytes]:
    """What ``source`` has as it arrives (not a full buffer's worth), until its end."""
    try:
        fd: int | None = source.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None
    read = getattr(source, "read1", None) or source.read
    while True:
        data = os.read(fd, COPY_CHUNK) if fd is not None else read(COPY_CHUNK)
        if not data:
            return
        yield data


def _copy_in(source: BinaryIO, write: Callable[[bytes], Any],
             half_close: Callable[[], Any] | None) -> None:
    try:
        for data in _chunks(source):
            write(data)
        if half_close is not None:
            half_close()
    except Exception:  # noqa: BLE001 - the session ended under us; its end is reported elsewhere
        return


def _copy_out(read: Callable[[int], bytes], sink: BinaryIO) -> None:
    try:
        while data := read(COPY_CHUNK):
            sink.write(data)
            sink.flush()
    except (OSError, ValueError):
        return  # the local reader went away (a closed pipe): stop copying, let the session end


def _send_sizes(sizes: Iterable[TerminalSize], write: Callable[[bytes], Any]) -> None:
    try:
        for width, height in sizes:
            write(resize_message(width, height))
    except Exception:  # noqa: BLE001 - the session ended; nobody wants sizes any more
        return


def resize_message(width: int, height: int) -> bytes:
    """A terminal size as Go's json.Encoder writes a TerminalSize: ``{"Width":W,"Height":H}\\n``."""
    return json.dumps({"Width": width, "Height": height}, separators=(",", ":")).encode() + b"\n"


def _read_all(read: Callable[[int], bytes]) -> bytes:
    data = bytearray()
    while chunk := read(COPY_CHUNK):
        data += chunk
    return bytes(data)


# --- the HTTP upgrade ----------------------------------------------------------------------------

def _where(url: str) -> str:
    return urlsplit(url).netloc or url


def _split(url: str) -> tuple[str, str, int, str]:
    """Scheme (http or https), host, port and request target of a streaming URL."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https") or not parts.hostname:
        raise errors.InvalidArgument(f"unusable streaming URL {url!r}: not an absolute http(s) URL")
    port = parts.port or (443 if scheme == "https" else 80)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return scheme, parts.hostname, port, target


def _connect(url: str, tls: TLSOptions | None) -> socket.socket:
    scheme, host, port, _ = _split(url)
    try:
        sock = socket.create_connection((host, port), timeout=HANDSHAKE_TIMEOUT)
    except OSError as exc:
        raise errors.Unavailable(
            f"cannot connect to the streaming server at {_where(url)}: "
            f"{_reason(exc)}") from exc
    if scheme == "https":
        tls = tls or TLSOptions()
        try:
            sock = tls.context().wrap_socket(sock, server_hostname=tls.server_name or host)
        except (OSError, ssl.SSLError) as exc:
            sock.close()
            raise errors.Unavailable(f"TLS with the streaming server at {_where(url)} failed: "
                                     f"{_reason(exc)}") from exc
    return sock


def _reason(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return exc.strerror or str(exc) or type(exc).__name__


@dataclass
class _Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def values(self, name: str) -> list[str]:
        """Every value of a header, split on commas as Go's handshake code does."""
        return [item.strip() for key, value in self.headers if key.lower() == name.lower()
                for item in value.split(",") if item.strip()]


class _SocketTransport:
    """A connected socket as spdy.Session's transport, starting with bytes already read."""

    def __init__(self, sock: socket.socket, pending: bytes = b"") -> None:
        self._sock = sock
        self._pending = pending

    def recv(self, n: int) -> bytes:
        if self._pending:
            data, self._pending = self._pending[:n], self._pending[n:]
            return data
        try:
            return self._sock.recv(n)
        except OSError:
            return b""

    def sendall(self, data: bytes) -> None:
        self._sock.sendall(data)

    def shutdown(self, how: int) -> None:
        """Lets the session half-close and wait for the server's end (a clean TCP close)."""
        self._sock.shutdown(how)

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()


def _read_response(sock: socket.socket) -> tuple[_Response, bytes]:
    """The response head (and, unless it is a 101, its body); then any bytes read past it."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(4096)
        if not chunk:
            raise errors.Unavailable("the streaming server closed the connection without an answer")
        buffer += chunk
        if len(buffer) > MAX_HEAD:
            raise errors.Unavailable("the streaming server's answer has an oversized header")
    head, rest = buffer.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    fields = lines[0].split(" ", 2)
    if len(fields) < 2 or not fields[0].startswith("HTTP/") or not fields[1].isdigit():
        raise errors.Unavailable(f"the streaming server answered {lines[0][:100]!r}, not HTTP")
    headers = [(key.strip(), value.strip()) for key, sep, value in
               (line.partition(":") for line in lines[1:]) if sep]
    response = _Response(int(fields[1]), fields[2] if len(fields) > 2 else "", headers, b"")
    if response.status == 101:
        return response, rest
    length = next((int(v) for k, v in headers
                   if k.lower() == "content-length" and v.isdigit()), None)
    body = rest
    try:
        while length is None or len(body) < length:
            chunk = sock.recv(4096)
            if not chunk:
                break
            body += chunk
    except OSError:
        pass
    response.body = body[:length] if length is not None else body
    return response, b""


def _body_message(body: bytes) -> str:
    """A refusal's text: the ``message`` (or ``error``) of a JSON body, else the body itself."""
    text = body.decode(errors="replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        text = str(data.get("message") or data.get("error") or text)
    return text[:500]


def _refusal(url: str, status: int, reason: str, body: str, offered: Sequence[str],
             accepted: Sequence[str] = ()) -> errors.OcidError:
    """The error for a streaming server that did not switch protocols."""
    answer = f"{status} {reason}".strip()
    if status == 404:
        return errors.NotFound(f"streaming URL {url} is unknown to the server ({answer}): it "
                               "expired or was already used (each URL works once, within a minute)")
    if status == 403:
        accepts = f"; it accepts {', '.join(accepted)}" if accepted else ""
        return errors.Unimplemented(
            f"the streaming server at {_where(url)} speaks none of {', '.join(offered)} "
            f"({answer}{accepts}){': ' + body if body else ''}")
    return errors.Unavailable(f"the streaming server at {_where(url)} refused the upgrade "
                              f"({answer}){': ' + body if body else ''}")


def _upgrade_spdy(url: str, protocols: Sequence[str],
                  tls: TLSOptions | None) -> tuple[_SocketTransport, str | None]:
    """POST an upgrade to SPDY/3.1; the raw connection and the protocol the server chose."""
    _, host, port, target = _split(url)
    sock = _connect(url, tls)
    host_header = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"POST {target} HTTP/1.1", f"Host: {host_header}", "User-Agent: ocic",
             "Content-Length: 0", "Connection: Upgrade", "Upgrade: SPDY/3.1"]
    lines += [f"X-Stream-Protocol-Version: {protocol}" for protocol in protocols]
    try:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        response, rest = _read_response(sock)
    except OSError as exc:
        sock.close()
        raise errors.Unavailable(f"upgrade of {url} failed: {_reason(exc)}") from exc
    except errors.OcidError:
        sock.close()
        raise
    upgraded = (response.status == 101
                and any(v.lower() == "upgrade" for v in response.values("Connection"))
                and any(v.lower() == "spdy/3.1" for v in response.values("Upgrade")))
    if not upgraded:
        sock.close()
        if response.status == 101:
            raise errors.Unavailable(f"the streaming server at {_where(url)} switched to "
                                     "something other than SPDY/3.1")
        raise _refusal(url, response.status, response.reason, _body_message(response.body),
                       protocols, response.values("X-Accepted-Stream-Protocol-Versions"))
    chosen = response.values("X-Stream-Protocol-Version")
    # No answer means the oldest protocol (client-go falls back to v1 too).
    protocol = chosen[0] if chosen else "channel.k8s.io"
    if protocol not in protocols:
        sock.close()
        raise errors.Unavailable(f"the streaming server chose {protocol!r}, "
                                 "which ocic did not offer")
    sock.settimeout(None)
    return _SocketTransport(sock, rest), protocol


def _connect_websocket(url: str, protocols: Sequence[str], tls: TLSOptions | None) -> Any:
    """An open websockets ClientConnection speaking one of ``protocols``."""
    from websockets.exceptions import InvalidHandshake, InvalidStatus
    from websockets.sync.client import connect
    from websockets.typing import Subprotocol

    scheme, host, _, _ = _split(url)
    parts = urlsplit(url)
    ws_url = urlunsplit(("wss" if scheme == "https" else "ws", *parts[1:]))
    options: dict[str, Any] = {}
    if "legacy" in inspect.signature(connect).parameters:
        options["legacy"] = True  # websockets 17+: a plain connection, closed by us
    if scheme == "https":
        tls = tls or TLSOptions()
        options.update(ssl=tls.context(), server_hostname=tls.server_name or host)
    if all(_is_token(p) for p in protocols):
        options["subprotocols"] = [Subprotocol(p) for p in protocols]
    else:
        # websockets only takes RFC 7230 tokens, and "SPDY/3.1+portforward.k8s.io" is not one:
        # offer it by hand and check the answer ourselves.
        options["additional_headers"] = {"Sec-WebSocket-Protocol": ", ".join(protocols)}
        options["create_connection"] = _raw_subprotocol_connection(protocols)
    try:
        ws = connect(ws_url, compression=None, proxy=None, max_size=None,
                     open_timeout=HANDSHAKE_TIMEOUT, ping_interval=PING_PERIOD, ping_timeout=60,
                     user_agent_header="ocic", **options)
    except InvalidStatus as exc:
        response = exc.response
        raise _refusal(url, response.status_code, response.reason_phrase,
                       _body_message(response.body or b""), protocols) from None
    except InvalidHandshake as exc:
        raise errors.Unavailable(f"WebSocket handshake with {_where(url)} failed: {exc}") from None
    except OSError as exc:
        raise errors.Unavailable(f"cannot connect to the streaming server at {_where(url)}: "
                                 f"{_reason(exc)}") from exc
    if ws.subprotocol not in protocols:
        ws.close()
        raise errors.Unavailable(f"the streaming server chose {ws.subprotocol!r}, "
                                 "which ocic did not offer")
    return ws


_TOKEN_CHARS = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~")


def _is_token(text: str) -> bool:
    return bool(text) and set(text) <= _TOKEN_CHARS


def _raw_subprotocol_connection(protocols: Sequence[str]) -> type:
    """A ClientConnection class whose handshake accepts exactly one of ``protocols``, verbatim."""
    from websockets.datastructures import Headers
    from websockets.exceptions import NegotiationError
    from websockets.sync.client import ClientConnection
    from websockets.typing import Subprotocol

    def accept(headers: Headers) -> Subprotocol:
        values = [v.strip() for v in headers.get_all("Sec-WebSocket-Protocol")]
        if len(values) != 1 or values[0] not in protocols:
            raise NegotiationError(f"the server chose subprotocol {', '.join(values) or 'none'}, "
                                   f"not {', '.join(protocols)}")
        return Subprotocol(values[0])

    class RawSubprotocolConnection(ClientConnection):
        def __init__(self, sock: socket.socket, protocol: Any, **kwargs: Any) -> None:
            protocol.process_subprotocol = accept
            super().__init__(sock, protocol, **kwargs)

    return RawSubprotocolConnection


class _WebSocketBytes:
    """A byte stream over binary WebSocket messages, whose boundaries mean nothing (the tunnel)."""

    def __init__(self, ws: Any) -> None:
        self._ws = ws
        self._pending = b""
        self._lock = threading.Lock()

    def recv(self, n: int) -> bytes:
        from websockets.exceptions import ConnectionClosed

        while not self._pending:
            try:
                message = self._ws.recv()
            except ConnectionClosed:
                return b""
            if isinstance(message, str):
                return b""  # not the tunnel protocol: end the session
            self._pending = message
        data, self._pending = self._pending[:n], self._pending[n:]
        return data

    def sendall(self, data: bytes) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            with self._lock:
                self._ws.send(bytes(data))
        except ConnectionClosed as exc:
            raise ConnectionResetError(f"WebSocket closed: {exc}") from None

    def close(self) -> None:
        self._ws.close()


# --- port-forward --------------------------------------------------------------------------------

def port_forward(url: str, mappings: Sequence[PortMapping], transport: str = "spdy", *,
                 tls: TLSOptions | None = None, stop: threading.Event | None = None,
                 out: Callable[[str], Any] | None = None, err: Callable[[str], Any] | None = None,
                 ready: Callable[[list[PortMapping]], Any] | None = None) -> None:
    """Forward local ports to the pod's ports until ``stop`` is set (or KeyboardInterrupt).

    Each mapping is (local host, local port, remote port); local port 0 picks a free one. ``out``
    gets kubectl's "Forwarding from ..." and "Handling connection for ..." lines, ``err`` the
    errors, and ``ready`` the mappings as bound. Raises Unavailable when the connection to the
    streaming server is lost, as crictl does after an error on any forwarded connection.
    """
    say = out or (lambda line: None)
    complain = err or (lambda line: None)
    if transport == "websocket":
        ws = _connect_websocket(url, (TUNNEL_PROTOCOL,), tls)
        connection: Any = _WebSocketBytes(ws)
    elif transport == "spdy":
        connection, protocol = _upgrade_spdy(url, (PORT_FORWARD_PROTOCOL,), tls)
        if protocol != PORT_FORWARD_PROTOCOL:
            connection.close()
            raise errors.Unavailable(f"unable to negotiate {PORT_FORWARD_PROTOCOL} "
                                     f"with {_where(url)} (got {protocol!r})")
    else:
        raise errors.InvalidArgument(f"unknown streaming transport {transport!r}")
    session = _start_session(connection)
    forwarder = _Forwarder(session, complain)
    listeners: list[socket.socket] = []
    try:
        bound: list[PortMapping] = []
        for host, local_port, remote_port in mappings:
            listener = _listen(host, local_port)
            listeners.append(listener)
            local_port = listener.getsockname()[1]
            bound.append((host, local_port, remote_port))
            say(f"Forwarding from {_host_port(host, local_port)} -> {remote_port}")
        if ready is not None:
            ready(bound)
        for listener, (_, local_port, remote_port) in zip(listeners, bound, strict=True):
            _daemon(forwarder.accept_loop, listener, local_port, remote_port, say)
        while not session.wait_closed(POLL):
            if stop is not None and stop.is_set():
                return
        if stop is None or not stop.is_set():
            raise errors.Unavailable(f"lost connection to pod (streaming server {_where(url)})")
    finally:
        forwarder.stopping.set()
        for listener in listeners:
            listener.close()
        session.close()


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _listen(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        listener = socket.socket(family, kind, proto)
    except OSError as exc:
        where = _host_port(host, port)
        raise errors.Unavailable(f"unable to listen on {where}: {_reason(exc)}") from exc
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(128)
    except OSError as exc:
        listener.close()
        where = _host_port(host, port)
        raise errors.Unavailable(f"unable to listen on {where}: {_reason(exc)}") from exc
    listener.settimeout(POLL)  # so the accept loop notices a stop
    return listener


class _Forwarder:
    """One SPDY session serving every local connection, one error+data stream pair each."""

    def __init__(self, session: spdy.Session, err: Callable[[str], Any]) -> None:
        self.session = session
        self.err = err
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._next_id = 0

    def _request_id(self) -> int:
        with self._lock:
            request_id, self._next_id = self._next_id, self._next_id + 1
            return request_id

    def accept_loop(self, listener: socket.socket, local_port: int, remote_port: int,
                    say: Callable[[str], Any]) -> None:
        while not self.stopping.is_set() and not self.session.closed:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # the listener was closed: we are stopping
            conn.settimeout(None)
            say(f"Handling connection for {local_port}")
            _daemon(self.handle, conn, local_port, remote_port)

    def handle(self, conn: socket.socket, local_port: int, remote_port: int) -> None:
        """Forward one local connection, as client-go's handleConnection does."""
        headers = {"streamtype": "error", "port": str(remote_port),
                   "requestid": str(self._request_id())}
        try:
            try:
                error = _open_stream(self.session, headers)
                error.close()  # we never write on it
                data = _open_stream(self.session, {**headers, "streamtype": "data"})
            except errors.OcidError as exc:
                if not self.stopping.is_set():
                    self.err(f"error creating forwarding stream for port {local_port} -> "
                             f"{remote_port}: {exc}")
                return
            message: list[bytes] = []
            reader = _daemon(lambda: message.append(_read_all(error.read)))
            done = threading.Event()

            def remote_to_local() -> None:
                with contextlib.suppress(OSError):
                    while chunk := data.read(COPY_CHUNK):
                        conn.sendall(chunk)
                    # The local client sees the end now, not after the error stream's.
                    conn.shutdown(socket.SHUT_WR)
                done.set()

            def local_to_remote() -> None:
                try:
                    while chunk := conn.recv(COPY_CHUNK):
                        data.write(chunk)
                except Exception:  # noqa: BLE001 - local reset or stream gone: stop waiting
                    done.set()
                    return
                with contextlib.suppress(Exception):  # the stream may be gone already
                    data.close()  # FIN: the pod's side sees the local end of input

            _daemon(remote_to_local)
            _daemon(local_to_remote)
            done.wait()
            reader.join()
            data.reset()
            text = b"".join(message).decode(errors="replace").strip()
            if text:
                self.err(f"an error occurred forwarding {local_port} -> {remote_port}: {text}")
                # client-go gives up the whole connection after any error: so do we.
                self.session.close()
        finally:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
