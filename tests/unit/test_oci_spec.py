"""OCI runtime spec generation (ocid.oci.spec, ocid.oci.seccomp): pure logic, no runtime."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import replace

import pytest

from ocid.errors import InternalError, InvalidArgument
from ocid.oci import seccomp
from ocid.oci.spec import (
    CONTAINER,
    DEFAULT_CAPABILITIES,
    DEFAULT_MASKED_PATHS,
    DEFAULT_READONLY_PATHS,
    NODE,
    POD,
    TARGET,
    ContainerConfig,
    Device,
    HostInfo,
    HugepageLimit,
    ImageConfig,
    Mount,
    NamespaceOption,
    PodSandboxConfig,
    Resources,
    SecurityContext,
    SecurityProfile,
    SpecOptions,
    build_container_spec,
    build_sandbox_spec,
    capabilities,
    cgroups_path,
    parse_capbnd,
    process_args,
    process_env,
    process_user,
    resolve_user,
    sysctls,
    validate,
)

FULL_MASK = "000001fffeffffff"  # this VM's CapBnd: everything up to 40 but CAP_SYS_RESOURCE
HOST = HostInfo(cap_bounding=parse_capbnd(f"CapBnd:\t{FULL_MASK}\n"), oom_score_adj=0,
                apparmor_enabled=False, arch="amd64")
PASSWD = "root:x:0:0:root:/root:/bin/sh\n# comment\nalice:x:1000:1000::/home/alice:/bin/sh\n" \
         "bob:x:1001:1001::/home/bob:/bin/sh\n"
GROUP = "root:x:0:\nalice:x:1000:\nwheel:x:10:alice,bob\naudio:x:29:bob\nstaff:x:50:alice\n"


@pytest.fixture
def rootfs(tmp_path):
    """A rootfs holding only /etc/passwd and /etc/group."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text(PASSWD)
    (tmp_path / "etc/group").write_text(GROUP)
    return str(tmp_path)


def build(config=None, pod=None, image=None, rootfs="/nonexistent", host=HOST, **options):
    """build_container_spec with defaults for whatever a test does not care about."""
    config = config or ContainerConfig(name="c", command=("/bin/true",))
    return build_container_spec("cid", config, pod or PodSandboxConfig(), image or ImageConfig(),
                                rootfs, host, SpecOptions(**options))


def with_sc(**kwargs) -> ContainerConfig:
    """A simple container with the given security context fields."""
    return ContainerConfig(name="c", command=("/bin/true",),
                           security_context=SecurityContext(**kwargs))


# ---------------------------------------------------------------------------- host facts


@pytest.mark.parametrize("mask, present, absent", [
    (FULL_MASK, {"CAP_CHOWN", "CAP_SYS_ADMIN", "CAP_CHECKPOINT_RESTORE"}, {"CAP_SYS_RESOURCE"}),
    ("0000000000000001", {"CAP_CHOWN"}, {"CAP_DAC_OVERRIDE"}),
    ("0000000000000000", set(), {"CAP_CHOWN"}),
])
def test_parse_capbnd(mask, present, absent):
    caps = parse_capbnd(f"Name:\tx\nCapPrm:\tffffffffff\nCapBnd:\t{mask}\n")
    assert present <= caps and not absent & caps
    if mask == FULL_MASK:
        assert len(caps) == 40


def test_parse_capbnd_without_line_is_internal_error():
    with pytest.raises(InternalError):
        parse_capbnd("Name:\tx\n")


@pytest.mark.parametrize("apparmor, enabled", [("Y\n", True), ("N\n", False), (None, False)])
def test_host_probe_reads_injected_files(tmp_path, apparmor, enabled):
    (tmp_path / "status").write_text("CapBnd:\t0000000000000003\n")
    (tmp_path / "oom").write_text("-500\n")
    if apparmor is not None:
        (tmp_path / "aa").write_text(apparmor)
    host = HostInfo.probe(str(tmp_path / "status"), str(tmp_path / "oom"), str(tmp_path / "aa"))
    assert host.cap_bounding == {"CAP_CHOWN", "CAP_DAC_OVERRIDE"}
    assert host.oom_score_adj == -500
    assert host.apparmor_enabled is enabled


# ---------------------------------------------------------------------------- process


