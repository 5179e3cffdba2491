"""Pod and container config files for ``ocic pod create`` and ``ocic ctr create``.

A file is JSON or YAML (told apart by parsing, not by its name) holding a CRI v1
``PodSandboxConfig`` or ``ContainerConfig`` with today's field names, in snake_case or
lowerCamelCase as protobuf's JSON mapping accepts. Before protobuf sees it, the data is
checked against the message descriptors, so every mistake is reported in one line naming
the file and the field's path::

    pod.json: unknown field "foo" at PodSandboxConfig.metadata
    pod.yaml: expected an unsigned 32-bit integer at PodSandboxConfig.metadata.attempt, got "x"

Paths inside the file (log_directory, mounts, ...) are passed on as written.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from ocid.errors import ConfigError

M = TypeVar("M", bound=Message)

_INT_RANGES: dict[int, tuple[str, int, int]] = {
    FieldDescriptor.TYPE_INT32: ("a 32-bit integer", -(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: ("a 32-bit integer", -(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: ("a 32-bit integer", -(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: ("an unsigned 32-bit integer", 0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: ("an unsigned 32-bit integer", 0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: ("a 64-bit integer", -(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: ("a 64-bit integer", -(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: ("a 64-bit integer", -(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: ("an unsigned 64-bit integer", 0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: ("an unsigned 64-bit integer", 0, 2**64 - 1),
}


class ConfigFileError(ConfigError):
    """A pod or container config file cannot be read as the message it should hold."""


def load_pod_config(path: str) -> Any:
    """The ``runtime.v1.PodSandboxConfig`` in the JSON or YAML file at ``path``."""
    from cri_api.v1 import api_pb2

    return load_message(path, api_pb2.PodSandboxConfig)


def load_container_config(path: str) -> Any:
    """The ``runtime.v1.ContainerConfig`` in the JSON or YAML file at ``path``."""
    from cri_api.v1 import api_pb2

    return load_message(path, api_pb2.ContainerConfig)


def load_message(path: str, message_class: type[M]) -> M:
    """Read ``path`` and parse it into a new ``message_class``; OSErrors pass through."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return parse_message(text, message_class, source=path)


def parse_message(text: str, message_class: type[M], *, source: str = "<config>") -> M:
    """Parse JSON or YAML ``text`` into a new ``message_class``, raising ConfigFileError."""
    from google.protobuf.json_format import ParseDict, ParseError

    data = _parse_document(text, source)
    descriptor = message_class.DESCRIPTOR
    if not isinstance(data, dict):
        raise ConfigFileError(f"expected a mapping of {descriptor.name} fields, got {_kind(data)}",
                              path=source)
    _check_message(data, descriptor, descriptor.name, source)
    message = message_class()
    try:
        ParseDict(data, message)
    except ParseError as exc:
        # The checks above should catch everything; this keeps protobuf's word as a fallback.
        raise ConfigFileError(str(exc).splitlines()[0], path=source) from exc
    return message


def _parse_document(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as json_error:
        json_exc = json_error
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # Text that looks like JSON gets the JSON parser's complaint, which is the precise one.
        if text.lstrip().startswith(("{", "[")) and isinstance(json_exc, json.JSONDecodeError):
            raise ConfigFileError(f"invalid JSON: {json_exc.msg} (column {json_exc.colno})",
                                  path=source, line=json_exc.lineno) from None
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigFileError(f"invalid YAML: {problem}", path=source,
                              line=mark.line + 1 if mark is not None else None) from None


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (an empty document)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return repr(value)
    return {dict: "a mapping", list: "a list"}.get(type(value), type(value).__name__)


def _fields(descriptor: Descriptor) -> dict[str, FieldDescriptor]:
    names: dict[str, FieldDescriptor] = {}
    for field in descriptor.fields:
        names[field.name] = field
        names[field.json_name] = field
    return names


def _check_message(data: dict[str, Any], descriptor: Descriptor, where: str, source: str) -> None:
    fields = _fields(descriptor)
    for key, value in data.items():
        field = fields.get(key) if isinstance(key, str) else None
        if field is None:
            raise ConfigFileError(f"unknown field {json.dumps(str(key))} at {where}", path=source)
        _check_field(value, field, f"{where}.{key}", source)


def _check_field(value: Any, field: FieldDescriptor, where: str, source: str) -> None:
    if value is None:
        return  # JSON null means "not set" to protobuf
    message_type = field.message_type
    if message_type is not None and message_type.GetOptions().map_entry:
        if not isinstance(value, dict):
            raise ConfigFileError(f"expected a mapping at {where}, got {_kind(value)}", path=source)
        key_field = message_type.fields_by_name["key"]
        value_field = message_type.fields_by_name["value"]
        for key, item in value.items():
            _check_scalar(key, key_field, f"{where} (key {_kind(key)})", source)
            _check_single(item, value_field, f"{where}.{key}", source)
        return
    if field.is_repeated:
        if not isinstance(value, list):
            raise ConfigFileError(f"expected a list at {where}, got {_kind(value)}", path=source)
        for index, item in enumerate(value):
            _check_single(item, field, f"{where}[{index}]", source)
        return
    _check_single(value, field, where, source)


def _check_single(value: Any, field: FieldDescriptor, where: str, source: str) -> None:
    message_type = field.message_type
    if message_type is None:
        _check_scalar(value, field, where, source)
    elif message_type.full_name.startswith("google.protobuf."):
        return  # well-known types have their own JSON forms; ParseDict judges them
    elif not isinstance(value, dict):
        raise ConfigFileError(f"expected a mapping ({message_type.name}) at {where}, "
                              f"got {_kind(value)}", path=source)
    else:
        _check_message(value, message_type, where, source)


def _check_scalar(value: Any, field: FieldDescriptor, where: str, source: str) -> None:
    kind = field.type
    hint = " (quote it in YAML)" if isinstance(value, bool) else ""
    if kind in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        if not isinstance(value, str):
            raise ConfigFileError(f"expected a string at {where}, got {_kind(value)}{hint}", path=source)
    elif kind == FieldDescriptor.TYPE_BOOL:
        if not isinstance(value, bool):
            raise ConfigFileError(f"expected true or false at {where}, got {_kind(value)}", path=source)
    elif kind == FieldDescriptor.TYPE_ENUM:
        names = [v.name for v in field.enum_type.values]
        numbers = {v.number for v in field.enum_type.values}
        if not ((isinstance(value, str) and value in names)
                or (isinstance(value, int) and not isinstance(value, bool) and value in numbers)):
            raise ConfigFileError(f"expected one of {', '.join(names)} at {where}, got {_kind(value)}",
                                  path=source)
    elif kind in _INT_RANGES:
        what, low, high = _INT_RANGES[kind]
        number = value
        # Protobuf's JSON mapping writes 64-bit integers as strings; accept both forms.
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            number = int(value)
        if not isinstance(number, int) or isinstance(number, bool) or not low <= number <= high:
            raise ConfigFileError(f"expected {what} at {where}, got {_kind(value)}", path=source)
    elif kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE) and (
            isinstance(value, bool) or not isinstance(value, (int, float, str))):
        raise ConfigFileError(f"expected a number at {where}, got {_kind(value)}", path=source)
