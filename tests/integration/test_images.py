"""The CRI ImageService of a real ocid against a real docker-registry, and `ocic image`."""

from __future__ import annotations

import json
import base64
import os
import threading
import time
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2

from ocid.storage import ImageStore
from tests.support.fixtures import AUTH_PASSWORD, AUTH_USER
from tests.support.images import LayerSpec, build_layout, busybox_layer, push_layout
from tests.support.proxy import SlowProxy


def write_registries(ocid, text: str) -> None:
    (ocid.workdir / "containers" / "registries.conf").write_text(text)


def insecure(*hosts: str) -> str:
    return "".join(f'[[registry]]\nlocation = "{h}"\ninsecure = true\n\n' for h in hosts)


@pytest.fixture
def ocid(start_ocid, registry, auth_registry):
    """An ocid that treats the test registries as insecure (plain HTTP)."""
    daemon = start_ocid()
    write_registries(daemon, insecure(registry.host, auth_registry.host))
    return daemon


def pull(ocid, image: str, auth: api_pb2.AuthConfig | None = None) -> str:
    request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image))
    if auth is not None:
        request.auth.CopyFrom(auth)
    return ocid.image_stub().PullImage(request, timeout=120).image_ref


def status(ocid, image: str, verbose: bool = False) -> api_pb2.ImageStatusResponse:
    return ocid.image_stub().ImageStatus(
        api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=image), verbose=verbose), timeout=30)


def listed(ocid, image: str = "") -> list[api_pb2.Image]:
    request = api_pb2.ListImagesRequest()
    if image:
        request.filter.image.image = image
    return list(ocid.image_stub().ListImages(request, timeout=30).images)


def remove(ocid, image: str) -> None:
    ocid.image_stub().RemoveImage(
        api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=image)), timeout=30)


def rpc_error(call, *args) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args)
    return info.value


def test_pull_list_status_remove(ocid, busybox_image):
    image_id = pull(ocid, busybox_image.reference)
    assert image_id == busybox_image.config_digest
    [image] = listed(ocid)
    assert image.id == image_id
    assert list(image.repo_tags) == [busybox_image.reference]
    assert list(image.repo_digests) == [busybox_image.digest_reference]
    assert image.size > 1_000_000  # the static busybox

    for name in (busybox_image.reference, image_id, image_id.removeprefix("sha256:")[:12],
                 busybox_image.digest_reference):
        response = status(ocid, name)
        assert response.image.id == image_id, name
    verbose = json.loads(status(ocid, image_id, verbose=True).info["info"])
    assert verbose["manifestDigest"] == busybox_image.manifest_digest
    assert verbose["imageSpec"]["rootfs"]["diff_ids"] == list(busybox_image.image.diff_ids)
    assert [x.id for x in listed(ocid, busybox_image.reference)] == [image_id]
    assert listed(ocid, "127.0.0.1:1/nothing:here") == []

    remove(ocid, busybox_image.reference)
    assert not status(ocid, image_id).HasField("image")
    assert listed(ocid) == []
    remove(ocid, busybox_image.reference)  # absent: still succeeds


def test_pull_by_digest_and_remove_by_digest(ocid, busybox_image):
    image_id = pull(ocid, busybox_image.digest_reference)
    assert image_id == busybox_image.config_digest
    [image] = listed(ocid)
    assert list(image.repo_tags) == []  # pulled by digest only: no tag invented
    assert list(image.repo_digests) == [busybox_image.digest_reference]
    remove(ocid, busybox_image.digest_reference)
    assert listed(ocid) == []


def test_missing_image_and_bad_names_get_clear_errors(ocid, registry, busybox_image):
    err = rpc_error(pull, ocid, f"{registry.host}/library/busybox:nope")
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert f"{registry.host}/library/busybox:nope" in err.details()
    err = rpc_error(pull, ocid, "UPPER/Case::bad")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "invalid image reference" in err.details()
    err = rpc_error(pull, ocid, "")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_registry_not_marked_insecure_is_refused(start_ocid, registry, busybox_image):
    daemon = start_ocid()  # no registries.conf: TLS is required
    err = rpc_error(pull, daemon, busybox_image.reference)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert registry.host in err.details()
    assert "insecure" in err.details()  # says how to allow plain HTTP
    assert listed(daemon) == []


def test_prefix_remapped_to_a_local_mirror_keeps_the_original_name(ocid, registry, busybox_image):
    write_registries(ocid, insecure(registry.host) +
                     f'[[registry]]\nprefix = "registry.k8s.io"\nlocation = "{registry.host}/library"\n'
                     'insecure = true\n')
    image_id = pull(ocid, "registry.k8s.io/busybox:latest")
    assert image_id == busybox_image.config_digest
    [image] = listed(ocid)
    assert list(image.repo_tags) == ["registry.k8s.io/busybox:latest"]
    assert status(ocid, "registry.k8s.io/busybox").image.id == image_id


