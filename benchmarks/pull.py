"""Cold image pull benchmark: ocid (CRI PullImage), ``kpod pull`` and ``skopeo copy``.

Builds one deterministic multi-layer image (about ``--size-mb`` MB of content, gzip layers,
thousands of small files in one layer), pushes it to a local ``docker-registry`` on
127.0.0.1, then pulls it ``--rounds`` times with each contender, rotating their order every
round so that drift (page cache, CPU frequency, other load) hits all of them alike. Every pull
is cold: a fresh daemon on a fresh storage root, a fresh kpod root, a fresh skopeo directory.

- ocid:   the PullImage RPC on a freshly started daemon (start-up and a warm-up RPC untimed).
- kpod:   wall time of ``kpod pull --quiet --tls-verify=false REF`` (includes interpreter start).
- skopeo: wall time of ``skopeo copy docker://REF oci:DIR:x``: the reference tool. It only
  downloads and verifies blobs; ocid and kpod also unpack every layer into the store (and
  fsync it), so they do strictly more work.

Run from the repository root::

    .venv/bin/python benchmarks/pull.py [--rounds 3] [--size-mb 100]

Prints a table and writes the same figures, with machine information, to
``benchmarks/results/pull.json``. Needs root (ocid chowns unpacked files), ``skopeo`` and
``docker-registry``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from cri_api.v1 import api_pb2, api_pb2_grpc
from tabulate import tabulate

from tests.integration.conftest import KPOD, OcidDaemon, launch_ocid, write_config
from tests.support.images import BuiltImage, LayerSpec, build_layout, push_layout
from tests.support.registry import LocalRegistry

MB = 1_000_000
SEED = 20240601
REPOSITORY = "bench/pull"
TAG = "latest"
PULL_TIMEOUT = 600.0
RESULTS = Path(__file__).resolve().parent / "results" / "pull.json"
SKOPEO_NOTE = ("skopeo only downloads and verifies blobs into an OCI layout; ocid and kpod also "
               "decompress, verify and unpack every layer into the store and fsync it.")


# ---- the image ---------------------------------------------------------------------------

class Content:
    """Deterministic file contents: text (compresses ~3x), binaries, incompressible data."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        letters = "abcdefghijklmnopqrstuvwxyz_"
        vocabulary = ["".join(self.rng.choices(letters, k=self.rng.randint(2, 11)))
                      for _ in range(6000)]
        self.lines = [" ".join(self.rng.choices(vocabulary, k=self.rng.randint(3, 14))) + "\n"
                      for _ in range(4096)]

    def text(self, size: int) -> bytes:
        """Source-code-like lines drawn from a large pool."""
        out = bytearray()
        while len(out) < size:
            out += "".join(self.rng.choices(self.lines, k=size // 60 + 1)).encode()
        return bytes(out[:size])

    def noise(self, size: int) -> bytes:
        """Incompressible bytes (like already-compressed media)."""
        return self.rng.randbytes(size)

    def binary(self, size: int) -> bytes:
        """Executable-like: random code runs, embedded strings and zero padding."""
        out = bytearray()
        while len(out) < size:
            kind = self.rng.random()
            if kind < 0.6:
                out += self.rng.randbytes(self.rng.randint(4 << 10, 64 << 10))
            elif kind < 0.85:
                out += self.text(self.rng.randint(1 << 10, 16 << 10))
            else:
                out += bytes(self.rng.randint(512, 8 << 10))
        return bytes(out[:size])

    def split(self, total: int, count: int) -> list[int]:
        """``count`` varied sizes (at least 64 bytes each) adding up to about ``total``."""
        weights = [self.rng.uniform(0.2, 1.8) for _ in range(count)]
        scale = total / sum(weights)
        return [max(64, int(w * scale)) for w in weights]


def image_layers(size_mb: int, seed: int = SEED) -> list[LayerSpec]:
    """Seven gzip layers of varied sizes and kinds, about ``size_mb`` MB of content in all."""
    content = Content(seed)
    total = size_mb * MB

    def share(fraction: float) -> int:
        return int(total * fraction)

    small = {f"/usr/share/base/d{i % 64:02d}/f{i:05d}.{'txt' if i % 3 else 'bin'}":
             (content.text if i % 3 else content.binary)(size)
             for i, size in enumerate(content.split(share(0.12), 3000))}
    libs = {f"/usr/lib/bench/lib{i:02d}.so": content.binary(size)
            for i, size in enumerate(content.split(share(0.30), 14))}
    app = {f"/app/src/pkg{i % 30:02d}/mod{i:04d}.py": content.text(size)
           for i, size in enumerate(content.split(share(0.15), 600))}
    assets = {f"/app/assets/blob{i}.bin": content.noise(size)
              for i, size in enumerate(content.split(share(0.25), 5))}
    docs = {f"/usr/share/doc/bench/page{i:03d}.md": content.text(size)
            for i, size in enumerate(content.split(share(0.12), 150))}
    config = {f"/etc/bench/conf{i:02d}.conf": content.text(size)
              for i, size in enumerate(content.split(share(0.01), 30))}
    patch = {"/usr/lib/bench/lib00.so": content.binary(share(0.04)),
             "/app/src/pkg01/mod0001.py": content.text(share(0.01))}
    return [
        LayerSpec(files=small, symlinks={"/usr/share/base/latest": "d00"}),
        LayerSpec(files=libs, modes={path: 0o755 for path in libs}),
        LayerSpec(files=app),
        LayerSpec(files=assets),
        LayerSpec(files=docs),
        LayerSpec(files=config, owners={"/etc/bench/conf00.conf": (1000, 1000)}),
        LayerSpec(files=patch, whiteouts=("/app/src/pkg00/mod0000.py",)),
    ]


@dataclass(frozen=True)
class TestImage:
    """The benchmark image, as pushed to the registry."""

    reference: str
    built: BuiltImage
    compressed_bytes: int  # manifest, config and layer blobs: what a cold pull transfers
    uncompressed_bytes: int  # the layer tars
    files: int
    layer_sizes: list[int]  # compressed, bottom first


def build_and_push(workdir: Path, registry: LocalRegistry, size_mb: int) -> TestImage:
    """Build the image into an OCI layout under ``workdir`` and push it to ``registry``."""
    layers = image_layers(size_mb)
    built = build_layout(workdir / "layout", TAG, layers)
    reference = f"{registry.host}/{REPOSITORY}:{TAG}"
    digest = push_layout(built.layout_dir, reference)
    if digest != built.manifest_digest:
        raise RuntimeError(f"skopeo rewrote the manifest: {digest} != {built.manifest_digest}")
    blobs = built.layout_dir / "blobs" / "sha256"

    def size(digest: str) -> int:
        return (blobs / digest.removeprefix("sha256:")).stat().st_size

    layer_sizes = [size(d) for d in built.layer_digests]
    return TestImage(
        reference=reference, built=built,
        compressed_bytes=sum(layer_sizes) + size(built.config_digest) + len(built.manifest_raw),
        uncompressed_bytes=sum(len(layer.tar_bytes()) for layer in layers),
        files=sum(len(layer.files) for layer in layers), layer_sizes=layer_sizes)


# ---- the contenders ----------------------------------------------------------------------

def insecure_registries(host: str) -> str:
    """A registries.conf letting plain HTTP through to ``host``."""
    return f'[[registry]]\nlocation = "{host}"\ninsecure = true\n'


def fresh_dir(scratch: Path, name: str) -> Path:
    """A new, empty directory under ``scratch`` (short: unix socket paths must fit 108 bytes)."""
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=scratch))


