"""Sessions: a caller's warm state, pinned to one worker and one bridge.

The caller's side is :func:`execute_in_session` (and the program helpers); the
worker's side is :class:`SessionStep`, which ``install(app)`` adds. Module map:

* ``ids``, ``store``: session ids and the session data in Redis;
* ``calls``: which tasks run in a session (``execute_in_session``, and
  ``execute_stream``/``execute_batch`` given a ``session_id``), one road for all;
* ``lease``: worker leases and session routes (who owns what);
* ``routing``: validate, route and publish a call (caller side);
* ``manager``, ``consumer``, ``ordering``, ``housekeeping``, ``broker``: the owner;
* ``task``, ``step``: the Celery task and bootstep; ``programs``: program helpers.
"""

from snakepit_celery.sessions.ids import validate_session_id
from snakepit_celery.sessions.programs import create_program, execute_program
from snakepit_celery.sessions.settings import SessionSettings, configure_sessions
from snakepit_celery.sessions.step import SessionStep, session_loader_for
from snakepit_celery.sessions.store import DEFAULT_SESSION_TTL, SessionStore
from snakepit_celery.sessions.task import SessionTask, execute_in_session

__all__ = [
    "DEFAULT_SESSION_TTL",
    "SessionSettings",
    "SessionStep",
    "SessionStore",
    "SessionTask",
    "configure_sessions",
    "create_program",
    "execute_in_session",
    "execute_program",
    "session_loader_for",
    "validate_session_id",
]
