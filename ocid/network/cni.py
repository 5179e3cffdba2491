"""CNI network configurations: finding and checking them in the configured directory."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

from ocid.errors import Unavailable

log = logging.getLogger(__name__)

CONFIG_SUFFIXES = (".conflist", ".conf", ".json")


class NetworkNotReady(Unavailable):
    """No usable CNI network: the reason says why (Status reports it as NetworkReady false)."""


@dataclass(frozen=True)
class CniNetwork:
    """A CNI network configuration list as loaded from one file."""

    name: str
    path: str
    cni_version: str
    plugins: tuple[dict[str, Any], ...]


def parse_network_file(path: str) -> CniNetwork:
    """Parse one ``.conflist`` (or a single-plugin ``.conf``/``.json``) file.

    Raises ValueError with a message naming what is wrong.
    """
    with open(path, "rb") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"invalid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    if "plugins" in data:
        plugins = data["plugins"]
        if not isinstance(plugins, list) or not plugins:
            raise ValueError("'plugins' must be a non-empty list")
    elif path.endswith(".conflist"):
        raise ValueError("a .conflist needs a 'plugins' list")
    else:
        plugins = [data]  # a single-plugin .conf is a list of one
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("missing 'name'")
    for index, plugin in enumerate(plugins):
        if not isinstance(plugin, dict) or not isinstance(plugin.get("type"), str):
            raise ValueError(f"plugin {index} has no 'type'")
    return CniNetwork(name=name, path=path, cni_version=str(data.get("cniVersion", "")),
                      plugins=tuple(plugins))


def find_plugin(plugin_type: str, plugin_dirs: list[str]) -> str | None:
    """The path of the plugin binary for ``plugin_type``, searched in ``plugin_dirs`` in order."""
    for directory in plugin_dirs:
        candidate = os.path.join(directory, plugin_type)
        if os.access(candidate, os.X_OK) and os.path.isfile(candidate):
            return candidate
    return None


def default_network(network_dir: str, plugin_dirs: list[str]) -> CniNetwork:
    """The default network: the lexically first valid configuration whose plugins all exist.

    Raises NetworkNotReady with the reason when there is none.
    """
    try:
        names = sorted(n for n in os.listdir(network_dir) if n.endswith(CONFIG_SUFFIXES))
    except FileNotFoundError:
        raise NetworkNotReady(f"CNI configuration directory {network_dir} does not exist") from None
    except OSError as exc:
        raise NetworkNotReady(f"cannot read CNI configuration directory {network_dir}: "
                              f"{exc.strerror}") from exc
    problems = []
    for name in names:
        path = os.path.join(network_dir, name)
        try:
            network = parse_network_file(path)
        except (OSError, ValueError) as exc:
            problems.append(f"{name}: {exc}")
            continue
        missing = [p["type"] for p in network.plugins if not find_plugin(p["type"], plugin_dirs)]
        if missing:
            problems.append(f"{name}: plugin {', '.join(missing)} not found in "
                            f"{':'.join(plugin_dirs)}")
            continue
        return network
    detail = f" ({'; '.join(problems)})" if problems else ""
    raise NetworkNotReady(f"no valid CNI network configuration in {network_dir}{detail}")
