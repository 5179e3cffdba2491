"""SPDY/3.1 sessions as moby/spdystream speaks them, for exec, attach and port-forward.

No maintained Python SPDY library exists, so this module is ours. It implements the part of SPDY
draft 3.1 that moby/spdystream (behind client-go, crictl and the CRI streaming server) uses, and
copies its behaviour where the draft leaves room (sources: spdystream's ``connection.go``,
``stream.go`` and ``spdy/{types,read,write,dictionary}.go``):

    frame       8-byte header; control frames (C=1) carry version 3 and a type, DATA frames a
                31-bit stream id; then flags (FIN = 1) and a 24-bit payload length
    NV block    count, then (name, value) pairs with 32-bit lengths; names lower-case, several
                values joined by NUL; zlib with the SPDY/3 dictionary, one zlib stream per
                direction per connection, each block ended by a sync flush
    streams     the client opens odd ids 1, 3, 5…; the acceptor answers SYN_REPLY (no headers)
                or RST_STREAM CANCEL; DATA on an unknown or unreplied stream is dropped
    session     PING echoed by parity, GOAWAY ends it, SETTINGS and WINDOW_UPDATE are parsed and
                ignored (no flow control: backpressure is TCP plus a blocking reader)

Threads: :meth:`Session.start` runs one reader thread that reads and dispatches every frame
(``on_stream`` runs there too); writers on any thread share one send lock, so frames never
interleave. A stream buffers about 1 MiB before the reader thread waits for the application to
read it, which stalls the whole session, as spdystream's blocking delivery does.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from typing import Protocol

__all__ = [
    "CANCEL", "DICTIONARY", "DICTIONARY_ADLER32", "FLOW_CONTROL_ERROR", "FRAME_TOO_LARGE",
    "GOAWAY_INTERNAL_ERROR", "GOAWAY_OK", "GOAWAY_PROTOCOL_ERROR", "INTERNAL_ERROR",
    "INVALID_CREDENTIALS", "INVALID_STREAM", "MAX_FRAME_PAYLOAD", "PROTOCOL_ERROR",
    "REFUSED_STREAM", "STREAM_ALREADY_CLOSED", "STREAM_IN_USE", "UNSUPPORTED_VERSION",
    "Session", "SpdyError", "Stream", "StreamRefused", "Transport",
    "control_frame", "data_frame", "decode_nv", "encode_nv", "goaway_frame", "new_compressor",
    "new_decompressor", "ping_frame", "rst_stream_frame",
]

log = logging.getLogger(__name__)

# RST_STREAM status codes (draft 3 §2.6.3).
PROTOCOL_ERROR = 1
INVALID_STREAM = 2
REFUSED_STREAM = 3
UNSUPPORTED_VERSION = 4
CANCEL = 5
INTERNAL_ERROR = 6
FLOW_CONTROL_ERROR = 7
STREAM_IN_USE = 8
STREAM_ALREADY_CLOSED = 9
INVALID_CREDENTIALS = 10
FRAME_TOO_LARGE = 11

# GOAWAY status codes.
GOAWAY_OK = 0
GOAWAY_PROTOCOL_ERROR = 1
GOAWAY_INTERNAL_ERROR = 2

# Control frame types; spdystream knows no others (no NOOP, no CREDENTIAL).
VERSION = 3
TYPE_SYN_STREAM = 1
TYPE_SYN_REPLY = 2
TYPE_RST_STREAM = 3
TYPE_SETTINGS = 4
TYPE_PING = 6
TYPE_GOAWAY = 7
TYPE_HEADERS = 8
TYPE_WINDOW_UPDATE = 9

FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02

MAX_FRAME_PAYLOAD = 0xFFFFFF
MAX_STREAM_ID = 0x7FFFFFFF
MAX_HEADER_PAIRS = 1000  # spdystream's reader limits
MAX_HEADER_FIELD = 1 << 20
MAX_NV_BLOCK = 8 << 20  # inflated size we accept, and raw size we send
STREAM_BUFFER_LIMIT = 1 << 20  # per stream, before the reader thread waits

# Headers a SYN_STREAM (request) or SYN_REPLY (response) must not carry (spdystream spdy/types.go).
_INVALID_REQUEST_HEADERS = frozenset(
    {"connection", "host", "keep-alive", "proxy-connection", "transfer-encoding"})
_INVALID_RESPONSE_HEADERS = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding"})

# Fixed payload lengths; spdystream would misread the next frame if these were wrong.
_FIXED_LENGTH = {TYPE_RST_STREAM: 8, TYPE_PING: 4, TYPE_GOAWAY: 8, TYPE_WINDOW_UPDATE: 8}
_MIN_LENGTH = {TYPE_SYN_STREAM: 10, TYPE_SYN_REPLY: 4, TYPE_HEADERS: 4, TYPE_SETTINGS: 4}

# --- the SPDY/3 header dictionary --------------------------------------------------------------
# Draft 3 §2.6.10.1, byte for byte as moby/spdystream spdy/dictionary.go has it: 65 names, each
# with a 32-bit length, then the run of status codes, phrases, dates and media types.
_DICT_NAMES = (
    "options", "head", "post", "put", "delete", "trace", "accept", "accept-charset",
    "accept-encoding", "accept-language", "accept-ranges", "age", "allow", "authorization",
    "cache-control", "connection", "content-base", "content-encoding", "content-language",
    "content-length", "content-location", "content-md5", "content-range", "content-type", "date",
    "etag", "expect", "expires", "from", "host", "if-match", "if-modified-since", "if-none-match",
    "if-range", "if-unmodified-since", "last-modified", "location", "max-forwards", "pragma",
    "proxy-authenticate", "proxy-authorization", "range", "referer", "retry-after", "server",
    "te", "trailer", "transfer-encoding", "upgrade", "user-agent", "vary", "via", "warning",
    "www-authenticate", "method", "get", "status", "200 OK", "version", "HTTP/1.1", "url",
    "public", "set-cookie", "keep-alive", "origin",
)
_DICT_TAIL = (
    b"100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    b"203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request"
    b"401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented"
    b"503 Service Unavailable"
    b"Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec "
    b"00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
    b"chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,"
    b"text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdch"
    b"charset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
DICTIONARY = b"".join(struct.pack(">I", len(n)) + n.encode() for n in _DICT_NAMES) + _DICT_TAIL
DICTIONARY_ADLER32 = 0xE3C6A7C2  # 1423 bytes; the id in every direction's first zlib header


class SpdyError(Exception):
    """A SPDY session or stream failed: protocol error, reset, refusal, timeout or closed session."""


class StreamRefused(SpdyError):
    """The peer answered our SYN_STREAM with RST_STREAM (``status``) instead of SYN_REPLY."""

    def __init__(self, stream_id: int, status: int) -> None:
        self.stream_id = stream_id
        self.status = status
        super().__init__(f"stream {stream_id} refused by peer (RST_STREAM status {status})")


class _ProtocolError(Exception):
    """The peer broke the protocol; the session ends (GOAWAY PROTOCOL_ERROR)."""


class _HeaderError(_ProtocolError):
    """A well-formed NV block with an upper-case, repeated or forbidden name."""


class _GoneAway(Exception):
    """The peer sent GOAWAY."""


class Transport(Protocol):
    """A byte stream: a socket satisfies it, and so does the WebSocket tunnel adapter.

    ``close()`` must make a ``recv()`` blocked in another thread return (``b""`` or an error).
    When the object also has ``shutdown(how)`` (as sockets do), the session half-closes with
    it after GOAWAY and shuts it down fully before ``close()``.
    """

    def recv(self, n: int) -> bytes: ...  # b"" at EOF
    def sendall(self, data: bytes) -> None: ...
    def close(self) -> None: ...


# --- frames ------------------------------------------------------------------------------------

def control_frame(frame_type: int, flags: int, payload: bytes) -> bytes:
    """A control frame: C=1, version 3, type, flags and the 24-bit payload length."""
    if len(payload) > MAX_FRAME_PAYLOAD:
        raise SpdyError(f"control frame payload of {len(payload)} bytes is too large")
    return struct.pack(">HHI", 0x8000 | VERSION, frame_type, flags << 24 | len(payload)) + payload


def data_frame(stream_id: int, data: bytes | bytearray | memoryview = b"", *,
               fin: bool = False) -> bytes:
    """A DATA frame of at most 2**24-1 bytes on ``stream_id``."""
    if len(data) > MAX_FRAME_PAYLOAD:
        raise SpdyError(f"DATA payload of {len(data)} bytes is too large")
    flags = FLAG_FIN if fin else 0
    return struct.pack(">II", stream_id & MAX_STREAM_ID, flags << 24 | len(data)) + bytes(data)


def rst_stream_frame(stream_id: int, status: int) -> bytes:
    """RST_STREAM for ``stream_id`` with ``status`` (CANCEL, PROTOCOL_ERROR, …)."""
    return control_frame(TYPE_RST_STREAM, 0, struct.pack(">II", stream_id & MAX_STREAM_ID, status))


def goaway_frame(last_good_stream_id: int, status: int = GOAWAY_OK) -> bytes:
    """GOAWAY naming the last stream id we accepted."""
    payload = struct.pack(">II", last_good_stream_id & MAX_STREAM_ID, status)
    return control_frame(TYPE_GOAWAY, 0, payload)


def ping_frame(ping_id: int) -> bytes:
    """PING with a 32-bit id."""
    return control_frame(TYPE_PING, 0, struct.pack(">I", ping_id))


def new_compressor() -> zlib._Compress:
    """The zlib stream for one direction's NV blocks, as Go writes them (level 9, dictionary)."""
    return zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, DICTIONARY)


