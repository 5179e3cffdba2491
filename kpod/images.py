"""kpod's image commands: pull, push, images, rmi, tag, inspect, history, save, load, import,
login, logout. They work on ocid's storage directly, with no daemon."""

from __future__ import annotations

import datetime
import fnmatch
import json
import os
import sys
import tarfile
import threading
from typing import Any

import click

from ocid.clitools import human_ago, human_size

from .cli import KpodContext, cli, complete_image_names, pass_kpod

# As podman: `--tls-verify`, `--tls-verify=false`; unset means "as registries.conf says".
tls_verify_option = click.option(
    "--tls-verify", "tls_verify", type=click.BOOL, default=None, is_flag=False, flag_value=True,
    metavar="[=BOOL]",
    help="Require HTTPS with verified certificates (default: as registries.conf says).")
creds_option = click.option("--creds", metavar="USER[:PASSWORD]",
                            help="Credentials for the registry (otherwise from the auth file).")
authfile_option = click.option("--authfile", type=click.Path(dir_okay=False),
                               help="auth.json to read credentials from (default: ocid's).")


def _credentials(creds: str | None):
    if not creds:
        return None
    from ocid.image.auth import Credentials

    username, sep, password = creds.partition(":")
    if not sep:
        password = click.prompt(f"Password for {username}", hide_input=True, err=True)
    return Credentials(username, password)


def _with_authfile(kpod: KpodContext, authfile: str | None) -> None:
    if authfile:
        kpod.config.image.auth_file = os.path.abspath(authfile)


def _short_id(image_id: str, no_trunc: bool = False) -> str:
    return image_id if no_trunc else image_id.removeprefix("sha256:")[:12]


def _created_ts(created: str) -> float | None:
    if not created:
        return None
    try:
        return datetime.datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _run_with_progress(kpod: KpodContext, quiet: bool, work):
    """Run ``work()`` while drawing the store's pulls in flight on a TTY."""
    from ocid.clitools import follow_pull_progress

    if quiet or not sys.stderr.isatty():
        return work()
    images = kpod.images  # open it here: the worker and the drawing must share one service
    done = threading.Event()
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = work()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            result["error"] = exc
        finally:
            done.set()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    follow_pull_progress(images.pull_progress, done)
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


# ---- pull / push --------------------------------------------------------------------------

FILE_TRANSPORTS = ("oci:", "oci-archive:", "docker-archive:")


@cli.command()
@click.argument("image")
@click.option("--quiet", "-q", is_flag=True, help="Print only the image ID.")
@click.option("--platform", help="OS/ARCH[/VARIANT] to pull from a multi-platform image.")
@tls_verify_option
@creds_option
@authfile_option
@pass_kpod
def pull(kpod: KpodContext, image: str, quiet: bool, platform: str | None, tls_verify: bool | None,
         creds: str | None, authfile: str | None) -> None:
    """Pull an image from a registry (or an oci:, oci-archive:, docker-archive: source)."""
    from ocid.image.manifest import Platform

    _with_authfile(kpod, authfile)
    wanted = Platform.parse(platform) if platform else None
    if image.startswith(FILE_TRANSPORTS):
        from ocid.image.transfer import load
        from ocid.image.transports import parse_transport_ref

        record = _run_with_progress(kpod, quiet, lambda: load(
            kpod.images, parse_transport_ref(image), platform=wanted))
    else:
        credentials = _credentials(creds)
        record = _run_with_progress(kpod, quiet, lambda: kpod.images.pull(
            image, credentials=credentials, platform=wanted, tls_verify=tls_verify))
    if not quiet:
        click.echo(f"Pulled {', '.join(record.names) or image}", err=True)
    click.echo(record.id.removeprefix("sha256:"))


@cli.command()
@click.argument("image", shell_complete=complete_image_names)
@click.argument("destination", required=False)
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@tls_verify_option
@creds_option
@authfile_option
@pass_kpod
def push(kpod: KpodContext, image: str, destination: str | None, quiet: bool,
         tls_verify: bool | None, creds: str | None, authfile: str | None) -> None:
    """Push an image to a registry, or to an oci:, oci-archive: or docker-archive: destination."""
    from ocid.image import transfer
    from ocid.image.transports import parse_transport_ref

    _with_authfile(kpod, authfile)
    target = destination or image
    if target.startswith(FILE_TRANSPORTS):
        transfer.save(kpod.images, image, parse_transport_ref(target))
        return

    def report(digest: str, size: int, sent: int) -> None:
        if not quiet:
            click.echo(f"{'Copying' if sent else 'Skipping existing'} blob {digest[7:19]} "
                       f"({human_size(size)})", err=True)

    digest = transfer.push(kpod.images, image, target, credentials=_credentials(creds),
                           tls_verify=tls_verify, progress=report)
    if not quiet:
        click.echo(f"Pushed {target}: {digest}", err=True)