def test_short_names_resolve_through_search_registries(ocid, registry, auth_registry, busybox_image):
    # top-level keys before any [[registry]] table, or TOML puts them inside it
    write_registries(ocid, f'unqualified-search-registries = ["{registry.host}"]\n'
                     + insecure(registry.host))
    assert pull(ocid, "library/busybox") == busybox_image.config_digest
    write_registries(ocid, f'unqualified-search-registries = ["{registry.host}", "{auth_registry.host}"]\n'
                     + insecure(registry.host, auth_registry.host))
    err = rpc_error(pull, ocid, "library/busybox")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ambiguous" in err.details()


def test_an_alias_pulls_and_finds_the_image(ocid, registry, busybox_image):
    write_registries(ocid, f'[aliases]\n"mybox" = "{registry.host}/library/busybox"\n\n'
                     + insecure(registry.host))
    assert pull(ocid, "mybox") == busybox_image.config_digest
    assert status(ocid, "mybox").image.id == busybox_image.config_digest  # no re-pull needed
    assert list(listed(ocid)[0].repo_tags) == [busybox_image.reference]
    remove(ocid, "mybox")
    assert listed(ocid) == []


def test_policy_rejection_names_the_policy(ocid, registry, busybox_image):
    policy = ocid.workdir / "containers" / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}],
                                  "transports": {"docker": {registry.host: [{"type": "reject"}]}}}))
    err = rpc_error(pull, ocid, busybox_image.reference)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert str(policy) in err.details()
    assert "reject" in err.details()
    assert listed(ocid) == []


def test_pull_with_the_requests_credentials(ocid, auth_registry, busybox_image, tmp_path):
    built = build_layout(tmp_path / "layout", "latest", [busybox_layer()])
    reference = f"{auth_registry.host}/private/busybox:latest"
    push_layout(built.layout_dir, reference, creds=(AUTH_USER, AUTH_PASSWORD))

    err = rpc_error(pull, ocid, reference)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert auth_registry.host in err.details()
    wrong = api_pb2.AuthConfig(username=AUTH_USER, password="not-the-password")
    err = rpc_error(pull, ocid, reference, wrong)
    assert "not-the-password" not in err.details()
    assert pull(ocid, reference, api_pb2.AuthConfig(username=AUTH_USER, password=AUTH_PASSWORD)) \
        == built.config_digest
    remove(ocid, reference)
    auth = base64.b64encode(f"{AUTH_USER}:{AUTH_PASSWORD}".encode()).decode()
    assert pull(ocid, reference, api_pb2.AuthConfig(auth=auth)) == built.config_digest


