"""CRI benchmark: ocid and containerd's CRI plugin side by side, on the same work, in one run.

Starts, under one scratch directory: a local ``docker-registry`` holding the busybox test
image, a pause image made from catatonit (containerd needs a pause *image*; ocid runs the
catatonit binary) and, for the pull workload, a ~100 MB multi-layer image built like
``pull.py``'s; then one ocid and one containerd (1.6, CRI plugin, config version 2), each on
its own root, socket, CNI bridge network and cgroup parent, with the same runc. Both are
driven by the same client code (``tests.support.cri.Cri`` over the ``cri_api.v1`` stubs),
alternating ocid and containerd round by round so that drift on a noisy machine hits both.

Workloads (``--only`` takes their numbers or names, comma-separated):

1. ``seq``: RunPodSandbox, CreateContainer, StartContainer of busybox ``sleep 3600``, then
   StopContainer, RemoveContainer, StopPodSandbox, RemovePodSandbox; per operation, pod start
   and teardown end to end, and the daemon's CPU time per round.
2. ``parallel``: 10 pods of one container started at once (10 client threads); wall time
   until all run (and until all are removed again).
3. ``exec``: ExecSync of ``true`` in a running container.
4. ``scale``: with 50 pods x 2 containers running: ListContainers, ListPodSandbox,
   ContainerStatus latency; also the daemon's memory with those 50 pods.
5. ``pull``: cold pull of the ~100 MB image on a fresh daemon and root (CRI PullImage on
   both; also ``kpod pull`` into a fresh root); seconds and MB/s.
6. ``memory``: the daemon's VmRSS idle and with 50 pods (part of ``scale``) and its CPU seconds
   during workload 1 (part of ``seq``).
7. ``cli``: wall time of ``ocic pod list`` and ``ocic runtimeversion`` against each socket.

Run from the repository root, as root::

    .venv/bin/python benchmarks/cri.py                 # everything: about 10 minutes on 2 cores
    .venv/bin/python benchmarks/cri.py --quick         # a smoke test: under 3 minutes
    .venv/bin/python benchmarks/cri.py --only seq,exec
    .venv/bin/python benchmarks/cri.py --only seq --profile   # plus py-spy on ocid during 1

Prints a table (a row per measure: ocid, containerd, ocid/containerd) and writes the same to
``benchmarks/results/cri.json`` with the machine it ran on. Everything it starts is stopped
and removed on the way out (Ctrl-C and SIGTERM included).
"""

from __future__ import annotations

import argparse
import atexit
import collections
import contextlib
import json
import math
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
for path in (REPO_ROOT, BENCH_DIR):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import grpc
import pull  # benchmarks/pull.py: the image, the ocid and kpod cold pulls
from cri_api.v1 import api_pb2
from cri_runtimes import (
    BridgeNetwork,
    ContainerdRuntime,
    OcidRuntime,
    Runtime,
    cpu_seconds,
    fresh_dir,
    log,
    mem_available_kb,
    pss_kb,
    shim_socket_dir_guard,
    status_kb,
)
from google.protobuf.internal import api_implementation
from tabulate import tabulate

from ocid import __version__ as OCID_VERSION
from tests.integration.conftest import OCIC
from tests.support.cri import container_config
from tests.support.images import LayerSpec, build_layout, busybox_layer, push_layout
from tests.support.registry import LocalRegistry

RESULTS = BENCH_DIR / "results" / "cri.json"
PROFILE_OUT = BENCH_DIR / "results" / "cri_profile.txt"
PY_SPY = Path(sys.executable).parent / "py-spy"
RUNTIMES = ("ocid", "containerd")
SLEEP = ["sleep", "3600"]
MB = 1_000_000
MEM_HEADROOM_KB = 1_500_000  # stop adding pods when less than this would stay available

WORKLOADS = {"seq": 1, "parallel": 2, "exec": 3, "scale": 4, "pull": 5, "memory": 6, "cli": 7}


@dataclass(frozen=True)
class Plan:
    """How much of each workload to run."""

    seq_rounds: int = 20
    parallel_rounds: int = 5
    parallel_pods: int = 10
    exec_runs: int = 100
    scale_pods: int = 50
    scale_containers_per_pod: int = 2
    scale_calls: int = 50
    scale_threads: int = 4
    pull_rounds: int = 3
    pull_size_mb: int = 100
    cli_runs: int = 10


FULL = Plan()
QUICK = Plan(seq_rounds=4, parallel_rounds=1, exec_runs=20, scale_pods=10, scale_calls=10,
             pull_rounds=1, pull_size_mb=40, cli_runs=3)


# ---- figures -----------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "median": statistics.median(values),
            "p95": percentile(values, 0.95), "min": min(values), "max": max(values)}


