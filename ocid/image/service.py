"""The image core shared by ocid's CRI ImageService and kpod: pull, list, status, remove,
tag, push, save, load and import, over one ImageStore.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ocid.config import Config
from ocid.errors import FailedPrecondition, InvalidArgument, NotFound, OcidError
from ocid.image.auth import Credentials, default_auth_files, lookup_credentials
from ocid.image.copy import copy_image
from ocid.image.manifest import Platform
from ocid.image.policy import Policy, load_policy
from ocid.image.progress import PullTracker
from ocid.image.reference import ImageReference, parse_reference
from ocid.image.registries import PullSource, RegistriesConfig, load_registries_conf
from ocid.storage.store import ImageRecord, ImageStore

if TYPE_CHECKING:
    from ocid.image.registry import RegistryClient

log = logging.getLogger(__name__)

_FULL_ID = re.compile(r"(sha256:)?[0-9a-f]{64}")
_ID_PREFIX = re.compile(r"(sha256:)?[0-9a-f]{3,64}")

PROGRESS_CHUNK = 64 * 1024


@dataclass
class RegistrySource:
    """A repository on a registry, as a BlobSource."""

    client: RegistryClient
    repository: str
    description: str

    def fetch_manifest(self, reference: str | None) -> tuple[bytes, str]:
        raw, media_type, _digest = self.client.get_manifest(self.repository, reference or "latest")
        return raw, media_type

    def iter_blob(self, digest: str, size: int | None) -> Iterator[bytes]:
        # Small chunks keep the live progress smooth; the store writes them as they come.
        return self.client.iter_blob(self.repository, digest, size, chunk_size=PROGRESS_CHUNK)


@dataclass(frozen=True)
class Removal:
    """What a removal did: the names it took away, and the image ID if the image went."""

    untagged: list[str]
    deleted: str | None


class _ConfigFiles:
    """registries.conf and policy.json, re-read only when the files change."""

    def __init__(self, config: Config):
        self.config = config
        self._stamp: tuple | None = None
        self._registries: RegistriesConfig | None = None
        self._policy: Policy | None = None
        self._lock = threading.Lock()

    def _current_stamp(self) -> tuple:
        paths = [self.config.image.registries_conf, self.config.image.signature_policy]
        dropins = self.config.image.registries_conf_dir
        if os.path.isdir(dropins):
            paths += sorted(os.path.join(dropins, n) for n in os.listdir(dropins))
        stamp = []
        for path in paths:
            try:
                st = os.stat(path)
                stamp.append((path, st.st_mtime_ns, st.st_size))
            except OSError:
                stamp.append((path, None, None))
        return tuple(stamp)

    def load(self) -> tuple[RegistriesConfig, Policy]:
        with self._lock:
            stamp = self._current_stamp()
            if stamp != self._stamp or self._registries is None or self._policy is None:
                image = self.config.image
                self._registries = load_registries_conf(image.registries_conf, image.registries_conf_dir)
                self._policy = load_policy(image.signature_policy)
                self._stamp = stamp
            return self._registries, self._policy



@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    return getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc only


def _return_freed_memory() -> None:
    """Hand the heap's free pages back to the OS: glibc keeps what a pull's threads freed in
    their arenas (about 3 MB of a daemon's idle memory otherwise); it takes ~0.3 ms."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)

class ImageService:
    """Images on one store: what the CRI and kpod do with them."""

    def __init__(self, config: Config, store: ImageStore | None = None):
        self.config = config
        self.store = store or ImageStore(config.storage_root)
        self.pulls = PullTracker()
        self._files = _ConfigFiles(config)
        self._in_flight: dict[tuple[str, str], Future[ImageRecord]] = {}
        self._in_flight_lock = threading.Lock()

    # ---- configuration and clients ------------------------------------------------------

    def config_files(self) -> tuple[RegistriesConfig, Policy]:
        """registries.conf and policy.json as they are now (re-read when they change)."""
        return self._files.load()

    def client_for(self, host: str, *, insecure: bool, credentials: Credentials | None = None,
                   repository: str = "", pulling: bool = False) -> RegistryClient:
        """A registry client, with credentials from auth.json unless given."""
        # Imported here, at the first registry call: requests and urllib3 are ~5 MB of RSS that
        # a daemon which pulls nothing never needs.
        from ocid.image.registry import RegistryClient

        if credentials is None:
            credentials = lookup_credentials(f"{host}/{repository}".rstrip("/"),
                                             default_auth_files(self.config.image.auth_file))
        retries, read_timeout = 3, 300.0
        stall = self.config.image.pull_progress_timeout
        if pulling and stall:
            # The read timeout bounds one silent read; retries resume, so split the budget.
            retries = 2
            read_timeout = max(1.0, stall / (retries + 1))
        return RegistryClient(host, insecure=insecure, retries=retries, timeout=(10.0, read_timeout),
                              certs_dirs=self.config.image.certs_dirs,
                              credentials=(credentials.username, credentials.password)
                              if credentials else None)

    # ---- names -------------------------------------------------------------------------

    def find(self, text: str) -> ImageRecord | None:
        """The stored image ``text`` names, or None.

        In podman's order: a full ID, then the name (normalised, aliases and search
        registries applied) or repo digest, and an ID prefix last, so that a short name made
        of hex letters (``cafe``) never picks an image by its ID.
        """
        text = text.strip()
        if not text:
            raise InvalidArgument("no image given")
        if _FULL_ID.fullmatch(text):
            return self._lookup(text)
        for candidate in dict.fromkeys([text, *map(str, self._local_candidates(text))]):
            if not _ID_PREFIX.fullmatch(candidate):  # bare hex words: only as an ID prefix
                record = self._lookup(candidate)
                if record is not None:
                    return record
        return self._lookup(text) if _ID_PREFIX.fullmatch(text) else None

    def _lookup(self, text: str) -> ImageRecord | None:
        try:
            return self.store.get_image(text)
        except NotFound:
            return None

    def get(self, text: str) -> ImageRecord:
        """Like ``find``, but a missing image is NotFound."""
        record = self.find(text)
        if record is None:
            raise NotFound(f"image {text!r} not found")
        return record

    def _local_candidates(self, text: str) -> list[ImageReference]:
        """Every full name ``text`` may stand for locally (an ambiguous short name included)."""
        registries, _ = self.config_files()
        try:
            return dataclasses.replace(registries, short_name_mode="permissive").resolve(text)
        except InvalidArgument:
            return []

    # ---- pull --------------------------------------------------------------------------

    def pull(self, text: str, *, credentials: Credentials | None = None,
             platform: Platform | None = None, tls_verify: bool | None = None) -> ImageRecord:
        """Pull ``text`` from its registry (through mirrors), store it and name it.

        Concurrent pulls of the same image in this process do the work once.
        """
        registries, policy = self.config_files()
        candidates = registries.resolve(text)
        platform = platform or Platform.host()
        failures: list[str] = []
        try:
            for ref in candidates:
                policy.check("docker", ref)
                try:
                    return self._pull_deduplicated(ref, registries, credentials, platform,
                                                   tls_verify)
                except NotFound as exc:
                    if len(candidates) == 1:
                        raise
                    failures.append(str(exc))
        finally:
            _return_freed_memory()
        raise NotFound(f"image {text!r} not found in any search registry: {'; '.join(failures)}")

    def _pull_deduplicated(self, ref: ImageReference, registries: RegistriesConfig,
                           credentials: Credentials | None, platform: Platform,
                           tls_verify: bool | None) -> ImageRecord:
        key = (str(ref), f"{platform.os}/{platform.architecture}/{platform.variant}")
        with self._in_flight_lock:
            running = self._in_flight.get(key)
            if running is None:
                future: Future[ImageRecord] = Future()
                self._in_flight[key] = future
        if running is not None:
            log.info("pull of %s already in progress; waiting for it", ref)
            return running.result()
        try:
            record = self._pull_sources(ref, registries, credentials, platform, tls_verify)
        except BaseException as exc:
            future.set_exception(exc)
            raise
        else:
            future.set_result(record)
            return record
        finally:
            with self._in_flight_lock:
                self._in_flight.pop(key, None)

    def _pull_sources(self, ref: ImageReference, registries: RegistriesConfig,
                      credentials: Credentials | None, platform: Platform,
                      tls_verify: bool | None) -> ImageRecord:
        sources = registries.pull_sources(ref)
        last_error: OcidError | None = None
        for source in sources:
            try:
                return self._pull_from(ref, source, credentials, platform, tls_verify)
            except OcidError as exc:
                # Any failure of a mirror falls back to the next source, as containers/image does.
                if not source.mirror:
                    raise
                log.info("mirror %s failed for %s: %s", source.reference.domain, ref, exc)
                last_error = exc
        assert last_error is not None
        raise last_error

    def _pull_from(self, ref: ImageReference, source: PullSource, credentials: Credentials | None,
                   platform: Platform, tls_verify: bool | None) -> ImageRecord:
        src = source.reference
        client = self.client_for(src.domain, repository=src.path, credentials=credentials,
                                 insecure=source.insecure if tls_verify is None else not tls_verify,
                                 pulling=True)
        blob_source = RegistrySource(client, src.path, f"{src.domain}/{src.path}")
        progress = self.pulls.start(str(ref))
        progress.source = str(src)
        try:
            log.info("pulling %s from %s", ref, src.domain)
            record, top_digest = copy_image(self.store, blob_source, src.digest or src.tag, platform=platform,
                                progress=progress,
                                max_parallel=self.config.image.max_parallel_downloads,
                                stall_timeout=self.config.image.pull_progress_timeout)
        finally:
            self.pulls.finish(progress)
            client.close()
        if ref.tag:
            record.names = [str(ImageReference(ref.domain, ref.path, tag=ref.tag))]
        record.digests = [f"{ref.name}@{top_digest}"]
        stored = self.store.put_image(record)
        log.info("pulled %s as %s", ref, stored.id)
        return stored

    def pull_progress(self) -> list[dict]:
        """The pulls in flight, per layer (for Status verbose info)."""
        return self.pulls.snapshot()

    # ---- local operations ---------------------------------------------------------------

    def list(self, filter_text: str | None = None) -> list[ImageRecord]:
        """Every stored image, or those ``filter_text`` names."""
        if filter_text:
            found = self.find(filter_text)
            return [found] if found else []
        return self.store.list_images()

    def remove(self, text: str, *, force: bool = True) -> Removal | None:
        """Remove an image by ID, name or digest; an absent image gives None, not an error.

        Naming one of several names removes only that name, as podman and containerd do.
        An ID (or digest) of an image with several names removes it whole only with
        ``force``: kpod rmi asks for -f, the CRI always forces.
        """
        record = self.find(text)
        if record is None:
            return None
        name = self.matching_name(record, text)
        if len(record.names) > 1:
            if name:
                self.store.untag_image(name)
                return Removal(untagged=[name], deleted=None)
            if not force:
                raise FailedPrecondition(f"image {text} has several names "
                                         f"({', '.join(record.names)}): name one, or force it")
        self.store.remove_image(record.id)
        return Removal(untagged=record.names, deleted=record.id)

    def matching_name(self, record: ImageRecord, text: str) -> str | None:
        """The name of ``record`` that ``text`` stands for, if ``text`` is a name of it."""
        for candidate in (text, *map(str, self._local_candidates(text))):
            if candidate in record.names:
                return candidate
        return None

    def tag(self, text: str, new_name: str) -> ImageRecord:
        """Give an image one more name."""
        record = self.get(text)
        ref = parse_reference(new_name)
        if ref.digest:
            raise InvalidArgument(f"cannot tag with a digest: {new_name!r}")
        self.store.tag_image(record.id, str(ref))
        return self.store.get_image(record.id)

    def fs_info(self) -> tuple[str, int, int]:
        """Mountpoint of the store, bytes and inodes it uses."""
        used_bytes, used_inodes = self.store.fs_usage()
        return self.config.storage_root, used_bytes, used_inodes

    def close(self) -> None:
        """Release the store (its database connections and pins)."""
        self.store.close()
