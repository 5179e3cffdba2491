"""A real ``docker-registry`` (distribution 2.8) on 127.0.0.1, plain HTTP, for tests."""

from __future__ import annotations

import ctypes
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import bcrypt
import requests

REGISTRY_BINARY = "docker-registry"
START_TIMEOUT = 5.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child: have the kernel SIGTERM it if pytest dies without a finalizer."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalRegistry:
    """One ``docker-registry serve`` process with its own storage, optionally with htpasswd."""

    def __init__(self, workdir: Path | None = None, *,
                 users: dict[str, str] | None = None,
                 tls: tuple[Path, Path] | None = None):
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="ocid-registry-"))
        self.users = dict(users or {})
        self.tls = tls  # (certificate, key): serve HTTPS instead of plain HTTP
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, the registry part of image references."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The base URL, ``http://127.0.0.1:PORT`` (https with ``tls``)."""
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def log_path(self) -> Path:
        """Where the registry's stderr/stdout go."""
        return self.workdir / "registry.log"

    def _write_config(self) -> Path:
        storage = self.workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        auth = ""
        if self.users:
            htpasswd = self.workdir / "htpasswd"
            # docker-registry only understands bcrypt hashes in htpasswd files
            htpasswd.write_text("".join(
                f"{user}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"
                for user, pw in self.users.items()))
            auth = f"auth:\n  htpasswd:\n    realm: ocid-test\n    path: {htpasswd}\n"
        config = self.workdir / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {storage}\n"
            "  delete:\n    enabled: true\n"
            "  maintenance:\n    uploadpurging:\n      enabled: false\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n  secret: ocid-test-secret\n"
            + (f"  tls:\n    certificate: {self.tls[0]}\n    key: {self.tls[1]}\n" if self.tls else "")
            + auth)
        return config

    def start(self) -> LocalRegistry:
        """Start on a free port and wait until ``/v2/`` answers; retries a lost port race."""
        if shutil.which(REGISTRY_BINARY) is None:
            raise RuntimeError(f"{REGISTRY_BINARY} is not installed "
                               "(apt-get install docker-registry)")
        for _ in range(3):
            self.port = free_port()
            config = self._write_config()
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    [REGISTRY_BINARY, "serve", str(config)], stdin=subprocess.DEVNULL,
                    stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
            if self._wait_ready():
                return self
            self.stop()
        log_tail = self.log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"docker-registry did not start; log:\n{log_tail}")

    def _wait_ready(self) -> bool:
        """True once ``/v2/`` answers (200, or 401 with auth); False if the process died."""
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                status = requests.get(f"{self.url}/v2/", timeout=1, verify=False).status_code
                if status in (200, 401):
                    return True
            except requests.RequestException:
                pass
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        """Terminate the registry by PID and wait for it (SIGKILL after 5 s)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def cleanup(self) -> None:
        """Stop, and remove the work directory if this object created it."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