@dataclass
class Measure:
    """One row of the table: values per runtime, in ``unit``."""

    key: str
    workload: int
    title: str
    unit: str
    higher_is_better: bool = False
    values: dict[str, list[float]] = field(default_factory=lambda: {r: [] for r in RUNTIMES})

    def ratio(self) -> float | None:
        if not all(self.values[r] for r in RUNTIMES):
            return None
        theirs = statistics.median(self.values["containerd"])
        return statistics.median(self.values["ocid"]) / theirs if theirs else None

    def as_json(self) -> dict[str, object]:
        ratio = self.ratio()
        return {"key": self.key, "workload": self.workload, "title": self.title,
                "unit": self.unit, "higher_is_better": self.higher_is_better,
                **{r: ({**{k: round(v, 4) for k, v in summary(vals).items()},
                        "values": [round(v, 4) for v in vals]} if vals else None)
                   for r, vals in self.values.items()},
                "ratio_ocid_to_containerd": round(ratio, 3) if ratio is not None else None}


class Results:
    def __init__(self) -> None:
        self.measures: dict[str, Measure] = {}
        self.notes: list[str] = []

    def add(self, key: str, workload: int, title: str, unit: str, runtime: str, value: float,
            higher_is_better: bool = False) -> None:
        measure = self.measures.setdefault(key, Measure(key, workload, title, unit,
                                                        higher_is_better))
        measure.values[runtime].append(value)

    def note(self, text: str) -> None:
        log(f"note: {text}")
        self.notes.append(text)


