"""``ocic image``: pull, list, status and remove through the CRI ImageService."""

from __future__ import annotations

import json
import threading
from typing import Any

import click

from .cli import Settings, cli, pass_settings
from .client import CriClient
from .render import emit, message_to_dict

output_option = click.option("--output", "-o", type=click.Choice(["text", "json", "yaml", "table"]),
                             default="text", show_default=True, help="Output format.")


@cli.group()
def image() -> None:
    """Pull, list, inspect and remove images through the CRI."""


def _auth(creds: str | None, auth: str | None) -> Any:
    from cri_api.v1 import api_pb2

    if creds:
        username, sep, password = creds.partition(":")
        if not sep:
            password = click.prompt(f"Password for {username}", hide_input=True, err=True)
        return api_pb2.AuthConfig(username=username, password=password)
    if auth:
        return api_pb2.AuthConfig(auth=auth)
    return None


@image.command("pull")
@click.argument("name")
@click.option("--creds", metavar="USER[:PASSWORD]", help="Registry credentials.")
@click.option("--auth", metavar="BASE64", help="base64 of USER:PASSWORD, as the kubelet sends.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the image ID; no progress bars.")
@pass_settings
def pull(settings: Settings, name: str, creds: str | None, auth: str | None, quiet: bool) -> None:
    """Pull an image; on a terminal, draw the daemon's live progress of it."""
    from cri_api.v1 import api_pb2

    from ocid.clitools import follow_pull_progress

    client = settings.client()
    request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=name))
    credentials = _auth(creds, auth)
    if credentials is not None:
        request.auth.CopyFrom(credentials)
    # Pulls can take long: the --timeout applies to each progress query, not to the pull.
    pull_client = CriClient(client.endpoint, timeout=max(client.timeout, 3600))
    result: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            result["response"] = pull_client.image("PullImage", request)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            result["error"] = exc
        finally:
            done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    if not quiet:
        def snapshot() -> list[dict]:
            response = client.runtime("Status", api_pb2.StatusRequest(verbose=True))
            return json.loads(response.info.get("pulls", "[]"))

        last = name.rsplit("/", 1)[-1]
        follow_pull_progress(snapshot, done, image_filter=lambda image: last in image)
    done.wait()
    thread.join()
    if "error" in result:
        raise result["error"]
    image_ref = result["response"].image_ref
    click.echo(image_ref if quiet else f"Image is up to date for {image_ref}")


def _image_block(img: dict) -> str:
    lines = [f"ID: {img.get('id', '')}"]
    for tag in img.get("repoTags", []):
        lines.append(f"Tag: {tag}")
    for digest in img.get("repoDigests", []):
        lines.append(f"Digest: {digest}")
    lines.append(f"Size: {img.get('size', '0')}")
    if img.get("uid"):
        lines.append(f"Uid: {img['uid'].get('value', 0)}")
    if img.get("username"):
        lines.append(f"Username: {img['username']}")
    return "\n".join(lines)


def _render_images(images: list[dict], output: str) -> None:
    if output in ("json", "yaml"):
        emit({"images": images}, output)
    elif output == "table":
        from tabulate import tabulate

        from ocid.clitools import human_size

        rows = []
        for img in images:
            for tag in img.get("repoTags") or ["<none>:<none>"]:
                repo, _, tag_name = tag.rpartition(":")
                rows.append([repo, tag_name, img["id"].removeprefix("sha256:")[:13],
                             human_size(int(img.get("size", 0)))])
        click.echo(tabulate(rows, headers=["IMAGE", "TAG", "IMAGE ID", "SIZE"], tablefmt="plain",
                            disable_numparse=True))
    else:
        click.echo("\n\n".join(_image_block(img) for img in images))


@image.command("list")
@click.option("--id", "image_filter", metavar="IMAGE", help="Only this image (ID, name or digest).")
@click.option("--quiet", "-q", is_flag=True, help="Print only image IDs.")
@output_option
@pass_settings
def list_images(settings: Settings, image_filter: str | None, quiet: bool, output: str) -> None:
    """List images."""
    from cri_api.v1 import api_pb2

    request = api_pb2.ListImagesRequest()
    if image_filter:
        request.filter.image.image = image_filter
    response = settings.client().image("ListImages", request)
    if quiet:
        for img in response.images:
            click.echo(img.id)
        return
    _render_images([message_to_dict(img) for img in response.images], output)


@image.command("status")
@click.option("--id", "name", required=True, metavar="IMAGE", help="Image ID, name or digest.")
@click.option("--verbose", "-v", is_flag=True, help="Include the runtime's verbose info.")
@output_option
@pass_settings
def status(settings: Settings, name: str, verbose: bool, output: str) -> None:
    """Show one image."""
    from cri_api.v1 import api_pb2

    response = settings.client().image(
        "ImageStatus", api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=name), verbose=verbose))
    if not response.HasField("image"):
        raise click.ClickException(f"image {name} not found")
    data = message_to_dict(response.image)
    if output in ("json", "yaml"):
        payload: dict[str, Any] = {"status": data}
        if response.info:
            payload["info"] = {k: json.loads(v) for k, v in response.info.items()}
        emit(payload, output)
    else:
        _render_images([data], output)
        for value in response.info.values():
            click.echo(json.dumps(json.loads(value), indent=2))


@image.command("remove")
@click.option("--id", "names", required=True, multiple=True, metavar="IMAGE",
              help="Image ID, name or digest (repeatable).")
@pass_settings
def remove(settings: Settings, names: tuple[str, ...]) -> None:
    """Remove images; removing an absent image succeeds."""
    from cri_api.v1 import api_pb2

    client = settings.client()
    for name in names:
        client.image("RemoveImage", api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=name)))
        click.echo(f"Deleted: {name}")


@image.command("fsinfo")
@click.option("--output", "-o", type=click.Choice(["json", "yaml"]), default="json", show_default=True,
              help="Output format.")
@pass_settings
def fsinfo(settings: Settings, output: str) -> None:
    """Show the bytes and inodes the image store uses."""
    from cri_api.v1 import api_pb2

    response = settings.client().image("ImageFsInfo", api_pb2.ImageFsInfoRequest())
    emit(message_to_dict(response), output)


