"""Output helpers shared by ocic commands: JSON/YAML of protobuf messages and plain dicts,
and the text blocks and tables of pods and containers."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import tzinfo
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


TEXT_OUTPUT_FORMATS = ("text", "json", "yaml", "table")

text_output_option = click.option("--output", "-o", type=click.Choice(TEXT_OUTPUT_FORMATS),
                                  default="text", show_default=True, help="Output format.")

# crictl's words for the CRI states in tables; text blocks print the enum names, as ocic did.
_TABLE_STATES = {"SANDBOX_READY": "Ready", "SANDBOX_NOTREADY": "NotReady",
                 "CONTAINER_CREATED": "Created", "CONTAINER_RUNNING": "Running",
                 "CONTAINER_EXITED": "Exited", "CONTAINER_UNKNOWN": "Unknown"}
_SHORT_ID = 13


def format_time(time_ns: int, tz: tzinfo | None = None) -> str:
    """CRI nanoseconds since the epoch as Go prints a time: ``2026-11-29 04:55:11.6157 +0000 UTC``.

    Local time unless ``tz`` is given; trailing zeros of the fraction are dropped, as in Go.
    """
    from datetime import UTC, datetime

    seconds, nanos = divmod(time_ns, 1_000_000_000)
    when = datetime.fromtimestamp(seconds, tz=UTC).astimezone(tz)
    fraction = f".{nanos:09d}".rstrip("0").rstrip(".")
    return f"{when:%Y-%m-%d %H:%M:%S}{fraction} {when:%z} {when.tzname()}"


def _state_name(message: Any) -> str:
    return message.DESCRIPTOR.fields_by_name["state"].enum_type.values_by_number[message.state].name


def _map_lines(title: str, values: Any) -> list[str]:
    if not values:
        return []
    return [f"{title}:"] + [f"\t{key} -> {values[key]}" for key in sorted(values)]


def pod_text(pod: Any, tz: tzinfo | None = None) -> str:
    """The ``Key: value`` block of a PodSandbox (list) or PodSandboxStatus (status)."""
    lines = [f"ID: {pod.id}"]
    if pod.HasField("metadata"):
        meta = pod.metadata
        lines += [f"Name: {meta.name}", f"UID: {meta.uid}", f"Namespace: {meta.namespace}",
                  f"Attempt: {meta.attempt}"]
    lines.append(f"Status: {_state_name(pod)}")
    lines.append(f"Created: {format_time(pod.created_at, tz)}")
    if "linux" in pod.DESCRIPTOR.fields_by_name and pod.HasField("linux"):
        options = pod.linux.namespaces.options
        mode = options.DESCRIPTOR.fields_by_name["network"].enum_type.values_by_number[options.network]
        lines.append(f"Network namespace: {mode.name}")
    if "network" in pod.DESCRIPTOR.fields_by_name and pod.network.ip:
        lines.append(f"IP Address: {pod.network.ip}")
        for extra in pod.network.additional_ips:
            lines.append(f"Additional IP: {extra.ip}")
    if pod.runtime_handler:
        lines.append(f"Runtime handler: {pod.runtime_handler}")
    lines += _map_lines("Labels", pod.labels)
    lines += _map_lines("Annotations", pod.annotations)
    return "\n".join(lines)


def container_text(ctr: Any, tz: tzinfo | None = None) -> str:
    """The ``Key: value`` block of a Container (list) or ContainerStatus (status)."""
    fields = ctr.DESCRIPTOR.fields_by_name
    lines = [f"ID: {ctr.id}"]
    if "pod_sandbox_id" in fields:
        lines.append(f"Pod: {ctr.pod_sandbox_id}")
    if ctr.HasField("metadata"):
        lines += [f"Name: {ctr.metadata.name}", f"Attempt: {ctr.metadata.attempt}"]
    lines.append(f"Status: {_state_name(ctr)}")
    lines.append(f"Created: {format_time(ctr.created_at, tz)}")
    if "started_at" in fields:
        # Zero means "not yet": a created container has not started, a running one not finished.
        if ctr.started_at:
            lines.append(f"Started: {format_time(ctr.started_at, tz)}")
        if ctr.finished_at:
            lines.append(f"Finished: {format_time(ctr.finished_at, tz)}")
        if ctr.finished_at or _state_name(ctr) == "CONTAINER_EXITED":
            lines.append(f"Exit Code: {ctr.exit_code}")
        if ctr.reason:
            lines.append(f"Reason: {ctr.reason}")
        if ctr.message:
            lines.append(f"Message: {ctr.message}")
    if ctr.image.image:
        lines.append(f"Image: {ctr.image.image}")
    if ctr.image_ref:
        lines.append(f"Image ref: {ctr.image_ref}")
    if "log_path" in fields and ctr.log_path:
        lines.append(f"Log path: {ctr.log_path}")
    lines += _map_lines("Labels", ctr.labels)
    lines += _map_lines("Annotations", ctr.annotations)
    return "\n".join(lines)


def _short(identifier: str) -> str:
    return identifier.removeprefix("sha256:")[:_SHORT_ID]


def _table(rows: list[list[Any]], headers: list[str]) -> str:
    from tabulate import tabulate

    return tabulate(rows, headers=headers, tablefmt="plain", disable_numparse=True)


def pods_table(pods: list[Any], now: float | None = None) -> str:
    """crictl's pod table: POD ID, CREATED, STATE, NAME, NAMESPACE, ATTEMPT."""
    from ocid.clitools import human_ago

    rows = [[_short(pod.id), human_ago(pod.created_at / 1e9, now), _TABLE_STATES[_state_name(pod)],
             pod.metadata.name, pod.metadata.namespace, pod.metadata.attempt] for pod in pods]
    return _table(rows, ["POD ID", "CREATED", "STATE", "NAME", "NAMESPACE", "ATTEMPT"])


def containers_table(ctrs: list[Any], now: float | None = None) -> str:
    """crictl's container table: CONTAINER, IMAGE, CREATED, STATE, NAME, ATTEMPT, POD ID."""
    from ocid.clitools import human_ago

    rows = []
    for ctr in ctrs:
        image = ctr.image.image
        if image.startswith("sha256:"):
            image = _short(image)
        rows.append([_short(ctr.id), image, human_ago(ctr.created_at / 1e9, now),
                     _TABLE_STATES[_state_name(ctr)], ctr.metadata.name, ctr.metadata.attempt,
                     _short(getattr(ctr, "pod_sandbox_id", ""))])
    return _table(rows, ["CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "ATTEMPT", "POD ID"])


def status_payload(response: Any) -> dict[str, Any]:
    """A *StatusResponse for JSON/YAML: ``status``, and ``info`` with JSON values decoded."""
    payload: dict[str, Any] = {"status": message_to_dict(response.status)}
    if response.info:
        info: dict[str, Any] = {}
        for key, value in sorted(response.info.items()):
            try:
                info[key] = json.loads(value)
            except ValueError:
                info[key] = value
        payload["info"] = info
    return payload


def emit_status(response: Any, output: str, table: Callable[[list[Any]], str],
                text: Callable[[Any], str]) -> None:
    """Print a PodSandboxStatus or ContainerStatus response in the chosen output format."""
    if output in ("json", "yaml"):
        emit(status_payload(response), output)
    elif output == "table":
        click.echo(table([response.status]))
    else:
        click.echo(text(response.status))