def fmt(value: float) -> str:
    if abs(value - round(value)) < 1e-6 and abs(value) < 1e6:
        return f"{round(value)}"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def cell(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return fmt(values[0])
    s = summary(values)
    return f"{fmt(s['median'])} (p95 {fmt(s['p95'])}; {fmt(s['min'])}-{fmt(s['max'])})"


def table(results: Results) -> str:
    rows = []
    for m in sorted(results.measures.values(), key=lambda m: m.workload):
        ratio = m.ratio()
        unit = m.unit + (" (more is better)" if m.higher_is_better else "")
        rows.append([m.workload, m.title, unit, cell(m.values["ocid"]),
                     cell(m.values["containerd"]), f"{ratio:.2f}" if ratio is not None else "-"])
    return tabulate(rows, headers=["#", "measure", "unit", "ocid: median (p95; min-max)",
                                   "containerd", "ocid/containerd"], disable_numparse=True,
                    colalign=("right", "left", "left", "right", "right", "right"))


# ---- the images ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Images:
    busybox: str
    pause: str


def push_images(scratch: Path, registry: LocalRegistry) -> Images:
    """The busybox test image and a pause image of static catatonit (for containerd)."""
    busybox = build_layout(scratch / "busybox-layout", "latest", [busybox_layer()])
    busybox_ref = f"{registry.host}/bench/busybox:latest"
    push_layout(busybox.layout_dir, busybox_ref)
    pause_layer = LayerSpec(files={"/catatonit": Path("/usr/bin/catatonit").read_bytes()},
                            modes={"/catatonit": 0o755})
    pause = build_layout(scratch / "pause-layout", "latest", [pause_layer],
                         config_overrides={"Entrypoint": ["/catatonit", "-P"], "Cmd": []})
    pause_ref = f"{registry.host}/bench/pause:latest"
    push_layout(pause.layout_dir, pause_ref)
    return Images(busybox_ref, pause_ref)


# ---- the benchmark -----------------------------------------------------------------------

def now() -> float:
    return time.perf_counter()


def container(image: str, name: str) -> api_pb2.ContainerConfig:
    """busybox ``sleep 3600`` with the RuntimeDefault seccomp profile (explicit: ocid's
    default for an unset profile is RuntimeDefault, containerd 1.6's is unconfined)."""
    sc = api_pb2.LinuxContainerSecurityContext(seccomp=api_pb2.SecurityProfile(
        profile_type=api_pb2.SecurityProfile.ProfileType.RuntimeDefault))
    return container_config(image, SLEEP, name,
                            linux=api_pb2.LinuxContainerConfig(security_context=sc))


class Bench:
    def __init__(self, runtimes: dict[str, Runtime], images: Images, plan: Plan,
                 results: Results, scratch: Path, registry: LocalRegistry):
        self.runtimes = runtimes
        self.images = images
        self.plan = plan
        self.results = results
        self.scratch = scratch
        self.registry = registry
        self.cpu_totals: dict[str, list[float]] = {r: [0.0, 0.0] for r in RUNTIMES}

    def order(self, round_index: int) -> list[Runtime]:
        """ocid first in even rounds, containerd first in odd ones."""
        names = RUNTIMES if round_index % 2 == 0 else RUNTIMES[::-1]
        return [self.runtimes[n] for n in names]

    # -- building blocks
    def start_pod(self, rt: Runtime, name: str, containers: int = 1) -> tuple[str, list[str]]:
        """A pod with ``containers`` sleeping containers; (pod ID, container IDs)."""
        cri = rt.cri
        assert cri is not None
        pod = rt.pod_config(name)
        pod_id = cri.run_pod(pod)
        cids = []
        for i in range(containers):
            cid = cri.create(pod_id, container(self.images.busybox, f"c{i}"), pod)
            cri.start(cid)
            cids.append(cid)
        return pod_id, cids

    def remove_pod(self, rt: Runtime, pod_id: str) -> None:
        assert rt.cri is not None
        rt.cri.stop_pod(pod_id)
        rt.cri.remove_pod(pod_id)

    def start_pods(self, rt: Runtime, count: int, containers: int, threads: int,
                   name: str) -> tuple[float, list[tuple[str, list[str]]], list[str]]:
        """Start ``count`` pods from ``threads`` client threads: (wall s, pods, errors)."""
        errors: list[str] = []
        pods: list[tuple[str, list[str]]] = []

        def one(i: int) -> None:
            try:
                pods.append(self.start_pod(rt, f"{name}-{i}", containers))
            except grpc.RpcError as exc:
                errors.append(f"{exc.code().name}: {exc.details()}")

        with ThreadPoolExecutor(threads) as pool:
            start = now()
            list(pool.map(one, range(count)))
            elapsed = now() - start
        return elapsed, pods, errors

    def remove_pods(self, rt: Runtime, pod_ids: list[str], threads: int) -> float:
        with ThreadPoolExecutor(threads) as pool:
            start = now()
            list(pool.map(lambda p: self.remove_pod(rt, p), pod_ids))
            return now() - start

    def pod_cycle(self, rt: Runtime, name: str) -> dict[str, float]:
        """Workload 1's round: the seven calls, each timed (seconds)."""
        cri = rt.cri
        assert cri is not None
        pod = rt.pod_config(name)
        t = [now()]
        pod_id = cri.run_pod(pod)
        t.append(now())
        cid = cri.create(pod_id, container(self.images.busybox, "c0"), pod)
        t.append(now())
        cri.start(cid)
        t.append(now())
        cri.stop(cid, timeout=0)  # sleep as PID 1 ignores SIGTERM: straight to SIGKILL, both
        t.append(now())
        cri.remove(cid)
        t.append(now())
        cri.stop_pod(pod_id)
        t.append(now())
        cri.remove_pod(pod_id)
        t.append(now())
        ops = ["RunPodSandbox", "CreateContainer", "StartContainer", "StopContainer",
               "RemoveContainer", "StopPodSandbox", "RemovePodSandbox"]
        times = {op: t[i + 1] - t[i] for i, op in enumerate(ops)}
        times["pod start, end to end (Run+Create+Start)"] = t[3] - t[0]
        times["teardown, end to end (Stop+Remove+StopPod+RemovePod)"] = t[7] - t[3]
        times["round total"] = t[7] - t[0]
        return times

    # -- set-up
    def warm_up(self) -> None:
        """Pull busybox (and containerd's pause), run one pod, check it, remove it. Untimed:
        the first pod makes the bridge, loads code, fills caches."""
        for rt in self.runtimes.values():
            assert rt.cri is not None
            rt.cri.pull(self.images.busybox)
            if isinstance(rt, ContainerdRuntime):
                rt.cri.pull(self.images.pause)
            pod_id, (cid,) = self.start_pod(rt, "warmup")
            state = rt.cri.status(cid).state
            if state != api_pb2.CONTAINER_RUNNING:
                raise RuntimeError(f"{rt.name}: warm-up container is in state {state}")
            if rt.cri.exec(cid, "true").exit_code != 0:
                raise RuntimeError(f"{rt.name}: exec of true failed in the warm-up container")
            ip = rt.cri.pod_status(pod_id).network.ip  # both really do CNI
            assert rt.network is not None
            if not ip.startswith(rt.network.subnet.rsplit(".", 1)[0] + "."):
                raise RuntimeError(f"{rt.name}: warm-up pod has IP {ip!r}, not one of "
                                   f"{rt.network.subnet}")
            self.remove_pod(rt, pod_id)
            log(f"{rt.name}: warm-up pod ran (IP {ip}) and was removed")

    def idle_memory(self) -> None:
        time.sleep(1.0)
        for rt in self.runtimes.values():
            self.results.add("mem.idle", 6, "daemon VmRSS, idle (after one pod ran)", "MB",
                             rt.name, status_kb(rt.pid) / 1000)

    # -- workload 1
    def seq(self) -> None:
        rounds = self.plan.seq_rounds
        for i in range(rounds):
            for rt in self.order(i):
                cpu_before, children_before = cpu_seconds(rt.pid)
                times = self.pod_cycle(rt, f"seq{i}")
                cpu_after, children_after = cpu_seconds(rt.pid)
                for op, seconds in times.items():
                    self.results.add(f"seq.{op}", 1, op, "ms", rt.name, seconds * 1000)
                self.results.add("seq.cpu", 6, "daemon CPU (utime+stime) per workload-1 round",
                                 "ms", rt.name, (cpu_after - cpu_before) * 1000)
                self.cpu_totals[rt.name][0] += cpu_after - cpu_before
                self.cpu_totals[rt.name][1] += children_after - children_before
            log(f"seq round {i + 1}/{rounds}: " + ", ".join(
                f"{n} {self.results.measures['seq.round total'].values[n][-1]:.0f} ms"
                for n in RUNTIMES))
        for name, (own, children) in self.cpu_totals.items():
            self.results.add("seq.cpu_total", 6,
                             f"daemon CPU (utime+stime), all {rounds} workload-1 rounds", "s",
                             name, own)
            self.results.add("seq.cpu_children", 6,
                             f"CPU of reaped children (cutime+cstime), {rounds} rounds", "s",
                             name, children)

    # -- workload 2
    def parallel(self) -> None:
        count = self.plan.parallel_pods
        for i in range(self.plan.parallel_rounds):
            for rt in self.order(i):
                wall, pods, errors = self.start_pods(rt, count, 1, count, f"par{i}")
                if errors:
                    raise RuntimeError(f"{rt.name}: parallel start failed: {errors[:3]}")
                self.check_running(rt, [c for _, cids in pods for c in cids])
                self.results.add("par.start", 2, f"{count} pods x 1 container started at once: "
                                 "wall time to all running", "s", rt.name, wall)
                removed = self.remove_pods(rt, [p for p, _ in pods], count)
                self.results.add("par.remove", 2, f"{count} pods stopped and removed at once",
                                 "s", rt.name, removed)
                log(f"parallel round {i + 1}: {rt.name} start {wall:.2f} s, "
                    f"remove {removed:.2f} s")

    def check_running(self, rt: Runtime, cids: list[str]) -> None:
        assert rt.cri is not None
        running = {c.id for c in rt.cri.containers(state=api_pb2.CONTAINER_RUNNING)}
        if missing := [c for c in cids if c not in running]:
            raise RuntimeError(f"{rt.name}: {len(missing)} containers are not running")

    # -- workload 3
    def exec_sync(self) -> None:
        targets = {rt.name: self.start_pod(rt, "exec") for rt in self.runtimes.values()}
        runs = self.plan.exec_runs
        per_block = 10
        for block in range(math.ceil(runs / per_block)):
            for rt in self.order(block):
                assert rt.cri is not None
                cid = targets[rt.name][1][0]
                for _ in range(min(per_block, runs - block * per_block)):
                    start = now()
                    response = rt.cri.exec(cid, "true")
                    elapsed = now() - start
                    if response.exit_code != 0:
                        raise RuntimeError(f"{rt.name}: exec of true exited "
                                           f"{response.exit_code}: {response.stderr!r}")
                    self.results.add("exec.true", 3, "ExecSync of `true`", "ms", rt.name,
                                     elapsed * 1000)
        for rt in self.runtimes.values():
            self.remove_pod(rt, targets[rt.name][0])

    # -- workload 4 (and the memory half of 6)
    def scale(self) -> None:
        plan = self.plan
        wanted, per_pod = plan.scale_pods, plan.scale_containers_per_pod
        pods: dict[str, list[tuple[str, list[str]]]] = {r: [] for r in RUNTIMES}
        setup: dict[str, float] = {r: 0.0 for r in RUNTIMES}
        batch = 10
        stopped_by = ""
        for b in range(math.ceil(wanted / batch)):
            size = min(batch, wanted - b * batch)
            if mem_available_kb() < MEM_HEADROOM_KB:
                stopped_by = f"less than {MEM_HEADROOM_KB // 1000} MB of memory available"
                break
            for rt in self.order(b):
                wall, started, errors = self.start_pods(rt, size, per_pod, plan.scale_threads,
                                                        f"scale{b}")
                pods[rt.name] += started
                setup[rt.name] += wall
                if errors:
                    stopped_by = f"{rt.name} failed to start a pod: {errors[0]}"
            if stopped_by:
                break
            log(f"scale: {len(pods['ocid'])} + {len(pods['containerd'])} pods running, "
                f"{mem_available_kb() // 1000} MB available")
        counts = {r: len(p) for r, p in pods.items()}
        n = min(counts.values())
        if stopped_by or n < wanted:
            self.results.note(f"workload 4 ran with {counts} pods x {per_pod} containers, not "
                              f"{wanted}: {stopped_by or 'fewer started'}")
        label = f"{n} pods x {per_pod} containers"
        for rt in self.runtimes.values():
            cids = [c for _, cs in pods[rt.name] for c in cs]
            self.check_running(rt, cids)
            self.results.add("scale.setup", 4, f"start {label} ({plan.scale_threads} client "
                             "threads, in batches of 10)", "s", rt.name, setup[rt.name])
        time.sleep(2.0)  # let the daemons settle (exit watchers, log writers)
        for rt in self.runtimes.values():
            helpers = rt.helper_pids()
            self.results.add("mem.pods", 6, f"daemon VmRSS with {label} running", "MB",
                             rt.name, status_kb(rt.pid) / 1000)
            self.results.add("mem.helpers", 6, f"helpers' PSS, summed (ocid: conmon per "
                             f"container; containerd: shim per pod), {label}", "MB",
                             rt.name, sum(pss_kb(p) for p in helpers) / 1000)
            self.results.add("mem.helper_count", 6, f"helper processes with {label}", "count",
                             rt.name, len(helpers))
        rng = random.Random(1)
        calls: list[tuple[str, str, Callable[[Runtime], object]]] = [
            ("scale.version", "Version (no work: the gRPC round trip itself)",
             lambda rt: rt.cri.call("Version", api_pb2.VersionRequest())),
            ("scale.list_containers", "ListContainers", lambda rt: rt.cri.containers()),
            ("scale.list_pods", "ListPodSandbox", lambda rt: rt.cri.pods()),
            ("scale.status", "ContainerStatus (a random container)",
             lambda rt: rt.cri.status(rng.choice(
                 [c for _, cs in pods[rt.name] for c in cs]))),
        ]
        for rt in self.runtimes.values():  # one untimed call each; and the counts are right
            assert rt.cri is not None
            if len(rt.cri.containers()) != counts[rt.name] * per_pod:
                raise RuntimeError(f"{rt.name}: ListContainers does not list every container")
        per_block = 10
        for block in range(math.ceil(plan.scale_calls / per_block)):
            for rt in self.order(block):
                for _ in range(min(per_block, plan.scale_calls - block * per_block)):
                    for key, title, call in calls:  # interleaved: the same conditions for all
                        start = now()
                        call(rt)
                        self.results.add(key, 4, f"{title}, {label}", "ms", rt.name,
                                         (now() - start) * 1000)
        for i, rt in enumerate(self.order(0)):
            removed = self.remove_pods(rt, [p for p, _ in pods[rt.name]], plan.scale_threads)
            self.results.add("scale.teardown", 4, f"stop and remove {label} "
                             f"({plan.scale_threads} client threads)", "s", rt.name, removed)
            log(f"scale: {rt.name} removed its pods in {removed:.1f} s")

    # -- workload 7
    def cli(self) -> None:
        for i in range(self.plan.cli_runs):
            for rt in self.order(i):
                for key, args in (("cli.podlist", ["pod", "list"]),
                                  ("cli.version", ["runtimeversion"])):
                    start = now()
                    result = subprocess.run([OCIC, "--connect", rt.socket, *args],
                                            capture_output=True, text=True, timeout=60,
                                            check=False)
                    elapsed = now() - start
                    if result.returncode != 0:
                        raise RuntimeError(f"ocic {' '.join(args)} against {rt.name} failed: "
                                           f"{result.stderr.strip()}")
                    self.results.add(key, 7, f"`ocic {' '.join(args)}` wall time (no pods)",
                                     "ms", rt.name, elapsed * 1000)

    # -- workload 5
    def pull(self) -> dict[str, object]:
        plan = self.plan
        started = now()
        image = pull.build_and_push(self.scratch, self.registry, plan.pull_size_mb)
        shutil.rmtree(image.built.layout_dir)  # the registry has its own copy
        log(f"pull: built and pushed {image.compressed_bytes / MB:.1f} MB "
            f"({len(image.layer_sizes)} layers, {image.files} files) in "
            f"{now() - started:.1f} s")
        contenders: dict[str, Callable[[pull.TestImage, Path], float]] = {
            "ocid": pull.pull_ocid, "containerd": self.pull_containerd,
            "kpod": pull.pull_kpod}
        names = list(contenders)
        size = image.compressed_bytes / MB
        titles = {"pull.cri": f"cold pull of {size:.0f} MB: CRI PullImage, fresh daemon",
                  "pull.kpod": f"cold pull of {size:.0f} MB: kpod pull vs containerd's "
                               "PullImage"}
        for i in range(plan.pull_rounds):
            for name in names[i % 3:] + names[:i % 3]:
                os.sync()  # untimed: nobody pays for the previous pull's writeback
                seconds = contenders[name](image, fresh_dir(self.scratch, f"p{i}"))
                log(f"pull round {i + 1}/{plan.pull_rounds}: {name} {seconds:.2f} s")
                # kpod's rows set it against containerd's CRI pull (there is no containerd CLI
                # pull here), so containerd's figures go into both.
                rows = (["pull.kpod"] if name == "kpod" else
                        ["pull.cri"] if name == "ocid" else ["pull.cri", "pull.kpod"])
                column = "containerd" if name == "containerd" else "ocid"
                for key in rows:
                    self.results.add(f"{key}.s", 5, titles[key], "s", column, seconds)
                    self.results.add(f"{key}.mbps", 5, titles[key], "MB/s", column,
                                     size / seconds, higher_is_better=True)
        return pull.image_info(image)

    def pull_containerd(self, image: pull.TestImage, workdir: Path) -> float:
        """Seconds the PullImage RPC takes on a fresh containerd with an empty root."""
        rt = ContainerdRuntime(workdir, None, self.registry.host, self.images.pause)
        try:
            rt.start()
            images = rt.image_stub()
            if images.ListImages(api_pb2.ListImagesRequest(), timeout=30).images:
                raise RuntimeError("the fresh containerd store is not empty")
            request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image.reference))
            start = now()
            response = images.PullImage(request, timeout=pull.PULL_TIMEOUT)
            elapsed = now() - start
            if response.image_ref != image.built.config_digest:
                raise RuntimeError(f"containerd pulled {response.image_ref}, "
                                   f"expected {image.built.config_digest}")
            return elapsed
        finally:
            rt.shutdown()

    # -- py-spy on ocid
    def spy(self, name: str, work: Callable[[], None], idle: bool) -> tuple[Path, float]:
        """Run ``work`` with py-spy sampling ocid (250 Hz, every thread, without pausing it);
        the raw collapsed stacks and the seconds ``work`` took."""
        raw = self.scratch / f"pyspy-{name}.txt"
        args = [str(PY_SPY), "record", "--pid", str(self.runtimes["ocid"].pid), "--threads",
                "--rate", "250", "--format", "raw", "--output", str(raw), "--nonblocking"]
        spy = subprocess.Popen(args + (["--idle"] if idle else []),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.5)  # let py-spy attach
        start = now()
        try:
            work()
        finally:
            elapsed = now() - start
            spy.send_signal(signal.SIGINT)
            _, err = spy.communicate(timeout=60)
        if not raw.exists():
            raise RuntimeError(f"py-spy wrote nothing: {err.decode(errors='replace')}")
        return raw, elapsed

    def profile(self, rounds: int) -> str:
        """ocid alone under py-spy: workload 1 twice, by wall clock (``--idle``: waiting
        counts) and by CPU (threads on CPU only); then the list and status calls of workload 4
        by CPU. A text report, also written to PROFILE_OUT."""
        ocid = self.runtimes["ocid"]
        assert ocid.cri is not None
        parts = []

        def cycles() -> None:
            for i in range(rounds):
                self.pod_cycle(ocid, f"prof{i}")

        for name, mode, idle in (("wall", "wall clock (--idle: waiting counts)", True),
                                 ("cpu", "CPU (threads on CPU only)", False)):
            raw, elapsed = self.spy(name, cycles, idle)
            parts.append(profile_report(raw, f"{mode}: {rounds} workload-1 rounds on ocid, "
                                        f"{elapsed:.1f} s ({1000 * elapsed / rounds:.0f} ms "
                                        "per round with py-spy attached)"))
        pods, per_pod, calls = 25, 2, 300
        _, started, errors = self.start_pods(ocid, pods, per_pod, self.plan.scale_threads, "prof")
        if errors:
            raise RuntimeError(f"ocid: profile pods failed: {errors[:2]}")
        cids = [c for _, cs in started for c in cs]
        rng = random.Random(2)

        def lists() -> None:
            for _ in range(calls):
                ocid.cri.containers()  # type: ignore[union-attr]
                ocid.cri.pods()  # type: ignore[union-attr]
                ocid.cri.status(rng.choice(cids))  # type: ignore[union-attr]

        try:
            raw, elapsed = self.spy("lists", lists, idle=False)
        finally:
            self.remove_pods(ocid, [p for p, _ in started], self.plan.scale_threads)
        parts.append(profile_report(raw, f"CPU: {calls} x (ListContainers, ListPodSandbox, "
                                    f"ContainerStatus) with {pods} pods x {per_pod} containers "
                                    f"on ocid, {elapsed:.1f} s"))
        text = "\n\n".join(parts) + "\n"
        PROFILE_OUT.parent.mkdir(parents=True, exist_ok=True)
        PROFILE_OUT.write_text(text)
        return text


