"""Config parsing, precedence, the round trip of `ocid config`, and every kind of bad config."""

from __future__ import annotations

import dataclasses
import textwrap

import pytest

from ocid.cli import main as ocid_main
from ocid.config import Config, RuntimeHandler, load_config, render_toml
from ocid.errors import ConfigError


def write(tmp_path, text: str) -> str:
    path = tmp_path / "ocid.conf"
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_defaults_match_the_documented_paths():
    config = load_config(None)
    assert config.ocid.root == "/var/lib/ocid"
    assert config.ocid.runroot == "/var/run/ocid"
    assert config.ocid.sandbox_dir == "/var/lib/ocid/sandboxes"
    assert config.ocid.container_dir == "/var/lib/ocid/containers"
    assert config.api.listen == "/var/run/ocid.sock"
    assert config.runtime.runtime == "/usr/sbin/runc"
    assert config.runtime.conmon == "/usr/bin/conmon"
    assert config.runtime.cgroup_manager == "cgroupfs"
    assert set(config.runtime.runtimes) == {"runc", "crun"}
    assert config.network.plugin_dirs == ["/opt/cni/bin", "/usr/lib/cni"]


def test_missing_default_file_means_defaults_but_a_named_one_is_an_error(tmp_path):
    assert load_config(str(tmp_path / "absent.conf")) == load_config(None)
    with pytest.raises(ConfigError, match="absent.conf: no such file"):
        load_config(str(tmp_path / "absent.conf"), required=True)


def test_file_overrides_defaults_and_flags_override_file(tmp_path):
    path = write(tmp_path, """
        [ocid]
        root = "/srv/ocid"
        [ocid.runtime]
        conmon = "/opt/conmon"
        selinux = true
    """)
    config = load_config(path, overrides={("ocid", "root"): "/flag/root"})
    assert config.ocid.root == "/flag/root"            # flag beats file
    assert config.runtime.conmon == "/opt/conmon"      # file beats default
    assert config.runtime.selinux is True
    assert config.api.listen == "/var/run/ocid.sock"   # untouched default
    # derived directories follow the effective root, not the default one
    assert config.ocid.sandbox_dir == "/flag/root/sandboxes"


def test_runtime_handlers_merge_into_the_defaults(tmp_path):
    path = write(tmp_path, """
        [ocid.runtime.runtimes.kata]
        runtime_path = "/usr/bin/kata-runtime"
        [ocid.runtime.runtimes.runc]
        runtime_root = "/run/myrunc"
    """)
    config = load_config(path)
    assert config.runtime.runtimes["kata"].runtime_path == "/usr/bin/kata-runtime"
    assert config.runtime.runtimes["kata"].runtime_root == "/var/run/ocid/runtime/kata"
    assert config.runtime.runtimes["runc"] == RuntimeHandler("/usr/sbin/runc", "/run/myrunc", "oci")
    assert "crun" in config.runtime.runtimes


def test_render_round_trips_a_non_default_config(tmp_path):
    config = Config()
    config.ocid.root = "/srv/ocid"
    config.api.stream_port = 0
    config.runtime.conmon_env = ["PATH=/bin", "A=b c"]
    config.runtime.selinux = True
    config.runtime.cgroup_manager = "systemd"
    config.runtime.runtimes["kata"] = RuntimeHandler(runtime_path="/usr/bin/kata")
    config.network.plugin_dirs = ["/x"]
    config.finalize()
    text = render_toml(config)
    assert "# Path of conmon" in text            # commented
    path = write(tmp_path, text)
    assert load_config(path, required=True) == config


def test_ocid_config_command_round_trips_through_config_flag(tmp_path, capsys):
    first = write(tmp_path, '[ocid.network]\nnetwork_dir = "/etc/my-cni"\n')
    assert ocid_main(["--config", first, "--root", "/srv/r", "--selinux", "config"]) == 0
    printed = capsys.readouterr().out
    second = tmp_path / "printed.conf"
    second.write_text(printed)
    assert ocid_main(["--config", str(second), "config"]) == 0
    assert capsys.readouterr().out == printed
    reloaded = load_config(str(second), required=True)
    assert reloaded.ocid.root == "/srv/r"
    assert reloaded.runtime.selinux is True
    assert reloaded.network.network_dir == "/etc/my-cni"


