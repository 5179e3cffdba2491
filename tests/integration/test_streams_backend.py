"""The runtime side of CRI streaming against real runc and conmon: exec, attach, port dialing."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ocid.errors import FailedPrecondition, NotFound, OcidError
from ocid.network import netns
from ocid.oci.runtime import OciRuntime
from ocid.oci.streams import StreamIO, attach, dial_in_netns, exec_interactive
from tests.support.bundle import Ctr, cgroup_dirs, exited, make_bundle, make_runtime, remove_cgroups

RUNC, CONMON = "/usr/sbin/runc", "/usr/bin/conmon"
NUL = b"\0"
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not (os.path.exists(RUNC) and os.path.exists(CONMON)),
    reason="needs root, runc and conmon",
)


@dataclass
class Env:
    """A runtime on a private short /tmp root, tracking what each test creates."""

    root: Path
    rt: OciRuntime
    ctrs: list[Ctr] = field(default_factory=list)

    def run(
        self,
        args: list[str],
        *,
        terminal: bool = False,
        stdin: bool = False,
        stdin_once: bool = False,
    ) -> Ctr:
        """Create a container through conmon and start it."""
        cid = "s" + uuid.uuid4().hex[:11]
        base = self.root / cid
        (base / "logs").mkdir(parents=True)
        bundle = make_bundle(base / "b", args, terminal=terminal)
        ctr = Ctr(cid, bundle, str(base / "p"), str(base / "logs" / "c.log"))
        self.ctrs.append(ctr)
        _, ctr.conmon_pid = self.rt.create(
            cid, bundle, log_path=ctr.log, persist_dir=ctr.persist, terminal=terminal,
            stdin=stdin, stdin_once=stdin_once,
        )  # fmt: skip
        self.rt.start(cid)
        return ctr

    def status(self, ctr: Ctr) -> str:
        return self.rt.state(ctr.id, ctr.persist).status

    def attach(self, ctr: Ctr, io: StreamIO, **kw) -> None:
        attach(self.rt.paths.attach_dir, ctr.id, ctr.bundle, io, **kw)


@pytest.fixture
def env() -> Iterator[Env]:
    root = Path(tempfile.mkdtemp(prefix="str-", dir="/tmp"))
    e = Env(root, make_runtime(root))
    threads_before = set(threading.enumerate())
    problems: list[str] = []
    try:
        yield e
    finally:
        for ctr in e.ctrs:
            try:
                e.rt.delete(ctr.id)
            except OcidError as exc:
                problems.append(f"delete {ctr.id}: {exc}")
            if ctr.conmon_pid and not exited(ctr.conmon_pid, 5):
                problems.append(f"conmon {ctr.conmon_pid} of {ctr.id} still alive")
                os.kill(ctr.conmon_pid, signal.SIGKILL)
                exited(ctr.conmon_pid, 5)
            if left := cgroup_dirs(ctr.bundle):
                problems.append(f"cgroups left: {left}")
            remove_cgroups(ctr.bundle)
        if left := _processes_naming(root):
            problems.append(f"processes left: {left}")
        # The sessions' stdin and resize threads must all have finished (every test's stdin
        # source reaches EOF); give the resize threads their polling interval to notice.
        deadline = time.monotonic() + 2
        while (extra := _session_threads(threads_before)) and time.monotonic() < deadline:
            time.sleep(0.05)
        if extra:
            problems.append(f"threads left: {extra}")
        shutil.rmtree(root, ignore_errors=True)
    assert not problems, problems


def _processes_naming(root: Path) -> list[str]:
    """Live processes whose command line mentions ``root`` (runc, conmon)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(root).encode() in cmdline and state != "Z":
            found.append(f"{entry}: {cmdline.replace(NUL, b' ').decode()}")
    return found


def _session_threads(before: set[threading.Thread]) -> list[str]:
    return [
        t.name
        for t in threading.enumerate()
        if t not in before and t.name.startswith(("exec-", "attach-", "ocid-netns"))
    ]


