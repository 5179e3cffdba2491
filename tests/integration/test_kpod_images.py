"""kpod's image commands on ocid's storage, with and without a running ocid."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import pytest

from ocid.storage import ImageStore
from ocid.image.manifest import Platform
from tests.support.fixtures import AUTH_PASSWORD, AUTH_USER
from tests.support.images import LayerSpec, build_layout, busybox_layer, push_layout

from .conftest import KPOD, OCIC, write_config
from .test_images import insecure, listed, pull


class Kpod:
    """Runs kpod on the storage under ``workdir`` (the same one an ocid there uses)."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.config = workdir / "ocid.conf"

    def __call__(self, *args: str, check: bool = True, input: bytes | None = None,
                 text: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [KPOD, "--config", str(self.config), "--root", str(self.workdir / "root"),
             "--runroot", str(self.workdir / "run"), *args],
            capture_output=True, input=input if not text or input is None else input.decode(),
            text=text, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"kpod {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    @property
    def auth_file(self) -> Path:
        return self.workdir / "containers" / "auth.json"


@pytest.fixture
def kpod(workdir, registry, auth_registry) -> Kpod:
    write_config(workdir)
    (workdir / "containers" / "registries.conf").write_text(insecure(registry.host, auth_registry.host))
    return Kpod(workdir)


def test_pull_list_inspect_history_tag_and_remove(kpod, busybox_image):
    image_hex = busybox_image.config_digest.removeprefix("sha256:")
    assert kpod("pull", "--quiet", busybox_image.reference).stdout == f"{image_hex}\n"

    table = kpod("images").stdout.splitlines()
    assert table[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    row = table[1].split()
    assert row[:3] == [f"{busybox_image.registry.host}/library/busybox", "latest", image_hex[:12]]
    assert row[-1] == "MB"  # "2.01 MB"
    assert kpod("images", "--quiet").stdout.split() == [image_hex[:12]]
    assert kpod("images", "-q", "--no-trunc").stdout.split() == [busybox_image.config_digest]
    assert busybox_image.manifest_digest in kpod("images", "--digests").stdout
    [entry] = json.loads(kpod("images", "--format", "json").stdout)
    assert entry["Id"] == image_hex and entry["Names"] == [busybox_image.reference]
    assert kpod("images", "-q", "--filter", "reference=*busybox*").stdout.split() == [image_hex[:12]]
    assert kpod("images", "-q", "--filter", "reference=*nothing*").stdout == ""
    assert kpod("images", "-q", "--filter", "dangling=true").stdout == ""

    kpod("tag", busybox_image.reference, "localhost/mine:v1")
    [inspected] = json.loads(kpod("inspect", "localhost/mine:v1").stdout)
    assert inspected["Id"] == image_hex
    assert sorted(inspected["RepoTags"]) == sorted([busybox_image.reference, "localhost/mine:v1"])
    assert inspected["RootFS"]["Layers"] == list(busybox_image.image.diff_ids)
    assert inspected["Os"] == "linux"
    history = json.loads(kpod("history", "--format", "json", "localhost/mine:v1").stdout)
    assert history and history[0]["size"] > 1_000_000

    refused = kpod("rmi", image_hex, check=False)  # an ID with two names needs --force
    assert refused.returncode == 1 and "several names" in refused.stderr
    assert kpod("rmi", "localhost/mine:v1").stdout == "Untagged: localhost/mine:v1\n"
    assert json.loads(kpod("inspect", image_hex).stdout)[0]["RepoTags"] == [busybox_image.reference]
    kpod("tag", image_hex, "localhost/again:v2")
    removed = kpod("rmi", "--force", image_hex).stdout
    assert f"Deleted: {image_hex}" in removed
    assert kpod("images", "-q").stdout == ""

    missing = kpod("rmi", "localhost/nothing:here", check=False)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "kpod: image 'localhost/nothing:here' not found"


def test_rmi_refuses_an_image_in_use_by_a_container(kpod, busybox_image):
    kpod("pull", "-q", busybox_image.reference)
    store = ImageStore(str(kpod.workdir / "root" / "storage"))
    try:
        store.create_container("c0ffee", "k8s_web_default", busybox_image.config_digest)
        result = kpod("rmi", busybox_image.reference, check=False)
        assert result.returncode == 1
        assert "c0ffee" in result.stderr and "in use" in result.stderr
        assert kpod("images", "-q", "--no-trunc").stdout.split() == [busybox_image.config_digest]
    finally:
        store.remove_container("c0ffee")
        store.close()
    kpod("rmi", busybox_image.reference)


def test_import_push_pull_save_load_round_trip(kpod, start_ocid, registry, tmp_path):
    rootfs = tmp_path / "rootfs.tar"
    rootfs.write_bytes(busybox_layer().tar_bytes())
    image_hex = kpod("import", str(rootfs), "localhost/roundtrip:1",
                     "--change", 'CMD ["/bin/sh", "-c", "echo hi"]', "--change", "ENV GREETING=hello",
                     "--message", "made by a test").stdout.strip()
    [inspected] = json.loads(kpod("inspect", "localhost/roundtrip:1").stdout)
    assert inspected["Config"]["Cmd"] == ["/bin/sh", "-c", "echo hi"]
    assert "GREETING=hello" in inspected["Config"]["Env"]
    assert inspected["History"][0]["comment"] == "made by a test"

    target = f"{registry.host}/roundtrip/busybox:1"
    kpod("push", "--tls-verify=false", "localhost/roundtrip:1", f"docker://{target}")

    ocid = start_ocid(subdir="daemon")  # its own, empty store
    (ocid.workdir / "containers" / "registries.conf").write_text(insecure(registry.host))
    assert pull(ocid, target) == f"sha256:{image_hex}"
    listing = subprocess.run([OCIC, "--connect", ocid.socket, "image", "list", "--quiet"],
                             capture_output=True, text=True, timeout=60).stdout
    assert listing.split() == [f"sha256:{image_hex}"]

    on_daemon = Kpod(ocid.workdir)  # kpod on the daemon's store while it runs
    for fmt in ("docker-archive", "oci-archive"):
        archive = tmp_path / f"image-{fmt}.tar"
        on_daemon("save", "--format", fmt, "-o", str(archive), target)
        on_daemon("rmi", target)
        assert listed(ocid) == []
        assert on_daemon("load", "-q", "-i", str(archive)).stdout.strip() == image_hex
        [image] = listed(ocid)
        assert image.id == f"sha256:{image_hex}"
        assert target in image.repo_tags


def test_load_from_standard_input_and_pull_from_an_oci_layout(kpod, tmp_path):
    built = build_layout(tmp_path / "layout", "latest", [busybox_layer(), LayerSpec(files={"/x": b"x"})])
    kpod("pull", f"oci:{built.layout_dir}:latest")
    assert kpod("images", "-q", "--no-trunc").stdout.split() == [built.config_digest]
    archive = kpod("save", "--format", "docker-archive", built.config_digest, text=False).stdout
    kpod("rmi", "--force", built.config_digest)
    loaded = kpod("load", "-q", input=archive, text=False).stdout.decode().strip()
    assert loaded == built.config_digest.removeprefix("sha256:")


def test_pull_a_chosen_platform(kpod, multiarch_image):
    host = str(Platform.host())
    other = next(p for p in multiarch_image.index.images if p != host)
    assert kpod("pull", "-q", multiarch_image.reference).stdout.strip() == \
        multiarch_image.config_digest.removeprefix("sha256:")
    chosen = kpod("pull", "-q", "--platform", other, multiarch_image.reference).stdout.strip()
    assert chosen == multiarch_image.index.images[other].config_digest.removeprefix("sha256:")
    bad = kpod("pull", "--platform", "windows/s390x", multiarch_image.reference, check=False)
    assert bad.returncode == 1 and "windows/s390x" in bad.stderr


def test_login_logout_and_stored_credentials(kpod, start_ocid, workdir, auth_registry, tmp_path):
    built = build_layout(tmp_path / "layout", "latest", [busybox_layer()])
    reference = f"{auth_registry.host}/secret/busybox:latest"
    push_layout(built.layout_dir, reference, creds=(AUTH_USER, AUTH_PASSWORD))

    denied = kpod("pull", reference, check=False)
    assert denied.returncode == 1 and auth_registry.host in denied.stderr

    wrong = kpod("login", "-u", AUTH_USER, "-p", "bad-password", auth_registry.host, check=False)
    assert wrong.returncode == 1
    assert len(wrong.stderr.strip().splitlines()) == 1
    assert "bad-password" not in wrong.stderr + wrong.stdout
    assert not kpod.auth_file.exists()

    login = kpod("login", "-u", AUTH_USER, "--password-stdin", auth_registry.host,
                 input=f"{AUTH_PASSWORD}\n".encode())
    assert "Login Succeeded" in login.stdout
    assert auth_registry.host in json.loads(kpod.auth_file.read_text())["auths"]
    assert kpod.auth_file.stat().st_mode & 0o777 == 0o600
    assert kpod("pull", "-q", reference).stdout.strip() == built.config_digest.removeprefix("sha256:")

    # ocid reads the same auth file (its config points at it): no credentials in the request
    ocid = start_ocid()
    (workdir / "containers" / "registries.conf").write_text(insecure(auth_registry.host))
    kpod("rmi", reference)
    assert pull(ocid, reference) == built.config_digest

    assert kpod("logout", auth_registry.host).stdout.startswith("Removed login credentials")
    assert auth_registry.host not in json.loads(kpod.auth_file.read_text()).get("auths", {})
    again = kpod("logout", auth_registry.host, check=False)
    assert again.returncode == 1 and "not logged into" in again.stderr


def test_ocid_and_kpod_pulling_at_the_same_moment_store_one_copy(start_ocid, workdir, registry,
                                                                busybox_image):
    ocid = start_ocid()
    (workdir / "containers" / "registries.conf").write_text(insecure(registry.host))
    kpod = Kpod(workdir)
    results: dict[str, str] = {}

    def by_kpod() -> None:
        results["kpod"] = "sha256:" + kpod("pull", "-q", busybox_image.reference).stdout.strip()

    thread = threading.Thread(target=by_kpod)
    thread.start()
    results["ocid"] = pull(ocid, busybox_image.reference)
    thread.join()
    assert results == {"kpod": busybox_image.config_digest, "ocid": busybox_image.config_digest}
    overlay = workdir / "root" / "storage" / "overlay"
    layers = [d for d in overlay.iterdir() if d.name != "l" and not d.name.startswith(".")]
    assert len(layers) == len(busybox_image.image.diff_ids)
    assert [image.id for image in listed(ocid)] == [busybox_image.config_digest]


def test_a_hex_looking_name_is_a_name_not_an_id_prefix(kpod, busybox_image, tmp_path):
    other = build_layout(tmp_path / "layout", "latest", [LayerSpec(files={"/other": b"other"})])
    kpod("pull", f"oci:{other.layout_dir}:latest")
    kpod("pull", "-q", busybox_image.reference)
    prefix = other.config_digest.removeprefix("sha256:")[:5]
    kpod("tag", busybox_image.reference, prefix)  # the name docker.io/library/<prefix>:latest
    [by_name] = json.loads(kpod("inspect", prefix).stdout)
    assert by_name["Id"] == busybox_image.config_digest.removeprefix("sha256:")
    kpod("rmi", prefix)  # removes that name, never the other image
    ids = kpod("images", "-q", "--no-trunc").stdout.split()
    assert sorted(ids) == sorted([busybox_image.config_digest, other.config_digest])
    [by_prefix] = json.loads(kpod("inspect", prefix).stdout)  # now only the ID prefix matches
    assert by_prefix["Id"] == other.config_digest.removeprefix("sha256:")


def test_policy_applies_to_archives_too(kpod, busybox_image, tmp_path):
    kpod("pull", "-q", busybox_image.reference)
    archive = tmp_path / "image.tar"
    kpod("save", "-o", str(archive), busybox_image.reference)
    policy = kpod.workdir / "containers" / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}],
                                  "transports": {"docker-archive": {"": [{"type": "reject"}]}}}))
    refused = kpod("load", "-i", str(archive), check=False)
    assert refused.returncode == 1
    assert str(policy) in refused.stderr and "docker-archive" in refused.stderr


def test_file_errors_are_one_line(kpod, busybox_image):
    kpod("pull", "-q", busybox_image.reference)
    result = kpod("save", "-o", "/proc/forbidden/image.tar", busybox_image.reference, check=False)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
