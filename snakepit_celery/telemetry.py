"""Telemetry hooks of the bridge pool: a no-op base class.

The pool calls these methods at the moments an operator cares about (a call
finished, a bridge started or exited, a caller waited in the queue). The base
does nothing, so the pool never checks for ``None``; the Celery layer later
subclasses it to send Celery-style signals and Prometheus metrics.

Hooks run on the caller's thread (or the pool's supervisor thread for
``bridge_*``): keep them quick and never raise from them.
"""

from __future__ import annotations

__all__ = ["OUTCOMES", "Telemetry"]

#: The ``outcome`` values of :meth:`Telemetry.request_finished`.
OUTCOMES = ("ok", "error", "timeout", "crashed", "queue_timeout", "saturated", "cancelled")


class Telemetry:
    """Receives pool events; every method is a no-op here."""

    def request_finished(
        self,
        *,
        pool: str,
        command: str,
        duration: float,
        outcome: str,
        session_id: str | None,
        request_id: str | None,
    ) -> None:
        """A call left the pool; ``outcome`` is one of :data:`OUTCOMES`."""

    def bridge_started(self, *, pool: str, pid: int, startup_time: float) -> None:
        """A bridge reported SERVING ``startup_time`` seconds after its launch."""

    def bridge_exited(self, *, pool: str, pid: int, reason: str) -> None:
        """A bridge process ended (``reason``: exit status, recycling, timeout...)."""

    def queue_wait(self, *, pool: str, wait: float) -> None:
        """A call waited ``wait`` seconds for a free bridge (only when it waited)."""

    def stream_chunks(self, *, pool: str, command: str, count: int) -> None:
        """A stream call ended after delivering ``count`` chunks."""
