"""Calls of one session run one at a time, in the order the queue delivered them.

A worker prefetches several messages of a session queue and the threads pool
starts them on several threads at once, so arrival order alone does not keep
them in order. The consumer thread sees messages strictly in queue order
(``task_received``); it gives each session call a place in its session's line
there, and the task waits for its turn before it touches the bridge. A call
that never runs (revoked before it started) leaves the line by the
``task_revoked`` signal, so the next one is not held up.
"""

from __future__ import annotations

import threading
from collections import deque

__all__ = ["SessionLines"]


class SessionLines:
    """One FIFO line of task ids per session."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._lines: dict[str, deque[str]] = {}

    def join(self, session_id: str, task_id: str) -> None:
        """Put a received call at the end of its session's line."""
        with self._cond:
            self._lines.setdefault(session_id, deque()).append(task_id)

    def wait_turn(self, session_id: str, task_id: str, timeout: float | None = None) -> bool:
        """Block until ``task_id`` is first in its line.

        Returns:
            True when it is its turn (or it was never in a line, e.g. a call run
            eagerly); False on timeout.
        """
        with self._cond:
            line = self._lines.get(session_id)
            if line is None or task_id not in line:
                return True
            return self._cond.wait_for(lambda: not line or line[0] == task_id, timeout=timeout)

    def leave(self, session_id: str, task_id: str) -> None:
        """Take a finished (or revoked) call out of its line."""
        with self._cond:
            line = self._lines.get(session_id)
            if line is None:
                return
            try:
                line.remove(task_id)
            except ValueError:
                return
            if not line:
                del self._lines[session_id]
            self._cond.notify_all()

    def waiting(self, session_id: str) -> int:
        """Calls of the session received and not finished."""
        with self._cond:
            return len(self._lines.get(session_id, ()))

    def drop(self, session_id: str) -> None:
        """Forget a session's line (it left this worker)."""
        with self._cond:
            line = self._lines.pop(session_id, None)
            if line is not None:
                line.clear()  # its waiters go ahead rather than wait for ever
            self._cond.notify_all()
