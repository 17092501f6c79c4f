"""The reading half of a stream: Redis entries in, chunks and an outcome out, in order.

:class:`StreamReader` reads with ``XREAD BLOCK`` from its own position, a few
entries at a time, so its memory stays flat however long the stream is (see
``protocol`` for the layout), and queues what it read as ``(kind, seq, item)``
for :class:`~snakepit_celery.streaming.client.Stream` to hand out. After an
empty read it checks that the stream can still end: its relay alive, or (until
it has seen the relay) the result backend's word on the task, a live worker
hosting its pool, ``start_timeout`` (see ``pending``).

The async reader (:class:`~snakepit_celery.aio.AsyncStream`) awaits its own
reads but shares the decoding and the verdicts here.
"""

from __future__ import annotations

import collections
import contextlib
import time
from typing import Any

import redis
from celery import Celery

from snakepit_celery.errors import StreamError
from snakepit_celery.streaming.pending import HostWatch, NoBackend, not_started, task_outcome
from snakepit_celery.streaming.protocol import (
    ACK_TTL,
    DEFAULT_BUFFER_CHUNKS,
    DEFAULT_STREAM_TTL,
    Outcome,
    StreamKeys,
    decode_chunks,
)

__all__ = ["DATA", "FAIL", "FINAL", "READ_COUNT", "REDIS_GRACE", "StreamReader"]

#: Entries fetched per XREAD: bounds the caller's read-ahead memory.
READ_COUNT = 32
#: Seconds a reader keeps retrying a Redis it cannot reach before it ends with StreamError.
REDIS_GRACE = 10.0

#: Kinds of a queued item: a chunk, the stream's :class:`Outcome`, an error to raise.
DATA, FINAL, FAIL = 0, 1, 2


