"""OciRuntime against real conmon 2.1.6 and runc: lifecycle, exit codes, stop, exec, OOM, logs."""

from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ocid.errors import FailedPrecondition, InternalError, NotFound, OcidError
from ocid.oci.runtime import OciRuntime
from tests.support.bundle import Ctr, cgroup_dirs, exited, make_bundle, make_runtime, remove_cgroups

RUNC, CONMON = "/usr/sbin/runc", "/usr/bin/conmon"
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not (os.path.exists(RUNC) and os.path.exists(CONMON)),
    reason="needs root, runc and conmon",
)
LOG_LINE = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}(Z|[+-]\d\d:\d\d) stdout F hello$")


@dataclass
class Env:
    """A runtime on a private short /tmp root, tracking what each test creates."""

    root: Path
    rt: OciRuntime
    ctrs: list[Ctr] = field(default_factory=list)

    def container(self, args: list[str], **bundle_kw) -> Ctr:
        """A bundle, persist dir and log path for a new container (not yet created)."""
        cid = "t" + uuid.uuid4().hex[:11]
        base = self.root / cid
        (base / "logs").mkdir(parents=True)
        bundle = make_bundle(base / "b", args, **bundle_kw)
        ctr = Ctr(cid, bundle, str(base / "p"), str(base / "logs" / "c.log"))
        self.ctrs.append(ctr)
        return ctr

    def create(self, ctr: Ctr) -> int:
        """Create ``ctr`` through conmon; return the init pid."""
        pid, conmon = self.rt.create(ctr.id, ctr.bundle, log_path=ctr.log, persist_dir=ctr.persist)
        ctr.conmon_pid = conmon
        return pid

    def run(self, args: list[str], **bundle_kw) -> Ctr:
        """Create and start a container."""
        ctr = self.container(args, **bundle_kw)
        self.create(ctr)
        self.rt.start(ctr.id)
        return ctr

    def wait_exit(self, ctr: Ctr, timeout: float = 10) -> None:
        """Wait until the container's conmon has written the exit files and exited."""
        assert ctr.conmon_pid and exited(ctr.conmon_pid, timeout), "conmon did not exit"


@pytest.fixture
def env() -> Iterator[Env]:
    root = Path(tempfile.mkdtemp(prefix="oci-", dir="/tmp"))
    e = Env(root, make_runtime(root))
    problems: list[str] = []
    try:
        yield e
    finally:
        for ctr in e.ctrs:
            try:
                e.rt.delete(ctr.id)
            except OcidError as exc:
                problems.append(f"delete {ctr.id}: {exc}")
            pid = ctr.conmon_pid or _pidfile(Path(ctr.bundle, "conmon-pidfile"))
            if pid and not exited(pid, 5):
                problems.append(f"conmon {pid} of {ctr.id} still alive")
                os.kill(pid, signal.SIGKILL)
                exited(pid, 5)
            if Path(ctr.bundle, "config.json").exists():
                if left := cgroup_dirs(ctr.bundle):
                    problems.append(f"cgroups left: {left}")
                remove_cgroups(ctr.bundle)
        shutil.rmtree(root, ignore_errors=True)
    assert not problems, problems


