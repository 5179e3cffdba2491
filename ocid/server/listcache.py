"""List replies built from entries serialized once, not from new messages at every call.

Filling a protobuf message field by field from Python costs about 14 µs per list entry
(upb backend): 1.4 ms for a ListContainers of 100 containers, which the kubelet asks for
every second. A repeated message field is, on the wire, just its entries one after another,
each framed as (tag, length, bytes). So each entry is serialized once and kept with the
version of the record it shows, and a reply is the joined bytes, sent as they are (the
server's serializer passes an ``Encoded`` reply through): 11 µs for the same 100 containers.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Hashable, Sequence
from typing import Generic, Protocol, Self, TypeVar

from google.protobuf.message import Message

_WIRE_TYPE_LENGTH_DELIMITED = 2


class _Record(Protocol):
    id: str


R = TypeVar("R", bound=_Record)
M = TypeVar("M", bound=Message)


class Encoded(bytes):
    """A reply already in wire format: the server sends it as it is (``instrument``)."""

    message_type: type[Message]

    def __new__(cls, data: bytes, message_type: type[Message]) -> Self:
        encoded = super().__new__(cls, data)
        encoded.message_type = message_type
        return encoded

    def message(self) -> Message:
        """The reply parsed (for the debug log and tests)."""
        return self.message_type.FromString(self)


def _varint(value: int) -> bytes:
    """Protobuf's base-128 varint (the public API only encodes whole messages)."""
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if not value:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


class EncodedEntries(Generic[R, M]):
    """The entries of one repeated field of ``reply_type``, kept encoded per record.

    ``version(record)`` must change whenever what ``build(record)`` shows changes.
    """

    def __init__(self, reply_type: type[M], field: str, build: Callable[[R], Message],
                 version: Callable[[R], Hashable], live: Callable[[], Container[str]]):
        """``live()``: the IDs of every record that still exists (entries of others go)."""
        self.reply_type = reply_type
        self._live = live
        self._tag = _varint(reply_type.DESCRIPTOR.fields_by_name[field].number << 3
                            | _WIRE_TYPE_LENGTH_DELIMITED)
        self._build = build
        self._version = version
        self._entries: dict[str, tuple[Hashable, bytes]] = {}

    def reply(self, records: Sequence[R]) -> Encoded:
        """A reply listing ``records``, in their order, ready to send."""
        parts = []
        for record in records:
            version = self._version(record)
            kept = self._entries.get(record.id)
            if kept is None or kept[0] != version:
                body = self._build(record).SerializeToString()
                kept = (version, self._tag + _varint(len(body)) + body)
                self._entries[record.id] = kept  # a race only builds an entry twice
            parts.append(kept[1])
        live = self._live()
        if len(self._entries) > 2 * len(live) + 256:  # entries of removed records
            # dict() copies in one step, so a concurrent insert cannot break the loop
            self._entries = {k: v for k, v in dict(self._entries).items() if k in live}
        return Encoded(b"".join(parts), self.reply_type)
