"""ocic's pod and container config files: JSON or YAML, errors naming the file and field path."""

from __future__ import annotations

import json

import pytest
from cri_api.v1 import api_pb2

from ocic.configfile import ConfigFileError, load_container_config, load_pod_config, parse_message
from ocid.errors import InvalidArgument

POD = {
    "metadata": {"name": "web", "uid": "u1", "namespace": "ns", "attempt": 2},
    "hostname": "web-host",
    "log_directory": "logs/web",
    "labels": {"app": "web"},
    "linux": {"security_context": {"namespace_options": {"network": "NODE", "pid": "CONTAINER"}}},
}


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_good_json(tmp_path):
    config = load_pod_config(write(tmp_path, "pod.json", json.dumps(POD)))
    assert isinstance(config, api_pb2.PodSandboxConfig)
    assert (config.metadata.name, config.metadata.attempt) == ("web", 2)
    assert config.log_directory == "logs/web"  # relative paths stay as written
    assert config.labels == {"app": "web"}
    options = config.linux.security_context.namespace_options
    assert (options.network, options.pid) == (api_pb2.NODE, api_pb2.CONTAINER)


def test_good_yaml_with_camel_case_names(tmp_path):
    text = """
metadata:
  name: c1
  attempt: 1
image:
  image: busybox
command: [/bin/sh, -c, "echo hi"]
logPath: c1.log
envs:
  - {key: A, value: "1"}
linux:
  securityContext:
    seccomp: {profileType: RuntimeDefault}
    runAsUser: {value: "1000"}
"""
    config = load_container_config(write(tmp_path, "ctr.conf", text))
    assert config.metadata.name == "c1"
    assert list(config.command) == ["/bin/sh", "-c", "echo hi"]
    assert config.log_path == "c1.log"
    assert config.envs[0].value == "1"
    assert config.linux.security_context.run_as_user.value == 1000
    assert config.linux.security_context.seccomp.profile_type == api_pb2.SecurityProfile.RuntimeDefault


def test_format_is_told_by_parsing_not_by_name(tmp_path):
    path = write(tmp_path, "pod.yaml", json.dumps(POD))
    assert load_pod_config(path).hostname == "web-host"


def test_unknown_field_names_the_file_and_path(tmp_path):
    data = {**POD, "metadata": {**POD["metadata"], "foo": 1}}
    path = write(tmp_path, "pod.json", json.dumps(data))
    with pytest.raises(ConfigFileError) as info:
        load_pod_config(path)
    assert str(info.value) == f'{path}: unknown field "foo" at PodSandboxConfig.metadata'
    assert isinstance(info.value, InvalidArgument)  # so run_cli prints it on one line


def test_unknown_field_in_a_list_item():
    data = {"mounts": [{"container_path": "/a"}, {"container_path": "/b", "ro": True}]}
    with pytest.raises(ConfigFileError, match=r'unknown field "ro" at ContainerConfig\.mounts\[1\]'):
        parse_message(json.dumps(data), api_pb2.ContainerConfig, source="c.json")


def test_old_field_names_are_unknown():
    # Pre-v1 configs put namespace options under linux; today they live in the security context.
    data = {"linux": {"namespace_options": {"host_network": True}}}
    with pytest.raises(ConfigFileError, match='unknown field "namespace_options" at PodSandboxConfig.linux'):
        parse_message(json.dumps(data), api_pb2.PodSandboxConfig)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"metadata": {"attempt": "x"}},
         'expected an unsigned 32-bit integer at PodSandboxConfig.metadata.attempt, got "x"'),
        ({"metadata": {"attempt": -1}},
         "expected an unsigned 32-bit integer at PodSandboxConfig.metadata.attempt, got -1"),
        ({"hostname": 3}, "expected a string at PodSandboxConfig.hostname, got 3"),
        ({"labels": {"a": True}}, "expected a string at PodSandboxConfig.labels.a, got true"),
        ({"labels": ["a"]}, "expected a mapping at PodSandboxConfig.labels, got a list"),
        ({"metadata": "web"}, 'expected a mapping (PodSandboxMetadata) at PodSandboxConfig.metadata'),
        ({"dns_config": {"servers": "8.8.8.8"}},
         'expected a list at PodSandboxConfig.dns_config.servers, got "8.8.8.8"'),
        ({"linux": {"security_context": {"namespace_options": {"network": "HOST"}}}},
         ("expected one of POD, CONTAINER, NODE, TARGET at "
          "PodSandboxConfig.linux.security_context.namespace_options.network")),
        ({"linux": {"security_context": {"privileged": "yes"}}},
         'expected true or false at PodSandboxConfig.linux.security_context.privileged, got "yes"'),
    ],
)
def test_bad_types_name_the_path(data, message):
    with pytest.raises(ConfigFileError) as info:
        parse_message(json.dumps(data), api_pb2.PodSandboxConfig, source="pod.json")
    assert str(info.value).startswith(f"pod.json: {message}")


def test_yaml_booleans_get_a_hint():
    with pytest.raises(ConfigFileError, match=r"labels\.batch, got false \(quote it in YAML\)"):
        parse_message("labels:\n  batch: no\n", api_pb2.ContainerConfig, source="c.yaml")


def test_64_bit_integers_may_be_strings():
    config = parse_message('{"linux": {"resources": {"memory_limit_in_bytes": "1048576"}}}',
                           api_pb2.ContainerConfig)
    assert config.linux.resources.memory_limit_in_bytes == 1048576


@pytest.mark.parametrize(("text", "kind"), [("[1, 2]", "a list"), ('"pod"', '"pod"'),
                                             ("", "nothing"), ("42", "42")])
def test_not_a_mapping(text, kind):
    with pytest.raises(ConfigFileError) as info:
        parse_message(text, api_pb2.PodSandboxConfig, source="pod.json")
    assert str(info.value).startswith(
        f"pod.json: expected a mapping of PodSandboxConfig fields, got {kind}")


def test_broken_json_reports_the_line():
    with pytest.raises(ConfigFileError, match=r"^pod\.json:3: invalid JSON"):
        parse_message('{\n  "hostname": "a"\n  "labels": {}\n}', api_pb2.PodSandboxConfig,
                      source="pod.json")


def test_broken_yaml_reports_the_line():
    with pytest.raises(ConfigFileError, match=r"^pod\.yaml:2: invalid YAML"):
        parse_message("hostname: a\n  labels: [\n", api_pb2.PodSandboxConfig, source="pod.yaml")


def test_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_pod_config(str(tmp_path / "absent.json"))
