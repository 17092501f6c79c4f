"""The pool's spans (``snakepit_celery.observability.tracing``) on the real SDK, and the untraced path.

The SDK here is a local provider handed to :class:`SpanTrace` (never the
process's global one), with the SDK's in-memory exporter; the whole trace
across processes is in tests/integration/test_tracing.py.
"""

from __future__ import annotations

import subprocess
import sys

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from snakepit_celery.errors import QueueTimeout
from snakepit_celery.observability.tracing import CHUNK_EVENTS, SpanTrace


def _tracer() -> tuple[InMemorySpanExporter, object]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter, provider.get_tracer("test")


def _trace(tracer: object, kind: str = "stream") -> SpanTrace:
    attrs = {"snakepit.pool": "python", "snakepit.command": "ping_stream", "snakepit.call": kind}
    return SpanTrace(tracer, f"snakepit.{kind} ping_stream", attrs)  # type: ignore[arg-type]


def test_a_streams_chunks_are_events_up_to_the_cap_and_all_counted() -> None:
    exporter, tracer = _tracer()
    trace = _trace(tracer)
    trace.checked_out(4242)
    assert trace.metadata is not None and dict(trace.metadata)["traceparent"].startswith("00-")
    for _ in range(CHUNK_EVENTS + 20):
        trace.chunks(1)
    trace.end("ok")
    checkout, call = exporter.get_finished_spans()
    assert checkout.name == "snakepit.checkout python"
    assert call.attributes["snakepit.chunks"] == CHUNK_EVENTS + 20
    assert [e.name for e in call.events] == ["chunk"] * CHUNK_EVENTS
    sent = dict(trace.metadata)["traceparent"].split("-")
    assert sent[1:3] == [format(call.context.trace_id, "032x"), format(call.context.span_id, "016x")]


def test_a_call_refused_before_it_had_a_bridge_marks_its_checkout_span() -> None:
    exporter, tracer = _tracer()
    trace = _trace(tracer, "execute")
    trace.end("queue_timeout", QueueTimeout("no bridge came free within 1s"))
    (checkout,) = exporter.get_finished_spans()
    assert checkout.status.status_code.name == "ERROR"
    assert checkout.attributes["error.type"] == "QueueTimeout"
    assert checkout.attributes["snakepit.outcome"] == "queue_timeout"
    assert [e.name for e in checkout.events] == ["exception"]


def test_without_an_sdk_every_call_gets_the_shared_no_op_trace() -> None:
    # A fresh interpreter: this one may have an SDK installed by another test.
    code = (
        "from snakepit_celery.observability import tracing\n"
        "from snakepit_celery.engine.telemetry import NO_TRACE\n"
        "t = tracing.trace_call(pool='p', command='c', kind='execute', session_id=None, request_id=None)\n"
        "assert t is NO_TRACE and t.metadata is None, t\n"
        "assert tracing.capture() is None\n"
        "from snakepit_bridge import tracing as bridge\n"
        "assert bridge.start_span('Execute', 'c', '', None) is None\n"
        "assert bridge.capture() is None\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
