"""``aexecute`` and ``aexecute_in_session``: the sync calls for an event loop.

Sending is the sync API's own (``PoolTask`` / ``SessionTask.apply_async``:
the same routing, pool check, session binding and payload limits, so the same
errors at sending); a publish to the broker is a short write on the loop's
thread. Waiting is :class:`~snakepit_celery.aio.results.ResultWaiter`'s: no
thread, no polling, one pub/sub connection for every awaiting call of the loop.

Cancelling the awaiting coroutine (``task.cancel()``, ``asyncio.timeout``, a
client that went away from a FastAPI endpoint) revokes the call: a call still
queued never runs, and a session call leaves its session's line. The worker's
``revoke`` also reaches a call it has received (:mod:`snakepit_celery.engine.cancels`):
one waiting for a bridge never starts, and one a bridge is running has its gRPC
call cancelled, which the bridge's handler sees (``context.cancelled`` in
Python, ``ctx.signal`` in Node.js); a bridge whose handler ignores it is
replaced after ``cancel_grace``, as for a closed stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.utils import uuid

from snakepit_celery.aio.results import waiter_for
from snakepit_celery.appconfig import app_or_current

__all__ = ["aexecute", "aexecute_in_session", "revoke_quietly", "sending_awaited"]

_awaited: contextvars.ContextVar[bool] = contextvars.ContextVar("snakepit_aio_awaited", default=False)


@contextlib.contextmanager
def sending_awaited(app: Celery) -> Iterator[None]:
    """Send calls whose results the loop awaits itself.

    NOTE: Celery's Redis backend subscribes the sending thread's *sync* result
    consumer to every task it sends (``on_task_call``), ready for a ``.get()``;
    an async caller never makes one, so that consumer would collect every
    result's message unread on a pub/sub socket nobody drains. Inside this
    block the sending thread's backend skips that subscription (other sends,
    in this thread or others, keep it).
    """
    backend = app.backend  # Celery keeps one per thread: the loop thread's
    if not getattr(backend, "_snakepit_aio", False):
        subscribe = backend.on_task_call

        def on_task_call(producer: Any, task_id: str) -> None:
            if not _awaited.get():
                subscribe(producer, task_id)

        backend.on_task_call = on_task_call
        backend._snakepit_aio = True
    token = _awaited.set(True)
    try:
        yield
    finally:
        _awaited.reset(token)


def revoke_quietly(app: Celery, task_id: str) -> None:
    """Revoke a call nobody awaits any more; a broker that cannot be reached is no new error."""
    with contextlib.suppress(Exception):
        app.control.revoke(task_id)


async def _send_and_wait(
    app: Celery, task_name: str, args: tuple[Any, ...], kwargs: dict[str, Any], wait: float | None
) -> Any:
    waiter = waiter_for(app)  # a backend that is not Redis fails here, before anything is sent
    task_id = uuid()
    with sending_awaited(app):
        app.tasks[task_name].apply_async(args, kwargs, task_id=task_id)
    try:
        return await waiter.wait(task_id, wait)
    except (asyncio.CancelledError, CeleryTimeoutError):
        revoke_quietly(app, task_id)  # cancelled, or given up: nobody reads it
        raise


async def aexecute(
    command: str,
    args: Any = None,
    *,
    pool: str | None = None,
    timeout: float | None = None,
    idempotent: bool = False,
    wait: float | None = None,
    app: Celery | None = None,
) -> Any:
    """Run ``command`` on a bridge of ``pool`` and return its result, awaiting it on the loop.

    ``await aexecute(...)`` is ``execute.delay(...).get()`` without a thread:
    the same task, the same result types (``bytes``, numpy arrays, big
    payloads by reference), the same error classes.

    Args:
        command: the command name, e.g. ``"compute"``.
        args: a JSON value (usually an object); ``bytes`` inside travel as bytes.
        pool: the named pool; the default pool when None.
        timeout: hard limit on the worker in seconds, as ``execute``'s: past it
            the bridge is killed and replaced and the call fails with ``CommandTimeout``.
        idempotent: as ``execute``'s.
        wait: seconds to await the result before ``celery.exceptions.TimeoutError``
            (the call is then revoked); None awaits as long as it takes (bound it
            with ``asyncio.timeout()`` as well: cancelling revokes it too).
        app: the Celery app; None means the current app.

    Returns:
        The command's result, as the bridge returned it.

    Raises:
        ConfigurationError: the app's result backend is not Redis (names ``result_backend``).
        PoolNotFound: no such pool (when sending, as ``execute.delay`` does).
        ExecutionError: the command failed (``CommandError``, ``UnknownCommand``, ``CommandTimeout``...).
        InfrastructureError: the pool or a bridge failed; ``retryable`` is True.
        celery.exceptions.TimeoutError: no result within ``wait``.

    Example::

        result = await aexecute("compute", {"operation": "add", "a": 5, "b": 3})
        result["result"]  # 8
    """
    from snakepit_celery.integration import tasks as _registers  # noqa: F401  (snakepit.execute)

    app = app_or_current(app)
    kwargs = {"pool": pool, "timeout": timeout, "idempotent": idempotent}
    return await _send_and_wait(app, "snakepit.execute", (command, args), kwargs, wait)


async def aexecute_in_session(
    session_id: str,
    command: str,
    args: Any = None,
    *,
    pool: str | None = None,
    timeout: float | None = None,
    idempotent: bool = False,
    wait: float | None = None,
    app: Celery | None = None,
) -> Any:
    """Run ``command`` on the bridge that holds session ``session_id``, awaiting it on the loop.

    ``await aexecute_in_session(...)`` is ``execute_in_session.delay(...).get()``
    without a thread: the first call binds the session, later ones see the state
    the earlier ones left, in the order sent.

    Args:
        session_id: the caller's session id (letters, digits, ``_ . @ -``, at most 128).
        command: the command name, e.g. ``"increment_counter"``.
        args: a JSON value (usually an object).
        pool: the pool for a new session (default: the config's first).
        timeout: hard limit on the worker in seconds, as for ``aexecute``.
        idempotent: as for ``execute_in_session``.
        wait: seconds to await the result, as for ``aexecute``.
        app: the Celery app; None means the current app.

    Returns:
        The command's result.

    Raises:
        ConfigurationError: the app's result backend is not Redis.
        InvalidSessionId: at sending, before anything is sent.
        SessionError: the session is bound to another pool.
        ExecutionError, InfrastructureError: as for ``aexecute``.
        celery.exceptions.TimeoutError: no result within ``wait``.

    Example::

        await aexecute_in_session("user_123", "set_counter", {"value": 1})
    """
    from snakepit_celery.sessions import task as _registers  # noqa: F401  (snakepit.execute_in_session)

    app = app_or_current(app)
    kwargs = {"pool": pool, "timeout": timeout, "idempotent": idempotent}
    return await _send_and_wait(app, "snakepit.execute_in_session", (session_id, command, args), kwargs, wait)
