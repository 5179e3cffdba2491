"""The streaming server behind the URLs that Exec, Attach and PortForward return.

A URL is ``<base>/<exec|attach|portforward>/<token>``; the token names a cached CRI request,
works once and expires (k8s.io/cri-streaming's server.go and request_cache.go). The HTTP request
is parsed by http.server; after the 101 the handler thread owns the raw socket and runs the
session: SPDY/3.1 (remotecommand v1–v4, portforward.k8s.io) or WebSocket (channel.k8s.io
variants, v5, port-forward channels, SPDY over WebSocket). Wire facts and their sources:
/work/shared/notes/streaming.md.
"""

from __future__ import annotations

import base64
import email.utils
import functools
import http
import ipaddress
import logging
import os
import re
import secrets
import selectors
import socket
import socketserver
import ssl
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol
from urllib.parse import urlsplit

from ocid.errors import ConfigError, FailedPrecondition, ResourceExhausted, Unavailable
from ocid.oci.streams import StreamIO
from ocid.stream import portforward, remotecommand

log = logging.getLogger(__name__)

DEFAULT_TOKEN_TTL = 60.0  # cri-streaming's CacheTTL
DEFAULT_MAX_TOKENS = 1000  # its maxInFlight
DEFAULT_IDLE_TIMEOUT = 4 * 3600.0  # CRI-O's stream_idle_timeout default
STREAM_CREATION_TIMEOUT = 30.0  # DefaultStreamCreationTimeout
HEADER_TIMEOUT = 60.0  # for the request head (and the TLS handshake) before the upgrade
MAX_UNPARSED_CONNECTIONS = 256  # connections still sending their request head
PROTOCOL_HEADER = "X-Stream-Protocol-Version"
ACCEPTED_HEADER = "X-Accepted-Stream-Protocol-Versions"
KINDS = ("exec", "attach", "portforward")
_ROUTE = re.compile(r"/(exec|attach|portforward)/([^/]+)")


@dataclass(frozen=True, slots=True)
class ExecCall:
    """A cached ExecRequest."""

    container_id: str
    cmd: tuple[str, ...]
    tty: bool
    stdin: bool
    stdout: bool
    stderr: bool


@dataclass(frozen=True, slots=True)
class AttachCall:
    """A cached AttachRequest."""

    container_id: str
    tty: bool
    stdin: bool
    stdout: bool
    stderr: bool


@dataclass(frozen=True, slots=True)
class PortForwardCall:
    """A cached PortForwardRequest; its ports are the WebSocket channels (SPDY ignores them)."""

    pod_id: str
    ports: tuple[int, ...]


Call = ExecCall | AttachCall | PortForwardCall


class Backend(Protocol):
    """What the sessions run: the runtime and the pods' network."""

    def exec(self, call: ExecCall, io: StreamIO) -> int:
        """Run the command with ``io`` as its stdio; its exit code."""
        ...

    def attach(self, call: AttachCall, io: StreamIO) -> None:
        """Stream the container's stdio through ``io`` until one side ends."""
        ...

    def dial(self, pod_id: str, port: int) -> socket.socket:
        """A connected TCP socket to ``port`` in the pod's network namespace; OSError if not."""
        ...


class TokenCache:
    """Single-use tokens for cached requests (cri-streaming's requestCache).

    A token is 6 random bytes in unpadded base64url; it is valid ``ttl`` seconds and at most
    ``max_tokens`` can be outstanding at once.
    """

    def __init__(self, ttl: float = DEFAULT_TOKEN_TTL, max_tokens: int = DEFAULT_MAX_TOKENS,
                 clock: Callable[[], float] = time.monotonic):
        self._ttl = ttl
        self._max = max_tokens
        self._now = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, str, Call]] = OrderedDict()

    def insert(self, kind: str, call: Call) -> str:
        """A new token for ``call``; ResourceExhausted when too many are outstanding."""
        with self._lock:
            now = self._now()
            self._gc(now)
            if len(self._entries) >= self._max:
                raise ResourceExhausted("maximum number of in-flight streaming requests exceeded")
            while True:
                token = base64.urlsafe_b64encode(secrets.token_bytes(6)).rstrip(b"=").decode()
                if token not in self._entries:
                    break
            self._entries[token] = (now + self._ttl, kind, call)
            return token

    def consume(self, token: str) -> tuple[str, Call] | None:
        """(kind, call) for a valid token, which is used up; None if unknown or expired."""
        with self._lock:
            entry = self._entries.pop(token, None)
            if entry is None or entry[0] <= self._now():
                return None
            return entry[1], entry[2]

    def __len__(self) -> int:
        with self._lock:
            self._gc(self._now())
            return len(self._entries)

    def _gc(self, now: float) -> None:
        # Insertion order is expiry order: the TTL is the same for every entry.
        while self._entries:
            token, (expires, _, _) = next(iter(self._entries.items()))
            if expires > now:
                break
            del self._entries[token]


