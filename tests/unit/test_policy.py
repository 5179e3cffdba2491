"""policy.json: loading, scope lookup (most specific first) and the requirements."""

from __future__ import annotations

import json
import re

import pytest

from ocid.errors import ConfigError, FailedPrecondition
from ocid.image.policy import Policy, PolicyRejected, Requirement, load_policy
from ocid.image.reference import parse_reference

SHA = "sha256:" + "c" * 64
ACCEPT = [{"type": "insecureAcceptAnything"}]
REJECT = [{"type": "reject"}]


def write_policy(tmp_path, data) -> str:
    path = tmp_path / "policy.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def policy(tmp_path, default=REJECT, **transports) -> Policy:
    return load_policy(write_policy(tmp_path, {"default": default, "transports": transports}))


def accepts(p: Policy, transport: str, text: str | None, scope: str | None = None) -> bool:
    try:
        p.check(transport, parse_reference(text) if text else None, scope)
    except PolicyRejected:
        return False
    return True


def test_missing_file_accepts_everything(tmp_path):
    p = load_policy(str(tmp_path / "policy.json"))
    assert p == Policy(str(tmp_path / "policy.json"))
    p.check("docker", parse_reference("busybox"))
    p.check("oci-archive", None, "/tmp/x.tar")


def test_debian_default_policy_accepts_everything(tmp_path):
    p = load_policy(write_policy(tmp_path, {
        "default": ACCEPT, "transports": {"docker-daemon": {"": ACCEPT}}}))
    p.check("docker", parse_reference("quay.io/any/thing:1"))


def test_reject_message_names_image_file_transport_and_scope(tmp_path):
    p = policy(tmp_path, default=ACCEPT, docker={"docker.io": REJECT})
    with pytest.raises(PolicyRejected) as info:
        p.check("docker", parse_reference("busybox"))
    assert isinstance(info.value, FailedPrecondition)
    assert str(info.value) == (
        f"image docker.io/library/busybox:latest rejected by policy {tmp_path / 'policy.json'} "
        '(transports.docker["docker.io"]: reject)')


def test_reject_by_global_default(tmp_path):
    p = policy(tmp_path, default=REJECT)
    expected = r"image quay.io/a:latest rejected by policy .*\(default: reject\)$"
    with pytest.raises(PolicyRejected, match=expected):
        p.check("docker", parse_reference("quay.io/a"))


@pytest.mark.parametrize(
    ("image", "scope"),
    [
        ("docker.io/library/busybox:1.36", "docker.io/library/busybox:1.36"),
        ("docker.io/library/busybox:1.37", "docker.io/library/busybox"),
        (f"docker.io/library/busybox@{SHA}", f"docker.io/library/busybox@{SHA}"),
        # With both, the digest decides.
        (f"docker.io/library/busybox:1.36@{SHA}", f"docker.io/library/busybox@{SHA}"),
        ("docker.io/library/alpine", "docker.io/library"),
        ("docker.io/user/app", "docker.io"),
        ("a.b.example.com/x", "*.b.example.com"),
        ("c.example.com/x", "*.example.com"),
        ("c.example.com:5000/ns/x", "*.example.com"),  # the port is dropped for wildcards
        ("localhost:5000/ns/x", "localhost:5000/ns"),
        ("quay.io/x", "*.io"),
        ("localhost/x", ""),
    ],
)
def test_most_specific_docker_scope_wins(tmp_path, image, scope):
    scopes = ["docker.io/library/busybox:1.36", "docker.io/library/busybox",
              f"docker.io/library/busybox@{SHA}", "docker.io/library", "docker.io",
              "*.b.example.com", "*.example.com", "localhost:5000/ns", "*.io", ""]
    # Only the matching scope rejects: the rejection message then names which one applied.
    for candidate in scopes:
        transports = {"docker": {s: (REJECT if s == candidate else ACCEPT) for s in scopes}}
        p = policy(tmp_path, default=ACCEPT, **transports)
        if candidate == scope:
            applied = re.escape(f"transports.docker[{json.dumps(scope)}]: reject")
            with pytest.raises(PolicyRejected, match=applied):
                p.check("docker", parse_reference(image))
        else:
            p.check("docker", parse_reference(image))


def test_only_the_first_matching_scope_applies(tmp_path):
    # A more specific accept overrides a rejecting namespace and transport default.
    p = policy(tmp_path, docker={"quay.io/trusted": ACCEPT, "quay.io": REJECT, "": REJECT})
    assert accepts(p, "docker", "quay.io/trusted/app:1")
    assert not accepts(p, "docker", "quay.io/other/app:1")
    assert not accepts(p, "docker", "ghcr.io/x")


def test_transport_default_before_global_default(tmp_path):
    p = policy(tmp_path, default=REJECT, docker={"": ACCEPT})
    assert accepts(p, "docker", "quay.io/x")
    assert not accepts(p, "oci", None, "/srv/images/x")


