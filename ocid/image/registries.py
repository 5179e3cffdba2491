"""registries.conf (v2, containers-registries.conf(5)): search registries, aliases, mirrors.

Semantics follow containers/image's ``pkg/sysregistriesv2``: the longest matching ``prefix``
wins, ``location`` replaces it when pulling, mirrors are tried before the location, drop-in
files override ``[[registry]]`` entries by prefix and replace scalar settings they set.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from typing import Any

from ocid.errors import ConfigError, FailedPrecondition, InvalidArgument
from ocid.image.reference import (
    DEFAULT_DOMAIN, DEFAULT_TAG, DOMAIN_RE, OFFICIAL_REPO_PREFIX, PATH_RE, TRANSPORT_PREFIX,
    ImageReference, is_short_name, parse_reference,
)

SHORT_NAME_MODES = ("enforcing", "permissive", "disabled")
PULL_FROM_MIRROR = ("all", "digest-only", "tag-only")


@dataclass(frozen=True, slots=True)
class Mirror:
    """A ``[[registry.mirror]]``: a location tried before the registry's own."""

    location: str
    insecure: bool = False
    pull_from_mirror: str = "all"  # all, digest-only or tag-only


@dataclass(frozen=True, slots=True)
class Registry:
    """A ``[[registry]]``: the references under ``prefix`` are pulled from ``location``."""

    prefix: str
    location: str
    insecure: bool = False
    blocked: bool = False
    mirrors: tuple[Mirror, ...] = ()
    origin: str | None = field(default=None, compare=False)  # the file that defined it


@dataclass(frozen=True, slots=True)
class PullSource:
    """One place to try when pulling a reference."""

    reference: ImageReference  # where to fetch from (rewritten)
    insecure: bool
    mirror: bool


def _match_length(name: str, prefix: str) -> int | None:
    """How much of ``name`` (a host or repository name) ``prefix`` covers; None: no match."""
    if prefix.startswith("*."):
        # A wildcard matches any subdomain (not the bare domain), with any port.
        host = name.partition("/")[0]
        return len(host) if host.partition(":")[0].endswith(prefix[1:]) else None
    if name == prefix or name.startswith(prefix + "/"):
        return len(prefix)
    return None