# ---- listing and inspecting -----------------------------------------------------------------

def _matches(record, filters: list[str]) -> bool:
    for item in filters:
        key, _, value = item.partition("=")
        if key == "reference":
            if not any(fnmatch.fnmatch(n, value) or fnmatch.fnmatch(n.split("/", 1)[-1], value)
                       or fnmatch.fnmatch(n.rsplit("/", 1)[-1], value) for n in record.names):
                return False
        elif key == "dangling":
            if (not record.names) != (value.lower() in ("true", "1")):
                return False
        elif key == "label":
            labels = (record.config.get("config") or {}).get("Labels") or {}
            name, has_value, label_value = value.partition("=")
            if name not in labels or (has_value and labels[name] != label_value):
                return False
        else:
            raise click.BadParameter(f"unknown filter {key!r} (reference, dangling, label)",
                                     param_hint="--filter")
    return True


def _rows(record) -> list[tuple[str, str]]:
    """(repository, tag) pairs of an image; one <none> row for an untagged one."""
    rows = []
    for name in record.names:
        repo, _, tag = name.rpartition(":")
        rows.append((repo, tag))
    return rows or [("<none>", "<none>")]


@cli.command()
@click.option("--quiet", "-q", is_flag=True, help="Print only image IDs.")
@click.option("--digests", is_flag=True, help="Show the manifest digests.")
@click.option("--no-trunc", is_flag=True, help="Do not truncate IDs.")
@click.option("--format", "output_format", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="Output format.")
@click.option("--filter", "-f", "filters", multiple=True, metavar="KEY=VALUE",
              help="reference=PATTERN, dangling=true|false, label=KEY[=VALUE].")
@pass_kpod
def images(kpod: KpodContext, quiet: bool, digests: bool, no_trunc: bool, output_format: str,
           filters: tuple[str, ...]) -> None:
    """List images in local storage."""
    records = sorted((r for r in kpod.images.list() if _matches(r, list(filters))),
                     key=lambda r: r.added, reverse=True)
    if quiet:
        for record in records:
            click.echo(_short_id(record.id, no_trunc))
        return
    if output_format == "json":
        click.echo(json.dumps([{
            "Id": record.id.removeprefix("sha256:"), "Names": record.names,
            "Digest": record.manifest_digest, "Digests": record.digests,
            "Created": record.created, "Size": record.size} for record in records], indent=2))
        return
    from tabulate import tabulate

    headers = ["REPOSITORY", "TAG", *(["DIGEST"] if digests else []), "IMAGE ID", "CREATED", "SIZE"]
    table = []
    for record in records:
        created = _created_ts(record.created)
        for repo, tag in _rows(record):
            table.append([repo, tag, *([record.manifest_digest] if digests else []),
                          _short_id(record.id, no_trunc),
                          human_ago(created) if created else "", human_size(record.size)])
    click.echo(tabulate(table, headers=headers, tablefmt="plain", disable_numparse=True))


def inspect_data(record) -> dict:
    """An image as ``kpod inspect`` shows it (podman's field names)."""
    config = record.config
    return {
        "Id": record.id.removeprefix("sha256:"),
        "Digest": record.manifest_digest,
        "RepoTags": record.names,
        "RepoDigests": record.digests,
        "Created": record.created,
        "Config": config.get("config") or {},
        "Architecture": config.get("architecture", ""),
        "Os": config.get("os", ""),
        "Size": record.size,
        "RootFS": {"Type": "layers", "Layers": [layer.diff_id for layer in record.layers]},
        "History": config.get("history", []),
        "ManifestType": record.manifest_media_type,
    }


@cli.command()
@click.argument("names", nargs=-1, required=True, shell_complete=complete_image_names)
@pass_kpod
def inspect(kpod: KpodContext, names: tuple[str, ...]) -> None:
    """Show images' details as JSON."""
    click.echo(json.dumps([inspect_data(kpod.images.get(n)) for n in names], indent=4))


