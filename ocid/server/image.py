"""CRI ImageService RPCs: PullImage, ListImages, ImageStatus, RemoveImage, ImageFsInfo."""

from __future__ import annotations

import base64
import binascii
import json
import time

from cri_api.v1 import api_pb2

from ocid.errors import InvalidArgument
from ocid.image.auth import Credentials
from ocid.image.service import ImageService
from ocid.storage.store import ImageRecord


def credentials_from(auth: api_pb2.AuthConfig) -> Credentials | None:
    """The credentials of a CRI AuthConfig (username/password, or base64 ``auth``)."""
    if auth.username or auth.password:
        return Credentials(auth.username, auth.password)
    if auth.auth:
        try:
            username, _, password = base64.b64decode(auth.auth).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise InvalidArgument("auth.auth is not base64 of user:password") from exc
        return Credentials(username, password)
    return None


def image_user(record: ImageRecord) -> tuple[int | None, str]:
    """The image's configured user as the CRI reports it: a numeric uid, or a user name."""
    user = str((record.config.get("config") or {}).get("User") or "").split(":", 1)[0]
    if user.isdigit():
        return int(user), ""
    return None, user


def to_cri_image(record: ImageRecord) -> api_pb2.Image:
    uid, username = image_user(record)
    image = api_pb2.Image(id=record.id, repo_tags=record.names, repo_digests=record.digests,
                          size=record.size, username=username,
                          spec=api_pb2.ImageSpec(image=record.id))
    if uid is not None:
        image.uid.value = uid
    return image


def _image_text(spec: api_pb2.ImageSpec) -> str:
    if not spec.image.strip():
        raise InvalidArgument("image must be set (ImageSpec.image is empty)")
    return spec.image.strip()


class ImageHandlers:
    """The CRI ImageService over the shared image core."""

    def __init__(self, images: ImageService):
        self.images = images

    def PullImage(self, request: api_pb2.PullImageRequest) -> api_pb2.PullImageResponse:
        """Pull an image with the request's credentials; answers the image ID."""
        record = self.images.pull(_image_text(request.image),
                                  credentials=credentials_from(request.auth))
        return api_pb2.PullImageResponse(image_ref=record.id)

    def ListImages(self, request: api_pb2.ListImagesRequest) -> api_pb2.ListImagesResponse:
        """Every image, or those the filter names."""
        wanted = request.filter.image.image if request.HasField("filter") else ""
        return api_pb2.ListImagesResponse(
            images=[to_cri_image(r) for r in self.images.list(wanted or None)])

    def ImageStatus(self, request: api_pb2.ImageStatusRequest) -> api_pb2.ImageStatusResponse:
        """The image, or an empty answer when it is absent; verbose info as JSON."""
        record = self.images.find(_image_text(request.image))
        if record is None:
            return api_pb2.ImageStatusResponse()
        info = {}
        if request.verbose:
            info["info"] = json.dumps({
                "id": record.id, "names": record.names, "digests": record.digests,
                "manifestDigest": record.manifest_digest, "created": record.created,
                "size": record.size, "imageSpec": record.config,
                "layers": [{"digest": layer.digest, "diffID": layer.diff_id,
                            "chainID": layer.chain_id, "size": layer.size} for layer in record.layers],
            })
        return api_pb2.ImageStatusResponse(image=to_cri_image(record), info=info)

    def RemoveImage(self, request: api_pb2.RemoveImageRequest) -> api_pb2.RemoveImageResponse:
        """Remove by ID, name or digest; removing an absent image succeeds."""
        self.images.remove(_image_text(request.image))
        return api_pb2.RemoveImageResponse()

    def ImageFsInfo(self, request: api_pb2.ImageFsInfoRequest) -> api_pb2.ImageFsInfoResponse:
        """Bytes and inodes the image store uses, with its mountpoint."""
        mountpoint, used_bytes, used_inodes = self.images.fs_info()
        usage = api_pb2.FilesystemUsage(timestamp=time.time_ns(),
                                        fs_id=api_pb2.FilesystemIdentifier(mountpoint=mountpoint))
        usage.used_bytes.value = used_bytes
        usage.inodes_used.value = used_inodes
        return api_pb2.ImageFsInfoResponse(image_filesystems=[usage], container_filesystems=[usage])
