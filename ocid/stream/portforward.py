"""portforward.k8s.io: port-forward sessions over SPDY, WebSocket channels, and SPDY over WebSocket.

Follows k8s.io/cri-streaming's portforward server (httpstream.go, websocket.go) and CRI-O's
PortForwardContainer copy loop, as /work/shared/notes/streaming.md §4 describes them.
"""

from __future__ import annotations

import logging
import queue
import re
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ocid.stream import spdy
from ocid.stream.remotecommand import ChannelWriter, Pipe, decode_channel_message

if TYPE_CHECKING:
    from ocid.stream.websocket import WebSocket

log = logging.getLogger(__name__)

PROTOCOL = "portforward.k8s.io"
SPDY_PROTOCOLS = (PROTOCOL,)
TUNNEL = "SPDY/3.1+portforward.k8s.io"  # SPDY over WebSocket; beyond CRI-O (notes §4, §5)
V4 = "v4.channel.k8s.io"
V4_BASE64 = "v4.base64.channel.k8s.io"
WEBSOCKET_PROTOCOLS = ("", V4, V4_BASE64, TUNNEL)

GRACE = 1.0  # CRI-O: once one direction ends, the other gets this long (socat's default)
_READ = 65536
_PORT = re.compile(r"[0-9]+")

Dial = Callable[[str, int], socket.socket]


def forward_error(port: int, pod_id: str, exc: BaseException) -> str:
    """The error stream's text, as cri-streaming formats it (CRI has no pod UID)."""
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return f"error forwarding port {port} to pod {pod_id}, uid : {detail}"


def copy_both_ways(
    read: Callable[[], bytes],
    write: Callable[[bytes], None],
    close_write: Callable[[], None],
    sock: socket.socket,
) -> None:
    """Copy between the client's data stream and the pod's socket until one direction ends,
    then give the other GRACE seconds, as CRI-O does; the socket is closed on return.

    ``read`` returns b"" at the client's EOF; ``close_write`` tells the client the pod is done.
    """
    ended: queue.Queue[str] = queue.Queue()

    def pod_to_client() -> None:
        try:
            while data := sock.recv(_READ):
                write(data)
        except Exception as exc:  # noqa: BLE001 - the pod or the client went away
            log.debug("port forward: pod to client: %s", exc)
        finally:
            close_write()
            ended.put("pod")

    def client_to_pod() -> None:
        try:
            while data := read():
                sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except Exception as exc:  # noqa: BLE001
            log.debug("port forward: client to pod: %s", exc)
        finally:
            ended.put("client")

    for target, name in ((pod_to_client, "pf-pod-to-client"), (client_to_pod, "pf-client-to-pod")):
        threading.Thread(target=target, name=name, daemon=True).start()
    ended.get()
    try:
        ended.get(timeout=GRACE)
    except queue.Empty:
        log.debug("port forward: timed out waiting for the other direction to finish")
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


# --- SPDY --------------------------------------------------------------------------------------


@dataclass
class _Pair:
    request_id: str
    error: spdy.Stream | None = None
    data: spdy.Stream | None = None
    complete: threading.Event = field(default_factory=threading.Event)


def serve_spdy(
    transport: spdy.Transport,
    pod_id: str,
    dial: Dial,
    *,
    idle_timeout: float | None,
    creation_timeout: float,
) -> None:
    """A port-forward session: pairs of error and data streams, each pair one pod connection.

    Returns when the client ends the session (GOAWAY or EOF) or it idles out.
    """
    incoming: queue.Queue[spdy.Stream | None] = queue.Queue()

    def on_stream(stream: spdy.Stream) -> bool:
        port = stream.headers.get("port", "")
        kind = stream.headers.get("streamtype", "")
        if not _PORT.fullmatch(port) or not 0 < int(port) < 65536:
            log.warning("port forward: stream %d: bad or missing port %r", stream.id, port)
            return False
        if kind not in ("error", "data"):
            log.warning("port forward: stream %d: invalid stream type %r", stream.id, kind)
            return False
        incoming.put(stream)
        return True

    session = spdy.Session(transport, server=True, on_stream=on_stream,
                           idle_timeout=idle_timeout)
    session.start()

    def watch() -> None:
        session.wait_closed()
        incoming.put(None)

    threading.Thread(target=watch, name="pf-session-watch", daemon=True).start()
    pairs: dict[str, _Pair] = {}
    lock = threading.Lock()
    label = f"{id(session):x}"
    try:
        while (stream := incoming.get()) is not None:
            request_id = _request_id(stream)
            with lock:
                pair = pairs.get(request_id)
                if pair is None:
                    pair = pairs[request_id] = _Pair(request_id)
                    created = True
                else:
                    created = False
            if created:
                threading.Thread(target=_monitor, name="pf-pair-timeout", daemon=True,
                                 args=(pair, pairs, lock, creation_timeout, label)).start()
            problem = _add(pair, stream)
            if problem:
                msg = f"error processing stream for request {request_id}: {problem}"
                log.warning("port forward: %s", msg)
                _write_quietly(pair.error, msg)
            elif pair.complete.is_set():
                threading.Thread(target=_forward_pair, args=(pair, pod_id, dial),
                                 name="pf-forward", daemon=True).start()
    finally:
        session.close()
        session.wait_closed(session.linger + 1)


