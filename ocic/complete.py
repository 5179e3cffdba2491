"""Shell completion of live pod and container IDs, asked of the runtime being completed for.

Completion runs before any command callback, so the endpoint comes from the root
context's parsed ``--connect`` (or the environment). An unreachable endpoint yields no
candidates, quickly: the socket is checked first and the query has a short deadline.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import click
from click.shell_completion import CompletionItem

from .client import DEFAULT_ENDPOINT, CriClient, socket_path

COMPLETION_TIMEOUT = 1.0  # seconds; a shell waiting on TAB should never hang


def _client(ctx: click.Context) -> CriClient | None:
    root = ctx.find_root()
    endpoint = (root.params.get("connect") or os.environ.get("CONTAINER_RUNTIME_ENDPOINT")
                or DEFAULT_ENDPOINT)
    try:
        if not os.path.exists(socket_path(endpoint)):
            return None
    except click.ClickException:
        return None
    return CriClient(endpoint, COMPLETION_TIMEOUT)


def _candidates(list_items: Callable[[CriClient], list[tuple[str, str]]]
                ) -> Callable[[click.Context, click.Parameter, str], list[CompletionItem]]:
    """A shell_complete callback offering (ID, name) pairs that start with the input."""

    def complete(ctx: click.Context, param: click.Parameter, incomplete: str
                 ) -> list[CompletionItem]:
        client = _client(ctx)
        if client is None:
            return []
        try:
            items = list_items(client)
        except Exception:  # noqa: BLE001 - completion must never fail the shell
            return []
        return [CompletionItem(item_id, help=name) for item_id, name in items
                if item_id.startswith(incomplete)]

    return complete


def _pods(client: CriClient) -> list[tuple[str, str]]:
    from cri_api.v1 import api_pb2

    response = client.runtime("ListPodSandbox", api_pb2.ListPodSandboxRequest())
    return [(p.id, p.metadata.name) for p in response.items]


def _containers(client: CriClient) -> list[tuple[str, str]]:
    from cri_api.v1 import api_pb2

    response = client.runtime("ListContainers", api_pb2.ListContainersRequest())
    return [(c.id, c.metadata.name) for c in response.containers]


complete_pod_ids = _candidates(_pods)
complete_container_ids = _candidates(_containers)
