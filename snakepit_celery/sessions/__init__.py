"""Sessions: a caller's warm state, pinned to one worker and one bridge."""

from snakepit_celery.sessions.ids import validate_session_id
from snakepit_celery.sessions.store import DEFAULT_SESSION_TTL, SessionStore

__all__ = ["DEFAULT_SESSION_TTL", "SessionStore", "validate_session_id"]