class StreamReader:
    """Reads one task's entries into a queue of ready items (see :class:`Stream` for the options)."""

    def __init__(
        self,
        client: redis.Redis,
        task_id: str,
        *,
        prefix: str,
        after: int | None,
        idle_timeout: float | None,
        start_timeout: float | None,
        app: Celery | None,
        cancel_wait: float,
        skip_missed: bool,
        block: float,
        pace: bool,
    ) -> None:
        self.client = client
        #: The Celery task id of the stream.
        self.task_id = task_id
        self.keys = StreamKeys.for_task(task_id, prefix)
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
        #: Chunks skipped because they had left the replay buffer (``skip_missed``).
        self.missed = 0
        #: Epoch time the worker started the stream, once its first entry is read.
        self.started_at: float | None = None
        #: Epoch time this reader received the first data entry.
        self.first_chunk_at: float | None = None
        self._fetched = 0 if after is None else int(after) + 1
        self._ready: collections.deque[tuple[int, int, Any]] = collections.deque()
        self._relay_seen = False
        self._last_activity = self._opened_at = time.monotonic()
        self._backend = app
        self._cancelled_by_me = False
        self._cancel_deadline = 0.0
        self._redis_down_since: float | None = None

    def _fetch(self) -> None:
        """Read what is next; a lost Redis connection is retried for ``REDIS_GRACE`` s (a
        restarted Redis comes back empty: the idle check then finds the relay gone), and
        past that the stream ends with StreamError, never with redis-py's own error."""
        try:
            self._read()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            backoff = self._redis_failed(exc)
            if backoff:
                time.sleep(backoff)
        else:
            self._redis_down_since = None

    def _redis_failed(self, exc: Exception) -> float:
        """A read failed on a lost connection: the seconds to back off before reconnecting,
        or 0 once Redis has been gone for ``REDIS_GRACE`` s (the stream has then failed)."""
        now = time.monotonic()
        self._redis_down_since = self._redis_down_since or now
        if now - self._redis_down_since > REDIS_GRACE:
            self._fail(f"stream {self.task_id}: its Redis was unreachable for {REDIS_GRACE:.0f}s: {exc}")
            return 0.0
        return min(0.2, self.block)

    def _read(self) -> None:
        block_ms = self._block_ms()
        if block_ms is None:
            return
        streams: dict[Any, Any] = {self.keys.data: f"{self._fetched}-0"}
        if self.pace:
            pipe = self.client.pipeline(transaction=False)
            pipe.set(self.keys.ack, self._fetched, ex=ACK_TTL)
            pipe.xread(streams, count=READ_COUNT, block=block_ms)
            reply = pipe.execute()[1]
        else:
            reply = self.client.xread(streams, count=READ_COUNT, block=block_ms)
        if reply:
            self._took(reply)
        else:
            self._check_idle()

    def _block_ms(self) -> int | None:
        """How long the next XREAD may block, in ms; None once a cancel's wait for the
        worker's final entry has run out (the stream has then ended as cancelled)."""
        block = self.block
        if self._cancelled_by_me:
            left = self._cancel_deadline - time.monotonic()
            if left <= 0:
                reason = f"cancelled; the worker wrote no final entry within {self.cancel_wait}s"
                self._ready.append((FINAL, self._fetched, Outcome("cancelled", self._fetched, reason=reason)))
                return None
            block = min(block, left)
        return max(1, int(block * 1000))

    def _took(self, reply: Any) -> None:
        """Queue what an XREAD returned (not empty)."""
        self._last_activity = time.monotonic()
        self._relay_seen = True
        for entry_id, fields in reply[0][1]:
            if not self._take(entry_id, fields):
                return

    def _take(self, entry_id: bytes, fields: dict[bytes, bytes]) -> bool:
        """Queue one entry's chunks (or its outcome); False once nothing more may follow."""
        final = fields.get(b"f")
        if final is not None:
            outcome = Outcome.from_json(final)
            if outcome.chunks > self._fetched and not self._gap(outcome.chunks):
                return False
            self._ready.append((FINAL, outcome.chunks, outcome))
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
                (FAIL, start, StreamError(f"stream entry {entry_id!r} holds {len(chunks)} chunks"))
            )
            return False
        seq = self._fetched
        for chunk in chunks[seq - start :]:
            self._ready.append((DATA, seq, chunk))
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
        if self._idle_settled(alive, late, verdict) or (not alive and self._unhosted()):
            return
        self._idle_timed_out()

    def _idle_settled(self, alive: Any, late: Any, verdict: Outcome | StreamError | None) -> bool:
        """The idle check's first steps, on what the relay's keys and the backend said: True
        when that decides it (an entry came late, the relay died, the task ended unstarted);
        else the check goes on: to whether any live worker hosts the pool when the relay is
        not alive, then to the timeouts."""
        if late:
            return True  # written between the two reads: the next fetch takes it
        if alive:
            self._relay_seen = True
            return False
        if self._relay_seen:
            self._fail(
                f"stream {self.task_id}: the worker stopped relaying after {self._fetched} "
                "chunks without a final chunk (worker died or lost Redis)"
            )
            return True
        if verdict is not None:
            self._end_unstarted(verdict)
            return True
        return False

    def _idle_timed_out(self) -> None:
        """The idle check's last steps: not started within ``start_timeout``, or no chunk for
        ``idle_timeout``, ends the stream."""
        waited = time.monotonic() - self._opened_at
        if not self._relay_seen and self.start_timeout is not None and waited > self.start_timeout:
            self._give_up()
            return
        idle = time.monotonic() - self._last_activity
        if self.idle_timeout is not None and idle > self.idle_timeout:
            state = "relaying" if self._relay_seen else "started (still queued?)"
            self._fail(f"stream {self.task_id}: no chunk for {idle:.1f}s; not {state}")

    def _fail(self, message: str) -> None:
        self._ready.append((FAIL, self._fetched, StreamError(message)))

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
            self._ready.append((FAIL, self._fetched, verdict))
            return
        if verdict.status == "cancelled" and not self._cancelled_by_me:
            # A worker that never heard of the revoke (started after it) must not run it either.
            with contextlib.suppress(redis.RedisError):
                self._request_cancel(verdict.reason)
        self._ready.append((FINAL, self._fetched, verdict))

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
        self._ready.append((FAIL, self._fetched, error))
        return True

    def _give_up(self) -> None:
        waited = time.monotonic() - self._opened_at
        with contextlib.suppress(redis.RedisError):
            self._request_cancel(f"the reader gave up: not started within {waited:.0f}s")
        self._ready.append((FAIL, self._fetched, not_started(self.task_id, waited, self.queue)))

    def _request_cancel(self, reason: str) -> None:
        """Leave a cancel request the relay polls (and reads first thing if it starts later)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.rpush(self.keys.cancel, reason.encode())
        pipe.expire(self.keys.cancel, DEFAULT_STREAM_TTL)
        pipe.execute()
