"""RegistryClient against a real docker-registry (distribution 2.8) on 127.0.0.1.

Only the Bearer token flow uses a stand-in server (docker-registry cannot issue tokens offline).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import socket
import tarfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import zstandard

from ocid.errors import InvalidArgument, NotFound, Unavailable
from ocid.image import manifest as mf
from ocid.image.manifest import Index, Manifest, Platform, parse_manifest, select_platform
from ocid.image.registry import RegistryAuthError, RegistryClient, parse_challenges
from tests.support.fixtures import AUTH_PASSWORD, AUTH_USER, PushedImage
from tests.support.images import LayerSpec, build_layout, busybox_layer, push_layout
from tests.support.registry import LocalRegistry, free_port

WRONG_PASSWORD = "hunter2-not-the-password"


class CountingSession(requests.Session):
    """A session that records every request's method and URL."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str]] = []

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        self.calls.append((method, url))
        return super().request(method, url, *args, **kwargs)


def client_for(registry: LocalRegistry, **kwargs: Any) -> RegistryClient:
    """A client for the plain-HTTP test registry."""
    kwargs.setdefault("retries", 1)
    return RegistryClient(registry.host, insecure=True, **kwargs)


def read_blob(client: RegistryClient, repository: str, digest: str, **kwargs: Any) -> bytes:
    return b"".join(client.iter_blob(repository, digest, **kwargs))


# ---- reading --------------------------------------------------------------------------------

def test_ping_remembers_the_http_scheme(registry: LocalRegistry,
                                        busybox_image: PushedImage) -> None:
    session = CountingSession()
    client = client_for(registry, session=session)
    client.ping()
    for _ in range(3):
        client.get_manifest("library/busybox", "latest")
    https = [url for _, url in session.calls if url.startswith("https://")]
    assert len(https) == 1, session.calls  # probed once, then plain http only
    assert len(session.calls) == 5


def test_get_manifest_by_tag_and_digest(busybox_image: PushedImage) -> None:
    client = client_for(busybox_image.registry)
    raw, media_type, digest = client.get_manifest("library/busybox", "latest")
    assert media_type == mf.OCI_MANIFEST
    assert digest == busybox_image.manifest_digest == mf.sha256_digest(raw)
    parsed = parse_manifest(raw, media_type)
    assert isinstance(parsed, Manifest)
    assert parsed.config.digest == busybox_image.config_digest

    raw2, media_type2, digest2 = client.get_manifest("library/busybox", digest)
    assert (raw2, media_type2, digest2) == (raw, media_type, digest)


def test_get_manifest_not_found(busybox_image: PushedImage) -> None:
    client = client_for(busybox_image.registry)
    host = busybox_image.registry.host
    with pytest.raises(NotFound, match=f"manifest for {host}/library/busybox:nope not found"):
        client.get_manifest("library/busybox", "nope")
    with pytest.raises(NotFound) as info:
        client.get_manifest("no/such-repo", "latest")
    assert str(info.value).startswith(f"manifest for {host}/no/such-repo:latest not found")
    missing = "sha256:" + "0" * 64
    with pytest.raises(NotFound, match=f"manifest for {host}/library/busybox@{missing} not found"):
        client.get_manifest("library/busybox", missing)
    with pytest.raises(InvalidArgument, match="invalid digest"):
        client.get_manifest("library/busybox", "sha256:1234")


def test_iter_blob_and_blob_size(busybox_image: PushedImage) -> None:
    client = client_for(busybox_image.registry)
    built = busybox_image.image
    layer = read_blob(client, "library/busybox", built.layer_digests[0], chunk_size=64 * 1024)
    assert mf.sha256_digest(layer) == built.layer_digests[0]
    config = read_blob(client, "library/busybox", busybox_image.config_digest)
    assert config == built.config_raw
    assert client.blob_size("library/busybox", built.layer_digests[0]) == len(layer)
    assert client.blob_size("library/busybox", "sha256:" + "0" * 64) is None
    with pytest.raises(NotFound, match="blob sha256:0+ in 127.0.0.1:\\d+/library/busybox"):
        read_blob(client, "library/busybox", "sha256:" + "0" * 64)