@dataclass(frozen=True, slots=True)
class RegistriesConfig:
    """The merged registries.conf and its drop-ins."""

    unqualified_search_registries: tuple[str, ...] = ()
    short_name_mode: str = "enforcing"
    aliases: dict[str, str] = field(default_factory=dict)  # short name -> fully qualified name
    registries: tuple[Registry, ...] = ()
    path: str | None = None

    def _where(self, registry: Registry) -> str:
        return registry.origin or self.path or "registries.conf"

    def _find(self, name: str) -> Registry | None:
        best: Registry | None = None
        for registry in self.registries:
            if _match_length(name, registry.prefix) is not None:
                if best is None or len(registry.prefix) > len(best.prefix):
                    best = registry
        return best

    def find_registry(self, ref: ImageReference) -> Registry | None:
        """The ``[[registry]]`` with the longest prefix matching ``ref``, if any."""
        return self._find(ref.name)

    def is_insecure(self, host: str) -> bool:
        """Whether ``host`` (``name[:port]``) may be reached without TLS verification."""
        registry = self._find(host)
        if registry is not None:
            return registry.insecure
        # Also a host that is only the location (or a mirror) of an insecure entry.
        endpoints = [(r.location, r.insecure) for r in self.registries]
        endpoints += [(m.location, m.insecure) for r in self.registries for m in r.mirrors]
        return any(insecure and location.partition("/")[0] == host
                   for location, insecure in endpoints)

    def pull_sources(self, ref: ImageReference) -> list[PullSource]:
        """Where to pull ``ref`` from, in order: the usable mirrors, then the location."""
        registry = self.find_registry(ref)
        if registry is None:
            return [PullSource(ref, self.is_insecure(ref.domain), mirror=False)]
        if registry.blocked:
            raise FailedPrecondition(
                f"registry {registry.prefix} is blocked in {self._where(registry)}")
        sources: list[PullSource] = []
        for mirror in registry.mirrors:
            if ref.digest and mirror.pull_from_mirror == "tag-only":
                continue
            if not ref.digest and mirror.pull_from_mirror == "digest-only":
                continue
            sources.append(PullSource(self._rewrite(ref, registry, mirror.location),
                                      mirror.insecure, mirror=True))
        sources.append(PullSource(self._rewrite(ref, registry, registry.location),
                                  registry.insecure, mirror=False))
        return sources

    def _rewrite(self, ref: ImageReference, registry: Registry, location: str) -> ImageReference:
        if not location:  # a wildcard prefix without a location only sets options
            return ref
        length = _match_length(ref.name, registry.prefix)
        assert length is not None
        text = location + ref.name[length:]
        domain, _, path = text.partition("/")
        if domain == DEFAULT_DOMAIN and "/" not in path:
            path = OFFICIAL_REPO_PREFIX + path
        if not DOMAIN_RE.fullmatch(domain) or not PATH_RE.fullmatch(path):
            raise InvalidArgument(
                f"registry {registry.prefix} in {self._where(registry)}: location {location!r} "
                f"turns {ref.name} into invalid name {text!r}")
        return ImageReference(domain, path, ref.tag, ref.digest)

    def resolve(self, text: str) -> list[ImageReference]:
        """The fully qualified references a user's image name may stand for, in the order to try."""
        if not is_short_name(text):
            return [parse_reference(text)]
        given = parse_reference(text, default_tag=False)  # validates the whole input
        short = text.removeprefix(TRANSPORT_PREFIX).partition("@")[0].partition(":")[0]
        tag = given.tag if given.tag or given.digest else DEFAULT_TAG

        def qualified(name: str) -> ImageReference:
            ref = parse_reference(name, default_tag=False)
            return ImageReference(ref.domain, ref.path, tag, given.digest)

        alias = self.aliases.get(short)
        if alias:
            return [qualified(alias)]
        if not self.unqualified_search_registries:
            return [qualified(given.name)]  # docker compatible: docker.io
        candidates = [qualified(f"{registry}/{short}")
                      for registry in self.unqualified_search_registries]
        if len(candidates) > 1 and self.short_name_mode == "enforcing":
            listed = ", ".join(str(c) for c in candidates)
            raise InvalidArgument(
                f"short name {text!r} is ambiguous: it could be {listed}; use a fully qualified "
                f"name or add an alias in {self.path or 'registries.conf'}")
        return candidates


# ---- loading -------------------------------------------------------------------------------


@dataclass
class _FileConfig:
    """What one file sets; None means 'not set here' so drop-ins only override what they name."""

    search: tuple[str, ...] | None = None
    mode: str | None = None
    aliases: dict[str, str] = field(default_factory=dict)  # "" resets an earlier alias
    registries: dict[str, Registry] = field(default_factory=dict)  # by prefix


class _Reader:
    """Type-checked access to one file's TOML tables, with errors naming the file and key."""

    def __init__(self, path: str):
        self.path = path

    def error(self, message: str) -> ConfigError:
        return ConfigError(message, path=self.path)

    def get(self, table: dict[str, Any], key: str, kind: type, where: str,
            default: Any = None) -> Any:
        value = table.get(key, default)
        if key in table and not isinstance(value, kind):
            names = {str: "a string", bool: "a boolean", list: "an array", dict: "a table"}
            raise self.error(f"{where}{key} must be {names[kind]}, not {value!r}")
        return value

    def strings(self, table: dict[str, Any], key: str, where: str = "") -> list[str] | None:
        value = self.get(table, key, list, where)
        if value is not None and not all(isinstance(v, str) for v in value):
            raise self.error(f"{where}{key} must be an array of strings, not {value!r}")
        return value

    def tables(self, table: dict[str, Any], key: str, where: str = "") -> list[dict[str, Any]]:
        value = self.get(table, key, list, where, [])
        if not all(isinstance(v, dict) for v in value):
            raise self.error(f"{where}{key} must be an array of tables ([[{where}{key}]])")
        return value


