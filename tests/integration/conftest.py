"""Fixtures that start real ocid daemons on temporary sockets and roots, and clean them up."""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2_grpc

from tests.support.cleanup import sweep

BIN = Path(sys.executable).parent
OCID = str(BIN / "ocid")
OCIC = str(BIN / "ocic")
KPOD = str(BIN / "kpod")
READY_TIMEOUT = 30


@dataclass
class OcidDaemon:
    """A running ocid process with its own socket, roots and log."""

    workdir: Path
    proc: subprocess.Popen
    args: list[str]
    _channels: list[grpc.Channel] = field(default_factory=list)

    @property
    def socket(self) -> str:
        return str(self.workdir / "ocid.sock")

    @property
    def log(self) -> str:
        return (self.workdir / "ocid.log").read_text()

    def ocic(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([OCIC, "--connect", self.socket, *args], capture_output=True,
                                text=True, timeout=60, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"ocic {' '.join(args)} failed: {result.stderr}")
        return result

    def channel(self) -> grpc.Channel:
        # 16 MiB answers, as the kubelet allows (grpc's default is 4 MiB).
        channel = grpc.insecure_channel(f"unix://{self.socket}", options=[
            ("grpc.max_receive_message_length", 16 * 1024 * 1024)])
        self._channels.append(channel)
        return channel

    def runtime_stub(self) -> api_pb2_grpc.RuntimeServiceStub:
        return api_pb2_grpc.RuntimeServiceStub(self.channel())

    def image_stub(self) -> api_pb2_grpc.ImageServiceStub:
        return api_pb2_grpc.ImageServiceStub(self.channel())

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 20) -> int:
        for channel in self._channels:
            channel.close()
        self._channels.clear()
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        return self.proc.wait(timeout=timeout)


def short_tempdir() -> Path:
    """A directory with a short path: unix socket paths must stay under 108 bytes."""
    return Path(tempfile.mkdtemp(prefix="ocid-t-", dir="/tmp"))


def write_config(workdir: Path, text: str = "") -> Path:
    """An ocid config under ``workdir``, isolated from the host's files.

    Unless ``text`` sets them, network_dir is an empty dir and the image files
    (registries.conf, policy.json, auth.json) live in ``workdir/containers/``.
    """
    net = workdir / "net.d"
    net.mkdir(exist_ok=True)
    containers = workdir / "containers"
    containers.mkdir(exist_ok=True)
    path = workdir / "ocid.conf"
    if "[ocid.network]" not in text:
        text += f'\n[ocid.network]\nnetwork_dir = "{net}"\nnetns_dir = "{workdir / "netns"}"\n'
    if "[ocid.api]" not in text:  # many daemons at once: each streams on a free port
        text += "\n[ocid.api]\nstream_port = 0\n"
    if "[ocid.image]" not in text:
        text += ("\n[ocid.image]\n"
                 f'registries_conf = "{containers}/registries.conf"\n'
                 f'registries_conf_dir = "{containers}/registries.conf.d"\n'
                 f'signature_policy = "{containers}/policy.json"\n'
                 f'auth_file = "{containers}/auth.json"\n')
    path.write_text(text)
    return path


def launch_ocid(workdir: Path, *extra: str, config_text: str = "", wait: bool = True) -> OcidDaemon:
    """Start ocid under ``workdir``; with ``wait``, return once it reports READY (sd_notify)."""
    config = write_config(workdir, config_text)
    notify_path = workdir / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    args = [OCID, "--config", str(config), "--root", str(workdir / "root"),
            "--runroot", str(workdir / "run"), "--listen", str(workdir / "ocid.sock"),
            "--log", str(workdir / "ocid.log"), *extra]
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    daemon = OcidDaemon(workdir, proc, args)
    try:
        if wait:
            pidfd = os.pidfd_open(proc.pid)
            try:
                ready, _, _ = select.select([notify, pidfd], [], [], READY_TIMEOUT)
            finally:
                os.close(pidfd)
            if notify not in ready:
                proc.kill()
                out, err = proc.communicate()
                log = (workdir / "ocid.log").read_text() if (workdir / "ocid.log").exists() else ""
                raise AssertionError(f"ocid did not become ready: rc={proc.returncode}\n{err}\n{log}")
            assert notify.recv(4096) == b"READY=1"
    finally:
        notify.close()
        notify_path.unlink(missing_ok=True)
    return daemon


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = short_tempdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def start_ocid(workdir: Path) -> Iterator:
    """A factory: ``start_ocid(*flags, config_text=...)``; every daemon is stopped afterwards."""
    started: list[OcidDaemon] = []

    def start(*extra: str, config_text: str = "", wait: bool = True, subdir: str = "") -> OcidDaemon:
        where = workdir / subdir if subdir else workdir
        where.mkdir(exist_ok=True)
        daemon = launch_ocid(where, *extra, config_text=config_text, wait=wait)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.proc.poll() is None:
            remove_all_pods(daemon)
            daemon.stop(signal.SIGKILL)
        else:
            daemon.stop()
        daemon.proc.communicate()
        sweep(daemon.workdir)  # whatever the test left, even after a kill -9


def remove_all_pods(daemon: OcidDaemon) -> None:
    """Remove every pod (and so every container) through the CRI, best effort."""
    from cri_api.v1 import api_pb2

    try:
        stub = daemon.runtime_stub()
        for pod in stub.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=10).items:
            stub.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod.id),
                                  timeout=60)
    except grpc.RpcError:
        pass


@pytest.fixture
def ocid(start_ocid) -> OcidDaemon:
    """One running ocid with an empty CNI config directory."""
    return start_ocid()


@pytest.fixture
def cri(start_ocid, registry, busybox_image):
    """An ocid with the busybox test image pulled and a loopback-only CNI network."""
    from tests.integration.test_images import insecure, write_registries
    from tests.support.cri import Cri, write_loopback_network

    daemon = start_ocid()
    write_registries(daemon, insecure(registry.host))
    write_loopback_network(daemon.workdir)
    client = Cri(daemon)
    client.image = busybox_image.reference  # type: ignore[attr-defined]
    client.image_id = client.pull(busybox_image.reference)  # type: ignore[attr-defined]
    return client
