"""``ocic``: the CRI client's command line."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import click

from ocid.clitools import CONTEXT_SETTINGS, run_cli

from .client import DEFAULT_ENDPOINT, CriClient
from .render import OUTPUT_FORMATS, emit, message_to_dict

output_option = click.option("--output", "-o", type=click.Choice(OUTPUT_FORMATS), default="json",
                             show_default=True, help="Output format.")


@dataclass
class Settings:
    """Global options, handed to every command."""

    connect: str
    timeout: float

    def client(self) -> CriClient:
        return CriClient(self.connect, self.timeout)


pass_settings = click.make_pass_decorator(Settings)


@click.group(context_settings=CONTEXT_SETTINGS)
@click.option("--connect", default=DEFAULT_ENDPOINT, show_default=True,
              envvar="CONTAINER_RUNTIME_ENDPOINT", metavar="SOCKET",
              help="CRI endpoint: a socket path or unix:// URL "
                   "(also read from CONTAINER_RUNTIME_ENDPOINT).")
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds to wait for each answer.")
@click.version_option(package_name="ocid", prog_name="ocic", message="%(prog)s version %(version)s")
@click.pass_context
def cli(ctx: click.Context, connect: str, timeout: float) -> None:
    """A client for ocid, or any CRI v1 runtime on a unix socket."""
    ctx.obj = Settings(connect, timeout)


@cli.command("runtimeversion")
@pass_settings
def runtimeversion(settings: Settings) -> None:
    """Print the runtime's name and versions."""
    from cri_api.v1 import api_pb2

    r = settings.client().runtime("Version", api_pb2.VersionRequest())
    click.echo(f"VersionResponse: Version: {r.version}, RuntimeName: {r.runtime_name}, "
               f"RuntimeVersion: {r.runtime_version}, RuntimeApiVersion: {r.runtime_api_version}")


@cli.command("info")
@output_option
@pass_settings
def info(settings: Settings, output: str) -> None:
    """Print the runtime's status conditions and its verbose information (as crictl info)."""
    from cri_api.v1 import api_pb2

    response = settings.client().runtime("Status", api_pb2.StatusRequest(verbose=True))
    data = {"status": message_to_dict(response.status)}
    for key, value in sorted(response.info.items()):
        try:
            data[key] = json.loads(value)
        except ValueError:
            data[key] = value
    emit(data, output)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ocic`` console script."""
    return run_cli(cli, argv, "ocic")


# Command groups register themselves on the group (one module per group).
from . import containers, images, pods  # noqa: E402, F401

if __name__ == "__main__":
    raise SystemExit(main())
