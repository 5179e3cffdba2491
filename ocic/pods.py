"""``ocic pod``: run, stop, remove, inspect and list pod sandboxes; forward ports to them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from .cli import Settings, cli, pass_settings
from .client import CriClient
from .complete import complete_pod_ids
from .render import (
    emit,
    emit_status,
    message_to_dict,
    pod_text,
    pods_table,
    text_output_option,
)

POD_STATES = {"ready": "SANDBOX_READY", "notready": "SANDBOX_NOTREADY"}
# The kubelet's default --runtime-request-timeout: what starting or stopping things may take.
RUNTIME_REQUEST_TIMEOUT = 120.0


def slow_client(settings: Settings, seconds: float = RUNTIME_REQUEST_TIMEOUT) -> CriClient:
    """A client for calls that run processes (network setup, conmon, runc): at least ``seconds``."""
    return CriClient(settings.connect, max(settings.timeout, seconds))


def _key_values(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not key=value", ctx=ctx, param=param)
        pairs[key] = value
    return pairs


transport_option = click.option(
    "--transport", type=click.Choice(["spdy", "websocket"]), default="spdy", show_default=True,
    help="Streaming protocol: SPDY/3.1 (as crictl and the kubelet use) or WebSocket (v5 "
         "channels; port-forward tunnels SPDY through it).")

pod_id_option = click.option("--id", "pod_id", required=True, metavar="POD",
                             shell_complete=complete_pod_ids,
                             help="ID (or unique prefix) of the pod.")


def label_option(help_text: str) -> Callable[[Any], Any]:
    """A repeatable ``--label key=value`` option that arrives as a dict."""
    return click.option("--label", "labels", multiple=True, metavar="KEY=VALUE",
                        callback=_key_values, help=help_text)


config_file = click.Path(exists=True, dir_okay=False)


@cli.group()
def pod() -> None:
    """Run, stop, remove, inspect and list pod sandboxes; forward ports to them."""


@pod.command("create")
@click.option("--config", "config_path", required=True, type=config_file, metavar="FILE",
              help="A PodSandboxConfig as JSON or YAML (see testdata/).")
@click.option("--name", help="The pod's name, instead of metadata.name in the file.")
@label_option("Add a key=value label to the pod (repeatable).")
@click.option("--runtime-handler", default="", metavar="HANDLER",
              help="The runtime handler to run the pod with; default: the daemon's default.")
@pass_settings
def create(settings: Settings, config_path: str, name: str | None, labels: dict[str, str],
           runtime_handler: str) -> None:
    """Create and start a pod sandbox from a config file; print its ID."""
    from cri_api.v1 import api_pb2

    from .configfile import load_pod_config

    config = load_pod_config(config_path)
    if name:
        config.metadata.name = name
    config.labels.update(labels)
    request = api_pb2.RunPodSandboxRequest(config=config, runtime_handler=runtime_handler)
    response = slow_client(settings).runtime("RunPodSandbox", request)
    click.echo(response.pod_sandbox_id)


@pod.command("stop")
@pod_id_option
@pass_settings
def stop(settings: Settings, pod_id: str) -> None:
    """Stop a pod's containers and release its network; print its ID."""
    from cri_api.v1 import api_pb2

    slow_client(settings).runtime("StopPodSandbox", api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    click.echo(pod_id)


@pod.command("remove")
@pod_id_option
@pass_settings
def remove(settings: Settings, pod_id: str) -> None:
    """Remove a pod and its containers; print its ID."""
    from cri_api.v1 import api_pb2

    slow_client(settings).runtime("RemovePodSandbox",
                                  api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    click.echo(pod_id)


@pod.command("status")
@pod_id_option
@text_output_option
@pass_settings
def status(settings: Settings, pod_id: str, output: str) -> None:
    """Show one pod's state, IP address, labels and annotations."""
    from cri_api.v1 import api_pb2

    response = settings.client().runtime("PodSandboxStatus",
                                         api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id))
    emit_status(response, output, pods_table, pod_text)


@pod.command("list")
@click.option("--id", "pod_id", metavar="POD", shell_complete=complete_pod_ids,
              help="Only the pod with this ID (or ID prefix).")
@click.option("--state", type=click.Choice(sorted(POD_STATES)), help="Only pods in this state.")
@label_option("Only pods with this key=value label (repeatable; all must match).")
@click.option("--quiet", "-q", is_flag=True, help="Print only pod IDs.")
@text_output_option
@pass_settings
def list_pods(settings: Settings, pod_id: str | None, state: str | None, labels: dict[str, str],
              quiet: bool, output: str) -> None:
    """List pod sandboxes."""
    from cri_api.v1 import api_pb2

    request = api_pb2.ListPodSandboxRequest()
    request.filter.SetInParent()
    if pod_id:
        request.filter.id = pod_id
    if state:
        request.filter.state.state = api_pb2.PodSandboxState.Value(POD_STATES[state])
    request.filter.label_selector.update(labels)
    response = settings.client().runtime("ListPodSandbox", request)
    if quiet:
        for item in response.items:
            click.echo(item.id)
    elif output in ("json", "yaml"):
        emit(message_to_dict(response), output)
    elif output == "table":
        click.echo(pods_table(list(response.items)))
    elif response.items:
        click.echo("\n\n".join(pod_text(item) for item in response.items))


def _port_pairs(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
                ) -> list[tuple[int, int]]:
    """``[LOCAL:]REMOTE`` as kubectl reads it: LOCAL defaults to REMOTE; empty or 0 picks one."""
    pairs = []
    for item in values:
        local, sep, remote = item.rpartition(":")
        try:
            remote_port = int(remote)
            local_port = int(local) if local else (0 if sep else remote_port)
        except ValueError:
            raise click.BadParameter(f"{item!r} is not [LOCAL:]REMOTE",
                                     ctx=ctx, param=param) from None
        if not 0 < remote_port < 65536 or not 0 <= local_port < 65536:
            raise click.BadParameter(f"{item!r}: ports go from 1 to 65535", ctx=ctx, param=param)
        pairs.append((local_port, remote_port))
    return pairs


@pod.command("port-forward")
@pod_id_option
@click.option("--address", default="127.0.0.1", show_default=True, metavar="ADDRESS",
              help="Local address to listen on.")
@transport_option
@click.argument("ports", nargs=-1, required=True, metavar="[LOCAL:]REMOTE...", callback=_port_pairs)
@pass_settings
def port_forward(settings: Settings, pod_id: str, address: str, transport: str,
                 ports: list[tuple[int, int]]) -> None:
    """Forward local ports to a pod's ports (LOCAL defaults to REMOTE) until SIGINT or SIGTERM."""
    import signal
    import threading

    from cri_api.v1 import api_pb2

    from .streaming import port_forward as forward

    remote_ports = list(dict.fromkeys(remote for _, remote in ports))
    request = api_pb2.PortForwardRequest(pod_sandbox_id=pod_id, port=remote_ports)
    url = settings.client().runtime("PortForward", request).url
    stop = threading.Event()
    previous = {number: signal.signal(number, lambda *_: stop.set())
                for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        forward(url, [(address, local, remote) for local, remote in ports], transport, stop=stop,
                out=click.echo, err=lambda line: click.echo(line, err=True))
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
