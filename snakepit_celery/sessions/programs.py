"""Programs: a session's built object (a model, a pipeline) kept warm in its bridge.

A program's *spec* is stored in the session's data in Redis before the bridge
builds it, so whichever bridge holds the session later (after a failover, or a
bridge replaced after a crash) rebuilds it from the spec when the session is
initialised there: the stored data travels with InitSession, and the
handler's ``on_session_start`` builds every program in ``data["programs"]``.
The bridge commands are ``create_program(program_id, spec)`` and
``execute_program(program_id, input)`` (the Python showcase handler has both).
"""

from __future__ import annotations

import secrets
from typing import Any

from snakepit_celery.sessions.ids import validate_session_id
from snakepit_celery.sessions.store import SessionStore

__all__ = ["create_program", "execute_program"]


def _app(app: Any) -> Any:
    from snakepit_celery.appconfig import app_or_current

    return app_or_current(app)


def create_program(
    session_id: str,
    spec: dict[str, Any],
    *,
    program_id: str | None = None,
    app: Any = None,
    **options: Any,
) -> Any:
    """Store a program's spec in the session and have its bridge build it.

    Args:
        session_id: the session (created with the default TTL if it is new).
        spec: a JSON object describing the program, as the handler understands it.
        program_id: its id; a new random one when None.
        app: the Celery app (default: the current one).
        options: options of ``execute_in_session`` (``pool``, ``timeout``...).

    Returns:
        The call's ``AsyncResult``; its result has ``program_id``.

    Example::

        r = create_program("ml_session_123", {"signature": "question -> answer"})
        program_id = r.get(timeout=10)["program_id"]
    """
    from snakepit_celery.appconfig import config_for, resolve_redis_url
    from snakepit_celery.sessions.task import execute_in_session

    validate_session_id(session_id)
    if not isinstance(spec, dict):
        from snakepit_celery.errors import InvalidArguments

        raise InvalidArguments(f"a program spec must be a JSON object, not {type(spec).__name__}")
    app = _app(app)
    program_id = program_id or f"prog_{secrets.token_hex(6)}"
    config = config_for(app)
    store = SessionStore(resolve_redis_url(app, config), prefix=config.queue_prefix)
    try:
        store.create_session(session_id)
        store.store_program(session_id, program_id, spec)
    finally:
        store.redis.close()
    task = app.tasks.get(execute_in_session.name, execute_in_session)
    return task.apply_async(
        (session_id, "create_program", {"program_id": program_id, "spec": spec}), options or None
    )


def execute_program(
    session_id: str,
    program_id: str,
    input: Any = None,
    *,
    app: Any = None,
    **options: Any,
) -> Any:
    """Run a program of the session on its bridge; returns the call's ``AsyncResult``."""
    from snakepit_celery.sessions.task import execute_in_session

    app = _app(app)
    task = app.tasks.get(execute_in_session.name, execute_in_session)
    return task.apply_async(
        (session_id, "execute_program", {"program_id": program_id, "input": input}), options or None
    )
