"""Find (and remove) what a test's ocid left on the host: the check behind "no leftovers".

Everything an ocid under ``workdir`` makes carries that path: conmon's command line
(its bundle), runc's state root, overlay and shm mounts, network namespaces (tests set
``netns_dir`` inside it), and the cgroups named by its bundles' config.json.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

RUNC = "/usr/sbin/runc"


def processes_under(workdir: Path, ignore: tuple[int, ...] = ()) -> list[int]:
    """PIDs whose command line names a path under ``workdir`` (conmon, runc), but ``ignore``."""
    needle = str(workdir).encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in (os.getpid(), *ignore):
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in cmdline and state != "Z":
            found.append(int(entry))
    return found


def mounts() -> list[tuple[str, str, str, str]]:
    """(mount point, fstype, mount options, super options) of every mount, in order."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            point = fields[4].encode().decode("unicode_escape")
            found.append((point, fields[sep + 1], fields[5], fields[sep + 3]))
    return found


def mounts_under(workdir: Path, keep: tuple[str, ...] = ()) -> list[str]:
    """Mount points under ``workdir`` except ``keep``, deepest first."""
    prefix = str(workdir).rstrip("/") + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefix) and point not in keep:
            points.append(point)
    return sorted(set(points), key=len, reverse=True)


def runtime_containers(workdir: Path) -> list[tuple[str, str]]:
    """(runc root, container ID) for every container in the runtime roots under ``workdir``."""
    found = []
    runtime_dir = workdir / "run" / "runtime"
    if runtime_dir.is_dir():
        for root in sorted(runtime_dir.iterdir()):
            out = subprocess.run([RUNC, "--root", str(root), "list", "--format", "json"],
                                 capture_output=True, text=True, check=False).stdout
            found += [(str(root), c["id"]) for c in json.loads(out or "null") or []]
    return found


def cgroups_of(workdir: Path) -> list[str]:
    """Container cgroups that bundles under ``workdir`` named, and any ``ocid-<id>`` cgroup
    left under the default parent ``/ocid`` (tests run one daemon at a time)."""
    paths = set()
    hierarchies = [h for h in Path("/sys/fs/cgroup").iterdir() if h.is_dir()]
    for config in workdir.glob("root/*/*/config.json"):
        try:
            cgroups_path = json.loads(config.read_text())["linux"]["cgroupsPath"]
        except (OSError, ValueError, KeyError):
            continue
        paths.update(str(h / cgroups_path.lstrip("/")) for h in hierarchies
                     if (h / cgroups_path.lstrip("/")).is_dir())
    for hierarchy in hierarchies:
        paths.update(str(p) for p in hierarchy.glob("ocid/ocid-*") if p.is_dir())
    return sorted(paths)


def leftovers(workdir: Path, daemon_pid: int = 0) -> dict[str, list]:
    """What is still alive or mounted for ``workdir``; empty lists when all is clean.

    The netns directory itself stays a mount point, as ``ip netns`` leaves /var/run/netns.
    """
    return {"processes": processes_under(workdir, (daemon_pid,)),
            "mounts": mounts_under(workdir, (str(workdir / "netns"),)),
            "runtime": runtime_containers(workdir), "cgroups": cgroups_of(workdir)}


def sweep(workdir: Path) -> None:
    """Remove every leftover of ``workdir`` (after a test, whatever it did)."""
    for root, cid in runtime_containers(workdir):
        subprocess.run([RUNC, "--root", root, "delete", "--force", cid],
                       capture_output=True, check=False)
    for pid in processes_under(workdir):
        try:
            os.kill(pid, signal.SIGKILL)  # started by this test's ocid
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while processes_under(workdir) and time.monotonic() < deadline:
        time.sleep(0.05)
    for point in mounts_under(workdir):
        if subprocess.run(["umount", point], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    for path in cgroups_of(workdir):
        try:
            os.rmdir(path)
        except OSError:
            pass