class Collector:
    """An output sink remembering everything written, with a wait for some text."""

    def __init__(self) -> None:
        self.data = b""
        self._cond = threading.Condition()

    def __call__(self, data: bytes) -> None:
        with self._cond:
            self.data += data
            self._cond.notify_all()

    def wait_for(self, needle: bytes, timeout: float = 10) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: needle in self.data, timeout)


class Feed:
    """A stdin source fed from the test: ``send(b"...")``, ``close()`` for EOF."""

    def __init__(self, *chunks: bytes) -> None:
        self._q: queue.Queue[bytes] = queue.Queue()
        for c in chunks:
            self._q.put(c)

    def send(self, data: bytes) -> None:
        self._q.put(data)

    def close(self) -> None:
        self._q.put(b"")

    def __call__(self) -> bytes:
        return self._q.get()


def run_in_thread(fn, *args, **kw) -> tuple[threading.Thread, list]:
    """Run ``fn`` in a thread; the list gets its result or exception."""
    box: list = []

    def body() -> None:
        try:
            box.append(fn(*args, **kw))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box.append(exc)

    thread = threading.Thread(target=body)
    thread.start()
    return thread, box


# -- exec -----------------------------------------------------------------------------------


def test_exec_pipes_stdout_stderr_and_exit_code(env: Env) -> None:
    ctr = env.run(["sleep", "1000"])
    out, err = Collector(), Collector()
    code = exec_interactive(
        env.rt,
        ctr.id,
        ctr.bundle,
        ["sh", "-c", "echo out; echo err >&2; exit 3"],
        StreamIO(stdout=out, stderr=err),
        tty=False,
    )
    assert (code, out.data, err.data) == (3, b"out\n", b"err\n")


def test_exec_stdin_round_trip(env: Env) -> None:
    ctr = env.run(["sleep", "1000"])
    out = Collector()
    feed = Feed(b"hello ", b"world\n", b"x" * 200_000)
    feed.close()
    code = exec_interactive(
        env.rt, ctr.id, ctr.bundle, ["cat"], StreamIO(stdin=feed, stdout=out), tty=False
    )
    assert code == 0  # cat saw EOF: the pipe was closed
    assert out.data == b"hello world\n" + b"x" * 200_000


def test_exec_missing_executable(env: Env) -> None:
    ctr = env.run(["sleep", "1000"])
    out, err = Collector(), Collector()
    code = exec_interactive(
        env.rt, ctr.id, ctr.bundle, ["/nonexistent"], StreamIO(stdout=out, stderr=err), tty=False
    )
    assert code == 255
    assert b"level=error" in err.data and b"no such file" in err.data.lower(), err.data
    # The same through a tty: runc's message comes out of the pty.
    code = exec_interactive(
        env.rt, ctr.id, ctr.bundle, ["/nonexistent"], StreamIO(stdout=out), tty=True
    )
    assert code == 255
    assert out.data.lower().count(b"no such file") == 1, out.data


def test_exec_unknown_container_or_bundle(env: Env) -> None:
    ctr = env.run(["sleep", "1000"])
    err = Collector()
    code = exec_interactive(
        env.rt, "no-such-ctr", ctr.bundle, ["true"], StreamIO(stderr=err), tty=False
    )
    assert code != 0 and b"does not exist" in err.data
    with pytest.raises(NotFound):
        exec_interactive(env.rt, ctr.id, str(env.root / "nowhere"), ["true"], StreamIO(), tty=False)


def test_exec_tty(env: Env) -> None:
    ctr = env.run(["sleep", "1000"])
    out = Collector()
    sizes: queue.Queue = queue.Queue()
    sizes.put((100, 40))  # sent before the command reads it: (width, height)
    code = exec_interactive(
        env.rt, ctr.id, ctr.bundle,
        ["sh", "-c", "[ -t 0 ] && [ -t 1 ] && echo is-a-tty; sleep 0.2; stty size; exit 4"],
        StreamIO(stdout=out, stderr=Collector(), resizes=sizes), tty=True,
    )  # fmt: skip
    assert code == 4
    assert out.data == b"is-a-tty\r\n40 100\r\n"


