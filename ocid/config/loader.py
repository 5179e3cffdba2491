"""Reading, checking and writing ocid's TOML configuration.

The checks are written here rather than with a validation library because the errors must
name the TOML key (``ocid.runtime.conmon``) and its line, which tomllib does not report for
keys; the mapping from dataclasses to TOML is small enough to own.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import textwrap
import tomllib
import typing
from collections.abc import Iterator, Mapping
from typing import Any

from ocid.errors import ConfigError

from .schema import SECTIONS, Config

_LINE_IN_MESSAGE = re.compile(r"\(at line (\d+), column \d+\)")


@dataclasses.dataclass(frozen=True)
class ConfigFlag:
    """A config field that is also an ocid command-line flag."""

    flag: str
    section: str
    name: str
    type: type
    help: str
    is_path: bool


def config_flags() -> Iterator[ConfigFlag]:
    """Every config field that has an ocid flag, in declaration order."""
    for _, attr in SECTIONS:
        section_cls = type(getattr(Config(), attr))
        hints = typing.get_type_hints(section_cls)
        for f in dataclasses.fields(section_cls):
            if f.metadata.get("flag"):
                yield ConfigFlag(f.metadata["flag"], attr, f.name, hints[f.name], f.metadata["help"],
                                 f.metadata["absolute"])


def load_config(
    path: str | None,
    *,
    required: bool = False,
    overrides: Mapping[tuple[str, str], Any] | None = None,
) -> Config:
    """Defaults, then the file at ``path`` (if any), then ``overrides`` keyed by (section, field).

    A missing file is an error only when ``required`` (the user named it).
    """
    config = Config()
    if path:
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            if required:
                raise ConfigError("no such file", path=path) from None
        except OSError as exc:
            raise ConfigError(f"cannot read: {exc.strerror}", path=path) from exc
        else:
            apply_toml(config, raw.decode("utf-8", errors="replace"), path=path)
    for (section, name), value in (overrides or {}).items():
        setattr(getattr(config, section), name, value)
    config.finalize()
    validate(config)
    return config


def apply_toml(config: Config, text: str, *, path: str = "<config>") -> None:
    """Parse TOML ``text`` and set every key it names on ``config``, checking names and types."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = _LINE_IN_MESSAGE.search(str(exc))
        raise ConfigError(f"invalid TOML: {exc}", path=path,
                          line=int(match.group(1)) if match else None) from exc

    def fail(message: str, keypath: tuple[str, ...]) -> typing.NoReturn:
        raise ConfigError(message, path=path, line=_line_of(text, keypath))

    tables = {table: attr for table, attr in SECTIONS}
    subtable_names = {table[-1] for table in tables if len(table) > 1}
    for key in data:
        if key != "ocid":
            fail(f"unknown table or key {key!r} (everything lives under [ocid])", (key,))
    for table, attr in SECTIONS:
        values: Any = data
        for part in table:
            values = values.get(part, {}) if isinstance(values, dict) else None
        if not isinstance(values, dict):
            fail(f"{'.'.join(table)} must be a table", table)
        section = getattr(config, attr)
        skip = subtable_names if table == ("ocid",) else set()
        _apply_dataclass(section, {k: v for k, v in values.items() if k not in skip}, table, fail)


def _apply_dataclass(target: Any, values: dict[str, Any], keypath: tuple[str, ...], fail: Any) -> None:
    hints = typing.get_type_hints(type(target))
    fields = {f.name: f for f in dataclasses.fields(target)}
    for key, value in values.items():
        here = (*keypath, key)
        if key not in fields:
            known = ", ".join(sorted(fields))
            fail(f"unknown key {'.'.join(here)!r} (known keys of [{'.'.join(keypath)}]: {known})", here)
        converted = _convert(value, hints[key], here, fail, current=getattr(target, key))
        choices = fields[key].metadata.get("choices")
        if choices and converted not in choices:
            fail(f"{'.'.join(here)} must be one of {', '.join(choices)}, not {converted!r}", here)
        setattr(target, key, converted)


def _convert(value: Any, expected: Any, keypath: tuple[str, ...], fail: Any, *,
             current: Any = None) -> Any:
    name = ".".join(keypath)
    origin = typing.get_origin(expected)
    if expected is bool:
        if not isinstance(value, bool):
            fail(f"{name} must be a boolean (true or false), not {_describe(value)}", keypath)
        return value
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail(f"{name} must be an integer, not {_describe(value)}", keypath)
        return value
    if expected is str:
        if not isinstance(value, str):
            fail(f"{name} must be a string, not {_describe(value)}", keypath)
        return value
    if origin is list:
        (item_type,) = typing.get_args(expected)
        if not isinstance(value, list):
            fail(f"{name} must be an array, not {_describe(value)}", keypath)
        return [_convert(item, item_type, keypath, fail) for item in value]
    if origin is dict:
        _, item_type = typing.get_args(expected)
        if not isinstance(value, dict):
            fail(f"{name} must be a table, not {_describe(value)}", keypath)
        # Tables of named entries merge into the defaults, as cri-o's runtimes do: a file that
        # adds a handler keeps runc and crun, and one that sets a single key keeps the others.
        result = dict(current or {})
        for key, item in value.items():
            if not isinstance(item, dict):
                fail(f"{name}.{key} must be a table, not {_describe(item)}", (*keypath, key))
            handler = dataclasses.replace(result[key]) if key in result else item_type()
            _apply_dataclass(handler, item, (*keypath, key), fail)
            result[key] = handler
        return result
    raise TypeError(f"unsupported config type {expected!r}")  # a bug in schema.py