def new_decompressor() -> zlib._Decompress:
    """The zlib stream for reading one direction's NV blocks."""
    return zlib.decompressobj(zdict=DICTIONARY)


def _to_bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _to_str(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def encode_nv(headers: Mapping[str, str]) -> bytes:
    """An uncompressed NV block; names are lower-cased (as Go does), values sent as given."""
    parts = [struct.pack(">I", len(headers))]
    seen: set[str] = set()
    for name, value in headers.items():
        lname = name.lower()
        if lname in seen:
            raise ValueError(f"header {lname!r} given twice")
        seen.add(lname)
        raw_name, raw_value = _to_bytes(lname), _to_bytes(value)
        if len(raw_name) > MAX_HEADER_FIELD or len(raw_value) > MAX_HEADER_FIELD:
            raise ValueError(f"header {lname!r} is longer than {MAX_HEADER_FIELD} bytes")
        parts += [struct.pack(">I", len(raw_name)), raw_name,
                  struct.pack(">I", len(raw_value)), raw_value]
    return b"".join(parts)


def decode_nv(block: bytes) -> dict[str, list[str]]:
    """Parse an inflated NV block into name → values (split on NUL), as spdystream checks it.

    Raises ``SpdyError`` for a malformed block, an upper-case or repeated name.
    """
    try:
        return _decode_nv(block)
    except _ProtocolError as exc:
        raise SpdyError(str(exc)) from None


def _decode_nv(block: bytes) -> dict[str, list[str]]:
    view = memoryview(block)
    off = 0

    def take(n: int) -> memoryview:
        nonlocal off
        if off + n > len(view):
            raise _ProtocolError("truncated header block")
        piece = view[off:off + n]
        off += n
        return piece

    def field() -> bytes:
        (size,) = struct.unpack(">I", take(4))
        if size > MAX_HEADER_FIELD:
            raise _ProtocolError(f"header field of {size} bytes exceeds {MAX_HEADER_FIELD}")
        return bytes(take(size))

    (count,) = struct.unpack(">I", take(4))
    if count > MAX_HEADER_PAIRS:
        raise _ProtocolError(f"header block with {count} pairs exceeds {MAX_HEADER_PAIRS}")
    result: dict[str, list[str]] = {}
    problem: str | None = None
    for _ in range(count):
        name = _to_str(field())
        value = _to_str(field())
        # Like spdystream, read the whole block before failing on a bad name.
        if name != name.lower():
            problem = problem or f"header name {name!r} is not lower-case"
            name = name.lower()
        if name in result:
            problem = problem or f"header {name!r} repeated"
            continue
        result[name] = value.split("\x00")
    if off != len(view):
        raise _ProtocolError(f"{len(view) - off} bytes after the header block")
    if problem:
        raise _HeaderError(problem)
    return result


# --- streams -----------------------------------------------------------------------------------

class Stream:
    """One SPDY stream: a byte pipe each way with half-close (FIN) and reset (RST_STREAM)."""

    def __init__(self, session: Session, stream_id: int, values: dict[str, list[str]], *,
                 outgoing: bool) -> None:
        self.id = stream_id
        self.header_values = values  # name → every value (NUL-separated on the wire)
        self.headers = {name: vals[0] if vals else "" for name, vals in values.items()}
        self._session = session
        self._outgoing = outgoing
        self._cond = threading.Condition(threading.Lock())
        self._write_lock = threading.Lock()  # keeps one write's frames and our FIN in order
        self._buf = bytearray()
        self._replied = False  # SYN_REPLY received (ours) or sent (peer's)
        self._remote_fin = False
        self._local_fin = False  # we sent FIN, or can no longer send anything
        self._reset = False  # RST_STREAM sent or received
        self._local_reset = False
        self._reset_status: int | None = None
        self._ended = False  # the session is gone

    def __repr__(self) -> str:
        return f"<spdy.Stream {self.id} {self.headers}>"

    def read(self, n: int = 65536) -> bytes:
        """Up to ``n`` bytes, blocking; b"" after the peer's FIN, a reset or the session's end."""
        if n <= 0:
            return b""
        with self._cond:
            while not self._buf and not self._eof():
                self._cond.wait()
            if self._local_reset or not self._buf:
                return b""
            chunk = bytes(self._buf[:n])
            del self._buf[:n]
            self._cond.notify_all()  # the reader thread may be waiting for room
            return chunk

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` as DATA frame(s); SpdyError once reset, after our FIN or session end."""
        view = memoryview(data).cast("B")
        with self._write_lock:
            self._await_reply()
            self._check_writable()
            for off in range(0, len(view), MAX_FRAME_PAYLOAD):
                self._check_writable()
                self._session._send(data_frame(self.id, view[off:off + MAX_FRAME_PAYLOAD]))

    def close(self) -> None:
        """Half-close: send an empty DATA frame with FIN. Idempotent and never raises."""
        with self._write_lock:
            try:
                self._await_reply()
            except SpdyError:
                return
            with self._cond:
                if self._local_fin or self._reset or self._ended:
                    return
                self._local_fin = True
            try:
                self._session._send(data_frame(self.id, b"", fin=True))
            except SpdyError:
                return
        self._session._forget_if_done(self)

    def reset(self, status: int = CANCEL) -> None:
        """Abort: RST_STREAM unless we already sent FIN or the stream is gone. Idempotent."""
        if self._abort():
            self._session._send_quietly(rst_stream_frame(self.id, status))

    @property
    def remote_closed(self) -> bool:
        """The peer will send no more data: it sent FIN, the stream was reset or the session ended."""
        with self._cond:
            return self._eof()

    @property
    def reset_status(self) -> int | None:
        """The status of the peer's RST_STREAM, if it sent one."""
        return self._reset_status

    # --- called by the session ---

    def _eof(self) -> bool:
        return self._remote_fin or self._reset or self._ended

    def _await_reply(self) -> None:
        """Block until the stream is replied to, so our DATA never precedes the SYN_REPLY."""
        with self._cond:
            if self._replied or self._reset or self._ended:
                return
            if threading.current_thread() is self._session._reader:
                raise SpdyError(f"stream {self.id}: cannot write before on_stream returns")
            while not (self._replied or self._reset or self._ended):
                self._cond.wait()

    def _abort(self) -> bool:
        """Reset locally (reads give b"", writes fail); whether an RST_STREAM should go out."""
        with self._cond:
            if self._local_reset:
                return False
            send = not (self._local_fin or self._reset or self._ended)
            self._local_reset = self._reset = self._local_fin = True
            self._buf.clear()
            self._cond.notify_all()
        self._session._forget(self)
        return send

    def _check_writable(self) -> None:
        with self._cond:
            if self._ended:
                raise SpdyError(f"stream {self.id}: session closed")
            if self._reset:
                raise SpdyError(f"stream {self.id}: reset")
            if self._local_fin:
                raise SpdyError(f"stream {self.id}: write after close")

    def _deliver(self, data: bytes) -> None:
        with self._cond:
            while (len(self._buf) >= STREAM_BUFFER_LIMIT and not self._local_reset
                   and not self._ended and not self._session._closing):
                self._cond.wait()
            if self._local_reset or self._remote_fin or self._ended:
                return
            self._buf += data
            self._cond.notify_all()

    def _mark(self, *, replied: bool = False, remote_fin: bool = False, ended: bool = False,
              reset_status: int | None = None) -> None:
        with self._cond:
            self._replied |= replied
            self._remote_fin |= remote_fin
            self._ended |= ended
            if reset_status is not None:
                self._reset = self._local_fin = True
                self._reset_status = reset_status
            self._cond.notify_all()

    def _done(self) -> bool:
        with self._cond:
            return self._reset or (self._local_fin and self._remote_fin)


# --- sessions ----------------------------------------------------------------------------------

class _Waiter:
    __slots__ = ("event", "ok")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.ok = False


class _FrameReader:
    """Exact-length reads over ``Transport.recv``."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._buf = bytearray()

    def read(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self._transport.recv(min(max(n - len(self._buf), 65536), 1 << 20))
            if not chunk:
                raise EOFError
            self._buf += chunk
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out


class Session:
    """One SPDY/3.1 connection in the client or server role."""

    linger = 2.0  # after our GOAWAY, how long to wait for the peer's EOF before closing
    send_wait = 2.0  # how long close() waits for a busy send lock before skipping GOAWAY

    def __init__(self, transport: Transport, *, server: bool,
                 on_stream: Callable[[Stream], bool] | None = None,
                 idle_timeout: float | None = None) -> None:
        """Wrap ``transport``; nothing is read until :meth:`start`.

        ``on_stream`` runs in the reader thread for each SYN_STREAM from the peer: True sends
        SYN_REPLY (then the stream's data is delivered), False or an exception refuses it with
        RST_STREAM CANCEL; without ``on_stream`` every stream is refused. It must not block
        long, nor write to the stream: hand the stream to another thread, whose writes wait
        for the SYN_REPLY. ``idle_timeout``: seconds without a frame read or written after
        which every stream is reset and the session closed.
        """
        self._transport = transport
        self._server = server
        self._on_stream = on_stream
        self._idle_timeout = idle_timeout
        self._send_lock = threading.Lock()  # one frame at a time; also orders the compressor
        self._lock = threading.Lock()  # the fields below
        self._streams: dict[int, Stream] = {}
        self._next_id = 2 if server else 1
        self._next_ping = 2 if server else 1
        self._expect_id = 1 if server else 2  # smallest id the next peer SYN_STREAM may have
        self._last_good = 0  # highest peer stream id accepted, for GOAWAY
        self._pings: dict[int, _Waiter] = {}
        self._closing = False
        self._transport_closed = False
        self._linger_timer: threading.Timer | None = None
        self._closed_event = threading.Event()
        self._reader_done = threading.Event()
        self._reader: threading.Thread | None = None
        self._compressor = new_compressor()
        self._decompressor = new_decompressor()
        self._frames = _FrameReader(transport)
        self._last_activity = time.monotonic()

    def __repr__(self) -> str:
        role = "server" if self._server else "client"
        return f"<spdy.Session {role}{' closed' if self._closing else ''}>"

    # --- public API ---

    def start(self) -> None:
        """Start the reader thread, which reads and dispatches every frame."""
        with self._lock:
            if self._reader is not None or self._closing:
                raise SpdyError("session already started or closed")
            role = "server" if self._server else "client"
            self._reader = threading.Thread(target=self._run, name=f"spdy-{role}-reader",
                                            daemon=True)
        self._reader.start()
        if self._idle_timeout:
            threading.Thread(target=self._watch_idle, name=f"spdy-{role}-idle",
                             daemon=True).start()

    def open_stream(self, headers: dict[str, str], timeout: float = 30) -> Stream:
        """Send SYN_STREAM with ``headers`` and wait for SYN_REPLY (SpdyError on RST or timeout)."""
        raw = encode_nv(headers)
        if len(raw) > MAX_NV_BLOCK:
            raise ValueError(f"headers of {len(raw)} bytes are too large")
        values = decode_nv(raw)
        if bad := sorted(_INVALID_REQUEST_HEADERS & values.keys()):
            raise ValueError(f"a SYN_STREAM must not carry {', '.join(bad)}")
        if self._reader is None:
            raise SpdyError("session not started")
        stream: Stream | None = None

        def build() -> bytes:
            nonlocal stream
            with self._lock:
                if self._closing:
                    raise SpdyError("session closed")
                stream_id = self._next_id
                if stream_id > MAX_STREAM_ID:
                    raise SpdyError("stream ids exhausted")
                self._next_id += 2
                stream = Stream(self, stream_id, values, outgoing=True)
                self._streams[stream_id] = stream
            prefix = struct.pack(">IIBB", stream_id, 0, 0, 0)  # associated-to, priority, slot
            return control_frame(TYPE_SYN_STREAM, 0, prefix + self._compress(raw))

        # Ids are allocated under the send lock so they reach the wire in increasing order.
        self._send(build)
        assert stream is not None
        deadline = time.monotonic() + timeout
        with stream._cond:
            while not (stream._replied or stream._reset or stream._ended):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                stream._cond.wait(left)
            replied, status, ended = stream._replied, stream._reset_status, stream._ended
        if replied:
            return stream
        if status is not None:
            raise StreamRefused(stream.id, status)
        if ended:
            raise SpdyError(f"session closed before stream {stream.id} was accepted")
        stream.reset(CANCEL)
        raise SpdyError(f"timed out after {timeout}s waiting for stream {stream.id} to be accepted")

    def ping(self, timeout: float = 5) -> float:
        """Send PING and wait for its echo; the round trip in seconds."""
        with self._lock:
            if self._closing or self._reader is None:
                raise SpdyError("session closed or not started")
            ping_id = self._next_ping
            self._next_ping = ping_id - 0x7FFFFFFE if ping_id > 0x7FFFFFFE else ping_id + 2
            waiter = self._pings[ping_id] = _Waiter()
        try:
            started = time.monotonic()
            self._send(ping_frame(ping_id))
            if not waiter.event.wait(timeout):
                raise SpdyError(f"no answer to PING {ping_id} within {timeout}s")
            if not waiter.ok:
                raise SpdyError("session closed while waiting for PING")
            return time.monotonic() - started
        finally:
            with self._lock:
                self._pings.pop(ping_id, None)

    def close(self) -> None:
        """Send GOAWAY (last good id, OK) and close the transport; streams see EOF. Idempotent."""
        self._shutdown(GOAWAY_OK)

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Wait for the reader to end (peer GOAWAY or EOF, or close()); False on timeout."""
        return self._reader_done.wait(timeout)

    @property
    def closed(self) -> bool:
        """close() was called or the session ended."""
        return self._closed_event.is_set()

    # --- sending ---

    def _compress(self, raw: bytes) -> bytes:
        """Deflate one NV block; the caller holds the send lock, so blocks stay in wire order."""
        return self._compressor.compress(raw) + self._compressor.flush(zlib.Z_SYNC_FLUSH)

    def _send(self, frame: bytes | Callable[[], bytes]) -> None:
        """Write one frame (or build it under the send lock and write it)."""
        failure: BaseException | None = None
        with self._send_lock:
            if self._transport_closed:
                raise SpdyError("session closed")
            data = frame() if callable(frame) else frame
            try:
                self._transport.sendall(data)
            except Exception as exc:  # noqa: BLE001 - any transport failure ends the session
                failure = exc
        if failure is not None:
            log.debug("SPDY write failed: %s", failure)
            self._shutdown(None)
            raise SpdyError(f"write failed: {failure}") from failure
        self._last_activity = time.monotonic()

    def _send_quietly(self, frame: bytes) -> None:
        try:
            self._send(frame)
        except SpdyError:
            pass

    def _send_best_effort(self, frame: bytes) -> None:
        """Send without risking a hang on a send lock held by a blocked writer."""
        if not self._send_lock.acquire(timeout=self.send_wait):
            return
        try:
            if not self._transport_closed:
                self._transport.sendall(frame)
                self._last_activity = time.monotonic()
        except Exception as exc:  # noqa: BLE001 - best effort while closing
            log.debug("SPDY write failed during shutdown: %s", exc)
        finally:
            self._send_lock.release()

    # --- stream bookkeeping ---

    def _forget(self, stream: Stream) -> None:
        with self._lock:
            if self._streams.get(stream.id) is stream:
                del self._streams[stream.id]

    def _forget_if_done(self, stream: Stream) -> None:
        if stream._done():
            self._forget(stream)

    def _get(self, stream_id: int) -> Stream | None:
        with self._lock:
            return self._streams.get(stream_id)

    # --- shutdown ---

    def _shutdown(self, goaway: int | None, *, reset_streams: bool = False) -> None:
        """End the session once: RSTs and GOAWAY if asked, every waiter sees the end, and the
        transport closes.

        With a reader running and a transport that can half-close, we shut our side, let the
        reader discard what the peer still sends until its EOF, and close after ``linger`` at
        the latest: closing with unread input would make the kernel reset the connection. The
        same timer bounds a final write that a peer which no longer reads would block.
        """
        with self._lock:
            if self._closing:
                return
            self._closing = True
            streams = list(self._streams.values())
            pings = list(self._pings.values())
            last_good = self._last_good
            reader = self._reader
            timer = threading.Timer(self.linger, self._close_transport)
            timer.daemon = True
            self._linger_timer = timer
        timer.start()
        self._closed_event.set()
        final = []
        for stream in streams:
            if reset_streams and stream._abort():
                final.append(rst_stream_frame(stream.id, CANCEL))
            stream._mark(ended=True)
        with self._lock:
            self._streams.clear()
        for waiter in pings:
            waiter.event.set()
        if goaway is not None:
            final.append(goaway_frame(last_good, goaway))
        if final:
            self._send_best_effort(b"".join(final))
        running = reader is not None and reader.is_alive()
        shutdown = getattr(self._transport, "shutdown", None)
        if running and callable(shutdown):
            try:
                shutdown(socket.SHUT_WR)
            except OSError:
                self._close_transport()
        else:
            self._close_transport()
        if reader is None:
            self._reader_done.set()

    def _close_transport(self) -> None:
        with self._lock:
            if self._transport_closed:
                return
            self._transport_closed = True
            timer = self._linger_timer
        if timer is not None and timer is not threading.current_thread():
            timer.cancel()
        shutdown = getattr(self._transport, "shutdown", None)
        if callable(shutdown):
            try:
                shutdown(socket.SHUT_RDWR)
            except OSError as exc:
                log.debug("shutting down SPDY transport: %s", exc)
        try:
            self._transport.close()
        except Exception as exc:  # noqa: BLE001 - the session is over either way
            log.debug("closing SPDY transport: %s", exc)

    def _watch_idle(self) -> None:
        """spdystream's idle timer: no frame read or written for that long resets everything."""
        assert self._idle_timeout
        while True:
            left = self._idle_timeout - (time.monotonic() - self._last_activity)
            if left <= 0:
                break
            if self._closed_event.wait(left):
                return
        if self._closing:
            return
        log.info("SPDY session idle for %ss, resetting its streams", self._idle_timeout)
        self._shutdown(None, reset_streams=True)

    # --- reading ---

    def _run(self) -> None:
        try:
            while not self._closing:
                self._read_frame()
        except (EOFError, _GoneAway):
            self._shutdown(None)
        except _ProtocolError as exc:
            log.warning("SPDY protocol error from peer, closing the session: %s", exc)
            self._shutdown(GOAWAY_PROTOCOL_ERROR)
        except Exception as exc:  # a transport error, or a bug: end the session either way
            if self._closing:
                log.debug("SPDY reader stopped: %s", exc)
            else:
                log.debug("SPDY read failed: %s", exc, exc_info=True)
            self._shutdown(None)
        finally:
            self._shutdown(None)
            self._drain()
            self._close_transport()
            self._reader_done.set()

    def _drain(self) -> None:
        """Discard input until the peer's EOF or until the linger timer closes the transport."""
        while not self._transport_closed:
            try:
                if not self._transport.recv(65536):
                    return
            except Exception:  # noqa: BLE001 - a failing transport is as good as EOF here
                return

    def _read_frame(self) -> None:
        word, flags_length = struct.unpack(">II", self._frames.read(8))
        flags, length = flags_length >> 24, flags_length & 0xFFFFFF
        if word & 0x80000000:
            frame_type = word & 0xFFFF
            self._check_control(frame_type, flags, length)
            payload = self._frames.read(length)
            self._last_activity = time.monotonic()
            if not self._closing:
                self._on_control(frame_type, flags, payload)
        else:
            stream_id = word & MAX_STREAM_ID
            if stream_id == 0:
                raise _ProtocolError("DATA frame on stream 0")
            payload = self._frames.read(length)
            self._last_activity = time.monotonic()
            if not self._closing:
                self._on_data(stream_id, flags, payload)

    @staticmethod
    def _check_control(frame_type: int, flags: int, length: int) -> None:
        """Reject an unknown type or impossible length before reading the payload."""
        if frame_type in _FIXED_LENGTH:
            if length != _FIXED_LENGTH[frame_type]:
                raise _ProtocolError(f"control frame type {frame_type} with length {length}")
        elif frame_type in _MIN_LENGTH:
            if length < _MIN_LENGTH[frame_type]:
                raise _ProtocolError(f"control frame type {frame_type} with length {length}")
        else:
            raise _ProtocolError(f"unknown control frame type {frame_type}")
        if frame_type in (TYPE_PING, TYPE_GOAWAY, TYPE_WINDOW_UPDATE) and flags:
            raise _ProtocolError(f"control frame type {frame_type} with flags {flags:#x}")

    def _inflate(self, block: bytes) -> dict[str, list[str]]:
        try:
            raw = self._decompressor.decompress(block, MAX_NV_BLOCK)
        except zlib.error as exc:
            raise _ProtocolError(f"bad compressed header block: {exc}") from None
        if self._decompressor.unconsumed_tail:
            raise _ProtocolError(f"header block inflates past {MAX_NV_BLOCK} bytes")
        if self._decompressor.eof:
            raise _ProtocolError("header compression stream ended")
        return _decode_nv(raw)

    def _on_control(self, frame_type: int, flags: int, payload: bytes) -> None:
        if frame_type == TYPE_SYN_STREAM:
            self._on_syn_stream(flags, payload)
        elif frame_type == TYPE_SYN_REPLY:
            self._on_syn_reply(flags, payload)
        elif frame_type == TYPE_RST_STREAM:
            stream_id, status = struct.unpack(">II", payload)
            stream_id &= MAX_STREAM_ID
            if stream_id == 0 or status == 0:
                raise _ProtocolError(f"RST_STREAM on stream {stream_id} with status {status}")
            stream = self._get(stream_id)
            if stream is not None:
                self._forget(stream)
                stream._mark(reset_status=status)
        elif frame_type == TYPE_SETTINGS:
            (count,) = struct.unpack(">I", payload[:4])
            if len(payload) != 4 + 8 * count:
                raise _ProtocolError(f"SETTINGS with {count} entries in {len(payload)} bytes")
        elif frame_type == TYPE_PING:
            self._on_ping(payload)
        elif frame_type == TYPE_GOAWAY:
            raise _GoneAway
        elif frame_type == TYPE_HEADERS:
            stream_id = struct.unpack(">I", payload[:4])[0] & MAX_STREAM_ID
            values = self._inflate(payload[4:])
            invalid = _INVALID_REQUEST_HEADERS if stream_id % 2 == 0 else _INVALID_RESPONSE_HEADERS
            if stream_id == 0 or invalid & values.keys():
                raise _ProtocolError(f"bad HEADERS frame on stream {stream_id}")
            stream = self._get(stream_id)
            if stream is not None and stream._replied and flags & FLAG_FIN:
                stream._mark(remote_fin=True)
                self._forget_if_done(stream)
        # WINDOW_UPDATE: no flow control, as in spdystream.

    def _on_syn_stream(self, flags: int, payload: bytes) -> None:
        stream_id = struct.unpack(">I", payload[:4])[0] & MAX_STREAM_ID
        try:
            values = self._inflate(payload[10:])  # always inflate: the zlib stream must advance
            if bad := sorted(_INVALID_REQUEST_HEADERS & values.keys()):
                raise _HeaderError(f"SYN_STREAM carries {', '.join(bad)}")
        except _HeaderError:
            if stream_id:
                self._send_quietly(rst_stream_frame(stream_id, PROTOCOL_ERROR))
            raise
        if stream_id == 0:
            raise _ProtocolError("SYN_STREAM with stream id 0")
        with self._lock:
            if stream_id < self._expect_id:
                valid = False
            else:
                valid = True
                self._expect_id = stream_id + 2
                self._last_good = stream_id
        if not valid:
            log.debug("SPDY: refusing stream %d, ids must increase", stream_id)
            self._send_quietly(rst_stream_frame(stream_id, PROTOCOL_ERROR))
            return
        stream = Stream(self, stream_id, values, outgoing=False)
        stream._remote_fin = bool(flags & FLAG_FIN)
        stream._local_fin = bool(flags & FLAG_UNIDIRECTIONAL)
        with self._lock:
            if self._closing:
                return
            self._streams[stream_id] = stream
        accept = False
        if self._on_stream is not None:
            try:
                accept = bool(self._on_stream(stream))
            except Exception:
                log.exception("SPDY on_stream failed for stream %d", stream_id)
        if not accept:
            stream.reset(CANCEL)
            return
        with stream._cond:
            if stream._reset or stream._ended:
                return  # the handler reset it, or the session closed meanwhile

        def reply() -> bytes:
            return control_frame(TYPE_SYN_REPLY, 0,
                                 struct.pack(">I", stream_id) + self._compress(b"\0\0\0\0"))
        try:
            self._send(reply)
        finally:
            stream._mark(replied=True)  # a failed send ended the session: writers see that
        self._forget_if_done(stream)

    def _on_syn_reply(self, flags: int, payload: bytes) -> None:
        stream_id = struct.unpack(">I", payload[:4])[0] & MAX_STREAM_ID
        values = self._inflate(payload[4:])
        if stream_id == 0 or _INVALID_RESPONSE_HEADERS & values.keys():
            raise _ProtocolError(f"bad SYN_REPLY on stream {stream_id}")
        stream = self._get(stream_id)
        if stream is None or not stream._outgoing or stream._replied:
            return
        stream._mark(replied=True, remote_fin=bool(flags & FLAG_FIN))
        self._forget_if_done(stream)

    def _on_ping(self, payload: bytes) -> None:
        (ping_id,) = struct.unpack(">I", payload)
        if ping_id == 0:
            raise _ProtocolError("PING with id 0")
        ours = 0 if self._server else 1
        if ping_id & 1 != ours:
            self._send_quietly(ping_frame(ping_id))
            return
        with self._lock:
            waiter = self._pings.get(ping_id)
        if waiter is not None:
            waiter.ok = True
            waiter.event.set()

    def _on_data(self, stream_id: int, flags: int, payload: bytes) -> None:
        stream = self._get(stream_id)
        if stream is None or not stream._replied:
            return  # spdystream drops these silently
        if payload:
            stream._deliver(payload)
        if flags & FLAG_FIN:
            stream._mark(remote_fin=True)
            self._forget_if_done(stream)
