"""``kpod``: image and pod management on ocid's storage, with no daemon."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import click

from ocid import __version__
from ocid.clitools import CONTEXT_SETTINGS, run_cli
from ocid.config import DEFAULT_CONFIG_PATH, Config, load_config

if TYPE_CHECKING:
    from ocid.image.service import ImageService

FORMATS = ("yaml", "json")


@dataclass
class KpodContext:
    """The storage kpod works on: ocid's configuration with kpod's overrides."""

    config: Config
    config_file: str | None
    _images: "ImageService | None" = None

    @property
    def images(self) -> "ImageService":
        """The image core on ocid's storage (opened on first use)."""
        if self._images is None:
            from ocid.image.service import ImageService

            self._images = ImageService(self.config)
        return self._images


pass_kpod = click.make_pass_decorator(KpodContext)


def complete_image_names(ctx: click.Context, param: click.Parameter,
                         incomplete: str) -> list[str]:
    """Local image names (and short IDs) for shell completion; nothing on any trouble.

    Completion runs before the group callback, so the storage comes from the root
    context's parsed options. A storage that does not exist yet is not created.
    """
    params = ctx.find_root().params
    overrides = {("ocid", "root"): params.get("root"), ("ocid", "runroot"): params.get("runroot")}
    try:
        config = load_config(params.get("config_path") or DEFAULT_CONFIG_PATH, required=False,
                             overrides={k: v for k, v in overrides.items() if v})
        if not os.path.isdir(config.storage_root):
            return []
        from ocid.image.service import ImageService

        images = ImageService(config)
        try:
            records = images.list()
        finally:
            images.close()
    except Exception:  # noqa: BLE001 - completion must never fail the shell
        return []
    candidates = [name for r in records for name in r.names]
    candidates += [r.id.removeprefix("sha256:")[:12] for r in records]
    return [c for c in candidates if c.startswith(incomplete)]


@click.group(context_settings=CONTEXT_SETTINGS)
@click.option("--config", "config_path", default=DEFAULT_CONFIG_PATH, show_default=True,
              type=click.Path(dir_okay=False), envvar="OCID_CONFIG",
              help="ocid configuration whose storage kpod uses; a missing default file means defaults.")
@click.option("--root", type=click.Path(), help="Persistent storage root (default: ocid's).")
@click.option("--runroot", type=click.Path(), help="Volatile state root (default: ocid's).")
@click.version_option(__version__, prog_name="kpod", message="%(prog)s version %(version)s")
@click.pass_context
def cli(ctx: click.Context, config_path: str, root: str | None, runroot: str | None) -> None:
    """Manage images and pods on ocid's storage, with no daemon running."""
    overrides = {("ocid", "root"): root, ("ocid", "runroot"): runroot}
    given = ctx.get_parameter_source("config_path") != click.core.ParameterSource.DEFAULT
    config = load_config(config_path, required=given,
                         overrides={k: v for k, v in overrides.items() if v})
    used = config_path if os.path.exists(config_path) else None
    ctx.obj = KpodContext(config, used)


def _emit(data: dict, output_format: str) -> None:
    if output_format == "json":
        click.echo(json.dumps(data, indent=2))
    else:
        import yaml

        click.echo(yaml.safe_dump(data, sort_keys=False), nl=False)


format_option = click.option("--format", "-f", "output_format", type=click.Choice(FORMATS),
                             default="yaml", show_default=True, help="Output format.")


@cli.command()
@format_option
def version(output_format: str) -> None:
    """Print kpod's version and the platform it runs on."""
    from ocid.image.manifest import Platform

    _emit({
        "Version": __version__,
        "Python Version": platform.python_version(),
        "OS/Arch": str(Platform.host()),
    }, output_format)


@cli.command()
@format_option
@pass_kpod
def info(kpod: KpodContext, output_format: str) -> None:
    """Print where kpod's storage is, which runtime and conmon are found, which config is used."""
    from ocid.probe import probe_executable

    cfg = kpod.config
    runtime = probe_executable(cfg.runtime.runtime)
    conmon = probe_executable(cfg.runtime.conmon)
    _emit({
        "host": {
            "os": platform.system().lower(),
            "arch": platform.machine(),
            "kernel": platform.release(),
            "cgroupVersion": "v2" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "v1",
        },
        "store": {
            "configFile": kpod.config_file or "none (built-in defaults)",
            "root": cfg.ocid.root,
            "runRoot": cfg.ocid.runroot,
            "sandboxDir": cfg.ocid.sandbox_dir,
            "containerDir": cfg.ocid.container_dir,
        },
        "runtime": {"path": runtime.path, "found": runtime.found, "version": runtime.version},
        "conmon": {"path": conmon.path, "found": conmon.found, "version": conmon.version},
        "registries": {
            "registriesConf": cfg.image.registries_conf,
            "policy": cfg.image.signature_policy,
            "authFile": cfg.image.auth_file,
        },
    }, output_format)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kpod`` console script."""
    return run_cli(cli, argv, "kpod")


# The image commands register themselves on the group (kept in their own module for size).
from . import images  # noqa: E402, F401

if __name__ == "__main__":
    raise SystemExit(main())
