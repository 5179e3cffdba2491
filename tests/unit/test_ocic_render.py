"""Text blocks and tables of pods and containers, from hand-built CRI messages."""

from __future__ import annotations

from datetime import UTC, timedelta, timezone

from cri_api.v1 import api_pb2

from ocic import render

CREATED = 1795928111_615741483  # 2026-11-29 04:55:11.615741483 UTC
POD_ID = "a" * 64
CTR_ID = "c" * 64


def pod_status(**overrides):
    status = api_pb2.PodSandboxStatus(
        id=POD_ID,
        metadata=api_pb2.PodSandboxMetadata(name="web", uid="u1", namespace="ns", attempt=1),
        state=api_pb2.SANDBOX_READY, created_at=CREATED,
        network=api_pb2.PodSandboxNetworkStatus(ip="10.88.0.5"),
        labels={"b": "2", "a": "1"}, annotations={"owner": "me"})
    for key, value in overrides.items():
        setattr(status, key, value)
    return status


def test_format_time_is_go_like_and_trims_zeros():
    assert render.format_time(CREATED, UTC) == "2026-11-29 04:55:11.615741483 +0000 UTC"
    assert render.format_time(1795928111_500000000, UTC) == "2026-11-29 04:55:11.5 +0000 UTC"
    assert render.format_time(1795928111_000000000, UTC) == "2026-11-29 04:55:11 +0000 UTC"
    plus_two = timezone(timedelta(hours=2), "EET")
    assert render.format_time(CREATED, plus_two) == "2026-11-29 06:55:11.615741483 +0200 EET"


def test_pod_status_text():
    assert render.pod_text(pod_status(), UTC) == "\n".join([
        f"ID: {POD_ID}",
        "Name: web",
        "UID: u1",
        "Namespace: ns",
        "Attempt: 1",
        "Status: SANDBOX_READY",
        "Created: 2026-11-29 04:55:11.615741483 +0000 UTC",
        "IP Address: 10.88.0.5",
        "Labels:",
        "\ta -> 1",
        "\tb -> 2",
        "Annotations:",
        "\towner -> me",
    ])


def test_pod_status_without_ip_or_maps_shows_the_namespace_mode():
    status = pod_status(state=api_pb2.SANDBOX_NOTREADY)
    status.network.ip = ""
    status.labels.clear()
    status.annotations.clear()
    status.linux.namespaces.options.network = api_pb2.NODE
    text = render.pod_text(status, UTC)
    assert "Status: SANDBOX_NOTREADY" in text
    assert "Network namespace: NODE" in text
    assert "IP Address" not in text and "Labels" not in text and "Annotations" not in text


def test_pod_list_item_text():
    pod = api_pb2.PodSandbox(id=POD_ID, metadata=api_pb2.PodSandboxMetadata(name="web", namespace="ns"),
                             state=api_pb2.SANDBOX_READY, created_at=CREATED, labels={"k": "v"},
                             runtime_handler="crun")
    text = render.pod_text(pod, UTC)
    assert text.splitlines()[:3] == [f"ID: {POD_ID}", "Name: web", "UID: "]
    assert "Runtime handler: crun" in text
    assert text.endswith("Labels:\n\tk -> v")


def test_exited_container_status_text():
    status = api_pb2.ContainerStatus(
        id=CTR_ID, metadata=api_pb2.ContainerMetadata(name="c1", attempt=2),
        state=api_pb2.CONTAINER_EXITED, created_at=CREATED, started_at=CREATED + 10**9,
        finished_at=CREATED + 3 * 10**9, exit_code=3, reason="Error", message="bye",
        image=api_pb2.ImageSpec(image="busybox"), image_ref="sha256:" + "d" * 64,
        log_path="/var/log/pods/web/c1.log", labels={"type": "small"})
    assert render.container_text(status, UTC) == "\n".join([
        f"ID: {CTR_ID}",
        "Name: c1",
        "Attempt: 2",
        "Status: CONTAINER_EXITED",
        "Created: 2026-11-29 04:55:11.615741483 +0000 UTC",
        "Started: 2026-11-29 04:55:12.615741483 +0000 UTC",
        "Finished: 2026-11-29 04:55:14.615741483 +0000 UTC",
        "Exit Code: 3",
        "Reason: Error",
        "Message: bye",
        "Image: busybox",
        "Image ref: sha256:" + "d" * 64,
        "Log path: /var/log/pods/web/c1.log",
        "Labels:",
        "\ttype -> small",
    ])


