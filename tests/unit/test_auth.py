"""Registry credentials: lookup in auth.json / config.json files, storing and removing them."""

from __future__ import annotations

import base64
import errno
import json
import os
import stat

import pytest

from ocid.errors import ConfigError, FailedPrecondition, InvalidArgument
from ocid.image.auth import (
    Credentials, default_auth_files, lookup_credentials, remove_credentials, store_credentials,
)


def auth(user: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def write_auths(path, auths: dict, **extra) -> str:
    path.write_text(json.dumps({"auths": auths, **extra}))
    return str(path)


def test_credentials_repr_hides_the_password():
    creds = Credentials("alice", "s3cret")
    assert "s3cret" not in repr(creds)
    assert "alice" in repr(creds)
    assert creds.password == "s3cret"


@pytest.mark.parametrize(
    ("query", "user"),
    [
        ("quay.io", "host"),
        ("quay.io/other/repo", "host"),
        ("quay.io/team", "team"),
        ("quay.io/team/app", "app"),            # the most specific key wins
        ("quay.io/team/other", "team"),
        ("quay.io/teamx/app", "host"),          # namespaces match at '/' only
        ("docker://quay.io/team/app", "app"),
        ("localhost:5000/x", "port"),
        ("localhost/x", None),                  # the port is part of the host
        ("ghcr.io/x", None),
    ],
)
def test_most_specific_key_wins(tmp_path, query, user):
    path = write_auths(tmp_path / "auth.json", {
        "quay.io": auth("host", "p1"),
        "quay.io/team": auth("team", "p2"),
        "quay.io/team/app": auth("app", "p3"),
        "localhost:5000": auth("port", "p4"),
    })
    creds = lookup_credentials(query, [path])
    assert (creds.username if creds else None) == user


@pytest.mark.parametrize(
    "key", ["https://index.docker.io/v1/", "index.docker.io", "registry-1.docker.io", "docker.io",
            "http://docker.io"],
)
@pytest.mark.parametrize("query", ["docker.io", "docker.io/library/busybox", "index.docker.io"])
def test_docker_hub_is_found_under_its_aliases(tmp_path, key, query):
    path = write_auths(tmp_path / "config.json", {key: auth("hub", "pw")})
    assert lookup_credentials(query, [path]) == Credentials("hub", "pw")


def test_url_keys_of_other_registries(tmp_path):
    path = write_auths(tmp_path / "config.json", {"https://quay.io/v2/": auth("u", "p")})
    assert lookup_credentials("quay.io/a/b", [path]) == Credentials("u", "p")
    assert lookup_credentials("quay.io.evil.com/a", [path]) is None


def test_password_may_contain_colons_and_trailing_nuls_are_dropped(tmp_path):
    raw = base64.b64encode(b"user:pa:ss\x00\x00").decode()
    path = write_auths(tmp_path / "auth.json",
                       {"quay.io": {"auth": raw, "identitytoken": "ignored"}})
    assert lookup_credentials("quay.io", [path]) == Credentials("user", "pa:ss")


def test_files_are_searched_in_order_and_missing_ones_skipped(tmp_path):
    first = write_auths(tmp_path / "first.json", {"quay.io": auth("first", "1")})
    second = write_auths(tmp_path / "second.json",
                         {"quay.io": auth("second", "2"), "ghcr.io": auth("g", "3")})
    files = [str(tmp_path / "missing.json"), first, second]
    assert lookup_credentials("quay.io/x", files) == Credentials("first", "1")
    assert lookup_credentials("ghcr.io/x", files) == Credentials("g", "3")
    assert lookup_credentials("ghcr.io/x", [str(tmp_path / "missing.json")]) is None
    assert lookup_credentials("ghcr.io/x", []) is None


def test_empty_entries_fall_through_to_the_next_file(tmp_path):
    # docker writes {} for hosts whose credentials live in a credential helper.
    first = write_auths(tmp_path / "first.json", {"quay.io": {}}, credsStore="desktop")
    second = write_auths(tmp_path / "second.json", {"quay.io": auth("u", "p")})
    assert lookup_credentials("quay.io", [first]) is None
    assert lookup_credentials("quay.io", [first, second]) == Credentials("u", "p")


def test_empty_file_holds_no_credentials(tmp_path):
    (tmp_path / "auth.json").write_text("")
    assert lookup_credentials("quay.io", [str(tmp_path / "auth.json")]) is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "auth file is not valid JSON"),
        ("[]", 'auth file must be a JSON object with an "auths" object'),
        ('{"auths": []}', 'auth file must be a JSON object with an "auths" object'),
        ('{"auths": {"quay.io": "x"}}',
         "auths['quay.io'] must be an object with a string \"auth\""),
        ('{"auths": {"quay.io": {"auth": 1}}}', "auths['quay.io'] must be an object"),
        ('{"auths": {"quay.io": {"auth": "!!!"}}}', "auths['quay.io'].auth is not base64"),
        (b'\xff\xfe', "auth file is not UTF-8 text"),
    ],
)
def test_corrupt_files_are_named(tmp_path, content, message):
    path = tmp_path / "auth.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(InvalidArgument) as info:
        lookup_credentials("quay.io", [str(path)])
    assert isinstance(info.value, ConfigError)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_unreadable_auth_file(tmp_path):
    (tmp_path / "auth.json").mkdir()
    with pytest.raises(ConfigError, match="auth.json: cannot read auth file: Is a directory"):
        lookup_credentials("quay.io", [str(tmp_path / "auth.json")])


