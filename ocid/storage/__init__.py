"""Image storage: content-addressed blobs, layers unpacked once per chain ID, image records, overlay root filesystems."""

from ocid.storage.digest import DigestMismatch, chain_ids
from ocid.storage.lock import FileLock
from ocid.storage.store import ContainerRecord, ImageRecord, ImageStore, LayerInfo

__all__ = ["ContainerRecord", "DigestMismatch", "FileLock", "ImageRecord", "ImageStore",
           "LayerInfo", "chain_ids"]