def test_created_container_has_no_start_finish_or_exit_code():
    status = api_pb2.ContainerStatus(id=CTR_ID, metadata=api_pb2.ContainerMetadata(name="c1"),
                                     state=api_pb2.CONTAINER_CREATED, created_at=CREATED)
    text = render.container_text(status, UTC)
    assert "Status: CONTAINER_CREATED" in text
    for absent in ("Started", "Finished", "Exit Code", "Reason", "Image", "Log path"):
        assert absent not in text


def test_container_list_item_names_its_pod():
    ctr = api_pb2.Container(id=CTR_ID, pod_sandbox_id=POD_ID,
                            metadata=api_pb2.ContainerMetadata(name="c1"),
                            image=api_pb2.ImageSpec(image="busybox"),
                            state=api_pb2.CONTAINER_RUNNING, created_at=CREATED)
    assert render.container_text(ctr, UTC).splitlines()[:4] == [
        f"ID: {CTR_ID}", f"Pod: {POD_ID}", "Name: c1", "Attempt: 0"]


def test_pods_table():
    other = pod_status(id="b" * 64, state=api_pb2.SANDBOX_NOTREADY)
    other.metadata.name = "db"
    lines = render.pods_table([pod_status(), other], now=CREATED / 1e9 + 7200).splitlines()
    assert lines[0].split() == ["POD", "ID", "CREATED", "STATE", "NAME", "NAMESPACE", "ATTEMPT"]
    assert lines[1].split() == ["a" * 13, "2", "hours", "ago", "Ready", "web", "ns", "1"]
    assert lines[2].split() == ["b" * 13, "2", "hours", "ago", "NotReady", "db", "ns", "1"]


def test_containers_table_shortens_ids_and_image_ids():
    ctrs = [api_pb2.Container(id=CTR_ID, pod_sandbox_id=POD_ID,
                              metadata=api_pb2.ContainerMetadata(name="c1", attempt=1),
                              image=api_pb2.ImageSpec(image="sha256:" + "d" * 64),
                              state=api_pb2.CONTAINER_EXITED, created_at=CREATED),
            api_pb2.Container(id="e" * 64, pod_sandbox_id=POD_ID,
                              metadata=api_pb2.ContainerMetadata(name="httpd"),
                              image=api_pb2.ImageSpec(image="busybox"),
                              state=api_pb2.CONTAINER_RUNNING, created_at=CREATED)]
    lines = render.containers_table(ctrs, now=CREATED / 1e9 + 30).splitlines()
    assert lines[0].split() == ["CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "ATTEMPT", "POD",
                                "ID"]
    assert lines[1].split() == ["c" * 13, "d" * 13, "Less", "than", "a", "minute", "ago", "Exited",
                                "c1", "1", "a" * 13]
    assert lines[2].split()[:2] == ["e" * 13, "busybox"]
    assert "Running" in lines[2]


def test_container_status_in_a_table_has_no_pod_id():
    status = api_pb2.ContainerStatus(id=CTR_ID, metadata=api_pb2.ContainerMetadata(name="c1"),
                                     image=api_pb2.ImageSpec(image="busybox"),
                                     state=api_pb2.CONTAINER_UNKNOWN, created_at=CREATED)
    row = render.containers_table([status], now=CREATED / 1e9 + 120).splitlines()[1]
    assert row.split() == ["c" * 13, "busybox", "2", "minutes", "ago", "Unknown", "c1", "0"]


def test_status_payload_decodes_json_info():
    response = api_pb2.ContainerStatusResponse(
        status=api_pb2.ContainerStatus(id=CTR_ID), info={"info": '{"pid": 42}', "raw": "not json"})
    payload = render.status_payload(response)
    assert payload["status"]["id"] == CTR_ID
    assert payload["info"] == {"info": {"pid": 42}, "raw": "not json"}
    assert "info" not in render.status_payload(api_pb2.ContainerStatusResponse())
