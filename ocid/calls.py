"""What the core may ask about the request it is serving, without knowing gRPC.

The server layer sets ``caller_waiting`` for each call; the core asks it when a long
operation (RunPodSandbox, CreateContainer) finishes, to keep a result whose caller gave up
for that caller's retry.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar

_caller_waiting: ContextVar[Callable[[], bool]] = ContextVar("caller_waiting",
                                                             default=lambda: True)


def caller_waiting() -> bool:
    """Whether the caller of the current request still waits for its answer."""
    return _caller_waiting.get()()


def serving(is_waiting: Callable[[], bool]) -> object:
    """Set how the current thread's request tells whether its caller still waits."""
    return _caller_waiting.set(is_waiting)


def done(token: object) -> None:
    _caller_waiting.reset(token)  # type: ignore[arg-type]
