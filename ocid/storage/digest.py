"""Content digests ("sha256:<hex>"), OCI chain IDs and the digest-mismatch error."""

from __future__ import annotations

import hashlib
import re

from ocid.errors import InvalidArgument

_HEX_LEN = {"sha256": 64, "sha512": 128}
_DIGEST_RE = re.compile(r"^(sha256|sha512):([0-9a-f]+)$")


class DigestMismatch(InvalidArgument):
    """Content does not match the digest it was announced with."""

    def __init__(self, what: str, expected: str, actual: str):
        self.expected = expected
        self.actual = actual
        super().__init__(f"{what}: digest mismatch: expected {expected}, got {actual}")


def split_digest(digest: str) -> tuple[str, str]:
    """Return (algorithm, hex) of a valid digest; InvalidArgument otherwise."""
    match = _DIGEST_RE.match(digest) if isinstance(digest, str) else None
    if not match or len(match.group(2)) != _HEX_LEN[match.group(1)]:
        raise InvalidArgument(f"invalid digest {digest!r} "
                              "(want sha256:<64 hex> or sha512:<128 hex>)")
    return match.group(1), match.group(2)


def new_hash(digest: str) -> hashlib._Hash:
    """A fresh hash object for the algorithm of ``digest``."""
    return hashlib.new(split_digest(digest)[0])


def sha256_digest(data: bytes) -> str:
    """The "sha256:<hex>" digest of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def chain_id(parent: str | None, diff_id: str) -> str:
    """The chain ID of a layer with diff ID ``diff_id`` above the layer chain ``parent``."""
    split_digest(diff_id)
    if parent is None:
        return diff_id
    return sha256_digest(f"{parent} {diff_id}".encode())


def chain_ids(diff_ids: list[str]) -> list[str]:
    """OCI chain IDs of a layer stack, bottom first: C0 = D0, Cn = sha256(Cn-1 + " " + Dn)."""
    result: list[str] = []
    for diff_id in diff_ids:
        result.append(chain_id(result[-1] if result else None, diff_id))
    return result