def test_exec_tty_resize_and_input_while_running(env: Env) -> None:
    ctr = env.run(["sleep", "1000"])
    out, feed = Collector(), Feed()
    sizes: queue.Queue = queue.Queue()
    sizes.put((80, 24))
    # runc copies the first size right after the process starts: give it that moment.
    script = "sleep 0.2; stty size; read line; echo got:$line; stty size; read line; stty size"
    thread, box = run_in_thread(
        exec_interactive,
        env.rt,
        ctr.id,
        ctr.bundle,
        ["sh", "-c", script],
        StreamIO(stdin=feed, stdout=out, resizes=sizes),
        tty=True,
    )
    try:
        assert out.wait_for(b"24 80\r\n"), out.data
        sizes.put((132, 50))
        time.sleep(0.3)  # the resize is applied by its own thread
        feed.send(b"abc\r")  # a terminal's Enter; the pty echoes the input
        assert out.wait_for(b"got:abc\r\n50 132\r\n"), out.data
        sizes.put((90, 30))
        sizes.put((91, 31))  # the queued sizes coalesce: the latest wins
        time.sleep(0.3)
        feed.send(b"\r")
        thread.join(10)
        assert box == [0]
        assert out.data.endswith(b"31 91\r\n"), out.data
    finally:
        feed.close()
        sizes.put(None)
        thread.join(10)


def test_exec_tty_stdin_eof_leaves_the_process_running(env: Env) -> None:
    ctr = env.run(["sleep", "1000"])
    out, feed = Collector(), Feed(b"one\r")
    cancel = threading.Event()
    feed.close()  # EOF right after the first line: with a tty nothing is sent for it (cri-o)
    thread, box = run_in_thread(
        exec_interactive,
        env.rt,
        ctr.id,
        ctr.bundle,
        ["sh", "-c", "while read l; do echo got-$l; done; echo eof"],
        StreamIO(stdin=feed, stdout=out),
        tty=True,
        cancel=cancel,
    )
    assert out.wait_for(b"got-one")
    time.sleep(0.5)
    assert thread.is_alive() and b"eof" not in out.data
    cancel.set()  # the client went away: kill it
    thread.join(10)
    assert box == [137]


def test_exec_cancel_kills_the_process(env: Env) -> None:
    ctr = env.run(["sleep", "1000"])
    init_pid = env.rt.state(ctr.id, ctr.persist).pid
    cancel = threading.Event()
    out = Collector()
    thread, box = run_in_thread(
        exec_interactive,
        env.rt,
        ctr.id,
        ctr.bundle,
        ["sh", "-c", "echo started; exec sleep 1000"],
        StreamIO(stdout=out),
        tty=False,
        cancel=cancel,
    )
    assert out.wait_for(b"started")
    started = time.monotonic()
    cancel.set()
    thread.join(5)
    assert box == [137] and time.monotonic() - started < 2
    pids = next(d for d in cgroup_dirs(ctr.bundle) if "pids" in str(d))
    assert Path(pids, "cgroup.procs").read_text().split() == [str(init_pid)]


def test_exec_client_output_failure_does_not_stop_the_process(env: Env) -> None:
    ctr = env.run(["sleep", "1000"])

    def broken(data: bytes) -> None:
        raise BrokenPipeError("client gone")

    code = exec_interactive(
        env.rt,
        ctr.id,
        ctr.bundle,
        ["sh", "-c", "for i in 1 2 3; do echo $i; sleep 0.05; done; exit 6"],
        StreamIO(stdout=broken),
        tty=False,
    )
    assert code == 6


def test_parallel_execs(env: Env) -> None:
    ctr = env.run(["sleep", "1000"])
    results: dict[int, tuple[int, bytes, bytes]] = {}

    def one(i: int) -> None:
        out, err = Collector(), Collector()
        tty = i % 2 == 1
        script = f"for n in 1 2 3; do echo exec{i}-$n; sleep 0.05; done; echo e{i} >&2; exit {i}"
        code = exec_interactive(
            env.rt,
            ctr.id,
            ctr.bundle,
            ["sh", "-c", script],
            StreamIO(stdout=out, stderr=err),
            tty=tty,
        )
        results[i] = (code, out.data, err.data)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == list(range(10))
    for i, (code, out, err) in results.items():
        assert code == i
        if i % 2:  # tty: one stream, \r\n line ends
            assert out == f"exec{i}-1\r\nexec{i}-2\r\nexec{i}-3\r\ne{i}\r\n".encode(), out
        else:
            assert (out, err) == (f"exec{i}-1\nexec{i}-2\nexec{i}-3\n".encode(), f"e{i}\n".encode())


