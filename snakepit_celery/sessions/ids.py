"""Session ids become queue names and Redis keys, so they are checked first."""

from __future__ import annotations

import re

from snakepit_celery.errors import InvalidSessionId

__all__ = ["MAX_SESSION_ID_LENGTH", "SESSION_ID_RE", "validate_session_id"]

#: Longest session id; keeps queue names well under RabbitMQ's 255 bytes.
MAX_SESSION_ID_LENGTH = 128
#: Letters, digits and ``_ . @ -``, starting with a letter or digit: safe in
#: AMQP queue names, kombu's Redis keys and our own ``:``-separated keys.
SESSION_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@\-]*$")


def validate_session_id(session_id: object) -> str:
    """Return ``session_id`` if it is fit for a queue name and a Redis key.

    Raises:
        InvalidSessionId: it is not a string, empty, too long, or has other
            characters; the message says which.
    """
    if not isinstance(session_id, str):
        raise InvalidSessionId(f"session id must be a string, not {type(session_id).__name__}")
    if not session_id:
        raise InvalidSessionId("session id must not be empty")
    if len(session_id) > MAX_SESSION_ID_LENGTH:
        raise InvalidSessionId(
            f"session id is {len(session_id)} characters long; the limit is {MAX_SESSION_ID_LENGTH}"
        )
    if not SESSION_ID_RE.match(session_id):
        bad = sorted({c for c in session_id if not re.match(r"[A-Za-z0-9_.@\-]", c)})
        if bad:
            problem = f"has characters that are not allowed: {''.join(bad)!r}"
        else:
            problem = "must start with a letter or digit"
        raise InvalidSessionId(f"session id {session_id!r} {problem} (use letters, digits and _ . @ -)")
    return session_id