def run_timed(args: list[str]) -> tuple[float, str]:
    """Run a command; its wall time in seconds and its stdout. Fails loudly on errors."""
    start = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True, timeout=PULL_TIMEOUT,
                            check=False)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stderr.strip()}")
    return elapsed, result.stdout


def stop_daemon(daemon: OcidDaemon) -> None:
    """Stop one ocid by its PID (SIGTERM, then SIGKILL) and reap it."""
    try:
        daemon.stop(signal.SIGTERM, timeout=20)
    except subprocess.TimeoutExpired:
        daemon.proc.kill()
    daemon.proc.communicate()


def pull_ocid(image: TestImage, scratch: Path) -> float:
    """Seconds the PullImage RPC takes on a fresh ocid with an empty store."""
    workdir = fresh_dir(scratch, "ocid")
    (workdir / "containers").mkdir()
    (workdir / "containers" / "registries.conf").write_text(
        insecure_registries(image.reference.split("/", 1)[0]))
    daemon = launch_ocid(workdir)
    try:
        channel = daemon.channel()
        # Untimed warm-up: connect the channel and load the image service and store.
        api_pb2_grpc.RuntimeServiceStub(channel).Version(api_pb2.VersionRequest(), timeout=30)
        images = api_pb2_grpc.ImageServiceStub(channel)
        if images.ListImages(api_pb2.ListImagesRequest(), timeout=30).images:
            raise RuntimeError("the fresh ocid store is not empty")
        request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image.reference))
        start = time.perf_counter()
        response = images.PullImage(request, timeout=PULL_TIMEOUT)
        elapsed = time.perf_counter() - start
        if response.image_ref != image.built.config_digest:
            raise RuntimeError(f"ocid pulled {response.image_ref}, "
                               f"expected {image.built.config_digest}")
        return elapsed
    finally:
        stop_daemon(daemon)


