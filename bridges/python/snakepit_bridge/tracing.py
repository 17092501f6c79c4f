"""A server span per command, child of the caller's span sent as W3C ``traceparent``.

The worker sends its bridge-call span's context in the gRPC metadata
(``traceparent``, ``tracestate``); each Execute, ExecuteStream and
ExecuteBatch here opens a SERVER span under it, named after the RPC and the
command, with the command, the session id and the outcome as attributes. A
failure marks the span: status ERROR, an ``exception`` event and
``error.type``, the failure's type. A stream's chunks are span events (the
first :data:`CHUNK_EVENTS`; ``snakepit.chunks`` counts them all).

While the command runs, its span is the current one, so a handler opens child
spans the usual way (in sync, async and stream commands alike)::

    from opentelemetry import trace

    tracer = trace.get_tracer(__name__)

    class Model(Handler):
        @command
        def predict(self, rows):
            with tracer.start_as_current_span("predict.load"):
                ...

Only ``opentelemetry-api`` is needed, and with no SDK configured in this
process every function here returns after one check. The SDK is the
handler's to set up (a handler module configures it at import, or the
environment does with ``opentelemetry-instrument``): see docs/operations.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract
from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider, SpanKind, Status, StatusCode

__all__ = [
    "CHUNK_EVENTS",
    "activate",
    "add_chunks",
    "capture",
    "deactivate",
    "enabled",
    "end_span",
    "fail_span",
    "flush",
    "start_span",
]

#: Chunks of one stream recorded as span events; the rest are only counted.
CHUNK_EVENTS = 100
#: The tracer's instrumentation scope.
SCOPE = "snakepit_bridge"

_UNTRACED = (ProxyTracerProvider, NoOpTracerProvider)


def enabled() -> bool:
    """True when an OpenTelemetry SDK (a real tracer provider) is configured in this process."""
    return not isinstance(trace.get_tracer_provider(), _UNTRACED)


class _HasMetadata(Protocol):
    def invocation_metadata(self) -> Iterable[tuple[str, Any]] | None: ...


def start_span(
    rpc: str, command: str, session_id: str, call: _HasMetadata
) -> tuple[trace.Span, otel_context.Context] | None:
    """Open the server span of one call under the caller's context (``call``'s metadata).

    Returns:
        The span and a context in which it is current, or None when nothing is traced.
    """
    if not enabled():
        return None
    carrier = {key: value for key, value in call.invocation_metadata() or () if isinstance(value, str)}
    parent = extract(carrier)
    attrs: dict[str, Any] = {
        "rpc.system": "grpc",
        "rpc.service": "snakepit.bridge.v1.Bridge",
        "rpc.method": rpc,
        "snakepit.command": command,
    }
    if session_id:
        attrs["snakepit.session_id"] = session_id
    span = trace.get_tracer(SCOPE).start_span(
        f"{rpc} {command}", context=parent, kind=SpanKind.SERVER, attributes=attrs
    )
    return span, trace.set_span_in_context(span, parent)


def capture() -> otel_context.Context | None:
    """This thread's tracing context, for a thread or task the call runs on; None untraced."""
    return otel_context.get_current() if enabled() else None


def activate(context: otel_context.Context | None) -> object | None:
    """Make ``context`` current on this thread (or event-loop task); a token for :func:`deactivate`."""
    return None if context is None else otel_context.attach(context)


def deactivate(token: object | None) -> None:
    """Undo :func:`activate`."""
    if token is not None:
        otel_context.detach(token)  # type: ignore[arg-type]


def add_chunks(span: trace.Span, sent: int, count: int) -> int:
    """Record ``count`` more chunks of a stream that had sent ``sent``; the new total."""
    for index in range(sent, min(sent + count, CHUNK_EVENTS)):
        span.add_event("chunk", {"snakepit.chunk.index": index})
    return sent + count


def fail_span(span: trace.Span, outcome: str, type_name: str, message: str, traceback: str = "") -> None:
    """Mark ``span`` failed (``outcome``: the failure's kind) and end it."""
    span.set_attribute("snakepit.outcome", outcome)
    span.set_attribute("error.type", type_name)
    event = {"exception.type": type_name, "exception.message": message}
    if traceback:
        event["exception.stacktrace"] = traceback
    span.add_event("exception", event)
    span.set_status(Status(StatusCode.ERROR, f"{type_name}: {message}"))
    span.end()


def end_span(span: trace.Span, outcome: str = "ok", **attributes: Any) -> None:
    """End ``span`` with ``outcome`` (ok, cancelled) and any last attributes."""
    span.set_attribute("snakepit.outcome", outcome)
    for key, value in attributes.items():
        span.set_attribute(key, value)
    span.end()


def flush(timeout: float = 2.0) -> None:
    """Export the spans an SDK still holds (at most ``timeout`` seconds); the bridge exits next."""
    provider = trace.get_tracer_provider()
    force_flush = getattr(provider, "force_flush", None)
    if enabled() and callable(force_flush):
        with contextlib.suppress(Exception):  # an exporter's failure must not keep the bridge from exiting
            force_flush(int(timeout * 1000))
