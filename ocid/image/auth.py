"""Registry credentials in auth files (containers-auth.json(5), docker's config.json).

Lookup follows containers/image's ``pkg/docker/config``: the most specific ``auths`` key wins
(``host/ns/repo``, then ``host/ns``, then ``host``), then keys that normalise to the same host
(``https://index.docker.io/v1/`` and co. for docker.io). Credential helpers are not run.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

from ocid.errors import ConfigError, FailedPrecondition, InvalidArgument

# Every host name docker.io is stored under; containers/image normalises them to this one.
DOCKER_HUB_HOSTS = ("docker.io", "index.docker.io", "registry-1.docker.io")


@dataclass(frozen=True, slots=True)
class Credentials:
    """A registry user name and password (the password stays out of repr and logs)."""

    username: str
    password: str = field(repr=False)


def _normalize_host(host: str) -> str:
    return "index.docker.io" if host in DOCKER_HUB_HOSTS else host


def _normalize_key(key: str) -> str:
    """The host an ``auths`` key stands for; a URL key (``https://host/v1/``) keeps its host."""
    stripped = key.removeprefix("http://").removeprefix("https://")
    if stripped != key:
        stripped = stripped.partition("/")[0]
    return _normalize_host(stripped)


def _read(path: str) -> dict[str, Any] | None:
    """The file's JSON object, or None if it does not exist."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read auth file: {exc.strerror}", path=path) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"auth file is not UTF-8 text: {exc}", path=path) from exc
    if not text.strip():
        return {}  # an empty file (created by touch, say) holds no credentials yet
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"auth file is not valid JSON: {exc}", path=path) from exc
    if not isinstance(data, dict) or not isinstance(data.get("auths", {}), dict):
        raise ConfigError("auth file must be a JSON object with an \"auths\" object", path=path)
    return data


def _decode(path: str, key: str, entry: Any) -> Credentials | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("auth", ""), str):
        raise ConfigError(f"auths[{key!r}] must be an object with a string \"auth\"", path=path)
    try:
        decoded = base64.b64decode(entry.get("auth", ""), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ConfigError(f"auths[{key!r}].auth is not base64 of \"user:password\"",
                          path=path) from exc
    username, colon, password = decoded.partition(":")
    if not colon:
        return None  # an empty entry: docker writes {} for hosts served by a credential helper
    return Credentials(username, password.strip("\x00"))


def _find(path: str, auths: dict[str, Any], ref_or_host: str) -> Credentials | None:
    name = ref_or_host
    keys = [name]
    while "/" in name:
        name = name.rpartition("/")[0]
        keys.append(name)
    # Namespace and repository keys only match exactly; the first match decides for this file.
    for key in keys:
        if key in auths:
            return _decode(path, key, auths[key])
    host = _normalize_host(name)
    for key, entry in auths.items():
        if _normalize_key(key) == host:
            return _decode(path, key, entry)
    return None


def lookup_credentials(ref_or_host: str, auth_files: list[str]) -> Credentials | None:
    """The credentials for ``host[:port][/namespace/repo]`` from the first file that has them."""
    ref_or_host = ref_or_host.removeprefix("docker://").rstrip("/")
    for path in auth_files:
        data = _read(path)
        if data is None:
            continue
        credentials = _find(path, data.get("auths", {}), ref_or_host)
        if credentials is not None:
            return credentials
    return None


def default_auth_files(configured: str) -> list[str]:
    """The auth files to search, in containers' order, without duplicates."""
    env = os.environ
    paths = [configured, env.get("REGISTRY_AUTH_FILE", "")]
    if env.get("XDG_RUNTIME_DIR"):
        paths.append(os.path.join(env["XDG_RUNTIME_DIR"], "containers", "auth.json"))
    home = os.path.expanduser("~")
    config_home = env.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    paths.append(os.path.join(config_home, "containers", "auth.json"))
    docker_config = env.get("DOCKER_CONFIG") or os.path.join(home, ".docker")
    paths.append(os.path.join(docker_config, "config.json"))
    return list(dict.fromkeys(p for p in paths if p))


def _check_key(registry: str) -> None:
    """Reject keys containers/image refuses: URLs, tags and digests."""
    if not registry:
        raise InvalidArgument("registry name is empty")
    if registry.startswith(("http://", "https://")):
        raise InvalidArgument(
            f"registry {registry!r} must be host[:port][/namespace], without http[s]://")
    if "@" in registry:
        raise InvalidArgument(f"registry {registry!r} must not contain a digest ('@')")
    first_slash = registry.find("/")
    if first_slash != -1 and registry.rfind(":") > first_slash:
        raise InvalidArgument(
            f"registry {registry!r} must not contain a tag (':' after host[:port])")


def _write(path: str, data: dict[str, Any]) -> None:
    """Replace ``path`` atomically with ``data``, readable by its owner only."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".auth-", suffix=".json", dir=directory)  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent="\t")
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise FailedPrecondition(f"cannot write auth file {path}: {exc.strerror}") from exc


def store_credentials(path: str, registry: str, creds: Credentials) -> None:
    """Store ``creds`` for ``registry`` (``host[:port][/namespace]``) in the auth file ``path``."""
    _check_key(registry)
    data = _read(path) or {}
    auths = data.setdefault("auths", {})
    token = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode("ascii")
    auths[registry] = {"auth": token}
    _write(path, data)


def remove_credentials(path: str, registry: str) -> bool:
    """Remove the credentials of ``registry`` from ``path``; False if there were none."""
    _check_key(registry)
    data = _read(path)
    auths = (data or {}).get("auths", {})
    if registry in auths:
        doomed = [registry]
    elif "/" not in registry:
        # A host also removes the entries other tools stored under its URL or an alias.
        doomed = [k for k in auths if _normalize_key(k) == _normalize_host(registry)]
    else:
        doomed = []
    if not doomed or data is None:
        return False
    for key in doomed:
        del auths[key]
    _write(path, data)
    return True
