"""ocid.stream.spdy: wire bytes, NV blocks, and whole sessions over socketpairs.

The raw-peer tests build frames with the small encoder below, which shares no code with the
module: its NV blocks are zlib streams of *stored* deflate blocks, so even the compression is
independent of the writer under test.
"""

from __future__ import annotations

import hashlib
import queue
import random
import socket
import struct
import threading
import time
import zlib

import pytest

from ocid.stream import spdy

pytestmark = [
    pytest.mark.timeout(20),
    pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning"),
]

# Wire facts quoted from the team's streaming note (observed between crictl and CRI-O).
OBSERVED_FIN_ON_3 = bytes.fromhex("00000003 01000000")
OBSERVED_RST_7_CANCEL = bytes.fromhex("80030003 00000008 00000007 00000005")
OBSERVED_GOAWAY_7_OK = bytes.fromhex("80030007 00000008 00000007 00000000")
FIRST_BLOCK_PREFIX = bytes.fromhex("78f9e3c6a7c2")  # zlib header with FDICT, then the dict id
GO_EMPTY_NV_BLOCK = bytes.fromhex("62606060 00000000 ffff")  # Go's later empty block


# --- an independent hand encoder/decoder -------------------------------------------------------

def ctrl(frame_type: int, payload: bytes, flags: int = 0) -> bytes:
    return struct.pack(">HHI", 0x8003, frame_type, flags << 24 | len(payload)) + payload


def data(stream_id: int, payload: bytes = b"", fin: bool = False) -> bytes:
    return struct.pack(">II", stream_id, (1 if fin else 0) << 24 | len(payload)) + payload


def nv_raw(pairs: list[tuple[bytes, bytes]]) -> bytes:
    out = struct.pack(">I", len(pairs))
    for name, value in pairs:
        out += struct.pack(">I", len(name)) + name + struct.pack(">I", len(value)) + value
    return out


class StoredDeflate:
    """One direction's zlib stream, written as stored (uncompressed) deflate blocks."""

    def __init__(self) -> None:
        self.started = False

    def block(self, raw: bytes) -> bytes:
        out = b""
        if not self.started:
            out = b"\x78\xf9" + struct.pack(">I", 0xE3C6A7C2)
            self.started = True
        for i in range(0, max(len(raw), 1), 65535):
            chunk = raw[i:i + 65535]
            out += b"\x00" + struct.pack("<HH", len(chunk), len(chunk) ^ 0xFFFF) + chunk
        return out


def syn_stream(z: StoredDeflate, stream_id: int, pairs: list[tuple[bytes, bytes]],
               flags: int = 0) -> bytes:
    return ctrl(1, struct.pack(">IIBB", stream_id, 0, 0, 0) + z.block(nv_raw(pairs)), flags)


def parse_nv(raw: bytes) -> dict[bytes, bytes]:
    (count,), off, out = struct.unpack_from(">I", raw), 4, {}
    for _ in range(count):
        (n,) = struct.unpack_from(">I", raw, off)
        name = raw[off + 4:off + 4 + n]
        off += 4 + n
        (n,) = struct.unpack_from(">I", raw, off)
        out[name] = raw[off + 4:off + 4 + n]
        off += 4 + n
    assert off == len(raw)
    return out


class RawPeer:
    """The far end of a socketpair, reading and writing frames by hand."""

    def __init__(self, sock: socket.socket) -> None:
        sock.settimeout(5)
        self.sock = sock
        self.buf = b""
        self.inflater = zlib.decompressobj(zdict=spdy.DICTIONARY)
        self.deflater = StoredDeflate()

    def send(self, *frames: bytes) -> None:
        self.sock.sendall(b"".join(frames))

    def exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def frame(self) -> tuple[bytes, bytes]:
        """(8-byte header, payload)."""
        head = self.exact(8)
        return head, self.exact(struct.unpack(">I", head[4:])[0] & 0xFFFFFF)

    def control(self, frame_type: int) -> tuple[int, bytes]:
        head, payload = self.frame()
        assert head[:4] == struct.pack(">HH", 0x8003, frame_type), head.hex()
        return head[4], payload

    def syn_reply(self) -> tuple[int, dict[bytes, bytes], bytes]:
        flags, payload = self.control(2)
        assert flags == 0
        block = payload[4:]
        return struct.unpack(">I", payload[:4])[0], parse_nv(self.inflater.decompress(block)), block

    def eof(self) -> bool:
        try:
            self.frame()
        except EOFError:
            return True
        return False