# -- attach ---------------------------------------------------------------------------------


def test_attach_sees_output_and_detach_leaves_it_running(env: Env) -> None:
    ctr = env.run(["sh", "-c", "i=0; while true; do i=$((i+1)); echo tick$i; sleep 0.1; done"])
    out = Collector()
    cancel = threading.Event()
    thread, box = run_in_thread(
        env.attach, ctr, StreamIO(stdout=out), tty=False, stdin_once=False, cancel=cancel
    )
    assert out.wait_for(b"tick", 5)
    time.sleep(0.35)
    cancel.set()
    thread.join(5)
    assert box == [None] and len(re.findall(rb"tick\d+\n", out.data)) >= 2, out.data
    assert env.status(ctr) == "running"

    # A client whose output fails is detached too.
    def broken(data: bytes) -> None:
        raise ConnectionResetError("client gone")

    env.attach(ctr, StreamIO(stdout=broken), tty=False, stdin_once=False)
    assert env.status(ctr) == "running"


def test_attach_stdin_round_trip_and_detach(env: Env) -> None:
    ctr = env.run(["cat"], stdin=True)  # --leave-stdin-open: detaching keeps cat's stdin
    for round_ in range(2):
        out, feed = Collector(), Feed()
        thread, box = run_in_thread(
            env.attach, ctr, StreamIO(stdin=feed, stdout=out), tty=False, stdin_once=False
        )
        feed.send(f"hello {round_}\n".encode())
        assert out.wait_for(f"hello {round_}\n".encode()), out.data
        feed.close()  # stdin && !stdin_once && !tty: the attach returns at stdin EOF
        thread.join(5)
        assert box == [None]
        time.sleep(0.2)
        assert env.status(ctr) == "running"


def test_attach_stdin_once_eof_closes_the_containers_stdin(env: Env) -> None:
    ctr = env.run(["sh", "-c", "cat; echo cat-done; exit 5"], stdin=True, stdin_once=True)
    out, feed = Collector(), Feed(b"data\n")
    thread, box = run_in_thread(
        env.attach, ctr, StreamIO(stdin=feed, stdout=out), tty=False, stdin_once=True
    )
    assert out.wait_for(b"data\n")
    feed.close()  # SHUT_WR: conmon closes cat's stdin, cat exits, and so does the container
    thread.join(10)
    assert box == [None] and out.data == b"data\ncat-done\n"
    assert ctr.conmon_pid and exited(ctr.conmon_pid, 10)
    st = env.rt.state(ctr.id, ctr.persist)
    assert (st.status, st.exit_code) == ("stopped", 5)


def test_attach_large_stdin_is_split_in_packets(env: Env) -> None:
    ctr = env.run(["busybox", "wc", "-c"], stdin=True, stdin_once=True)
    out, feed = Collector(), Feed(b"y" * 100_000)
    feed.close()
    env.attach(ctr, StreamIO(stdin=feed, stdout=out), tty=False, stdin_once=True)
    assert out.data.strip() == b"100000"


def test_attach_tty_resize_through_ctl(env: Env) -> None:
    ctr = env.run(["sh", "-c", "while true; do stty size 2>&1; sleep 0.1; done"], terminal=True)
    out = Collector()
    sizes: queue.Queue = queue.Queue()
    cancel = threading.Event()
    thread, box = run_in_thread(
        env.attach,
        ctr,
        StreamIO(stdout=out, resizes=sizes),
        tty=True,
        stdin_once=False,
        cancel=cancel,
    )
    try:
        sizes.put((100, 40))
        assert out.wait_for(b"40 100\r\n"), out.data[-200:]
        sizes.put((70, 20))  # a second command, spaced from the first
        assert out.wait_for(b"20 70\r\n"), out.data[-200:]
    finally:
        cancel.set()
        sizes.put(None)
        thread.join(5)
    assert box == [None]
    assert env.status(ctr) == "running"


