"""WebSocket on a taken-over socket: the handshake as CRI-O answers it, then whole messages.

The framing is the ``websockets`` library's sans-I/O ``ServerProtocol``; the socket, the
threads and the locks are ours. Wire facts: /work/shared/notes/streaming.md §1.7, §3, §4.
"""

from __future__ import annotations

import collections
import logging
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from websockets.datastructures import Headers
from websockets.exceptions import InvalidState
from websockets.frames import Opcode
from websockets.http11 import Request
from websockets.protocol import SEND_EOF, State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

log = logging.getLogger(__name__)

# websockets logs every open and close at INFO; one exec is not worth two daemon log lines.
_proto_log = logging.getLogger("ocid.stream.wsproto")
_proto_log.setLevel(logging.WARNING)

MAX_MESSAGE = 32 * 1024 * 1024  # golang.org/x/net/websocket's DefaultMaxPayloadBytes
CLOSE_WAIT = 2.0  # how long close() waits for the client's close frame
_RECV_CHUNK = 65536


@dataclass(frozen=True, slots=True)
class Message:
    """One whole WebSocket message."""

    text: bool
    data: bytes


def offered_subprotocols(headers: Iterable[tuple[str, str]]) -> list[str]:
    """The client's ``Sec-WebSocket-Protocol`` offers, in its order."""
    offers: list[str] = []
    for key, value in headers:
        if key.lower() == "sec-websocket-protocol":
            offers.extend(p.strip() for p in value.split(",") if p.strip())
    return offers


def choose_subprotocol(offers: Sequence[str], allowed: Sequence[str]) -> str | None:
    """st/wsstream handshake: the first offer the server allows; ``""`` when none was offered."""
    for offer in offers or [""]:
        if offer in allowed:
            return offer
    return None


def upgrade(
    sock: socket.socket,
    method: str,
    path: str,
    headers: Sequence[tuple[str, str]],
    allowed: Sequence[str],
    *,
    idle_timeout: float | None = None,
) -> WebSocket | None:
    """Answer a WebSocket handshake on ``sock``: a WebSocket after a 101, or None after an error.

    Errors are answered as golang.org/x/net/websocket does (405, 400, and 403 with no body when
    no offered subprotocol is allowed); a ``""`` choice is still echoed as an empty header.
    """
    if method != "GET":
        _raw_reply(sock, 405, "Method Not Allowed", [], b"bad method")
        return None
    if not _first(headers, "sec-websocket-key"):
        _raw_reply(sock, 400, "Bad Request", [], b"mismatch challenge/response")
        return None
    if _first(headers, "sec-websocket-version") != "13":
        _raw_reply(sock, 400, "Bad Request", [("Sec-WebSocket-Version", "13")],
                   b"missing or bad WebSocket Version")
        return None
    chosen = choose_subprotocol(offered_subprotocols(headers), allowed)
    if chosen is None:
        _raw_reply(sock, 403, "Forbidden", [], b"")
        return None

    proto = _ServerProtocol(chosen, max_size=MAX_MESSAGE, logger=_proto_log)
    # http.server has parsed the request already; replaying it through the protocol's own
    # parser moves the protocol past its handshake state by the public API.
    try:
        proto.receive_data(Request(path, Headers(headers), method).serialize())
    except (UnicodeError, ValueError):  # a non-ASCII path or header
        pass
    requests = [e for e in proto.events_received() if isinstance(e, Request)]
    if not requests:
        _raw_reply(sock, 400, "Bad Request", [], b"bad handshake request")
        return None
    response = proto.accept(requests[0])
    if response.status_code == 101 and not chosen:
        response.headers["Sec-WebSocket-Protocol"] = ""
    proto.send_response(response)
    try:
        for chunk in proto.data_to_send():
            if chunk:
                sock.sendall(chunk)
    except OSError:
        return None
    if response.status_code != 101:
        return None
    return WebSocket(sock, proto, chosen, idle_timeout=idle_timeout)


class _ServerProtocol(ServerProtocol):
    """websockets' server protocol with the subprotocol chosen beforehand.

    Its own parsing of ``Sec-WebSocket-Protocol`` would reject the tunnel's
    ``SPDY/3.1+portforward.k8s.io``, which is not an HTTP token ('/' is a separator).
    """

    def __init__(self, chosen: str, **kwargs: Any):
        super().__init__(**kwargs)
        self._chosen = chosen

    def process_subprotocol(self, headers: Headers) -> Subprotocol | None:
        return Subprotocol(self._chosen) if self._chosen else None


