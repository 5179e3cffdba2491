"""Where ocid's cold pull spends its time: a phase breakdown and a py-spy profile.

Builds and pushes the same image as ``pull.py``, then, in this process, on fresh stores:

1. times ``ImageService.pull`` (the code path behind the CRI PullImage RPC) end to end;
2. times its parts on their own: downloading the blobs into a store (in parallel, as the pull
   does); unpacking the layers from those blobs, without and with the sync the store does, on
   this file system and on tmpfs; the floor of unpacking in Python (gunzip + sha256 of every
   layer, nothing written); GNU tar unpacking the same layers (what creating the files costs
   here); and a what-if: unpacking two layers at a time;
3. with ``--py-spy``, samples one more full pull with py-spy (every thread) and prints the
   functions and lines with the most samples.

Run from the repository root (py-spy: ``.venv/bin/pip install py-spy``)::

    .venv/bin/python benchmarks/profile_pull.py [--size-mb 100] [--repeat 3] [--py-spy]
"""

from __future__ import annotations

import argparse
import collections
import gzip
import hashlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pull import MB, TestImage, build_and_push, insecure_registries, log, scratch_dir
from tabulate import tabulate

from ocid.config import Config
from ocid.image.registry import RegistryClient
from ocid.image.service import PROGRESS_CHUNK, ImageService
from ocid.storage.store import ImageStore
from ocid.storage.unpack import unpack_layer
from tests.support.registry import LocalRegistry

PY_SPY = Path(sys.executable).parent / "py-spy"
TOP = 15


def make_service(root: Path, registry_host: str) -> ImageService:
    """An ImageService on a fresh store under ``root``, the registry marked insecure."""
    containers = root / "containers"
    containers.mkdir(parents=True)
    (containers / "registries.conf").write_text(insecure_registries(registry_host))
    config = Config()
    config.ocid.root = str(root / "root")
    config.ocid.runroot = str(root / "run")
    config.image.registries_conf = str(containers / "registries.conf")
    config.image.registries_conf_dir = str(containers / "registries.conf.d")
    config.image.signature_policy = str(containers / "policy.json")
    config.image.auth_file = str(containers / "auth.json")
    return ImageService(config.finalize())


@dataclass
class Phase:
    """One measured piece of work: wall and CPU seconds (this process and its children)."""

    name: str
    wall: list[float] = field(default_factory=list)
    user: list[float] = field(default_factory=list)
    system: list[float] = field(default_factory=list)

    def measure(self, work: Callable[[], object]) -> None:
        """Run ``work`` after an untimed sync (nobody pays for earlier writes)."""
        os.sync()
        before, start = os.times(), time.perf_counter()
        work()
        wall, after = time.perf_counter() - start, os.times()
        self.wall.append(wall)
        self.user.append(after.user + after.children_user - before.user - before.children_user)
        self.system.append(after.system + after.children_system
                           - before.system - before.children_system)
        log(f"{self.name:<52s} {wall:6.2f} s")

    def row(self) -> list[object]:
        return [self.name, statistics.median(self.wall), min(self.wall),
                statistics.median(self.user), statistics.median(self.system)]


def full_pull(image: TestImage, scratch: Path) -> None:
    service = make_service(Path(tempfile.mkdtemp(dir=scratch)), image.reference.split("/")[0])
    try:
        record = service.pull(image.reference)
        assert record.id == image.built.config_digest
    finally:
        service.close()


def download_only(image: TestImage, store: ImageStore) -> None:
    """Every layer blob into ``store``, as copy_image fetches them (max_parallel_downloads)."""
    host, _, rest = image.reference.partition("/")
    repository = rest.rsplit(":", 1)[0]
    client = RegistryClient(host, insecure=True)
    sizes = dict(zip(image.built.layer_digests, image.layer_sizes))

    def fetch(digest: str) -> None:
        store.ingest_blob(client.iter_blob(repository, digest, sizes[digest],
                                           chunk_size=PROGRESS_CHUNK), digest, sizes[digest])

    with ThreadPoolExecutor(max_workers=Config().image.max_parallel_downloads) as pool:
        list(pool.map(fetch, image.built.layer_digests))


def unpack_only(image: TestImage, store: ImageStore, dest: Path, workers: int = 1) -> None:
    """Every layer unpacked from the stored blobs, each into its own empty directory.

    ``workers`` > 1 is a what-if: layers are independent directories, so they could be
    unpacked side by side (ocid unpacks them one after the other).
    """
    def unpack(index: int) -> None:
        target = dest / str(index)
        target.mkdir(parents=True)
        unpack_layer(store.blob_path(image.built.layer_digests[index]), str(target),
                     image.built.diff_ids[index], f"layer {index}")

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(unpack, range(len(image.layer_sizes))))


def gunzip_and_hash(image: TestImage, store: ImageStore) -> None:
    """The floor of unpacking in Python: decompress and hash every layer, write nothing."""
    for digest in image.built.layer_digests:
        hasher = hashlib.sha256()
        with gzip.open(store.blob_path(digest), "rb") as f:
            while chunk := f.read(1 << 20):
                hasher.update(chunk)


