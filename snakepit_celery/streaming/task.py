"""The task ``snakepit.execute_stream``: run a stream command and relay its chunks.

It is routed like ``snakepit.execute`` (the queue of the pool it names) or,
given ``session_id``, like ``execute_in_session``: to the session's queue, and
on its owner it runs in its turn among the session's calls
(:class:`~snakepit_celery.sessions.task.PoolOrSessionTask`). The chunks do
not go through the result backend: the relay writes them to the task's Redis Stream, where
:class:`~snakepit_celery.streaming.client.Stream` reads them. The task's own
result is a small summary, and its state tells Flower how it ended: SUCCESS,
FAILURE with the command's error, or REVOKED when it was cancelled.

A stream must end for its readers even when its relay never runs: a
``task_revoked`` handler writes the final ``cancelled`` entry when the worker
drops a revoked message (revoked while queued, or expired), and a task that
fails before its relay starts writes its error as the final entry when it
still can (with no Redis at all, readers learn it from the result backend:
see ``pending``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from contextlib import nullcontext
from typing import Any

import redis
from celery import Celery, Task, shared_task, signals, states
from celery.exceptions import Ignore
from celery.worker import state as worker_state

from snakepit_celery.appconfig import config_for, resolve_redis_url
from snakepit_celery.errors import SnakepitError, StreamError, WorkerLost
from snakepit_celery.integration.worker import current_host
from snakepit_celery.observability import tracing
from snakepit_celery.recovery import begin_now
from snakepit_celery.sessions.task import PoolOrSessionTask, session_turn
from snakepit_celery.streaming.protocol import Outcome, StreamKeys, end_unstarted
from snakepit_celery.streaming.relay import StreamRelay
from snakepit_celery.streaming.sources import ChunkSource

__all__ = ["execute_stream", "relay_client"]

TASK_NAME = "snakepit.execute_stream"

logger = logging.getLogger(__name__)

_clients: dict[str, redis.Redis] = {}
_clients_lock = threading.Lock()


def relay_client(url: str) -> redis.Redis:
    """One Redis client per URL for all the relays of this process (a shared connection pool)."""
    with _clients_lock:
        client = _clients.get(url)
        if client is None:
            client = _clients[url] = redis.Redis.from_url(url)
        return client


@shared_task(name=TASK_NAME, base=PoolOrSessionTask, bind=True)  # type: ignore[untyped-decorator]
def execute_stream(
    self: Task,
    command: str,
    args: Any = None,
    *,
    pool: str | None = None,
    session_id: str | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Run the stream command ``command`` on a bridge of ``pool``, relaying every chunk.

    Args:
        command: a stream command, e.g. ``"process_large_dataset"``.
        args: its JSON arguments.
        pool: the named pool; the default pool when None.
        session_id: run on the bridge the session is bound to.
        timeout: hard limit of the whole stream in seconds.

    Returns:
        ``{"outcome": "ok", "chunks": n}``.

    Raises:
        ExecutionError, InfrastructureError: as ``execute`` does, after the
            final chunk carrying the same error was relayed.
    """
    task_id = self.request.id
    try:
        begin_now(self)  # a worker's death: see recovery; before anything is relayed
    except WorkerLost as exc:
        _end_early(self.app, task_id, Outcome("error", 0, error=exc))  # readers of a fresh stream
        raise
    try:
        # Revoked in the backend but unknown here: this worker started after the revoke.
        revoked_before = _backend_state(self) == states.REVOKED
        relay = StreamRelay(
            _client_for(self.app),
            task_id,
            prefix=config_for(self.app).queue_prefix,
            revoked=lambda: revoked_before or task_id in worker_state.revoked,
        )
    except Exception as exc:
        error = exc if isinstance(exc, SnakepitError) else StreamError(f"{type(exc).__name__}: {exc}")
        _end_early(self.app, task_id, Outcome("error", 0, error=error))
        raise

    traced = tracing.capture()  # the relay opens the source on a thread of its own

    def open_source() -> ChunkSource:
        # Inside the relay, so an unknown pool or a full queue becomes the stream's final error.
        target = current_host().pool(pool)
        with tracing.attached(traced):
            return target.stream(command, args, timeout=timeout, session_id=session_id, request_id=task_id)

    # A session's stream is a session call: it runs in its turn, on the session's owner.
    with nullcontext() if session_id is None else session_turn(self, session_id):
        outcome = relay.run(open_source)
    if outcome.status == "error":
        assert outcome.error is not None
        raise outcome.error
    if outcome.status == "cancelled":
        _mark_revoked(self, outcome.reason)
        raise Ignore()
    return {"outcome": outcome.status, "chunks": outcome.chunks}


def _mark_revoked(task: Task, reason: str) -> None:
    """Record REVOKED (Flower shows a cancelled stream as revoked, not failed)."""
    with contextlib.suppress(NotImplementedError):  # no result backend configured
        task.backend.mark_as_revoked(task.request.id, reason, request=task.request)


def _client_for(app: Celery) -> redis.Redis:
    return relay_client(resolve_redis_url(app, config_for(app)))


def _backend_state(task: Task) -> str | None:
    """The task's state in the result backend; None when there is none or it cannot say."""
    try:
        return str(task.backend.get_state(task.request.id))
    except Exception:  # no backend (NotImplementedError), or it is down: the stream goes on
        return None


def _end_early(app: Celery, task_id: str, outcome: Outcome) -> None:
    """Write ``outcome`` as the final entry of a stream whose relay never ran, if Redis allows."""
    try:
        keys = StreamKeys.for_task(task_id, config_for(app).queue_prefix)
        end_unstarted(_client_for(app), keys, outcome)
    except Exception as exc:  # readers learn it from the result backend instead
        logger.warning("stream %s: cannot write its final entry: %s", task_id, exc)


def _end_revoked_stream(
    sender: Task | None = None, request: Any = None, expired: bool = False, **_: Any
) -> None:
    """End the stream of a revoked stream task for its readers (its relay may never run).

    Runs in the worker when it drops a revoked (or expired) message; for a
    stream whose relay already wrote, the relay's own final entry stands.
    """
    task_id = getattr(request, "id", None)
    if sender is None or getattr(sender, "name", None) != TASK_NAME or not task_id:
        return
    reason = "the task expired" if expired else "the task was revoked"
    _end_early(sender.app, task_id, Outcome("cancelled", 0, reason=reason))


signals.task_revoked.connect(_end_revoked_stream, weak=False)