def serve(sock: socket.socket, accept=lambda stream: True, **kwargs):
    """A server Session whose accepted streams arrive on a queue."""
    accepted: queue.Queue[spdy.Stream] = queue.Queue()

    def on_stream(stream: spdy.Stream) -> bool:
        ok = accept(stream)
        if ok:
            accepted.put(stream)
        return ok

    session = spdy.Session(sock, server=True, on_stream=on_stream, **kwargs)
    session.start()
    return session, accepted


def read_all(stream: spdy.Stream) -> bytes:
    out = bytearray()
    while chunk := stream.read():
        out += chunk
    return bytes(out)


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def sessions(pair):
    """A connected (client, server, accepted-queue); streamtype "bogus" is refused."""
    csock, ssock = pair
    server, accepted = serve(ssock, accept=lambda st: st.headers.get("streamtype") != "bogus")
    client = spdy.Session(csock, server=False)
    client.start()
    yield client, server, accepted
    client.close()
    server.close()
    assert client.wait_closed(5) and server.wait_closed(5)


PF_HEADERS = [(b"streamtype", b"error"), (b"port", b"8080"), (b"requestid", b"0")]


# --- frames and NV blocks ----------------------------------------------------------------------

def test_dictionary_is_spdystreams_spdy3_dictionary():
    assert len(spdy.DICTIONARY) == 1423
    assert zlib.adler32(spdy.DICTIONARY) == spdy.DICTIONARY_ADLER32 == 0xE3C6A7C2
    assert spdy.DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert spdy.DICTIONARY.endswith(b"charset=iso-8859-1,utf-,*,enq=0.")


def test_frame_encoders_match_observed_bytes():
    assert spdy.data_frame(3, b"", fin=True) == OBSERVED_FIN_ON_3
    assert spdy.rst_stream_frame(7, spdy.CANCEL) == OBSERVED_RST_7_CANCEL
    assert spdy.goaway_frame(7, spdy.GOAWAY_OK) == OBSERVED_GOAWAY_7_OK
    assert spdy.ping_frame(1) == bytes.fromhex("80030006 00000004 00000001")
    assert spdy.data_frame(5, b"hi") == bytes.fromhex("00000005 00000002") + b"hi"
    with pytest.raises(spdy.SpdyError):
        spdy.data_frame(1, bytes(spdy.MAX_FRAME_PAYLOAD + 1))


def test_nv_blocks_share_one_zlib_stream():
    c = spdy.new_compressor()
    empty = struct.pack(">I", 0)
    first = c.compress(empty) + c.flush(zlib.Z_SYNC_FLUSH)
    second = c.compress(empty) + c.flush(zlib.Z_SYNC_FLUSH)
    # Only a direction's first block carries the zlib header; every block ends in a sync flush.
    assert first.startswith(FIRST_BLOCK_PREFIX) and first.endswith(b"\x00\x00\xff\xff")
    assert not second.startswith(b"\x78") and second.endswith(b"\x00\x00\xff\xff")
    # Python's zlib encodes the later empty block differently from Go's compress/flate; both
    # are valid deflate, and our reader takes Go's.
    d = spdy.new_decompressor()
    assert d.decompress(first) == empty
    assert d.decompress(second) == empty
    go = spdy.new_decompressor()
    assert go.decompress(first) == empty
    assert go.decompress(GO_EMPTY_NV_BLOCK) == empty


def test_nv_encode_and_decode():
    raw = spdy.encode_nv({"StreamType": "data", "port": "80"})
    assert raw == nv_raw([(b"streamtype", b"data"), (b"port", b"80")])
    assert spdy.decode_nv(nv_raw([(b"a", b"x\x00y"), (b"b", b"")])) == {"a": ["x", "y"], "b": [""]}
    with pytest.raises(ValueError):
        spdy.encode_nv({"Port": "1", "port": "2"})
    for bad in (nv_raw([(b"streamType", b"error")]),
                nv_raw([(b"port", b"1"), (b"port", b"2")]),
                nv_raw([(b"a", b"b")]) + b"junk",
                nv_raw([(b"a", b"b")])[:-1],
                struct.pack(">I", 1001) + nv_raw([(b"a", b"b")])[4:] * 1001):
        with pytest.raises(spdy.SpdyError):
            spdy.decode_nv(bad)


