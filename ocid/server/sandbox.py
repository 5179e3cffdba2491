"""Pod sandbox RPCs: RunPodSandbox, StopPodSandbox, RemovePodSandbox, status and list."""

from __future__ import annotations

import json

from cri_api.v1 import api_pb2

from ocid.lifecycle.records import Sandbox
from ocid.lifecycle.service import Lifecycle

from . import convert
from .listcache import Encoded, EncodedEntries


def sandbox_metadata(sb: Sandbox) -> api_pb2.PodSandboxMetadata:
    r = sb.request
    return api_pb2.PodSandboxMetadata(name=r.name, uid=r.uid, namespace=r.namespace,
                                      attempt=r.attempt)


def network_status(sb: Sandbox) -> api_pb2.PodSandboxNetworkStatus:
    """The pod's first IP, and the others (IPv6) as additional IPs."""
    first, *others = sb.ips or ("",)
    return api_pb2.PodSandboxNetworkStatus(
        ip=first, additional_ips=[api_pb2.PodIP(ip=ip) for ip in others])


def list_entry(sb: Sandbox) -> api_pb2.PodSandbox:
    """A pod as ListPodSandbox shows it."""
    return api_pb2.PodSandbox(id=sb.id, metadata=sandbox_metadata(sb),
                              state=convert.sandbox_state_to_pb(sb.state), created_at=sb.created,
                              labels=sb.request.labels, annotations=sb.request.annotations,
                              runtime_handler=sb.runtime_handler)


class SandboxHandlers:
    """Thin handlers over ``Lifecycle.pods``."""

    def __init__(self, lifecycle: Lifecycle):
        self.pods = lifecycle.pods
        self._listed = EncodedEntries(api_pb2.ListPodSandboxResponse, "items", list_entry,
                                      lambda sb: sb.state, lambda: lifecycle.ctx.registry.sandboxes)

    def RunPodSandbox(self, request: api_pb2.RunPodSandboxRequest) -> api_pb2.RunPodSandboxResponse:
        pod = convert.pod_sandbox_config(request.config)
        return api_pb2.RunPodSandboxResponse(pod_sandbox_id=self.pods.run(pod, request.runtime_handler))

    def StopPodSandbox(self, request: api_pb2.StopPodSandboxRequest) -> api_pb2.StopPodSandboxResponse:
        self.pods.stop(convert.require_id(request.pod_sandbox_id, "pod_sandbox_id"))
        return api_pb2.StopPodSandboxResponse()

    def RemovePodSandbox(self, request: api_pb2.RemovePodSandboxRequest
                         ) -> api_pb2.RemovePodSandboxResponse:
        self.pods.remove(convert.require_id(request.pod_sandbox_id, "pod_sandbox_id"))
        return api_pb2.RemovePodSandboxResponse()

    def PodSandboxStatus(self, request: api_pb2.PodSandboxStatusRequest
                         ) -> api_pb2.PodSandboxStatusResponse:
        sb = self.pods.get(convert.require_id(request.pod_sandbox_id, "pod_sandbox_id"))
        status = api_pb2.PodSandboxStatus(
            id=sb.id, metadata=sandbox_metadata(sb), state=convert.sandbox_state_to_pb(sb.state),
            created_at=sb.created, network=network_status(sb),
            linux=api_pb2.LinuxPodSandboxStatus(namespaces=api_pb2.Namespace(
                options=convert.namespace_option_to_pb(sb.request.namespace_options))),
            labels=sb.request.labels, annotations=sb.request.annotations,
            runtime_handler=sb.runtime_handler)
        info = {"info": json.dumps(self.pods.verbose_info(sb))} if request.verbose else {}
        return api_pb2.PodSandboxStatusResponse(status=status, info=info)

    def ListPodSandbox(self, request: api_pb2.ListPodSandboxRequest
                       ) -> Encoded:  # a ListPodSandboxResponse
        f = request.filter
        state = convert.sandbox_filter_state(f) if f.HasField("state") else None
        return self._listed.reply(self.pods.list(f.id, state, dict(f.label_selector)))
