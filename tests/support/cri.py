"""Building CRI requests for tests, and waiting on the states they lead to."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cri_api.v1 import api_pb2

from tests.support.images import BUSYBOX_APPLETS  # noqa: F401 - the applets tests may run


LOOPBACK_NETWORK = {"cniVersion": "1.0.0", "name": "ocid-test-lo",
                    "plugins": [{"type": "loopback"}]}


def write_loopback_network(workdir: Path) -> None:
    """A CNI network of the loopback plugin only: pods get a namespace but no address.

    Enough for tests about pods and containers; network tests write a bridge network.
    """
    (workdir / "net.d" / "99-loopback.conflist").write_text(json.dumps(LOOPBACK_NETWORK))


def pod_config(name: str = "", *, namespace: str = "default", log_dir: str = "",
               labels: dict[str, str] | None = None, **linux: Any) -> api_pb2.PodSandboxConfig:
    """A pod config with unique metadata; ``linux`` fields go to LinuxPodSandboxConfig."""
    name = name or f"pod-{uuid.uuid4().hex[:8]}"
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name=name, uid=uuid.uuid4().hex,
                                            namespace=namespace, attempt=0),
        hostname=name, log_directory=log_dir, labels=labels or {})
    for key, value in linux.items():
        if isinstance(value, dict):
            getattr(config.linux, key).update(value)
        elif isinstance(value, str):
            setattr(config.linux, key, value)
        else:
            getattr(config.linux, key).CopyFrom(value)
    return config


def container_config(image: str, args: list[str], name: str = "", *,
                     labels: dict[str, str] | None = None, log_path: str = "",
                     **kwargs: Any) -> api_pb2.ContainerConfig:
    """A container config running ``args`` (as command) from ``image``."""
    name = name or f"ctr-{uuid.uuid4().hex[:8]}"
    return api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name=name), image=api_pb2.ImageSpec(image=image),
        command=args, labels=labels or {}, log_path=log_path or f"{name}.log", **kwargs)


class Cri:
    """The RuntimeService of one ocid, with shortcuts for the common calls."""

    def __init__(self, daemon: Any):
        self.daemon = daemon
        self.stub = daemon.runtime_stub()

    def call(self, method: str, request: Any, timeout: float = 60) -> Any:
        return getattr(self.stub, method)(request, timeout=timeout)

    def pull(self, image: str) -> str:
        request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image))
        return self.daemon.image_stub().PullImage(request, timeout=120).image_ref

    def run_pod(self, config: api_pb2.PodSandboxConfig, handler: str = "") -> str:
        return self.call("RunPodSandbox", api_pb2.RunPodSandboxRequest(
            config=config, runtime_handler=handler)).pod_sandbox_id

    def create(self, pod_id: str, config: api_pb2.ContainerConfig,
               pod: api_pb2.PodSandboxConfig | None = None) -> str:
        return self.call("CreateContainer", api_pb2.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=config,
            sandbox_config=pod or api_pb2.PodSandboxConfig())).container_id

    def start(self, cid: str) -> None:
        self.call("StartContainer", api_pb2.StartContainerRequest(container_id=cid))

    def run(self, pod_id: str, config: api_pb2.ContainerConfig) -> str:
        cid = self.create(pod_id, config)
        self.start(cid)
        return cid

    def stop(self, cid: str, timeout: int = 0) -> None:
        self.call("StopContainer", api_pb2.StopContainerRequest(container_id=cid, timeout=timeout))

    def remove(self, cid: str) -> None:
        self.call("RemoveContainer", api_pb2.RemoveContainerRequest(container_id=cid))

    def status(self, cid: str, verbose: bool = False) -> api_pb2.ContainerStatus:
        return self.call("ContainerStatus", api_pb2.ContainerStatusRequest(
            container_id=cid, verbose=verbose)).status

    def pod_status(self, pod_id: str) -> api_pb2.PodSandboxStatus:
        return self.call("PodSandboxStatus",
                         api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status

    def stop_pod(self, pod_id: str) -> None:
        self.call("StopPodSandbox", api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))

    def remove_pod(self, pod_id: str) -> None:
        self.call("RemovePodSandbox", api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))

    def containers(self, **filters: Any) -> list[api_pb2.Container]:
        state = filters.pop("state", None)
        f = api_pb2.ContainerFilter(**filters)
        if state is not None:
            f.state.state = state
        return list(self.call("ListContainers",
                              api_pb2.ListContainersRequest(filter=f)).containers)

    def pods(self, **filters: Any) -> list[api_pb2.PodSandbox]:
        state = filters.pop("state", None)
        f = api_pb2.PodSandboxFilter(**filters)
        if state is not None:
            f.state.state = state
        return list(self.call("ListPodSandbox", api_pb2.ListPodSandboxRequest(filter=f)).items)

    def exec(self, cid: str, *cmd: str, timeout: int = 0) -> api_pb2.ExecSyncResponse:
        return self.call("ExecSync", api_pb2.ExecSyncRequest(container_id=cid, cmd=cmd,
                                                             timeout=timeout))

    def wait_exited(self, cid: str, within: float = 30) -> api_pb2.ContainerStatus:
        return wait_for(lambda: self.status(cid),
                        lambda s: s.state == api_pb2.CONTAINER_EXITED, within)


def wait_for(get: Callable[[], Any], done: Callable[[Any], bool], within: float = 30) -> Any:
    """Call ``get`` until ``done`` holds for its value; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = get()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {within}s; last: {value}")
        time.sleep(0.05)
