"""The one wrapper around every CRI RPC: logging, the only error → gRPC status mapping,
and UNIMPLEMENTED answers for the RPCs no handler serves yet.

Handlers are plain objects whose methods are named after the RPCs they serve and take the
request message alone; they raise ``ocid.errors`` exceptions and never touch gRPC.
``ocid.calls.caller_waiting()`` tells the core whether the caller still waits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
from google.protobuf import message_factory, text_format
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from ocid import calls, errors

from .listcache import Encoded

log = logging.getLogger("ocid.server")

STATUS_CODES: dict[type[errors.OcidError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    errors.InternalError: grpc.StatusCode.INTERNAL,
}

# RPCs that change nothing are logged at debug level; the rest at info.
READ_ONLY_PREFIXES = ("List", "Version", "Status", "RuntimeConfig", "ImageFsInfo")
READ_ONLY_SUFFIXES = ("Status", "Stats", "Metrics", "MetricDescriptors")

# Request fields holding credentials, cleared before a request is logged.
SECRET_FIELDS = ("auth",)


def status_code(exc: errors.OcidError) -> grpc.StatusCode:
    """The gRPC status code for a core error (its nearest mapped base class)."""
    for cls in type(exc).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return grpc.StatusCode.UNKNOWN


def _is_read_only(name: str) -> bool:
    return name.startswith(READ_ONLY_PREFIXES) or name.endswith(READ_ONLY_SUFFIXES)


# Longer messages are logged by size only: the text form of a ListContainers reply of 100
# containers takes 10 ms or more, several times the RPC itself.
BRIEF_MAX_BYTES = 4096


def _brief(message: Message | Encoded) -> str:
    """A one-line text form of a message for the debug log, with credentials removed."""
    if isinstance(message, Encoded):
        message = message.message()
    size = message.ByteSize()
    if size > BRIEF_MAX_BYTES:
        return f"<{message.DESCRIPTOR.name} of {size} bytes>"
    for name in SECRET_FIELDS:
        if name in message.DESCRIPTOR.fields_by_name and message.HasField(name):
            message = type(message).FromString(message.SerializeToString())
            message.ClearField(name)
    return text_format.MessageToString(message, as_one_line=True)


def _fail(context: grpc.ServicerContext, name: str, exc: Exception) -> None:
    if isinstance(exc, errors.OcidError):
        code = status_code(exc)
        log.log(logging.INFO if code != grpc.StatusCode.INTERNAL else logging.ERROR,
                "%s failed: %s: %s", name, code.name, exc)
        context.abort(code, str(exc))
    log.exception("%s failed with an unexpected error", name)
    context.abort(grpc.StatusCode.INTERNAL, f"{name}: internal error: {exc}")


def _wrap_unary(name: str, impl: Callable[[Any], Message]) -> Callable[..., Message]:
    level = logging.DEBUG if _is_read_only(name) else logging.INFO

    def call(request: Message, context: grpc.ServicerContext) -> Message:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s request: %s", name, _brief(request))
        token = calls.serving(context.is_active)  # the core keeps results nobody awaits
        try:
            response = impl(request)
        except Exception as exc:  # every error is answered with a status
            _fail(context, name, exc)
            raise  # not reached: abort raises
        finally:
            calls.done(token)
        if not context.is_active():
            log.info("%s finished after its caller gave up", name)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s response: %s", name, _brief(response))
        elif level == logging.INFO:
            log.info("%s done", name)
        return response

    call.__name__ = name
    return call


def _wrap_stream(name: str, impl: Callable[[Any], Iterator[Message]]) -> Callable[..., Iterator[Message]]:
    def call(request: Message, context: grpc.ServicerContext) -> Iterator[Message]:
        log.debug("%s request: %s", name, _brief(request))
        try:
            yield from impl(request)
        except Exception as exc:  # noqa: BLE001
            _fail(context, name, exc)

    call.__name__ = name
    return call


def _unimplemented(service: ServiceDescriptor, method: MethodDescriptor) -> Callable[[Any], Any]:
    message = f"{method.name} is not implemented by ocid yet ({service.full_name}/{method.name})"

    def impl(request: Message) -> Any:
        raise errors.Unimplemented(message)

    return impl


def _serialize(response: Message | Encoded) -> bytes:
    # grpc takes exact bytes only: given a subclass, the call never gets its answer
    return bytes(response) if isinstance(response, Encoded) else response.SerializeToString()


def register(server: grpc.Server, service: ServiceDescriptor, handlers: Sequence[object]) -> None:
    """Serve ``service`` on ``server`` with the methods of the first handler that has them.

    This is what the generated ``add_…Servicer_to_server`` does, built from the service
    descriptor, with one difference: a handler may answer with an ``Encoded`` reply.
    """
    rpc_handlers = {}
    for method in service.methods:
        impl = next((getattr(h, method.name) for h in handlers if hasattr(h, method.name)), None)
        if impl is None:
            impl = _unimplemented(service, method)
        deserialize = message_factory.GetMessageClass(method.input_type).FromString
        if method.server_streaming:
            rpc_handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                _wrap_stream(method.name, impl), request_deserializer=deserialize,
                response_serializer=_serialize)
        else:
            rpc_handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _wrap_unary(method.name, impl), request_deserializer=deserialize,
                response_serializer=_serialize)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, rpc_handlers),))
    server.add_registered_method_handlers(service.full_name, rpc_handlers)
