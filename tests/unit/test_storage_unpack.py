"""Applying layers: faithful unpacking, whiteouts, compression detection, hostile layers."""

from __future__ import annotations

import gzip
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocid.errors import FailedPrecondition, InvalidArgument, NotFound
from ocid.storage import DigestMismatch, ImageStore, LayerInfo, chain_ids
from ocid.storage.digest import sha256_digest
from tests.support.layers import Entry, compress, make_layer, make_tar

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="unpacking layers needs root")

CAP_NET_BIND_SERVICE = bytes([1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])


@pytest.fixture
def store(tmp_path) -> Iterator[ImageStore]:
    s = ImageStore(str(tmp_path / "storage"))
    yield s
    s.close()


def apply(store: ImageStore, entries: list[Entry], compression: str = "gzip") -> Path:
    """Ingest and apply one bottom layer; returns its diff directory."""
    blob, layer = make_layer(entries, compression)
    store.put_blob_bytes(blob, layer.digest)
    applied = store.apply_layer(layer, None)
    assert applied.unpacked_size == len(make_tar(entries))
    return diff_dir(store, layer.chain_id)


def diff_dir(store: ImageStore, chain: str) -> Path:
    return Path(store.overlay_dir) / chain.split(":")[1] / "diff"


def assert_no_layer(store: ImageStore) -> None:
    assert sorted(os.listdir(store.overlay_dir)) == ["l"]
    assert os.listdir(os.path.join(store.overlay_dir, "l")) == []
    with store._db.read() as conn:
        assert conn.execute("SELECT COUNT(*) FROM layers").fetchone()[0] == 0


def test_unpack_is_faithful(store: ImageStore) -> None:
    entries = [
        Entry("bin/", "dir", mtime=1_500_000_000),
        Entry("bin/su", data=b"#!su", mode=0o4755, mtime=1_400_000_000),
        Entry("bin/wall", data=b"w", mode=0o2755, gid=5),
        Entry("bin/ping", data=b"p", mode=0o755,
              xattrs={"security.capability": CAP_NET_BIND_SERVICE}),
        Entry("home/user/notes", data=b"mine", mode=0o600, uid=1000, gid=1001,
              xattrs={"user.comment": b"\x00\xff binary \x80"}),
        Entry("tmp/", "dir", mode=0o1777),
        Entry("bin/sh", "symlink", target="/bin/busybox", uid=33, gid=34, mtime=1_300_000_000),
        Entry("bin/su-link", "hardlink", target="bin/su"),
        Entry("dev/null", "char", mode=0o666, major=1, minor=3),
        Entry("dev/loop0", "block", mode=0o660, gid=6, major=7, minor=0),
        Entry("run/pipe", "fifo", mode=0o620),
        Entry("big", data=os.urandom(3 << 20)),
    ]
    root = apply(store, entries)
    su = os.lstat(root / "bin/su")
    assert stat.S_IMODE(su.st_mode) == 0o4755 and su.st_mtime == 1_400_000_000
    assert (root / "bin/su").read_bytes() == b"#!su"
    wall = os.lstat(root / "bin/wall")
    assert stat.S_IMODE(wall.st_mode) == 0o2755 and wall.st_gid == 5
    assert os.getxattr(root / "bin/ping", "security.capability") == CAP_NET_BIND_SERVICE
    notes = os.lstat(root / "home/user/notes")
    assert (notes.st_uid, notes.st_gid, stat.S_IMODE(notes.st_mode)) == (1000, 1001, 0o600)
    assert os.getxattr(root / "home/user/notes", "user.comment") == b"\x00\xff binary \x80"
    assert stat.S_IMODE(os.lstat(root / "tmp").st_mode) == 0o1777
    sh = os.lstat(root / "bin/sh")
    assert stat.S_ISLNK(sh.st_mode) and os.readlink(root / "bin/sh") == "/bin/busybox"
    assert (sh.st_uid, sh.st_gid, sh.st_mtime) == (33, 34, 1_300_000_000)
    assert os.lstat(root / "bin/su-link").st_ino == su.st_ino and su.st_nlink == 2
    null = os.lstat(root / "dev/null")
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(null.st_mode) == 0o666
    loop = os.lstat(root / "dev/loop0")
    assert stat.S_ISBLK(loop.st_mode) and loop.st_rdev == os.makedev(7, 0) and loop.st_gid == 6
    pipe = os.lstat(root / "run/pipe")
    assert stat.S_ISFIFO(pipe.st_mode) and stat.S_IMODE(pipe.st_mode) == 0o620
    # Directory mtimes are set after their contents are written.
    assert os.lstat(root / "bin").st_mtime == 1_500_000_000
    assert os.lstat(root / "tmp").st_mtime == 1_600_000_000
    assert (root / "big").read_bytes() == entries[-1].data
    # Parents the tar does not list are made 0755; the layer root is 0755 root:root.
    assert stat.S_IMODE(os.lstat(root / "home/user").st_mode) == 0o755
    top = os.lstat(root)
    assert (top.st_uid, top.st_gid, stat.S_IMODE(top.st_mode)) == (0, 0, 0o755)


