"""List replies assembled from entries serialized once (ocid.server.listcache)."""

from __future__ import annotations

from dataclasses import dataclass

from cri_api.v1 import api_pb2

from ocid.server.listcache import EncodedEntries, _varint


@dataclass
class Item:
    id: str
    state: int
    labels: dict[str, str]


def entry(item: Item) -> api_pb2.PodSandbox:
    return api_pb2.PodSandbox(id=item.id, state=item.state, labels=item.labels,
                              metadata=api_pb2.PodSandboxMetadata(name=f"n-{item.id}"))


def direct(items: list[Item]) -> api_pb2.ListPodSandboxResponse:
    return api_pb2.ListPodSandboxResponse(items=[entry(i) for i in items])


def entries(built: list[str], live: set[str] | None = None) -> EncodedEntries:
    def build(item: Item) -> api_pb2.PodSandbox:
        built.append(item.id)
        return entry(item)
    return EncodedEntries(api_pb2.ListPodSandboxResponse, "items", build, lambda i: i.state,
                          lambda: live if live is not None else set(built))


def test_varint_matches_protobuf():
    assert _varint(0) == b"\x00"
    for n in (1, 127, 128, 300, 16383, 16384, 2**31):
        msg = api_pb2.PodSandbox(created_at=n)  # field 4, varint (0 is not serialized)
        assert msg.SerializeToString() == b"\x20" + _varint(n)


def test_reply_equals_the_directly_built_one_in_order():
    items = [Item(f"p{i}", i % 2, {"k": "v" * i}) for i in range(150)]  # lengths past 127
    assert entries([]).reply(items).message() == direct(items)
    assert entries([]).reply(list(reversed(items))).message() == direct(list(reversed(items)))
    assert entries([]).reply([]).message() == api_pb2.ListPodSandboxResponse()


def test_entries_are_rebuilt_only_when_their_version_changes():
    built: list[str] = []
    cache = entries(built)
    items = [Item("a", 0, {}), Item("b", 0, {})]
    cache.reply(items)
    cache.reply(items)
    assert built == ["a", "b"]
    items[1].state = 1  # NOTREADY
    assert cache.reply(items).message() == direct(items)
    assert built == ["a", "b", "b"]


def test_entries_of_removed_records_are_dropped_and_filtered_lists_keep_the_rest():
    built: list[str] = []
    live = {f"p{i}" for i in range(300)}
    cache = entries(built, live)
    items = [Item(f"p{i}", 0, {}) for i in range(300)]
    cache.reply(items)
    cache.reply(items[:1])  # a filtered list: the other entries stay
    assert len(cache._entries) == 300 and len(built) == 300
    live.clear()
    live.add("new")  # every old record removed
    only = [Item("new", 0, {})]
    assert cache.reply(only).message() == direct(only)
    assert list(cache._entries) == ["new"]
