"""CRI v1 messages ↔ core dataclasses (ocid.server.convert, ocid.lifecycle.podspec)."""

from __future__ import annotations

import signal

import pytest
from cri_api.v1 import api_pb2

from ocid.errors import InternalError, InvalidArgument
from ocid.lifecycle.persist import from_data, to_data
from ocid.lifecycle.podspec import (
    ContainerRequest,
    DNSConfig,
    PodRequest,
    PortMapping,
    signal_number,
)
from ocid.oci import seccomp, spec
from ocid.server import convert


def full_container_config() -> api_pb2.ContainerConfig:
    """A ContainerConfig with every field convert reads set to a non-default value."""
    sc = api_pb2.LinuxContainerSecurityContext(
        capabilities=api_pb2.Capability(add_capabilities=["NET_ADMIN", "SYS_TIME"],
                                        drop_capabilities=["KILL"],
                                        add_ambient_capabilities=["NET_RAW"]),
        privileged=True,
        namespace_options=api_pb2.NamespaceOption(network=api_pb2.NODE, pid=api_pb2.POD,
                                                  ipc=api_pb2.CONTAINER),
        run_as_group=api_pb2.Int64Value(value=0),
        run_as_username="nobody",
        readonly_rootfs=True,
        supplemental_groups=[10, 20],
        supplemental_groups_policy=api_pb2.Strict,
        no_new_privs=True,
        masked_paths=["/proc/kcore"],
        readonly_paths=["/proc/sys"],
        seccomp=api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.Localhost,
                                        localhost_ref="/var/lib/seccomp/p.json"),
        apparmor=api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.Unconfined),
    )
    sc.run_as_user.value = 1000
    res = api_pb2.LinuxContainerResources(
        cpu_period=100000, cpu_quota=50000, cpu_shares=512, memory_limit_in_bytes=1 << 28,
        memory_swap_limit_in_bytes=1 << 29, oom_score_adj=500, cpuset_cpus="0-1",
        cpuset_mems="0", hugepage_limits=[api_pb2.HugepageLimit(page_size="2MB", limit=4096)])
    return api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name="web", attempt=3),
        image=api_pb2.ImageSpec(image="docker.io/library/nginx:latest"),
        command=["/bin/sh", "-c"], args=["echo hi"], working_dir="/srv",
        envs=[api_pb2.KeyValue(key="A", value="1"), api_pb2.KeyValue(key="B", value="")],
        mounts=[
            api_pb2.Mount(container_path="/data", host_path="/var/data", readonly=True,
                          selinux_relabel=True, recursive_read_only=True),
            api_pb2.Mount(container_path="/shared", host_path="/mnt/shared",
                          propagation=api_pb2.PROPAGATION_BIDIRECTIONAL),
            api_pb2.Mount(container_path="/hc", host_path="/mnt/hc",
                          propagation=api_pb2.PROPAGATION_HOST_TO_CONTAINER),
        ],
        devices=[api_pb2.Device(container_path="/dev/fuse", host_path="/dev/fuse",
                                permissions="rw"),
                 api_pb2.Device(container_path="/dev/null2", host_path="/dev/null")],
        labels={"io.kubernetes.container.name": "web"},
        annotations={"io.kubernetes.container.hash": "abc"},
        log_path="web/3.log", stdin=True, stdin_once=True, tty=True,
        linux=api_pb2.LinuxContainerConfig(resources=res, security_context=sc),
        stop_signal=api_pb2.SIGQUIT,
    )


# ---------------------------------------------------------------------------- containers


