"""The CRI gRPC layer: thin handlers, one module per RPC group, registered through ``instrument``."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
from cri_api.v1 import api_pb2

from ocid.config import Config
from ocid.image.service import ImageService
from ocid.lifecycle.service import Lifecycle
from ocid.stream.server import StreamServer

from .container import ContainerHandlers
from .image import ImageHandlers
from .instrument import register
from .runtime import RuntimeInfoHandlers
from .sandbox import SandboxHandlers
from .streaming import StreamingHandlers

# The kubelet allows CRI messages up to 16 MiB (ListContainers on a busy node is large).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
RUNTIME_SERVICE = api_pb2.DESCRIPTOR.services_by_name["RuntimeService"]
IMAGE_SERVICE = api_pb2.DESCRIPTOR.services_by_name["ImageService"]


def create_server(config: Config, images: ImageService, lifecycle: Lifecycle,
                  streams: StreamServer, *, max_workers: int = 32) -> grpc.Server:
    """A gRPC server with both CRI services registered (not yet bound or started)."""
    server = grpc.server(
        ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="cri"),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    runtime_handlers = [RuntimeInfoHandlers(config, images, lifecycle.ctx.cni), SandboxHandlers(lifecycle),
                        ContainerHandlers(lifecycle), StreamingHandlers(lifecycle, streams)]
    image_handlers = [ImageHandlers(images)]
    register(server, RUNTIME_SERVICE, runtime_handlers)
    register(server, IMAGE_SERVICE, image_handlers)
    return server
