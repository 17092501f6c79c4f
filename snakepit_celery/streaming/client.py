"""The caller side of a stream: read a task's chunks from Redis, in order, once each.

:class:`Stream` needs only Redis and a task id, so a web view can follow a
stream that another process started (``Stream.follow``), and an SSE endpoint
can resume after the last event id its browser saw (``after=``). It reads
with ``XREAD BLOCK`` from its own position, a few entries at a time, so its
memory stays flat however long the stream is (see ``protocol`` for the layout).

Until it has seen the relay, a reader given the Celery app also asks the
result backend what became of the task, so a stream revoked while queued or
failed before its relay started ends instead of waiting forever; one that no
worker takes ends after ``start_timeout`` (see ``pending``).
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

import redis
from celery import Celery

from snakepit_celery.appconfig import app_or_current
from snakepit_celery.errors import CommandCancelled, SnakepitError, StreamError
from snakepit_celery.streaming.pending import (
    DEFAULT_START_TIMEOUT,
    HostWatch,
    NoBackend,
    not_started,
    task_outcome,
)
from snakepit_celery.streaming.protocol import (
    ACK_TTL,
    DEFAULT_BUFFER_CHUNKS,
    DEFAULT_STREAM_TTL,
    Outcome,
    StreamKeys,
    decode_chunks,
)

__all__ = ["DEFAULT_CANCEL_WAIT", "Stream"]

#: Seconds a cancelled stream waits for the worker's final entry before ending by itself.
DEFAULT_CANCEL_WAIT = 5.0
#: Entries fetched per XREAD: bounds the caller's read-ahead memory.
READ_COUNT = 32
#: Seconds a reader keeps retrying a Redis it cannot reach before it ends with StreamError.
REDIS_GRACE = 10.0

_DATA, _FINAL, _FAIL = 0, 1, 2


class Stream:
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
        self.client = client
        #: The Celery task id of the stream.
        self.task_id = task_id
        self.keys = StreamKeys.for_task(task_id, prefix)
        self.on_chunk = on_chunk
        self.idle_timeout = idle_timeout
        self.start_timeout = start_timeout
        self.app = app
        #: The Celery queue the task was sent to, when known (named by the start timeout's error).
        self.queue: str | None = None
        #: The pool the task was sent to, when known: while the stream has not started, a
        #: reader with a ``start_timeout`` gives up once no live worker hosts it (see ``pending``).
        self.pool: str | None = None
        self._prefix = prefix
        self._host_watch: HostWatch | None = None
        self.cancel_wait = cancel_wait
        self.skip_missed = skip_missed
        self.block = block
        self.pace = pace
        self.owns_client = owns_client
        #: Sequence number of the last chunk returned (-1 before the first).
        self.last_seq = -1 if after is None else int(after)
        #: Chunks skipped because they had left the replay buffer (``skip_missed``).
        self.missed = 0
        #: Epoch time the worker started the stream, once its first entry is read.
        self.started_at: float | None = None
        #: Epoch time this reader received the first data entry.
        self.first_chunk_at: float | None = None
        self._fetched = self.last_seq + 1
        self._ready: collections.deque[tuple[int, int, Any]] = collections.deque()
        self._outcome: Outcome | None = None
        self._final: dict[str, Any] | None = None
        self._done = False
        self._relay_seen = False
        self._last_activity = self._opened_at = time.monotonic()
        self._backend = app
        self._cancelled_by_me = False
        self._cancel_deadline = 0.0
        self._redis_down_since: float | None = None

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
        from snakepit_celery.streaming.caller import redis_client, stream_prefix

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
        if kind == _FAIL:
            self._done = True
            raise item
        if kind == _DATA:
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
        return kind == _FINAL and item.status == "ok"

    def wait(self) -> dict[str, Any]:
        """Read to the end (``on_chunk`` sees every chunk) and return the final chunk.

        Raises:
            SnakepitError: as iteration does.
        """
        for _ in self:
            pass
        assert self._final is not None
        return self._final

    def _fetch(self) -> None:
        """Read what is next; a lost Redis connection is retried for ``REDIS_GRACE`` s (a
        restarted Redis comes back empty: the idle check then finds the relay gone), and
        past that the stream ends with StreamError, never with redis-py's own error."""
        try:
            self._read()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            now = time.monotonic()
            self._redis_down_since = self._redis_down_since or now
            if now - self._redis_down_since > REDIS_GRACE:
                self._fail(f"stream {self.task_id}: its Redis was unreachable for {REDIS_GRACE:.0f}s: {exc}")
            else:
                time.sleep(min(0.2, self.block))  # back off before reconnecting
        else:
            self._redis_down_since = None

    def _read(self) -> None:
        now = time.monotonic()
        block = self.block
        if self._cancelled_by_me:
            left = self._cancel_deadline - now
            if left <= 0:
                reason = f"cancelled; the worker wrote no final entry within {self.cancel_wait}s"
                self._ready.append(
                    (_FINAL, self._fetched, Outcome("cancelled", self._fetched, reason=reason))
                )
                return
            block = min(block, left)
        streams: dict[Any, Any] = {self.keys.data: f"{self._fetched}-0"}
        block_ms = max(1, int(block * 1000))
        if self.pace:
            pipe = self.client.pipeline(transaction=False)
            pipe.set(self.keys.ack, self._fetched, ex=ACK_TTL)
            pipe.xread(streams, count=READ_COUNT, block=block_ms)
            reply = pipe.execute()[1]
        else:
            reply = self.client.xread(streams, count=READ_COUNT, block=block_ms)
        if reply:
            self._last_activity = time.monotonic()
            self._relay_seen = True
            for entry_id, fields in reply[0][1]:
                if not self._take(entry_id, fields):
                    return
            return
        self._check_idle()

    def _take(self, entry_id: bytes, fields: dict[bytes, bytes]) -> bool:
        """Queue one entry's chunks (or its outcome); False once nothing more may follow."""
        final = fields.get(b"f")
        if final is not None:
            outcome = Outcome.from_json(final)
            if outcome.chunks > self._fetched and not self._gap(outcome.chunks):
                return False
            self._ready.append((_FINAL, outcome.chunks, outcome))
            return False
        start = int(fields[b"s"])
        if b"t" in fields:
            self.started_at = float(fields[b"t"])
        if self.first_chunk_at is None:
            self.first_chunk_at = time.time()
        if start > self._fetched and not self._gap(start):
            return False
        chunks = decode_chunks(fields)
        end = int(entry_id.split(b"-", 1)[0])
        if end != start + len(chunks):
            self._ready.append(
                (_FAIL, start, StreamError(f"stream entry {entry_id!r} holds {len(chunks)} chunks"))
            )
            return False
        seq = self._fetched
        for chunk in chunks[seq - start :]:
            self._ready.append((_DATA, seq, chunk))
            seq += 1
        self._fetched = seq
        return True

    def _gap(self, available: int) -> bool:
        """Chunks ``_fetched .. available-1`` were trimmed: skip them or fail (False)."""
        lost = available - self._fetched
        if self.skip_missed:
            self.missed += lost
            self._fetched = available
            return True
        self._fail(
            f"stream {self.task_id}: this reader fell behind and chunks {self._fetched}.."
            f"{available - 1} ({lost}) left the replay buffer (it keeps about "
            f"{DEFAULT_BUFFER_CHUNKS} chunks); read faster or pass skip_missed=True"
        )
        return False

    def _check_idle(self) -> None:
        """After an empty XREAD: fail if the relay died, never started, or the idle timeout passed."""
        # The backend first: a relay writes its final entry before the task's state is set,
        # so a state read here is never newer than the entries the read below sees.
        verdict = None if self._relay_seen else self._backend_verdict()
        pipe = self.client.pipeline(transaction=False)
        pipe.exists(self.keys.alive)
        pipe.xread({self.keys.data: f"{self._fetched}-0"}, count=1)
        alive, late = pipe.execute()
        if late:
            return  # written between the two reads: the next fetch takes it
        if alive:
            self._relay_seen = True
        elif self._relay_seen:
            self._fail(
                f"stream {self.task_id}: the worker stopped relaying after {self._fetched} "
                "chunks without a final chunk (worker died or lost Redis)"
            )
            return
        elif verdict is not None:
            self._end_unstarted(verdict)
            return
        elif self._unhosted():
            return
        elif self.start_timeout is not None and time.monotonic() - self._opened_at > self.start_timeout:
            self._give_up()
            return
        idle = time.monotonic() - self._last_activity
        if self.idle_timeout is not None and idle > self.idle_timeout:
            state = "relaying" if self._relay_seen else "started (still queued?)"
            self._fail(f"stream {self.task_id}: no chunk for {idle:.1f}s; not {state}")

    def _fail(self, message: str) -> None:
        self._ready.append((_FAIL, self._fetched, StreamError(message)))

    def _backend_verdict(self) -> Outcome | StreamError | None:
        """The task's end per the result backend (None: not ended, or nobody to ask)."""
        if self._backend is None:
            return None
        try:
            return task_outcome(self._backend, self.task_id)
        except NoBackend:
            self._backend = None
            return None

    def _end_unstarted(self, verdict: Outcome | StreamError) -> None:
        if isinstance(verdict, StreamError):
            self._ready.append((_FAIL, self._fetched, verdict))
            return
        if verdict.status == "cancelled" and not self._cancelled_by_me:
            # A worker that never heard of the revoke (started after it) must not run it either.
            with contextlib.suppress(redis.RedisError):
                self._request_cancel(verdict.reason)
        self._ready.append((_FINAL, self._fetched, verdict))

    def _unhosted(self) -> bool:
        """True once the stream has failed because no live worker hosts its pool."""
        if self.pool is None or self.start_timeout is None:
            return False
        if self._host_watch is None:
            self._host_watch = HostWatch(self.client, self._prefix, self.pool)
        error = self._host_watch.check(self.task_id)
        if error is None:
            return False
        with contextlib.suppress(redis.RedisError):
            self._request_cancel(f"the reader gave up: no live worker hosts pool {self.pool!r}")
        self._ready.append((_FAIL, self._fetched, error))
        return True

    def _give_up(self) -> None:
        waited = time.monotonic() - self._opened_at
        with contextlib.suppress(redis.RedisError):
            self._request_cancel(f"the reader gave up: not started within {waited:.0f}s")
        self._ready.append((_FAIL, self._fetched, not_started(self.task_id, waited, self.queue)))

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

    def _request_cancel(self, reason: str) -> None:
        """Leave a cancel request the relay polls (and reads first thing if it starts later)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.rpush(self.keys.cancel, reason.encode())
        pipe.expire(self.keys.cancel, DEFAULT_STREAM_TTL)
        pipe.execute()

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