@pytest.mark.parametrize("command, args, entrypoint, cmd, expected", [
    ((), (), ("/ep",), ("c1", "c2"), ["/ep", "c1", "c2"]),  # neither: image ep + cmd
    (("/cmd",), (), ("/ep",), ("c1",), ["/cmd"]),  # command alone drops the image cmd
    (("/cmd",), ("a",), ("/ep",), ("c1",), ["/cmd", "a"]),
    ((), ("a", "b"), ("/ep",), ("c1",), ["/ep", "a", "b"]),  # args replace cmd only
    ((), ("a",), (), ("c1",), ["a"]),
    ((), (), (), ("sh",), ["sh"]),
])
def test_process_args_kubelet_rules(command, args, entrypoint, cmd, expected):
    config = ContainerConfig(name="c", command=command, args=args)
    assert process_args(config, ImageConfig(entrypoint=entrypoint, cmd=cmd)) == expected


def test_process_args_empty_is_invalid_argument():
    with pytest.raises(InvalidArgument, match="no command"):
        process_args(ContainerConfig(name="c"), ImageConfig())


def test_env_merged_over_image_in_order():
    image = ImageConfig(env=("PATH=/bin", "A=1", "B=2"))
    config = ContainerConfig(name="c", envs=(("B", "cri"), ("C", "3"), ("A", "x=y")))
    assert process_env(config, image) == ["PATH=/bin", "A=x=y", "B=cri", "C=3"]


def test_env_gets_default_path_only_when_missing():
    env = process_env(ContainerConfig(name="c", envs=(("X", "1"),)), ImageConfig())
    assert env[0].startswith("PATH=/usr/local/sbin") and env[1] == "X=1"
    assert process_env(ContainerConfig(name="c", envs=(("PATH", "/p"),)), ImageConfig()) \
        == ["PATH=/p"]


@pytest.mark.parametrize("cri, image, expected", [
    ("/cri", "/img", "/cri"), ("", "/img", "/img"), ("", "", "/"),
])
def test_cwd(cri, image, expected):
    config = ContainerConfig(name="c", command=("x",), working_dir=cri)
    spec, _ = build(config, image=ImageConfig(working_dir=image))
    assert spec["process"]["cwd"] == expected


@pytest.mark.parametrize("user, expected", [
    ("", (0, 0, "root")),
    ("alice", (1000, 1000, "alice")),
    ("1000", (1000, 1000, "alice")),
    ("alice:wheel", (1000, 10, "alice")),
    ("1001:10", (1001, 10, "bob")),
    ("alice:77", (1000, 77, "alice")),
    ("5000", (5000, 0, "")),  # numeric uids need no passwd entry
    ("5000:audio", (5000, 29, "")),
])
def test_resolve_user(rootfs, user, expected):
    assert resolve_user(rootfs, user) == expected


@pytest.mark.parametrize("user, named", [("carol", "carol"), ("alice:nogroup", "nogroup")])
def test_resolve_user_unknown_name_is_invalid_argument(rootfs, user, named):
    with pytest.raises(InvalidArgument, match=named):
        resolve_user(rootfs, user)


def test_resolve_user_name_without_passwd_file(tmp_path):
    with pytest.raises(InvalidArgument, match="alice"):
        resolve_user(str(tmp_path), "alice")
    assert resolve_user(str(tmp_path), "0:0") == (0, 0, "")


@pytest.mark.parametrize("sc, image_user, expected", [
    (SecurityContext(), "alice", {"uid": 1000, "gid": 1000, "additionalGids": [10, 50]}),
    (SecurityContext(run_as_user=1001), "alice:staff",
     {"uid": 1001, "gid": 1001, "additionalGids": [10, 29]}),
    (SecurityContext(run_as_username="bob", run_as_group=50), "",
     {"uid": 1001, "gid": 50, "additionalGids": [10, 29]}),
    (SecurityContext(run_as_user=0, run_as_username="bob"), "", {"uid": 0, "gid": 0}),
    (SecurityContext(supplemental_groups=(7, 10)), "alice",
     {"uid": 1000, "gid": 1000, "additionalGids": [10, 50, 7]}),
    (SecurityContext(supplemental_groups=(7,), supplemental_groups_policy="Strict"), "alice",
     {"uid": 1000, "gid": 1000, "additionalGids": [7]}),
    (SecurityContext(supplemental_groups_policy="Strict"), "alice", {"uid": 1000, "gid": 1000}),
])
def test_process_user(rootfs, sc, image_user, expected):
    assert process_user(sc, ImageConfig(user=image_user), rootfs) == expected


