"""The caller side of a stream: read a task's chunks from Redis, in order, once each.

:class:`Stream` needs only Redis and a task id, so a web view can follow a
stream that another process started (``Stream.follow``), and an SSE endpoint
can resume after the last event id its browser saw (``after=``).

This module is the public object: its options, iteration, the final chunk,
cancel and close. How it reads Redis (``XREAD BLOCK`` from its own position,
flat memory, the checks that end a stream whose relay died or never started)
is :class:`~snakepit_celery.streaming.reader.StreamReader`'s.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

import redis
from celery import Celery

from snakepit_celery.appconfig import app_or_current
from snakepit_celery.errors import CommandCancelled, SnakepitError
from snakepit_celery.streaming.connection import redis_client, stream_prefix
from snakepit_celery.streaming.pending import DEFAULT_START_TIMEOUT
from snakepit_celery.streaming.protocol import Outcome
from snakepit_celery.streaming.reader import DATA, FAIL, FINAL, READ_COUNT, REDIS_GRACE, StreamReader

# READ_COUNT and REDIS_GRACE are the reader's, importable from here as before.
__all__ = ["DEFAULT_CANCEL_WAIT", "READ_COUNT", "REDIS_GRACE", "Stream"]

#: Seconds a cancelled stream waits for the worker's final entry before ending by itself.
DEFAULT_CANCEL_WAIT = 5.0


class Stream(StreamReader):
    """The chunks of one streaming task, as an iterator and a context manager.

    Iterating yields each chunk the command produced, in order, then a final
    chunk ``{"is_final": True, "outcome": "ok", "chunks": n}``; when the
    command marked its own last chunk ``"is_final": True`` (the showcase
    commands do), that chunk is the final one, with ``"outcome"`` added, so
    exactly one chunk says ``is_final``. If the command
    failed, iteration raises the error (the class from
    :mod:`snakepit_celery.errors`, e.g. :class:`CommandError` with the remote
    type and message) right after the chunks produced before it. If the stream
    was cancelled by someone else (``revoke``, another caller), it raises
    :class:`CommandCancelled`; if this object cancelled it, the final chunk
    has ``"outcome": "cancelled"`` and iteration ends quietly.

    Args:
        client: a Redis client; its socket timeout must exceed ``block``.
        task_id: the streaming task's id.
        prefix: the key prefix (the config's ``queue_prefix``).
        after: the sequence number of the last chunk already seen (resume);
            None starts at the first chunk.
        on_chunk: called with every chunk (the final one too) as it is read.
        idle_timeout: seconds without any entry before :class:`StreamError`;
            None waits as long as the task is queued or its relay is alive.
        start_timeout: seconds to wait for the relay to start (the task to
            leave its queue) before :class:`StreamError`, leaving a cancel
            request behind; None waits as long as the task is pending.
        app: the Celery app whose result backend tells a task revoked or
            failed before its relay started (:class:`CommandCancelled`, the
            task's error); None relies on Redis alone (``start_timeout``).
        cancel_wait: seconds to wait for the final entry after :meth:`cancel`.
        skip_missed: when the reader fell behind the replay buffer, go on
            from the oldest kept chunk (counted in :attr:`missed`) instead of
            raising :class:`StreamError`.
        block: seconds one ``XREAD`` blocks before the liveness checks.
        pace: acknowledge the read position so the relay never runs more than
            its ``reader_lead`` ahead: no chunk is lost however slowly this
            reader goes, as long as it keeps reading. ``stream()`` sets it for
            the reader it returns; at most one reader per stream should pace.
        owns_client: close ``client`` in :meth:`close`.
    """

    def __init__(
        self,
        client: redis.Redis,
        task_id: str,
        *,
        prefix: str = "snakepit",
        after: int | None = None,
        on_chunk: Callable[[dict[str, Any]], object] | None = None,
        idle_timeout: float | None = None,
        start_timeout: float | None = DEFAULT_START_TIMEOUT,
        app: Celery | None = None,
        cancel_wait: float = DEFAULT_CANCEL_WAIT,
        skip_missed: bool = False,
        block: float = 1.0,
        pace: bool = False,
        owns_client: bool = False,
    ) -> None:
        super().__init__(
            client,
            task_id,
            prefix=prefix,
            after=after,
            idle_timeout=idle_timeout,
            start_timeout=start_timeout,
            app=app,
            cancel_wait=cancel_wait,
            skip_missed=skip_missed,
            block=block,
            pace=pace,
        )
        self.on_chunk = on_chunk
        self.owns_client = owns_client
        #: Sequence number of the last chunk returned (-1 before the first).
        self.last_seq = -1 if after is None else int(after)
        self._outcome: Outcome | None = None
        self._final: dict[str, Any] | None = None
        self._done = False

    @classmethod
    def follow(
        cls, task_id: str, *, app: Celery | None = None, redis_url: str | None = None, **options: Any
    ) -> Stream:
        """Open the stream of a task that another process started, from its id alone.

        Args:
            task_id: the streaming task's id (``Stream.task_id`` of the starter).
            app: the Celery app (for its Redis and key prefix); None: the current app.
            redis_url: the Redis of the streams; None resolves it from ``app`` the
                way ``stream()`` does (``SNAKEPIT_REDIS_URL``, the app's backend or broker).
            **options: as for :class:`Stream` (``after=``, ``on_chunk=``...).

        Example::

            with Stream.follow(task_id, after=last_event_id) as s:
                for chunk in s:
                    send_sse(s.last_seq, chunk)
        """
        options.setdefault("prefix", stream_prefix(app))
        options.setdefault("app", app_or_current(app))
        return cls(redis_client(redis_url, app), task_id, **options)

    # -- state ------------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """True once the final chunk has been returned (or the stream failed)."""
        return self._done

    @property
    def outcome(self) -> str | None:
        """``ok``, ``error`` or ``cancelled`` once known; None while running."""
        return self._outcome.status if self._outcome else None

    @property
    def result(self) -> dict[str, Any] | None:
        """The final chunk (``is_final``, ``outcome``, ``chunks``, ``error``), once read."""
        return self._final

    @property
    def error(self) -> SnakepitError | None:
        """The command's error when the outcome is ``error``."""
        return self._outcome.error if self._outcome else None

    # -- iteration --------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        while not self._ready:
            if self._done:
                raise StopIteration
            self._fetch()
        kind, seq, item = self._ready.popleft()
        if kind == FAIL:
            self._done = True
            raise item
        if kind == DATA:
            self.last_seq = seq
            if not (isinstance(item, dict) and item.get("is_final") is True and self._ends_ok()):
                if self.on_chunk is not None:
                    self.on_chunk(item)
                return item  # type: ignore[no-any-return]
            # The command marked its own last chunk final: that chunk is the final chunk.
            _, _, outcome = self._ready.popleft()
            final = {**item, "outcome": outcome.status}
        else:
            outcome = item
            final = outcome.final_chunk()
        self._done = True
        self._outcome = outcome
        self._final = final
        if self.on_chunk is not None:
            self.on_chunk(final)
        if outcome.status == "error":
            assert outcome.error is not None
            raise outcome.error
        if outcome.status == "cancelled" and not self._cancelled_by_me:
            raise CommandCancelled(f"stream {self.task_id} was cancelled: {outcome.reason}")
        return final

    def _ends_ok(self) -> bool:
        """True if the next entry is a successful end (fetched now if need be).

        Only a chunk that says ``is_final`` waits for this look-ahead, and the
        relay writes the end right behind it, so nothing else is delayed.
        """
        while not self._ready:
            if self._done:
                return False
            self._fetch()
        kind, _, item = self._ready[0]
        return kind == FINAL and item.status == "ok"

    def wait(self) -> dict[str, Any]:
        """Read to the end (``on_chunk`` sees every chunk) and return the final chunk.

        Raises:
            SnakepitError: as iteration does.
        """
        for _ in self:
            pass
        assert self._final is not None
        return self._final

    # -- control ----------------------------------------------------------------------------------

    def cancel(self, reason: str = "cancelled by the caller") -> None:
        """Ask the worker to stop the stream; the bridge's generator is closed.

        Returns at once. Iterating on afterwards yields what was relayed before
        the cancel took effect, then a final chunk with ``"outcome": "cancelled"``.
        A stream whose task has not started yet never reaches the bridge.
        """
        if self._done or self._cancelled_by_me:
            return
        self._request_cancel(reason)
        self._cancelled_by_me = True
        self._cancel_deadline = time.monotonic() + self.cancel_wait

    def close(self) -> None:
        """Stop reading (no cancel) and release the Redis client if this stream owns it."""
        if self.pace and not self._done:
            with contextlib.suppress(redis.RedisError):
                self.client.delete(self.keys.ack)  # hold the relay back no longer
        self._done = True
        self._ready.clear()
        if self.owns_client:
            self.client.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if not self._done:
                self.cancel("the caller left the stream's block")
        except redis.RedisError:
            if exc is None:
                raise
        finally:
            self.close()

    def __repr__(self) -> str:
        return f"<Stream {self.task_id} last_seq={self.last_seq} outcome={self.outcome}>"
