"""``ocic ctr``: create, start, stop, remove, inspect and list containers; exec; read logs."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO, NoReturn

import click

from ocid import errors

from .cli import Settings, cli, pass_settings
from .client import CriClient
from .complete import complete_container_ids, complete_pod_ids
from .pods import RUNTIME_REQUEST_TIMEOUT, config_file, label_option, slow_client, transport_option
from .render import (
    container_text,
    containers_table,
    emit,
    emit_status,
    message_to_dict,
    text_output_option,
)

CONTAINER_STATES = {"created": "CONTAINER_CREATED", "running": "CONTAINER_RUNNING",
                    "exited": "CONTAINER_EXITED", "unknown": "CONTAINER_UNKNOWN"}
# gRPC wants a number: ten years stands for "no deadline", as crictl sends an untimed exec.
NO_DEADLINE = 10 * 365 * 86400.0
EXEC_TIMED_OUT = b"command timed out"

id_option = click.option("--id", "ctr_id", required=True, metavar="CONTAINER",
                         shell_complete=complete_container_ids,
                         help="ID (or unique prefix) of the container.")


@cli.group()
def ctr() -> None:
    """Create, start, stop, remove, inspect and list containers; exec, attach, read logs."""


interactive_option = click.option("--interactive", "-i", is_flag=True,
                                  help="Pass ocic's standard input to the container.")
tty_option = click.option("--tty", "-t", is_flag=True,
                          help="Use a terminal: ocic's own, in raw mode, with its size kept in "
                               "step (needs -i and a terminal on stdin).")


def _sandbox_config(settings: Settings, pod_id: str, pod_config: str | None) -> tuple[str, Any]:
    """The pod ID to send and the PodSandboxConfig CreateContainer wants next to it."""
    from cri_api.v1 import api_pb2

    from .configfile import load_pod_config

    if pod_config:
        return pod_id, load_pod_config(pod_config)
    # The kubelet sends the pod's whole config; ocid only needs the metadata, so ask for that.
    status = settings.client().runtime(
        "PodSandboxStatus", api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status
    return status.id or pod_id, api_pb2.PodSandboxConfig(metadata=status.metadata)


@ctr.command("create")
@click.option("--pod", "pod_id", required=True, metavar="POD", shell_complete=complete_pod_ids,
              help="ID (or unique prefix) of the pod to create the container in.")
@click.option("--config", "config_path", required=True, type=config_file, metavar="FILE",
              help="A ContainerConfig as JSON or YAML (see testdata/).")
@click.option("--pod-config", type=config_file, metavar="FILE",
              help="The pod's PodSandboxConfig to send along; default: the pod's metadata, "
                   "asked of the runtime.")
@click.option("--name", help="The container's name, instead of metadata.name in the file.")
@label_option("Add a key=value label to the container (repeatable).")
@pass_settings
def create(settings: Settings, pod_id: str, config_path: str, pod_config: str | None,
           name: str | None, labels: dict[str, str]) -> None:
    """Create a container in a pod from a config file; print its ID."""
    from cri_api.v1 import api_pb2

    from .configfile import load_container_config

    config = load_container_config(config_path)
    if name:
        config.metadata.name = name
    config.labels.update(labels)
    pod_id, sandbox_config = _sandbox_config(settings, pod_id, pod_config)
    request = api_pb2.CreateContainerRequest(pod_sandbox_id=pod_id, config=config,
                                             sandbox_config=sandbox_config)
    response = slow_client(settings).runtime("CreateContainer", request)
    click.echo(response.container_id)


@ctr.command("start")
@id_option
@pass_settings
def start(settings: Settings, ctr_id: str) -> None:
    """Start a created container; print its ID."""
    from cri_api.v1 import api_pb2

    slow_client(settings).runtime("StartContainer", api_pb2.StartContainerRequest(container_id=ctr_id))
    click.echo(ctr_id)


@ctr.command("stop")
@id_option
@click.option("--timeout", "stop_timeout", default=10, show_default=True, type=click.IntRange(min=0),
              metavar="SECONDS", help="Seconds between the stop signal and SIGKILL.")
@pass_settings
def stop(settings: Settings, ctr_id: str, stop_timeout: int) -> None:
    """Stop a running container; print its ID."""
    from cri_api.v1 import api_pb2

    client = slow_client(settings, RUNTIME_REQUEST_TIMEOUT + stop_timeout)
    client.runtime("StopContainer", api_pb2.StopContainerRequest(container_id=ctr_id,
                                                                 timeout=stop_timeout))
    click.echo(ctr_id)


@ctr.command("remove")
@id_option
@pass_settings
def remove(settings: Settings, ctr_id: str) -> None:
    """Remove a container, stopping it first if it runs; print its ID."""
    from cri_api.v1 import api_pb2

    slow_client(settings).runtime("RemoveContainer",
                                  api_pb2.RemoveContainerRequest(container_id=ctr_id))
    click.echo(ctr_id)


@ctr.command("status")
@id_option
@text_output_option
@pass_settings
def status(settings: Settings, ctr_id: str, output: str) -> None:
    """Show one container: state, times, exit code, image, log path."""
    from cri_api.v1 import api_pb2

    response = settings.client().runtime("ContainerStatus",
                                         api_pb2.ContainerStatusRequest(container_id=ctr_id))
    emit_status(response, output, containers_table, container_text)


@ctr.command("list")
@click.option("--id", "ctr_id", metavar="CONTAINER", shell_complete=complete_container_ids,
              help="Only the container with this ID (or ID prefix).")
@click.option("--pod", "pod_id", metavar="POD", shell_complete=complete_pod_ids,
              help="Only containers of this pod.")
@click.option("--state", type=click.Choice(list(CONTAINER_STATES)),
              help="Only containers in this state.")
@label_option("Only containers with this key=value label (repeatable; all must match).")
@click.option("--quiet", "-q", is_flag=True, help="Print only container IDs.")
@text_output_option
@pass_settings
def list_containers(settings: Settings, ctr_id: str | None, pod_id: str | None, state: str | None,
                    labels: dict[str, str], quiet: bool, output: str) -> None:
    """List containers."""
    from cri_api.v1 import api_pb2

    request = api_pb2.ListContainersRequest()
    request.filter.SetInParent()
    if ctr_id:
        request.filter.id = ctr_id
    if pod_id:
        request.filter.pod_sandbox_id = pod_id
    if state:
        request.filter.state.state = api_pb2.ContainerState.Value(CONTAINER_STATES[state])
    request.filter.label_selector.update(labels)
    response = settings.client().runtime("ListContainers", request)
    if quiet:
        for item in response.containers:
            click.echo(item.id)
    elif output in ("json", "yaml"):
        emit(message_to_dict(response), output)
    elif output == "table":
        click.echo(containers_table(list(response.containers)))
    elif response.containers:
        click.echo("\n\n".join(container_text(item) for item in response.containers))


def _binary(stream: str) -> BinaryIO:
    """ocic's stdout or stderr for bytes: container output is written as it came."""
    return (sys.stdout if stream == "stdout" else sys.stderr).buffer