def pull_kpod(image: TestImage, scratch: Path) -> float:
    """Seconds ``kpod pull`` takes on an empty store (interpreter start-up included)."""
    workdir = fresh_dir(scratch, "kpod")
    config = write_config(workdir)
    (workdir / "containers" / "registries.conf").write_text(
        insecure_registries(image.reference.split("/", 1)[0]))
    elapsed, out = run_timed([KPOD, "--config", str(config), "--root", str(workdir / "root"),
                              "--runroot", str(workdir / "run"), "pull", "--quiet",
                              "--tls-verify=false", image.reference])
    image_id = image.built.config_digest.removeprefix("sha256:")  # what --quiet prints
    if out.strip() != image_id:
        raise RuntimeError(f"kpod pulled {out.strip()!r}, expected {image_id}")
    return elapsed


def pull_skopeo(image: TestImage, scratch: Path) -> float:
    """Seconds ``skopeo copy`` takes into a new OCI layout directory."""
    dest = fresh_dir(scratch, "skopeo") / "layout"
    # --insecure-policy: like ocid here (no policy.json), accept anything without reading one.
    elapsed, _ = run_timed(["skopeo", "--insecure-policy", "copy", "-q",
                            "--src-tls-verify=false", f"docker://{image.reference}",
                            f"oci:{dest}:x"])
    stored = dest / "blobs" / "sha256"
    missing = [d for d in image.built.layer_digests
               if not (stored / d.removeprefix("sha256:")).is_file()]
    if missing:
        raise RuntimeError(f"skopeo did not store layers {missing}")
    return elapsed


CONTENDERS: dict[str, Callable[[TestImage, Path], float]] = {
    "ocid": pull_ocid,
    "kpod": pull_kpod,
    "skopeo": pull_skopeo,
}
REFERENCE = "skopeo"


# ---- measuring and reporting -------------------------------------------------------------

@dataclass
class Measurements:
    """Seconds per contender, in round order."""

    seconds: dict[str, list[float]] = field(
        default_factory=lambda: {name: [] for name in CONTENDERS})


def run_rounds(image: TestImage, rounds: int, scratch: Path) -> Measurements:
    """Each round runs every contender once, the order rotated by one each round.

    Before each pull an untimed ``sync`` flushes what the previous one wrote, so nobody pays
    for another's writeback. Pulled trees stay until the end: on ext4, creating files right
    after thousands were deleted is slower (the inode allocator skips recently freed inodes),
    and that penalty would fall on whichever contender comes next.
    """
    names = list(CONTENDERS)
    measured = Measurements()
    for round_index in range(rounds):
        order = names[round_index % len(names):] + names[:round_index % len(names)]
        for name in order:
            os.sync()
            seconds = CONTENDERS[name](image, fresh_dir(scratch, f"r{round_index}"))
            measured.seconds[name].append(seconds)
            log(f"round {round_index + 1}/{rounds}: {name:6s} {seconds:6.2f} s")
    return measured


def summarize(measured: Measurements, image: TestImage) -> dict[str, dict[str, object]]:
    """Median, min, MB/s (compressed bytes / median) and the ratio to skopeo's median."""
    medians = {name: statistics.median(values) for name, values in measured.seconds.items()}
    return {name: {
        "seconds": [round(s, 3) for s in values],
        "median_s": round(medians[name], 3),
        "min_s": round(min(values), 3),
        "mb_per_s": round(image.compressed_bytes / MB / medians[name], 1),
        "ratio_to_skopeo": round(medians[name] / medians[REFERENCE], 2),
    } for name, values in measured.seconds.items()}


def table(summary: dict[str, dict[str, object]]) -> str:
    """The summary as a plain-text table."""
    rows = [[name, s["median_s"], s["min_s"], s["mb_per_s"],
             "1.00 (reference)" if name == REFERENCE else f"{s['ratio_to_skopeo']:.2f}"]
            for name, s in summary.items()]
    return tabulate(rows, headers=["contender", "median s", "min s", "MB/s (compressed)",
                                   f"median / {REFERENCE}"], floatfmt=".2f")


