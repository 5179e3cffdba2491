"""The two runtimes of ``cri.py`` (ocid and containerd's CRI plugin) and what they share.

Everything here lives under one scratch directory and is named after it, so that the
benchmark finds and removes exactly what it made, even next to a test suite running on the
same machine:

- a CNI bridge network per runtime (its own bridge name, subnet and host-local store);
- ocid on ``<scratch>/ocid-*`` (socket, root, runroot, netns dir, runc roots), its pods in
  the cgroup parent ``/ocid-bench``;
- containerd on ``<scratch>/ctrd-*`` (config version 2: root, state, socket, runc root,
  netns under its state dir), its pods in the cgroup parent ``/containerd-bench``.
  Its shims are found by their ``-address <scratch>/ctrd-*/containerd.sock`` argument.

Both are spoken to through ``tests.support.cri.Cri``: the same client code for both.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import random
import select
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
from cri_api.v1 import api_pb2, api_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.integration.conftest import OCID, write_config
from tests.support.cleanup import mounts_under, processes_under
from tests.support.cri import Cri

RUNC = "/usr/sbin/runc"
CNI_BIN_DIR = "/usr/lib/cni"
CONTAINERD = "containerd"
CONTAINERD_NAMESPACE = "k8s.io"  # the CRI plugin's namespace
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
GRPC_OPTIONS = [("grpc.max_receive_message_length", 16 * 1024 * 1024)]
CGROUP_ROOT = Path("/sys/fs/cgroup")
_PR_SET_PDEATHSIG = 1


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here, so the child only makes one call


def _die_with_parent() -> None:
    """In the child: SIGTERM it if the benchmark dies without cleaning up."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


# ---- process figures -----------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(utime+stime, cutime+cstime) of ``pid`` in seconds, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3); utime, stime, cutime, cstime are fields 14-17.
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return (utime + stime) / CLOCK_TICKS, (cutime + cstime) / CLOCK_TICKS


def status_kb(pid: int, key: str = "VmRSS") -> int:
    """A ``kB`` figure of /proc/<pid>/status (VmRSS by default); 0 if gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def pss_kb(pid: int) -> int:
    """Proportional set size of ``pid`` (shared pages split between their users); 0 if gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def mem_available_kb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return 0


def cmdline(pid: int) -> list[str]:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    return []


