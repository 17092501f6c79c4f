"""Where a batch message goes: its pool's queue, or its session's queue.

Without a session, ``execute_batch`` is routed like ``execute`` (the queue of
the pool it names, :class:`~snakepit_celery.tasks.PoolTask`). With
``session_id``, it must reach the worker that owns the session, whose bridge
holds the session's state: the session router finds (or binds, or wakes) the
owner, and the message goes to ``<prefix>.session.<id>``, which only the
owner consumes, as ``execute_in_session``'s calls do.
"""

from __future__ import annotations

from typing import Any

from celery import Task

from snakepit_celery.tasks import PoolTask

__all__ = ["BatchTask"]


class BatchTask(PoolTask):
    """``execute_batch``'s base: acknowledged late, routed to its pool or its session's owner."""

    #: A worker lost mid-batch leaves the message unacknowledged: the broker hands it out again.
    acks_late = True

    def apply_async(
        self,
        args: Any = None,
        kwargs: dict[str, Any] | None = None,
        task_id: str | None = None,
        producer: Any = None,
        link: Any = None,
        link_error: Any = None,
        shadow: str | None = None,
        **options: Any,
    ) -> Any:
        session_id = (kwargs or {}).get("session_id")
        if session_id is None or self.app.conf.task_always_eager:
            return super().apply_async(args, kwargs, task_id, producer, link, link_error, shadow, **options)
        from snakepit_celery.sessions.ids import validate_session_id
        from snakepit_celery.sessions.routing import router_for, session_queue

        router = router_for(self.app)
        session_id = validate_session_id(session_id)
        found = router.route(session_id, (kwargs or {}).get("pool"))
        kwargs = {**(kwargs or {}), "session_id": session_id, "pool": found.pool}
        queue = session_queue(router.prefix, session_id)
        for key in ("queue", "exchange", "routing_key", "declare"):
            options.pop(key, None)
        with self.app.producer_or_acquire(producer) as prod:
            if prod.connection.transport.driver_type != "redis":
                # NOTE: same channel as the publish, so the broker declares the queue first.
                queue.bind(prod.channel).declare(nowait=True)
            return Task.apply_async(
                self,
                args,
                kwargs,
                task_id,
                prod,
                link,
                link_error,
                shadow,
                queue=queue,
                declare=[],
                **options,
            )