def test_attach_tty_stdin(env: Env) -> None:
    ctr = env.run(["sh", "-c", "read line; echo got-$line"], terminal=True)
    out, feed = Collector(), Feed(b"hi\r")
    thread, box = run_in_thread(
        env.attach, ctr, StreamIO(stdin=feed, stdout=out), tty=True, stdin_once=False
    )
    assert out.wait_for(b"got-hi\r\n"), out.data
    thread.join(10)  # with a tty the attach ends with the output: the container exited
    assert box == [None]
    feed.close()


def test_attach_to_a_stopped_container(env: Env) -> None:
    ctr = env.run(["true"])
    assert ctr.conmon_pid and exited(ctr.conmon_pid, 10)
    with pytest.raises(FailedPrecondition, match="not running"):
        env.attach(ctr, StreamIO(stdout=Collector()), tty=False, stdin_once=False)
    with pytest.raises(FailedPrecondition):
        attach(
            env.rt.paths.attach_dir,
            "no-such-ctr",
            ctr.bundle,
            StreamIO(),
            tty=False,
            stdin_once=False,
        )


# -- port forward ---------------------------------------------------------------------------

LISTENER = """
import socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1])))
srv.listen()
print("ready", flush=True)
conn, _ = srv.accept()
conn.sendall(b"hi from the pod\\n")
print(conn.recv(100).decode(), flush=True)
"""


@pytest.fixture
def pod_netns() -> Iterator[str]:
    tmp = tempfile.mkdtemp(prefix="str-ns-", dir="/tmp")
    path = netns.create("pod", tmp)
    try:
        yield path
    finally:
        netns.remove(path)
        # create() made the dir a shared bind mount of itself, as iproute2 does with its own.
        subprocess.run(["umount", "-l", tmp], capture_output=True, check=False)
        shutil.rmtree(tmp, ignore_errors=True)
        assert f" {tmp}" not in Path("/proc/self/mountinfo").read_text()


def _ns(path: str) -> str:
    return os.readlink(path)


def test_dial_in_netns(pod_netns: str) -> None:
    own_ns = _ns("/proc/thread-self/ns/net")
    listener = subprocess.Popen(
        ["nsenter", f"--net={pod_netns}", sys.executable, "-c", LISTENER, "8099"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert listener.stdout and listener.stdout.readline() == "ready\n"
        # Nothing listens on 8099 in the host namespace: only the pod's has it.
        with pytest.raises(ConnectionRefusedError):
            dial_in_netns("", 8099).close()
        with dial_in_netns(pod_netns, 8099, timeout=5) as conn:
            assert conn.gettimeout() is None
            assert conn.recv(100) == b"hi from the pod\n"
            conn.sendall(b"hello back")
        assert listener.stdout.readline() == "hello back\n"
        assert listener.wait(5) == 0
    finally:
        if listener.poll() is None:
            listener.kill()
        listener.wait()
    # No thread of ours stayed in the pod's namespace.
    assert _ns("/proc/thread-self/ns/net") == own_ns
    for task in os.listdir("/proc/self/task"):
        assert _ns(f"/proc/self/task/{task}/ns/net") == own_ns


def test_dial_in_netns_refused_and_errors(pod_netns: str) -> None:
    with pytest.raises(ConnectionRefusedError, match="nothing listens on localhost:8099"):
        dial_in_netns(pod_netns, 8099)
    with pytest.raises(NotFound):
        dial_in_netns(pod_netns + "-gone", 8099)
    with pytest.raises(OcidError):
        dial_in_netns(pod_netns, 0)


def test_dial_host_namespace() -> None:
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]
        with dial_in_netns("", port) as conn:
            peer, _ = srv.accept()
            with peer:
                peer.sendall(b"x")
                assert conn.recv(1) == b"x"