# --- one of our sessions against a hand-driven peer --------------------------------------------

def test_server_decodes_captured_port_forward_sequence(pair):
    """requestid 0 on streams 1 and 3, requestid 1 on 5 and 7, as crictl sends them."""
    ssock, csock = pair
    server, accepted = serve(ssock)
    peer = RawPeer(csock)
    z = peer.deflater
    peer.send(
        syn_stream(z, 1, PF_HEADERS),
        data(1, fin=True),
        syn_stream(z, 3, [(b"streamtype", b"data"), (b"port", b"8080"), (b"requestid", b"0")]),
        data(3, b"hello"),
        ctrl(4, struct.pack(">IBBHI", 1, 0, 0, 7, 65536)),  # SETTINGS: ignored
        ctrl(9, struct.pack(">II", 3, 1000)),  # WINDOW_UPDATE: ignored
        ctrl(6, struct.pack(">I", 1)),  # the client's PING 1: echoed
        syn_stream(z, 5, [(b"streamtype", b"error"), (b"port", b"8080"), (b"requestid", b"1")]),
        syn_stream(z, 7, [(b"streamtype", b"data"), (b"port", b"8080"), (b"requestid", b"1")]),
    )
    for expected in (1, 3):
        stream_id, headers, block = peer.syn_reply()
        assert (stream_id, headers) == (expected, {})
        if expected == 1:
            assert block.startswith(FIRST_BLOCK_PREFIX)
        else:
            assert not block.startswith(b"\x78")
    assert peer.control(6) == (0, struct.pack(">I", 1))
    assert [peer.syn_reply()[0] for _ in range(2)] == [5, 7]

    streams = [accepted.get(timeout=2) for _ in range(4)]
    assert [s.id for s in streams] == [1, 3, 5, 7]
    assert streams[0].headers == {"streamtype": "error", "port": "8080", "requestid": "0"}
    assert streams[3].headers == {"streamtype": "data", "port": "8080", "requestid": "1"}
    err0, data0, _, data1 = streams
    assert err0.read() == b"" and err0.remote_closed
    assert data0.read() == b"hello" and not data0.remote_closed

    data0.write(b"world")
    assert peer.frame() == (struct.pack(">II", 3, 5), b"world")
    data0.close()
    data0.close()  # idempotent
    assert peer.exact(8) == OBSERVED_FIN_ON_3
    with pytest.raises(spdy.SpdyError):
        data0.write(b"late")
    data0.reset()  # we sent FIN already: nothing goes out
    data1.reset()
    data1.reset()
    assert peer.exact(16) == OBSERVED_RST_7_CANCEL
    server.close()
    server.close()
    assert peer.exact(16) == OBSERVED_GOAWAY_7_OK
    assert peer.eof()  # our side half-closed after GOAWAY
    csock.close()
    assert server.wait_closed(3) and server.closed


def test_client_syn_stream_bytes_and_reply_timeout(pair):
    csock, ssock = pair
    peer = RawPeer(ssock)
    client = spdy.Session(csock, server=False)
    client.start()
    with pytest.raises(spdy.SpdyError, match="timed out"):
        client.open_stream({"streamtype": "error"}, timeout=0.2)
    head, payload = peer.frame()
    assert head[:4] == bytes.fromhex("80030001") and head[4] == 0
    assert payload[:10] == bytes.fromhex("00000001 00000000 00 00")
    assert payload[10:].startswith(FIRST_BLOCK_PREFIX)
    assert parse_nv(peer.inflater.decompress(payload[10:])) == {b"streamtype": b"error"}
    assert peer.exact(16) == spdy.rst_stream_frame(1, spdy.CANCEL)  # given up on
    client.close()
    assert peer.exact(16) == spdy.goaway_frame(0)  # a client received no streams
    ssock.close()
    assert client.wait_closed(3)


