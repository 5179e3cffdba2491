"""remotecommand: exec and attach sessions over SPDY (v1–v4) and WebSocket (channels, v5).

Follows k8s.io/cri-streaming's remotecommand server (httpstream.go, websocket.go, exec.go,
attach.go) as /work/shared/notes/streaming.md §3 describes it, plus v5.channel.k8s.io over
WebSocket, which CRI-O does not serve, so that ``crictl --transport websocket`` works.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ocid.oci.streams import StreamIO
from ocid.stream import spdy

if TYPE_CHECKING:
    from ocid.stream.server import AttachCall, Backend, ExecCall
    from ocid.stream.websocket import WebSocket

log = logging.getLogger(__name__)

V1 = "channel.k8s.io"
V2 = "v2.channel.k8s.io"
V3 = "v3.channel.k8s.io"
V4 = "v4.channel.k8s.io"
V5 = "v5.channel.k8s.io"
BASE64 = "base64.channel.k8s.io"
V4_BASE64 = "v4.base64.channel.k8s.io"

# Server order, as X-Accepted-Stream-Protocol-Versions lists them; the client's order wins.
SPDY_PROTOCOLS = (V4, V3, V2, V1)
# "" is what a client that offers nothing gets; V5 goes beyond CRI-O (notes §5).
WEBSOCKET_PROTOCOLS = ("", V1, BASE64, V4, V4_BASE64, V5)

_SPDY_VERSION = {V1: 1, V2: 2, V3: 3, V4: 4}
STDIN, STDOUT, STDERR, ERROR, RESIZE = range(5)
STREAM_CLOSE = 255  # v5: [255, channel] half-closes the client's channel
_PIPE_LIMIT = 1 << 20  # stdin bytes buffered before the WebSocket reader waits
_READ = 65536


class Requested(Protocol):
    """The streams a cached CRI request asked for."""

    tty: bool
    stdin: bool
    stdout: bool
    stderr: bool


# --- status ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Status:
    """metav1.Status as the error stream carries it."""

    status: str  # "Success" or "Failure"
    message: str = ""
    reason: str = ""
    causes: tuple[tuple[str, str], ...] = ()  # (reason, message): StatusCause's type and message
    code: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "Success"

    def json(self) -> bytes:
        """v4 and later: the JSON object, keys in metav1.Status order, empty fields left out."""
        obj: dict[str, object] = {"status": self.status}
        if self.message:
            obj["message"] = self.message
        if self.reason:
            obj["reason"] = self.reason
        if self.causes:
            obj["details"] = {"causes": [{"reason": r, "message": m} for r, m in self.causes]}
        if self.code:
            obj["code"] = self.code
        return go_json(obj)

    def text(self) -> bytes:
        """v1–v3: nothing on success, the message on failure."""
        return b"" if self.ok else self.message.encode()


SUCCESS = Status("Success")


def exit_status(code: int) -> Status:
    """A non-zero exit code as cri-streaming's exec reports it (observed from CRI-O)."""
    return Status(
        "Failure",
        f"command terminated with non-zero exit code: exit status {code}",
        "NonZeroExitCode",
        (("ExitCode", str(code)),),
    )


def internal_error(message: str) -> Status:
    """apierrors.NewInternalError as the note gives it on the wire."""
    return Status("Failure", f"Internal error occurred: {message}", "InternalError", code=500)


