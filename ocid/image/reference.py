"""Docker/OCI image references, normalised as containers/image's ``ParseNormalizedNamed`` does.

``busybox`` is ``docker.io/library/busybox:latest``; ``user/app`` is ``docker.io/user/app:latest``;
a first component with a ``.`` or ``:``, or ``localhost``, is a registry host.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from ocid.errors import InvalidArgument

DEFAULT_DOMAIN = "docker.io"
DEFAULT_TAG = "latest"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
TRANSPORT_PREFIX = "docker://"
NAME_TOTAL_LENGTH_MAX = 255

# The grammar of github.com/distribution/reference (regexp.go), piece by piece so errors can
# say which part is wrong.
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = _ALNUM + r"(?:" + _SEPARATOR + _ALNUM + r")*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = _DOMAIN_COMPONENT + r"(?:\." + _DOMAIN_COMPONENT + r")*"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_HOST_PORT = r"(?:" + _DOMAIN_NAME + "|" + _IPV6 + r")(?::[0-9]+)?"

DOMAIN_RE = re.compile(_HOST_PORT)
PATH_RE = re.compile(_PATH_COMPONENT + r"(?:/" + _PATH_COMPONENT + r")*")
TAG_RE = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
DIGEST_RE = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
IMAGE_ID_RE = re.compile(r"[a-f0-9]{64}")
# go-digest's registered algorithms and the length of their lower-case hex encoding.
DIGEST_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}


@dataclass(frozen=True, slots=True)
class ImageReference:
    """A normalised image reference: registry domain, repository path, optional tag and digest."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """The repository name without tag or digest, e.g. ``docker.io/library/busybox``."""
        return f"{self.domain}/{self.path}"

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    def with_tag(self, tag: str) -> ImageReference:
        """This reference with ``tag`` (any digest is kept)."""
        _check_tag(str(self), tag)
        return dataclasses.replace(self, tag=tag)

    def with_digest(self, digest: str) -> ImageReference:
        """This reference with ``digest`` (any tag is kept)."""
        _check_digest(str(self), digest)
        return dataclasses.replace(self, digest=digest)

    def without_tag_or_digest(self) -> ImageReference:
        """The bare repository."""
        return ImageReference(self.domain, self.path)


def _invalid(text: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"invalid image reference {text!r}: {why}")


def _check_tag(text: str, tag: str) -> None:
    if not TAG_RE.fullmatch(tag):
        raise _invalid(text, f"invalid tag {tag!r} (up to 128 letters, digits, '_', '.' or '-', "
                             "not starting with '.' or '-')")


def _check_digest(text: str, digest: str) -> None:
    algorithm, _, encoded = digest.partition(":")
    if not DIGEST_RE.fullmatch(digest):
        raise _invalid(text, f"invalid digest {digest!r} (expected algorithm:hex)")
    if algorithm not in DIGEST_HEX_LENGTHS:
        raise _invalid(text, f"unsupported digest algorithm {algorithm!r}")
    want = DIGEST_HEX_LENGTHS[algorithm]
    if len(encoded) != want or encoded != encoded.lower():
        raise _invalid(text, f"invalid {algorithm} digest {digest!r} "
                             f"(expected {want} lower-case hex digits)")


def _split_domain(name: str) -> tuple[str, str]:
    """Split off the registry as docker/reference's splitDockerDomain does."""
    first, slash, rest = name.partition("/")
    if not slash or (not any(c in first for c in ".:") and first != "localhost"
                     and first == first.lower()):
        domain, remainder = DEFAULT_DOMAIN, name
    else:
        domain, remainder = first, rest
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = OFFICIAL_REPO_PREFIX + remainder
    return domain, remainder


def parse_reference(text: str, *, default_tag: bool = True) -> ImageReference:
    """Parse and normalise an image reference; with ``default_tag`` a bare name gets ``latest``."""
    raw = text.removeprefix(TRANSPORT_PREFIX)
    if not raw:
        raise _invalid(text, "empty name")
    if IMAGE_ID_RE.fullmatch(raw):
        # A bare 64-hex string is an image ID; docker refuses it as a repository name too.
        raise _invalid(text, "a 64-character hexadecimal string is an image ID, not a name")
    named, at, digest = raw.partition("@")
    if not named:
        raise _invalid(text, "no repository name before '@'")
    domain, remainder = _split_domain(named)
    path, tag = remainder, None
    if ":" in remainder:
        path, _, tag = remainder.rpartition(":")
    if not domain or not DOMAIN_RE.fullmatch(domain):
        raise _invalid(text, f"invalid registry {domain!r}")
    if path != path.lower():
        raise _invalid(text, f"repository name {path!r} must be lowercase")
    if not PATH_RE.fullmatch(path):
        raise _invalid(text, f"invalid repository name {path!r} (lower-case letters and digits, "
                             "joined by '.', '_', '__' or '-', in parts separated by '/')")
    if len(domain) + 1 + len(path) > NAME_TOTAL_LENGTH_MAX:
        raise _invalid(text, f"name longer than {NAME_TOTAL_LENGTH_MAX} characters")
    if tag is not None:
        _check_tag(text, tag)
    if at:
        _check_digest(text, digest)
    if default_tag and tag is None and not at:
        tag = DEFAULT_TAG
    return ImageReference(domain, path, tag, digest if at else None)


def is_short_name(text: str) -> bool:
    """Whether ``text`` names no registry (its first component is not a host), like ``busybox``."""
    raw = text.removeprefix(TRANSPORT_PREFIX)
    first, slash, _ = raw.partition("/")
    if not slash:
        return True
    return not any(c in first for c in ".:") and first != "localhost"
