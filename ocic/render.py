"""Output helpers shared by ocic commands: JSON/YAML of protobuf messages and plain dicts."""

from __future__ import annotations

import json
from typing import Any

import click

OUTPUT_FORMATS = ("json", "yaml")


def message_to_dict(message: Any) -> dict[str, Any]:
    """A protobuf message as a dict with the CRI's camelCase JSON names."""
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(message, always_print_fields_with_no_presence=True)


def emit(data: Any, output: str) -> None:
    """Print ``data`` as JSON (indented) or YAML."""
    if output == "yaml":
        import yaml

        click.echo(yaml.safe_dump(data, sort_keys=False), nl=False)
    else:
        click.echo(json.dumps(data, indent=2))