def _describe(value: Any) -> str:
    kinds = {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
             list: "an array", dict: "a table"}
    return f"{kinds.get(type(value), type(value).__name__)} ({json.dumps(value, default=str)})"


def _line_of(text: str, keypath: tuple[str, ...]) -> int | None:
    """Best-effort line number of ``keypath`` in TOML ``text`` (tomllib reports none for keys)."""
    table: tuple[str, ...] = ()
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        header = re.fullmatch(r"\[\[?\s*([^\]]+?)\s*\]\]?(\s*#.*)?", stripped)
        if header:
            table = tuple(part.strip().strip('"\'') for part in header.group(1).split("."))
            if table == keypath:
                return number
            continue
        key = re.match(r"([A-Za-z0-9_\-\"'.]+)\s*=", stripped)
        if key:
            parts = tuple(p.strip().strip('"\'') for p in key.group(1).split("."))
            if (*table, *parts) == keypath or (*table, *parts[:1]) == keypath:
                return number
    return None


def validate(config: Config) -> None:
    """Checks that span values: absolute paths, port range, handler names."""
    for table, attr in SECTIONS:
        section = getattr(config, attr)
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if f.metadata.get("absolute") and value and not os.path.isabs(value):
                raise ConfigError(f"{'.'.join(table)}.{f.name} must be an absolute path, not {value!r}")
    for name, handler in config.runtime.runtimes.items():
        if not name or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise ConfigError(f"ocid.runtime.runtimes: invalid handler name {name!r}")
        if not handler.runtime_path:
            raise ConfigError(f"ocid.runtime.runtimes.{name}.runtime_path must be set")
        for key in ("runtime_path", "runtime_root"):
            value = getattr(handler, key)
            if value and not os.path.isabs(value):
                raise ConfigError(
                    f"ocid.runtime.runtimes.{name}.{key} must be an absolute path, not {value!r}")
    if config.image.pull_progress_timeout < 0:
        raise ConfigError("ocid.image.pull_progress_timeout must not be negative")
    if config.image.max_parallel_downloads < 1:
        raise ConfigError("ocid.image.max_parallel_downloads must be at least 1")
    if not 0 <= config.api.stream_port <= 65535:
        raise ConfigError(f"ocid.api.stream_port must be between 0 and 65535, not {config.api.stream_port}")
    if bool(config.api.stream_tls_cert) != bool(config.api.stream_tls_key):
        raise ConfigError("ocid.api.stream_tls_cert and stream_tls_key must be set together")


def to_dict(config: Config) -> dict[str, Any]:
    """The configuration as nested plain data, shaped like the TOML file."""
    out: dict[str, Any] = {}
    for table, attr in SECTIONS:
        node = out
        for part in table:
            node = node.setdefault(part, {})
        node.update(dataclasses.asdict(getattr(config, attr)))
    return out


def render_toml(config: Config) -> str:
    """The configuration as commented TOML that ``load_config`` reads back to the same values."""
    # Imported here: only ``ocid config`` writes TOML; the daemon reads it with tomllib.
    import tomlkit

    doc = tomlkit.document()
    for line in (
        "ocid configuration (TOML). Every key is optional: a missing key keeps its default.",
        "Command-line flags override this file. See ocid.conf(5).",
    ):
        doc.add(tomlkit.comment(line))
    root_table = tomlkit.table(is_super_table=False)
    doc.add("ocid", root_table)
    for table, attr in SECTIONS:
        section = getattr(config, attr)
        target = root_table if len(table) == 1 else tomlkit.table()
        _add_fields(target, section)
        if len(table) > 1:
            root_table.add(table[-1], target)
    return tomlkit.dumps(doc)


def _add_fields(target: Any, section: Any) -> None:
    import tomlkit

    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        help_text = f.metadata["help"]
        if f.metadata.get("flag"):
            help_text += f" (flag: {f.metadata['flag']})"
        if isinstance(value, dict):
            continue  # written below as sub-tables, after the plain keys
        for line in _comment_lines(help_text):
            target.add(tomlkit.comment(line))
        target.add(f.name, value)
        target.add(tomlkit.nl())
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if isinstance(value, dict):
            for line in _comment_lines(f.metadata["help"]):
                target.add(tomlkit.comment(line))
            holder = tomlkit.table(is_super_table=True)
            for key, item in value.items():
                sub = tomlkit.table()
                _add_fields(sub, item)
                holder.add(key, sub)
            target.add(f.name, holder)


def _comment_lines(text: str) -> list[str]:
    return textwrap.wrap(text, 94, break_on_hyphens=False, break_long_words=False)