class StreamServer:
    """The HTTP(S) server for exec, attach and port-forward sessions."""

    def __init__(
        self,
        backend: Backend,
        address: str,
        port: int,
        *,
        tls_cert: str = "",
        tls_key: str = "",
        tls_ca: str = "",
        token_ttl: float = DEFAULT_TOKEN_TTL,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        stream_creation_timeout: float = STREAM_CREATION_TIMEOUT,
    ):
        self.backend = backend
        self.address = address
        self.port = port
        self.tls_cert, self.tls_key, self.tls_ca = tls_cert, tls_key, tls_ca
        self.idle_timeout = idle_timeout or None
        self.stream_creation_timeout = stream_creation_timeout
        self._cache = TokenCache(token_ttl, max_tokens)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._active: set[socket.socket] = set()
        self._active_lock = threading.Lock()

    # --- lifecycle ---

    def start(self) -> None:
        """Listen and serve in a background thread; port 0 picks a free port."""
        if self._httpd is not None:
            raise FailedPrecondition("streaming server already started")
        context = self._tls_context()
        try:
            httpd = _HTTPServer((self.address, self.port), self, context)
        except OSError as exc:
            raise Unavailable(
                f"streaming server: cannot listen on {_join(self.address, self.port)}: "
                f"{exc.strerror or exc}") from exc
        self._httpd = httpd
        self.port = httpd.server_address[1]
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=_accept_until_woken, args=(httpd, self._wake_r),
                                        name="stream-server", daemon=True)
        self._thread.start()
        log.info("streaming server listening on %s", self.base_url)

    def stop(self) -> None:
        """Stop listening and cut the sessions still running."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(5)
        if self._thread is None or not self._thread.is_alive():  # else it may still select
            os.close(self._wake_w)
            os.close(self._wake_r)
            httpd.server_close()
        with self._active_lock:
            active = list(self._active)
        for sock in active:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @property
    def base_url(self) -> str:
        """``http(s)://host:port``; an unspecified listen address gives this host's address."""
        scheme = "https" if self.tls_cert else "http"
        return f"{scheme}://{_join(_advertised_host(self.address), self.port)}"

    # --- URLs ---

    def exec_url(self, req: ExecCall) -> str:
        """A single-use URL for an exec session."""
        return self._url("exec", req)

    def attach_url(self, req: AttachCall) -> str:
        """A single-use URL for an attach session."""
        return self._url("attach", req)

    def port_forward_url(self, req: PortForwardCall) -> str:
        """A single-use URL for a port-forward session."""
        return self._url("portforward", req)

    def _url(self, kind: str, call: Call) -> str:
        return f"{self.base_url}/{kind}/{self._cache.insert(kind, call)}"

    # --- serving (on the connection's thread) ---

    def _tls_context(self) -> ssl.SSLContext | None:
        if not self.tls_cert:
            return None
        try:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.tls_cert, self.tls_key or None)
            if self.tls_ca:
                context.verify_mode = ssl.CERT_REQUIRED
                context.load_verify_locations(self.tls_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"streaming server TLS: {exc}") from exc
        return context

    def handle(self, handler: _Handler) -> None:
        """Route one request: 404 unless it names a live token of the right kind."""
        handler.server.head_parsed()  # type: ignore[attr-defined]
        match = _ROUTE.fullmatch(urlsplit(handler.path).path)
        if match is None:
            _reply(handler, 404, "404 page not found\n")
            return
        kind, token = match.groups()
        entry = self._cache.consume(token)  # used up before the upgrade is even tried
        if entry is None or entry[0] != kind:
            _reply(handler, 404, "404 page not found\n")
            return
        call = entry[1]
        headers = list(handler.headers.items())
        handler.close_connection = True
        sock = handler.connection
        with self._active_lock:
            self._active.add(sock)
        try:
            if _is_websocket_request(headers):
                self._serve_websocket(kind, call, handler, headers)
            else:
                self._serve_spdy(kind, call, handler, headers)
        except Exception:
            log.exception("%s session failed", kind)
        finally:
            with self._active_lock:
                self._active.discard(sock)

    def _serve_spdy(self, kind: str, call: Call, handler: _Handler,
                    headers: list[tuple[str, str]]) -> None:
        supported = portforward.SPDY_PROTOCOLS if kind == "portforward" \
            else remotecommand.SPDY_PROTOCOLS
        protocol = _spdy_handshake(handler, headers, supported)
        if protocol is None:
            return
        sock = handler.connection
        sock.settimeout(None)
        log.debug("%s session over SPDY (%s) from %s", kind, protocol, handler.client_address)
        timeouts = {"idle_timeout": self.idle_timeout,
                    "creation_timeout": self.stream_creation_timeout}
        if isinstance(call, PortForwardCall):
            portforward.serve_spdy(sock, call.pod_id, self.backend.dial, **timeouts)
        else:
            remotecommand.serve_spdy(sock, protocol, call, self._runner(call), **timeouts)

    def _serve_websocket(self, kind: str, call: Call, handler: _Handler,
                         headers: list[tuple[str, str]]) -> None:
        # Imported here, at the first WebSocket stream: a daemon serving only SPDY streams
        # (crictl's default transport) never needs the websockets library.
        from ocid.stream import websocket

        allowed = portforward.WEBSOCKET_PROTOCOLS if kind == "portforward" \
            else remotecommand.WEBSOCKET_PROTOCOLS
        ws = websocket.upgrade(handler.connection, handler.command, handler.path, headers,
                               allowed, idle_timeout=self.idle_timeout)
        if ws is None:
            return
        log.debug("%s session over WebSocket (%r) from %s", kind, ws.subprotocol,
                  handler.client_address)
        try:
            if not isinstance(call, PortForwardCall):
                remotecommand.serve_websocket(ws, call, self._runner(call))
            elif ws.subprotocol == portforward.TUNNEL:
                portforward.serve_tunnel(ws, call.pod_id, self.backend.dial,
                                         idle_timeout=self.idle_timeout,
                                         creation_timeout=self.stream_creation_timeout)
            else:
                portforward.serve_websocket(ws, call.pod_id, call.ports, self.backend.dial)
        finally:
            ws.abort()

    def _runner(self, call: ExecCall | AttachCall) -> Callable[[StreamIO], remotecommand.Status]:
        if isinstance(call, ExecCall):
            return functools.partial(remotecommand.run_exec, self.backend, call)
        return functools.partial(remotecommand.run_attach, self.backend, call)


