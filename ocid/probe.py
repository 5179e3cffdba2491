"""What is installed: the version line of an executable, for ``kpod info`` and ``ocid`` logs."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Executable:
    """An external program ocid relies on, as found on this machine."""

    path: str
    found: bool
    version: str


def probe_executable(path: str, version_flag: str = "--version") -> Executable:
    """Whether ``path`` is executable, and the first line its version flag prints."""
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        return Executable(path, False, "")
    try:
        result = subprocess.run([path, version_flag], capture_output=True, text=True, timeout=5,
                                check=False)
    except (OSError, subprocess.TimeoutExpired):
        return Executable(path, True, "")
    lines = (result.stdout or result.stderr).strip().splitlines()
    return Executable(path, True, lines[0] if lines else "")