def test_concurrent_pulls_of_one_image_do_the_work_once(ocid, registry, busybox_image):
    proxy = SlowProxy(("127.0.0.1", registry.port), bytes_per_second=4_000_000).start()
    try:
        write_registries(ocid, insecure(registry.host, proxy.host))
        reference = f"{proxy.host}/library/busybox:latest"
        results: list[str] = []
        threads = [threading.Thread(target=lambda: results.append(pull(ocid, reference)))
                   for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        proxy.stop()
    assert results == [busybox_image.config_digest] * 3
    assert ocid.log.count(f"pulling {reference}") == 1
    assert "already in progress" in ocid.log


def test_status_verbose_shows_pulls_in_flight(ocid, registry, busybox_image):
    proxy = SlowProxy(("127.0.0.1", registry.port), bytes_per_second=500_000).start()
    try:
        write_registries(ocid, insecure(registry.host, proxy.host))
        reference = f"{proxy.host}/library/busybox:latest"
        thread = threading.Thread(target=pull, args=(ocid, reference))
        thread.start()
        seen: list[dict] = []
        stub = ocid.runtime_stub()
        while thread.is_alive() and not any(p["done"] > 0 for p in seen):
            response = stub.Status(api_pb2.StatusRequest(verbose=True), timeout=10)
            seen = json.loads(response.info["pulls"])
            time.sleep(0.05)
        thread.join()
    finally:
        proxy.stop()
    [in_flight] = seen
    assert in_flight["image"] == reference
    assert 0 < in_flight["done"] < in_flight["total"]
    assert any(layer["state"] == "downloading" for layer in in_flight["layers"])
    response = ocid.runtime_stub().Status(api_pb2.StatusRequest(verbose=True), timeout=10)
    assert json.loads(response.info["pulls"]) == []


def test_a_stalled_blob_cancels_the_pull_and_names_the_blob(start_ocid, workdir, registry,
                                                           busybox_image):
    containers = workdir / "containers"
    daemon = start_ocid(config_text=(
        "[ocid.image]\npull_progress_timeout = 3\n"
        f'registries_conf = "{containers}/registries.conf"\n'
        f'signature_policy = "{containers}/policy.json"\n'
        f'auth_file = "{containers}/auth.json"\n'))
    proxy = SlowProxy(("127.0.0.1", registry.port), stall_after=200_000).start()
    try:
        write_registries(daemon, insecure(proxy.host))
        started = time.monotonic()
        err = rpc_error(pull, daemon, f"{proxy.host}/library/busybox:latest")
        elapsed = time.monotonic() - started
    finally:
        proxy.stop()
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert busybox_image.image.layer_digests[0] in err.details()
    assert "no progress" in err.details()
    assert elapsed < 30
    assert listed(daemon) == []


def test_image_fs_info(ocid, busybox_image):
    empty = ocid.image_stub().ImageFsInfo(api_pb2.ImageFsInfoRequest(), timeout=10)
    pull(ocid, busybox_image.reference)
    after = ocid.image_stub().ImageFsInfo(api_pb2.ImageFsInfoRequest(), timeout=10)
    [fs] = after.image_filesystems
    assert fs.fs_id.mountpoint == str(ocid.workdir / "root" / "storage")
    assert fs.used_bytes.value - empty.image_filesystems[0].used_bytes.value > 1_000_000
    assert fs.inodes_used.value > empty.image_filesystems[0].inodes_used.value


def test_multi_platform_index_picks_the_host(ocid, multiarch_image):
    image_id = pull(ocid, multiarch_image.reference)
    assert image_id == multiarch_image.config_digest
    assert list(listed(ocid)[0].repo_digests) == [multiarch_image.digest_reference]


def test_layers_with_whiteouts_and_opaque_dirs_mount_as_expected(ocid, registry, tmp_path):
    layers = [
        busybox_layer(),
        LayerSpec(files={"/data/keep": b"keep", "/data/gone": b"gone", "/opaque/old": b"old"},
                  compression="zstd"),
        LayerSpec(whiteouts=("/data/gone",), opaque_dirs=("/opaque",),
                  files={"/opaque/new": b"new", "/bin/su-like": b"#!"},
                  modes={"/bin/su-like": 0o4755}, compression="none"),
    ]
    built = build_layout(tmp_path / "layout", "latest", layers)
    reference = f"{registry.host}/test/whiteouts:latest"
    push_layout(built.layout_dir, reference)
    assert pull(ocid, reference) == built.config_digest
    root = check_mount(ocid, built.config_digest, lambda merged: (
        (merged / "data" / "keep").read_bytes() == b"keep",
        not (merged / "data" / "gone").exists(),
        sorted(os.listdir(merged / "opaque")) == ["new"],
        (merged / "bin" / "su-like").stat().st_mode & 0o7777 == 0o4755,
    ))
    assert all(root)


def check_mount(ocid, image_id: str, probe):
    """Mount a container root from ocid's store (as the pod feature will) and probe it."""
    store = ImageStore(str(ocid.workdir / "root" / "storage"))
    container = f"probe{time.time_ns()}"
    store.create_container(container, container, image_id)
    try:
        merged = Path(store.mount_container(container))
        return probe(merged)
    finally:
        store.remove_container(container)
        store.close()


def test_an_image_with_65_layers_pulls_and_mounts(ocid, registry, tmp_path):
    layers = [busybox_layer()] + [LayerSpec(files={f"/layers/{i:02d}": str(i).encode()})
                                  for i in range(64)]
    built = build_layout(tmp_path / "layout", "latest", layers)
    reference = f"{registry.host}/test/many:latest"
    push_layout(built.layout_dir, reference)
    assert pull(ocid, reference) == built.config_digest
    assert check_mount(ocid, built.config_digest,
                       lambda merged: sorted(os.listdir(merged / "layers"))) == \
        [f"{i:02d}" for i in range(64)]


def test_hostile_layer_is_rejected_and_touches_nothing(ocid, registry, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    hostile = LayerSpec(symlinks={"/evil": str(outside)}, files={"/evil/pwned": b"owned"})
    built = build_layout(tmp_path / "layout", "latest", [busybox_layer(), hostile])
    reference = f"{registry.host}/test/hostile:latest"
    push_layout(built.layout_dir, reference)
    err = rpc_error(pull, ocid, reference)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "evil" in err.details()
    assert list(outside.iterdir()) == []
    assert listed(ocid) == []


# ---- ocic image ------------------------------------------------------------------------------

def test_ocic_image_commands(ocid, busybox_image):
    out = ocid.ocic("image", "pull", busybox_image.reference).stdout
    assert out == f"Image is up to date for {busybox_image.config_digest}\n"
    assert ocid.ocic("image", "list", "--quiet").stdout.split() == [busybox_image.config_digest]
    text = ocid.ocic("image", "list").stdout
    assert f"ID: {busybox_image.config_digest}" in text
    assert f"Tag: {busybox_image.reference}" in text
    data = json.loads(ocid.ocic("image", "list", "--output", "json").stdout)
    assert data["images"][0]["repoTags"] == [busybox_image.reference]
    table = ocid.ocic("image", "list", "--output", "table").stdout.splitlines()
    assert table[0].split() == ["IMAGE", "TAG", "IMAGE", "ID", "SIZE"]
    assert table[1].split()[0] == f"{busybox_image.registry.host}/{busybox_image.repository}"
    status_out = json.loads(ocid.ocic("image", "status", "--id", busybox_image.reference,
                                      "--verbose", "-o", "json").stdout)
    assert status_out["status"]["id"] == busybox_image.config_digest
    assert status_out["info"]["info"]["manifestDigest"] == busybox_image.manifest_digest
    missing = ocid.ocic("image", "status", "--id", "nothing:here", check=False)
    assert missing.returncode == 1 and "image nothing:here not found" in missing.stderr
    assert ocid.ocic("image", "remove", "--id", busybox_image.reference).stdout.startswith("Deleted")
    assert ocid.ocic("image", "list", "--quiet").stdout == ""
    fsinfo = json.loads(ocid.ocic("image", "fsinfo").stdout)
    assert fsinfo["imageFilesystems"][0]["fsId"]["mountpoint"].endswith("/root/storage")


def test_ocic_pull_error_is_one_line(ocid, registry):
    result = ocid.ocic("image", "pull", f"{registry.host}/library/none:x", check=False)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "not found" in result.stderr


def run_on_a_terminal(command: list[str]) -> str:
    """Run ``command`` with a pseudo-terminal as its stdio (util-linux `script`); its output."""
    import shlex
    import subprocess

    result = subprocess.run(["script", "-q", "-e", "-c", shlex.join(command), "/dev/null"],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "COLUMNS": "120", "TERM": "xterm"})
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.parametrize("tool", ["ocic", "kpod"])
def test_pull_draws_live_progress_on_a_terminal(ocid, registry, busybox_image, tool):
    from .conftest import KPOD, OCIC

    proxy = SlowProxy(("127.0.0.1", registry.port), bytes_per_second=700_000).start()
    try:
        write_registries(ocid, insecure(registry.host, proxy.host))
        reference = f"{proxy.host}/library/busybox:latest"
        if tool == "ocic":
            command = [OCIC, "--connect", ocid.socket, "image", "pull", reference]
        else:
            command = [KPOD, "--config", str(ocid.workdir / "ocid.conf"), "--root",
                       str(ocid.workdir / "kpod-root"), "pull", reference]
        screen = run_on_a_terminal(command)
    finally:
        proxy.stop()
    layer = busybox_image.image.layer_digests[0].removeprefix("sha256:")[:12]
    assert layer in screen  # a bar per layer, labelled with its digest
    assert "MB" in screen or "kB" in screen  # bytes done / total
    assert busybox_image.config_digest.removeprefix("sha256:") in screen


def test_tls_registry_trusted_through_certs_dir(start_ocid, workdir, tmp_path):
    import warnings

    from tests.support.registry import LocalRegistry
    from tests.support.tls import make_test_ca

    ca = make_test_ca(tmp_path / "ca")
    certs = workdir / "certs.d"
    containers = workdir / "containers"
    daemon = start_ocid(config_text=(
        "[ocid.image]\n"
        f'certs_dirs = ["{certs}"]\n'
        f'registries_conf = "{containers}/registries.conf"\n'
        f'signature_policy = "{containers}/policy.json"\n'
        f'auth_file = "{containers}/auth.json"\n'))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the readiness probe does not verify
        tls_registry = LocalRegistry(tmp_path / "tls-registry",
                                     tls=(ca.server_cert, ca.server_key)).start()
    try:
        built = build_layout(tmp_path / "layout", "latest", [busybox_layer()])
        reference = f"{tls_registry.host}/secure/busybox:latest"
        push_layout(built.layout_dir, reference)  # skopeo, with verification off

        err = rpc_error(pull, daemon, reference)  # an unknown CA: refused, not downgraded
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert "TLS" in err.details() and tls_registry.host in err.details()

        host_dir = certs / tls_registry.host
        host_dir.mkdir(parents=True)
        (host_dir / "ca.crt").write_bytes(ca.ca_cert.read_bytes())
        assert pull(daemon, reference) == built.config_digest  # verified, not insecure
    finally:
        tls_registry.stop()
