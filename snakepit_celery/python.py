"""Call any allowed Python function in a bridge, like the seed's ``Snakepit.Python.call``.

The bridge side is ``snakepit_bridge.pycall`` (commands ``python.call``,
``python.retrieve``, ``python.release``). A module is importable there only
when the pool's ``allowed_modules`` setting names it, so a caller cannot make
a worker import arbitrary code.

A stored object (``store_as=``) lives in a session's state on one bridge, so
storing needs a ``session_id``: the session's calls all reach that bridge.

Example::

    from snakepit_celery import python

    python.call("numpy.array", [[1, 2, 3]], session_id="s1", store_as="arr").get()
    python.call_method("arr", "sum", session_id="s1").get()      # 6
    python.retrieve("arr", session_id="s1").get()                 # [1, 2, 3]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Celery
from celery.result import AsyncResult

from snakepit_celery.errors import InvalidArguments

__all__ = ["call", "call_method", "release", "retrieve"]


def _send(
    command: str,
    payload: dict[str, Any],
    session_id: str | None,
    task_kwargs: dict[str, Any],
    app: Celery | None,
) -> AsyncResult:
    # The tasks are imported here: the sessions task pulls in the worker side.
    from snakepit_celery.integration.tasks import execute
    from snakepit_celery.sessions.task import execute_in_session

    task = execute_in_session if session_id is not None else execute
    if app is not None:
        task = app.tasks[task.name]
    args = (command, payload) if session_id is None else (session_id, command, payload)
    return task.apply_async(args, task_kwargs)


def call(
    target: str,
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    session_id: str | None = None,
    store_as: str | None = None,
    pool: str | None = None,
    timeout: float | None = None,
    app: Celery | None = None,
) -> AsyncResult:
    """Call ``target`` (``"pkg.mod.func"`` or ``"pkg.mod.Class"``) in a bridge.

    Args:
        target: the dotted path; its module must be in the pool's
            ``allowed_modules``. ``"stored.<name>.<method>"`` calls a method of
            a stored object (see :func:`call_method`).
        args: positional arguments (JSON values).
        kwargs: keyword arguments (JSON values).
        session_id: run in this session (needed with ``store_as``).
        store_as: keep the returned object in the session under this name and
            answer a description of it instead of its value.
        pool: the pool (default: the default pool).
        timeout: hard limit in seconds.
        app: the Celery app to send with (default: the current app).

    Returns:
        The Celery ``AsyncResult``; ``.get()`` is the JSON result (or, with
        ``store_as``, ``{"stored_as", "type", "repr", "callable"}``).

    Raises:
        InvalidArguments: ``store_as`` without a ``session_id``.
    """
    if store_as is not None and session_id is None:
        raise InvalidArguments("store_as needs a session_id: a stored object lives in one session's bridge")
    payload: dict[str, Any] = {"target": target, "args": list(args), "kwargs": dict(kwargs or {})}
    if store_as is not None:
        payload["store_as"] = store_as
    return _send("python.call", payload, session_id, {"pool": pool, "timeout": timeout}, app)


def call_method(
    name: str,
    method: str,
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    session_id: str,
    store_as: str | None = None,
    pool: str | None = None,
    timeout: float | None = None,
    app: Celery | None = None,
) -> AsyncResult:
    """Call ``method`` of the object stored as ``name`` in the session."""
    return call(
        f"stored.{name}.{method}",
        args,
        kwargs,
        session_id=session_id,
        store_as=store_as,
        pool=pool,
        timeout=timeout,
        app=app,
    )


def retrieve(
    name: str, *, session_id: str, pool: str | None = None, app: Celery | None = None
) -> AsyncResult:
    """The JSON value of the object stored as ``name``."""
    return _send("python.retrieve", {"name": name}, session_id, {"pool": pool}, app)


def release(name: str, *, session_id: str, pool: str | None = None, app: Celery | None = None) -> AsyncResult:
    """Drop the object stored as ``name`` from the session."""
    return _send("python.release", {"name": name}, session_id, {"pool": pool}, app)
