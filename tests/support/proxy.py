"""A TCP proxy on 127.0.0.1 that slows down or stalls what a server sends back.

Used to see a pull in flight (live progress) and to make a blob stall (pull_progress_timeout)
against the real registry, without touching the registry itself.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field


@dataclass
class SlowProxy:
    """Forwards 127.0.0.1:<port> to ``upstream``; each connection's replies are paced.

    ``bytes_per_second`` limits every connection's downstream rate (0: unlimited);
    ``stall_after`` stops forwarding replies once the proxy sent that many bytes in all
    (0: never), holding connections open until the proxy stops: new connections and resumed
    downloads get nothing either, as from a server that hangs.
    """

    upstream: tuple[str, int]
    bytes_per_second: int = 0
    stall_after: int = 0
    port: int = 0
    _server: socket.socket | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _sockets: list[socket.socket] = field(default_factory=list)
    _sent_total: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> SlowProxy:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        assert self._server is not None
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, downstream: bool) -> None:
        chunk = 16384
        try:
            while not self._stop.is_set():
                data = source.recv(chunk)
                if not data:
                    break
                if downstream and self.stall_after:
                    with self._lock:
                        allowed = max(0, self.stall_after - self._sent_total)
                        self._sent_total += len(data)
                    if allowed < len(data):
                        sink.sendall(data[:allowed])
                        self._stop.wait()  # hold the connection silently
                        return
                sink.sendall(data)
                if downstream and self.bytes_per_second:
                    time.sleep(len(data) / self.bytes_per_second)
        except OSError:
            pass
        finally:
            try:
                sink.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.close()
        for sock in self._sockets:
            try:
                sock.close()
            except OSError:
                pass