def _request_id(stream: spdy.Stream) -> str:
    """The ``requestid`` header; old clients send none, and their data stream is error id + 2."""
    request_id = stream.headers.get("requestid", "")
    if not request_id:
        kind = stream.headers.get("streamtype", "")
        request_id = str(stream.id if kind == "error" else stream.id - 2)
    return request_id


def _add(pair: _Pair, stream: spdy.Stream) -> str:
    """Put the stream in its pair; the problem text if that slot is taken."""
    kind = stream.headers.get("streamtype", "")
    if kind == "error":
        if pair.error is not None:
            return "error stream already assigned"
        pair.error = stream
    else:
        if pair.data is not None:
            return "data stream already assigned"
        pair.data = stream
    if pair.error is not None and pair.data is not None:
        pair.complete.set()
    return ""


def _monitor(pair: _Pair, pairs: dict[str, _Pair], lock: threading.Lock, timeout: float,
             label: str) -> None:
    """Tell the client when a pair stays incomplete; forget the pair either way."""
    if not pair.complete.wait(timeout):
        msg = f"(conn={label}, request={pair.request_id}) timed out waiting for streams"
        log.warning("port forward: %s", msg)
        _write_quietly(pair.error, msg)
    with lock:
        if pairs.get(pair.request_id) is pair:
            del pairs[pair.request_id]


def _forward_pair(pair: _Pair, pod_id: str, dial: Dial) -> None:
    error, data = pair.error, pair.data
    assert error is not None and data is not None
    port = int(data.headers["port"])
    try:
        sock = dial(pod_id, port)
    except Exception as exc:  # noqa: BLE001 - OSError, or NotFound for a pod gone meanwhile
        msg = forward_error(port, pod_id, exc)
        log.info("port forward: %s", msg)
        _write_quietly(error, msg)
        error.close()
        data.reset()
        return
    log.debug("port forward: pod %s port %d: request %s connected", pod_id, port,
              pair.request_id)

    def write(chunk: bytes) -> None:
        data.write(chunk)

    copy_both_ways(lambda: data.read(_READ), write, data.close, sock)
    data.close()
    error.close()


def _write_quietly(stream: spdy.Stream | None, text: str) -> None:
    if stream is None:
        return
    try:
        stream.write(text.encode())
    except spdy.SpdyError as exc:
        log.debug("port forward: error text not delivered: %s", exc)


# --- WebSocket ---------------------------------------------------------------------------------


def serve_websocket(ws: WebSocket, pod_id: str, ports: tuple[int, ...] | list[int],
                    dial: Dial) -> None:
    """Channels 2i (data) and 2i+1 (error) for the i-th port of the CRI request; one pod
    connection each; the WebSocket closes with 1000 when all of them have ended."""
    b64 = ws.subprotocol == V4_BASE64
    write = ChannelWriter(ws, base64_text=b64)
    inputs = [Pipe() for _ in ports]

    def read_loop() -> None:
        try:
            while (msg := ws.recv()) is not None:
                decoded = decode_channel_message(msg.data, base64_text=b64)
                if decoded is None:
                    continue
                channel, payload = decoded
                if channel % 2 == 0 and channel // 2 < len(inputs):
                    inputs[channel // 2].feed(payload)
        finally:
            for pipe in inputs:
                pipe.close()

    reader = threading.Thread(target=read_loop, name="ws-pf-reader", daemon=True)
    reader.start()
    workers = []
    try:
        for i, port in enumerate(ports):
            prefix = struct.pack("<H", port)
            write(2 * i, prefix)
            write(2 * i + 1, prefix)
        for i, port in enumerate(ports):
            worker = threading.Thread(target=_forward_channel, name="ws-pf-forward", daemon=True,
                                      args=(write, i, port, inputs[i], pod_id, dial))
            worker.start()
            workers.append(worker)
        for worker in workers:
            worker.join()
    except BrokenPipeError as exc:
        log.debug("port forward websocket: client gone: %s", exc)
    finally:
        ws.close(1000)
        for pipe in inputs:
            pipe.abort()
        reader.join(2)


def _forward_channel(write: ChannelWriter, index: int, port: int, pipe: Pipe, pod_id: str,
                     dial: Dial) -> None:
    try:
        sock = dial(pod_id, port)
    except Exception as exc:  # noqa: BLE001
        msg = forward_error(port, pod_id, exc)
        log.info("port forward: %s", msg)
        try:
            write(2 * index + 1, msg.encode())
        except BrokenPipeError:
            pass
        return

    def send(chunk: bytes) -> None:
        write(2 * index, chunk)

    copy_both_ways(pipe.read, send, lambda: None, sock)


def serve_tunnel(ws: WebSocket, pod_id: str, dial: Dial, *, idle_timeout: float | None,
                 creation_timeout: float) -> None:
    """SPDY/3.1+portforward.k8s.io: the WebSocket's binary messages carry a SPDY session."""
    from ocid.stream.websocket import WebSocketTransport  # loaded already: ws is one

    try:
        serve_spdy(WebSocketTransport(ws), pod_id, dial, idle_timeout=idle_timeout,
                   creation_timeout=creation_timeout)
    finally:
        ws.close(1000)
