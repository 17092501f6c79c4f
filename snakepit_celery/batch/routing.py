"""Where a batch message goes: its pool's queue, or its session's queue.

Without a session, ``execute_batch`` is routed like ``execute`` (the queue of
the pool it names, :class:`~snakepit_celery.integration.tasks.PoolTask`). With
``session_id``, it is a session call like any other: the session router
validates the id, finds (or binds, or wakes) the owner, journals the call on a
Redis broker and publishes it to ``<prefix>.session.<id>``, which only the
owner consumes (:class:`~snakepit_celery.sessions.task.PoolOrSessionTask`);
on the owner it waits its turn among the session's calls
(:func:`~snakepit_celery.sessions.task.session_turn`).
"""

from __future__ import annotations

from snakepit_celery.sessions.task import PoolOrSessionTask

__all__ = ["BatchTask"]


class BatchTask(PoolOrSessionTask):
    """``execute_batch``'s base: acknowledged late, routed to its pool or its session's owner."""

    #: A worker lost mid-batch leaves the message unacknowledged: the broker hands it out again.
    acks_late = True
