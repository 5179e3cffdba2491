"""kpod's global options and its version/info commands, with no daemon running."""

from __future__ import annotations

import json
import subprocess

import yaml

from ocid import __version__
from ocid.image.manifest import Platform

from .conftest import KPOD


def kpod(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([KPOD, *args], capture_output=True, text=True, timeout=60)


def test_version():
    result = kpod("version", "--format", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["Version"] == __version__
    assert data["OS/Arch"] == str(Platform.host())


def test_info_uses_ocids_config_and_kpod_overrides(tmp_path):
    config = tmp_path / "ocid.conf"
    config.write_text(f'[ocid]\nroot = "{tmp_path}/from-config"\nrunroot = "{tmp_path}/run"\n'
                      '[ocid.runtime]\nruntime = "/usr/sbin/runc"\nconmon = "/nonexistent/conmon"\n')
    data = yaml.safe_load(kpod("--config", str(config), "info").stdout)
    assert data["store"]["configFile"] == str(config)
    assert data["store"]["root"] == f"{tmp_path}/from-config"
    assert data["store"]["runRoot"] == f"{tmp_path}/run"
    assert data["runtime"]["found"] is True
    assert data["runtime"]["version"].startswith("runc version")
    assert data["conmon"] == {"path": "/nonexistent/conmon", "found": False, "version": ""}

    overridden = json.loads(kpod("--config", str(config), "--root", f"{tmp_path}/flag",
                                 "info", "--format", "json").stdout)
    assert overridden["store"]["root"] == f"{tmp_path}/flag"
    assert overridden["store"]["sandboxDir"] == f"{tmp_path}/flag/sandboxes"


def test_info_with_a_bad_config_is_one_clear_line(tmp_path):
    config = tmp_path / "ocid.conf"
    config.write_text("[ocid]\nroot = 1\n")
    result = kpod("--config", str(config), "info")
    assert result.returncode == 1
    assert result.stderr.strip() == f"kpod: {config}:2: ocid.root must be a string, not an integer (1)"