def test_container_config_every_field():
    got = convert.container_config(full_container_config())
    assert got == spec.ContainerConfig(
        name="web",
        command=("/bin/sh", "-c"),
        args=("echo hi",),
        working_dir="/srv",
        envs=(("A", "1"), ("B", "")),
        mounts=(
            spec.Mount("/data", "/var/data", readonly=True, propagation="PROPAGATION_PRIVATE",
                       recursive_read_only=True),
            spec.Mount("/shared", "/mnt/shared", propagation="PROPAGATION_BIDIRECTIONAL"),
            spec.Mount("/hc", "/mnt/hc", propagation="PROPAGATION_HOST_TO_CONTAINER"),
        ),
        devices=(spec.Device("/dev/fuse", "/dev/fuse", "rw"),
                 spec.Device("/dev/null2", "/dev/null", "rwm")),
        annotations={"io.kubernetes.container.hash": "abc"},
        tty=True,
        resources=spec.Resources(
            cpu_period=100000, cpu_quota=50000, cpu_shares=512, memory_limit_in_bytes=1 << 28,
            memory_swap_limit_in_bytes=1 << 29, oom_score_adj=500, cpuset_cpus="0-1",
            cpuset_mems="0", hugepage_limits=(spec.HugepageLimit("2MB", 4096),)),
        security_context=spec.SecurityContext(
            add_capabilities=("NET_ADMIN", "SYS_TIME"),
            drop_capabilities=("KILL",),
            privileged=True,
            namespace_options=spec.NamespaceOption(network=spec.NODE, pid=spec.POD,
                                                   ipc=spec.CONTAINER),
            run_as_user=1000,
            run_as_group=0,
            run_as_username="nobody",
            readonly_rootfs=True,
            supplemental_groups=(10, 20),
            supplemental_groups_policy="Strict",
            no_new_privs=True,
            masked_paths=("/proc/kcore",),
            readonly_paths=("/proc/sys",),
            seccomp=spec.SecurityProfile(seccomp.LOCALHOST, "/var/lib/seccomp/p.json"),
            apparmor=spec.SecurityProfile(seccomp.UNCONFINED),
        ),
    )


def test_container_config_minimal_gets_spec_defaults():
    got = convert.container_config(
        api_pb2.ContainerConfig(metadata=api_pb2.ContainerMetadata(name="c")))
    assert got == spec.ContainerConfig(name="c")
    sc = got.security_context
    assert sc.run_as_user is None and sc.run_as_group is None
    assert sc.masked_paths is None and sc.readonly_paths is None
    assert sc.namespace_options == spec.NamespaceOption()  # pid CONTAINER, not the proto's POD
    assert sc.seccomp == spec.SecurityProfile(seccomp.RUNTIME_DEFAULT)
    assert sc.supplemental_groups_policy == "Merge"


def test_run_as_user_zero_is_not_unset():
    config = api_pb2.ContainerConfig(metadata=api_pb2.ContainerMetadata(name="c"))
    config.linux.security_context.run_as_user.value = 0
    assert convert.container_config(config).security_context.run_as_user == 0


def test_empty_masked_and_readonly_paths_mean_defaults():
    config = api_pb2.ContainerConfig(metadata=api_pb2.ContainerMetadata(name="c"))
    config.linux.security_context.privileged = False
    sc = convert.container_config(config).security_context
    assert sc.masked_paths is None and sc.readonly_paths is None


@pytest.mark.parametrize("config, message", [
    (api_pb2.ContainerConfig(), "container config: metadata.name is required"),
    (api_pb2.ContainerConfig(metadata=api_pb2.ContainerMetadata(attempt=1)),
     "container config: metadata.name is required"),
])
def test_container_name_required(config, message):
    with pytest.raises(InvalidArgument, match=message):
        convert.container_config(config)


def _named(**kwargs) -> api_pb2.ContainerConfig:
    return api_pb2.ContainerConfig(metadata=api_pb2.ContainerMetadata(name="c"), **kwargs)


def test_image_volume_mount_refused():
    config = _named(mounts=[api_pb2.Mount(container_path="/img",
                                          image=api_pb2.ImageSpec(image="busybox"))])
    with pytest.raises(InvalidArgument, match="/img: image volume mounts are not supported"):
        convert.container_config(config)


def test_bad_enum_values_refused():
    with pytest.raises(InvalidArgument, match="propagation: unknown value 9"):
        convert.container_config(_named(mounts=[api_pb2.Mount(container_path="/m",
                                                              propagation=9)]))
    config = _named()
    config.linux.security_context.namespace_options.pid = 7
    with pytest.raises(InvalidArgument, match="namespace_options.pid: unknown value 7"):
        convert.container_config(config)


