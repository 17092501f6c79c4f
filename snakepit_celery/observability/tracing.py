"""OpenTelemetry spans for pool calls: the wait for a bridge, the bridge call, its ``traceparent``.

The pool knows no tracing library: it asks its telemetry for a
:class:`~snakepit_celery.engine.telemetry.CallTrace` per call, and the worker's
telemetry hands out a :class:`SpanTrace` from here. A call then shows, under
the span that was current when it was made (the Celery task's ``run`` span of
``opentelemetry-instrumentation-celery``)::

    run/snakepit.execute
    ├── snakepit.checkout python     the wait for a free bridge (queue wait)
    └── snakepit.execute compute     the gRPC call (CLIENT), whose context goes to the
        └── Execute compute          bridge as W3C ``traceparent`` metadata: its SERVER span

A stream's chunks are events of its call span (the first :data:`CHUNK_EVENTS`
of them; ``snakepit.chunks`` counts them all). An error marks the span: status
ERROR, an ``exception`` event and ``error.type``, the error's class.

Only ``opentelemetry-api`` is needed. With no SDK configured (the API's
proxy or no-op provider) :func:`trace_call` returns the shared no-op trace
after one check, so an untraced worker pays nothing more.

Calls made on other threads than the task's (a stream's reader, a batch's
runners) carry the task's context there with :func:`capture` and
:func:`attached`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import inject
from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider, SpanKind, Status, StatusCode

from snakepit_celery.engine.telemetry import NO_TRACE, CallTrace

__all__ = ["CHUNK_EVENTS", "SpanTrace", "attached", "capture", "enabled", "mark_error", "trace_call"]

#: Chunks of one stream recorded as span events; the rest are only counted.
CHUNK_EVENTS = 100
#: The tracer's instrumentation scope.
SCOPE = "snakepit_celery"

_UNTRACED = (ProxyTracerProvider, NoOpTracerProvider)


def enabled() -> bool:
    """True when an OpenTelemetry SDK (a real tracer provider) is configured in this process."""
    return not isinstance(trace.get_tracer_provider(), _UNTRACED)


def mark_error(span: trace.Span, error: BaseException) -> None:
    """Mark ``span`` failed by ``error``: status ERROR, an exception event, ``error.type``."""
    name = type(error).__name__
    span.set_attribute("error.type", name)
    remote = getattr(error, "remote_type", None)
    if remote:
        span.set_attribute("snakepit.remote_type", str(remote))
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, f"{name}: {error}"))


class SpanTrace(CallTrace):
    """One call's spans: the checkout span from creation, then the bridge call span."""

    __slots__ = ("_attrs", "_call", "_checkout", "_chunks", "_name", "_parent", "_tracer", "metadata")

    def __init__(self, tracer: trace.Tracer, name: str, attributes: dict[str, Any]) -> None:
        self._tracer = tracer
        self._name = name
        self._attrs = attributes
        self._parent = otel_context.get_current()
        self._checkout: trace.Span | None = tracer.start_span(
            f"snakepit.checkout {attributes['snakepit.pool']}", context=self._parent, attributes=attributes
        )
        self._call: trace.Span | None = None
        self._chunks = 0
        self.metadata: tuple[tuple[str, str], ...] | None = None

    def checked_out(self, pid: int) -> None:
        if self._checkout is not None:
            self._checkout.set_attribute("snakepit.bridge.pid", pid)
            self._checkout.end()
            self._checkout = None
        if self._call is not None:  # a retry on a fresh bridge: the same call
            self._call.add_event("retried", {"snakepit.bridge.pid": pid})
            self._call.set_attribute("snakepit.bridge.pid", pid)
            return
        self._call = self._tracer.start_span(
            self._name,
            context=self._parent,
            kind=SpanKind.CLIENT,
            attributes={**self._attrs, "snakepit.bridge.pid": pid},
        )
        carrier: dict[str, str] = {}
        inject(carrier, context=trace.set_span_in_context(self._call, self._parent))
        self.metadata = tuple(carrier.items())

    def chunks(self, count: int) -> None:
        span = self._call
        if span is not None:
            for index in range(self._chunks, min(self._chunks + count, CHUNK_EVENTS)):
                span.add_event("chunk", {"snakepit.chunk.index": index})
        self._chunks += count

    def end(self, outcome: str, error: BaseException | None = None) -> None:
        for span in (self._checkout, self._call):
            if span is None:
                continue
            span.set_attribute("snakepit.outcome", outcome)
            if span is self._call and self._attrs["snakepit.call"] == "stream":
                span.set_attribute("snakepit.chunks", self._chunks)
            if error is not None:
                mark_error(span, error)
            span.end()
        self._checkout = self._call = None


def trace_call(
    *, pool: str, command: str, kind: str, session_id: str | None, request_id: str | None
) -> CallTrace:
    """The trace of a pool call (see :meth:`Telemetry.trace_call`): a :class:`SpanTrace`
    under the current context when an SDK is configured, else the shared no-op trace."""
    if not enabled():
        return NO_TRACE
    attributes: dict[str, Any] = {"snakepit.pool": pool, "snakepit.command": command, "snakepit.call": kind}
    if session_id is not None:
        attributes["snakepit.session_id"] = session_id
    if request_id is not None:
        attributes["messaging.message.id"] = request_id
    return SpanTrace(trace.get_tracer(SCOPE), f"snakepit.{kind} {command}", attributes)


def capture() -> otel_context.Context | None:
    """This thread's tracing context, to carry to another thread; None when nothing is traced."""
    return otel_context.get_current() if enabled() else None


@contextmanager
def attached(context: otel_context.Context | None) -> Iterator[None]:
    """Run the block under ``context`` (from :func:`capture`); nothing when it is None."""
    if context is None:
        yield
        return
    token = otel_context.attach(context)
    try:
        yield
    finally:
        otel_context.detach(token)
