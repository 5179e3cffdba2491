"""Pods and containers through the CRI RuntimeService, on real conmon, runc and catatonit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2

from tests.integration.test_images import insecure, write_registries
from tests.support.cleanup import leftovers
from tests.support.cri import Cri, container_config, pod_config, wait_for, write_loopback_network

SLEEP = ["sleep", "3600"]


def _log_dir(cri: Cri) -> str:
    return str(cri.daemon.workdir / "logs")


def _pod(cri: Cri, **kwargs) -> tuple[str, api_pb2.PodSandboxConfig]:
    config = pod_config(log_dir=_log_dir(cri), **kwargs)
    return cri.run_pod(config), config


def _code(exc: pytest.ExceptionInfo) -> grpc.StatusCode:
    return exc.value.code()


def _ocid_children_states(daemon) -> list[str]:
    states = []
    for task in Path(f"/proc/{daemon.proc.pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                states.append(Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0])
            except OSError:
                pass
    return states


def test_container_lifecycle_with_status_at_each_step(cri):
    pod_id, pod = _pod(cri, labels={"app": "demo"})
    status = cri.pod_status(pod_id)
    assert status.state == api_pb2.SANDBOX_READY
    assert status.metadata.name == pod.metadata.name and status.labels == {"app": "demo"}
    assert status.linux.namespaces.options.pid == api_pb2.CONTAINER

    cid = cri.create(pod_id, container_config(cri.image, SLEEP, labels={"tier": "x"}))
    s = cri.status(cid)
    assert s.state == api_pb2.CONTAINER_CREATED and s.created_at > 0 and s.started_at == 0
    assert s.image_id == cri.image_id == s.image_ref and s.image.image == cri.image
    assert [c.id for c in cri.containers(state=api_pb2.CONTAINER_CREATED)] == [cid]

    cri.start(cid)
    s = cri.status(cid)
    assert s.state == api_pb2.CONTAINER_RUNNING and s.started_at >= s.created_at
    assert s.log_path == os.path.join(_log_dir(cri), f"{s.metadata.name}.log")
    assert s.user.linux.uid == 0 and s.labels == {"tier": "x"}
    assert cri.exec(cid, "echo", "hi").stdout == b"hi\n"

    started = time.monotonic()
    cri.stop(cid, timeout=1)  # sleep as PID 1 ignores SIGTERM: SIGKILL after 1 s
    assert time.monotonic() - started < 5
    s = cri.status(cid)
    assert s.state == api_pb2.CONTAINER_EXITED and s.exit_code == 137 and s.reason == "Error"
    assert s.finished_at >= s.started_at
    cri.stop(cid)  # stopping a stopped container succeeds

    cri.remove(cid)
    assert cri.containers() == []
    cri.remove(cid)  # an absent container: success
    with pytest.raises(grpc.RpcError) as err:
        cri.status(cid)
    assert _code(err) == grpc.StatusCode.NOT_FOUND

    cri.stop_pod(pod_id)
    assert cri.pod_status(pod_id).state == api_pb2.SANDBOX_NOTREADY
    cri.stop_pod(pod_id)
    cri.remove_pod(pod_id)
    cri.remove_pod(pod_id)
    assert cri.pods() == []
    assert leftovers(cri.daemon.workdir, cri.daemon.proc.pid) == {"processes": [], "mounts": [], "runtime": [],
                                             "cgroups": []}
    assert "Z" not in _ocid_children_states(cri.daemon)


def test_pod_name_is_reserved_until_removed(cri):
    pod_id, config = _pod(cri)
    with pytest.raises(grpc.RpcError) as err:
        cri.run_pod(config)
    assert _code(err) == grpc.StatusCode.ALREADY_EXISTS and pod_id in err.value.details()
    cri.remove_pod(pod_id)
    again = cri.run_pod(config)
    assert again != pod_id


def test_remove_pod_with_running_containers_leaves_nothing(cri):
    pod_id, _ = _pod(cri)
    cids = [cri.run(pod_id, container_config(cri.image, SLEEP)) for _ in range(2)]
    cri.remove_pod(pod_id)
    assert cri.pods() == [] and cri.containers() == []
    for cid in cids:
        assert not (cri.daemon.workdir / "root" / "containers" / cid).exists()
    assert leftovers(cri.daemon.workdir, cri.daemon.proc.pid) == {"processes": [], "mounts": [], "runtime": [],
                                             "cgroups": []}


def test_exit_code_reason_and_cri_log(cri):
    pod_id, _ = _pod(cri)
    cid = cri.run(pod_id, container_config(
        cri.image, ["sh", "-c", "echo out; echo err >&2; echo -n part; exit 3"]))
    s = cri.wait_exited(cid)
    assert (s.exit_code, s.reason) == (3, "Error")
    lines = Path(s.log_path).read_text().splitlines()
    streams = sorted((line.split(" ", 3)[1], line.split(" ", 3)[2], line.split(" ", 3)[3])
                     for line in lines)
    assert ("stdout", "F", "out") in streams and ("stderr", "F", "err") in streams
    assert ("stdout", "P", "part") in streams
    # RFC 3339 with nanoseconds and a numeric offset, as conmon writes it.
    assert len(lines[0].split(" ")[0]) == len("2026-11-29T04:55:11.615741483+00:00")

    ok = cri.run(pod_id, container_config(cri.image, ["true"]))
    assert cri.wait_exited(ok).reason == "Completed"


def test_oom_kill_is_reported(cri):
    pod_id, _ = _pod(cri)
    config = container_config(cri.image, ["sh", "-c", "a=aaaaaaaa; while true; do a=$a$a; done"])
    config.linux.resources.memory_limit_in_bytes = 16 * 1024 * 1024
    cid = cri.run(pod_id, config)
    s = cri.wait_exited(cid, within=60)
    assert s.reason == "OOMKilled" and s.exit_code == 137


def test_exec_sync_output_exit_code_and_timeout(cri):
    pod_id, _ = _pod(cri)
    cid = cri.run(pod_id, container_config(cri.image, SLEEP))
    r = cri.exec(cid, "sh", "-c", "echo out; echo err >&2; exit 5")
    assert (r.stdout, r.stderr, r.exit_code) == (b"out\n", b"err\n", 5)
    started = time.monotonic()
    r = cri.exec(cid, "sh", "-c", "trap '' TERM; sleep 31", timeout=1)
    assert time.monotonic() - started < 3
    assert r.exit_code == -1 and b"timed out" in r.stderr
    # The timed-out command is gone from the container, its child included.
    procs = cri.exec(cid, "sh", "-c", "cat /proc/[0-9]*/cmdline").stdout
    assert b"sleep\x003600" in procs and b"sleep\x0031" not in procs
    with pytest.raises(grpc.RpcError) as err:
        cri.exec(cid)
    assert _code(err) == grpc.StatusCode.INVALID_ARGUMENT


def test_list_filters(cri):
    pod_a, _ = _pod(cri, labels={"team": "a"})
    pod_b, _ = _pod(cri, labels={"team": "b"})
    a1 = cri.run(pod_a, container_config(cri.image, SLEEP, labels={"role": "web"}))
    a2 = cri.create(pod_a, container_config(cri.image, SLEEP, labels={"role": "db"}))
    b1 = cri.run(pod_b, container_config(cri.image, SLEEP, labels={"role": "web"}))

    assert {c.id for c in cri.containers()} == {a1, a2, b1}
    assert {c.id for c in cri.containers(pod_sandbox_id=pod_a)} == {a1, a2}
    assert [c.id for c in cri.containers(id=a2[:12])] == [a2]
    assert {c.id for c in cri.containers(state=api_pb2.CONTAINER_RUNNING)} == {a1, b1}
    assert {c.id for c in cri.containers(label_selector={"role": "web"})} == {a1, b1}
    assert [c.id for c in cri.containers(label_selector={"role": "web"},
                                         pod_sandbox_id=pod_b)] == [b1]
    assert [p.id for p in cri.pods(label_selector={"team": "b"})] == [pod_b]
    assert [p.id for p in cri.pods(id=pod_a[:10])] == [pod_a]
    cri.stop_pod(pod_b)
    assert [p.id for p in cri.pods(state=api_pb2.SANDBOX_READY)] == [pod_a]
    assert [p.id for p in cri.pods(state=api_pb2.SANDBOX_NOTREADY)] == [pod_b]
    assert cri.status(b1).state == api_pb2.CONTAINER_EXITED


def test_user_and_group_resolution(cri):
    pod_id, _ = _pod(cri)
    config = container_config(cri.image, SLEEP)
    config.linux.security_context.run_as_username = "tester"
    config.linux.security_context.supplemental_groups.append(3000)
    cid = cri.run(pod_id, config)
    user = cri.status(cid).user.linux
    assert (user.uid, user.gid) == (1000, 1000)
    assert set(user.supplemental_groups) == {2000, 3000}
    out = cri.exec(cid, "id").stdout.decode()
    assert "uid=1000(tester) gid=1000(testers)" in out and "2000(extra)" in out and "3000" in out

    strict = container_config(cri.image, SLEEP)
    strict.linux.security_context.run_as_user.value = 1000
    strict.linux.security_context.run_as_group.value = 4000
    strict.linux.security_context.supplemental_groups_policy = api_pb2.Strict
    out = cri.exec(cri.run(pod_id, strict), "id").stdout.decode()
    assert "uid=1000(tester) gid=4000" in out and "2000" not in out

    missing = container_config(cri.image, SLEEP)
    missing.linux.security_context.run_as_username = "nobody-here"
    with pytest.raises(grpc.RpcError) as err:
        cri.create(pod_id, missing)
    assert _code(err) == grpc.StatusCode.INVALID_ARGUMENT and "nobody-here" in err.value.details()


def test_readonly_rootfs_and_resources_in_cgroup(cri):
    pod_id, _ = _pod(cri)
    config = container_config(cri.image, SLEEP)
    config.linux.security_context.readonly_rootfs = True
    config.linux.resources.memory_limit_in_bytes = 64 * 1024 * 1024
    config.linux.resources.cpu_shares = 512
    config.linux.resources.cpu_quota = 50000
    config.linux.resources.cpu_period = 100000
    cid = cri.run(pod_id, config)
    r = cri.exec(cid, "sh", "-c", "echo x > /file")
    assert r.exit_code != 0 and b"Read-only" in r.stderr
    assert cri.exec(cid, "sh", "-c", "echo x > /dev/shm/ok").exit_code == 0

    spec = json.loads(cri.status(cid, verbose=True) and cri.call(
        "ContainerStatus", api_pb2.ContainerStatusRequest(container_id=cid, verbose=True)
    ).info["info"])["runtimeSpec"]
    cgroup = spec["linux"]["cgroupsPath"].lstrip("/")
    memory = Path("/sys/fs/cgroup/memory", cgroup, "memory.limit_in_bytes")
    if not memory.exists():  # cgroup v2
        memory = Path("/sys/fs/cgroup", cgroup, "memory.max")
    assert int(memory.read_text()) == 64 * 1024 * 1024
    shares = Path("/sys/fs/cgroup/cpu,cpuacct", cgroup, "cpu.shares")
    if shares.exists():
        assert int(shares.read_text()) == 512
        assert int(Path(shares.parent, "cpu.cfs_quota_us").read_text()) == 50000
    status_res = cri.status(cid).resources.linux
    assert status_res.memory_limit_in_bytes == 64 * 1024 * 1024 and status_res.cpu_shares == 512


def test_sysctls_hostname_dns_and_shared_shm(cri):
    config = pod_config(log_dir=_log_dir(cri), sysctls={"kernel.shm_rmid_forced": "1",
                                                         "net.ipv4.ip_forward": "1"})
    config.annotations["security.alpha.kubernetes.io/sysctls"] = "kernel.msgmax=12345"
    config.dns_config.servers.append("10.0.0.10")
    config.dns_config.searches.append("svc.cluster.local")
    config.dns_config.options.append("ndots:5")
    pod_id = cri.run_pod(config)
    one = cri.run(pod_id, container_config(cri.image, SLEEP))
    two = cri.run(pod_id, container_config(cri.image, SLEEP))

    assert cri.exec(one, "sysctl", "kernel.shm_rmid_forced").stdout.strip().endswith(b"= 1")
    assert cri.exec(one, "sysctl", "net.ipv4.ip_forward").stdout.strip().endswith(b"= 1")
    assert cri.exec(one, "sysctl", "kernel.msgmax").stdout.strip().endswith(b"= 12345")
    assert cri.exec(one, "cat", "/etc/hostname").stdout.strip() == config.hostname.encode()
    resolv = cri.exec(one, "cat", "/etc/resolv.conf").stdout.decode()
    assert "nameserver 10.0.0.10" in resolv and "search svc.cluster.local" in resolv
    assert "options ndots:5" in resolv
    assert b"localhost" in cri.exec(one, "cat", "/etc/hosts").stdout
    cri.exec(one, "sh", "-c", "echo shared > /dev/shm/x")
    assert cri.exec(two, "cat", "/dev/shm/x").stdout == b"shared\n"
    # Same UTS and IPC namespaces as the infra container; a network namespace of the pod.
    assert cri.exec(two, "cat", "/proc/sys/kernel/hostname").stdout.strip() == \
        config.hostname.encode()


def test_pod_level_pid_namespace_shows_the_pause_process(cri):
    pod_id, _ = _pod(cri, security_context=api_pb2.LinuxSandboxSecurityContext(
        namespace_options=api_pb2.NamespaceOption(pid=api_pb2.POD)))
    config = container_config(cri.image, SLEEP)
    config.linux.security_context.namespace_options.pid = api_pb2.POD
    cid = cri.run(pod_id, config)
    assert cri.exec(cid, "cat", "/proc/1/cmdline").stdout.split(b"\0")[0] == b"/pause"


def test_reopen_container_log(cri):
    pod_id, _ = _pod(cri)
    cid = cri.run(pod_id, container_config(
        cri.image, ["sh", "-c", "while true; do echo tick; sleep 0.2; done"]))
    path = Path(cri.status(cid).log_path)
    wait_for(lambda: path.read_text() if path.exists() else "", lambda t: "tick" in t)
    path.rename(f"{path}.1")
    cri.call("ReopenContainerLog", api_pb2.ReopenContainerLogRequest(container_id=cid))
    assert path.exists()
    wait_for(lambda: path.read_text(), lambda t: "stdout F tick" in t)


def test_restart_keeps_pods_and_containers(cri, start_ocid):
    pod_id, _ = _pod(cri)
    running = cri.run(pod_id, container_config(cri.image, SLEEP))
    exited = cri.run(pod_id, container_config(cri.image, ["sh", "-c", "exit 4"]))
    cri.wait_exited(exited)
    before = (cri.pods(), cri.containers(), cri.pod_status(pod_id), cri.status(running),
              cri.status(exited))
    daemon = cri.daemon
    assert daemon.stop() == 0
    again = Cri(start_ocid(subdir=""))  # the same workdir, root and socket
    after = (again.pods(), again.containers(), again.pod_status(pod_id), again.status(running),
             again.status(exited))
    assert after == before
    assert again.exec(running, "echo", "still here").stdout == b"still here\n"
    again.stop(running)
    assert again.status(running).state == api_pb2.CONTAINER_EXITED


def test_kill_9_while_containers_run(cri, start_ocid):
    pod_id, _ = _pod(cri)
    keeps = cri.run(pod_id, container_config(cri.image, SLEEP))
    ends = cri.run(pod_id, container_config(
        cri.image, ["sh", "-c", "while [ ! -e /tmp/go ]; do sleep 0.1; done; exit 7"]))
    cri.daemon.proc.send_signal(signal.SIGKILL)
    cri.daemon.proc.wait()
    # The container ends while ocid is down: conmon records the exit on its own.
    exits = cri.daemon.workdir / "run" / "exits"
    bundle = cri.daemon.workdir / "root" / "containers" / ends
    # Let it finish by making the file it waits for, through its own root file system.
    rootfs = cri.daemon.workdir / "root" / "storage"
    matches = list(rootfs.glob(f"**/{ends}/merged/tmp"))
    assert matches, "container root file system not found"
    (matches[0] / "go").write_text("")
    wait_for(lambda: (exits / ends).exists() or (bundle / "exit").exists(), bool)

    again = Cri(start_ocid(subdir=""))
    s = again.status(ends)
    assert s.state == api_pb2.CONTAINER_EXITED and s.exit_code == 7
    assert again.status(keeps).state == api_pb2.CONTAINER_RUNNING
    assert again.exec(keeps, "true").exit_code == 0
    assert again.pod_status(pod_id).state == api_pb2.SANDBOX_READY
    again.remove_pod(pod_id)
    assert leftovers(cri.daemon.workdir, again.daemon.proc.pid)["processes"] == []


def test_abandoned_run_pod_sandbox_goes_to_the_retry(cri):
    config = pod_config(log_dir=_log_dir(cri))
    with pytest.raises(grpc.RpcError) as err:
        cri.call("RunPodSandbox", api_pb2.RunPodSandboxRequest(config=config), timeout=0.05)
    assert _code(err) == grpc.StatusCode.DEADLINE_EXCEEDED
    # The retry gets the pod the first request made (once that one finished) ...
    pod_id = wait_for(lambda: _try_run(cri, config), lambda r: isinstance(r, str))
    assert [p.id for p in cri.pods()] == [pod_id]
    assert "finished after its caller gave up" in cri.daemon.log
    assert f"pod {pod_id} handed to a retry" in cri.daemon.log
    # ... and only once: a further identical request is a duplicate.
    with pytest.raises(grpc.RpcError) as err:
        cri.run_pod(config)
    assert _code(err) == grpc.StatusCode.ALREADY_EXISTS


def _try_run(cri: Cri, config) -> str | None:
    try:
        return cri.run_pod(config)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.ALREADY_EXISTS
        return None


def test_bad_requests_get_clear_errors(cri):
    with pytest.raises(grpc.RpcError) as err:
        cri.run_pod(api_pb2.PodSandboxConfig())
    assert _code(err) == grpc.StatusCode.INVALID_ARGUMENT and "name" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        cri.create("f" * 64, container_config(cri.image, SLEEP))
    assert _code(err) == grpc.StatusCode.NOT_FOUND
    pod_id, _ = _pod(cri)
    with pytest.raises(grpc.RpcError) as err:
        cri.create(pod_id, container_config("never-pulled/image:1", SLEEP))
    assert _code(err) == grpc.StatusCode.NOT_FOUND and "never-pulled" in err.value.details()
    cid = cri.run(pod_id, container_config(cri.image, SLEEP))
    with pytest.raises(grpc.RpcError) as err:
        cri.start(cid)
    assert _code(err) == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as err:
        cri.run_pod(pod_config(), handler="no-such-runtime")
    assert _code(err) == grpc.StatusCode.INVALID_ARGUMENT
    # A failed create leaves no name behind: the same container name works afterwards.
    named = container_config("never-pulled/image:1", SLEEP, name="again")
    with pytest.raises(grpc.RpcError):
        cri.create(pod_id, named)
    named.image.image = cri.image
    assert cri.create(pod_id, named)


def test_parallel_pods(cri):
    results: list[str] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            pod_id, _ = _pod(cri)
            cri.run(pod_id, container_config(cri.image, SLEEP))
            results.append(pod_id)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 4
    assert len(cri.containers(state=api_pb2.CONTAINER_RUNNING)) == 4


def test_kill_9_during_churn_leaks_nothing(cri, start_ocid):
    """ocid killed while pods and containers are being made: the restart cleans up."""
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            try:
                pod_id, _ = _pod(cri)
                cri.run(pod_id, container_config(cri.image, SLEEP))
                cri.remove_pod(pod_id)
            except grpc.RpcError:
                return  # the daemon is gone

    threads = [threading.Thread(target=churn) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(2.5)
    cri.daemon.proc.send_signal(signal.SIGKILL)
    cri.daemon.proc.wait()
    stop.set()
    for t in threads:
        t.join()

    again = Cri(start_ocid(subdir=""))
    for pod in again.pods():
        again.remove_pod(pod.id)
    assert again.pods() == [] and again.containers() == []
    workdir = cri.daemon.workdir
    assert leftovers(workdir, again.daemon.proc.pid) == {"processes": [], "mounts": [],
                                                         "runtime": [], "cgroups": []}
    assert os.listdir(workdir / "root" / "sandboxes") == []
    records = workdir / "root" / "containers"
    assert os.listdir(records) in ([], [".trash"])  # removed records wait in .trash, deleted
    wait_for(lambda: list((records / ".trash").glob("*")), lambda left: not left)  # at once
    wait_for(lambda: list((workdir / "root" / "storage" / "tmp").glob("*.deleted")),
             lambda left: not left)
    assert not [n for n in os.listdir(workdir / "netns")]


def _verbose(cri: Cri, cid: str) -> dict:
    return json.loads(cri.call("ContainerStatus", api_pb2.ContainerStatusRequest(
        container_id=cid, verbose=True)).info["info"])


def test_remove_cuts_a_long_stop_short(cri):
    pod_id, _ = _pod(cri)
    cid = cri.run(pod_id, container_config(cri.image, SLEEP))  # PID 1 ignores SIGTERM
    stopper = threading.Thread(target=cri.stop, args=(cid, 30))
    stopper.start()
    time.sleep(0.5)
    started = time.monotonic()
    cri.remove(cid)
    assert time.monotonic() - started < 3
    stopper.join(timeout=5)
    assert not stopper.is_alive() and cri.containers() == []


def test_a_dead_monitor_is_noticed(cri):
    pod_id, _ = _pod(cri)
    cid = cri.run(pod_id, container_config(cri.image, SLEEP))
    info = _verbose(cri, cid)
    os.kill(info["conmonPid"], signal.SIGKILL)  # a conmon this test's ocid started
    assert cri.status(cid).state == api_pb2.CONTAINER_RUNNING  # the process itself lives on
    os.kill(info["pid"], signal.SIGKILL)
    s = cri.wait_exited(cid, within=15)
    assert s.exit_code in (137, 255) and s.reason == "Error"


def test_exec_sync_output_is_capped(cri):
    pod_id, _ = _pod(cri)
    cid = cri.run(pod_id, container_config(cri.image, SLEEP))
    r = cri.exec(cid, "/bin/busybox", "dd", "if=/dev/zero", "bs=1048576", "count=20",
                 timeout=60)
    assert r.exit_code == 0 and len(r.stdout) == 8 * 1024 * 1024  # 20 MiB written, 8 kept


def _runc_wrapper(tmp_path: Path, name: str, first: str) -> Path:
    """A runtime that runs the shell line ``first``, then the real runc."""
    wrapper = tmp_path / f"runc-{name}"
    wrapper.write_text(f'#!/bin/sh\n{first}\nexec /usr/sbin/runc "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def _cri_with_runtime(start_ocid, registry, busybox_image, handler: str, runtime: Path) -> Cri:
    """An ocid with the runtime handler ``handler`` = ``runtime`` and busybox pulled."""
    daemon = start_ocid(config_text=f'[ocid.runtime.runtimes.{handler}]\n'
                                    f'runtime_path = "{runtime}"\n')
    write_registries(daemon, insecure(registry.host))
    write_loopback_network(daemon.workdir)
    cri = Cri(daemon)
    cri.pull(busybox_image.reference)
    return cri


def test_stop_keeps_its_timeout_when_the_runtime_hangs(start_ocid, registry, busybox_image,
                                                        tmp_path):
    wrapper = _runc_wrapper(tmp_path, "hangs",
                            'for a in "$@"; do [ "$a" = kill ] && exec sleep 30; done')
    cri = _cri_with_runtime(start_ocid, registry, busybox_image, "hangs", wrapper)
    pod_id = cri.run_pod(pod_config(), handler="hangs")
    cid = cri.run(pod_id, container_config(busybox_image.reference, SLEEP))
    started = time.monotonic()
    cri.stop(cid, timeout=1)
    assert time.monotonic() - started < 4  # 1 s grace (+ 1 s per runc call, were there any)
    assert cri.status(cid).state == api_pb2.CONTAINER_EXITED




def _subcommands(calls: Path) -> list[str]:
    """The runc subcommands logged so far (the global --root flag skipped)."""
    if not calls.exists():
        return []
    return [line.split()[2] for line in calls.read_text().splitlines()]


def test_stop_and_remove_make_no_needless_runtime_calls(start_ocid, registry, busybox_image,
                                                        tmp_path):
    calls = tmp_path / "runc-calls"
    wrapper = _runc_wrapper(tmp_path, "logged", f'echo "$*" >> {calls}')
    cri = _cri_with_runtime(start_ocid, registry, busybox_image, "logged", wrapper)
    daemon = cri.daemon
    pod_id = cri.run_pod(pod_config(), handler="logged")
    cid = cri.run(pod_id, container_config(busybox_image.reference, SLEEP))
    rootfs = Path(_verbose(cri, cid)["runtimeSpec"]["root"]["path"])
    runc_state = daemon.workdir / "run" / "runtime" / "logged" / cid
    assert os.path.ismount(rootfs) and runc_state.is_dir()
    calls.unlink()

    cri.stop(cid)  # the init is signalled through a pidfd: no runc state, no runc kill
    status = cri.status(cid)
    assert status.state == api_pb2.CONTAINER_EXITED and status.exit_code == 137
    # The exited container gives back runc's state and its rootfs mount in the background;
    # its record and log stay.
    wait_for(lambda: _subcommands(calls), lambda found: found == ["delete"], within=10)
    wait_for(lambda: os.path.ismount(rootfs), lambda mounted: not mounted, within=10)
    assert not runc_state.exists()
    assert cri.status(cid).exit_code == 137 and cri.containers(id=cid)

    cri.remove(cid)  # nothing left for runc to do
    assert _subcommands(calls) == ["delete"]
    assert not cri.containers(id=cid)
    cri.stop_pod(pod_id)  # the infra too is killed through its pidfd
    assert "kill" not in _subcommands(calls) and "state" not in _subcommands(calls)
    cri.remove_pod(pod_id)


def test_an_exit_releases_runtime_state_and_rootfs(cri):
    pod_id, _ = _pod(cri)
    cid = cri.run(pod_id, container_config(cri.image, ["sh", "-c", "echo done; exit 3"]))
    rootfs = Path(_verbose(cri, cid)["runtimeSpec"]["root"]["path"])
    status = cri.wait_exited(cid)
    assert status.exit_code == 3 and status.reason == "Error"
    wait_for(lambda: os.path.ismount(rootfs), lambda mounted: not mounted, within=10)
    runc_roots = cri.daemon.workdir / "run" / "runtime"
    wait_for(lambda: list(runc_roots.glob(f"*/{cid}")), lambda there: not there, within=10)
    assert "done" in Path(status.log_path).read_text()
    cri.remove(cid)
    assert not cri.containers(id=cid)


def test_stop_and_remove_a_paused_container(cri):
    # CRI never pauses, but an operator's `runc pause` must not make the container
    # unstoppable: a frozen task outlives SIGKILL until it is thawed.
    pod_id, _ = _pod(cri)
    cid = cri.run(pod_id, container_config(cri.image, SLEEP))
    runc_root = cri.daemon.workdir / "run" / "runtime" / "default"
    subprocess.run(["runc", "--root", str(runc_root), "pause", cid], check=True)
    cri.stop(cid)
    assert cri.status(cid).state == api_pb2.CONTAINER_EXITED
    cri.remove(cid)
    assert not cri.containers(id=cid)