def test_relative_working_dir_and_empty_env_name_refused():
    with pytest.raises(InvalidArgument, match="working_dir 'srv' must be an absolute path"):
        convert.container_config(_named(working_dir="srv"))
    with pytest.raises(InvalidArgument, match="empty name"):
        convert.container_config(_named(envs=[api_pb2.KeyValue(key="", value="x")]))


def test_user_namespaces_refused_but_node_mode_accepted():
    config = _named()
    opts = config.linux.security_context.namespace_options
    opts.userns_options.mode = api_pb2.NODE
    assert convert.container_config(config).security_context.namespace_options.pid == spec.POD
    opts.userns_options.mode = api_pb2.POD
    with pytest.raises(InvalidArgument, match="user namespaces are not supported"):
        convert.container_config(config)


def test_target_namespace_mode_maps_to_spec_string():
    config = _named()
    config.linux.security_context.namespace_options.pid = api_pb2.TARGET
    opts = convert.container_config(config).security_context.namespace_options
    assert opts.pid == spec.TARGET  # refused later by spec.namespaces()


def test_container_request_every_field():
    request = convert.container_request(full_container_config())
    assert request == ContainerRequest(
        name="web", attempt=3, image="docker.io/library/nginx:latest",
        labels={"io.kubernetes.container.name": "web"},
        annotations={"io.kubernetes.container.hash": "abc"},
        log_path="web/3.log", stdin=True, stdin_once=True, tty=True, stop_signal="SIGQUIT",
        spec=convert.container_config(full_container_config()))


def test_container_request_defaults_and_image_required():
    request = convert.container_request(_named(image=api_pb2.ImageSpec(image="busybox")))
    assert request.stop_signal == "" and request.attempt == 0 and request.labels == {}
    with pytest.raises(InvalidArgument, match="container c: image is required"):
        convert.container_request(_named())
    with pytest.raises(InvalidArgument, match="image is required"):
        convert.container_request(_named(image=api_pb2.ImageSpec(image="  ")))


def test_container_request_empty_label_key_refused():
    with pytest.raises(InvalidArgument, match="labels: keys must not be empty"):
        convert.container_request(_named(image=api_pb2.ImageSpec(image="busybox"),
                                         labels={"": "x"}))


def test_container_request_survives_persist():
    request = convert.container_request(full_container_config())
    assert from_data(ContainerRequest, to_data(request)) == request


# ---------------------------------------------------------------------------- profiles


@pytest.mark.parametrize("path, expected", [
    ("", spec.SecurityProfile(seccomp.RUNTIME_DEFAULT)),
    ("runtime/default", spec.SecurityProfile(seccomp.RUNTIME_DEFAULT)),
    ("docker/default", spec.SecurityProfile(seccomp.RUNTIME_DEFAULT)),
    ("unconfined", spec.SecurityProfile(seccomp.UNCONFINED)),
    ("localhost//var/lib/kubelet/seccomp/audit.json",
     spec.SecurityProfile(seccomp.LOCALHOST, "/var/lib/kubelet/seccomp/audit.json")),
])
def test_deprecated_seccomp_profile_path(path, expected):
    config = _named()
    config.linux.security_context.seccomp_profile_path = path
    assert convert.container_config(config).security_context.seccomp == expected


@pytest.mark.parametrize("value", ["localhost/", "bogus", "runtime/foo"])
def test_deprecated_seccomp_profile_path_refused(value):
    config = _named()
    config.linux.security_context.seccomp_profile_path = value
    with pytest.raises(InvalidArgument, match="seccomp_profile_path: unknown profile"):
        convert.container_config(config)


def test_seccomp_field_wins_over_deprecated_path():
    config = _named()
    sc = config.linux.security_context
    sc.seccomp_profile_path = "unconfined"
    sc.seccomp.SetInParent()  # present, all zero: RuntimeDefault
    assert convert.container_config(config).security_context.seccomp == \
        spec.SecurityProfile(seccomp.RUNTIME_DEFAULT)


def test_localhost_profile_needs_a_ref():
    config = _named()
    config.linux.security_context.seccomp.profile_type = api_pb2.SecurityProfile.Localhost
    with pytest.raises(InvalidArgument, match="seccomp: profile type Localhost needs"):
        convert.container_config(config)


