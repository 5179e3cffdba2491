"""Man pages and bash completions: generated from the code, current, lint-clean, working."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAN_PAGES = sorted((ROOT / "man").glob("*.[158]"))


def test_generated_files_are_current():
    result = subprocess.run([sys.executable, str(ROOT / "hack" / "gen_docs.py"), "--check"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"run `make man`:\n{result.stdout}{result.stderr}"


def test_every_tool_and_the_config_have_a_page():
    names = {p.name for p in MAN_PAGES}
    assert {"ocid.8", "ocid.conf.5", "ocic.1", "kpod.1", "ocid-config.8", "kpod-info.1",
            "ocic-runtimeversion.1"} <= names


@pytest.mark.parametrize("page", MAN_PAGES, ids=lambda p: p.name)
def test_man_page_renders_without_warnings(page):
    lint = subprocess.run(["mandoc", "-T", "lint", "-W", "warning", str(page)],
                          capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0 and not lint.stdout and not lint.stderr, lint.stdout + lint.stderr
    rendered = subprocess.run(["man", "--warnings", "-l", str(page)], capture_output=True, text=True,
                              timeout=60, env={**os.environ, "MANPAGER": "cat", "MANWIDTH": "80"})
    assert rendered.returncode == 0
    assert rendered.stderr == "", rendered.stderr


def test_config_page_lists_every_key_with_its_default():
    from ocid.config import Config

    text = (ROOT / "man" / "ocid.conf.5").read_text()
    config = Config()
    assert '\\fBconmon\\fP = "/usr/bin/conmon" (string)' in text
    for section in (config.ocid, config.api, config.runtime, config.image, config.network):
        for key in vars(section):
            assert f"\\fB{key}\\fP" in text, key


def complete(tool: str, words: list[str]) -> list[str]:
    """Run bash's completion function for ``tool`` on ``words`` (the last one being completed)."""
    script = ROOT / "completions" / "bash" / tool
    bash = (f"source {shlex.quote(str(script))}\n"
            f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})\n"
            f"COMP_CWORD={len(words) - 1}\n"
            f"_{tool}_completion {tool}\n"
            'printf "%s\\n" "${COMPREPLY[@]}"\n')
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-c", bash], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line]


def test_completion_of_subcommands():
    assert complete("ocic", ["ocic", "r"]) == ["runtimeversion"]
    assert complete("ocic", ["ocic", "p"]) == ["pod"]
    assert set(complete("ocic", ["ocic", "ctr", ""])) >= {"create", "start", "execsync", "logs"}
    assert set(complete("kpod", ["kpod", ""])) >= {"info", "version"}
    assert complete("ocid", ["ocid", "con"]) == ["config"]


def test_completion_of_fixed_choices_and_options():
    assert complete("ocid", ["ocid", "--log-format", ""]) == ["text", "json"]
    assert complete("ocic", ["ocic", "info", "--output", ""]) == ["json", "yaml"]
    assert "--connect" in complete("ocic", ["ocic", "--co"])
    assert complete("ocic", ["ocic", "ctr", "list", "--state", ""]) == \
        ["created", "running", "exited", "unknown"]
    assert complete("ocic", ["ocic", "pod", "list", "--state", ""]) == ["notready", "ready"]
    assert complete("ocic", ["ocic", "pod", "status", "--output", "y"]) == ["yaml"]


def test_live_id_completion_gives_nothing_quickly_without_a_daemon(tmp_path):
    started = time.monotonic()
    assert complete("ocic", ["ocic", "--connect", str(tmp_path / "none.sock"), "ctr", "status",
                             "--id", ""]) == []
    assert complete("kpod", ["kpod", "--root", str(tmp_path / "none"), "rmi", ""]) == []
    assert time.monotonic() - started < 10  # two interpreter starts, no waiting on a daemon
    assert not (tmp_path / "none").exists()  # completion never creates storage
