"""ocic pod and ctr commands against a real ocid, with the fixtures in testdata/."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.integration.test_images import insecure, write_registries
from tests.support.cleanup import leftovers
from tests.support.cri import wait_for, write_loopback_network

TESTDATA = Path(__file__).resolve().parents[2] / "testdata"


@pytest.fixture
def env(start_ocid, registry, busybox_image, tmp_path):
    """A running ocid with the busybox image pulled, and fixture writers."""
    daemon = start_ocid()
    write_registries(daemon, insecure(registry.host))
    write_loopback_network(daemon.workdir)
    daemon.ocic("image", "pull", "--quiet", busybox_image.reference)
    return Fixtures(daemon, busybox_image.reference, tmp_path)


class Fixtures:
    """testdata/ files made runnable here: our image, a log directory of this test."""

    def __init__(self, daemon, image: str, tmp_path: Path):
        self.daemon, self.image, self.tmp = daemon, image, tmp_path

    def file(self, name: str, **changes) -> str:
        data = json.loads((TESTDATA / name).read_text())
        if "image" in data:
            data["image"]["image"] = self.image
        if "log_directory" in data:
            data["log_directory"] = str(self.daemon.workdir / "logs" / data["metadata"]["name"])
        data.update(changes)
        path = self.tmp / name
        path.write_text(json.dumps(data))
        return str(path)

    def ocic(self, *args: str, check: bool = True):
        return self.daemon.ocic(*args, check=check)

    def out(self, *args: str) -> str:
        return self.ocic(*args).stdout

    def block(self, *args: str) -> dict[str, str]:
        """A `Key: value` block as a dict (the first occurrence of each key)."""
        fields: dict[str, str] = {}
        for line in self.out(*args).splitlines():
            key, sep, value = line.partition(":")
            if sep and not line.startswith(("\t", " ")):
                fields.setdefault(key.strip(), value.strip())
        return fields


def test_container_lifecycle_through_ocic(env):
    pod = env.out("pod", "create", "--config", env.file("sandbox_config.json")).strip()
    assert len(pod) == 64
    status = env.block("pod", "status", "--id", pod)
    assert status["ID"] == pod and status["Name"] == "podsandbox1"
    assert status["Namespace"] == "ocid.test" and status["Status"] == "SANDBOX_READY"

    ctr = env.out("ctr", "create", "--pod", pod[:12], "--config",
                  env.file("container_config.json")).strip()
    assert env.block("ctr", "status", "--id", ctr)["Status"] == "CONTAINER_CREATED"
    assert env.out("ctr", "list", "--quiet").split() == [ctr]
    env.ocic("ctr", "start", "--id", ctr)
    status = env.block("ctr", "status", "--id", ctr)
    assert status["Status"] == "CONTAINER_RUNNING" and status["Name"] == "container1"

    assert env.out("ctr", "execsync", "--id", ctr, "echo", "hello") == "hello\n"
    failed = env.ocic("ctr", "execsync", "--id", ctr, "sh", "-c", "exit 4", check=False)
    assert failed.returncode == 4
    logs = wait_for(lambda: env.ocic("ctr", "logs", "--id", ctr),
                    lambda r: "started" in r.stdout and "to-stderr" in r.stderr)
    assert logs.stdout == "started\n"
    assert env.out("ctr", "logs", "--id", ctr, "--timestamps").split(" ")[0].startswith("20")

    env.ocic("ctr", "stop", "--id", ctr, "--timeout", "1")
    assert env.block("ctr", "status", "--id", ctr)["Status"] == "CONTAINER_EXITED"
    env.ocic("ctr", "stop", "--id", ctr)
    env.ocic("ctr", "remove", "--id", ctr)
    env.ocic("ctr", "remove", "--id", ctr)
    assert env.out("ctr", "list", "--quiet") == ""
    env.ocic("pod", "stop", "--id", pod)
    assert env.block("pod", "status", "--id", pod)["Status"] == "SANDBOX_NOTREADY"
    env.ocic("pod", "stop", "--id", pod)
    env.ocic("pod", "remove", "--id", pod)
    env.ocic("pod", "remove", "--id", pod)
    assert env.out("pod", "list", "--quiet") == ""
    assert leftovers(env.daemon.workdir, env.daemon.proc.pid)["processes"] == []


def test_list_filters_through_ocic(env):
    pod1 = env.out("pod", "create", "--config", env.file("sandbox_config.json")).strip()
    pod2 = env.out("pod", "create", "--config", env.file("sandbox_config.json"), "--name",
                   "second", "--label", "extra=yes").strip()
    c1 = env.out("ctr", "create", "--pod", pod1, "--config",
                 env.file("container_config.json")).strip()
    c2 = env.out("ctr", "create", "--pod", pod2, "--config", env.file("container_config.json"),
                 "--label", "pick=me").strip()
    env.ocic("ctr", "start", "--id", c2)

    def ids(*args: str) -> set[str]:
        return set(env.out(*args, "--quiet").split())

    assert ids("pod", "list") == {pod1, pod2}
    assert ids("pod", "list", "--label", "extra=yes") == {pod2}
    assert ids("pod", "list", "--id", pod1[:8]) == {pod1}
    assert ids("ctr", "list", "--pod", pod1) == {c1}
    assert ids("ctr", "list", "--state", "running") == {c2}
    assert ids("ctr", "list", "--state", "created") == {c1}
    assert ids("ctr", "list", "--label", "pick=me") == {c2}
    assert ids("ctr", "list", "--id", c1[:10]) == {c1}
    env.ocic("pod", "stop", "--id", pod2)
    assert ids("pod", "list", "--state", "notready") == {pod2}
    table = env.out("ctr", "list", "--output", "table")
    assert "CONTAINER" in table and c1[:13] in table
    listed = json.loads(env.out("ctr", "list", "--output", "json"))
    assert {c["id"] for c in listed["containers"]} == {c1, c2}


def test_sysctls_and_exit_code_fixtures(env):
    pod = env.out("pod", "create", "--config", env.file("sandbox_config_sysctl.json")).strip()
    ctr = env.out("ctr", "create", "--pod", pod, "--config",
                  env.file("container_config.json")).strip()
    env.ocic("ctr", "start", "--id", ctr)
    assert env.out("ctr", "execsync", "--id", ctr, "sysctl", "kernel.shm_rmid_forced").strip() \
        == "kernel.shm_rmid_forced = 1"
    assert env.out("ctr", "execsync", "--id", ctr, "sysctl", "net.ipv4.ip_forward").strip() \
        == "net.ipv4.ip_forward = 1"

    exits = env.out("ctr", "create", "--pod", pod, "--config",
                    env.file("container_exit_test.json")).strip()
    env.ocic("ctr", "start", "--id", exits)
    status = wait_for(lambda: env.block("ctr", "status", "--id", exits),
                      lambda s: s["Status"] == "CONTAINER_EXITED")
    assert status["Exit Code"] == "3" and status["Reason"] == "Error"
    assert env.out("ctr", "logs", "--id", exits) == "bye\n"


@pytest.mark.parametrize("name", ["container_config_seccomp.json",
                                  "container_config_unconfined.json", "container_httpd.json"])
def test_other_container_fixtures_run(env, name):
    pod = env.out("pod", "create", "--config", env.file("sandbox_config_seccomp.json")).strip()
    ctr = env.out("ctr", "create", "--pod", pod, "--config", env.file(name)).strip()
    env.ocic("ctr", "start", "--id", ctr)
    assert env.block("ctr", "status", "--id", ctr)["Status"] == "CONTAINER_RUNNING"
    seccomp = env.out("ctr", "execsync", "--id", ctr, "cat", "/proc/self/status")
    mode = next(line.split()[1] for line in seccomp.splitlines() if line.startswith("Seccomp:"))
    assert mode == ("0" if "unconfined" in name else "2")


def test_hostnet_fixture_sees_the_host(env):
    pod = env.out("pod", "create", "--config", env.file("sandbox_config_hostnet.json")).strip()
    assert env.block("pod", "status", "--id", pod)["Status"] == "SANDBOX_READY"
    ctr = env.out("ctr", "create", "--pod", pod, "--config",
                  env.file("container_config.json")).strip()
    env.ocic("ctr", "start", "--id", ctr)
    links = env.out("ctr", "execsync", "--id", ctr, "ls", "/sys/class/net").split()
    assert sorted(links) == sorted(os.listdir("/sys/class/net"))


def _snapshot(env, pod: str, ctrs: list[str]) -> list[str]:
    outputs = [env.out("pod", "list"), env.out("pod", "status", "--id", pod),
               env.out("ctr", "list"), env.out("pod", "list", "--output", "json")]
    return outputs + [env.out("ctr", "status", "--id", c) for c in ctrs]


@pytest.mark.parametrize("how", ["restart", "kill-9"])
def test_identical_output_across_a_restart(env, start_ocid, how):
    pod = env.out("pod", "create", "--config", env.file("sandbox_config.json")).strip()
    running = env.out("ctr", "create", "--pod", pod, "--config",
                      env.file("container_config.json")).strip()
    env.ocic("ctr", "start", "--id", running)
    exited = env.out("ctr", "create", "--pod", pod, "--config",
                     env.file("container_exit_test.json")).strip()
    env.ocic("ctr", "start", "--id", exited)
    wait_for(lambda: env.block("ctr", "status", "--id", exited)["Status"],
             lambda s: s == "CONTAINER_EXITED")
    before = _snapshot(env, pod, [running, exited])
    if how == "restart":
        env.daemon.stop()
    else:
        env.daemon.proc.send_signal(signal.SIGKILL)
        env.daemon.proc.wait()
    env.daemon = start_ocid()
    assert _snapshot(env, pod, [running, exited]) == before
    assert env.out("ctr", "execsync", "--id", running, "echo", "alive") == "alive\n"


def test_completion_offers_live_ids_and_local_images(env):
    from tests.unit.test_docs import complete

    pod = env.out("pod", "create", "--config", env.file("sandbox_config.json")).strip()
    ctr = env.out("ctr", "create", "--pod", pod, "--config",
                  env.file("container_config.json")).strip()
    sock = env.daemon.socket
    assert complete("ocic", ["ocic", "--connect", sock, "pod", "status", "--id", ""]) == [pod]
    assert complete("ocic", ["ocic", "--connect", sock, "ctr", "stop", "--id", ctr[:3]]) == [ctr]
    assert complete("ocic", ["ocic", "--connect", sock, "ctr", "create", "--pod", ""]) == [pod]
    root = str(env.daemon.workdir / "root")
    names = complete("kpod", ["kpod", "--root", root, "rmi", ""])
    assert env.image in names