def test_ref_dropped_for_non_localhost_profiles():
    config = _named()
    config.linux.security_context.seccomp.localhost_ref = "/stale.json"
    assert convert.container_config(config).security_context.seccomp.localhost_ref == ""


@pytest.mark.parametrize("value, expected", [
    ("", spec.SecurityProfile(seccomp.RUNTIME_DEFAULT)),
    ("runtime/default", spec.SecurityProfile(seccomp.RUNTIME_DEFAULT)),
    ("unconfined", spec.SecurityProfile(seccomp.UNCONFINED)),
    ("localhost/k8s-nginx", spec.SecurityProfile(seccomp.LOCALHOST, "k8s-nginx")),
])
def test_deprecated_apparmor_profile(value, expected):
    config = _named()
    config.linux.security_context.apparmor_profile = value
    assert convert.container_config(config).security_context.apparmor == expected


def test_apparmor_field_wins_and_docker_default_is_not_apparmor():
    config = _named()
    sc = config.linux.security_context
    sc.apparmor_profile = "unconfined"
    sc.apparmor.profile_type = api_pb2.SecurityProfile.Localhost
    sc.apparmor.localhost_ref = "mine"
    assert convert.container_config(config).security_context.apparmor == \
        spec.SecurityProfile(seccomp.LOCALHOST, "mine")
    sc.ClearField("apparmor")
    sc.apparmor_profile = "docker/default"
    with pytest.raises(InvalidArgument, match="apparmor_profile: unknown profile"):
        convert.container_config(config)


# ---------------------------------------------------------------------------- pods


def full_pod_config() -> api_pb2.PodSandboxConfig:
    sc = api_pb2.LinuxSandboxSecurityContext(
        namespace_options=api_pb2.NamespaceOption(network=api_pb2.NODE, pid=api_pb2.CONTAINER,
                                                  ipc=api_pb2.POD),
        readonly_rootfs=True, supplemental_groups=[5], privileged=True,
        supplemental_groups_policy=api_pb2.Strict,
        seccomp=api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.Unconfined),
        apparmor=api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.Localhost,
                                         localhost_ref="pod-profile"))
    sc.run_as_user.value = 65535
    sc.run_as_group.value = 65534
    return api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name="nginx", uid="u-1", namespace="default",
                                            attempt=2),
        hostname="nginx-host", log_directory="/var/log/pods/default_nginx_u-1",
        dns_config=api_pb2.DNSConfig(servers=["10.0.0.10"],
                                     searches=["default.svc.cluster.local", "svc"],
                                     options=["ndots:5"]),
        port_mappings=[
            api_pb2.PortMapping(protocol=api_pb2.UDP, container_port=53, host_port=5353,
                                host_ip="127.0.0.1"),
            api_pb2.PortMapping(container_port=80),
            api_pb2.PortMapping(protocol=api_pb2.SCTP, container_port=9, host_port=9),
        ],
        labels={"app": "nginx"},
        annotations={"kubernetes.io/config.source": "api",
                     convert.SYSCTLS_ANNOTATION: "kernel.shm_rmid_forced=1,net.core.somaxconn=64",
                     convert.UNSAFE_SYSCTLS_ANNOTATION: "kernel.msgmax=8192"},
        linux=api_pb2.LinuxPodSandboxConfig(cgroup_parent="/kubepods/besteffort/podu-1",
                                            security_context=sc,
                                            sysctls={"net.core.somaxconn": "1024"}),
    )