class CuttingProxy:
    """A TCP proxy to a registry that breaks the first response after ``cut_after`` bytes."""

    def __init__(self, upstream_port: int, cut_after: int):
        self.upstream_port, self.cut_after, self.cuts_left = upstream_port, cut_after, 1
        self.requests: list[bytes] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pump, args=(conn, up, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, conn, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, downstream: bool) -> None:
        sent = 0
        try:
            while data := src.recv(65536):
                if not downstream:
                    self.requests.append(data)
                elif self.cuts_left and sent + len(data) > self.cut_after:
                    self.cuts_left -= 1
                    dst.sendall(data[:self.cut_after - sent])
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self.server.close()


def test_iter_blob_resumes_a_broken_download(busybox_image: PushedImage) -> None:
    digest = busybox_image.image.layer_digests[0]
    proxy = CuttingProxy(busybox_image.registry.port, cut_after=200_000)
    try:
        client = RegistryClient(f"127.0.0.1:{proxy.port}", insecure=True, retries=2)
        size = client.blob_size("library/busybox", digest)
        assert size and size > 300_000
        data = read_blob(client, "library/busybox", digest, size=size)
    finally:
        proxy.close()
    assert proxy.cuts_left == 0
    assert mf.sha256_digest(data) == digest and len(data) == size
    assert any(b"Range: bytes=" in request for request in proxy.requests)


# ---- writing --------------------------------------------------------------------------------

@pytest.mark.parametrize("chunk_size", [None, 1000], ids=["monolithic", "chunked"])
def test_push_blob_then_skip(registry: LocalRegistry, tmp_path: Path,
                             chunk_size: int | None) -> None:
    client = client_for(registry)
    content = os.urandom(2500)
    digest = mf.sha256_digest(content)
    path = tmp_path / "blob"
    path.write_bytes(content)
    opened: list[int] = []

    def open_stream() -> BinaryIO:
        opened.append(1)
        return open(path, "rb")

    assert client.push_blob("test/blobs", digest, len(content), open_stream, chunk_size) is True
    assert client.blob_size("test/blobs", digest) == len(content)
    assert read_blob(client, "test/blobs", digest) == content
    assert client.push_blob("test/blobs", digest, len(content), open_stream, chunk_size) is False
    assert len(opened) == 1  # the second push only asked HEAD


def test_push_blob_with_a_wrong_digest_is_rejected(registry: LocalRegistry) -> None:
    client = client_for(registry)
    wrong = mf.sha256_digest(b"something else")
    with pytest.raises(InvalidArgument, match="rejected upload of blob .*DIGEST_INVALID"):
        client.push_blob("test/blobs", wrong, 5, lambda: io.BytesIO(b"12345"))


def test_put_manifest_get_it_back_and_list_tags(registry: LocalRegistry,
                                                busybox_image: PushedImage) -> None:
    client = client_for(registry)
    built = busybox_image.image
    source = client_for(registry)
    for digest in (*built.layer_digests, built.config_digest):
        blob = read_blob(source, "library/busybox", digest)
        assert client.push_blob("test/copied", digest, len(blob),
                                lambda b=blob: io.BytesIO(b)) is True
    digest = client.put_manifest("test/copied", "v1", built.manifest_raw, mf.OCI_MANIFEST)
    assert digest == built.manifest_digest
    assert client.put_manifest("test/copied", digest, built.manifest_raw, mf.OCI_MANIFEST) == digest
    client.put_manifest("test/copied", "v2", built.manifest_raw, mf.OCI_MANIFEST)
    raw, media_type, got = client.get_manifest("test/copied", "v1")
    assert (raw, media_type, got) == (built.manifest_raw, mf.OCI_MANIFEST, digest)
    assert sorted(client.list_tags("test/copied")) == ["v1", "v2"]
    with pytest.raises(NotFound, match="repository 127.0.0.1:\\d+/no/such not found"):
        client.list_tags("no/such")


def test_put_manifest_with_missing_blobs_is_rejected(registry: LocalRegistry) -> None:
    raw = json.dumps({"schemaVersion": 2, "mediaType": mf.OCI_MANIFEST,
                      "config": {"mediaType": mf.OCI_CONFIG, "digest": "sha256:" + "1" * 64,
                                 "size": 2}, "layers": []}).encode()
    with pytest.raises(InvalidArgument, match="MANIFEST_BLOB_UNKNOWN"):
        client_for(registry).put_manifest("test/broken", "v1", raw, mf.OCI_MANIFEST)


# ---- multi-platform -------------------------------------------------------------------------

