"""What the three command-line tools share: running a click command with one error wrapper."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Sequence

import click

from ocid.errors import OcidError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def run_cli(command: click.Command, argv: Sequence[str] | None, prog_name: str) -> int:
    """Run ``command`` and turn every expected failure into one line on stderr and an exit code.

    Set OCID_TRACEBACK=1 to see the traceback of an error instead.
    """
    try:
        result = command.main(args=list(argv) if argv is not None else None,
                              prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except (click.Abort, KeyboardInterrupt):
        click.echo("Aborted.", err=True)
        return 130
    except OcidError as exc:
        if os.environ.get("OCID_TRACEBACK"):
            raise
        click.echo(f"{prog_name}: {exc}", err=True)
        return 1
    except BrokenPipeError:
        # The reader went away (`ocic ... | head`); nothing more to say.
        sys.stderr.close()
        return 141
    except OSError as exc:
        # A file the user named cannot be read or written: say which, in one line.
        if os.environ.get("OCID_TRACEBACK"):
            raise
        where = f": {exc.filename}" if exc.filename else ""
        click.echo(f"{prog_name}: {exc.strerror or exc}{where}", err=True)
        return 1
    return result if isinstance(result, int) else 0


def human_size(size: float) -> str:
    """Sizes as podman prints them (SI units): ``4.26 MB``."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.3g} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1000
    raise AssertionError("unreachable")


def human_ago(timestamp: float, now: float | None = None) -> str:
    """``3 hours ago`` for a Unix timestamp."""
    import time

    seconds = max(0, int((now or time.time()) - timestamp))
    for name, length in (("year", 31536000), ("month", 2592000), ("week", 604800), ("day", 86400),
                         ("hour", 3600), ("minute", 60)):
        if seconds >= length:
            count = seconds // length
            return f"{count} {name}{'s' if count > 1 else ''} ago"
    return "Less than a minute ago" if seconds >= 1 else "Now"


def follow_pull_progress(snapshot: Callable[[], list[dict]], done: threading.Event, *,
                         image_filter: Callable[[str], bool] | None = None,
                         interval: float = 0.2) -> None:
    """Draw per-layer progress bars on stderr until ``done`` (a threading.Event) is set.

    ``snapshot()`` returns the pulls in flight as dicts (see ocid.image.progress); only TTYs
    get bars, so scripts and logs see nothing.
    """
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    console = Console(stderr=True)
    if not console.is_terminal:
        done.wait()
        return
    tasks: dict[str, int] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), console=console, transient=False) as bars:
        while not done.wait(interval):
            try:
                pulls = snapshot()
            except Exception:  # noqa: BLE001 - progress is best effort; the pull reports errors
                continue
            for pull in pulls:
                if image_filter and not image_filter(pull["image"]):
                    continue
                for layer in pull["layers"]:
                    key = layer["digest"]
                    label = f"{key.split(':')[-1][:12]} {layer['state']:<11}"
                    if key not in tasks:
                        tasks[key] = bars.add_task(label, total=layer["total"] or None)
                    bars.update(tasks[key], completed=layer["done"], description=label)