def test_pod_sandbox_config_every_field():
    config = full_pod_config()
    got = convert.pod_sandbox_config(config)
    assert got == PodRequest(
        name="nginx", uid="u-1", namespace="default", attempt=2,
        hostname="nginx-host", log_directory="/var/log/pods/default_nginx_u-1",
        dns=DNSConfig(servers=("10.0.0.10",), searches=("default.svc.cluster.local", "svc"),
                      options=("ndots:5",)),
        port_mappings=(PortMapping(container_port=53, host_port=5353, protocol="UDP",
                                   host_ip="127.0.0.1"),
                       PortMapping(container_port=80, host_port=0, protocol="TCP"),
                       PortMapping(container_port=9, host_port=9, protocol="SCTP")),
        labels={"app": "nginx"},
        annotations=dict(config.annotations),
        cgroup_parent="/kubepods/besteffort/podu-1",
        sysctls={"kernel.shm_rmid_forced": "1", "net.core.somaxconn": "1024",
                 "kernel.msgmax": "8192"},
        namespace_options=spec.NamespaceOption(network=spec.NODE, pid=spec.CONTAINER,
                                               ipc=spec.POD),
        privileged=True, run_as_user=65535, run_as_group=65534, readonly_rootfs=True,
        supplemental_groups=(5,), supplemental_groups_policy="Strict",
        seccomp=spec.SecurityProfile(seccomp.UNCONFINED),
        apparmor=spec.SecurityProfile(seccomp.LOCALHOST, "pod-profile"),
    )
    assert got.kube_name == "k8s_nginx_default_u-1_2"
    assert from_data(PodRequest, to_data(got)) == got


def test_pod_sandbox_config_minimal():
    got = convert.pod_sandbox_config(api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name="p", uid="u", namespace="ns")))
    assert got == PodRequest(name="p", uid="u", namespace="ns")
    assert got.run_as_user is None and got.run_as_group is None
    assert got.seccomp == spec.SecurityProfile(seccomp.RUNTIME_DEFAULT)
    assert got.namespace_options == spec.NamespaceOption()
    assert got.kube_name == "k8s_p_ns_u_0"


def test_pod_deprecated_seccomp_path():
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name="p", uid="u", namespace="ns"))
    config.linux.security_context.seccomp_profile_path = "localhost//etc/p.json"
    assert convert.pod_sandbox_config(config).seccomp == \
        spec.SecurityProfile(seccomp.LOCALHOST, "/etc/p.json")


@pytest.mark.parametrize("missing", ["name", "uid", "namespace"])
def test_pod_metadata_required(missing):
    meta = {"name": "p", "uid": "u", "namespace": "ns"}
    meta[missing] = ""
    config = api_pb2.PodSandboxConfig(metadata=api_pb2.PodSandboxMetadata(**meta))
    with pytest.raises(InvalidArgument, match=f"metadata.{missing} is required"):
        convert.pod_sandbox_config(config)


def test_pod_without_metadata():
    with pytest.raises(InvalidArgument, match="metadata.name is required"):
        convert.pod_sandbox_config(api_pb2.PodSandboxConfig())


@pytest.mark.parametrize("value, expected", [
    ("", {}),
    ("a.b=1", {"a.b": "1"}),
    ("a.b=1, c.d=2", {"a.b": "1", "c.d": "2"}),
    ("a.b=", {"a.b": ""}),
    ("a.b=x=y", {"a.b": "x=y"}),
    ("a.b=1,a.b=2", {"a.b": "2"}),
])
def test_sysctl_annotation_parsing(value, expected):
    assert convert.parse_sysctl_annotation(value, "x") == expected


@pytest.mark.parametrize("value", ["a.b", "=1", "a.b=1,", "a.b=1,,c=2", "a b=1"])
def test_sysctl_annotation_malformed(value):
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name="p", uid="u", namespace="ns"),
        annotations={convert.UNSAFE_SYSCTLS_ANNOTATION: value})
    with pytest.raises(InvalidArgument, match="unsafe-sysctls: .* is not of the form name=value"):
        convert.pod_sandbox_config(config)


def test_sysctl_precedence():
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name="p", uid="u", namespace="ns"),
        annotations={convert.SYSCTLS_ANNOTATION: "a.b=safe,c.d=safe",
                     convert.UNSAFE_SYSCTLS_ANNOTATION: "a.b=unsafe"},
        linux=api_pb2.LinuxPodSandboxConfig(sysctls={"c.d": "field"}))
    assert convert.pod_sandbox_config(config).sysctls == {"a.b": "unsafe", "c.d": "field"}


