"""Seccomp profiles: the shipped default, Localhost files, and their OCI form.

Profiles are in the Docker/containers format (``data/seccomp.json`` is containers/common's
default): OCI ``linux.seccomp`` plus ``archMap`` and per-rule ``includes``/``excludes`` on
capabilities and architectures, which are resolved here for one container, as
containers/common's ``setupSeccomp`` does.
"""

from __future__ import annotations

import json
import platform
from importlib import resources
from pathlib import Path
from typing import Any

from ocid.errors import InvalidArgument

RUNTIME_DEFAULT = "RuntimeDefault"
UNCONFINED = "Unconfined"
LOCALHOST = "Localhost"

# platform.machine() → the Go arch names the profile's includes/excludes use.
_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386",
           "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}
_SCMP_ARCH = {"amd64": "SCMP_ARCH_X86_64", "arm64": "SCMP_ARCH_AARCH64", "arm": "SCMP_ARCH_ARM",
              "386": "SCMP_ARCH_X86", "ppc64le": "SCMP_ARCH_PPC64LE", "s390x": "SCMP_ARCH_S390X",
              "riscv64": "SCMP_ARCH_RISCV64"}
_RULE_KEYS = ("names", "action", "args", "errnoRet")  # the OCI fields of a rule


def host_arch() -> str:
    """The host's architecture in Go's naming (amd64, arm64, ...)."""
    machine = platform.machine()
    return _GOARCH.get(machine, machine)


def default_profile() -> dict[str, Any]:
    """The shipped default profile, in the containers format."""
    text = resources.files("ocid.oci").joinpath("data/seccomp.json").read_text()
    return json.loads(text)


def load_profile(path: str) -> dict[str, Any]:
    """A Localhost profile file; a missing or malformed file is InvalidArgument naming it."""
    try:
        profile = json.loads(Path(path).read_text())
    except OSError as exc:
        raise InvalidArgument(f"seccomp profile {path}: {exc.strerror}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"seccomp profile {path}: not valid JSON: {exc}") from exc
    if not isinstance(profile, dict) or not isinstance(profile.get("defaultAction"), str):
        raise InvalidArgument(f"seccomp profile {path}: no defaultAction")
    return profile


def _applies(rule: dict[str, Any], caps: frozenset[str], arch: str) -> bool:
    """Whether a rule's includes (all must hold) and excludes (none may) fit this container."""
    inc, exc = rule.get("includes") or {}, rule.get("excludes") or {}
    if arch in (exc.get("arches") or ()) or any(c in caps for c in exc.get("caps") or ()):
        return False
    if inc.get("arches") and arch not in inc["arches"]:
        return False
    return all(c in caps for c in inc.get("caps") or ())


def _architectures(profile: dict[str, Any], arch: str) -> list[str]:
    """The host's native arch plus its sub-arches (x86, x32 on amd64) from archMap."""
    if "archMap" not in profile:
        return list(profile.get("architectures") or [])
    native = _SCMP_ARCH.get(arch)
    for entry in profile["archMap"] or ():
        if entry["architecture"] == native:
            return [native, *(entry.get("subArchitectures") or ())]
    return [native] if native else []


def to_oci(profile: dict[str, Any], caps: frozenset[str], arch: str) -> dict[str, Any]:
    """The OCI ``linux.seccomp`` object of a profile for a container with these caps."""
    out: dict[str, Any] = {"defaultAction": profile["defaultAction"]}
    if "defaultErrnoRet" in profile:
        out["defaultErrnoRet"] = profile["defaultErrnoRet"]
    archs = _architectures(profile, arch)
    if archs:
        out["architectures"] = archs
    if profile.get("flags"):
        out["flags"] = list(profile["flags"])
    rules = []
    for rule in profile.get("syscalls") or ():
        names = list(rule.get("names") or ([rule["name"]] if rule.get("name") else []))
        if not names or not _applies(rule, caps, arch):
            continue
        oci = {k: rule[k] for k in _RULE_KEYS if rule.get(k) is not None}
        oci["names"] = names
        if not oci.get("args"):
            oci.pop("args", None)
        rules.append(oci)
    out["syscalls"] = rules
    return out


def seccomp_for(profile_type: str, localhost_ref: str, caps: frozenset[str],
                arch: str | None = None) -> dict[str, Any] | None:
    """``linux.seccomp`` for a CRI profile type ("" means RuntimeDefault); None if unconfined."""
    arch = arch or host_arch()
    if profile_type in ("", RUNTIME_DEFAULT):
        return to_oci(default_profile(), caps, arch)
    if profile_type == UNCONFINED:
        return None
    if profile_type == LOCALHOST:
        if not localhost_ref:
            raise InvalidArgument("seccomp profile type Localhost needs a localhost_ref")
        return to_oci(load_profile(localhost_ref), caps, arch)
    raise InvalidArgument(f"unknown seccomp profile type {profile_type!r}")
