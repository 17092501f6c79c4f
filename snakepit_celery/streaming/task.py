"""The task ``snakepit.execute_stream``: run a stream command and relay its chunks.

It is routed like ``snakepit.execute`` (same :class:`~snakepit_celery.tasks.PoolTask`
base: the queue of the pool it names). The chunks do not go through the result
backend: the relay writes them to the task's Redis Stream, where
:class:`~snakepit_celery.streaming.client.Stream` reads them. The task's own
result is a small summary, and its state tells Flower how it ended: SUCCESS,
FAILURE with the command's error, or REVOKED when it was cancelled.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import redis
from celery import Task, shared_task
from celery.exceptions import Ignore
from celery.worker import state as worker_state

from snakepit_celery.api import config_for, resolve_redis_url
from snakepit_celery.streaming.relay import ChunkSource, StreamRelay
from snakepit_celery.tasks import PoolTask
from snakepit_celery.worker import current_host

__all__ = ["execute_stream", "relay_client"]

_clients: dict[str, redis.Redis] = {}
_clients_lock = threading.Lock()


def relay_client(url: str) -> redis.Redis:
    """One Redis client per URL for all the relays of this process (a shared connection pool)."""
    with _clients_lock:
        client = _clients.get(url)
        if client is None:
            client = _clients[url] = redis.Redis.from_url(url)
        return client


@shared_task(name="snakepit.execute_stream", base=PoolTask, bind=True)  # type: ignore[untyped-decorator]
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
    app = self.app
    config = config_for(app)
    task_id = self.request.id
    relay = StreamRelay(
        relay_client(resolve_redis_url(app, config)),
        task_id,
        prefix=config.queue_prefix,
        revoked=lambda: task_id in worker_state.revoked,
    )

    def open_source() -> ChunkSource:
        # Inside the relay, so an unknown pool or a full queue becomes the stream's final error.
        target = current_host().pool(pool)
        return target.stream(command, args, timeout=timeout, session_id=session_id, request_id=task_id)

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