def test_index_pushed_with_all_selects_platforms(multiarch_image: PushedImage) -> None:
    client = client_for(multiarch_image.registry)
    raw, media_type, digest = client.get_manifest("library/multiarch", "latest")
    assert media_type == mf.OCI_INDEX and digest == multiarch_image.manifest_digest
    index = parse_manifest(raw, media_type)
    assert isinstance(index, Index) and len(index.manifests) == 2
    built = multiarch_image.index
    assert built is not None
    for text, image in built.images.items():
        chosen = select_platform(index, Platform.parse(text))
        assert chosen.digest == image.manifest_digest
        one_raw, one_type, _ = client.get_manifest("library/multiarch", chosen.digest)
        one = parse_manifest(one_raw, one_type)
        assert isinstance(one, Manifest) and one.config.digest == image.config_digest
    host_image = built.images[str(Platform.host())]
    assert select_platform(index, Platform.host()).digest == host_image.manifest_digest
    arm = select_platform(index, Platform.parse("linux/arm64/v8"))
    assert arm.platform is not None and arm.platform.architecture == "arm64"
    with pytest.raises(NotFound, match="no image for platform linux/s390x; it offers: "
                                       "linux/amd64, linux/arm64"):
        select_platform(index, Platform.parse("linux/s390x"))


# ---- basic auth (htpasswd) ------------------------------------------------------------------

@pytest.fixture(scope="module")
def auth_image(auth_registry: LocalRegistry, tmp_path_factory: pytest.TempPathFactory) -> str:
    built = build_layout(tmp_path_factory.mktemp("auth-layout"), "latest", [busybox_layer()])
    return push_layout(built.layout_dir, f"{auth_registry.host}/library/busybox:latest",
                       creds=(AUTH_USER, AUTH_PASSWORD))


def test_basic_auth_with_credentials(auth_registry: LocalRegistry, auth_image: str) -> None:
    client = client_for(auth_registry, credentials=(AUTH_USER, AUTH_PASSWORD))
    client.ping()
    assert client.get_manifest("library/busybox", "latest")[2] == auth_image
    content = os.urandom(100)
    assert client.push_blob("library/busybox", mf.sha256_digest(content), 100,
                            lambda: io.BytesIO(content)) is True


def test_basic_auth_without_credentials(auth_registry: LocalRegistry, auth_image: str) -> None:
    client = client_for(auth_registry)
    client.ping()  # reachable; anonymous access is decided per repository
    with pytest.raises(RegistryAuthError) as info:
        client.get_manifest("library/busybox", "latest")
    message = str(info.value)
    assert message.startswith(f"authentication to {auth_registry.host} failed: 401 Unauthorized")
    assert "no credentials given" in message


def test_basic_auth_wrong_password(auth_registry: LocalRegistry, auth_image: str) -> None:
    client = client_for(auth_registry, credentials=(AUTH_USER, WRONG_PASSWORD))
    assert WRONG_PASSWORD not in repr(client)
    for call in (client.ping, lambda: client.get_manifest("library/busybox", "latest")):
        with pytest.raises(RegistryAuthError) as info:
            call()
        assert str(info.value).startswith(
            f"authentication to {auth_registry.host} failed: 401 Unauthorized")
        assert WRONG_PASSWORD not in str(info.value) and WRONG_PASSWORD not in repr(info.value)


# ---- unreachable and TLS --------------------------------------------------------------------

def test_unavailable_names_the_host() -> None:
    port = free_port()
    started = time.monotonic()
    with pytest.raises(Unavailable) as info:
        RegistryClient(f"127.0.0.1:{port}", insecure=True, retries=1).ping()
    assert time.monotonic() - started < 5
    assert str(info.value).startswith(f"registry 127.0.0.1:{port} is not reachable")
    assert "connection refused" in str(info.value)
    with pytest.raises(Unavailable, match=f"127.0.0.1:{port}"):
        RegistryClient(f"127.0.0.1:{port}", retries=0).get_manifest("a/b", "latest")


def test_tls_verified_by_default(registry: LocalRegistry) -> None:
    with pytest.raises(Unavailable, match=f"TLS connection to registry {registry.host} failed.*"
                                          "mark it insecure"):
        RegistryClient(registry.host, retries=0).ping()


# ---- Bearer tokens (a stand-in registry + token server) -------------------------------------