def _pidfile(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


def test_lifecycle_logs_and_exit_file(env: Env) -> None:
    ctr = env.container(["sh", "-c", "sleep 0.5; echo hello"])
    pid = env.create(ctr)
    st = env.rt.state(ctr.id, ctr.persist)
    assert (st.status, st.pid, st.exit_code) == ("created", pid, None)
    assert ctr.conmon_pid and not exited(ctr.conmon_pid)

    env.rt.start(ctr.id)
    assert env.rt.state(ctr.id, ctr.persist).status == "running"
    env.wait_exit(ctr)

    lines = Path(ctr.log).read_bytes().splitlines()
    assert lines and all(LOG_LINE.match(line) for line in lines), lines
    assert Path(ctr.persist, "exit").read_text() == "0"
    assert Path(env.rt.paths.exits_dir, ctr.id).exists()
    st = env.rt.state(ctr.id, ctr.persist)
    assert (st.status, st.exit_code, st.oom_killed) == ("stopped", 0, False)
    assert st.finished_at and abs(st.finished_at - time.time()) < 30


def test_exit_code(env: Env) -> None:
    ctr = env.run(["sh", "-c", "exit 3"])
    env.wait_exit(ctr)
    assert env.rt.state(ctr.id, ctr.persist).exit_code == 3


def test_stop_escalates_to_sigkill_within_timeout(env: Env) -> None:
    ctr = env.run(["sh", "-c", "trap '' TERM; sleep 1000"])
    started = time.monotonic()
    env.rt.stop(ctr.id, timeout=2)
    elapsed = time.monotonic() - started
    assert 2 <= elapsed < 3, elapsed
    st = env.rt.state(ctr.id, ctr.persist)
    assert (st.status, st.exit_code) == ("stopped", 137)
    env.rt.stop(ctr.id, timeout=2)  # stopping a stopped container succeeds
    with pytest.raises(FailedPrecondition, match="not running"):
        env.rt.kill(ctr.id, signal.SIGTERM)


def test_stop_honours_sigterm(env: Env) -> None:
    ctr = env.run(["sh", "-c", "trap 'exit 7' TERM; while true; do sleep 0.1; done"])
    started = time.monotonic()
    env.rt.stop(ctr.id, timeout=10)
    assert time.monotonic() - started < 2
    assert env.rt.state(ctr.id, ctr.persist).exit_code == 7


def test_exec_sync(env: Env) -> None:
    ctr = env.run(["sleep", "1000"])
    res = env.rt.exec_sync(ctr.id, ctr.bundle, ["sh", "-c", "echo out; echo err >&2; exit 5"], 10)
    assert (res.stdout, res.stderr, res.exit_code, res.timed_out) == (b"out\n", b"err\n", 5, False)
    with pytest.raises(InternalError, match="no such file"):
        env.rt.exec_sync(ctr.id, ctr.bundle, ["/nonexistent"], 10)


def test_exec_sync_timeout_kills_the_process(env: Env) -> None:
    ctr = env.run(["sleep", "1000"])
    init_pid = env.rt.state(ctr.id, ctr.persist).pid
    started = time.monotonic()
    res = env.rt.exec_sync(ctr.id, ctr.bundle, ["sleep", "10"], 1)
    assert time.monotonic() - started < 1.6
    assert (res.exit_code, res.timed_out) == (-1, True)
    pids_cgroup = next(d for d in cgroup_dirs(ctr.bundle) if "pids" in str(d))
    assert Path(pids_cgroup, "cgroup.procs").read_text().split() == [str(init_pid)]


def test_create_failure_leaves_nothing(env: Env) -> None:
    ctr = env.container(["/nonexistent"])
    with pytest.raises(OcidError, match="/nonexistent"):
        env.create(ctr)
    with pytest.raises(NotFound):
        env.rt.state(ctr.id, ctr.persist)
    conmon = _pidfile(Path(ctr.bundle, "conmon-pidfile"))
    assert conmon is None or exited(conmon)
    assert cgroup_dirs(ctr.bundle) == []


def test_oom_killed(env: Env) -> None:
    ctr = env.run(
        ["sh", "-c", "exec dd if=/dev/zero of=/dev/null bs=64M count=1"], memory_limit=16 << 20
    )
    env.wait_exit(ctr)
    st = env.rt.state(ctr.id, ctr.persist)
    if not st.oom_killed and st.exit_code != 137:
        pytest.skip(f"the kernel reported no OOM kill (exit code {st.exit_code})")
    assert (st.oom_killed, st.exit_code) == (True, 137)
    # conmon writes its marker in its cwd, which must be the bundle, never the daemon's cwd
    assert os.path.exists(os.path.join(ctr.bundle, "oom"))
    assert not os.path.exists("oom")


def test_reopen_log(env: Env) -> None:
    ctr = env.run(["sh", "-c", "while true; do echo hello; sleep 0.1; done"])
    os.rename(ctr.log, ctr.log + ".1")  # what the kubelet does before asking for a reopen
    env.rt.reopen_log(ctr.bundle)
    deadline = time.monotonic() + 5
    while not Path(ctr.log).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert Path(ctr.log).exists()
    env.rt.stop(ctr.id, timeout=5)
    env.wait_exit(ctr)
    with pytest.raises(FailedPrecondition):
        env.rt.reopen_log(ctr.bundle)


def test_unknown_container(env: Env) -> None:
    env.rt.delete("no-such-container")
    with pytest.raises(NotFound):
        env.rt.state("no-such-container", str(env.root / "none"))
    with pytest.raises(NotFound):
        env.rt.start("no-such-container")


def test_conmon_failure_reports_its_stderr(env: Env) -> None:
    ctr = env.container(["true"])
    ctr.log = str(Path(ctr.log).parent / "missing" / "c.log")  # conmon exits 1 on a missing dir
    with pytest.raises(InternalError, match="conmon exited"):
        env.create(ctr)
    with pytest.raises(NotFound):
        env.rt.state(ctr.id, ctr.persist)
