"""policy.json (containers-policy.json(5)): which images may be pulled or loaded.

Requirements are looked up as containers/image's ``signature/policy_eval.go`` does: for a
transport, the most specific scope that has an entry wins, then the transport's ``""`` entry,
then the global ``default``. Signatures cannot be verified yet, so a scope demanding them
rejects every image rather than letting an unsigned one through.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ocid.errors import ConfigError, FailedPrecondition
from ocid.image.reference import ImageReference

ACCEPT = "insecureAcceptAnything"
REJECT = "reject"
SIGNATURE_TYPES = ("signedBy", "sigstoreSigned")
REQUIREMENT_TYPES = (ACCEPT, REJECT, *SIGNATURE_TYPES)


class PolicyRejected(FailedPrecondition):
    """The signature policy does not allow the image."""


@dataclass(frozen=True, slots=True)
class Requirement:
    """One policy requirement; only its type matters until signatures are verified."""

    type: str


ACCEPT_ANYTHING = (Requirement(ACCEPT),)


def _docker_scopes(ref: ImageReference) -> list[str]:
    """The docker scopes of ``ref``, most specific first (docker/policyconfiguration)."""
    scopes = []
    # The identity names the digest when there is one: that is what decides the content.
    if ref.digest:
        scopes.append(f"{ref.name}@{ref.digest}")
    elif ref.tag:
        scopes.append(f"{ref.name}:{ref.tag}")
    name = ref.name
    scopes.append(name)
    while "/" in name:
        name = name.rpartition("/")[0]
        scopes.append(name)
    host = name.partition(":")[0]
    while "." in host:
        host = host.partition(".")[2]
        scopes.append(f"*.{host}")
    return scopes


def _path_scopes(path: str) -> list[str]:
    """A path and its parent directories, as the file transports' namespaces (without "/")."""
    scopes = [path]
    while path.startswith("/") and path.rfind("/") > 0:
        path = path[:path.rfind("/")]
        scopes.append(path)
    return scopes


@dataclass(frozen=True, slots=True)
class Policy:
    """A loaded policy.json."""

    path: str
    default: tuple[Requirement, ...] = ACCEPT_ANYTHING
    transports: dict[str, dict[str, tuple[Requirement, ...]]] = field(default_factory=dict)

    def _applicable(self, transport: str, ref: ImageReference | None,
                     scope: str | None = None) -> tuple[str, tuple[Requirement, ...]]:
        """The requirements that apply and where they come from, e.g. ``transports.docker[""]``."""
        scopes = self.transports.get(transport)
        if scopes is not None:
            if transport == "docker":
                candidates = _docker_scopes(ref) if ref is not None else []
            else:
                candidates = _path_scopes(scope) if scope else []
            for candidate in [*candidates, ""]:
                if candidate in scopes:
                    return f"transports.{transport}[{json.dumps(candidate)}]", scopes[candidate]
        return "default", self.default

    def check(self, transport: str, ref: ImageReference | None, scope: str | None = None) -> None:
        """Raise PolicyRejected unless every applicable requirement accepts the image."""
        label, requirements = self._applicable(transport, ref, scope)
        if transport == "docker" and ref is not None:
            image = str(ref)
        else:
            image = f"{transport}:{scope or ref or ''}"
        for requirement in requirements:
            if requirement.type == REJECT:
                raise PolicyRejected(
                    f"image {image} rejected by policy {self.path} ({label}: reject)")
            if requirement.type in SIGNATURE_TYPES:
                raise PolicyRejected(
                    f"image {image} rejected by policy {self.path} ({label}: {requirement.type}): "
                    "verifying signatures is not supported yet")


def _requirements(path: str, value: Any, where: str) -> tuple[Requirement, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where} must be a non-empty array of requirements", path=path)
    result = []
    for i, entry in enumerate(value):
        if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
            raise ConfigError(f"{where}[{i}] must be an object with a \"type\"", path=path)
        kind = entry["type"]
        if kind not in REQUIREMENT_TYPES:
            raise ConfigError(f"{where}[{i}]: unknown requirement type {kind!r} "
                              f"(known: {', '.join(REQUIREMENT_TYPES)})", path=path)
        if kind in (ACCEPT, REJECT) and set(entry) != {"type"}:
            extra = ", ".join(sorted(set(entry) - {"type"}))
            raise ConfigError(f"{where}[{i}]: {kind} takes no other keys, not {extra}", path=path)
        result.append(Requirement(kind))
    return tuple(result)


def load_policy(path: str) -> Policy:
    """Load policy.json; a missing file accepts everything.

    Accepting is the right default here: a fresh machine often has no policy.json at all, and
    the one Debian's containers-common ships is accept-anything too.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return Policy(path)
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", path=path) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"invalid JSON: {exc}", path=path) from exc
    if not isinstance(data, dict):
        raise ConfigError("the policy must be a JSON object", path=path)
    unknown = set(data) - {"default", "transports"}
    if unknown:
        raise ConfigError(f"unknown key {sorted(unknown)[0]!r} (expected default, transports)",
                          path=path)
    if "default" not in data:
        raise ConfigError("the \"default\" requirements are missing", path=path)
    default = _requirements(path, data["default"], "default")
    transports_data = data.get("transports", {})
    if not isinstance(transports_data, dict):
        raise ConfigError("\"transports\" must be an object of transports", path=path)
    transports: dict[str, dict[str, tuple[Requirement, ...]]] = {}
    for transport, scopes in transports_data.items():
        if not isinstance(scopes, dict):
            raise ConfigError(f"transports.{transport} must be an object of scopes", path=path)
        transports[transport] = {
            scope: _requirements(path, reqs, f"transports.{transport}[{json.dumps(scope)}]")
            for scope, reqs in scopes.items()
        }
    return Policy(path, default, transports)