# ---- py-spy reports --------------------------------------------------------------------------

RPC_FRAME = "ocid/server/instrument.py"


def short(frame: str, with_line: bool = False) -> str:
    """``func (path/file.py[:line])`` with site-packages / stdlib / repo prefixes cut."""
    name, _, where = frame.partition(" (")
    path, _, line = where.rstrip(")").rpartition(":")
    for marker in ("/site-packages/", "/lib/python3.11/", str(REPO_ROOT) + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path}:{line})" if with_line else f"{name} ({path})"


def profile_report(raw: Path, title: str, top: int = 25) -> str:
    """Shares of samples: per RPC, by own function and line, and inclusive by function, of
    the threads serving RPCs; plus what the other threads of the daemon did."""
    own: collections.Counter[str] = collections.Counter()
    own_lines: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    per_rpc: collections.Counter[str] = collections.Counter()
    other: collections.Counter[str] = collections.Counter()
    rpc_total = other_total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        raw_frames = stack.split(";")[1:]  # drop the thread name
        if not raw_frames:
            continue
        frames = [short(f) for f in raw_frames]
        if not any(RPC_FRAME in f for f in raw_frames):
            other_total += count
            other[frames[-1]] += count
            continue
        rpc_total += count
        at = next(i for i, f in enumerate(raw_frames) if RPC_FRAME in f)
        handler = next((f for f in frames[at + 1:] if "ocid/server/" in f
                        and RPC_FRAME not in f), "?")
        per_rpc[handler] += count
        own[frames[-1]] += count
        own_lines[short(raw_frames[-1], with_line=True)] += count
        for frame in set(frames[at + 1:]):
            inclusive[frame] += count

    def block(heading: str, counts: collections.Counter[str], total: int, n: int) -> str:
        rows = [f"  {100 * c / total:5.1f}%  {f}" for f, c in counts.most_common(n)]
        return f"{heading}:\n" + "\n".join(rows)

    out = [f"== py-spy, {title}",
           (f"{rpc_total} samples in threads serving an RPC, {other_total} in other threads "
            "(shares below are of the RPC samples)")]
    if rpc_total:
        out += [block("per RPC handler", per_rpc, rpc_total, 12),
                block("by own time (function)", own, rpc_total, top),
                block("by own time (line)", own_lines, rpc_total, 15),
                block("inclusive (function)", inclusive, rpc_total, top + 15)]
    if other_total:
        out.append(block("other threads, by own time (share of their samples)", other,
                         other_total, 10))
    return "\n\n".join(out)