def untar_all(image: TestImage, store: ImageStore, dest: Path) -> None:
    """GNU tar unpacking the same layers (no digest checks): what creating the files costs."""
    for index, digest in enumerate(image.built.layer_digests):
        target = dest / str(index)
        target.mkdir()
        subprocess.run(["tar", "-xzf", store.blob_path(digest), "-C", str(target)], check=True)


PHASES = ("ImageService.pull (cold, fresh store)", "download only: blobs into a store",
          "unpack only: unpack_layer of every layer",
          "what-if: unpack only, 2 layers at a time", "unpack only, then sync",
          "unpack only, into tmpfs (/dev/shm)", "floor: gunzip + sha256 of every layer",
          "native reference: tar -xzf of every layer")


def measure_once(image: TestImage, scratch: Path, phases: dict[str, Phase]) -> None:
    """One measurement of every phase, each on a fresh store or directory."""
    def fresh() -> Path:
        return Path(tempfile.mkdtemp(dir=scratch))

    pull, download, unpack, unpack_2, unpack_sync, unpack_tmpfs, floor, tar = phases.values()
    pull.measure(lambda: full_pull(image, scratch))
    store = ImageStore(str(fresh()))
    try:
        download.measure(lambda: download_only(image, store))
        unpack.measure(lambda: unpack_only(image, store, fresh()))
        unpack_2.measure(lambda: unpack_only(image, store, fresh(), workers=2))
        unpack_sync.measure(lambda: (unpack_only(image, store, fresh()), os.sync()))
        with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
            unpack_tmpfs.measure(lambda: unpack_only(image, store, Path(shm)))
        floor.measure(lambda: gunzip_and_hash(image, store))
        tar.measure(lambda: untar_all(image, store, fresh()))
    finally:
        store.close()


def measure_phases(image: TestImage, scratch: Path, repeat: int) -> list[Phase]:
    """Every phase measured ``repeat`` times (trees stay until the end, as in pull.py)."""
    phases = {name: Phase(name) for name in PHASES}
    for _ in range(repeat):
        measure_once(image, scratch, phases)
    return list(phases.values())


def phase_table(measured: list[Phase]) -> str:
    return tabulate([p.row() for p in measured], floatfmt=".2f", headers=[
        "phase", "median s", "min s", "user s (median)", "system s (median)"])


# ---- py-spy ------------------------------------------------------------------------------

def profile(image: TestImage, scratch: Path, rate: int = 250) -> Path:
    """Sample one full pull with py-spy (all threads, raw collapsed stacks); returns the file."""
    out = scratch / "pull.pyspy.txt"
    spy = subprocess.Popen([str(PY_SPY), "record", "--pid", str(os.getpid()), "--threads",
                            "--rate", str(rate), "--format", "raw", "--output", str(out),
                            "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # let py-spy attach
    try:
        Phase("ImageService.pull under py-spy").measure(lambda: full_pull(image, scratch))
    finally:
        spy.send_signal(signal.SIGINT)
        _, err = spy.communicate(timeout=60)
    if not out.exists():
        raise RuntimeError(f"py-spy wrote nothing: {err.decode(errors='replace')}")
    return out


def short(frame: str, with_line: bool = False) -> str:
    """``func (path/to/file.py[:123])`` with a short path, the line number only if asked."""
    name, _, where = frame.partition(" (")
    path, _, line = where.rstrip(")").rpartition(":")
    for marker in ("/site-packages/", "/lib/python3.11/", str(Path.cwd()) + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path}:{line})" if with_line else f"{name} ({path})"


def print_top(title: str, counts: collections.Counter[str], total: int, top: int) -> None:
    print(f"\n{title}:")
    for frame, count in counts.most_common(top):
        print(f"  {100 * count / total:5.1f}%  {frame}")


def report(samples_file: Path) -> None:
    """Top functions and lines by own samples, functions by inclusive samples (% of all)."""
    own: collections.Counter[str] = collections.Counter()
    own_lines: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    skipped = ("threading.py", "concurrent/futures")  # thread plumbing: in every stack
    total = 0
    for line in samples_file.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        raw_frames = stack.split(";")[1:]  # drop the thread name
        if not raw_frames or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [short(f) for f in raw_frames]
        total += count
        own[frames[-1]] += count
        own_lines[short(raw_frames[-1], with_line=True)] += count
        for frame in set(frames):
            if not any(s in frame for s in skipped):
                inclusive[frame] += count
    print(f"\npy-spy: {total} samples of threads running Python (all threads)")
    print_top("by own time", own, total, TOP)
    print_top("hottest lines", own_lines, total, 8)
    print_top("by inclusive time", inclusive, total, TOP + 10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3, help="measurements of each phase")
    parser.add_argument("--py-spy", action="store_true", help="also profile one pull")
    parser.add_argument("--keep-samples", type=Path, help="copy py-spy's raw stacks here")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    with scratch_dir() as scratch, LocalRegistry(scratch / "registry") as registry:
        image = build_and_push(scratch, registry, args.size_mb)
        log(f"image: {image.compressed_bytes / MB:.1f} MB compressed, "
            f"{image.uncompressed_bytes / MB:.1f} MB unpacked, {image.files} files")
        print(phase_table(measure_phases(image, scratch, args.repeat)))
        if args.py_spy:
            samples = profile(image, scratch)
            report(samples)
            if args.keep_samples:
                shutil.copy(samples, args.keep_samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
