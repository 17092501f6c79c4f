"""What a reader can learn about a stream whose relay it has not seen (yet).

Until the relay starts, the task's Redis Stream is empty and its ``alive``
key absent: the task may be queued in the broker, held by a worker waiting for
a thread, revoked, failed before its relay started, or sent to a queue no
worker consumes. Redis alone cannot tell these apart, so the reader also asks
the app's result backend for the task's state (one ``GET`` per liveness check
on a Redis backend):

* ``REVOKED``: a worker marked it revoked. Celery 5.5+ workers do so as soon
  as they receive the revoke (``control.revoke``, Flower), even for a message
  still in the broker, as long as at least one worker is up; a worker that
  later receives the message also marks it (and the worker's revoke handler
  in ``streaming.task`` writes the final ``cancelled`` entry then, for readers
  without a result backend). The reader ends with :class:`CommandCancelled`
  and leaves a cancel request, so a worker that never heard of the revoke
  (started after it) ends the stream at once instead of running it.
* ``FAILURE`` without a final entry: the task failed before its relay started
  (bad arguments, no Redis for streams on the worker). The reader ends with
  that error (the class from :mod:`snakepit_celery.errors`, else a
  :class:`StreamError` naming it).
* ``SUCCESS`` without any entry: the worker wrote the stream somewhere the
  reader does not look (another Redis or prefix), or it expired.

A revoke sent while *no* worker runs reaches nobody (Celery keeps revokes in
the workers' memory only), and a message routed to a queue no worker consumes
(a pool no worker hosts) stays ``PENDING`` forever: for those the reader gives
up after ``start_timeout`` (:data:`DEFAULT_START_TIMEOUT`) with a
:class:`StreamError` naming the queue, and leaves a cancel request so the
stream never runs without its reader.
"""

from __future__ import annotations

import logging

from celery import Celery, states

from snakepit_celery.errors import SnakepitError, StreamError
from snakepit_celery.streaming.protocol import Outcome

__all__ = ["DEFAULT_START_TIMEOUT", "NoBackend", "not_started", "task_outcome"]

logger = logging.getLogger(__name__)

#: Seconds a reader waits for a stream's relay to start before :class:`StreamError`
#: (the task sits in a queue no worker consumes, or behind a long backlog).
DEFAULT_START_TIMEOUT = 300.0


class NoBackend(Exception):
    """The app has no result backend to ask (the reader relies on Redis alone)."""


def task_outcome(app: Celery, task_id: str) -> Outcome | StreamError | None:
    """How the task of a stream that has no entry ended, per the result backend.

    Returns:
        An :class:`Outcome` (``cancelled`` or ``error``) for a task that ended
        without relaying; a :class:`StreamError` for one that succeeded but
        whose stream this reader cannot see; None while it is not ready.

    Raises:
        NoBackend: the app has no result backend.
    """
    result = app.AsyncResult(task_id)
    try:
        state = result.state
    except NotImplementedError:  # DisabledBackend
        raise NoBackend() from None
    except Exception as exc:  # a backend outage must not end a stream that may be fine
        logger.warning("stream %s: cannot read the task's state: %s", task_id, exc)
        return None
    if state == states.REVOKED:
        return Outcome("cancelled", 0, reason=f"the task was revoked ({_reason(result.result)})")
    if state == states.FAILURE:
        return Outcome("error", 0, error=_as_library_error(task_id, result.result))
    if state == states.SUCCESS:
        return StreamError(
            f"stream {task_id}: the task succeeded but its stream has no entry in this reader's "
            "Redis: the worker writes streams to another Redis or key prefix (SNAKEPIT_REDIS_URL, "
            "queue_prefix), or the stream expired"
        )
    return None


def _reason(raw: object) -> str:
    text = str(raw or "").strip()
    return text or "revoked"


def _as_library_error(task_id: str, raw: object) -> SnakepitError:
    if isinstance(raw, SnakepitError):
        return raw
    kind = type(raw).__name__ if isinstance(raw, BaseException) else "unknown error"
    return StreamError(f"stream {task_id}: the task failed before relaying anything: {kind}: {raw}")


def not_started(task_id: str, waited: float, queue: str | None) -> StreamError:
    """The error of a reader that gave up waiting for the stream to start."""
    where = f"queue {queue!r}" if queue else "its queue"
    return StreamError(
        f"stream {task_id}: not started within {waited:.0f}s: no worker took the task from {where} "
        "(is a worker up that hosts this pool? a long backlog?); it was cancelled. "
        "Pass start_timeout=None to wait longer"
    )
