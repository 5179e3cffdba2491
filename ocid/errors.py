"""The errors the ocid core raises, shared by ocid, ocic and kpod.

The core knows nothing of gRPC; ``ocid.server`` maps each class to a status code in
one place, and the CLIs map them to a message and an exit code.

    OcidError                      anything the core reports to a caller
    ├── InvalidArgument            the request or input is malformed      (INVALID_ARGUMENT)
    │   └── ConfigError            a bad configuration file or flag
    ├── NotFound                   the named object does not exist        (NOT_FOUND)
    ├── AlreadyExists              a name or ID is taken                  (ALREADY_EXISTS)
    ├── FailedPrecondition         the object is in the wrong state       (FAILED_PRECONDITION)
    ├── Unavailable                a backend cannot be reached right now  (UNAVAILABLE)
    ├── ResourceExhausted          a limit is reached (streaming URLs)    (RESOURCE_EXHAUSTED)
    ├── DeadlineExceeded           an operation ran past its time limit   (DEADLINE_EXCEEDED)
    ├── Unimplemented              the RPC or feature does not exist yet  (UNIMPLEMENTED)
    └── InternalError              a bug or an unexpected backend failure (INTERNAL)

Lower libraries' exceptions (OSError, subprocess, requests) are translated where they
are raised, keeping the cause: ``raise NotFound(f"container {cid}") from exc``.
"""

from __future__ import annotations


class OcidError(Exception):
    """Base class of every error the core reports to a caller."""


class InvalidArgument(OcidError):
    """The request, a file or a flag is malformed."""


class ConfigError(InvalidArgument):
    """A configuration file or flag is invalid; names the key and, when known, the line."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None):
        self.path = path
        self.line = line
        where = ""
        if path:
            where = f"{path}:{line}: " if line else f"{path}: "
        super().__init__(f"{where}{message}")


class NotFound(OcidError):
    """The named object does not exist."""


class AlreadyExists(OcidError):
    """The name or ID is already taken."""


class FailedPrecondition(OcidError):
    """The object is not in a state that allows the operation."""


class Unavailable(OcidError):
    """A backend (runtime, registry, network) cannot be used right now."""


class ResourceExhausted(OcidError):
    """A limit is reached: try again later."""


class DeadlineExceeded(OcidError):
    """An operation ran past its time limit."""


class Unimplemented(OcidError):
    """The RPC or feature is not implemented."""


class InternalError(OcidError):
    """A bug, or a backend failed in a way the caller cannot fix."""
