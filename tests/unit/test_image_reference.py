"""Image references: parsing and normalisation as containers/image's ParseNormalizedNamed."""

from __future__ import annotations

import pytest

from ocid.errors import InvalidArgument
from ocid.image.reference import ImageReference, is_short_name, parse_reference

SHA = "sha256:" + "a" * 64
HEX = "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("library/busybox", "docker.io/library/busybox:latest"),
        ("user/app", "docker.io/user/app:latest"),
        ("user/team/app:v2", "docker.io/user/team/app:v2"),
        ("docker.io/busybox", "docker.io/library/busybox:latest"),
        ("docker.io/library/busybox", "docker.io/library/busybox:latest"),
        ("index.docker.io/busybox", "docker.io/library/busybox:latest"),
        ("index.docker.io/user/app", "docker.io/user/app:latest"),
        ("docker://busybox", "docker.io/library/busybox:latest"),
        ("docker://quay.io/podman/hello", "quay.io/podman/hello:latest"),
        ("localhost/x", "localhost/x:latest"),
        ("localhost:5000/x/y:t", "localhost:5000/x/y:t"),
        ("127.0.0.1:5000/x", "127.0.0.1:5000/x:latest"),
        ("[::1]:5000/x", "[::1]:5000/x:latest"),
        ("registry.k8s.io/pause:3.9", "registry.k8s.io/pause:3.9"),
        ("Registry.Example.com/app", "Registry.Example.com/app:latest"),  # hosts may have capitals
        ("quay.io", "docker.io/library/quay.io:latest"),  # no '/': a repository, like docker
        ("localhost:5000", "docker.io/library/localhost:5000"),  # ... and this is its tag
        (f"busybox@{SHA}", f"docker.io/library/busybox@{SHA}"),
        (f"quay.io/a/b:1.0@{SHA}", f"quay.io/a/b:1.0@{SHA}"),
        ("a/b-c/d__e/f.g/h---i:TAG_1.x-y", "docker.io/a/b-c/d__e/f.g/h---i:TAG_1.x-y"),
        ("x:" + "t" * 128, "docker.io/library/x:" + "t" * 128),
        (f"busybox@sha512:{'b' * 128}", f"docker.io/library/busybox@sha512:{'b' * 128}"),
        (HEX[:63], f"docker.io/library/{HEX[:63]}:latest"),  # not 64 hex: a name like any other
    ],
)
def test_valid_references_normalise(text, normalised):
    assert str(parse_reference(text)) == normalised


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty name"),
        ("docker://", "empty name"),
        (HEX, "image ID, not a name"),
        (f"docker://{HEX}", "image ID, not a name"),
        ("BusyBox", "must be lowercase"),
        ("quay.io/Podman/hello", "must be lowercase"),
        ("busybox:", "invalid tag ''"),
        ("busybox:-x", "invalid tag '-x'"),
        ("busybox:a/b", "invalid registry 'busybox:a'"),  # ':' before '/' makes a host
        ("x:" + "t" * 129, "invalid tag"),
        ("busybox@", "invalid digest ''"),
        ("busybox@sha256:abc", "invalid digest 'sha256:abc'"),
        (f"busybox@md5:{'a' * 32}", "unsupported digest algorithm 'md5'"),
        (f"busybox@sha256:{'a' * 63}", "expected 64 lower-case hex digits"),
        (f"busybox@sha256:{'A' * 64}", "expected 64 lower-case hex digits"),
        (f"@{SHA}", "no repository name"),
        ("quay.io/", "invalid repository name ''"),
        ("quay.io//x", "invalid repository name '/x'"),
        ("user/-app", "invalid repository name 'user/-app'"),
        ("user/app_", "invalid repository name"),
        ("user/a...b", "invalid repository name"),
        ("a b", "invalid repository name"),
        ("-bad.com/x", "invalid registry '-bad.com'"),
        ("host.com:port/x", "invalid registry 'host.com:port'"),
        ("quay.io/" + "a" * 250, "longer than 255 characters"),
        ("quay.io/x@sha256:1@2", "invalid digest"),
    ],
)
def test_invalid_references_name_the_input_and_the_reason(text, why):
    with pytest.raises(InvalidArgument) as info:
        parse_reference(text)
    message = str(info.value)
    assert message.startswith(f"invalid image reference {text!r}: ")
    assert why in message


def test_fields_of_a_parsed_reference():
    ref = parse_reference(f"docker://localhost:5000/ns/app:v1@{SHA}")
    assert ref == ImageReference("localhost:5000", "ns/app", "v1", SHA)
    assert ref.name == "localhost:5000/ns/app"


def test_default_tag_only_when_there_is_neither_tag_nor_digest():
    bare = ImageReference("docker.io", "library/busybox")
    assert parse_reference("busybox", default_tag=False) == bare
    assert parse_reference(f"busybox@{SHA}").tag is None
    assert parse_reference("busybox:1").tag == "1"


def test_str_forms():
    assert str(ImageReference("docker.io", "library/busybox")) == "docker.io/library/busybox"
    assert str(ImageReference("q.io", "a", tag="1")) == "q.io/a:1"
    assert str(ImageReference("q.io", "a", digest=SHA)) == f"q.io/a@{SHA}"
    assert str(ImageReference("q.io", "a", "t", SHA)) == f"q.io/a:t@{SHA}"


def test_round_trip_through_str():
    for text in ("busybox", f"quay.io/a/b:1@{SHA}", "[::1]:5000/x"):
        ref = parse_reference(text)
        assert parse_reference(str(ref)) == ref


def test_with_tag_digest_and_bare():
    ref = parse_reference("quay.io/a/b:1")
    assert str(ref.with_tag("2")) == "quay.io/a/b:2"
    assert str(ref.with_digest(SHA)) == f"quay.io/a/b:1@{SHA}"
    assert str(ref.with_digest(SHA).with_tag("3")) == f"quay.io/a/b:3@{SHA}"
    assert ref.with_digest(SHA).without_tag_or_digest() == ImageReference("quay.io", "a/b")
    assert ref.tag == "1"  # frozen: the original is unchanged


def test_with_tag_and_digest_validate():
    ref = parse_reference("quay.io/a/b")
    with pytest.raises(InvalidArgument, match=r"'quay.io/a/b:latest': invalid tag '\.x'"):
        ref.with_tag(".x")
    with pytest.raises(InvalidArgument, match="invalid digest 'sha256'"):
        ref.with_digest("sha256")


def test_references_are_hashable_values():
    assert parse_reference("busybox") == parse_reference("docker.io/library/busybox:latest")
    assert len({parse_reference("busybox"), parse_reference("index.docker.io/busybox")}) == 1
    with pytest.raises(AttributeError):
        parse_reference("busybox").tag = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "short"),
    [
        ("busybox", True),
        ("busybox:1", True),
        (f"busybox@{SHA}", True),
        ("user/app", True),
        ("docker://user/app", True),
        ("a/b/c", True),
        ("localhost/x", False),
        ("localhost:5000/x", False),
        ("docker.io/busybox", False),
        ("docker://docker.io/busybox", False),
        ("quay.io/a/b", False),
        ("myhost:5000/x", False),
        ("127.0.0.1/x", False),
        ("localhost", True),  # no '/': a repository named localhost
    ],
)
def test_is_short_name(text, short):
    assert is_short_name(text) is short