def go_json(obj: object) -> bytes:
    """json.Marshal's output: compact, UTF-8, with <, >, & and U+2028/9 escaped."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                          ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return text.encode()


def run_exec(backend: Backend, call: ExecCall, io: StreamIO) -> Status:
    """Run the exec through the backend; its exit code or failure as a Status."""
    try:
        code = backend.exec(call, io)
    except Exception as exc:  # noqa: BLE001 - every failure goes to the client
        log.warning("exec in container %s failed: %s", call.container_id, exc)
        return internal_error(f"error executing command in container: {exc}")
    return SUCCESS if code == 0 else exit_status(code)


def run_attach(backend: Backend, call: AttachCall, io: StreamIO) -> Status:
    """Run the attach through the backend; attach never reports an exit code."""
    try:
        backend.attach(call, io)
    except Exception as exc:  # noqa: BLE001
        log.warning("attach to container %s failed: %s", call.container_id, exc)
        return internal_error(f"error attaching to container: {exc}")
    return SUCCESS


# --- resize events -----------------------------------------------------------------------------


RESIZE_PENDING_MAX = 4096


class ResizeDecoder:
    """A stream of ``{"Width":W,"Height":H}`` JSON values into (width, height) events.

    Like Go's json.Decoder into TerminalSize: field names match in any case, the first
    undecodable value ends the events (a None goes to the queue).
    """

    def __init__(self, sizes: queue.Queue[tuple[int, int] | None]):
        self._sizes = sizes
        self._buf = ""
        self._raw = b""
        self._decoder = json.JSONDecoder()
        self.ended = False

    def feed(self, data: bytes) -> None:
        """Decode what ``data`` completes; later data after an error is ignored.

        A resize message is ~30 bytes: more than RESIZE_PENDING_MAX pending, or any value the
        parser chokes on (deep nesting, huge numbers), ends the events instead of growing.
        """
        if self.ended:
            return
        if len(self._raw) + len(self._buf) + len(data) > RESIZE_PENDING_MAX:
            self.end()
            return
        try:
            self._feed(data)
        except (ValueError, RecursionError):
            self.end()

    def _feed(self, data: bytes) -> None:
        self._raw += data
        try:
            text = self._raw.decode()
        except UnicodeDecodeError as exc:
            if exc.end < len(self._raw) or len(self._raw) - exc.start > 3:
                self.end()
                return
            text = self._raw[:exc.start].decode()  # a split multi-byte character
        self._raw = self._raw[len(text.encode()):]
        self._buf += text
        while True:
            self._buf = self._buf.lstrip(" \t\r\n")
            if not self._buf:
                return
            try:
                value, used = self._decoder.raw_decode(self._buf)
            except json.JSONDecodeError as exc:
                if exc.pos >= len(self._buf):
                    return  # incomplete: wait for more
                self.end()
                return
            self._buf = self._buf[used:]
            size = _terminal_size(value)
            if size is None:
                self.end()
                return
            self._sizes.put(size)

    def end(self) -> None:
        """No more events."""
        if not self.ended:
            self.ended = True
            self._sizes.put(None)


def _terminal_size(value: object) -> tuple[int, int] | None:
    if not isinstance(value, dict):
        return None
    fields = {str(k).lower(): v for k, v in value.items()}
    width, height = fields.get("width", 0), fields.get("height", 0)
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 0xFFFF
               for v in (width, height)):
        return None
    return width, height


# --- SPDY --------------------------------------------------------------------------------------


def serve_spdy(
    transport: spdy.Transport,
    protocol: str,
    call: Requested,
    run: Callable[[StreamIO], Status],
    *,
    idle_timeout: float | None,
    creation_timeout: float,
) -> None:
    """One exec/attach session on an upgraded connection, the client having chosen ``protocol``.

    Waits for the streams the cached request implies, runs ``run`` on them, writes the status on
    the error stream, resets what is left and sends GOAWAY.
    """
    version = _SPDY_VERSION[protocol]
    known = {"error", "stdin", "stdout", "stderr"} | ({"resize"} if version >= 3 else set())
    expected = 1 + call.stdin + call.stdout + call.stderr + (call.tty and version >= 3)
    got: dict[str, spdy.Stream] = {}
    accepted: list[spdy.Stream] = []
    arrived = threading.Condition()

    def on_stream(stream: spdy.Stream) -> bool:
        kind = stream.headers.get("streamtype", "")
        with arrived:
            if kind not in known or kind in got:
                # cri-streaming accepts and ignores these; refused here, since a stream nobody
                # reads would buffer up to a MiB each without limit.
                log.warning("remotecommand: unexpected or repeated stream type %r", kind)
                return False
            accepted.append(stream)
            got[kind] = stream
            arrived.notify_all()
        return True

    session = spdy.Session(transport, server=True, on_stream=on_stream,
                           idle_timeout=idle_timeout)
    session.start()
    try:
        if not _wait_for_streams(session, arrived, lambda: len(got) >= expected,
                                 creation_timeout):
            if not session.closed:
                log.warning("remotecommand: timed out waiting for client to create streams")
            return
        with arrived:
            streams = dict(got)
        error = streams.get("error")
        if version == 1 and error is not None:
            error.reset()  # what 1.0 kubelets did; the v1 client expects it
        resizes: queue.Queue[tuple[int, int] | None] | None = None
        if call.tty and "resize" in streams:
            resizes = queue.Queue()
            threading.Thread(target=_pump_resize_stream, args=(streams["resize"], resizes),
                             name="spdy-resize", daemon=True).start()
        io = StreamIO(
            stdin=_reader(streams.get("stdin")) if call.stdin else None,
            stdout=_writer(streams.get("stdout")) if call.stdout else None,
            stderr=_writer(streams.get("stderr")) if call.stderr else None,
            resizes=resizes,
        )
        # The client's connection ending (not its stdin) ends the exec or detaches the attach.
        threading.Thread(target=_signal_when_closed, args=(session, io.gone),
                         name="spdy-watch", daemon=True).start()
        status = run(io)
        payload = status.json() if version >= 4 else status.text()
        if payload and error is not None:
            try:
                error.write(payload)
            except spdy.SpdyError as exc:
                log.debug("remotecommand: status not delivered: %s", exc)
    finally:
        with arrived:
            leftover = list(accepted)
        for stream in leftover:
            stream.reset()
        session.close()
        session.wait_closed(session.linger + 1)


def _signal_when_closed(session: spdy.Session, gone: threading.Event) -> None:
    session.wait_closed()
    gone.set()


def _wait_for_streams(session: spdy.Session, cond: threading.Condition,
                      ready: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    with cond:
        while not ready():
            left = deadline - time.monotonic()
            if left <= 0 or session.closed:
                return False
            cond.wait(min(left, 0.2))  # session.closed does not notify us
    return True


def _reader(stream: spdy.Stream | None) -> Callable[[], bytes]:
    if stream is None:  # the count was met with a stream of another type: an empty input
        return lambda: b""
    return lambda: stream.read(_READ)


def _writer(stream: spdy.Stream | None) -> Callable[[bytes], None]:
    def write(data: bytes) -> None:
        if data and stream is not None:
            stream.write(data)

    return write


def _pump_resize_stream(stream: spdy.Stream, sizes: queue.Queue[tuple[int, int] | None]) -> None:
    decoder = ResizeDecoder(sizes)
    while data := stream.read(_READ):
        decoder.feed(data)  # after a bad value, keep reading so the session never stalls
    decoder.end()


# --- WebSocket ---------------------------------------------------------------------------------


class Pipe:
    """Bytes from the WebSocket reader to a blocking reader; the feeder waits when it is full."""

    def __init__(self, limit: int = _PIPE_LIMIT):
        self._cond = threading.Condition()
        self._buf = bytearray()
        self._closed = False
        self._limit = limit

    def feed(self, data: bytes) -> None:
        """Append ``data``; dropped once the pipe is closed."""
        with self._cond:
            while len(self._buf) >= self._limit and not self._closed:
                self._cond.wait()
            if not self._closed:
                self._buf += data
                self._cond.notify_all()

    def read(self, n: int = _READ) -> bytes:
        """Up to n bytes, blocking; b"" once closed and drained."""
        with self._cond:
            while not self._buf and not self._closed:
                self._cond.wait()
            chunk = bytes(self._buf[:n])
            del self._buf[:n]
            self._cond.notify_all()
            return chunk

    def close(self) -> None:
        """EOF for the reader after what is buffered; wakes a waiting feeder."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def abort(self) -> None:
        """EOF now, dropping what is buffered."""
        with self._cond:
            self._closed = True
            self._buf.clear()
            self._cond.notify_all()