def test_port_mapping_range_checked():
    for bad in (api_pb2.PortMapping(container_port=0),
                api_pb2.PortMapping(container_port=80, host_port=70000)):
        config = api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name="p", uid="u", namespace="ns"),
            port_mappings=[bad])
        with pytest.raises(InvalidArgument, match="ports must be between 1 and 65535"):
            convert.pod_sandbox_config(config)


def test_pod_empty_annotation_key_refused():
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name="p", uid="u", namespace="ns"),
        annotations={"": "x"})
    with pytest.raises(InvalidArgument, match="annotations: keys must not be empty"):
        convert.pod_sandbox_config(config)


def test_kube_names():
    pod = PodRequest(name="nginx", uid="1234", namespace="kube-system", attempt=1)
    assert pod.kube_name == "k8s_nginx_kube-system_1234_1"
    ctr = ContainerRequest(name="web", attempt=4, image="i", spec=spec.ContainerConfig("web"))
    assert ctr.kube_name(pod) == "k8s_web_nginx_kube-system_1234_4"


def test_infra_security_context():
    pod = convert.pod_sandbox_config(full_pod_config())
    sc = pod.infra_security_context()
    assert sc.namespace_options == pod.namespace_options
    assert (sc.run_as_user, sc.run_as_group, sc.privileged) == (65535, 65534, True)
    assert sc.seccomp == pod.seccomp and sc.apparmor == pod.apparmor


# ---------------------------------------------------------------------------- validation


def test_require_id():
    assert convert.require_id("abc", "container") == "abc"
    for empty in ("", "  "):
        with pytest.raises(InvalidArgument,
                           match="container_id: an ID is required, but the request left it"):
            convert.require_id(empty, "container_id")


def test_require_timeout():
    assert convert.require_timeout(0) == 0
    assert convert.require_timeout(30, "stop timeout") == 30
    with pytest.raises(InvalidArgument, match=r"stop timeout must not be negative \(got -1\)"):
        convert.require_timeout(-1, "stop timeout")


def test_check_labels():
    assert convert.check_labels({"a": ""}) == {"a": ""}  # empty values are fine
    with pytest.raises(InvalidArgument, match="labels: keys must not be empty"):
        convert.check_labels({" ": "x"})


@pytest.mark.parametrize("name, number", [
    ("", None), ("SIGTERM", 15), ("TERM", 15), ("9", 9), ("sigkill", 9),
    ("SIGRTMIN", signal.SIGRTMIN), ("SIGRTMINPLUS1", signal.SIGRTMIN + 1),
    ("SIGRTMIN+3", signal.SIGRTMIN + 3), ("SIGRTMAXMINUS2", signal.SIGRTMAX - 2),
])
def test_signal_number(name, number):
    assert signal_number(name) == number


def test_every_cri_signal_has_a_number():
    for name, value in api_pb2.Signal.items():
        if value:
            assert signal_number(name) is not None, name


@pytest.mark.parametrize("name", ["SIGFOO", "0", "999", "SIGRTMIN+x"])
def test_signal_number_refused(name):
    with pytest.raises(InvalidArgument):
        signal_number(name)


# ---------------------------------------------------------------------------- outbound


@pytest.mark.parametrize("m", [
    spec.Mount("/a", "/b"),
    spec.Mount("/a", "/b", readonly=True, recursive_read_only=True),
    spec.Mount("/a", "/b", propagation="PROPAGATION_HOST_TO_CONTAINER"),
    spec.Mount("/a", "/b", propagation="PROPAGATION_BIDIRECTIONAL"),
])
def test_mount_round_trip(m):
    pb = convert.mount_to_pb(m)
    assert isinstance(pb, api_pb2.Mount)
    assert convert.mount(pb) == m


def test_resources_round_trip():
    r = convert.resources(full_container_config().linux.resources)
    pb = convert.resources_to_pb(r)
    assert pb == api_pb2.ContainerResources(linux=full_container_config().linux.resources)
    assert convert.resources(pb.linux) == r