@cli.command()
@click.argument("image", shell_complete=complete_image_names)
@click.option("--no-trunc", is_flag=True, help="Do not truncate the CREATED BY column.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the layer IDs.")
@click.option("--format", "output_format", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="Output format.")
@pass_kpod
def history(kpod: KpodContext, image: str, no_trunc: bool, quiet: bool, output_format: str) -> None:
    """Show the history of an image's layers, newest first."""
    record = kpod.images.get(image)
    layers = iter(reversed(record.layers))
    rows = []
    for entry in reversed(record.config.get("history", [])):
        layer = None if entry.get("empty_layer") else next(layers, None)
        rows.append({
            "id": layer.digest.removeprefix("sha256:")[:12] if layer else "<missing>",
            "created": entry.get("created", ""),
            "createdBy": entry.get("created_by", ""),
            "size": layer.unpacked_size if layer else 0,
            "comment": entry.get("comment", ""),
        })
    if quiet:
        click.echo("\n".join(row["id"] for row in rows))
    elif output_format == "json":
        click.echo(json.dumps(rows, indent=2))
    else:
        from tabulate import tabulate

        table = []
        for row in rows:
            created = _created_ts(row["created"])
            by = row["createdBy"] if no_trunc or len(row["createdBy"]) <= 45 else row["createdBy"][:42] + "..."
            table.append([row["id"], human_ago(created) if created else "", by,
                          human_size(row["size"]), row["comment"]])
        click.echo(tabulate(table, headers=["ID", "CREATED", "CREATED BY", "SIZE", "COMMENT"],
                            tablefmt="plain", disable_numparse=True))


# ---- removing and naming --------------------------------------------------------------------

@cli.command()
@click.argument("images_to_remove", metavar="IMAGE...", nargs=-1, required=True,
                shell_complete=complete_image_names)
@click.option("--force", "-f", is_flag=True,
              help="Remove an image given by ID even when it has several names.")
@pass_kpod
def rmi(kpod: KpodContext, images_to_remove: tuple[str, ...], force: bool) -> None:
    """Remove images (or one of their names) from local storage."""
    from ocid.errors import NotFound, OcidError

    failures = 0
    for text in images_to_remove:
        try:
            removal = kpod.images.remove(text, force=force)
            if removal is None:
                raise NotFound(f"image {text!r} not found")
            for name in removal.untagged:
                click.echo(f"Untagged: {name}")
            if removal.deleted:
                click.echo(f"Deleted: {removal.deleted.removeprefix('sha256:')}")
        except OcidError as exc:
            failures += 1
            click.echo(f"kpod: {exc}", err=True)
    if failures:
        raise click.exceptions.Exit(1)


@cli.command()
@click.argument("image", shell_complete=complete_image_names)
@click.argument("names", nargs=-1, required=True)
@pass_kpod
def tag(kpod: KpodContext, image: str, names: tuple[str, ...]) -> None:
    """Add names to an image."""
    for name in names:
        kpod.images.tag(image, name)


# ---- archives ------------------------------------------------------------------------------

ARCHIVE_FORMATS = {"docker-archive": "docker-archive", "oci-archive": "oci-archive", "oci-dir": "oci"}


def detect_archive(path: str) -> str:
    """Whether a tarball is an oci-archive or a docker-archive (by its members)."""
    try:
        with tarfile.open(path) as archive:
            for member in archive:
                name = member.name.removeprefix("./")
                if name in ("oci-layout", "index.json"):
                    return "oci-archive"
                if name == "manifest.json":
                    return "docker-archive"
    except (OSError, tarfile.TarError) as exc:
        raise click.ClickException(f"{path} is not a readable image archive: {exc}") from exc
    raise click.ClickException(f"{path} is neither a docker-archive nor an oci-archive")


@cli.command()
@click.argument("image", shell_complete=complete_image_names)
@click.option("--output", "-o", type=click.Path(dir_okay=True), help="Write to this file (or directory for oci-dir).")
@click.option("--format", "archive_format", type=click.Choice(list(ARCHIVE_FORMATS)),
              default="docker-archive", show_default=True, help="Archive format.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing.")
@pass_kpod
def save(kpod: KpodContext, image: str, output: str | None, archive_format: str, quiet: bool) -> None:
    """Save an image to a docker-archive or oci-archive tarball (or an OCI layout directory)."""
    import shutil
    import tempfile

    from ocid.image import transfer
    from ocid.image.transports import TransportRef

    if not output and sys.stdout.isatty():
        raise click.UsageError("refusing to write an archive to a terminal: use --output or redirect")
    record = kpod.images.get(image)
    # The name stored in the archive: the one the user gave, else the image's first.
    name = kpod.images.matching_name(record, image) or (record.names[0] if record.names else None)
    if output:
        transfer.save(kpod.images, image,
                      TransportRef(ARCHIVE_FORMATS[archive_format], os.path.abspath(output), name))
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "image.tar")
        transfer.save(kpod.images, image, TransportRef(ARCHIVE_FORMATS[archive_format], path, name))
        with open(path, "rb") as f:
            shutil.copyfileobj(f, sys.stdout.buffer)


