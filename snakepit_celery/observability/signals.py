"""Celery-style signals for pool events, and the telemetry that sends them and logs each call.

The seed emits two telemetry events, ``[:snakepit, :worker, :request]`` and
``[:snakepit, :worker, :initialized]``; here they are Celery signals, so users
connect to them exactly as they connect to ``task_success``::

    from snakepit_celery.observability.signals import request_finished

    @request_finished.connect
    def on_call(sender, pool, command, duration, outcome, task_id, session_id, **kwargs):
        if duration > 5:
            log.warning("slow %s on %s: %.1fs", command, pool, duration)

The sender is the pool's name (a string), so ``connect(sender="python")``
listens to one pool only. Receivers run on the worker thread that made the
call (``request_finished``) or on the pool's start thread
(``bridge_initialized``): keep them quick. An exception in a receiver is
logged by Celery and never reaches the call.

Every finished call is also written as one structured log line on the
``snakepit_celery.requests`` logger, with the Celery task id and the session
id, as ``key=value`` text and as ``extra={"snakepit": {...}}`` for JSON
log formatters: DEBUG for a successful call, INFO for a failed one, WARNING
for a crash, a timeout or a refused call.
"""

from __future__ import annotations

import logging

from celery.utils.dispatch import Signal

from snakepit_celery.engine.telemetry import Telemetry

__all__ = ["SignalTelemetry", "bridge_exited", "bridge_initialized", "request_finished", "request_logger"]

#: Sent when a call leaves the pool. Keyword arguments: ``pool``, ``command``,
#: ``duration`` (seconds, float), ``outcome`` (one of
#: :data:`snakepit_celery.engine.telemetry.OUTCOMES`), ``task_id`` and ``session_id``
#: (None when there is none).
request_finished = Signal(name="snakepit.request_finished")

#: Sent when a bridge reports SERVING. Keyword arguments: ``pool``, ``pid``,
#: ``startup_time`` (seconds from launch to SERVING).
bridge_initialized = Signal(name="snakepit.bridge_initialized")

#: Sent when a bridge process ended. Keyword arguments: ``pool``, ``pid``,
#: ``reason`` (human-readable: exit status, recycling, timeout, restart).
bridge_exited = Signal(name="snakepit.bridge_exited")

#: The logger of the per-call lines (``logging.getLogger("snakepit_celery.requests")``).
request_logger = logging.getLogger("snakepit_celery.requests")
_bridge_logger = logging.getLogger("snakepit_celery.bridges")

#: Outcomes logged as warnings: the infrastructure failed, not the user's command.
_WARN_OUTCOMES = frozenset({"crashed", "timeout", "queue_timeout", "saturated"})


class SignalTelemetry(Telemetry):
    """Turns pool events into :data:`request_finished` / :data:`bridge_initialized` /
    :data:`bridge_exited` signals and structured log lines."""

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
        # A successful call is DEBUG: Celery already logs every task at INFO, and
        # a second INFO line per call doubles the log volume of a busy worker.
        if outcome in _WARN_OUTCOMES:
            level = logging.WARNING
        else:
            level = logging.DEBUG if outcome == "ok" else logging.INFO
        if request_logger.isEnabledFor(level):  # the fields are built only for a line that is logged
            fields = {
                "pool": pool,
                "command": command,
                "outcome": outcome,
                "duration": round(duration, 6),
                "task_id": request_id,
                "session_id": session_id,
            }
            request_logger.log(
                level,
                "snakepit request pool=%s command=%s outcome=%s duration=%.6f task_id=%s session_id=%s",
                pool,
                command,
                outcome,
                duration,
                request_id or "-",
                session_id or "-",
                extra={"snakepit": fields},
            )
        request_finished.send(
            sender=pool,
            pool=pool,
            command=command,
            duration=duration,
            outcome=outcome,
            task_id=request_id,
            session_id=session_id,
        )

    def bridge_started(self, *, pool: str, pid: int, startup_time: float) -> None:
        _bridge_logger.info(
            "snakepit bridge initialized pool=%s pid=%d startup_time=%.3f",
            pool,
            pid,
            startup_time,
            extra={"snakepit": {"pool": pool, "pid": pid, "startup_time": startup_time}},
        )
        bridge_initialized.send(sender=pool, pool=pool, pid=pid, startup_time=startup_time)

    def bridge_exited(self, *, pool: str, pid: int, reason: str) -> None:
        _bridge_logger.info(
            "snakepit bridge exited pool=%s pid=%d reason=%s",
            pool,
            pid,
            reason,
            extra={"snakepit": {"pool": pool, "pid": pid, "reason": reason}},
        )
        bridge_exited.send(sender=pool, pool=pool, pid=pid, reason=reason)
