"""The task ``snakepit.execute_in_session``, and the base of tasks that may run in a session.

``execute_in_session``'s messages are acknowledged late, after the call: a call
that was waiting (prefetched, or in line behind an earlier call of its
session) when its owner died is not lost but redelivered to the worker that
takes the session over. A redelivered call whose result is already stored is
not run again.

``execute_stream`` and ``execute_batch`` run in a session when given
``session_id``: :class:`PoolOrSessionTask` sends them through the same router,
and their bodies run inside :func:`session_turn`, exactly as a call of
``execute_in_session`` does (see :mod:`.calls`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from celery import Task, shared_task

from snakepit_celery.errors import ExecutionError, SessionError
from snakepit_celery.integration.tasks import PoolTask
from snakepit_celery.sessions.calls import TASK_NAME
from snakepit_celery.sessions.routing import router_for
from snakepit_celery.sessions.step import current_manager

__all__ = ["PoolOrSessionTask", "SessionTask", "execute_in_session", "session_turn"]


def session_turn(task: Task, session_id: str) -> AbstractContextManager[str]:
    """Run a session call's body in its turn on the session's owner; yields the session's pool.

    Raises:
        ConfigurationError: not in a worker with sessions.
        Reject, Ignore: see :meth:`~snakepit_celery.sessions.manager.SessionManager.turn`.
    """
    return current_manager().turn(task, session_id)


class PoolOrSessionTask(PoolTask):
    """Routed like ``execute`` (its pool's queue) without ``session_id``; with one,
    to the session's queue through the session router, as ``execute_in_session`` is.

    The task's body must then run inside :func:`session_turn`.
    """

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
        if (kwargs or {}).get("session_id") is None or self.app.conf.task_always_eager:
            return super().apply_async(args, kwargs, task_id, producer, link, link_error, shadow, **options)
        return router_for(self.app).send(
            self,
            args,
            kwargs,
            producer=producer,
            task_id=task_id,
            link=link,
            link_error=link_error,
            shadow=shadow,
            **options,
        )


class SessionTask(Task):  # type: ignore[misc]
    """A task whose every message goes to its session's own queue.

    :meth:`apply_async` validates the session id and the call, routes the
    session (binding a new one to a worker) and publishes to
    ``<prefix>.session.<id>``; ``delay``, signatures, groups and chords all
    come through it. Any ``queue``/``exchange``/``routing_key`` given is ignored.
    """

    acks_late = True
    #: Errors of the command itself are expected outcomes: logged without a traceback.
    throws = (ExecutionError, SessionError)

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
        if self.app.conf.task_always_eager:
            return super().apply_async(args, kwargs, task_id, producer, link, link_error, shadow, **options)
        return router_for(self.app).send(
            self,
            args,
            kwargs,
            producer=producer,
            task_id=task_id,
            link=link,
            link_error=link_error,
            shadow=shadow,
            **options,
        )


@shared_task(name=TASK_NAME, base=SessionTask, bind=True)  # type: ignore[untyped-decorator]
def execute_in_session(
    self: Task,
    session_id: str,
    command: str,
    args: Any = None,
    *,
    pool: str | None = None,
    timeout: float | None = None,
    idempotent: bool = False,
) -> Any:
    """Run ``command`` on the bridge that holds session ``session_id``.

    The first call binds the session to a worker and a bridge; every later
    call runs there, in the order sent, and sees the state the earlier ones
    left (``self.context.session`` in a Python handler).

    Args:
        session_id: the caller's session id (letters, digits, ``_ . @ -``, at
            most 128); the bridge receives it as is.
        command: the command name, e.g. ``"increment_counter"``.
        args: a JSON value (usually an object).
        pool: the pool for a new session (default: the config's first); a bound
            session keeps its pool, and naming another is an error.
        timeout: hard limit in seconds, as for ``execute``.
        idempotent: as for ``execute``.

    Raises:
        InvalidSessionId: at sending, before anything is sent.
        SessionError: the session is bound to another pool.
        ExecutionError, InfrastructureError: as for ``execute``.

    Example::

        execute_in_session.delay("user_123", "set_counter", {"value": 1}).get(timeout=10)
    """
    return current_manager().run_call(
        self, session_id, command, args, pool=pool, timeout=timeout, idempotent=idempotent
    )