@pytest.mark.parametrize("opts", [
    spec.NamespaceOption(),
    spec.NamespaceOption(network=spec.NODE, pid=spec.NODE, ipc=spec.NODE),
    spec.NamespaceOption(network=spec.POD, pid=spec.POD, ipc=spec.CONTAINER),
])
def test_namespace_option_round_trip(opts):
    pb = convert.namespace_option_to_pb(opts)
    assert convert.namespace_option(api_pb2.LinuxSandboxSecurityContext(
        namespace_options=pb)) == opts


@pytest.mark.parametrize("state, enum", [
    ("created", api_pb2.CONTAINER_CREATED), ("running", api_pb2.CONTAINER_RUNNING),
    ("exited", api_pb2.CONTAINER_EXITED), ("unknown", api_pb2.CONTAINER_UNKNOWN),
])
def test_container_state_both_ways(state, enum):
    assert convert.container_state_to_pb(state) == enum
    filt = api_pb2.ContainerFilter(state=api_pb2.ContainerStateValue(state=enum))
    assert convert.filter_state(filt) == state
    assert convert.container_filter_state(filt) == state


@pytest.mark.parametrize("state, enum", [
    ("ready", api_pb2.SANDBOX_READY), ("notready", api_pb2.SANDBOX_NOTREADY),
])
def test_sandbox_state_both_ways(state, enum):
    assert convert.sandbox_state_to_pb(state) == enum
    filt = api_pb2.PodSandboxFilter(state=api_pb2.PodSandboxStateValue(state=enum))
    assert convert.filter_state(filt) == state
    assert convert.sandbox_filter_state(filt) == state


def test_unset_filter_state_is_none():
    # The zero enum (CREATED / READY) set explicitly differs from an absent state.
    assert convert.filter_state(api_pb2.ContainerFilter()) is None
    assert convert.filter_state(api_pb2.PodSandboxFilter(id="x")) is None
    assert convert.filter_state(api_pb2.ListContainersRequest().filter) is None
    assert convert.container_filter_state(api_pb2.ContainerFilter()) is None
    assert convert.sandbox_filter_state(api_pb2.PodSandboxFilter()) is None
    filt = api_pb2.ContainerFilter()
    filt.state.SetInParent()
    assert convert.filter_state(filt) == "created"


def test_unknown_states():
    with pytest.raises(InternalError):
        convert.container_state_to_pb("creating")
    with pytest.raises(InternalError):
        convert.sandbox_state_to_pb("running")
    filt = api_pb2.ContainerFilter(state=api_pb2.ContainerStateValue(state=42))
    with pytest.raises(InvalidArgument, match="container filter: unknown state 42"):
        convert.filter_state(filt)
    filt = api_pb2.PodSandboxFilter(state=api_pb2.PodSandboxStateValue(state=5))
    with pytest.raises(InvalidArgument, match="pod sandbox filter: unknown state 5"):
        convert.sandbox_filter_state(filt)


# ---------------------------------------------------------------------------- into the builder


def test_converted_requests_build_valid_specs(tmp_path):
    """What convert produces is what the spec builder takes (schema-validated there)."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    host = spec.HostInfo(cap_bounding=spec.parse_capbnd("CapBnd:\t000001ffffffffff\n"),
                         arch="amd64")
    pod = convert.pod_sandbox_config(full_pod_config())
    pod_config = spec.PodSandboxConfig(hostname=pod.hostname, cgroup_parent=pod.cgroup_parent,
                                       sysctls={"kernel.shm_rmid_forced": "1"},
                                       namespace_options=pod.namespace_options)
    infra, _ = spec.build_sandbox_spec("pod", pod_config, ("/pause",), str(tmp_path), host,
                                       security_context=pod.infra_security_context())
    assert infra["process"]["user"]["uid"] == 65535
    config = _named(image=api_pb2.ImageSpec(image="busybox"), command=["/bin/true"],
                    mounts=[api_pb2.Mount(container_path="/m", host_path="/tmp",
                                          propagation=api_pb2.PROPAGATION_HOST_TO_CONTAINER)])
    request = convert.container_request(config)
    built, _ = spec.build_container_spec("cid", request.spec, pod_config, spec.ImageConfig(),
                                         str(tmp_path), host)
    assert built["linux"]["rootfsPropagation"] == "rslave"
    assert "seccomp" in built["linux"]  # unset profile → the runtime default