def test_all_requirements_must_accept(tmp_path):
    p = policy(tmp_path, default=ACCEPT, docker={"quay.io": ACCEPT + REJECT})
    with pytest.raises(PolicyRejected, match=r'\(transports.docker\["quay.io"\]: reject\)'):
        p.check("docker", parse_reference("quay.io/x"))


@pytest.mark.parametrize(
    "requirement",
    [
        {"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/etc/pki/key.gpg"},
        {"type": "sigstoreSigned", "keyPath": "/etc/pki/cosign.pub",
         "signedIdentity": {"type": "matchRepository"}},
    ],
)
def test_signature_requirements_reject_until_verification_exists(tmp_path, requirement):
    p = policy(tmp_path, default=ACCEPT, docker={"registry.redhat.io": [requirement]})
    with pytest.raises(PolicyRejected) as info:
        p.check("docker", parse_reference("registry.redhat.io/ubi9:latest"))
    assert str(info.value) == (
        f"image registry.redhat.io/ubi9:latest rejected by policy {tmp_path / 'policy.json'} "
        f'(transports.docker["registry.redhat.io"]: {requirement["type"]}): '
        "verifying signatures is not supported yet")
    assert accepts(p, "docker", "quay.io/x")


@pytest.mark.parametrize(
    ("scope", "applied"),
    [
        ("/srv/images/app.tar", '"/srv/images/app.tar"'),
        ("/srv/images/other.tar", '"/srv/images"'),
        ("/srv/other/x.tar", '"/srv"'),
        ("/tmp/x.tar", '""'),
    ],
)
def test_path_transports_use_the_path_and_its_parents(tmp_path, scope, applied):
    scopes = ["/srv/images/app.tar", "/srv/images", "/srv", ""]
    for candidate in scopes:
        p = policy(tmp_path, default=ACCEPT,
                   **{"oci-archive": {s: (REJECT if s == candidate else ACCEPT) for s in scopes}})
        rejected = not accepts(p, "oci-archive", None, scope)
        assert rejected is (json.dumps(candidate) == applied), candidate


def test_path_transport_message_names_transport_and_path(tmp_path):
    p = policy(tmp_path, default=ACCEPT, **{"docker-archive": {"": REJECT}})
    with pytest.raises(PolicyRejected) as info:
        p.check("docker-archive", None, "/tmp/a.tar")
    assert str(info.value) == (
        f"image docker-archive:/tmp/a.tar rejected by policy {tmp_path / 'policy.json'} "
        '(transports.docker-archive[""]: reject)')


def test_docker_scopes_are_not_used_for_other_transports(tmp_path):
    p = policy(tmp_path, default=ACCEPT, oci={"docker.io": REJECT})
    assert accepts(p, "oci", "busybox", "/x")
    assert accepts(p, "docker", "busybox")


def test_no_reference_uses_the_defaults(tmp_path):
    p = policy(tmp_path, default=ACCEPT, docker={"": REJECT})
    assert not accepts(p, "docker", None)
    assert accepts(p, "dir", None)


def test_loaded_structure(tmp_path):
    p = policy(tmp_path, default=ACCEPT, docker={"quay.io": REJECT + ACCEPT})
    assert p.default == (Requirement("insecureAcceptAnything"),)
    assert p.transports == {
        "docker": {"quay.io": (Requirement("reject"), Requirement("insecureAcceptAnything"))}}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("{", "invalid JSON"),
        ("[]", "the policy must be a JSON object"),
        ({"transports": {}}, 'the "default" requirements are missing'),
        ({"default": ACCEPT, "extra": 1}, "unknown key 'extra'"),
        ({"default": []}, "default must be a non-empty array of requirements"),
        ({"default": {"type": "reject"}}, "default must be a non-empty array"),
        ({"default": ["reject"]}, 'default[0] must be an object with a "type"'),
        ({"default": [{"typ": "reject"}]}, 'default[0] must be an object with a "type"'),
        ({"default": [{"type": "acceptAll"}]}, "default[0]: unknown requirement type 'acceptAll'"),
        ({"default": [{"type": "reject", "keyPath": "/k"}]},
         "default[0]: reject takes no other keys, not keyPath"),
        ({"default": ACCEPT, "transports": []}, '"transports" must be an object'),
        ({"default": ACCEPT, "transports": {"docker": []}},
         "transports.docker must be an object of scopes"),
        ({"default": ACCEPT, "transports": {"docker": {"quay.io": [{"type": "nope"}]}}},
         "transports.docker[\"quay.io\"][0]: unknown requirement type 'nope'"),
    ],
)
def test_malformed_policies_name_the_file(tmp_path, data, message):
    path = write_policy(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_unreadable_policy(tmp_path):
    (tmp_path / "policy.json").mkdir()
    with pytest.raises(ConfigError, match="policy.json: cannot read: Is a directory"):
        load_policy(str(tmp_path / "policy.json"))
