"""Container RPCs: create, start, stop, remove, status, list, ExecSync, ReopenContainerLog."""

from __future__ import annotations

import json
import signal

from cri_api.v1 import api_pb2

from ocid.lifecycle.records import Container
from ocid.lifecycle.service import Lifecycle

from . import convert
from .listcache import Encoded, EncodedEntries


def container_metadata(c: Container) -> api_pb2.ContainerMetadata:
    return api_pb2.ContainerMetadata(name=c.request.name, attempt=c.request.attempt)


def list_entry(c: Container) -> api_pb2.Container:
    """A container as ListContainers shows it."""
    return api_pb2.Container(
        id=c.id, pod_sandbox_id=c.pod_id, metadata=container_metadata(c),
        image=api_pb2.ImageSpec(image=c.request.image), image_ref=c.image_ref,
        image_id=c.image_id, state=convert.container_state_to_pb(c.state), created_at=c.created,
        labels=c.request.labels, annotations=c.request.annotations)


def _signal_pb(number: int) -> int:
    """The CRI Signal enum value for a signal number (RUNTIME_DEFAULT when it has none)."""
    try:
        return api_pb2.Signal.Value(signal.Signals(number).name)
    except ValueError:
        return api_pb2.Signal.RUNTIME_DEFAULT


class ContainerHandlers:
    """Thin handlers over ``Lifecycle.containers``."""

    def __init__(self, lifecycle: Lifecycle):
        self.containers = lifecycle.containers
        self._listed = EncodedEntries(api_pb2.ListContainersResponse, "containers",
                                      list_entry, lambda c: (c.state, c.image_ref),
                                      lambda: lifecycle.ctx.registry.containers)

    def CreateContainer(self, request: api_pb2.CreateContainerRequest
                        ) -> api_pb2.CreateContainerResponse:
        pod_id = convert.require_id(request.pod_sandbox_id, "pod_sandbox_id")
        ctr = convert.container_request(request.config)
        return api_pb2.CreateContainerResponse(container_id=self.containers.create(pod_id, ctr))

    def StartContainer(self, request: api_pb2.StartContainerRequest
                       ) -> api_pb2.StartContainerResponse:
        self.containers.start(convert.require_id(request.container_id, "container_id"))
        return api_pb2.StartContainerResponse()

    def StopContainer(self, request: api_pb2.StopContainerRequest) -> api_pb2.StopContainerResponse:
        self.containers.stop(convert.require_id(request.container_id, "container_id"),
                             request.timeout)
        return api_pb2.StopContainerResponse()

    def RemoveContainer(self, request: api_pb2.RemoveContainerRequest
                        ) -> api_pb2.RemoveContainerResponse:
        self.containers.remove(convert.require_id(request.container_id, "container_id"))
        return api_pb2.RemoveContainerResponse()

    def ContainerStatus(self, request: api_pb2.ContainerStatusRequest
                        ) -> api_pb2.ContainerStatusResponse:
        c = self.containers.get(convert.require_id(request.container_id, "container_id"))
        cfg = c.request.spec
        status = api_pb2.ContainerStatus(
            id=c.id, metadata=container_metadata(c), state=convert.container_state_to_pb(c.state),
            created_at=c.created, started_at=c.started, finished_at=c.finished,
            exit_code=c.exit_code, image=api_pb2.ImageSpec(image=c.request.image),
            image_ref=c.image_ref, image_id=c.image_id, reason=c.reason, message=c.message,
            labels=c.request.labels, annotations=c.request.annotations,
            mounts=[convert.mount_to_pb(m) for m in cfg.mounts], log_path=c.log_path,
            resources=convert.resources_to_pb(cfg.resources),
            user=api_pb2.ContainerUser(linux=api_pb2.LinuxContainerUser(
                uid=c.user.uid, gid=c.user.gid, supplemental_groups=c.user.groups)),
            stop_signal=_signal_pb(c.stop_signal))
        info = {"info": json.dumps(self.containers.verbose_info(c))} if request.verbose else {}
        return api_pb2.ContainerStatusResponse(status=status, info=info)

    def ListContainers(self, request: api_pb2.ListContainersRequest
                       ) -> Encoded:  # a ListContainersResponse
        f = request.filter
        state = convert.container_filter_state(f) if f.HasField("state") else None
        return self._listed.reply(
            self.containers.list(f.id, f.pod_sandbox_id, state, dict(f.label_selector)))

    def ExecSync(self, request: api_pb2.ExecSyncRequest) -> api_pb2.ExecSyncResponse:
        result = self.containers.exec_sync(
            convert.require_id(request.container_id, "container_id"), list(request.cmd),
            request.timeout)
        # A timeout is an answer, as in cri-o: exit code -1 and the reason on stderr.
        return api_pb2.ExecSyncResponse(stdout=result.stdout, stderr=result.stderr,
                                        exit_code=result.exit_code)

    def ReopenContainerLog(self, request: api_pb2.ReopenContainerLogRequest
                           ) -> api_pb2.ReopenContainerLogResponse:
        self.containers.reopen_log(convert.require_id(request.container_id, "container_id"))
        return api_pb2.ReopenContainerLogResponse()
