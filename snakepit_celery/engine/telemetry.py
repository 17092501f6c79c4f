"""Telemetry hooks of the bridge pool: a no-op base class.

The pool calls these methods at the moments an operator cares about (a call
finished, a bridge started or exited, a caller waited in the queue). The base
does nothing, so the pool never checks for ``None``; the Celery layer later
subclasses it to send Celery-style signals and Prometheus metrics.

Hooks run on the caller's thread (or the pool's supervisor thread for
``bridge_*``): keep them quick and never raise from them.

:meth:`Telemetry.trace_call` is how tracing reaches the pool without the pool
knowing any tracing library: it returns a :class:`CallTrace` for the call,
told when the call got its bridge and when it ended, whose ``metadata`` goes
with the gRPC call (a W3C ``traceparent``). The base hands out one shared
no-op trace, so an untraced call costs a few method calls
(:mod:`snakepit_celery.observability.tracing` has the OpenTelemetry one).
"""

from __future__ import annotations

__all__ = ["NO_TRACE", "OUTCOMES", "CallTrace", "Telemetry"]

#: The ``outcome`` values of :meth:`Telemetry.request_finished`.
OUTCOMES = ("ok", "error", "timeout", "crashed", "queue_timeout", "saturated", "cancelled")


class CallTrace:
    """The tracing of one pool call; every method is a no-op here.

    The pool calls :meth:`checked_out` each time the call gets a bridge (again
    on a retry), sends :attr:`metadata` with the gRPC call, reports a stream's
    chunks with :meth:`chunks` and ends with exactly one :meth:`end`.
    """

    __slots__ = ()

    #: gRPC metadata for the bridge call (the trace context), or None for none.
    metadata: tuple[tuple[str, str], ...] | None = None

    def checked_out(self, pid: int) -> None:
        """The call has a bridge (process ``pid``): the wait is over, the bridge call begins."""

    def chunks(self, count: int) -> None:
        """A stream delivered ``count`` more chunks."""

    def end(self, outcome: str, error: BaseException | None = None) -> None:
        """The call is over; ``outcome`` is one of :data:`OUTCOMES`, ``error`` what it raised."""


#: The trace of every call that nobody traces.
NO_TRACE = CallTrace()


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

    def trace_call(
        self, *, pool: str, command: str, kind: str, session_id: str | None, request_id: str | None
    ) -> CallTrace:
        """The trace of a call about to wait for a bridge (``kind``: execute, stream or batch).

        Called on the caller's thread, whose tracing context is the call's parent.
        """
        return NO_TRACE