def _location(reader: _Reader, value: str, where: str) -> str:
    if value.startswith(("http://", "https://")):
        raise reader.error(f"{where} {value!r}: URI schemes are not supported, "
                           "give host[:port][/path]")
    return value.rstrip("/")


def _parse_registry(reader: _Reader, table: dict[str, Any], where: str) -> Registry:
    location = _location(reader, reader.get(table, "location", str, where, ""), f"{where}location")
    prefix = _location(reader, reader.get(table, "prefix", str, where, ""), f"{where}prefix")
    if not prefix:
        if not location:
            raise reader.error(f"{where[:-1]} sets neither location nor prefix")
        prefix = location
    elif prefix.startswith("*."):
        if any(c in prefix for c in "/@:"):
            raise reader.error(f"{where}prefix {prefix!r}: a wildcard prefix must look like "
                               "*.example.com")
    elif not location:
        raise reader.error(f"{where}location is unset and prefix {prefix!r} is not a wildcard "
                           "(*.example.com)")
    if "pull-from-mirror" in table:
        raise reader.error(f"{where}pull-from-mirror is only valid in a [[registry.mirror]]")
    digest_only = reader.get(table, "mirror-by-digest-only", bool, where, False)
    mirrors: list[Mirror] = []
    for i, entry in enumerate(reader.tables(table, "mirror", where)):
        at = f"{where}mirror[{i}]."
        mirror_location = _location(reader, reader.get(entry, "location", str, at, ""),
                                    f"{at}location")
        if not mirror_location:
            raise reader.error(f"{at}location is unset")
        pull_from = reader.get(entry, "pull-from-mirror", str, at, "")
        if pull_from and pull_from not in PULL_FROM_MIRROR:
            raise reader.error(f"{at}pull-from-mirror {pull_from!r} must be one of "
                               f"{', '.join(PULL_FROM_MIRROR)}")
        if pull_from and digest_only:
            raise reader.error(f"{at}pull-from-mirror cannot be combined with the registry's "
                               "mirror-by-digest-only")
        mirrors.append(Mirror(mirror_location, reader.get(entry, "insecure", bool, at, False),
                              "digest-only" if digest_only else pull_from or "all"))
    return Registry(prefix, location, reader.get(table, "insecure", bool, where, False),
                    reader.get(table, "blocked", bool, where, False), tuple(mirrors), reader.path)


def _parse_v1(reader: _Reader, data: dict[str, Any]) -> _FileConfig:
    """The v1 tables ([registries.search] and co.), converted as containers/image does."""
    v1 = reader.get(data, "registries", dict, "")
    lists = {name: reader.strings(reader.get(v1, name, dict, "registries.", {}), "registries",
                                  f"registries.{name}.") or []
             for name in ("search", "insecure", "block")}
    registries: dict[str, Registry] = {}
    for name, flag in (("block", "blocked"), ("insecure", "insecure")):
        for value in lists[name]:
            location = _location(reader, value, f"registries.{name}")
            old = registries.get(location, Registry(location, location, origin=reader.path))
            registries[location] = Registry(location, location, old.insecure or flag == "insecure",
                                            old.blocked or flag == "blocked", origin=reader.path)
    return _FileConfig(search=tuple(lists["search"]) if lists["search"] else None,
                       registries=registries)


