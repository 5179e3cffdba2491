"""Every fixture in testdata/ loads through ocic's config loader as the message its name says."""

from __future__ import annotations

from pathlib import Path

import pytest
from cri_api.v1 import api_pb2

from ocic.configfile import load_container_config, load_pod_config

TESTDATA = Path(__file__).resolve().parents[2] / "testdata"
FIXTURES = sorted(TESTDATA.glob("*.json"))


def test_there_are_fixtures_of_both_kinds():
    names = {p.name for p in FIXTURES}
    assert {"sandbox_config.json", "container_config.json"} <= names
    assert all(name.startswith(("sandbox_", "container_")) for name in names), names


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
def test_fixture_loads(path):
    if path.name.startswith("sandbox_"):
        config = load_pod_config(str(path))
        assert isinstance(config, api_pb2.PodSandboxConfig)
        assert config.metadata.name and config.metadata.uid and config.metadata.namespace
        assert config.log_directory
    else:
        config = load_container_config(str(path))
        assert isinstance(config, api_pb2.ContainerConfig)
        assert config.metadata.name
        # Integration tests replace the placeholder with the image they pushed (see README).
        assert config.image.image == "busybox"
        assert config.log_path and not config.log_path.startswith("/")


def test_every_fixture_is_documented():
    readme = (TESTDATA / "README.md").read_text()
    for path in FIXTURES:
        assert f"`{path.name}`" in readme, path.name


def test_pod_names_and_uids_are_unique():
    pods = [load_pod_config(str(p)) for p in FIXTURES if p.name.startswith("sandbox_")]
    assert len({p.metadata.name for p in pods}) == len({p.metadata.uid for p in pods}) == len(pods)


def test_special_fixtures_say_what_their_names_promise():
    hostnet = load_pod_config(str(TESTDATA / "sandbox_config_hostnet.json"))
    assert hostnet.linux.security_context.namespace_options.network == api_pb2.NODE
    sysctl = load_pod_config(str(TESTDATA / "sandbox_config_sysctl.json"))
    assert dict(sysctl.linux.sysctls) == {"kernel.shm_rmid_forced": "1", "net.ipv4.ip_forward": "1"}
    assert "security.alpha.kubernetes.io/sysctls" in sysctl.annotations
    seccomp = load_container_config(str(TESTDATA / "container_config_seccomp.json"))
    assert seccomp.linux.security_context.seccomp.profile_type == api_pb2.SecurityProfile.RuntimeDefault
    unconfined = load_container_config(str(TESTDATA / "container_config_unconfined.json"))
    assert unconfined.linux.security_context.seccomp.profile_type == api_pb2.SecurityProfile.Unconfined
    exit_test = load_container_config(str(TESTDATA / "container_exit_test.json"))
    assert "exit 3" in " ".join([*exit_test.command, *exit_test.args])