def stop_process(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM a child by its PID, SIGKILL it after ``timeout``, and reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


def kill_pids(pids: list[int]) -> None:
    """SIGKILL these PIDs (found by a path of ours in their command line) and wait a little."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists()
                                               and _state(p) not in ("Z", "X") for p in pids):
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"


def unmount_all(root: Path) -> None:
    """Unmount everything at or below ``root``, deepest first (lazily if busy)."""
    for point in mounts_under(root):
        if subprocess.run(["umount", point], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def runc_delete_all(runc_root: Path) -> list[str]:
    """``runc delete --force`` every container in one runc state root; their IDs."""
    if not runc_root.is_dir():
        return []
    out = subprocess.run([RUNC, "--root", str(runc_root), "list", "--format", "json"],
                         capture_output=True, text=True, check=False).stdout
    ids = [c["id"] for c in json.loads(out or "null") or []]
    for cid in ids:
        subprocess.run([RUNC, "--root", str(runc_root), "delete", "--force", cid],
                       capture_output=True, check=False)
    return ids


def remove_cgroup_parent(parent: str) -> None:
    """rmdir the (empty) leaf cgroups below ``/sys/fs/cgroup/*/<parent>`` and the parent.

    Only our own parent is touched (never ``/ocid``, which a test suite may be using).
    """
    name = parent.strip("/")
    for base in [CGROUP_ROOT, *(h for h in CGROUP_ROOT.iterdir() if h.is_dir())]:
        top = base / name
        if not top.is_dir():
            continue
        for child in sorted(top.rglob("*"), key=lambda p: len(str(p)), reverse=True):
            if child.is_dir():
                with contextlib.suppress(OSError):
                    child.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


# ---- the network -----------------------------------------------------------------------------

def _used_subnets() -> set[str]:
    out = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True,
                         check=False).stdout
    return {line.split()[0].rsplit(".", 1)[0] for line in out.splitlines()
            if line and line[0].isdigit()}


@dataclass
class BridgeNetwork:
    """A CNI bridge + host-local + portmap network of our own (the same kind for both)."""

    bridge: str
    subnet: str  # 10.X.Y.0/24
    data_dir: Path

    @classmethod
    def create(cls, prefix: str, data_dir: Path, taken: set[str] = frozenset()) -> BridgeNetwork:
        used = _used_subnets() | set(taken)
        while True:
            net = f"10.{random.randint(160, 250)}.{random.randint(0, 255)}"
            if net not in used:
                break
        return cls(f"{prefix}{uuid.uuid4().hex[:8]}", f"{net}.0/24", data_dir)

    @property
    def name(self) -> str:
        return f"net-{self.bridge}"

    def conflist(self) -> dict:
        return {"cniVersion": "1.0.0", "name": self.name, "plugins": [
            {"type": "bridge", "bridge": self.bridge, "isGateway": True, "ipMasq": True,
             "hairpinMode": True,
             "ipam": {"type": "host-local", "dataDir": str(self.data_dir),
                      "ranges": [[{"subnet": self.subnet}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ]}

    def write(self, conf_dir: Path) -> None:
        conf_dir.mkdir(parents=True, exist_ok=True)
        (conf_dir / "10-bench.conflist").write_text(json.dumps(self.conflist(), indent=1))

    def remove(self) -> None:
        """Delete the bridge, and any NAT rules a pod left (normally CNI DEL removed them)."""
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)
        rules = subprocess.run(["iptables", "-w", "-t", "nat", "-S", "POSTROUTING"],
                               capture_output=True, text=True, check=False).stdout
        for rule in rules.splitlines():
            if f'\\"{self.name}\\"' not in rule and f'"{self.name}"' not in rule:
                continue
            args = shlex.split(rule)
            subprocess.run(["iptables", "-w", "-t", "nat", "-D", *args[1:]],
                           capture_output=True, check=False)
            if "-j" in args:
                chain = args[args.index("-j") + 1]
                if chain.startswith("CNI-"):
                    for op in ("-F", "-X"):
                        subprocess.run(["iptables", "-w", "-t", "nat", op, chain],
                                       capture_output=True, check=False)


# ---- the runtimes ----------------------------------------------------------------------------

class Runtime:
    """One CRI runtime on a socket of ours: its daemon process, client and leftovers."""

    name = ""
    cgroup_parent = ""
    helper_name = ""  # the per-container (ocid) or per-pod (containerd) helper process

    def __init__(self, workdir: Path, network: BridgeNetwork | None):
        self.workdir = workdir
        self.network = network
        self.proc: subprocess.Popen | None = None
        self._channel: grpc.Channel | None = None
        self.cri: Cri | None = None

    # -- the client side
    @property
    def socket(self) -> str:
        raise NotImplementedError

    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = grpc.insecure_channel(f"unix://{self.socket}", options=GRPC_OPTIONS)
        return self._channel

    def runtime_stub(self) -> api_pb2_grpc.RuntimeServiceStub:
        return api_pb2_grpc.RuntimeServiceStub(self.channel())

    def image_stub(self) -> api_pb2_grpc.ImageServiceStub:
        return api_pb2_grpc.ImageServiceStub(self.channel())

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def log_dir(self) -> Path:
        return self.workdir / "podlogs"

    def helper_pids(self) -> list[int]:
        """PIDs of the helpers the daemon started (conmon, or containerd-shim-runc-v2)."""
        return [pid for pid in processes_under(self.workdir, (self.pid,))
                if Path(cmdline(pid)[0]).name == self.helper_name]

    # -- lifecycle
    def start(self) -> Runtime:
        raise NotImplementedError

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Until the CRI Status says RuntimeReady (and NetworkReady if we gave a network)."""
        deadline = time.monotonic() + timeout
        last: object = None
        stub = self.runtime_stub()
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}); "
                                   f"see {self.daemon_log}")
            try:
                status = stub.Status(api_pb2.StatusRequest(), timeout=2).status
                ready = {c.type: c.status for c in status.conditions}
                if ready.get("RuntimeReady") and (self.network is None
                                                  or ready.get("NetworkReady")):
                    return
                last = ready
            except grpc.RpcError as exc:
                last = exc.code()
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s (last: {last}); "
                           f"see {self.daemon_log}")

    @property
    def daemon_log(self) -> Path:
        raise NotImplementedError

    def remove_all_pods(self, threads: int = 4) -> int:
        """Remove every pod through the CRI (best effort); how many there were."""
        from concurrent.futures import ThreadPoolExecutor

        if self.proc is None or self.proc.poll() is not None or self.cri is None:
            return 0
        try:
            pods = self.cri.pods()
        except grpc.RpcError:
            return 0

        def remove(pod_id: str) -> None:
            with contextlib.suppress(grpc.RpcError):
                self.cri.stop_pod(pod_id)  # type: ignore[union-attr]
                self.cri.remove_pod(pod_id)  # type: ignore[union-attr]

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(remove, [p.id for p in pods]))
        return len(pods)

    def stop(self) -> None:
        """Stop the daemon by its PID and close the client."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self.proc is not None:
            stop_process(self.proc)

    def sweep(self) -> None:
        """Remove what the daemon left: runc containers, helpers, mounts, cgroups."""
        raise NotImplementedError

    def shutdown(self) -> None:
        """Everything, in order: pods through the CRI, the daemon, then the leftovers."""
        try:
            left = self.remove_all_pods()
            if left:
                log(f"cleanup: removed {left} {self.name} pods")
        finally:
            try:
                self.stop()
            finally:
                self.sweep()
                if self.network is not None:
                    self.network.remove()

    def pod_config(self, name: str) -> api_pb2.PodSandboxConfig:
        """The pod every workload runs: our cgroup parent, RuntimeDefault seccomp, a log dir."""
        from tests.support.cri import pod_config

        self.log_dir.mkdir(parents=True, exist_ok=True)
        config = pod_config(f"{name}-{uuid.uuid4().hex[:6]}",
                            log_dir=str(self.log_dir / name), cgroup_parent=self.cgroup_parent)
        config.linux.security_context.seccomp.profile_type = \
            api_pb2.SecurityProfile.ProfileType.RuntimeDefault
        return config


class OcidRuntime(Runtime):
    """ocid on its own config, roots and socket; pods in ``/ocid-bench``."""

    name = "ocid"
    cgroup_parent = "/ocid-bench"
    helper_name = "conmon"

    def __init__(self, workdir: Path, network: BridgeNetwork | None, registry_host: str):
        super().__init__(workdir, network)
        self.registry_host = registry_host

    @property
    def socket(self) -> str:
        return str(self.workdir / "ocid.sock")

    @property
    def daemon_log(self) -> Path:
        return self.workdir / "ocid.log"

    def start(self) -> OcidRuntime:
        """Like tests/integration/conftest.launch_ocid, with its output in files (not pipes,
        which would block a daemon that talks a lot during a long run)."""
        config = write_config(self.workdir)  # net.d, netns dir, stream_port = 0, image files
        (self.workdir / "containers" / "registries.conf").write_text(
            f'[[registry]]\nlocation = "{self.registry_host}"\ninsecure = true\n')
        if self.network is not None:
            self.network.write(self.workdir / "net.d")
        notify_path = self.workdir / "notify.sock"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        args = [OCID, "--config", str(config), "--root", str(self.workdir / "root"),
                "--runroot", str(self.workdir / "run"), "--listen", self.socket,
                "--log", str(self.daemon_log), "--pause", "/usr/bin/catatonit"]
        env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
        try:
            with open(self.workdir / "ocid.out", "ab") as out:
                self.proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL,
                                             stdout=out, stderr=subprocess.STDOUT,
                                             preexec_fn=_die_with_parent)  # noqa: PLW1509
            pidfd = os.pidfd_open(self.proc.pid)
            try:
                ready, _, _ = select.select([notify, pidfd], [], [], READY_TIMEOUT)
            finally:
                os.close(pidfd)
            if notify not in ready or notify.recv(4096) != b"READY=1":
                raise RuntimeError(f"ocid did not become ready; see {self.daemon_log} and "
                                   f"{self.workdir / 'ocid.out'}")
        finally:
            notify.close()
            notify_path.unlink(missing_ok=True)
        self.cri = Cri(self)
        self.wait_ready()
        return self

    def sweep(self) -> None:
        runtime_dir = self.workdir / "run" / "runtime"
        if runtime_dir.is_dir():
            for root in runtime_dir.iterdir():
                if ids := runc_delete_all(root):
                    log(f"cleanup: runc delete --force {len(ids)} ocid containers")
        if pids := processes_under(self.workdir):
            log(f"cleanup: killing {len(pids)} leftover ocid processes (conmon)")
            kill_pids(pids)
        unmount_all(self.workdir)
        remove_cgroup_parent(self.cgroup_parent)


class ContainerdRuntime(Runtime):
    """containerd 1.6 with its CRI plugin on its own root, state and socket."""

    name = "containerd"
    cgroup_parent = "/containerd-bench"
    helper_name = "containerd-shim-runc-v2"

    def __init__(self, workdir: Path, network: BridgeNetwork | None, registry_host: str,
                 pause_image: str):
        super().__init__(workdir, network)
        self.registry_host = registry_host
        self.pause_image = pause_image

    @property
    def socket(self) -> str:
        return str(self.workdir / "containerd.sock")

    @property
    def daemon_log(self) -> Path:
        return self.workdir / "containerd.log"

    @property
    def runc_root(self) -> Path:
        return self.workdir / "runc"

    def config(self) -> str:
        """containerd's config (version 2), everything under ``workdir``."""
        w = self.workdir
        cri = '[plugins."io.containerd.grpc.v1.cri"'
        host = self.registry_host
        return f"""version = 2
root = "{w}/root"
state = "{w}/state"
oom_score = 0
# Snapshotters this machine cannot use, and tracing; the CRI plugin stays.
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.tracing.processor.v1.otlp",
                    "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{self.socket}"

[ttrpc]
  address = "{self.socket}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{w}/opt"

  {cri}]
    sandbox_image = "{self.pause_image}"
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    # CAP_SYS_RESOURCE is not in the bounding set here (see notes/machine.md).
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    enable_selinux = false
    systemd_cgroup = false

    {cri}.cni]
      bin_dir = "{CNI_BIN_DIR}"
      conf_dir = "{w}/net.d"
      max_conf_num = 1

    {cri}.containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"

      {cri}.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"

        {cri}.containerd.runtimes.runc.options]
          BinaryName = "{RUNC}"
          Root = "{self.runc_root}"
          SystemdCgroup = false

    {cri}.registry.mirrors."{host}"]
      endpoint = ["http://{host}"]

    {cri}.registry.configs."{host}".tls]
      insecure_skip_verify = true
"""

    def start(self) -> ContainerdRuntime:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "net.d").mkdir(exist_ok=True)
        if self.network is not None:
            self.network.write(self.workdir / "net.d")
        config = self.workdir / "containerd.toml"
        config.write_text(self.config())
        with open(self.daemon_log, "ab") as out:
            self.proc = subprocess.Popen([CONTAINERD, "--config", str(config)],
                                         stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)  # noqa: PLW1509
        deadline = time.monotonic() + READY_TIMEOUT
        while not Path(self.socket).exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not start; see {self.daemon_log}")
            time.sleep(0.02)
        self.cri = Cri(self)
        self.wait_ready()
        return self

    def shim_pids(self) -> list[int]:
        """Shims serving our containerd: ``-address <our socket>`` in their command line."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            args = cmdline(int(entry))
            if (args and Path(args[0]).name == self.helper_name and "-address" in args
                    and args[args.index("-address") + 1] == self.socket
                    and _state(int(entry)) != "Z"):
                found.append(int(entry))
        return found

    def helper_pids(self) -> list[int]:
        return self.shim_pids()

    def sweep(self) -> None:
        # runc first (kills the containers), then the shims, then mounts and cgroups.
        if self.runc_root.is_dir():
            for root in self.runc_root.iterdir():
                if ids := runc_delete_all(root):
                    log(f"cleanup: runc delete --force {len(ids)} containerd containers")
        if pids := self.shim_pids():
            log(f"cleanup: killing {len(pids)} containerd shims: {pids}")
            kill_pids(pids)
        unmount_all(self.workdir)
        remove_cgroup_parent(self.cgroup_parent)


# ---- paths containerd's shims make outside our scratch dir ---------------------------------

SHIM_SOCKET_DIR = Path("/run/containerd/s")  # containerd 1.6 hard-codes it for shim sockets


@contextlib.contextmanager
def shim_socket_dir_guard():
    """Remove /run/containerd/s (and /run/containerd) afterwards if they did not exist before
    and are empty; a shim deletes its own socket when it exits."""
    existed = [p for p in (SHIM_SOCKET_DIR.parent, SHIM_SOCKET_DIR) if p.exists()]
    try:
        yield
    finally:
        for path in (SHIM_SOCKET_DIR, SHIM_SOCKET_DIR.parent):
            if path not in existed:
                with contextlib.suppress(OSError):
                    path.rmdir()


def fresh_dir(parent: Path, prefix: str) -> Path:
    """A new directory with a short path (unix socket paths must fit in 108 bytes)."""
    return Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=parent))