@cli.command()
@click.option("--input", "-i", "input_path", type=click.Path(dir_okay=False),
              help="Read from this tarball instead of standard input.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the image ID.")
@pass_kpod
def load(kpod: KpodContext, input_path: str | None, quiet: bool) -> None:
    """Load an image from a docker-archive or oci-archive tarball."""
    import shutil
    import tempfile

    from ocid.image import transfer
    from ocid.image.transports import TransportRef

    with tempfile.TemporaryDirectory() as tmp:
        if not input_path:
            if sys.stdin.isatty():
                raise click.UsageError("no input: use --input or pipe an archive in")
            input_path = os.path.join(tmp, "input.tar")
            with open(input_path, "wb") as f:
                shutil.copyfileobj(sys.stdin.buffer, f)
        transport = detect_archive(input_path)
        record = transfer.load(kpod.images, TransportRef(transport, os.path.abspath(input_path), None))
    if quiet:
        click.echo(record.id.removeprefix("sha256:"))
    else:
        click.echo(f"Loaded image: {', '.join(record.names) or record.id}")


@cli.command("import")
@click.argument("tarball")
@click.argument("name", required=False)
@click.option("--change", "-c", "changes", multiple=True, metavar="INSTRUCTION",
              help="Apply a Dockerfile instruction (CMD, ENTRYPOINT, ENV, WORKDIR, USER, LABEL, EXPOSE, STOPSIGNAL).")
@click.option("--message", "-m", default="", help="Commit message stored in the image history.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the image ID.")
@pass_kpod
def import_(kpod: KpodContext, tarball: str, name: str | None, changes: tuple[str, ...],
            message: str, quiet: bool) -> None:
    """Make an image from a root file system tarball ("-" for standard input)."""
    from ocid.image.transfer import import_rootfs

    record = import_rootfs(kpod.images, tarball, name, changes=list(changes), message=message)
    click.echo(record.id.removeprefix("sha256:"))


# ---- credentials ---------------------------------------------------------------------------

@cli.command()
@click.argument("registry")
@click.option("--username", "-u", help="User name (prompted for when missing).")
@click.option("--password", "-p", help="Password (prompted for when missing).")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@tls_verify_option
@authfile_option
@pass_kpod
def login(kpod: KpodContext, registry: str, username: str | None, password: str | None,
          password_stdin: bool, tls_verify: bool | None, authfile: str | None) -> None:
    """Log in to a registry: check the credentials, then store them in the auth file."""
    from ocid.image.auth import Credentials, store_credentials
    _with_authfile(kpod, authfile)
    registry = registry.removeprefix("docker://").removeprefix("https://").removeprefix("http://").rstrip("/")
    if username is None:
        username = click.prompt("Username", err=True)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif password is None:
        password = click.prompt("Password", hide_input=True, err=True)
    registries, _ = kpod.images.config_files()
    insecure = registries.is_insecure(registry.split("/")[0]) if tls_verify is None else not tls_verify
    with kpod.images.client_for(registry.split("/")[0], insecure=insecure,
                                credentials=Credentials(username, password)) as client:
        client.ping()
    store_credentials(kpod.config.image.auth_file, registry, Credentials(username, password))
    click.echo("Login Succeeded!")


@cli.command()
@click.argument("registry", required=False)
@click.option("--all", "-a", "all_registries", is_flag=True, help="Remove every stored credential.")
@authfile_option
@pass_kpod
def logout(kpod: KpodContext, registry: str | None, all_registries: bool, authfile: str | None) -> None:
    """Remove stored credentials for a registry."""
    from ocid.image.auth import remove_credentials

    _with_authfile(kpod, authfile)
    path = kpod.config.image.auth_file
    if all_registries:
        if os.path.exists(path):
            os.unlink(path)
        click.echo("Removed login credentials for all registries")
        return
    if not registry:
        raise click.UsageError("name a registry, or use --all")
    registry = registry.removeprefix("docker://").rstrip("/")
    if not remove_credentials(path, registry):
        raise click.ClickException(f"not logged into {registry}")
    click.echo(f"Removed login credentials for {registry}")
