"""The Python bridge's handler in the tracing tests: the showcase, traced to a file.

Importing it installs the test's SDK (see :mod:`otel_testing`) in the bridge,
as a user's handler module would install theirs; ``traced_sum`` opens a child
span of its own under the bridge's server span, as docs/operations.md shows.
"""

from __future__ import annotations

from typing import Any

import otel_testing
from opentelemetry import trace
from snakepit_bridge import command
from snakepit_bridge.showcase import ShowcaseHandler

otel_testing.setup("bridge-python")
tracer = trace.get_tracer(__name__)


class TracedShowcase(ShowcaseHandler):
    @command
    def traced_sum(self, values: list[int]) -> dict[str, Any]:
        """Sum ``values`` inside a span of the handler's own."""
        with tracer.start_as_current_span("handler.sum") as span:
            span.set_attribute("values", len(values))
            return {"sum": sum(values)}