def test_writes_from_another_thread_wait_for_the_reply(pair):
    ssock, csock = pair
    handed: queue.Queue[spdy.Stream] = queue.Queue()

    def slow_accept(stream: spdy.Stream) -> bool:
        handed.put(stream)
        time.sleep(0.2)  # the worker writes during this window
        return True

    server = spdy.Session(ssock, server=True, on_stream=slow_accept)
    server.start()
    worker = threading.Thread(target=lambda: handed.get(timeout=2).write(b"early"))
    worker.start()
    peer = RawPeer(csock)
    peer.send(syn_stream(peer.deflater, 1, PF_HEADERS))
    assert peer.syn_reply()[0] == 1
    assert peer.frame() == (struct.pack(">II", 1, 5), b"early")
    worker.join(2)
    server.close()


def test_pings_echo_by_parity(pair):
    ssock, csock = pair
    server, _ = serve(ssock)
    peer = RawPeer(csock)
    # PING 4 has the server's parity, so it counts as an answer and is not echoed.
    peer.send(ctrl(6, struct.pack(">I", 4)), ctrl(6, struct.pack(">I", 3)))
    assert peer.control(6)[1] == struct.pack(">I", 3)
    result: list[float] = []
    pinger = threading.Thread(target=lambda: result.append(server.ping(timeout=2)))
    pinger.start()
    _, payload = peer.control(6)
    assert payload == struct.pack(">I", 2)  # server ids are even, from 2
    peer.send(ctrl(6, payload))
    pinger.join(3)
    assert result and 0 <= result[0] < 2
    server.close()


def test_stream_ids_must_increase(pair):
    ssock, csock = pair
    server, accepted = serve(ssock)
    peer = RawPeer(csock)
    z = peer.deflater
    peer.send(syn_stream(z, 5, PF_HEADERS))
    assert peer.syn_reply()[0] == 5
    peer.send(syn_stream(z, 3, PF_HEADERS), syn_stream(z, 5, PF_HEADERS))
    assert peer.exact(16) == spdy.rst_stream_frame(3, spdy.PROTOCOL_ERROR)
    assert peer.exact(16) == spdy.rst_stream_frame(5, spdy.PROTOCOL_ERROR)
    # The session goes on (as in spdystream): data on unknown ids is dropped, 7 is fine.
    peer.send(data(3, b"lost"), data(9, b"lost"), syn_stream(z, 7, PF_HEADERS), data(7, b"kept"))
    assert peer.syn_reply()[0] == 7
    assert accepted.get(timeout=2).id == 5
    seven = accepted.get(timeout=2)
    assert seven.id == 7 and seven.read() == b"kept"
    assert not server.closed
    server.close()
    assert peer.exact(16) == spdy.goaway_frame(7)


def test_refused_stream_gets_cancel(pair):
    ssock, csock = pair
    server, _ = serve(ssock, accept=lambda stream: False)
    peer = RawPeer(csock)
    peer.send(syn_stream(peer.deflater, 1, PF_HEADERS), data(1, b"dropped"))
    assert peer.exact(16) == spdy.rst_stream_frame(1, spdy.CANCEL)
    server.close()
    assert peer.exact(16) == spdy.goaway_frame(1)


@pytest.mark.parametrize("name", [b"streamType", b"Port"])
def test_upper_case_header_name_ends_the_session(pair, name):
    ssock, csock = pair
    server, accepted = serve(ssock)
    peer = RawPeer(csock)
    peer.send(syn_stream(peer.deflater, 1, [(name, b"error")]))
    assert peer.exact(16) == spdy.rst_stream_frame(1, spdy.PROTOCOL_ERROR)
    assert peer.exact(16) == spdy.goaway_frame(0, spdy.GOAWAY_PROTOCOL_ERROR)
    assert peer.eof()
    csock.close()
    assert server.wait_closed(3) and server.closed
    assert accepted.empty()