def test_parse_challenges() -> None:
    header = ('Bearer realm="https://auth.example/token",service="registry.example",'
              'scope="repository:a/b:pull,push", Basic realm="x\\"y"')
    bearer, basic = parse_challenges(header)
    assert bearer.scheme == "bearer" and bearer.params == {
        "realm": "https://auth.example/token", "service": "registry.example",
        "scope": "repository:a/b:pull,push"}
    assert basic.scheme == "basic" and basic.params == {"realm": 'x"y'}


class TokenRegistry:
    """Plays a registry that wants Bearer tokens and its token server, on one port."""

    USER, PASSWORD = "alice", "s3cret-token-pw"
    MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": mf.OCI_MANIFEST,
                           "config": {"mediaType": mf.OCI_CONFIG, "digest": "sha256:" + "1" * 64,
                                      "size": 2}, "layers": []}).encode()

    def __init__(self, allow_anonymous: bool = False):
        self.allow_anonymous = allow_anonymous
        self.token_requests: list[dict[str, Any]] = []
        self.valid: dict[str, str] = {}  # token -> scope
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                owner.handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def reply(self, h: BaseHTTPRequestHandler, status: int, body: bytes,
              headers: dict[str, str] | None = None) -> None:
        h.send_response(status)
        for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            h.send_header(key, value)
        h.end_headers()
        h.wfile.write(body)

    def challenge(self, scope: str = "") -> dict[str, str]:
        extra = f',scope="{scope}",error="invalid_token"' if scope else ""
        return {"WWW-Authenticate": f'Bearer realm="http://{self.host}/token",'
                                    f'service="token-test"{extra}'}

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        url = urlsplit(h.path)
        auth = h.headers.get("Authorization", "")
        if url.path == "/token":
            query = parse_qs(url.query)
            user = None
            if auth.startswith("Basic "):
                user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
                if (user, password) != (self.USER, self.PASSWORD):
                    return self.reply(h, 401, b'{"details":"bad credentials"}')
            elif not self.allow_anonymous:
                return self.reply(h, 401, b'{"details":"credentials required"}')
            self.token_requests.append({"user": user, **query})
            token = f"tok{len(self.token_requests)}"
            self.valid[token] = " ".join(query.get("scope", []))
            return self.reply(h, 200, json.dumps({"token": token, "expires_in": 300}).encode())
        token_scope = self.valid.get(auth.removeprefix("Bearer "))
        if url.path == "/v2/":
            if token_scope is None:
                return self.reply(h, 401, b"{}", self.challenge())
            return self.reply(h, 200, b"{}")
        if url.path == "/v2/team/app/manifests/latest":
            if token_scope != "repository:team/app:pull":
                return self.reply(h, 401, b"{}", self.challenge("repository:team/app:pull"))
            return self.reply(h, 200, self.MANIFEST, {
                "Content-Type": mf.OCI_MANIFEST,
                "Docker-Content-Digest": mf.sha256_digest(self.MANIFEST)})
        return self.reply(h, 404, b'{"errors":[{"code":"NAME_UNKNOWN","message":"unknown"}]}')

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def token_registry() -> Iterator[TokenRegistry]:
    server = TokenRegistry()
    yield server
    server.close()


def test_bearer_token_flow_with_credentials(token_registry: TokenRegistry) -> None:
    client = RegistryClient(token_registry.host, insecure=True, retries=0,
                            credentials=(TokenRegistry.USER, TokenRegistry.PASSWORD))
    for _ in range(2):
        raw, media_type, digest = client.get_manifest("team/app", "latest")
        assert raw == TokenRegistry.MANIFEST and media_type == mf.OCI_MANIFEST
    # One token for the scope, cached for the second call.
    assert token_registry.token_requests == [
        {"user": "alice", "service": ["token-test"], "scope": ["repository:team/app:pull"],
         "account": ["alice"]}]
    token_registry.valid.clear()  # the registry forgets its tokens: a 401 makes a new one
    assert client.get_manifest("team/app", "latest")[0] == raw
    assert len(token_registry.token_requests) == 2


