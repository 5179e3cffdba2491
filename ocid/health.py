"""The runtime's readiness as the CRI Status call reports it (RuntimeReady, NetworkReady)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ocid.config import Config
from ocid.network.cni import CniManager, NetworkNotReady

RUNTIME_READY = "RuntimeReady"
NETWORK_READY = "NetworkReady"


@dataclass(frozen=True, slots=True)
class Condition:
    """One CRI runtime condition."""

    type: str
    status: bool
    reason: str = ""
    message: str = ""


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def runtime_condition(config: Config) -> Condition:
    """RuntimeReady: the default OCI runtime and conmon are present and executable."""
    missing = [f"{what} {path} not found or not executable"
               for what, path in (("OCI runtime", config.runtime.runtime),
                                  ("conmon", config.runtime.conmon))
               if not _executable(path)]
    if missing:
        return Condition(RUNTIME_READY, False, "RuntimeNotReady", "; ".join(missing))
    return Condition(RUNTIME_READY, True)


def network_condition(cni: CniManager) -> Condition:
    """NetworkReady: a valid CNI network configuration with all its plugins exists.

    The manager re-reads the directory only when its contents changed.
    """
    try:
        cni.network()
    except NetworkNotReady as exc:
        return Condition(NETWORK_READY, False, "NetworkPluginNotReady", str(exc))
    return Condition(NETWORK_READY, True)