@pytest.mark.parametrize("junk", [
    ctrl(10, b""),  # CREDENTIAL: spdystream does not know it
    ctrl(6, struct.pack(">I", 0)),  # PING id 0
    data(0, b"x"),  # DATA on stream 0
    ctrl(3, struct.pack(">II", 1, 0)),  # RST_STREAM status 0
    ctrl(7, struct.pack(">I", 0)),  # GOAWAY of the wrong length
    ctrl(1, struct.pack(">IIBB", 1, 0, 0, 0) + b"not zlib at all"),
    b"\xff" * 64,
])
def test_malformed_frames_end_the_session(pair, junk):
    ssock, csock = pair
    server, accepted = serve(ssock)
    server.linger = 0.1  # the peer below never closes its end
    peer = RawPeer(csock)
    peer.send(junk)
    assert peer.exact(16) == spdy.goaway_frame(0, spdy.GOAWAY_PROTOCOL_ERROR)
    assert peer.eof()
    assert server.wait_closed(3)
    assert server.closed and accepted.empty()


def test_garbage_then_eof_ends_the_session(pair):
    ssock, csock = pair
    server, _ = serve(ssock)
    csock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + random.Random(7).randbytes(4096))
    csock.shutdown(socket.SHUT_WR)
    assert server.wait_closed(3)


def test_peer_eof_ends_streams(pair):
    ssock, csock = pair
    server, accepted = serve(ssock)
    peer = RawPeer(csock)
    peer.send(syn_stream(peer.deflater, 1, PF_HEADERS), data(1, b"last words"))
    assert peer.syn_reply()[0] == 1
    stream = accepted.get(timeout=2)
    csock.shutdown(socket.SHUT_WR)
    assert read_all(stream) == b"last words"  # buffered data first, then EOF
    assert server.wait_closed(3)
    with pytest.raises(spdy.SpdyError):
        stream.write(b"x")


# --- two of our sessions -----------------------------------------------------------------------

def open_pf(client: spdy.Session, kind: str, request: int) -> spdy.Stream:
    return client.open_stream({"streamtype": kind, "port": "8080", "requestid": str(request)})


def test_streams_carry_headers_and_data_both_ways(sessions):
    client, _, accepted = sessions
    opened = [open_pf(client, kind, n) for n in (0, 1) for kind in ("error", "data")]
    assert [s.id for s in opened] == [1, 3, 5, 7]
    remote = [accepted.get(timeout=2) for _ in opened]
    assert [s.id for s in remote] == [1, 3, 5, 7]
    assert remote[3].headers == {"streamtype": "data", "port": "8080", "requestid": "1"}
    assert opened[3].headers == remote[3].headers

    mine, theirs = opened[1], remote[1]
    mine.write(b"stdin data")
    mine.close()
    assert read_all(theirs) == b"stdin data" and theirs.remote_closed
    assert not mine.remote_closed
    theirs.write(b"still open")  # half-closed: the other direction works
    theirs.close()
    assert read_all(mine) == b"still open" and mine.remote_closed
    with pytest.raises(spdy.SpdyError):
        mine.write(b"after FIN")


def test_reset_either_way(sessions):
    client, _, accepted = sessions
    a, b = open_pf(client, "error", 0), open_pf(client, "data", 0)
    ra, rb = accepted.get(timeout=2), accepted.get(timeout=2)
    a.reset()
    assert ra.read() == b"" and ra.reset_status == spdy.CANCEL
    with pytest.raises(spdy.SpdyError):
        ra.write(b"x")
    rb.write(b"before reset")
    rb.reset(spdy.INTERNAL_ERROR)
    assert read_all(b) == b"before reset"  # data ahead of the RST is still delivered
    assert b.reset_status == spdy.INTERNAL_ERROR and b.remote_closed
    assert a.read() == b""  # our own reset: reads end at once


def test_refusal_raises_in_open_stream(sessions):
    client, _, accepted = sessions
    with pytest.raises(spdy.StreamRefused) as caught:
        client.open_stream({"streamtype": "bogus"})
    assert caught.value.status == spdy.CANCEL and isinstance(caught.value, spdy.SpdyError)
    assert open_pf(client, "data", 0).id == 3
    assert accepted.get(timeout=2).id == 3


def test_ping_both_ways(sessions):
    client, server, _ = sessions
    assert 0 <= client.ping() < 2
    assert 0 <= server.ping() < 2
    assert 0 <= client.ping() < 2


