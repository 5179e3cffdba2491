"""Image records in the store: lookup, names, removal with layer and blob collection; containers."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import pytest

from ocid.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from ocid.storage import ImageRecord, ImageStore
from ocid.storage.digest import sha256_digest
from tests.support.layers import Entry, add_image, make_layer

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="unpacking layers needs root")

BASE = [Entry("bin/", "dir"), Entry("bin/sh", data=b"shell")]


@pytest.fixture
def store(tmp_path) -> Iterator[ImageStore]:
    s = ImageStore(str(tmp_path / "storage"))
    yield s
    for container in s.list_containers():
        s.remove_container(container.id)
    s.close()


def layer_dirs(store: ImageStore) -> list[str]:
    return sorted(e for e in os.listdir(store.overlay_dir) if e != "l")


def test_put_and_get_by_every_kind_of_reference(store: ImageStore) -> None:
    image = add_image(store, [BASE, [Entry("app", data=b"app")]], names=["docker.io/library/a:1"])
    assert image.size == sum(layer.unpacked_size for layer in image.layers) > 0
    assert image.top_layer == image.layers[-1].chain_id
    assert image.created == "2024-01-01T00:00:00Z" and image.added > 0
    assert image.config["rootfs"]["diff_ids"] == [layer.diff_id for layer in image.layers]
    repo_digest = f"docker.io/library/a@{image.manifest_digest}"
    store.put_image(dataclasses.replace(image, names=[], digests=[repo_digest]))
    for ref in (image.id, image.id[7:], image.id[7:10], image.id[:12], "docker.io/library/a:1",
                repo_digest):
        assert store.get_image(ref) == store.get_image(image.id), ref
    assert store.get_image(image.id).names == ["docker.io/library/a:1"]  # merged, not replaced
    for missing in ("docker.io/library/b:1", "sha256:" + "0" * 64, "0" * 12, "ab"):
        with pytest.raises(NotFound):
            store.get_image(missing)


def _bare(image_id: str, *names: str) -> ImageRecord:
    """A record of an image without layers (no files needed)."""
    return ImageRecord(id=image_id, names=list(names), digests=[], manifest_digest=image_id,
                       manifest_media_type="m", config={}, layers=[], size=0, created="",
                       added=0.0, top_layer=None)


def test_ambiguous_prefix_is_refused(store: ImageStore) -> None:
    store.put_image(_bare("sha256:abc1" + "0" * 60))
    store.put_image(_bare("sha256:abc2" + "0" * 60))
    with pytest.raises(InvalidArgument, match="ambiguous"):
        store.get_image("abc")
    assert store.get_image("abc2").id == "sha256:abc2" + "0" * 60
    assert store.get_image("sha256:abc1").id == "sha256:abc1" + "0" * 60
    with pytest.raises(NotFound):
        store.get_image("ab")  # under 3 characters is never a prefix
    empty = store.get_image("abc2")
    assert empty.layers == [] and empty.top_layer is None and empty.size == 0


def test_list_images_is_oldest_first_and_complete(store: ImageStore) -> None:
    a = add_image(store, [BASE], names=["a:1"], label="a")
    b = add_image(store, [BASE, [Entry("b")]], names=["b:1", "b:2"], label="b")
    listed = store.list_images()
    assert [i.id for i in listed] == [a.id, b.id]
    assert listed[1] == store.get_image(b.id) and listed[1].names == ["b:1", "b:2"]
    assert len(listed[1].layers) == 2 and listed[1].layers[0] == listed[0].layers[0]


def test_put_needs_applied_layers(store: ImageStore) -> None:
    blob, layer = make_layer([Entry("x")])
    store.put_blob_bytes(blob, layer.digest)
    record = ImageRecord(id=sha256_digest(b"config"), names=["x:1"], digests=[],
                         manifest_digest=sha256_digest(b"m"), manifest_media_type="m", config={},
                         layers=[layer], size=0, created="", added=0.0, top_layer=layer.chain_id)
    with pytest.raises(FailedPrecondition, match=layer.chain_id):
        store.put_image(record)
    assert store.list_images() == []
    with pytest.raises(InvalidArgument):
        store.put_image(dataclasses.replace(record, id="busybox"))


def test_names_move_like_tags(store: ImageStore) -> None:
    a = add_image(store, [BASE], names=["app:latest", "app:1"], label="a")
    b = add_image(store, [BASE], names=["app:latest"], label="b")
    assert store.get_image("app:latest").id == b.id
    assert store.get_image(a.id).names == ["app:1"]
    store.tag_image(a.id, "app:latest")
    store.tag_image(a.id[:10], "app:stable")
    assert store.get_image("app:latest").id == a.id
    assert store.get_image(a.id).names == ["app:1", "app:latest", "app:stable"]
    assert store.get_image(b.id).names == []
    untagged = store.untag_image("app:1")
    assert untagged.id == a.id and untagged.names == ["app:latest", "app:stable"]
    with pytest.raises(NotFound, match="app:1"):
        store.untag_image("app:1")
    with pytest.raises(NotFound):
        store.tag_image("sha256:" + "1" * 64, "x:1")


def test_remove_collects_unshared_layers_and_blobs(store: ImageStore) -> None:
    a = add_image(store, [BASE, [Entry("a", data=b"a")]], names=["a:1"])
    b = add_image(store, [BASE, [Entry("b", data=b"b")]], names=["b:1"])
    assert a.layers[0] == b.layers[0] and len(layer_dirs(store)) == 3  # the base is shared
    store.remove_image("a:1")
    with pytest.raises(NotFound):
        store.get_image(a.id)
    assert layer_dirs(store) == sorted(layer.chain_id[7:] for layer in b.layers)
    assert len(os.listdir(os.path.join(store.overlay_dir, "l"))) == 2
    assert not store.has_blob(a.id) and not store.has_blob(a.manifest_digest)
    assert not store.has_blob(a.layers[1].digest) and store.has_blob(a.layers[0].digest)
    store.remove_image(b.id)
    assert layer_dirs(store) == [] and os.listdir(os.path.join(store.overlay_dir, "l")) == []
    assert os.listdir(os.path.join(store.blobs_dir, "sha256")) == []
    assert store.list_images() == []
    with pytest.raises(NotFound):
        store.remove_image(b.id)


def test_remove_refuses_an_image_in_use(store: ImageStore) -> None:
    image = add_image(store, [BASE], names=["a:1"])
    store.create_container("c" * 64, "web", image.id)
    with pytest.raises(FailedPrecondition) as info:
        store.remove_image(image.id)
    assert str(info.value) == f"image {image.id} is in use by container {'c' * 64} (web)"
    assert store.get_image("a:1").id == image.id and len(layer_dirs(store)) == 1
    store.remove_container("c" * 64)
    store.remove_image(image.id)
    assert layer_dirs(store) == []


def test_pinned_layers_survive_a_concurrent_remove(store: ImageStore, tmp_path) -> None:
    image = add_image(store, [BASE], names=["a:1"])
    # Another process (another store object: its own pins) is pulling an image with this base.
    other = ImageStore(store.root)
    try:
        other.layer_info(image.layers[0].chain_id)
        store.remove_image(image.id)
        assert store.has_layer(image.layers[0].chain_id)  # kept for the pull in progress
        assert store.has_blob(image.layers[0].digest)  # and its blob, for push and save
        record = dataclasses.replace(image, names=["b:1"])
        other.put_image(record)
        assert other.get_image("b:1").id == image.id
    finally:
        other.close()
    store.remove_image("b:1")
    assert layer_dirs(store) == []
    assert not store.has_blob(image.layers[0].digest)


def test_containers_are_recorded(store: ImageStore) -> None:
    image = add_image(store, [BASE], names=["a:1"])
    assert store.create_container("c1", "one", "a:1") == "c1"
    store.create_container("c2", "two", image.id)
    with pytest.raises(AlreadyExists, match="c1"):
        store.create_container("c1", "other", image.id)
    with pytest.raises(AlreadyExists, match="one"):
        store.create_container("c3", "one", image.id)
    with pytest.raises(NotFound):
        store.create_container("c4", "four", "nope:1")
    for bad in ("", "../x", "a/b", ".hidden"):
        with pytest.raises(InvalidArgument):
            store.create_container(bad, "bad", image.id)
    listed = store.list_containers()
    assert [(c.id, c.name, c.image_id) for c in listed] == [("c1", "one", image.id),
                                                            ("c2", "two", image.id)]
    cdir = os.path.join(store.containers_dir, "c1")
    assert sorted(os.listdir(cdir)) == ["empty", "merged", "upper", "work"]
    store.remove_container("c1")
    store.remove_container("c1")  # idempotent
    store.remove_container("never-existed")
    store.remove_container("../../etc")
    assert not os.path.exists(cdir) and [c.id for c in store.list_containers()] == ["c2"]
    with pytest.raises(NotFound):
        store.mount_container("c1")
    with pytest.raises(NotFound):
        store.unmount_container("c1")


def test_fs_usage_counts_bytes_and_inodes(store: ImageStore) -> None:
    before_bytes, before_inodes = store.fs_usage()
    add_image(store, [[Entry("big", data=os.urandom(1 << 20)),
                       Entry("link", "hardlink", target="big")]])
    used_bytes, used_inodes = store.fs_usage()
    assert used_bytes - before_bytes >= 2 << 20  # the blob and the unpacked file
    assert used_bytes - before_bytes < 3 << 20  # the hard link is counted once
    assert used_inodes > before_inodes


def test_deferred_container_delete_moves_files_out_then_empties_the_trash(store: ImageStore,
                                                                          tmp_path) -> None:
    add_image(store, [BASE], names=["a:1"])
    store.create_container("c1", "one", "a:1")
    store.create_container("c2", "two", "a:1")
    store.remove_container("c1", defer_delete=True)
    assert not os.path.exists(os.path.join(store.containers_dir, "c1"))
    assert [c.id for c in store.list_containers()] == ["c2"]
    store.create_container("c3", "one", "a:1")  # the name is free at once
    assert os.listdir(store.tmp_dir) == ["c1.deleted"]
    store.empty_trash()
    assert os.listdir(store.tmp_dir) == []

    store.remove_container("c2", defer_delete=True)  # a crash before the trash is emptied:
    reopened = ImageStore(store.root)  # opening leaves it (a daemon empties it in the
    try:                                # background), the record is gone
        assert [c.id for c in reopened.list_containers()] == ["c3"]
        assert os.listdir(store.tmp_dir) == ["c2.deleted"]
        reopened.empty_trash()
        assert os.listdir(store.tmp_dir) == []
    finally:
        reopened.close()
