"""Finding the default CNI network: order, validation, missing plugins, reasons."""

from __future__ import annotations

import json
import os

import pytest

from ocid.network.cni import NetworkNotReady, default_network


@pytest.fixture
def plugin_dir(tmp_path):
    directory = tmp_path / "bin"
    directory.mkdir()
    for name in ("bridge", "loopback", "portmap"):
        plugin = directory / name
        plugin.write_text("#!/bin/sh\n")
        plugin.chmod(0o755)
    return str(directory)


def conflist(name, *types):
    return json.dumps({"cniVersion": "1.0.0", "name": name, "plugins": [{"type": t} for t in types]})


def test_lexically_first_valid_config_wins(tmp_path, plugin_dir):
    net = tmp_path / "net.d"
    net.mkdir()
    (net / "20-second.conflist").write_text(conflist("second", "bridge"))
    (net / "10-first.conflist").write_text(conflist("first", "bridge", "portmap"))
    (net / "05-notes.txt").write_text("not a config")
    network = default_network(str(net), [plugin_dir])
    assert network.name == "first"
    assert [p["type"] for p in network.plugins] == ["bridge", "portmap"]


def test_single_plugin_conf_is_a_list_of_one(tmp_path, plugin_dir):
    net = tmp_path / "net.d"
    net.mkdir()
    (net / "99-loop.conf").write_text(json.dumps({"cniVersion": "0.4.0", "name": "lo", "type": "loopback"}))
    network = default_network(str(net), [plugin_dir])
    assert (network.name, network.cni_version, len(network.plugins)) == ("lo", "0.4.0", 1)


def test_invalid_files_are_skipped_and_named_when_nothing_is_valid(tmp_path, plugin_dir):
    net = tmp_path / "net.d"
    net.mkdir()
    (net / "10-broken.conflist").write_text("{not json")
    (net / "20-noname.conflist").write_text(json.dumps({"plugins": [{"type": "bridge"}]}))
    (net / "30-missing.conflist").write_text(conflist("m", "bridge", "flannel"))
    with pytest.raises(NetworkNotReady) as info:
        default_network(str(net), [plugin_dir])
    message = str(info.value)
    assert "10-broken.conflist: invalid JSON" in message
    assert "20-noname.conflist: missing 'name'" in message
    assert "30-missing.conflist: plugin flannel not found" in message
    (net / "40-good.conflist").write_text(conflist("good", "bridge"))
    assert default_network(str(net), [plugin_dir]).name == "good"


def test_missing_or_empty_directory_is_not_ready(tmp_path, plugin_dir):
    with pytest.raises(NetworkNotReady, match="does not exist"):
        default_network(str(tmp_path / "nope"), [plugin_dir])
    os.mkdir(tmp_path / "empty")
    with pytest.raises(NetworkNotReady, match="no valid CNI network configuration"):
        default_network(str(tmp_path / "empty"), [plugin_dir])
