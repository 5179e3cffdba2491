"""Live progress of the pulls in flight, so anyone can see what a slow node is pulling.

Updates are plain attribute writes from the download threads (atomic under the GIL); readers
take a snapshot. Nothing here blocks a download.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import asdict, dataclass, field


@dataclass
class LayerProgress:
    """One blob of a pull: bytes received so far out of its size."""

    digest: str
    total: int
    done: int = 0
    state: str = "waiting"  # waiting, downloading, exists, unpacking, done


@dataclass
class PullProgress:
    """One pull in flight."""

    id: int
    image: str
    started: float
    source: str = ""
    layers: list[LayerProgress] = field(default_factory=list)
    last_progress: float = 0.0

    def advance(self, layer: LayerProgress, nbytes: int) -> None:
        """Record ``nbytes`` more bytes received for ``layer``."""
        layer.done += nbytes
        layer.state = "downloading"
        self.last_progress = time.monotonic()

    def as_dict(self) -> dict:
        data = asdict(self)
        data.pop("last_progress")
        data["done"] = sum(layer.done for layer in self.layers)
        data["total"] = sum(layer.total for layer in self.layers)
        return data


class PullTracker:
    """The pulls this process is doing right now."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pulls: dict[int, PullProgress] = {}

    def start(self, image: str) -> PullProgress:
        with self._lock:
            pull = PullProgress(next(self._ids), image, time.time(), last_progress=time.monotonic())
            self._pulls[pull.id] = pull
            return pull

    def finish(self, pull: PullProgress) -> None:
        with self._lock:
            self._pulls.pop(pull.id, None)

    def snapshot(self) -> list[dict]:
        """Every pull in flight as plain data (for Status verbose info)."""
        with self._lock:
            pulls = list(self._pulls.values())
        return [pull.as_dict() for pull in pulls]