# Options end at the command, so `execsync --id X ls -l` needs no `--`.
@ctr.command("execsync", context_settings={"allow_interspersed_args": False})
@id_option
@click.option("--timeout", "exec_timeout", default=0, show_default=True, type=click.IntRange(min=0),
              metavar="SECONDS", help="Stop the command after this many seconds; 0: no limit.")
@click.argument("command", nargs=-1, required=True)
@pass_settings
def execsync(settings: Settings, ctr_id: str, exec_timeout: int, command: tuple[str, ...]) -> None:
    """Run a command in a container; exit with its exit code."""
    from cri_api.v1 import api_pb2

    deadline = exec_timeout + settings.timeout if exec_timeout else NO_DEADLINE
    request = api_pb2.ExecSyncRequest(container_id=ctr_id, cmd=list(command), timeout=exec_timeout)
    timed_out = f"command timed out after {exec_timeout}s in container {ctr_id}"
    try:
        response = CriClient(settings.connect, deadline).runtime("ExecSync", request)
    except errors.DeadlineExceeded as exc:
        if not exec_timeout:
            raise
        raise errors.DeadlineExceeded(f"{timed_out} ({exc})") from None
    # cri-o (and ocid) answer a timeout with exit code -1 and this text on stderr.
    runtime_timeout = (bool(exec_timeout) and response.exit_code == -1
                       and response.stderr.strip() == EXEC_TIMED_OUT)
    for name, data in (("stdout", response.stdout), ("stderr", response.stderr)):
        if runtime_timeout and name == "stderr":
            break
        stream = _binary(name)
        stream.write(data)
        stream.flush()
    if runtime_timeout:
        raise errors.DeadlineExceeded(timed_out)
    raise click.exceptions.Exit(response.exit_code)


class _LogWriter:
    """Writes records to ocic's stdout or stderr, joining partial records into lines."""

    def __init__(self, timestamps: bool, flush: bool) -> None:
        self.timestamps = timestamps
        self.flush = flush
        self.at_line_start = {"stdout": True, "stderr": True}

    def write(self, record: Any) -> None:
        stream = _binary(record.stream)
        data = record.content if record.partial else record.content + b"\n"
        if self.timestamps and self.at_line_start[record.stream]:
            data = record.timestamp.encode() + b" " + data
        self.at_line_start[record.stream] = not record.partial
        stream.write(data)
        if self.flush:
            stream.flush()


@ctr.command("logs")
@id_option
@click.option("--follow", "-f", is_flag=True,
              help="Keep printing new lines until the container stops (or Ctrl-C).")
@click.option("--tail", type=click.IntRange(min=0), metavar="N",
              help="Only the last N lines of the log; default: all.")