def test_bearer_ping_checks_credentials(token_registry: TokenRegistry) -> None:
    RegistryClient(token_registry.host, insecure=True, retries=0,
                   credentials=(TokenRegistry.USER, TokenRegistry.PASSWORD)).ping()
    assert token_registry.token_requests[0]["user"] == "alice"
    assert "scope" not in token_registry.token_requests[0]
    bad = RegistryClient(token_registry.host, insecure=True, retries=0,
                         credentials=(TokenRegistry.USER, WRONG_PASSWORD))
    for call in (bad.ping, lambda: bad.get_manifest("team/app", "latest")):
        with pytest.raises(RegistryAuthError) as info:
            call()
        message = str(info.value)
        assert message.startswith(f"authentication to {token_registry.host} failed: "
                                  "401 Unauthorized")
        assert WRONG_PASSWORD not in message


def test_bearer_anonymous() -> None:
    server = TokenRegistry(allow_anonymous=True)
    try:
        client = RegistryClient(server.host, insecure=True, retries=0)
        assert client.get_manifest("team/app", "latest")[0] == TokenRegistry.MANIFEST
        assert server.token_requests[0]["user"] is None
    finally:
        server.close()
    anonymous = TokenRegistry(allow_anonymous=False)
    try:
        with pytest.raises(RegistryAuthError, match="no credentials given"):
            client = RegistryClient(anonymous.host, insecure=True, retries=0)
            client.get_manifest("team/app", "latest")
    finally:
        anonymous.close()


def test_blob_digests_are_the_callers_job(busybox_image: PushedImage) -> None:
    """iter_blob streams; verifying is left to the caller, who hashes as it stores."""
    client = client_for(busybox_image.registry)
    hasher = hashlib.sha256()
    for chunk in client.iter_blob("library/busybox", busybox_image.config_digest):
        hasher.update(chunk)
    assert f"sha256:{hasher.hexdigest()}" == busybox_image.config_digest


def test_test_images_round_trip_every_layer_feature(registry: LocalRegistry,
                                                    tmp_path: Path) -> None:
    """The test-image builder's layers survive skopeo and the registry byte for byte."""
    spec = LayerSpec(files={"/etc/motd": b"hi\n", "/usr/bin/su": b"#!/bin/sh\n"},
                     dirs=("/empty",), symlinks={"/usr/bin/sh": "/bin/busybox"},
                     hardlinks={"/etc/motd.link": "/etc/motd"}, whiteouts=("/etc/gone",),
                     opaque_dirs=("/var/cache",), modes={"/usr/bin/su": 0o4755},
                     owners={"/empty": (1000, 2000)}, compression="zstd")
    layers = [spec, LayerSpec(files={"/a": b"a"}, compression="none")]
    first = build_layout(tmp_path / "one", "x", layers, config_overrides={"User": "1000"})
    again = build_layout(tmp_path / "two", "x", layers, config_overrides={"User": "1000"})
    assert again.manifest_digest == first.manifest_digest  # deterministic
    digest = push_layout(first.layout_dir, f"{registry.host}/test/features:v1")
    client = client_for(registry)
    raw, media_type, _ = client.get_manifest("test/features", "v1")
    assert digest == first.manifest_digest
    manifest = parse_manifest(raw, media_type)
    assert isinstance(manifest, Manifest)
    assert [d.media_type for d in manifest.layers] == [mf.OCI_LAYER_ZSTD, mf.OCI_LAYER]
    blob = read_blob(client, "test/features", manifest.layers[0].digest)
    with tarfile.open(fileobj=io.BytesIO(zstandard.ZstdDecompressor().decompressobj()
                                         .decompress(blob))) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["usr/bin/su"].mode == 0o4755
    assert members["etc/motd.link"].islnk() and members["etc/motd.link"].linkname == "etc/motd"
    assert members["usr/bin/sh"].issym() and members["usr/bin/sh"].linkname == "/bin/busybox"
    assert "etc/.wh.gone" in members and "var/cache/.wh..wh..opq" in members
    assert (members["empty"].uid, members["empty"].gid) == (1000, 2000)
    assert all(m.mtime == members["etc/motd"].mtime for m in members.values())
    config = json.loads(read_blob(client, "test/features", manifest.config.digest))
    assert config["config"]["User"] == "1000" and len(config["rootfs"]["diff_ids"]) == 2


def test_docker_hub_api_host_and_repr_hide_secrets() -> None:
    client = RegistryClient("docker.io", credentials=("bob", WRONG_PASSWORD))
    assert client.api_host == "registry-1.docker.io"
    assert repr(client) == "RegistryClient('docker.io', insecure=False, user='bob')"