# ---- machine --------------------------------------------------------------------------------

def version_of(args: list[str]) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False)
    except OSError as exc:
        return f"unavailable: {exc}"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) \
        else "?"


def package_version(name: str) -> str:
    """The installed Debian version of a package, or "" when dpkg does not know it."""
    out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", name], capture_output=True,
                         text=True, check=False)
    return out.stdout.strip() if out.returncode == 0 else ""


def machine_info(scratch: Path) -> dict[str, object]:
    info = pull.machine_info()
    info.update({
        "kernel_version": platform.version(),
        "filesystem": pull.filesystem(scratch),
        "ocid": OCID_VERSION,
        "containerd": version_of(["containerd", "--version"]),
        "runc": version_of(["runc", "--version"]),
        "conmon": version_of(["conmon", "--version"]),
        "catatonit": version_of(["catatonit", "--version"]),
        "packages": {pkg: package_version(pkg) for pkg in (
            "containerd", "runc", "conmon", "catatonit", "containernetworking-plugins",
            "docker-registry", "skopeo", "busybox-static")},
        "grpcio": grpc.__version__,
        "protobuf_backend": api_implementation.Type(),
        "cgroup": "v2" if Path("/sys/fs/cgroup/cgroup.controllers").exists()
                  else "v1 (hybrid)" if Path("/sys/fs/cgroup/unified").is_dir() else "v1",
    })
    return info