@click.option("--timestamps", "-t", is_flag=True, help="Start each line with its timestamp.")
@pass_settings
def logs(settings: Settings, ctr_id: str, follow: bool, tail: int | None, timestamps: bool) -> None:
    """Print a container's log file, as crictl logs does."""
    from cri_api.v1 import api_pb2

    from ocid import crilog

    client = settings.client()
    response = client.runtime("ContainerStatus", api_pb2.ContainerStatusRequest(container_id=ctr_id))
    path, full_id = response.status.log_path, response.status.id or ctr_id
    if not path:
        raise errors.FailedPrecondition(f"container {ctr_id} has no log file (no log_path)")
    if not os.path.isabs(path):
        raise errors.FailedPrecondition(f"container {ctr_id}: log path {path!r} is not absolute")

    def still_running() -> bool:
        try:
            state = client.runtime("ContainerStatus",
                                   api_pb2.ContainerStatusRequest(container_id=full_id)).status.state
        except errors.NotFound:
            return False
        except errors.OcidError:
            return True  # the daemon restarting does not end the container: keep going
        return state in (api_pb2.CONTAINER_CREATED, api_pb2.CONTAINER_RUNNING)

    writer = _LogWriter(timestamps, flush=follow)
    try:
        for record in crilog.read_log(path, tail=tail, follow=follow, keep_following=still_running):
            writer.write(record)
    except FileNotFoundError:
        raise errors.NotFound(f"log file {path} of container {ctr_id} does not exist "
                              "(ocic reads it directly: run it on the runtime's host)") from None
    finally:
        for name in ("stdout", "stderr"):
            _binary(name).flush()


def _check_tty(interactive: bool, tty: bool) -> None:
    """-t needs -i and a terminal, checked before the RPC hands out a one-time URL."""
    ctx = click.get_current_context()
    if tty and not interactive:
        raise click.UsageError("-t/--tty needs -i/--interactive", ctx=ctx)
    if tty and not sys.stdin.isatty():
        raise click.UsageError("-t/--tty needs a terminal on standard input", ctx=ctx)


def _terminal_size() -> tuple[int, int] | None:
    for stream in (sys.stdout, sys.stdin):
        try:
            size = os.get_terminal_size(stream.fileno())
        except (OSError, ValueError):
            continue
        return size.columns, size.lines
    return None


@contextlib.contextmanager
def _raw_terminal(enabled: bool) -> Iterator[Iterable[tuple[int, int]] | None]:
    """Put the terminal on stdin in raw mode and yield its sizes: now, then after each SIGWINCH.

    The terminal and the SIGWINCH handler are restored however the block ends.
    """
    if not enabled:
        yield None
        return
    import queue
    import signal
    import termios
    import tty

    # SimpleQueue.put may be called from a signal handler.
    sizes: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()

    def on_resize(signum: int, frame: Any) -> None:
        if (size := _terminal_size()) is not None:
            sizes.put(size)

    def iterate() -> Iterator[tuple[int, int]]:
        while (size := sizes.get()) is not None:
            yield size

    on_resize(signal.SIGWINCH, None)
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    previous = signal.signal(signal.SIGWINCH, on_resize)
    try:
        tty.setraw(fd)
        yield iterate()
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGWINCH, previous)
        sizes.put(None)


def _stream(run: Callable[..., int], url: str, interactive: bool, tty: bool, transport: str
            ) -> NoReturn:
    """Stream ocic's stdio through ``url`` (raw terminal with -t); exit with the remote code."""
    with _raw_terminal(tty) as sizes:
        code = run(url, stdin=sys.stdin.buffer if interactive else None, stdout=_binary("stdout"),
                   stderr=None if tty else _binary("stderr"), tty=tty, resize_source=sizes,
                   transport=transport)
    raise click.exceptions.Exit(code)


# Options end at the command, so `exec --id X ls -l` needs no `--`.
@ctr.command("exec", context_settings={"allow_interspersed_args": False})
@id_option
@interactive_option
@tty_option
@transport_option
@click.argument("command", nargs=-1, required=True)
@pass_settings
def exec_command(settings: Settings, ctr_id: str, interactive: bool, tty: bool,
                 transport: str, command: tuple[str, ...]) -> None:
    """Run a command in a container, streaming its input and output; exit with its exit code."""
    from cri_api.v1 import api_pb2

    from .streaming import exec_stream

    _check_tty(interactive, tty)
    request = api_pb2.ExecRequest(container_id=ctr_id, cmd=list(command), tty=tty,
                                  stdin=interactive, stdout=True, stderr=not tty)
    _stream(exec_stream, settings.client().runtime("Exec", request).url, interactive, tty,
            transport)


@ctr.command("attach")
@id_option
@interactive_option
@tty_option
@transport_option
@pass_settings
def attach(settings: Settings, ctr_id: str, interactive: bool, tty: bool, transport: str) -> None:
    """Attach to a running container's standard streams until they end."""
    from cri_api.v1 import api_pb2

    from .streaming import attach_stream

    _check_tty(interactive, tty)
    request = api_pb2.AttachRequest(container_id=ctr_id, stdin=interactive, tty=tty,
                                    stdout=True, stderr=not tty)
    _stream(attach_stream, settings.client().runtime("Attach", request).url, interactive, tty,
            transport)
