"""The bridge handler of ``benchmarks/streaming.py``: the showcase plus a payload stream.

Loaded by the benchmark's bridges as ``stream_handler:BenchHandler`` (with
``benchmarks/`` on their PYTHONPATH).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from snakepit_bridge import command
from snakepit_bridge.showcase import ShowcaseHandler


class BenchHandler(ShowcaseHandler):
    @command
    def payload_stream(self, count: int = 1000, size: int = 1024) -> Iterator[dict[str, Any]]:
        """``count`` chunks of about ``size`` bytes of JSON each, as fast as they are taken."""
        body = "x" * max(0, size - 24)
        for i in range(count):
            yield {"i": i, "data": body}
