"""Per-session state of one bridge, and the handler's session hooks.

The pool pins a session to one bridge and sends InitSession (with the stored
session data) before its first call; a call naming a session the bridge has
not seen starts it too (with no data), so the hooks run exactly once per
session per bridge either way.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from snakepit_bridge.commands import Failure, failure_from
from snakepit_bridge.handler import BridgeStats, Handler

__all__ = ["SessionTable"]

log = logging.getLogger(__name__)


class SessionTable:
    """Session id -> state dict, plus the one dict stateless calls share."""

    def __init__(self, handler: Handler, stats: BridgeStats) -> None:
        self._handler = handler
        self._stats = stats
        self._states: dict[str, dict[str, Any]] = {}
        # NOTE: held while on_session_start runs, so a session's hook has run
        # before any call sees its state.
        self._lock = threading.Lock()
        #: The state of stateless calls.
        self.global_state: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._states

    def state_for(self, session_id: str) -> dict[str, Any]:
        """The session's state, starting the session (with no data) if it is new."""
        state = self._states.get(session_id)
        if state is None:
            state = self.start(session_id, None)
        return state

    def start(self, session_id: str, data: Any) -> dict[str, Any]:
        """Start the session unless it runs already; return its state.

        Raises:
            Failure: SESSION_ERROR when ``on_session_start`` raised (the session
                is then not started).
        """
        with self._lock:
            state = self._states.get(session_id)
            if state is not None:
                return state
            state = {}
            try:
                self._handler.on_session_start(session_id, state, data)
            except Exception as exc:
                failure = failure_from(exc, "on_session_start")
                raise Failure(
                    "SESSION_ERROR",
                    failure.type_name,
                    f"on_session_start failed for session {session_id!r}: {failure.message}",
                    failure.traceback,
                ) from None
            self._states[session_id] = state
            self._stats.sessions_started += 1
            self._stats.sessions_active = len(self._states)
            return state

    def end(self, session_id: str) -> bool:
        """End the session, running ``on_session_end``; False if it was unknown.

        Raises:
            Failure: SESSION_ERROR when ``on_session_end`` raised (the session is
                dropped all the same).
        """
        with self._lock:
            state = self._states.pop(session_id, None)
            if state is None:
                return False
            self._stats.sessions_ended += 1
            self._stats.sessions_active = len(self._states)
        try:
            self._handler.on_session_end(session_id, state)
        except Exception as exc:
            failure = failure_from(exc, "on_session_end")
            raise Failure(
                "SESSION_ERROR",
                failure.type_name,
                f"on_session_end failed for session {session_id!r}: {failure.message}",
                failure.traceback,
            ) from None
        return True

    def end_all(self) -> None:
        """End every session (the bridge is stopping); hook errors are logged."""
        for session_id in list(self._states):
            try:
                self.end(session_id)
            except Failure as failure:
                log.warning("%s", failure.message)