def machine_info() -> dict[str, object]:
    """What the figures came from."""
    cpu = ""
    with contextlib.suppress(OSError):
        cpu = next((line.split(":", 1)[1].strip()
                    for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
    mem_kb = 0
    with contextlib.suppress(OSError, StopIteration, ValueError):
        mem_kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                          if line.startswith("MemTotal:")))
    skopeo = subprocess.run(["skopeo", "--version"], capture_output=True, text=True,
                            check=False).stdout.strip()
    return {"nproc": os.cpu_count(), "cpu": cpu, "memory_gb": round(mem_kb / 1e6, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "skopeo": skopeo, "date": datetime.datetime.now(datetime.UTC)
            .isoformat(timespec="seconds")}


def filesystem(path: Path) -> str:
    """The type and device of the file system holding ``path`` (from /proc/self/mounts)."""
    best = ("", "?", "?")
    for line in Path("/proc/self/mounts").read_text().splitlines():
        device, point, fstype = line.split()[:3]
        if (str(path) + "/").startswith(point.rstrip("/") + "/") and len(point) >= len(best[0]):
            best = (point, fstype, device)
    return f"{best[1]} on {best[2]} (mounted at {best[0]})"


def image_info(image: TestImage) -> dict[str, object]:
    return {"reference": image.reference, "layers": len(image.layer_sizes),
            "layer_bytes_compressed": image.layer_sizes,
            "compressed_bytes": image.compressed_bytes,
            "uncompressed_bytes": image.uncompressed_bytes, "files": image.files,
            "manifest_digest": image.built.manifest_digest}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- clean-up ----------------------------------------------------------------------------

def mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root`` (there should be none: pulls mount nothing)."""
    prefix = str(root)
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


@contextlib.contextmanager
def scratch_dir(parent: Path = Path("/tmp")) -> Iterator[Path]:
    """A temporary directory, removed afterwards with any mount left below it."""
    path = Path(tempfile.mkdtemp(prefix="ocid-bench-", dir=parent))
    try:
        yield path
    finally:
        for point in sorted(mounts_under(path), key=len, reverse=True):
            log(f"warning: unmounting leftover {point}")
            subprocess.run(["umount", "-l", point], check=False)
        shutil.rmtree(path, ignore_errors=True)


# ---- main --------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="cold pulls per contender")
    parser.add_argument("--size-mb", type=int, default=100,
                        help="uncompressed content of the test image, in MB")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON")
    parser.add_argument("--tmpdir", type=Path, default=Path("/tmp"),
                        help="where the registry and the stores live (its file system matters)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.size_mb < 1:
        parser.error("--rounds and --size-mb must be positive")
    return args


def measure(args: argparse.Namespace) -> dict[str, object]:
    """Build, push and pull; everything started here is stopped and removed on the way out."""
    load_before = os.getloadavg()[0]
    if load_before > 0.5 * (os.cpu_count() or 1):
        log(f"warning: load average {load_before:.2f}: something else is running; "
            "expect noisy figures")
    with scratch_dir(args.tmpdir) as scratch, LocalRegistry(scratch / "registry") as registry:
        started = time.perf_counter()
        image = build_and_push(scratch, registry, args.size_mb)
        log(f"built and pushed {image.reference} in {time.perf_counter() - started:.1f} s: "
            f"{len(image.layer_sizes)} layers, {image.files} files, "
            f"{image.uncompressed_bytes / MB:.1f} MB uncompressed, "
            f"{image.compressed_bytes / MB:.1f} MB compressed")
        shutil.rmtree(image.built.layout_dir)  # the registry has its own copy
        summary = summarize(run_rounds(image, args.rounds, scratch), image)
        fs = filesystem(scratch)
    machine = {**machine_info(), "filesystem": fs,
               "loadavg_1min": {"before": round(load_before, 2),
                                "after": round(os.getloadavg()[0], 2)}}
    return {"benchmark": "cold image pull", "rounds": args.rounds, "machine": machine,
            "image": image_info(image), "results": summary, "reference": REFERENCE,
            "note": SKOPEO_NOTE}


def print_report(report: dict[str, object]) -> None:
    image, machine = report["image"], report["machine"]
    assert isinstance(image, dict) and isinstance(machine, dict)
    print(f"\nCold pulls of a {image['compressed_bytes'] / MB:.1f} MB image "
          f"({image['uncompressed_bytes'] / MB:.1f} MB unpacked, {image['layers']} layers, "
          f"{image['files']} files), {report['rounds']} rounds, {machine['nproc']} CPUs, "
          f"{machine['filesystem']}\n")
    print(table(report["results"]))  # type: ignore[arg-type]
    print(f"\nNote: {SKOPEO_NOTE}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        log("warning: not root; ocid and kpod need root to chown unpacked files")
    # SIGTERM unwinds like Ctrl-C, so the daemons, the registry and the temp dirs go too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    report = measure(args)
    print_report(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
