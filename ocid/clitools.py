"""What the three command-line tools share: running a click command with one error wrapper."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

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
    return result if isinstance(result, int) else 0