# --- HTTP plumbing -----------------------------------------------------------------------------


def _accept_until_woken(httpd: _HTTPServer, wake_fd: int) -> None:
    """Accept connections until ``wake_fd`` becomes readable.

    socketserver's serve_forever wakes up every poll_interval to look for a shutdown
    request; waiting on a pipe as well lets an idle daemon sleep for good.
    """
    with selectors.DefaultSelector() as selector:
        selector.register(httpd, selectors.EVENT_READ)
        selector.register(wake_fd, selectors.EVENT_READ)
        while True:
            ready = [key.fd for key, _ in selector.select()]
            if wake_fd in ready:
                return
            httpd.handle_request()  # readable: accepts at once


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], owner: StreamServer,
                 context: ssl.SSLContext | None):
        self.owner = owner
        self.ssl_context = context
        # Connections not yet past their request head: bounded, and each on one deadline,
        # so slow or idle clients cannot hold threads and descriptors (slowloris).
        self.unparsed = threading.BoundedSemaphore(MAX_UNPARSED_CONNECTIONS)
        self.connection_state = threading.local()
        if _is_ipv6(address[0]):
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would resolve our FQDN, which can hang on a broken resolver.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def finish_request(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        """The TLS handshake runs here, on the connection's own thread, not the accept loop."""
        if not self.unparsed.acquire(blocking=False):
            log.warning("streaming server: too many connections in progress; dropping %s",
                        client_address)
            return
        state = self.connection_state
        state.unparsed = True
        # One deadline for the TLS handshake and the request head together.
        state.deadline = threading.Timer(HEADER_TIMEOUT, _cut, args=(request,))
        state.deadline.daemon = True
        state.deadline.start()
        request.settimeout(HEADER_TIMEOUT)
        sock = request
        try:
            if self.ssl_context is not None:
                try:
                    sock = self.ssl_context.wrap_socket(request, server_side=True)
                except (OSError, ssl.SSLError) as exc:
                    log.debug("streaming server: TLS handshake with %s failed: %s",
                              client_address, exc)
                    return
            self.RequestHandlerClass(sock, client_address, self)
        finally:
            self.head_parsed()
            if sock is not request:
                try:
                    sock.close()
                except OSError:
                    pass

    def head_parsed(self) -> None:
        """This connection's request head is in: stop its deadline, free its slot."""
        state = self.connection_state
        if getattr(state, "unparsed", False):
            state.unparsed = False
            state.deadline.cancel()
            self.unparsed.release()

    def handle_error(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        log.debug("streaming server: error on connection from %s: %s", client_address,
                  sys.exc_info()[1])


def _cut(sock: socket.socket) -> None:
    """End a connection whose request head did not arrive in time."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    # Unbuffered: after the 101 the socket carries SPDY or WebSocket, and any byte read ahead
    # into a buffer here would be lost to the session.
    rbufsize = 0
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self.server.owner.handle(self)

    do_POST = do_GET

    def _not_allowed(self) -> None:
        _reply(self, 405, "405: Method Not Allowed\n")

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _not_allowed

    def log_message(self, format: str, *args: object) -> None:
        log.debug("streaming server: %s %s", self.address_string(), format % args)


def _reply(handler: BaseHTTPRequestHandler, code: int, body: str,
           headers: Sequence[tuple[str, str]] = ()) -> None:
    """A complete text response, like Go's http.Error; the connection then closes."""
    raw = body.encode()
    lines = [f"HTTP/1.1 {code} {http.HTTPStatus(code).phrase}",
             *(f"{k}: {v}" for k, v in headers),
             "Content-Type: text/plain; charset=utf-8",
             "X-Content-Type-Options: nosniff",
             f"Date: {email.utils.formatdate(usegmt=True)}",
             f"Content-Length: {len(raw)}",
             "Connection: close"]
    handler.close_connection = True
    try:
        handler.connection.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + raw)
    except OSError:
        pass


def _is_websocket_request(headers: Iterable[tuple[str, str]]) -> bool:
    """st/wsstream IsWebSocketRequest: ``Upgrade: websocket`` and ``Connection`` naming upgrade."""
    upgrade = next((v for k, v in headers if k.lower() == "upgrade"), None)
    connection = [v for k, v in headers if k.lower() == "connection"]
    return (upgrade or "").lower() == "websocket" and any("upgrade" in v.lower() for v in connection)


def _spdy_handshake(handler: BaseHTTPRequestHandler, headers: list[tuple[str, str]],
                    supported: Sequence[str]) -> str | None:
    """Negotiate the protocol and answer the SPDY/3.1 upgrade (st/httpstream.go Handshake,
    st/spdy/upgrade.go); the chosen protocol after a 101, or None after an error reply."""
    offers = [p.strip() for k, v in headers if k.lower() == PROTOCOL_HEADER.lower()
              for p in v.split(",") if p.strip()]
    if not offers:
        names = {k.lower() for k, _ in headers} - {"host"}  # Go keeps Host out of req.Header
        _reply(handler, 400, f"unable to upgrade: header {PROTOCOL_HEADER} does not exist in "
                             f"request with {len(names)} headers\n")
        return None
    chosen = next((p for p in offers if p in supported), None)
    if chosen is None:
        _reply(handler, 403,
               f"unable to upgrade: unable to negotiate protocol: client supports "
               f"[{' '.join(offers)}], server accepts [{' '.join(supported)}]\n",
               [(ACCEPTED_HEADER, p) for p in supported])
        return None
    connection = handler.headers.get("Connection", "")
    upgrade = handler.headers.get("Upgrade", "")
    if "upgrade" not in connection.lower() or "spdy/3.1" not in upgrade.lower():
        shown = {k: v for k, v in headers}
        _reply(handler, 400, f"unable to upgrade: missing upgrade headers in request: {shown}\n")
        return None
    response = ("HTTP/1.1 101 Switching Protocols\r\n"
                "Connection: Upgrade\r\n"
                "Upgrade: SPDY/3.1\r\n"
                f"{PROTOCOL_HEADER}: {chosen}\r\n"
                f"Date: {email.utils.formatdate(usegmt=True)}\r\n\r\n")
    try:
        handler.connection.sendall(response.encode("latin-1"))
    except OSError:
        return None
    return chosen


def _is_ipv6(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).version == 6
    except ValueError:
        return False


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@functools.lru_cache(maxsize=8)
def _advertised_host(address: str) -> str:
    """The address clients should use: the listen address, or for 0.0.0.0, :: and "" the
    address of the default route's interface (as kubelet's ChooseHostInterface), else loopback."""
    if address not in ("", "0.0.0.0", "::"):
        return address
    v6 = address == "::"
    family, probe, fallback = ((socket.AF_INET6, "2001:db8::1", "::1") if v6
                               else (socket.AF_INET, "192.0.2.1", "127.0.0.1"))
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((probe, 9))  # UDP: a route lookup, no packet is sent
            return str(s.getsockname()[0])
    except OSError:
        return fallback
