"""Pod and container records: crash-safe persistence, name reservation and ID lookup."""

from __future__ import annotations

import os

import pytest

from ocid.errors import AlreadyExists, InvalidArgument, NotFound
from ocid.lifecycle.persist import RecordDir
from ocid.lifecycle.podspec import ContainerRequest, DNSConfig, PodRequest, PortMapping
from ocid.lifecycle.records import Container, ContainerUser, Registry, Sandbox
from ocid.oci import spec


def _pod_request() -> PodRequest:
    return PodRequest(
        name="web", uid="u1", namespace="ns", attempt=2, hostname="web-0",
        dns=DNSConfig(servers=("10.0.0.10",), searches=("svc",), options=("ndots:5",)),
        port_mappings=(PortMapping(container_port=80, host_port=8080),),
        labels={"app": "web"}, annotations={"a": "b"}, sysctls={"kernel.msgmax": "1"},
        namespace_options=spec.NamespaceOption(pid=spec.POD), run_as_user=1000,
        seccomp=spec.SecurityProfile("Localhost", "/p.json"))


def _container_request() -> ContainerRequest:
    config = spec.ContainerConfig(
        name="app", command=("sleep", "1"), envs=(("A", "1"),),
        mounts=(spec.Mount("/data", "/srv", readonly=True),),
        resources=spec.Resources(memory_limit_in_bytes=1 << 24,
                                 hugepage_limits=(spec.HugepageLimit("2MB", 0),)),
        security_context=spec.SecurityContext(run_as_user=5, masked_paths=None,
                                              readonly_paths=("/proc/x",)))
    return ContainerRequest(name="app", attempt=1, image="busybox", labels={"l": "v"},
                            log_path="app.log", tty=True, stop_signal="SIGINT", spec=config)


def test_sandbox_and_container_records_round_trip(tmp_path):
    pods = RecordDir(str(tmp_path / "pods"), Sandbox)
    sb = Sandbox(id="p" * 64, request=_pod_request(), state="ready", created=5,
                 netns_path="/run/netns/x", infra_pid=42, infra_start=7, claimed=False)
    os.makedirs(pods.path(sb.id))
    pods.save(sb)
    ctrs = RecordDir(str(tmp_path / "ctrs"), Container)
    c = Container(id="c" * 64, pod_id=sb.id, request=_container_request(),
                  user=ContainerUser(1, 2, (3, 4)), state="exited", exit_code=137,
                  reason="OOMKilled")
    os.makedirs(ctrs.path(c.id))
    ctrs.save(c)

    (loaded_sb,), broken = pods.load_all()
    (loaded_c,), _ = ctrs.load_all()
    assert loaded_sb == sb and broken == []
    assert loaded_c == c
    assert loaded_c.request.spec.mounts[0].readonly is True
    assert loaded_sb.request.kube_name == "k8s_web_ns_u1_2"
    assert sorted(os.listdir(pods.path(sb.id))) == ["state.json"]  # no temp file left


def test_load_all_reports_directories_without_a_record(tmp_path):
    pods = RecordDir(str(tmp_path), Sandbox)
    os.makedirs(pods.path("half-made"))
    os.makedirs(pods.path("garbled"))
    (tmp_path / "garbled" / "state.json").write_text("{not json")
    assert pods.load_all() == ([], ["garbled", "half-made"])


def test_names_are_reserved_once_and_released_by_their_owner():
    registry = Registry()
    registry.reserve("k8s_a", "id1", "pod sandbox")
    registry.reserve("k8s_a", "id1", "pod sandbox")  # the owner again: fine
    with pytest.raises(AlreadyExists, match="reserved for pod sandbox id1"):
        registry.reserve("k8s_a", "id2", "pod sandbox")
    registry.release("k8s_a", "id2")  # not the owner: no effect
    assert registry.holder("k8s_a") == "id1"
    registry.release("k8s_a", "id1")
    registry.reserve("k8s_a", "id2", "pod sandbox")


def test_lookup_by_full_id_or_unique_prefix():
    registry = Registry()
    for pod_id in ("abc111", "abc222", "def333"):
        registry.sandboxes[pod_id] = Sandbox(id=pod_id, request=_pod_request())
    assert registry.sandbox("def").id == "def333"
    assert registry.sandbox("abc111").id == "abc111"
    with pytest.raises(InvalidArgument, match="ambiguous"):
        registry.sandbox("abc")
    with pytest.raises(NotFound):
        registry.sandbox("zzz")
    with pytest.raises(InvalidArgument):
        registry.sandbox("")


def test_discarded_records_leave_at_once_and_are_deleted_with_the_trash(tmp_path):
    ctrs = RecordDir(str(tmp_path), Container)
    for cid in ("a" * 64, "b" * 64):
        c = Container(id=cid, pod_id="p", request=_container_request())
        os.makedirs(ctrs.path(cid))
        ctrs.save(c)
    ctrs.discard("a" * 64)
    ctrs.discard("never-existed")
    assert not os.path.exists(ctrs.path("a" * 64))
    records, broken = ctrs.load_all()
    assert [c.id for c in records] == ["b" * 64] and broken == []  # the trash is no record
    assert len(os.listdir(tmp_path / ".trash")) == 1
    ctrs.empty_trash()
    assert os.listdir(tmp_path / ".trash") == []
    assert sorted(os.listdir(tmp_path)) == [".trash", "b" * 64]
