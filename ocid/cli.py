"""``ocid``: the daemon's command line (flags, ``ocid config``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import click
from click.core import ParameterSource

from ocid import __version__
from ocid.clitools import CONTEXT_SETTINGS, run_cli
from ocid.config import DEFAULT_CONFIG_PATH, Config, config_flags, load_config, render_toml


def _param_name(section: str, name: str) -> str:
    return f"cfg__{section}__{name}"


def config_flag_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add one click option per config field that declares a flag (help from the schema)."""
    for spec in reversed(list(config_flags())):
        kwargs: dict[str, Any] = {"help": spec.help, "default": None}
        if spec.type is bool:
            kwargs.update(is_flag=True)
        elif spec.type is int:
            kwargs.update(type=int)
        else:
            kwargs.update(type=click.Path() if spec.is_path else str,
                          metavar="PATH" if spec.is_path else "NAME")
        command = click.option(spec.flag, _param_name(spec.section, spec.name), **kwargs)(command)
    return command


def effective_config(ctx: click.Context) -> Config:
    """Defaults, then the config file, then the flags given on the command line."""
    params = ctx.find_root().params
    overrides = {}
    for spec in config_flags():
        key = _param_name(spec.section, spec.name)
        if ctx.find_root().get_parameter_source(key) not in (None, ParameterSource.DEFAULT):
            overrides[(spec.section, spec.name)] = params[key]
    config_given = ctx.find_root().get_parameter_source("config_path") != ParameterSource.DEFAULT
    return load_config(params["config_path"], required=config_given, overrides=overrides)


@click.group(invoke_without_command=True, context_settings=CONTEXT_SETTINGS)
@click.option("--config", "config_path", default=DEFAULT_CONFIG_PATH, show_default=True,
              type=click.Path(dir_okay=False), envvar="OCID_CONFIG",
              help="TOML configuration file; a missing default file means built-in defaults.")
@click.option("--debug", is_flag=True, help="Log at debug level: every request and its result.")
@click.option("--log", "log_path", type=click.Path(dir_okay=False),
              help="Write the log to this file instead of stderr.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="Format of log lines.")
@config_flag_options
@click.version_option(__version__, "--version", "-v", prog_name="ocid",
                      message="%(prog)s version %(version)s")
@click.pass_context
def cli(ctx: click.Context, config_path: str, debug: bool, log_path: str | None,
        log_format: str, **_flags: Any) -> None:
    """The OCI-based Kubernetes Container Runtime Interface daemon.

    With no command, ocid serves the CRI v1 gRPC API on its unix socket until SIGTERM or
    SIGINT. Flags override the configuration file, which overrides the built-in defaults.
    """
    if ctx.invoked_subcommand is not None:
        return
    from ocid.daemon import Daemon
    from ocid.log import setup_logging

    config = effective_config(ctx)
    setup_logging(debug=debug, log_format=log_format, path=log_path)
    logging.getLogger("ocid").debug("configuration: %s", config)
    Daemon(config).run()


@cli.command("config", context_settings=CONTEXT_SETTINGS)
@click.option("--default", "show_default", is_flag=True,
              help="Print the built-in defaults instead of the effective configuration.")
@click.pass_context
def config_command(ctx: click.Context, show_default: bool) -> None:
    """Print the configuration as commented TOML, ready for --config."""
    config = Config().finalize() if show_default else effective_config(ctx)
    click.echo(render_toml(config), nl=False)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ocid`` console script."""
    return run_cli(cli, argv, "ocid")


if __name__ == "__main__":
    raise SystemExit(main())
