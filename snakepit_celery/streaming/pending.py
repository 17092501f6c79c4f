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

A message routed to a pool that no live worker hosts stays ``PENDING``
forever (a pool unknown to the caller's config and to every live worker is
refused when sending, :mod:`snakepit_celery.integration.known_pools`; a configured one is
sent, since a worker may be starting). So while the stream has not started,
the reader also asks the live workers' registry (the session leases in Redis,
:meth:`~snakepit_celery.sessions.lease.LeaseTable.live_pools`, one Lua call
per check, about once a second) whether any live worker hosts its pool. Once
it has seen none in every check for :data:`NO_WORKER_GRACE` seconds (5 s; a
live worker's lease, 7 s, is renewed every ``lease_ttl / 4``, so it never lapses
while the worker runs), it ends with a :class:`StreamError` saying that no live
worker hosts the pool. A worker that hosts it but is busy (the task waits in
its queue, or for a thread) is alive and renews its lease: that stream keeps
waiting, up to ``start_timeout``. With ``start_timeout=None`` the reader waits
for a worker as long as it takes.

A revoke sent while *no* worker runs reaches nobody (Celery keeps revokes in
the workers' memory only), and a message behind a long backlog, or read by no
worker while the registry cannot tell (``Stream.follow`` knows no pool), stays
``PENDING``: for those the reader gives up after ``start_timeout``
(:data:`DEFAULT_START_TIMEOUT`) with a :class:`StreamError` naming the queue,
and leaves a cancel request so the stream never runs without its reader.
"""

from __future__ import annotations

import logging
import time

import redis
from celery import Celery, states

from snakepit_celery.errors import SnakepitError, StreamError
from snakepit_celery.streaming.protocol import Outcome

__all__ = [
    "DEFAULT_START_TIMEOUT",
    "NO_WORKER_GRACE",
    "HostWatch",
    "NoBackend",
    "not_started",
    "outcome_of_state",
    "task_outcome",
]

logger = logging.getLogger(__name__)

#: Seconds a reader waits for a stream's relay to start before :class:`StreamError`
#: (the task sits in a queue no worker consumes, or behind a long backlog).
DEFAULT_START_TIMEOUT = 300.0
#: Seconds an unstarted stream's reader must find no live worker hosting its pool,
#: check after check, before it gives up with :class:`StreamError`.
NO_WORKER_GRACE = 5.0


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
    return outcome_of_state(task_id, state, result.result if state in states.READY_STATES else None)


def outcome_of_state(task_id: str, state: str, result: object) -> Outcome | StreamError | None:
    """:func:`task_outcome` from a state already read (``result``: the task's result or error).

    The async reader (:mod:`snakepit_celery.aio`) reads the state on its own connection.
    """
    if state == states.REVOKED:
        return Outcome("cancelled", 0, reason=f"the task was revoked ({_reason(result)})")
    if state == states.FAILURE:
        return Outcome("error", 0, error=_as_library_error(task_id, result))
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


class HostWatch:
    """Whether any live worker hosts a stream's pool, asked while the stream has not started.

    Args:
        client: the streams' Redis (the live workers' registry is in it too).
        prefix: the queue prefix.
        pool: the pool the task was sent to.
        grace: seconds of "no live worker" seen in every check before :meth:`check` fails.
    """

    def __init__(self, client: redis.Redis, prefix: str, pool: str, grace: float = NO_WORKER_GRACE) -> None:
        from snakepit_celery.sessions.lease import LeaseTable  # NOTE: sessions import the tasks

        self.leases = LeaseTable(client, prefix)
        self.pool = pool
        self.grace = grace
        #: Monotonic time since which every check found no live worker hosting the pool.
        self.unhosted_since: float | None = None

    def check(self, task_id: str) -> StreamError | None:
        """One look at the registry: the error once the pool has had no live worker for ``grace`` s.

        Raises:
            redis.RedisError: the registry cannot be read (the reader's own Redis handling applies).
        """
        return self.judge(task_id, self.leases.live_pools())

    def judge(self, task_id: str, hosted: dict[str, list[str]]) -> StreamError | None:
        """:meth:`check` given the live workers' pools (pool -> worker ids) read already."""
        now = time.monotonic()
        if self.pool in hosted:
            self.unhosted_since = None
            return None
        if self.unhosted_since is None:
            self.unhosted_since = now
        if now - self.unhosted_since < self.grace:
            return None
        others = ", ".join(sorted(hosted)) or "none"
        return StreamError(
            f"stream {task_id}: no live worker hosts pool {self.pool!r} (none for {self.grace:.0f}s; "
            f"pools of the live workers: {others}); it was cancelled. Start a worker that hosts "
            f"{self.pool!r}, or pass start_timeout=None to wait for one"
        )
