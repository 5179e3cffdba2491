"""The idle daemon's memory: starting ocid must not load the libraries that only some calls need.

requests (with urllib3, idna, charset_normalizer, certifi) waits for the first registry call,
websockets for the first WebSocket stream, jsonschema for the first OCI spec, tomlkit for
``ocid config``, zstandard for the first layer: together ~9 MB of an idle daemon's RSS.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import ocid

LAZY = ("requests", "urllib3", "websockets", "jsonschema", "tomlkit", "zstandard")
OCID_DIR = Path(ocid.__file__).parent


def _ocid_imports(path: Path, functions: set[str]) -> set[str]:
    """The ocid modules ``path`` imports at module level and inside the named functions."""
    tree = ast.parse(path.read_text())
    scopes: list[ast.AST] = [node for node in tree.body
                             if not isinstance(node, ast.FunctionDef | ast.ClassDef)]
    scopes += [node for node in ast.walk(tree)
               if isinstance(node, ast.FunctionDef) and node.name in functions]
    modules = set()
    for scope in scopes:
        for node in ast.walk(scope):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module)
            elif isinstance(node, ast.Import):
                modules.update(alias.name for alias in node.names)
    return {m for m in modules if m == "ocid" or m.startswith("ocid.")}


def startup_modules() -> list[str]:
    """What the ``ocid`` console script (ocid.cli:main) imports before it serves: the CLI,
    the daemon, and the services Daemon.run imports and builds."""
    modules = _ocid_imports(OCID_DIR / "cli.py", {"cli"})
    modules |= _ocid_imports(OCID_DIR / "daemon.py", {"run"})
    return sorted(modules)


# Import as the daemon does, then build its image store and start its streaming server (their
# constructors and start() run at startup too), and list the modules that got loaded.
PROBE = """
import importlib, json, sys, tempfile
for name in sys.argv[1:]:
    importlib.import_module(name)
from ocid.config import Config
from ocid.image.service import ImageService
from ocid.stream.server import StreamServer
with tempfile.TemporaryDirectory() as root:
    config = Config()
    config.ocid.root = root
    images = ImageService(config.finalize())
    streams = StreamServer(None, "127.0.0.1", 0)
    streams.start()
    streams.stop()
    images.close()
print(json.dumps(sorted(sys.modules)))
"""


def test_startup_imports_cover_the_daemon():
    modules = startup_modules()
    for expected in ("ocid.daemon", "ocid.server", "ocid.image.service", "ocid.stream.server",
                     "ocid.lifecycle.service"):
        assert expected in modules


def test_daemon_startup_leaves_optional_libraries_unloaded():
    result = subprocess.run([sys.executable, "-c", PROBE, *startup_modules()],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    modules = set(json.loads(result.stdout.splitlines()[-1]))
    loaded = [name for name in LAZY if name in modules]
    assert loaded == [], (
        f"starting ocid now imports {loaded}: import them in the function that first needs "
        "them (see ocid/oci/spec.py's jsonschema), not at module level")