# ---- clean-up -------------------------------------------------------------------------------

class Cleanup:
    """Run once, whatever happens first: the ``finally`` of ``run``, or ``atexit``."""

    def __init__(self) -> None:
        self.stack = contextlib.ExitStack()
        self._lock = threading.Lock()
        self._done = False
        atexit.register(self.run)

    def run(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        log("cleaning up: pods, daemons, shims, mounts, bridges, registry, scratch dir")
        self.stack.close()


@contextlib.contextmanager
def ip_forward_restored() -> Iterator[None]:
    """The bridge plugin turns on net.ipv4.ip_forward for its gateway; put it back after."""
    path = Path("/proc/sys/net/ipv4/ip_forward")
    before = path.read_text()
    try:
        yield
    finally:
        if path.read_text() != before:
            with contextlib.suppress(OSError):
                path.write_text(before)


# ---- main -----------------------------------------------------------------------------------

def parse_only(text: str | None) -> set[str]:
    if not text:
        return set(WORKLOADS) - {"memory"}
    by_number = {str(n): name for name, n in WORKLOADS.items()}
    chosen = set()
    for item in text.split(","):
        item = by_number.get(item.strip(), item.strip())
        if item not in WORKLOADS:
            raise argparse.ArgumentTypeError(f"unknown workload {item!r}: choose from "
                                             f"{', '.join(WORKLOADS)} or 1-7")
        chosen |= {"seq", "scale"} if item == "memory" else {item}
    return chosen


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Workloads: " + ", ".join(
                                         f"{n} {name}" for name, n in WORKLOADS.items()))
    parser.add_argument("--quick", action="store_true",
                        help="fewer rounds and pods: a smoke test of every workload")
    parser.add_argument("--only", type=parse_only, default=parse_only(None),
                        metavar="WORKLOADS", help="comma-separated workloads (names or 1-7)")
    parser.add_argument("--profile", action="store_true",
                        help="also run workload 1 on ocid under py-spy (writes "
                             f"{PROFILE_OUT.relative_to(REPO_ROOT)})")
    parser.add_argument("--profile-rounds", type=int, default=15)
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON")
    parser.add_argument("--tmpdir", type=Path, default=Path("/tmp"),
                        help="where the registry, roots and sockets live")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, object]:
    plan = QUICK if args.quick else FULL
    results = Results()
    load_before = os.getloadavg()[0]
    if load_before > 0.5 * (os.cpu_count() or 1):
        results.note(f"load average {load_before:.2f} at the start: something else is running; "
                     "expect noisy figures")
    cleanup = Cleanup()
    started = now()
    image_info: dict[str, object] = {}
    profile_text = ""
    try:
        stack = cleanup.stack
        scratch = stack.enter_context(pull.scratch_dir(args.tmpdir))
        stack.enter_context(ip_forward_restored())
        stack.enter_context(shim_socket_dir_guard())
        registry = stack.enter_context(LocalRegistry(scratch / "registry"))
        images = push_images(scratch, registry)
        log(f"registry {registry.host}: {images.busybox}, {images.pause}")
        ocid_net = BridgeNetwork.create("obo", scratch / "ipam-ocid")
        ctrd_net = BridgeNetwork.create("obc", scratch / "ipam-ctrd",
                                        {ocid_net.subnet.rsplit(".", 1)[0]})
        runtimes: dict[str, Runtime] = {
            "ocid": OcidRuntime(fresh_dir(scratch, "ocid"), ocid_net, registry.host),
            "containerd": ContainerdRuntime(fresh_dir(scratch, "ctrd"), ctrd_net,
                                            registry.host, images.pause)}
        for rt in runtimes.values():
            stack.callback(rt.shutdown)  # runs even if start() fails half-way
            rt.start()
            log(f"{rt.name} ready: pid {rt.pid}, socket {rt.socket}, bridge "
                f"{rt.network.bridge if rt.network else '-'}")
        bench = Bench(runtimes, images, plan, results, scratch, registry)
        bench.warm_up()
        bench.idle_memory()
        steps: list[tuple[str, Callable[[], object]]] = [
            ("seq", bench.seq), ("parallel", bench.parallel), ("exec", bench.exec_sync),
            ("scale", bench.scale), ("cli", bench.cli), ("pull", bench.pull)]
        for name, step in steps:
            if name not in args.only:
                continue
            log(f"== workload {WORKLOADS[name]}: {name}")
            step_started = now()
            value = step()
            if name == "pull":
                image_info = value  # type: ignore[assignment]
            log(f"== {name} done in {now() - step_started:.0f} s")
        if args.profile:
            log(f"== py-spy on ocid: {args.profile_rounds} workload-1 rounds, twice")
            profile_text = bench.profile(args.profile_rounds)
        machine = machine_info(scratch)
    finally:
        cleanup.run()
    machine["loadavg_1min"] = {"before": round(load_before, 2),
                               "after": round(os.getloadavg()[0], 2)}
    return {
        "benchmark": "CRI: ocid vs containerd", "quick": args.quick,
        "workloads": sorted(args.only, key=WORKLOADS.get), "plan": asdict(plan),
        "seconds": round(now() - started, 1), "machine": machine,
        "setup": {
            "client": "tests.support.cri.Cri over cri_api.v1 gRPC stubs, one channel per "
                      "runtime, alternating ocid/containerd round by round",
            "pods": "cgroup_parent /ocid-bench (ocid) and /containerd-bench (containerd); "
                    "RuntimeDefault seccomp for pod and container; a log directory",
            "container": "busybox test image, `sleep 3600`; StopContainer timeout 0",
            "network": "CNI bridge (isGateway, ipMasq, hairpin) + host-local + portmap, one "
                       "bridge and /24 per runtime, plugins from /usr/lib/cni",
            "pause": "ocid: /usr/bin/catatonit bind-mounted (-P); containerd: an image "
                     "holding only static catatonit, entrypoint [/catatonit, -P]",
            "memory": "VmRSS of the daemon process only: ocid without its conmons, "
                      "containerd without its shims (their PSS is a separate row)",
            "cpu": "utime+stime of the daemon process from /proc/<pid>/stat; ocid runs runc "
                   "itself (reaped children show in cutime+cstime), containerd's runc runs "
                   "under its shims (not its children)"},
        "image": image_info, "notes": results.notes,
        "measures": [m.as_json() for m in sorted(results.measures.values(),
                                                 key=lambda m: m.workload)],
        "_table": table(results), "_profile": profile_text,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        log("cri.py needs root (it runs two container runtimes)")
        return 1
    if args.profile and not PY_SPY.exists():
        log(f"--profile needs py-spy in the venv: {Path(sys.executable).parent}/pip install py-spy")
        return 1
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda n, _: sys.exit(128 + n))
    report = run(args)
    table_text = str(report.pop("_table"))
    profile_text = str(report.pop("_profile"))
    machine = report["machine"]
    assert isinstance(machine, dict)
    print(f"\nocid {machine['ocid']} vs {machine['containerd']}; {machine['runc']}; "
          f"{machine['nproc']} CPUs, kernel {machine['kernel']}; "
          f"{'quick' if args.quick else 'full'} run in {report['seconds']:.0f} s\n")
    print(table_text)
    for note in report["notes"]:  # type: ignore[union-attr]
        print(f"\nnote: {note}")
    if profile_text:
        print(f"\n{profile_text}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