def test_goaway_ends_everything(sessions):
    client, server, accepted = sessions
    stream = open_pf(client, "data", 0)
    accepted.get(timeout=2)
    reader = threading.Thread(target=lambda: stream.read())
    reader.start()
    server.close()
    reader.join(3)
    assert not reader.is_alive()
    assert client.wait_closed(3) and server.wait_closed(3)
    assert client.closed and stream.remote_closed
    with pytest.raises(spdy.SpdyError):
        open_pf(client, "data", 1)
    with pytest.raises(spdy.SpdyError):
        client.ping()
    with pytest.raises(spdy.SpdyError):
        stream.write(b"x")


def test_large_write_is_split_and_arrives_whole(sessions):
    client, _, accepted = sessions
    stream = open_pf(client, "data", 0)
    remote = accepted.get(timeout=2)
    payload = random.Random(1).randbytes(spdy.MAX_FRAME_PAYLOAD + 3 * 1024 * 1024)

    def send() -> None:
        stream.write(payload)
        stream.close()

    writer = threading.Thread(target=send)
    writer.start()
    got = read_all(remote)
    writer.join(5)
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()


def test_concurrent_writers_and_openers(sessions):
    client, _, accepted = sessions
    streams: list[spdy.Stream] = []
    lock = threading.Lock()

    def opener(n: int) -> None:
        stream = open_pf(client, "data", n)
        with lock:
            streams.append(stream)

    openers = [threading.Thread(target=opener, args=(n,)) for n in range(8)]
    for t in openers:
        t.start()
    for t in openers:
        t.join(5)
    assert len(streams) == 8  # ids reach the wire in order, so none is refused
    remote = {s.id: s for s in (accepted.get(timeout=2) for _ in range(8))}

    def pattern(stream_id: int, i: int) -> bytes:
        return bytes([stream_id]) * 1000 + i.to_bytes(4, "big") + bytes([stream_id]) * 3000

    def writer(stream: spdy.Stream) -> None:
        for i in range(200):
            stream.write(pattern(stream.id, i))
        stream.close()

    results: dict[int, bytes] = {}

    def reader(stream: spdy.Stream) -> None:
        results[stream.id] = read_all(stream)

    threads = ([threading.Thread(target=writer, args=(s,)) for s in streams]
               + [threading.Thread(target=reader, args=(s,)) for s in remote.values()])
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    for stream_id, got in results.items():
        assert got == b"".join(pattern(stream_id, i) for i in range(200))
    assert len(results) == 8


def test_unread_stream_applies_backpressure(sessions):
    client, _, accepted = sessions
    stream = open_pf(client, "data", 0)
    remote = accepted.get(timeout=2)
    total = 4 * 1024 * 1024
    writer = threading.Thread(target=lambda: [stream.write(bytes(65536)) for _ in range(64)])
    writer.start()
    time.sleep(0.3)
    assert writer.is_alive()  # blocked: the server's reader waits for us
    assert len(remote._buf) <= spdy.STREAM_BUFFER_LIMIT + 65536
    got = 0
    while got < total:
        got += len(remote.read())
    writer.join(3)
    assert not writer.is_alive()


def test_idle_timeout_resets_and_closes(pair):
    ssock, csock = pair
    server, accepted = serve(ssock, idle_timeout=0.3)
    client = spdy.Session(csock, server=False)
    client.start()
    stream = open_pf(client, "data", 0)
    remote = accepted.get(timeout=2)
    assert stream.read() == b""
    assert stream.reset_status == spdy.CANCEL
    assert remote.read() == b""
    assert server.wait_closed(3) and client.wait_closed(3)


def test_lifecycle_edges(pair):
    a, b = pair
    never = spdy.Session(a, server=False)
    with pytest.raises(spdy.SpdyError):
        never.open_stream({"streamtype": "data"})
    assert not never.wait_closed(0.01)
    never.close()
    never.close()
    assert never.closed and never.wait_closed(1)
    with pytest.raises(spdy.SpdyError):
        never.start()
    assert b.recv(16) == spdy.goaway_frame(0)
    with pytest.raises(ValueError):
        spdy.Session(b, server=False).open_stream({"Host": "x"})