# ---- default files -----------------------------------------------------------------------


def test_default_auth_files_order(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", "/etc/registry-auth.json")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    assert default_auth_files("/run/containers/0/auth.json") == [
        "/run/containers/0/auth.json",
        "/etc/registry-auth.json",
        "/run/user/1000/containers/auth.json",
        f"{tmp_path}/.config/containers/auth.json",
        f"{tmp_path}/.docker/config.json",
    ]


def test_default_auth_files_deduplicated_and_env_overrides(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", "/run/user/0/containers/auth.json")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/0")
    monkeypatch.setenv("XDG_CONFIG_HOME", "/cfg")
    monkeypatch.setenv("DOCKER_CONFIG", "/dockercfg")
    assert default_auth_files("/run/user/0/containers/auth.json") == [
        "/run/user/0/containers/auth.json", "/cfg/containers/auth.json", "/dockercfg/config.json"]


def test_default_auth_files_without_optional_env(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "DOCKER_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    assert default_auth_files("") == [
        f"{tmp_path}/.config/containers/auth.json", f"{tmp_path}/.docker/config.json"]


# ---- store and remove --------------------------------------------------------------------


def test_store_creates_private_file_and_directory(tmp_path):
    path = tmp_path / "run" / "containers" / "auth.json"
    store_credentials(str(path), "quay.io", Credentials("alice", "pw"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert json.loads(path.read_text()) == {"auths": {"quay.io": auth("alice", "pw")}}
    assert lookup_credentials("quay.io/x/y", [str(path)]) == Credentials("alice", "pw")
    assert os.listdir(path.parent) == ["auth.json"]  # no temporary file left behind


def test_store_keeps_other_entries_and_unknown_keys(tmp_path):
    path = write_auths(tmp_path / "auth.json",
                       {"ghcr.io": {**auth("g", "1"), "identitytoken": "t"}},
                       credHelpers={"gcr.io": "gcloud"})
    os.chmod(path, 0o644)
    store_credentials(path, "quay.io/team", Credentials("team", "2"))
    store_credentials(path, "ghcr.io", Credentials("g2", "3"))  # replaces the whole entry
    assert json.loads(open(path).read()) == {
        "auths": {"ghcr.io": auth("g2", "3"), "quay.io/team": auth("team", "2")},
        "credHelpers": {"gcr.io": "gcloud"},
    }
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


@pytest.mark.parametrize(
    ("registry", "message"),
    [
        ("", "registry name is empty"),
        ("https://quay.io", "without http\\[s\\]://"),
        ("quay.io/a@sha256:abc", "must not contain a digest"),
        ("quay.io/a:tag", "must not contain a tag"),
    ],
)
def test_store_and_remove_reject_bad_keys(tmp_path, registry, message):
    path = str(tmp_path / "auth.json")
    with pytest.raises(InvalidArgument, match=message):
        store_credentials(path, registry, Credentials("u", "p"))
    with pytest.raises(InvalidArgument, match=message):
        remove_credentials(path, registry)
    assert not os.path.exists(path)


def test_store_accepts_host_port_keys(tmp_path):
    path = str(tmp_path / "auth.json")
    store_credentials(path, "localhost:5000/ns", Credentials("u", "p"))
    assert lookup_credentials("localhost:5000/ns/app", [path]) == Credentials("u", "p")


def test_store_refuses_a_corrupt_file(tmp_path):
    (tmp_path / "auth.json").write_text("{oops")
    with pytest.raises(ConfigError, match="not valid JSON"):
        store_credentials(str(tmp_path / "auth.json"), "quay.io", Credentials("u", "p"))
    assert (tmp_path / "auth.json").read_text() == "{oops"


def test_store_failure_to_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    def read_only(src, dst):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(os, "replace", read_only)
    path = tmp_path / "auth.json"
    expected = f"cannot write auth file {path}: Read-only file system"
    with pytest.raises(FailedPrecondition, match=expected):
        store_credentials(str(path), "quay.io", Credentials("u", "p"))
    assert os.listdir(tmp_path) == []


def test_remove(tmp_path):
    path = write_auths(tmp_path / "auth.json",
                       {"quay.io": auth("a", "1"), "quay.io/team": auth("b", "2")},
                       other={"kept": True})
    assert remove_credentials(path, "quay.io/team") is True
    assert json.loads(open(path).read()) == {
        "auths": {"quay.io": auth("a", "1")}, "other": {"kept": True}}
    assert remove_credentials(path, "quay.io/team") is False
    assert remove_credentials(path, "ghcr.io") is False
    assert remove_credentials(path, "quay.io") is True
    assert json.loads(open(path).read()) == {"auths": {}, "other": {"kept": True}}


def test_remove_host_also_removes_its_url_forms(tmp_path):
    path = write_auths(tmp_path / "config.json", {"https://index.docker.io/v1/": auth("a", "1"),
                                                  "registry-1.docker.io": auth("b", "2"),
                                                  "quay.io": auth("c", "3")})
    assert remove_credentials(path, "docker.io") is True
    assert list(json.loads(open(path).read())["auths"]) == ["quay.io"]


def test_remove_from_missing_file(tmp_path):
    assert remove_credentials(str(tmp_path / "auth.json"), "quay.io") is False
    assert not (tmp_path / "auth.json").exists()
