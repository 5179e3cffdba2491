"""Session fixtures: real local registries and busybox test images pushed into them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from ocid.image.manifest import Platform
from tests.support.images import (BuiltImage, BuiltIndex, build_index, build_layout,
                                  busybox_layer, push_layout)
from tests.support.registry import LocalRegistry

AUTH_USER = "tester"
AUTH_PASSWORD = "secret"


@dataclass(frozen=True)
class PushedImage:
    """A test image in a local registry."""

    registry: LocalRegistry
    repository: str  # "library/busybox"
    tag: str
    manifest_digest: str  # of the manifest, or of the index for a multi-platform image
    config_digest: str  # of the host platform's image
    image: BuiltImage  # the host platform's image as built
    index: BuiltIndex | None = None  # the whole index, for a multi-platform image

    @property
    def reference(self) -> str:
        """``127.0.0.1:PORT/library/busybox:latest``."""
        return f"{self.registry.host}/{self.repository}:{self.tag}"

    @property
    def digest_reference(self) -> str:
        """``127.0.0.1:PORT/library/busybox@sha256:...``."""
        return f"{self.registry.host}/{self.repository}@{self.manifest_digest}"


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """A plain-HTTP docker-registry on 127.0.0.1 without auth, for the whole session."""
    reg = LocalRegistry(tmp_path_factory.mktemp("registry")).start()
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """A plain-HTTP docker-registry with htpasswd auth: user "tester", password "secret"."""
    reg = LocalRegistry(tmp_path_factory.mktemp("auth-registry"),
                        users={AUTH_USER: AUTH_PASSWORD}).start()
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def busybox_image(registry: LocalRegistry,
                  tmp_path_factory: pytest.TempPathFactory) -> PushedImage:
    """The busybox test image, pushed as ``<registry>/library/busybox:latest``."""
    built = build_layout(tmp_path_factory.mktemp("busybox-layout"), "latest", [busybox_layer()])
    digest = push_layout(built.layout_dir, f"{registry.host}/library/busybox:latest")
    assert digest == built.manifest_digest, "skopeo rewrote the manifest"
    return PushedImage(registry, "library/busybox", "latest", digest, built.config_digest, built)


@pytest.fixture(scope="session")
def multiarch_image(registry: LocalRegistry,
                    tmp_path_factory: pytest.TempPathFactory) -> PushedImage:
    """A two-platform index (host: busybox; a fake linux/arm64 or amd64: one text file),
    pushed with ``--all`` as ``<registry>/library/multiarch:latest``."""
    built = build_index(tmp_path_factory.mktemp("multiarch-layout"), "latest")
    digest = push_layout(built.layout_dir, f"{registry.host}/library/multiarch:latest")
    assert digest == built.index_digest, "skopeo rewrote the index"
    host_image = built.images[str(Platform.host())]
    return PushedImage(registry, "library/multiarch", "latest", digest,
                       host_image.config_digest, host_image, built)
