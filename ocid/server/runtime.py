"""Runtime-level RPCs: Version, Status and RuntimeConfig."""

from __future__ import annotations

import json

from cri_api.v1 import api_pb2

from ocid import CRI_API_VERSION, CRI_VERSION, RUNTIME_NAME, __version__, health
from ocid.config import Config, to_dict
from ocid.image.service import ImageService
from ocid.network.cni import CniManager


class RuntimeInfoHandlers:
    """Answers what this runtime is and whether it is ready."""

    def __init__(self, config: Config, images: ImageService, cni: CniManager):
        self.config = config
        self.images = images
        self.cni = cni

    def Version(self, request: api_pb2.VersionRequest) -> api_pb2.VersionResponse:
        """Names this runtime and the CRI API it serves."""
        return api_pb2.VersionResponse(
            version=CRI_VERSION,
            runtime_name=RUNTIME_NAME,
            runtime_version=__version__,
            runtime_api_version=CRI_API_VERSION,
        )

    def Status(self, request: api_pb2.StatusRequest) -> api_pb2.StatusResponse:
        """RuntimeReady and NetworkReady; with ``verbose``, the effective config as JSON."""
        conditions = [
            api_pb2.RuntimeCondition(type=c.type, status=c.status, reason=c.reason, message=c.message)
            for c in (health.runtime_condition(self.config), health.network_condition(self.cni))
        ]
        info = {}
        if request.verbose:
            info["config"] = json.dumps(to_dict(self.config))
            # Live progress of every pull in flight, per layer (ocic image pull draws it).
            info["pulls"] = json.dumps(self.images.pull_progress())
        return api_pb2.StatusResponse(status=api_pb2.RuntimeStatus(conditions=conditions), info=info)

    def RuntimeConfig(self, request: api_pb2.RuntimeConfigRequest) -> api_pb2.RuntimeConfigResponse:
        """The cgroup driver the kubelet must match."""
        driver = (api_pb2.CgroupDriver.SYSTEMD if self.config.runtime.cgroup_manager == "systemd"
                  else api_pb2.CgroupDriver.CGROUPFS)
        return api_pb2.RuntimeConfigResponse(
            linux=api_pb2.LinuxRuntimeConfiguration(cgroup_driver=driver))