@pytest.mark.parametrize("sc, match", [
    (SecurityContext(run_as_group=5), "run_as_group"),
    (SecurityContext(run_as_username="mallory"), "mallory"),
    (SecurityContext(supplemental_groups_policy="Sometimes"), "supplemental_groups_policy"),
])
def test_process_user_errors(rootfs, sc, match):
    with pytest.raises(InvalidArgument, match=match):
        process_user(sc, ImageConfig(), rootfs)


@pytest.mark.parametrize("add, drop, expected", [
    ((), (), list(DEFAULT_CAPABILITIES)),
    (("NET_ADMIN",), ("KILL",), [c for c in DEFAULT_CAPABILITIES if c != "CAP_KILL"]
     + ["CAP_NET_ADMIN"]),
    (("cap_sys_admin",), (), [*DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN"]),
    (("CHOWN",), ("ALL",), ["CAP_CHOWN"]),
    ((), ("all",), []),
])
def test_capabilities_add_drop(add, drop, expected):
    sc = SecurityContext(add_capabilities=add, drop_capabilities=drop)
    notes: list[str] = []
    assert capabilities(sc, HOST, DEFAULT_CAPABILITIES, notes) == expected
    assert notes == []


def test_capabilities_add_all_is_the_bounding_set_minus_drops():
    sc = SecurityContext(add_capabilities=("ALL",), drop_capabilities=("NET_RAW",))
    caps = capabilities(sc, HOST, DEFAULT_CAPABILITIES, [])
    assert "CAP_SYS_ADMIN" in caps and "CAP_NET_RAW" not in caps
    assert "CAP_SYS_RESOURCE" not in caps and len(caps) == 39


def test_capability_outside_bounding_set_is_noted_not_granted():
    notes: list[str] = []
    caps = capabilities(SecurityContext(add_capabilities=("SYS_RESOURCE",)), HOST,
                        DEFAULT_CAPABILITIES, notes)
    assert "CAP_SYS_RESOURCE" not in caps
    assert notes == [
        "capability CAP_SYS_RESOURCE is not in the host's bounding set; not granted"]


def test_unknown_capability_is_invalid_argument():
    with pytest.raises(InvalidArgument, match="FLY"):
        capabilities(SecurityContext(add_capabilities=("FLY",)), HOST, DEFAULT_CAPABILITIES, [])


def test_privileged_gets_exactly_the_fake_bounding_set():
    host = replace(HOST, cap_bounding=parse_capbnd("CapBnd:\t0000000000000421\n"))
    spec, _ = build(with_sc(privileged=True), host=host)
    caps = spec["process"]["capabilities"]
    assert caps["bounding"] == ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    assert caps["effective"] == caps["permitted"] == caps["bounding"]
    assert "inheritable" not in caps and "ambient" not in caps


@pytest.mark.parametrize("requested, daemon, restrict, expected, noted", [
    (-998, -500, True, -500, True),
    (-998, 0, True, 0, True),
    (100, -500, True, 100, False),
    (-500, -500, True, -500, False),
    (-998, 0, False, -998, False),
])
def test_oom_score_adj_clamp(requested, daemon, restrict, expected, noted):
    config = ContainerConfig(name="c", command=("x",),
                             resources=Resources(oom_score_adj=requested))
    spec, notes = build(config, host=replace(HOST, oom_score_adj=daemon),
                        restrict_oom_score_adj=restrict)
    assert spec["process"]["oomScoreAdj"] == expected
    assert notes == ([f"oom_score_adj {requested} raised to the daemon's own {daemon}"]
                     if noted else [])


def test_process_flags_root_and_annotations():
    config = ContainerConfig(name="c", command=("x",), tty=True, annotations={"a.b/c": "d"},
                             security_context=SecurityContext(no_new_privs=True,
                                                              readonly_rootfs=True))
    spec, _ = build(config, rootfs="/r/rootfs")
    assert spec["process"]["terminal"] is True
    assert spec["process"]["noNewPrivileges"] is True
    assert spec["root"] == {"path": "/r/rootfs", "readonly": True}
    assert spec["annotations"] == {"a.b/c": "d"}
    assert spec["ociVersion"] == "1.0.2"
    json.dumps(spec)  # plain JSON types only


# ---------------------------------------------------------------------------- mounts


def mounts_by_dest(spec):
    """The spec's mounts keyed by destination."""
    return {m["destination"]: m for m in spec["mounts"]}


def test_default_mounts():
    spec, _ = build()
    mounts = mounts_by_dest(spec)
    assert [m["destination"] for m in spec["mounts"]] == [
        "/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup"]
    assert mounts["/proc"]["type"] == "proc"
    assert mounts["/dev/shm"]["type"] == "tmpfs"
    assert "ro" in mounts["/sys"]["options"] and "ro" in mounts["/sys/fs/cgroup"]["options"]
    assert mounts["/sys/fs/cgroup"]["type"] == "cgroup"


def test_privileged_sysfs_and_cgroup_are_writable():
    mounts = mounts_by_dest(build(with_sc(privileged=True))[0])
    assert "ro" not in mounts["/sys"]["options"]
    assert "ro" not in mounts["/sys/fs/cgroup"]["options"]


@pytest.mark.parametrize("readonly_rootfs", [False, True])
def test_pod_files_and_shm(readonly_rootfs):
    pod = PodSandboxConfig(shm_path="/run/pod/shm", hosts_path="/run/pod/hosts",
                           resolv_path="/run/pod/resolv.conf", hostname_path="/run/pod/hostname")
    mounts = mounts_by_dest(build(with_sc(readonly_rootfs=readonly_rootfs), pod=pod)[0])
    assert mounts["/dev/shm"]["type"] == "bind"
    assert mounts["/dev/shm"]["source"] == "/run/pod/shm"
    for dest, src in (("/etc/hosts", "/run/pod/hosts"), ("/etc/resolv.conf",
                      "/run/pod/resolv.conf"), ("/etc/hostname", "/run/pod/hostname")):
        assert mounts[dest]["source"] == src and mounts[dest]["type"] == "bind"
        assert ("ro" in mounts[dest]["options"]) is readonly_rootfs


@pytest.mark.parametrize("propagation, option, rootfs_propagation", [
    ("PROPAGATION_PRIVATE", "rprivate", None),
    ("PROPAGATION_HOST_TO_CONTAINER", "rslave", "rslave"),
    ("PROPAGATION_BIDIRECTIONAL", "rshared", "rshared"),
])
@pytest.mark.parametrize("readonly", [False, True])
def test_cri_mount_options(propagation, option, rootfs_propagation, readonly):
    mount = Mount("/data", "/srv/data", readonly=readonly, propagation=propagation)
    spec, _ = build(ContainerConfig(name="c", command=("x",), mounts=(mount,)))
    data = mounts_by_dest(spec)["/data"]
    assert data == {"destination": "/data", "type": "bind", "source": "/srv/data",
                    "options": ["rbind", option, "ro" if readonly else "rw"]}
    assert spec["linux"].get("rootfsPropagation") == rootfs_propagation


def test_cri_mount_replaces_default_and_is_sorted_parents_first():
    mounts = (Mount("/a/b/c", "/h/c"), Mount("/etc/hosts", "/mine"), Mount("/a", "/h/a"))
    pod = PodSandboxConfig(hosts_path="/run/pod/hosts")
    spec, _ = build(ContainerConfig(name="c", command=("x",), mounts=mounts), pod=pod)
    dests = [m["destination"] for m in spec["mounts"]]
    assert dests.count("/etc/hosts") == 1
    assert mounts_by_dest(spec)["/etc/hosts"]["source"] == "/mine"
    assert dests.index("/a") < dests.index("/a/b/c")


def test_recursive_read_only():
    rro = Mount("/data", "/srv", readonly=True, recursive_read_only=True)
    spec, _ = build(ContainerConfig(name="c", command=("x",), mounts=(rro,)), rro_supported=True)
    assert mounts_by_dest(spec)["/data"]["options"][-1] == "rro"
    with pytest.raises(InvalidArgument, match="recursive read-only mounts are not supported"):
        build(ContainerConfig(name="c", command=("x",), mounts=(rro,)), rro_supported=False)


@pytest.mark.parametrize("mount, match", [
    (Mount("/d", "/s", recursive_read_only=True), "needs readonly"),
    (Mount("/d", "/s", readonly=True, recursive_read_only=True,
           propagation="PROPAGATION_HOST_TO_CONTAINER"), "PROPAGATION_PRIVATE"),
    (Mount("relative", "/s"), "absolute"),
    (Mount("/d", "/s", propagation="PROPAGATION_SIDEWAYS"), "propagation"),
])
def test_bad_cri_mounts(mount, match):
    with pytest.raises(InvalidArgument, match=match):
        build(ContainerConfig(name="c", command=("x",), mounts=(mount,)), rro_supported=True)


# ---------------------------------------------------------------------------- linux


PATHS = {"network": "/run/netns/p", "ipc": "/proc/9/ns/ipc", "uts": "/proc/9/ns/uts",
         "pid": "/proc/9/ns/pid"}


@pytest.mark.parametrize("opts, expected", [
    (NamespaceOption(), [{"type": "pid"}, {"type": "network", "path": "/run/netns/p"},
                         {"type": "ipc", "path": "/proc/9/ns/ipc"},
                         {"type": "uts", "path": "/proc/9/ns/uts"},
                         {"type": "mount"}, {"type": "cgroup"}]),
    (NamespaceOption(pid=POD), [{"type": "pid", "path": "/proc/9/ns/pid"},
                                {"type": "network", "path": "/run/netns/p"},
                                {"type": "ipc", "path": "/proc/9/ns/ipc"},
                                {"type": "uts", "path": "/proc/9/ns/uts"},
                                {"type": "mount"}, {"type": "cgroup"}]),
    (NamespaceOption(network=NODE, pid=NODE, ipc=NODE), [{"type": "mount"},
                                                         {"type": "cgroup"}]),
    (NamespaceOption(ipc=CONTAINER), [{"type": "pid"},
                                      {"type": "network", "path": "/run/netns/p"},
                                      {"type": "ipc"}, {"type": "uts", "path": "/proc/9/ns/uts"},
                                      {"type": "mount"}, {"type": "cgroup"}]),
])
def test_namespaces(opts, expected):
    pod = PodSandboxConfig(namespace_paths=PATHS, hostname="web-0")
    spec, _ = build(with_sc(namespace_options=opts), pod=pod)
    assert spec["linux"]["namespaces"] == expected
    # A hostname can only be set in a UTS namespace of the container's own pod.
    assert spec.get("hostname") == (None if opts.network == NODE else "web-0")


def test_namespace_target_is_refused():
    with pytest.raises(InvalidArgument, match="TARGET"):
        build(with_sc(namespace_options=NamespaceOption(pid=TARGET)))


@pytest.mark.parametrize("sc, masked, readonly", [
    (SecurityContext(), list(DEFAULT_MASKED_PATHS), list(DEFAULT_READONLY_PATHS)),
    (SecurityContext(privileged=True), [], []),
    (SecurityContext(masked_paths=(), readonly_paths=()), [], []),  # procMount Unmasked
    (SecurityContext(masked_paths=("/proc/x",), readonly_paths=("/proc/y",)),
     ["/proc/x"], ["/proc/y"]),
])
def test_masked_and_readonly_paths(sc, masked, readonly):
    spec, _ = build(ContainerConfig(name="c", command=("x",), security_context=sc))
    assert spec["linux"]["maskedPaths"] == masked
    assert spec["linux"]["readonlyPaths"] == readonly
    assert "/proc/kcore" in DEFAULT_MASKED_PATHS and "/proc/sys" in DEFAULT_READONLY_PATHS


def fake_stat(mode: int, rdev: int = 0):
    """A stat function returning one fixed result, for device tests."""
    return lambda path: _Stat(mode, rdev)


class _Stat:
    """The fields of os.stat_result that devices() reads."""

    def __init__(self, mode: int, rdev: int):
        self.st_mode, self.st_rdev, self.st_uid, self.st_gid = mode, rdev, 0, 5


def test_devices_and_cgroup_rules():
    dev = Device("/dev/fuse", "/dev/fuse", "rw")
    config = ContainerConfig(name="c", command=("x",), devices=(dev,))
    spec, _ = build(config, stat=fake_stat(stat.S_IFCHR | 0o666, os.makedev(10, 229)))
    assert spec["linux"]["devices"] == [{"path": "/dev/fuse", "type": "c", "major": 10,
                                         "minor": 229, "fileMode": 0o666, "uid": 0, "gid": 5}]
    assert spec["linux"]["resources"]["devices"] == [
        {"allow": False, "access": "rwm"},
        {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rw"}]


def test_block_device_and_privileged_allow_all():
    dev = Device("/dev/xvdb", "/dev/sdb", "r")
    config = ContainerConfig(name="c", command=("x",), devices=(dev,),
                             security_context=SecurityContext(privileged=True))
    spec, _ = build(config, stat=fake_stat(stat.S_IFBLK | 0o660, os.makedev(8, 16)))
    assert spec["linux"]["devices"][0]["type"] == "b"
    assert spec["linux"]["resources"]["devices"] == [{"allow": True, "access": "rwm"}]


@pytest.mark.parametrize("dev, stat_fn, match", [
    (Device("/d", "/dev/null", "rwx"), fake_stat(stat.S_IFCHR), "permissions"),
    (Device("/d", "/dev/null", ""), fake_stat(stat.S_IFCHR), "permissions"),
    (Device("/d", "/etc/passwd"), fake_stat(stat.S_IFREG), "not a device"),
    (Device("/d", "/nonexistent/dev"), os.stat, "/nonexistent/dev"),
])
def test_bad_devices(dev, stat_fn, match):
    config = ContainerConfig(name="c", command=("x",), devices=(dev,))
    with pytest.raises(InvalidArgument, match=match):
        build(config, stat=stat_fn)


def test_real_dev_null():
    config = ContainerConfig(name="c", command=("x",), devices=(Device("/dev/n", "/dev/null"),))
    spec, _ = build(config)
    assert spec["linux"]["devices"][0]["major"] == 1
    assert spec["linux"]["devices"][0]["minor"] == 3


@pytest.mark.parametrize("res, pids, expected", [
    (Resources(), 0, {}),
    (Resources(cpu_shares=512, cpu_quota=50000, cpu_period=100000, cpuset_cpus="0-1",
               cpuset_mems="0"), 0,
     {"cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0"}}),
    (Resources(memory_limit_in_bytes=1 << 30), 0,
     {"memory": {"limit": 1 << 30, "swap": 1 << 30}}),
    (Resources(memory_limit_in_bytes=1 << 30, memory_swap_limit_in_bytes=2 << 30), 0,
     {"memory": {"limit": 1 << 30, "swap": 2 << 30}}),
    (Resources(hugepage_limits=(HugepageLimit("2MB", 1 << 21),)), 1024,
     {"hugepageLimits": [{"pageSize": "2MB", "limit": 1 << 21}], "pids": {"limit": 1024}}),
])
def test_resources(res, pids, expected):
    spec, _ = build(ContainerConfig(name="c", command=("x",), resources=res), pids_limit=pids)
    got = dict(spec["linux"]["resources"])
    got.pop("devices")
    assert got == expected


@pytest.mark.parametrize("manager, parent, expected", [
    ("cgroupfs", "", "/ocid/ocid-cid"),
    ("cgroupfs", "/kubepods/burstable/pod1", "/kubepods/burstable/pod1/ocid-cid"),
    ("cgroupfs", "kubepods/", "/kubepods/ocid-cid"),
    ("systemd", "", "system.slice:ocid:cid"),
    ("systemd", "kubepods-burstable-pod1.slice", "kubepods-burstable-pod1.slice:ocid:cid"),
])
def test_cgroups_path(manager, parent, expected):
    assert cgroups_path("cid", parent, SpecOptions(cgroup_manager=manager)) == expected


@pytest.mark.parametrize("manager, parent", [
    ("systemd", "/kubepods"), ("cgroupfs", "kubepods.slice"), ("lxcfs", "/x"),
])
def test_cgroups_path_errors(manager, parent):
    with pytest.raises(InvalidArgument):
        cgroups_path("cid", parent, SpecOptions(cgroup_manager=manager))


@pytest.mark.parametrize("values, opts, expected", [
    ({"net.ipv4.ip_forward": "1"}, NamespaceOption(), {"net.ipv4.ip_forward": "1"}),
    ({"net/ipv4/conf/eth0.100/rp_filter": "0"}, NamespaceOption(),
     {"net.ipv4.conf.eth0/100.rp_filter": "0"}),
    ({"kernel.shmmax": "1", "fs.mqueue.msg_max": "9"}, NamespaceOption(network=NODE),
     {"kernel.shmmax": "1", "fs.mqueue.msg_max": "9"}),
])
def test_sysctls_allowed(values, opts, expected):
    assert sysctls(values, opts) == expected


@pytest.mark.parametrize("values, opts, match", [
    ({"net.core.somaxconn": "1"}, NamespaceOption(network=NODE), "host network"),
    ({"kernel.sem": "1 2 3 4"}, NamespaceOption(ipc=NODE), "host IPC"),
    ({"vm.swappiness": "1"}, NamespaceOption(), "not namespaced"),
    ({"net..x": "1"}, NamespaceOption(), "invalid name"),
    ({"Net.ipv4": "1"}, NamespaceOption(), "invalid name"),
])
def test_sysctls_refused(values, opts, match):
    with pytest.raises(InvalidArgument, match=match):
        sysctls(values, opts)


def test_pod_sysctls_land_in_spec():
    spec, _ = build(pod=PodSandboxConfig(sysctls={"net.ipv4.ping_group_range": "0 1"}))
    assert spec["linux"]["sysctl"] == {"net.ipv4.ping_group_range": "0 1"}


# ---------------------------------------------------------------------------- seccomp


def allowed(profile) -> set[str]:
    """Syscalls an OCI profile allows without argument conditions."""
    return {n for r in profile["syscalls"] if r["action"] == "SCMP_ACT_ALLOW"
            and not r.get("args") for n in r["names"]}


def test_shipped_default_profile():
    profile = seccomp.default_profile()
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert {"read", "write", "execve", "exit_group"} <= {
        n for r in profile["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" for n in r["names"]}
    assert any(a["architecture"] == "SCMP_ARCH_X86_64" for a in profile["archMap"])


@pytest.mark.parametrize("profile_type", ["", "RuntimeDefault"])
def test_runtime_default_seccomp(profile_type):
    sc = SecurityContext(seccomp=SecurityProfile(profile_type))
    spec, _ = build(ContainerConfig(name="c", command=("x",), security_context=sc))
    prof = spec["linux"]["seccomp"]
    assert prof["defaultAction"] == "SCMP_ACT_ERRNO"
    assert prof["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    assert "arch_prctl" in allowed(prof) and "read" in allowed(prof)
    assert not {"bpf", "init_module"} & allowed(prof)  # need caps the default set lacks
    for rule in prof["syscalls"]:  # only OCI keys remain
        assert set(rule) <= {"names", "action", "args", "errnoRet"}


@pytest.mark.parametrize("caps, arch, present, absent", [
    ({"CAP_SYS_ADMIN"}, "amd64", {"bpf", "arch_prctl"}, {"init_module"}),
    ({"CAP_SYS_MODULE"}, "amd64", {"init_module"}, {"bpf"}),
    (set(), "arm64", {"read"}, {"arch_prctl", "bpf"}),
])
def test_seccomp_includes_and_excludes(caps, arch, present, absent):
    prof = seccomp.to_oci(seccomp.default_profile(), frozenset(caps), arch)
    assert present <= allowed(prof) and not absent & allowed(prof)
    if arch == "arm64":
        assert prof["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]


def test_seccomp_excluded_cap_gets_errno_rule():
    prof = seccomp.to_oci(seccomp.default_profile(), frozenset(), "amd64")
    errno = [r for r in prof["syscalls"] if "bpf" in r["names"]]
    assert errno and errno[0]["action"] == "SCMP_ACT_ERRNO" and errno[0]["errnoRet"] == 1


def test_unconfined_and_privileged_have_no_seccomp():
    for sc in (SecurityContext(seccomp=SecurityProfile("Unconfined")),
               SecurityContext(privileged=True)):
        spec, _ = build(ContainerConfig(name="c", command=("x",), security_context=sc))
        assert "seccomp" not in spec["linux"]


def test_localhost_seccomp(tmp_path):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "architectures":
                                ["SCMP_ARCH_X86_64"], "syscalls": [
                                    {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}))
    sc = SecurityContext(seccomp=SecurityProfile("Localhost", str(path)))
    spec, _ = build(ContainerConfig(name="c", command=("x",), security_context=sc))
    assert spec["linux"]["seccomp"] == {
        "defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}


@pytest.mark.parametrize("content, match", [
    ("{not json", "not valid JSON"),
    ('{"syscalls": []}', "no defaultAction"),
    (None, "No such file"),
])
def test_localhost_seccomp_errors_name_the_file(tmp_path, content, match):
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_text(content)
    sc = SecurityContext(seccomp=SecurityProfile("Localhost", str(path)))
    with pytest.raises(InvalidArgument, match=match) as info:
        build(ContainerConfig(name="c", command=("x",), security_context=sc))
    assert str(path) in str(info.value)


@pytest.mark.parametrize("profile, match", [
    (SecurityProfile("Localhost", ""), "localhost_ref"), (SecurityProfile("Strange"), "Strange"),
])
def test_seccomp_bad_types(profile, match):
    with pytest.raises(InvalidArgument, match=match):
        build(with_sc(seccomp=profile))


# ---------------------------------------------------------------------------- apparmor


@pytest.mark.parametrize("enabled, sc, expected", [
    (False, SecurityContext(), None),
    (False, SecurityContext(apparmor=SecurityProfile("Localhost", "mine")), None),
    (True, SecurityContext(), "ocid-default"),
    (True, SecurityContext(apparmor=SecurityProfile("Localhost", "mine")), "mine"),
    (True, SecurityContext(apparmor=SecurityProfile("Unconfined")), None),
    (True, SecurityContext(privileged=True), None),
])
def test_apparmor(enabled, sc, expected):
    host = replace(HOST, apparmor_enabled=enabled)
    spec, _ = build(ContainerConfig(name="c", command=("x",), security_context=sc), host=host)
    assert spec["process"].get("apparmorProfile") == expected


# ---------------------------------------------------------------------------- schema


def test_full_spec_validates(rootfs):
    config = ContainerConfig(
        name="web", args=("-g", "daemon off;"), envs=(("A", "1"),),
        mounts=(Mount("/data", "/srv", readonly=True),), annotations={"k": "v"},
        resources=Resources(cpu_shares=2, memory_limit_in_bytes=1 << 26),
        security_context=SecurityContext(run_as_username="alice", no_new_privs=True))
    pod = PodSandboxConfig(hostname="web-0", namespace_paths=PATHS, shm_path="/run/shm",
                           hosts_path="/run/hosts", sysctls={"net.ipv4.ip_forward": "1"})
    spec, notes = build(config, pod=pod, image=ImageConfig(entrypoint=("nginx",), user="alice"),
                        rootfs=rootfs, pids_limit=100)
    assert notes == []
    validate(spec)  # idempotent: a built spec passes again
    assert spec["process"]["args"] == ["nginx", "-g", "daemon off;"]


@pytest.mark.parametrize("breaks, where", [
    (lambda s: s["process"].__setitem__("oomScoreAdj", "low"), "/process/oomScoreAdj"),
    (lambda s: s["linux"]["namespaces"].append({"type": "time"}), "/linux/namespaces/6/type"),
    (lambda s: s["process"]["user"].__setitem__("uid", -1), "/process/user/uid"),
    (lambda s: s["mounts"][0].pop("destination"), "/mounts/0"),
    (lambda s: s.pop("ociVersion"), "/"),
])
def test_schema_rejects_broken_spec(breaks, where):
    spec, _ = build()
    breaks(spec)
    with pytest.raises(InternalError, match="invalid at ") as info:
        validate(spec)
    assert f"invalid at {where}:" in str(info.value)


# ---------------------------------------------------------------------------- sandbox


def test_sandbox_spec():
    pod = PodSandboxConfig(hostname="pod-a", namespace_paths={**PATHS}, cgroup_parent="/kubepods")
    spec, notes = build_sandbox_spec("pod1", pod, ("/catatonit", "-P"), "/r", HOST)
    assert spec["process"]["args"] == ["/catatonit", "-P"]
    assert spec["process"]["oomScoreAdj"] == 0
    assert notes == ["oom_score_adj -998 raised to the daemon's own 0"]
    # The infra creates every namespace except the network one CNI already set up.
    assert spec["linux"]["namespaces"] == [
        {"type": "pid"}, {"type": "network", "path": "/run/netns/p"}, {"type": "ipc"},
        {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}]
    assert spec["linux"]["cgroupsPath"] == "/kubepods/ocid-pod1"
    assert spec["hostname"] == "pod-a"


def test_sandbox_spec_host_network():
    pod = PodSandboxConfig(hostname="node", namespace_options=NamespaceOption(network=NODE))
    spec, _ = build_sandbox_spec("pod1", pod, ("/pause",), "/r",
                                 replace(HOST, oom_score_adj=-999))
    assert spec["process"]["oomScoreAdj"] == -998
    assert "hostname" not in spec
    assert {"network", "uts"}.isdisjoint(n["type"] for n in spec["linux"]["namespaces"])


def test_a_bad_seccomp_profile_is_rejected_every_time_and_named():
    from ocid.oci.spec import validate

    spec = {"ociVersion": "1.0.2", "linux": {"seccomp": {"defaultAction": "SCMP_ACT_BOGUS"}}}
    for _ in range(2):  # a failure is never remembered as checked
        with pytest.raises(InternalError, match="/linux/seccomp/defaultAction"):
            validate(spec)
    good = {"ociVersion": "1.0.2", "linux": {"seccomp": {"defaultAction": "SCMP_ACT_ERRNO"}},
            "process": {"cwd": "/", "args": "not-a-list"}}
    with pytest.raises(InternalError, match="/process"):
        validate(good)  # the rest of the spec is still checked when the profile is known