def _parse_file(path: str, *, dropin: bool) -> _FileConfig | None:
    """One registries.conf file, or None if it does not exist."""
    reader = _Reader(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise reader.error(f"cannot read: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise reader.error(f"invalid TOML: {exc}") from exc

    v2_keys = ("registry", "unqualified-search-registries", "short-name-mode", "aliases")
    if "registries" in data:
        if dropin:
            raise reader.error("a drop-in file must use the v2 format, "
                               "not [registries.search] and co.")
        if any(k in data for k in v2_keys):
            raise reader.error("mixing the v1 format ([registries.search] and co.) with v2 keys "
                               "is not supported")
        return _parse_v1(reader, data)

    config = _FileConfig()
    search = reader.strings(data, "unqualified-search-registries")
    if search is not None:
        for i, value in enumerate(search):
            search[i] = _location(reader, value, "unqualified-search-registries entry")
            if not DOMAIN_RE.fullmatch(search[i]):
                raise reader.error(f"invalid unqualified-search-registries entry {value!r}: "
                                   "expected host[:port]")
        config.search = tuple(search)
    mode = reader.get(data, "short-name-mode", str, "")
    if mode is not None and mode not in SHORT_NAME_MODES:
        raise reader.error(f"short-name-mode {mode!r} must be one of {', '.join(SHORT_NAME_MODES)}")
    config.mode = mode
    for name, value in reader.get(data, "aliases", dict, "", {}).items():
        config.aliases[name] = _parse_alias(reader, name, value)
    registries = [_parse_registry(reader, table, f"registry[{i}].")
                  for i, table in enumerate(reader.tables(data, "registry"))]
    _check_conflicts(reader, registries)
    for registry in registries:
        # As in containers/image, the first entry for a prefix wins; later duplicates are ignored.
        config.registries.setdefault(registry.prefix, registry)
    return config


def _parse_alias(reader: _Reader, name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise reader.error(f"aliases.{name} must be a string, not {value!r}")
    if not is_short_name(name) or any(c in name for c in ":@"):
        raise reader.error(f"alias {name!r} must be a short name without registry, tag or digest")
    try:
        parse_reference(name, default_tag=False)
    except InvalidArgument as exc:
        raise reader.error(f"alias {name!r}: {exc}") from exc
    if not value:
        return ""  # resets an alias set by an earlier file
    if is_short_name(value):
        raise reader.error(f"alias {name!r} = {value!r} must be fully qualified "
                           "(registry/repository)")
    try:
        ref = parse_reference(value, default_tag=False)
    except InvalidArgument as exc:
        raise reader.error(f"alias {name!r}: {exc}") from exc
    if ref.tag or ref.digest:
        raise reader.error(f"alias {name!r} = {value!r} must not contain a tag or digest")
    return ref.name


def _check_conflicts(reader: _Reader, registries: list[Registry]) -> None:
    """Entries for one location must agree on insecure and blocked, as containers/image requires."""
    seen: dict[str, Registry] = {}
    for registry in registries:
        key = registry.location or registry.prefix
        other = seen.setdefault(key, registry)
        for attr in ("insecure", "blocked"):
            if getattr(other, attr) != getattr(registry, attr):
                raise reader.error(f"registry {key!r} is defined multiple times with conflicting "
                                   f"{attr!r} settings")


def _dropin_files(directory: str) -> list[str]:
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ConfigError(f"cannot read drop-in directory: {exc.strerror}", path=directory) from exc
    paths = (os.path.join(directory, n) for n in names if n.endswith(".conf"))
    return [p for p in paths if not os.path.isdir(p)]


def load_registries_conf(path: str, dropin_dir: str | None = None) -> RegistriesConfig:
    """Load registries.conf and, in lexical order, the ``*.conf`` files of ``dropin_dir``.

    A missing file or directory counts as empty.
    """
    merged = _parse_file(path, dropin=False) or _FileConfig()
    for dropin in _dropin_files(dropin_dir) if dropin_dir else []:
        update = _parse_file(dropin, dropin=True)
        if update is None:  # removed since the listing
            continue
        merged.registries.update(update.registries)
        merged.aliases.update(update.aliases)
        merged.search = merged.search if update.search is None else update.search
        merged.mode = update.mode or merged.mode
    return RegistriesConfig(
        unqualified_search_registries=merged.search or (),
        short_name_mode=merged.mode or "enforcing",
        aliases={k: v for k, v in merged.aliases.items() if v},
        registries=tuple(merged.registries[p] for p in sorted(merged.registries)),
        path=path,
    )