def test_root_entry_sets_the_layer_root(store: ImageStore) -> None:
    root = apply(store, [Entry("./", "dir", mode=0o750, gid=7), Entry("./etc/", "dir")])
    st = os.lstat(root)
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o750, 7)
    assert (root / "etc").is_dir()


def test_leading_slash_and_dot_are_stripped(store: ImageStore, tmp_path) -> None:
    root = apply(store, [Entry("/abs/file", data=b"a"), Entry("./rel/file", data=b"r"),
                         Entry("a/b/../c", data=b"c")])
    assert (root / "abs/file").read_bytes() == b"a"
    assert (root / "rel/file").read_bytes() == b"r"
    assert (root / "a/c").read_bytes() == b"c"
    assert not Path("/abs/file").exists()


def test_whiteouts_become_overlay_whiteouts(store: ImageStore) -> None:
    root = apply(store, [Entry("etc/", "dir"), Entry("etc/.wh.passwd"),
                         Entry("opt/app/", "dir"), Entry("opt/app/.wh..wh..opq"),
                         Entry("opt/app/new", data=b"n"), Entry(".wh..wh.plnk/", "dir"),
                         Entry(".wh..wh.plnk/123.456", data=b"aufs"),
                         Entry("var/.wh..wh..opq")])
    wh = os.lstat(root / "etc/passwd")
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0 and (wh.st_uid, wh.st_gid) == (0, 0)
    assert not (root / "etc/.wh.passwd").exists()
    assert os.getxattr(root / "opt/app", "trusted.overlay.opaque") == b"y"
    assert (root / "opt/app/new").read_bytes() == b"n"
    assert os.getxattr(root / "var", "trusted.overlay.opaque") == b"y"
    assert sorted(os.listdir(root)) == ["etc", "opt", "var"]


