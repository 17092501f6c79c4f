"""Test-only OpenTelemetry set-up: the real SDK, exporting each span as a JSON line to a file.

Every traced process of a test (the worker, each bridge) writes its spans to
``$SNAKEPIT_OTEL_TEST_DIR/<service>-<pid>.jsonl`` as they end (a simple span
processor: no batching to wait for), and the test reads them all with
:func:`read_spans`. Users configure an OTLP exporter instead (docs/operations.md).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

#: The directory the traced processes of a test write their spans to.
DIR_VARIABLE = "SNAKEPIT_OTEL_TEST_DIR"


def span_record(span: ReadableSpan, service: str) -> dict[str, Any]:
    """A span as the tests compare them (ids in hex, as the Node.js exporter writes them too)."""
    ctx = span.get_span_context()
    assert ctx is not None
    return {
        "service": service,
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": format(ctx.trace_id, "032x"),
        "span_id": format(ctx.span_id, "016x"),
        "parent_id": format(span.parent.span_id, "016x") if span.parent else None,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
        "events": [{"name": e.name, "attributes": dict(e.attributes or {})} for e in span.events],
    }


class JsonLinesExporter(SpanExporter):
    """Appends each span to a file, one JSON object a line."""

    def __init__(self, path: Path, service: str) -> None:
        self.path = path
        self.service = service
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(span_record(s, self.service)) + "\n" for s in spans)
        with self._lock, open(self.path, "a") as f:
            f.write(lines)
        return SpanExportResult.SUCCESS


def setup(service: str) -> None:
    """Install the SDK with the file exporter in this process (the variable must be set)."""
    directory = Path(os.environ[DIR_VARIABLE])
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    exporter = JsonLinesExporter(directory / f"{service}-{os.getpid()}.jsonl", service)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)


def read_spans(directory: Path) -> list[dict[str, Any]]:
    """Every span the processes of a test wrote so far."""
    spans = []
    for path in sorted(directory.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                spans.append(json.loads(line))
    return spans