class WebSocket:
    """A server WebSocket: recv() whole messages in one thread, send() from any thread.

    Pings are answered while reading. After close() or the end of the connection, send()
    raises BrokenPipeError and recv() returns None.
    """

    def __init__(self, sock: socket.socket, proto: ServerProtocol, subprotocol: str, *,
                 idle_timeout: float | None = None):
        self.subprotocol = subprotocol
        self._sock = sock
        self._proto = proto
        self._idle = idle_timeout
        self._last = time.monotonic()
        self._lock = threading.Lock()  # the protocol object and socket writes
        self._recv_lock = threading.Lock()
        self._messages: collections.deque[Message] = collections.deque()
        self._partial: list[bytes] = []
        self._partial_text = False
        self._eof = threading.Event()
        self._shut = False
        sock.settimeout(idle_timeout)

    @property
    def closed(self) -> bool:
        """True once the connection has ended (close handshake, EOF or failure)."""
        return self._eof.is_set()

    def recv(self) -> Message | None:
        """The next message, or None when the connection has ended. One reader at a time."""
        with self._recv_lock:
            return self._recv_locked()

    def send(self, data: bytes, *, text: bool = False) -> None:
        """Send one message; BrokenPipeError once the connection is closing or gone."""
        with self._lock:
            if self._shut:
                raise BrokenPipeError("websocket connection closed")
            try:
                if text:
                    self._proto.send_text(data)
                else:
                    self._proto.send_binary(data)
            except InvalidState as exc:
                raise BrokenPipeError(f"websocket connection {exc}") from exc
            self._last = time.monotonic()
            self._flush_locked()

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the close handshake, wait a little for the client's answer, then drop the socket."""
        with self._lock:
            if not self._shut and self._proto.state is State.OPEN:
                self._proto.send_close(code, reason)
                self._flush_locked()
        if self._recv_lock.acquire(blocking=False):
            # Nobody is reading: read the client's close frame here.
            try:
                deadline = time.monotonic() + CLOSE_WAIT
                while self._recv_locked(deadline) is not None:
                    pass
            finally:
                self._recv_lock.release()
        else:
            self._eof.wait(CLOSE_WAIT)
        self.abort()

    def abort(self) -> None:
        """Drop the TCP connection without a close handshake; unblocks a reader and writers."""
        # No lock: a writer may be stuck in sendall() holding it; shutdown() wakes it up.
        self._shut = True
        self._eof.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # The reader side.

    def _recv_locked(self, deadline: float | None = None) -> Message | None:
        while not self._messages:
            if self._eof.is_set():
                return None
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._sock.settimeout(left)
            try:
                data = self._sock.recv(_RECV_CHUNK)
            except TimeoutError:
                if deadline is not None:
                    continue
                if self._idle is not None and time.monotonic() - self._last >= self._idle:
                    log.info("websocket stream idle for %.0f s, closing", self._idle)
                    self.abort()
                    return None
                continue
            except OSError:
                data = b""
            self._feed(data)
        return self._messages.popleft()

    def _feed(self, data: bytes) -> None:
        with self._lock:
            self._last = time.monotonic()
            if self._shut:
                self._eof.set()
                return
            if data:
                self._proto.receive_data(data)
            else:
                self._proto.receive_eof()
            events = self._proto.events_received()
            try:
                self._flush_locked()  # pongs, the close frame's echo
            except BrokenPipeError:
                pass  # _flush_locked has marked the end
            if not data or self._proto.eof_sent or self._proto.state is State.CLOSED:
                self._eof.set()
        for frame in events:
            if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
                self._partial = [bytes(frame.data)]
                self._partial_text = frame.opcode is Opcode.TEXT
            elif frame.opcode is Opcode.CONT:
                self._partial.append(bytes(frame.data))
            else:
                continue  # ping (already answered), pong, close
            if frame.fin:
                self._messages.append(Message(self._partial_text, b"".join(self._partial)))
                self._partial = []

    def _flush_locked(self) -> None:
        for chunk in self._proto.data_to_send():
            if chunk is SEND_EOF or not chunk:
                self._shut = True
                try:
                    self._sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                continue
            if self._shut:
                continue
            try:
                self._sock.sendall(chunk)
            except OSError as exc:
                self._shut = True
                self._eof.set()
                raise BrokenPipeError(f"websocket connection lost: {exc}") from exc


class WebSocketTransport:
    """The binary messages of a WebSocket as one byte stream, for SPDY over WebSocket.

    Message boundaries mean nothing in the tunnel (notes §4): Go splits one SPDY frame over
    several messages, so recv() hands out bytes regardless of where messages end.
    """

    def __init__(self, ws: WebSocket):
        self._ws = ws
        self._buf = b""

    def recv(self, n: int) -> bytes:
        """Up to n bytes of the stream; b"" at the end."""
        while not self._buf:
            msg = self._ws.recv()
            if msg is None:
                return b""
            self._buf = msg.data
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def sendall(self, data: bytes) -> None:
        """Send the bytes as one binary message."""
        self._ws.send(bytes(data))

    def close(self) -> None:
        """Close the WebSocket with 1000."""
        self._ws.close(1000)


def _first(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _raw_reply(sock: socket.socket, code: int, phrase: str, headers: list[tuple[str, str]],
               body: bytes) -> None:
    """A handshake refusal as x/net/websocket writes it on the hijacked connection."""
    head = f"HTTP/1.1 {code} {phrase}\r\n"
    for key, value in [*headers, ("Content-Length", str(len(body))), ("Connection", "close")]:
        head += f"{key}: {value}\r\n"
    try:
        sock.sendall(head.encode("latin-1") + b"\r\n" + body)
    except OSError:
        pass