def test_later_entries_replace_earlier_ones(store: ImageStore, tmp_path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("original")
    root = apply(store, [
        Entry("d/", "dir"), Entry("d/keep", data=b"k"), Entry("d/", "dir", mode=0o700),
        Entry("x/", "dir"), Entry("x/inner", data=b"i"), Entry("x", data=b"now a file"),
        Entry("f", data=b"file"), Entry("f/", "dir"),
        Entry("evil", "symlink", target=str(outside)), Entry("evil", data=b"not followed"),
    ])
    assert (root / "d/keep").read_bytes() == b"k"
    assert stat.S_IMODE(os.lstat(root / "d").st_mode) == 0o700
    assert (root / "x").read_bytes() == b"now a file"
    assert (root / "f").is_dir()
    assert not (root / "evil").is_symlink() and (root / "evil").read_bytes() == b"not followed"
    assert outside.read_text() == "original"


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_compression_is_detected_by_magic(store: ImageStore, compression: str) -> None:
    blob, layer = make_layer([Entry("hello", data=b"world" * 1000)], compression)
    layer.media_type = "application/vnd.oci.image.layer.v1.tar+gzip"  # deliberately wrong
    store.put_blob_bytes(blob, layer.digest)
    store.apply_layer(layer, None)
    assert (diff_dir(store, layer.chain_id) / "hello").read_bytes() == b"world" * 1000


def test_multi_frame_zstd(store: ImageStore) -> None:
    tar = make_tar([Entry("a", data=b"1" * 100_000), Entry("b", data=b"2" * 100_000)])
    blob = compress(tar[:50_000], "zstd") + compress(tar[50_000:], "zstd")
    layer = LayerInfo(sha256_digest(blob), sha256_digest(tar), "x", len(blob), sha256_digest(tar))
    store.put_blob_bytes(blob, layer.digest)
    store.apply_layer(layer, None)
    assert (diff_dir(store, layer.chain_id) / "b").read_bytes() == b"2" * 100_000


def test_layers_stack_and_apply_is_idempotent(store: ImageStore) -> None:
    base_blob, base = make_layer([Entry("a", data=b"a")])
    top_blob, top = make_layer([Entry("b", data=b"b")])
    top.chain_id = chain_ids([base.diff_id, top.diff_id])[1]
    store.put_blob_bytes(base_blob, base.digest)
    store.put_blob_bytes(top_blob, top.digest)
    with pytest.raises(FailedPrecondition, match=base.chain_id):
        store.apply_layer(top, base.chain_id)
    first = store.apply_layer(base, None)
    inode = os.lstat(diff_dir(store, base.chain_id)).st_ino
    again = store.apply_layer(base, None)
    assert again.unpacked_size == first.unpacked_size > 0
    assert os.lstat(diff_dir(store, base.chain_id)).st_ino == inode  # not unpacked twice
    assert store.apply_layer(top, base.chain_id).chain_id == top.chain_id
    assert store.has_layer(base.chain_id) and store.has_layer(top.chain_id)
    assert store.layer_info(top.chain_id).unpacked_size == len(make_tar([Entry("b", data=b"b")]))
    # Each layer has a short link l/<ID> -> ../<chain hex>/diff.
    link = (Path(store.overlay_dir) / top.chain_id.split(":")[1] / "link").read_text()
    assert len(link) == 26
    assert os.readlink(Path(store.overlay_dir) / "l" / link) == f"../{top.chain_id[7:]}/diff"


def test_wrong_chain_id_is_refused(store: ImageStore) -> None:
    blob, layer = make_layer([Entry("a")])
    store.put_blob_bytes(blob, layer.digest)
    layer.chain_id = sha256_digest(b"something else")
    with pytest.raises(InvalidArgument, match="chain ID"):
        store.apply_layer(layer, None)
    assert_no_layer(store)


def test_missing_blob_is_not_found(store: ImageStore) -> None:
    _, layer = make_layer([Entry("a")])
    with pytest.raises(NotFound, match=layer.digest):
        store.apply_layer(layer, None)
    assert_no_layer(store)


def test_diff_id_mismatch_leaves_no_layer(store: ImageStore) -> None:
    blob, layer = make_layer([Entry("a", data=b"a" * 10_000)])
    layer.diff_id = layer.chain_id = sha256_digest(b"not this tar")
    store.put_blob_bytes(blob, layer.digest)
    with pytest.raises(DigestMismatch, match=layer.diff_id):
        store.apply_layer(layer, None)
    assert_no_layer(store)
    assert not store.has_layer(layer.chain_id)


def test_truncated_gzip_leaves_no_layer(store: ImageStore) -> None:
    tar = make_tar([Entry(f"f{i}", data=os.urandom(20_000)) for i in range(20)])
    blob = gzip.compress(tar)[:-5000]
    layer = LayerInfo(sha256_digest(blob), sha256_digest(tar), "x", len(blob), sha256_digest(tar))
    store.put_blob_bytes(blob, layer.digest)
    with pytest.raises(InvalidArgument):
        store.apply_layer(layer, None)
    assert_no_layer(store)


def test_garbage_blob_leaves_no_layer(store: ImageStore) -> None:
    blob = b"\x1f\x8b this is no gzip stream" * 10
    layer = LayerInfo(sha256_digest(blob), sha256_digest(b"x"), "x", len(blob), sha256_digest(b"x"))
    store.put_blob_bytes(blob, layer.digest)
    with pytest.raises(InvalidArgument):
        store.apply_layer(layer, None)
    assert_no_layer(store)


def _hostile_layers(outside: Path) -> dict[str, list[Entry]]:
    return {
        "symlink then write through it": [
            Entry("evil", "symlink", target=str(outside)), Entry("evil/pwned", data=b"owned")],
        "relative symlink then write through it": [
            Entry("evil", "symlink", target="../../../../../../../../" + str(outside)),
            Entry("evil/pwned", data=b"owned")],
        "directory through a symlink": [
            Entry("evil", "symlink", target=str(outside)), Entry("evil/sub/", "dir")],
        "dot-dot entry": [Entry("ok", data=b"fine"), Entry("../../pwned", data=b"owned")],
        "dot-dot inside the path": [Entry("a/../../pwned", data=b"owned")],
        "hard link to /etc/passwd": [Entry("passwd", "hardlink", target="/etc/passwd")],
        "hard link escaping with dot-dot": [
            Entry("passwd", "hardlink", target="../../../../../../../../etc/passwd")],
        "hard link through a symlink": [
            Entry("etc", "symlink", target="/etc"),
            Entry("passwd", "hardlink", target="etc/passwd")],
        "whiteout through a symlink": [
            Entry("evil", "symlink", target=str(outside)), Entry("evil/.wh.victim")],
        "opaque marker through a symlink": [
            Entry("evil", "symlink", target=str(outside)), Entry("evil/.wh..wh..opq")],
        "hard link to a symlink's target dir": [
            Entry("evil", "symlink", target=str(outside)),
            Entry("x", "hardlink", target="evil/victim")],
    }


@pytest.mark.parametrize("case", list(_hostile_layers(Path("/x"))))
def test_hostile_layers_change_nothing_outside(store: ImageStore, tmp_path, case: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("safe")
    passwd = os.stat("/etc/passwd")
    cwd_before = sorted(os.listdir(tmp_path))
    entries = _hostile_layers(outside)[case]
    with pytest.raises(InvalidArgument) as info:
        apply(store, entries)
    assert repr(entries[-1].name.rstrip("/")) in str(info.value)  # names the offending entry
    assert sorted(os.listdir(outside)) == ["victim"]
    assert (outside / "victim").read_text() == "safe"
    assert os.listxattr(outside) == []
    assert sorted(os.listdir(tmp_path)) == cwd_before
    after = os.stat("/etc/passwd")
    assert (after.st_nlink, after.st_mtime, after.st_ino) == (passwd.st_nlink, passwd.st_mtime,
                                                              passwd.st_ino)
    assert_no_layer(store)


def test_a_crashed_apply_is_redone(store: ImageStore) -> None:
    blob, layer = make_layer([Entry("real", data=b"r")])
    store.put_blob_bytes(blob, layer.digest)
    # As if a crash came after the rename and before the row: a directory and no record.
    stale = diff_dir(store, layer.chain_id)
    stale.mkdir(parents=True)
    (stale / "junk").write_text("half")
    tmp = Path(store.overlay_dir) / f".tmp-{layer.chain_id[7:]}-dead"
    tmp.mkdir()
    assert not store.has_layer(layer.chain_id)
    store.apply_layer(layer, None)
    assert sorted(os.listdir(diff_dir(store, layer.chain_id))) == ["real"]
    assert not tmp.exists()


def test_leftovers_of_a_crash_are_cleaned_at_start(tmp_path) -> None:
    store = ImageStore(str(tmp_path / "s"))
    hexpart = "ab" * 32
    (Path(store.overlay_dir) / hexpart / "diff").mkdir(parents=True)
    (Path(store.overlay_dir) / f".tmp-{hexpart}-0123").mkdir()
    store.close()
    ImageStore(str(tmp_path / "s")).close()
    assert os.listdir(store.overlay_dir) == ["l"]