class ChannelWriter:
    """Writes on the channels of a channel.k8s.io WebSocket: [id]+data, or '0'+id and base64."""

    def __init__(self, ws: WebSocket, *, base64_text: bool):
        self._ws = ws
        self._b64 = base64_text

    def __call__(self, channel: int, data: bytes) -> None:
        if self._b64:
            self._ws.send(bytes([0x30 + channel]) + base64.b64encode(data), text=True)
        else:
            self._ws.send(bytes([channel]) + data)


def decode_channel_message(data: bytes, *, base64_text: bool) -> tuple[int, bytes] | None:
    """(channel, payload) of a client message, or None for an empty or undecodable one."""
    if not data:
        return None
    channel, payload = data[0], data[1:]
    if base64_text:
        channel -= 0x30
        try:
            payload = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            return None
    return channel, payload


def serve_websocket(ws: WebSocket, call: Requested, run: Callable[[StreamIO], Status]) -> None:
    """One exec/attach session on a channel.k8s.io WebSocket (any version, binary or base64)."""
    protocol = ws.subprotocol
    b64 = protocol in (BASE64, V4_BASE64)
    v5 = protocol == V5
    write = ChannelWriter(ws, base64_text=b64)
    stdin = Pipe() if call.stdin else None
    resizes: queue.Queue[tuple[int, int] | None] | None = queue.Queue() if call.tty else None
    decoder = ResizeDecoder(resizes) if resizes is not None else None
    gone = threading.Event()  # set when the client's connection ends

    def read_loop() -> None:
        try:
            while (msg := ws.recv()) is not None:
                decoded = decode_channel_message(msg.data, base64_text=b64)
                if decoded is None:
                    continue
                channel, payload = decoded
                if v5 and channel == STREAM_CLOSE:
                    if len(payload) == 1:
                        _close_channel(payload[0], stdin, decoder)
                elif channel == STDIN and stdin is not None:
                    stdin.feed(payload)
                elif channel == RESIZE and decoder is not None:
                    decoder.feed(payload)
                # Anything else, like data for a channel not requested, is dropped.
        finally:
            gone.set()
            if stdin is not None:
                stdin.close()
            if decoder is not None:
                decoder.end()

    reader = threading.Thread(target=read_loop, name="ws-remotecommand-reader", daemon=True)
    reader.start()
    try:
        # An empty message on the lowest writable channel says the session is ready.
        first = STDOUT if call.stdout else STDERR if call.stderr else ERROR
        write(first, b"")
        io = StreamIO(
            stdin=stdin.read if stdin is not None else None,
            stdout=_channel(write, STDOUT) if call.stdout else None,
            stderr=_channel(write, STDERR) if call.stderr else None,
            resizes=resizes,
            gone=gone,
        )
        status = run(io)
        payload = status.json() if protocol in (V4, V4_BASE64, V5) else status.text()
        if payload:
            write(ERROR, payload)
    except BrokenPipeError as exc:
        log.debug("remotecommand websocket: client gone: %s", exc)
    finally:
        ws.close(1000)
        if stdin is not None:
            stdin.abort()
        reader.join(2)


def _channel(write: ChannelWriter, channel: int) -> Callable[[bytes], None]:
    def send(data: bytes) -> None:
        if data:
            write(channel, data)

    return send


def _close_channel(channel: int, stdin: Pipe | None, decoder: ResizeDecoder | None) -> None:
    """v5 CLOSE: the client will send nothing more on ``channel``."""
    if channel == STDIN and stdin is not None:
        stdin.close()
    elif channel == RESIZE and decoder is not None:
        decoder.end()