def test_ocid_config_default_ignores_file_and_flags(tmp_path, capsys):
    path = write(tmp_path, '[ocid]\nroot = "/elsewhere"\n')
    assert ocid_main(["--config", path, "--listen", "/x.sock", "config", "--default"]) == 0
    assert capsys.readouterr().out == render_toml(Config().finalize())


@pytest.mark.parametrize(
    ("text", "message", "line"),
    [
        ('[ocid]\nroot = "/a"\nbogus = 1\n', "unknown key 'ocid.bogus'", 3),
        ('[ocid.runtime]\n\nconmon = 5\n', "ocid.runtime.conmon must be a string, not an integer", 3),
        ('[ocid.runtime]\nselinux = "yes"\n', "ocid.runtime.selinux must be a boolean", 2),
        ('[ocid.api]\nstream_port = "10010"\n', "ocid.api.stream_port must be an integer", 2),
        ('[ocid.network]\nplugin_dirs = "/opt"\n', "ocid.network.plugin_dirs must be an array", 2),
        ('[ocid.network]\nplugin_dirs = ["/opt", 3]\n', "ocid.network.plugin_dirs must be a string", 2),
        ('[ocid.runtime]\ncgroup_manager = "cgroupv3"\n', "must be one of cgroupfs, systemd", 2),
        ('[ocid.runtime.runtimes.kata]\nruntime_pth = "/k"\n',
         "unknown key 'ocid.runtime.runtimes.kata.runtime_pth'", 2),
        ('[ocid.runtime]\nruntimes = 3\n', "ocid.runtime.runtimes must be a table", 2),
        ('[crio]\nroot = "/a"\n', "unknown table or key 'crio'", 1),
        ('[ocid.imag]\npause = "/p"\n', "unknown key 'ocid.imag'", 1),
        ('[ocid]\nroot = "/a"\nroot = "/b"\n', "invalid TOML", 3),
        ('[ocid\nroot = 1\n', "invalid TOML", 1),
    ],
)
def test_bad_config_names_key_and_line(tmp_path, text, message, line):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, required=True)
    assert message in str(info.value)
    assert info.value.line == line
    assert str(info.value).startswith(f"{path}:{line}: ")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[ocid]\nroot = "relative/dir"\n', "ocid.root must be an absolute path"),
        ('[ocid.api]\nstream_port = 70000\n', "stream_port must be between 0 and 65535"),
        ('[ocid.runtime.runtimes."bad name"]\nruntime_path = "/k"\n', "invalid handler name"),
        ('[ocid.runtime.runtimes.kata]\nruntime_type = "oci"\n', "kata.runtime_path must be set"),
    ],
)
def test_invalid_values_are_rejected(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), required=True)


def test_bad_config_stops_ocid_with_the_key_and_a_nonzero_exit(tmp_path, capsys):
    path = write(tmp_path, '[ocid.runtime]\nconmon = ["a"]\n')
    assert ocid_main(["--config", path, "--listen", str(tmp_path / "s.sock")]) == 1
    err = capsys.readouterr().err
    assert f"ocid: {path}:2: ocid.runtime.conmon must be a string" in err
    assert "Traceback" not in err
    assert not (tmp_path / "s.sock").exists()


def test_config_objects_are_independent():
    a, b = Config(), Config()
    a.runtime.conmon_env.append("X=1")
    a.runtime.runtimes["runc"].runtime_root = "/elsewhere"
    assert b.runtime.conmon_env == Config().runtime.conmon_env
    assert b.runtime.runtimes["runc"].runtime_root == ""
    assert dataclasses.asdict(b) == dataclasses.asdict(Config())
