"""OCI bundles for runtime tests: a static busybox rootfs and a `runc spec` config."""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from ocid.oci.runtime import OciRuntime, RuntimePaths

RUNC = "/usr/sbin/runc"
BUSYBOX = "/usr/bin/busybox"
APPLETS = ("sh", "echo", "sleep", "cat", "true", "false", "id", "sysctl", "dd", "head", "tail")
CGROUP_PARENT = "ocid-test"
CGROUP_ROOT = Path("/sys/fs/cgroup")


def make_bundle(
    dir: str | os.PathLike,
    args: list[str],
    *,
    env: list[str] | None = None,
    terminal: bool = False,
    memory_limit: int | None = None,
    readonly: bool = False,
) -> str:
    """Write ``dir/rootfs`` (busybox) and ``dir/config.json``; return the bundle path."""
    bundle = Path(dir)
    bin_dir = bundle / "rootfs" / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, bin_dir / "busybox")
    for applet in APPLETS:
        (bin_dir / applet).symlink_to("busybox")
    subprocess.run([RUNC, "spec", "--bundle", str(bundle)], check=True, capture_output=True)
    config_path = bundle / "config.json"
    config = json.loads(config_path.read_text())
    process = config["process"]
    process["args"] = list(args)
    process["terminal"] = terminal
    if env is not None:
        process["env"] = list(env)
    config["root"]["readonly"] = readonly
    linux = config["linux"]
    # A unique absolute path, so cleanup knows exactly which cgroup dirs are ours.
    linux["cgroupsPath"] = f"/{CGROUP_PARENT}/{uuid.uuid4().hex[:12]}"
    if memory_limit is not None:
        linux.setdefault("resources", {})["memory"] = {"limit": memory_limit}
    # runc spec asks for nothing that needs CAP_SYS_RESOURCE (no oomScoreAdj, nofile 1024),
    # but drop those keys anyway in case a future runc adds them.
    process.pop("oomScoreAdj", None)
    config_path.write_text(json.dumps(config, indent=2))
    return str(bundle)


def cgroup_dirs(bundle: str | os.PathLike) -> list[Path]:
    """The bundle's cgroup directories that exist now, in every hierarchy."""
    config = json.loads((Path(bundle) / "config.json").read_text())
    rel = config["linux"]["cgroupsPath"].lstrip("/")
    # cpu and cpuacct are symlinks to one hierarchy: resolve to list each dir once.
    return sorted({(d / rel).resolve() for d in CGROUP_ROOT.iterdir() if (d / rel).is_dir()})


def remove_cgroups(bundle: str | os.PathLike) -> None:
    """Remove the bundle's leaf cgroups (runc delete may already have) and an empty parent."""
    for leaf in cgroup_dirs(bundle):
        try:
            leaf.rmdir()
        except FileNotFoundError:
            pass
    for hierarchy in CGROUP_ROOT.iterdir():
        try:
            (hierarchy / CGROUP_PARENT).rmdir()
        except OSError:
            pass  # absent, or another test's cgroup still lives there


@dataclass
class Ctr:
    """One test container: its ID and paths."""

    id: str
    bundle: str
    persist: str
    log: str
    conmon_pid: int | None = None


def exited(pid: int, timeout: float = 0) -> bool:
    """Whether ``pid`` has exited (a zombie counts), waiting up to ``timeout``."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(timeout * 1000))
    finally:
        os.close(fd)


def make_runtime(root: Path) -> OciRuntime:
    """An OciRuntime driving runc and conmon with all its state under ``root``."""
    return OciRuntime(RuntimePaths(
        runtime_path=RUNC, runtime_root=str(root / "r"), conmon_path="/usr/bin/conmon",
        conmon_env=("PATH=/usr/sbin:/usr/bin:/sbin:/bin",),
        exits_dir=str(root / "e"), attach_dir=str(root / "a"),
    ))  # fmt: skip
