"""The worker side of a stream: relay a bridge's chunks into the task's Redis Stream.

Two threads per stream. The *reader* pulls gRPC messages (lists of chunks)
from the bridge into a small bounded queue; the *writer* (the task's own
thread) takes whatever has accumulated, packs it into a few Redis entries and
writes them in one pipelined round trip. A lone chunk is written as soon as it
arrives; when chunks come fast, they pile up while the previous round trip is
in flight and leave together in the next one, so the number of round trips
adapts to the load with no timer and no added delay. The bounded queue is the
backpressure: when Redis is slower than the bridge, the reader stops reading,
gRPC flow control stops the bridge's generator, and the worker's memory stays
flat however long the stream runs.

The writer also carries the control traffic in the same round trips: it polls
the cancel list (every flush, and every ``poll_interval`` while idle), asks the
task's revoke check, and refreshes the ``alive`` heartbeat. A cancel is passed
to the source (the bridge stream cancels its gRPC call; the bridge closes the
generator) and the stream ends with a ``cancelled`` outcome.

The reader thread also *opens* the source, because opening borrows a bridge
and may wait in the pool's queue (up to its ``queue_timeout``): meanwhile the
writer keeps the heartbeat alive (a reader must not take a stream waiting for
a bridge for a dead one) and keeps polling cancel and revoke, so a stream
cancelled while it waits ends at once. The reader thread stays behind until
the pool hands it the bridge (at most the pool's ``queue_timeout``) and then
closes the source at once: the command starts on the bridge and is cancelled
before its first chunk is relayed (the pool has no checkout that can be
abandoned).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from snakepit_bridge import wire

from snakepit_celery.errors import SnakepitError, StreamError
from snakepit_celery.streaming.protocol import (
    DEFAULT_BUFFER_CHUNKS,
    DEFAULT_STREAM_TTL,
    HEARTBEAT_EVERY,
    HEARTBEAT_TTL,
    Outcome,
    StreamKeys,
    end_unstarted,
)
from snakepit_celery.streaming.sources import ChunkSource, End, IterableSource, Opening, read_source

__all__ = ["ChunkSource", "IterableSource", "RelaySettings", "StreamRelay"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class RelaySettings:
    """Limits of one relay; the defaults suit chunks from a few bytes to a few MiB."""

    #: Chunks kept for late readers; older entries are trimmed.
    buffer_chunks: int = DEFAULT_BUFFER_CHUNKS
    #: Seconds the stream's keys live after the last write.
    ttl: int = DEFAULT_STREAM_TTL
    #: Close a Redis entry once its JSON passes this many bytes.
    entry_bytes: int = 64 * 1024
    #: ... or holds this many chunks.
    entry_chunks: int = 1024
    #: Write at most this many bytes in one round trip.
    flush_bytes: int = 1024 * 1024
    #: ... or this many chunks (how far one round trip can overshoot ``reader_lead``).
    flush_chunks: int = 2048
    #: gRPC messages read ahead of Redis (the backpressure bound).
    read_ahead: int = 64
    #: Seconds between cancel checks while no chunk arrives.
    poll_interval: float = 0.05
    #: Seconds to wait for the source to stop after it was cancelled.
    cancel_grace: float = 2.0
    #: Chunks the relay may run ahead of a pacing reader (``stream()``'s own) before it pauses
    #: the bridge; it resumes at half of it. Keep it under ``buffer_chunks``.
    reader_lead: int = DEFAULT_BUFFER_CHUNKS // 2
    #: Seconds between looks at the reader's position while paused.
    pace_poll: float = 0.005
    #: Seconds the ``alive`` key outlives the last heartbeat (readers call the relay dead after).
    heartbeat_ttl: int = HEARTBEAT_TTL
    #: Seconds between two heartbeats.
    heartbeat_every: float = HEARTBEAT_EVERY


@dataclass
class _Entry:
    start: int
    count: int = 0
    size: int = 0
    parts: list[bytes] = field(default_factory=list)
    blobs: list[bytes] = field(default_factory=list)


class StreamRelay:
    """Relays one task's chunks to Redis.

    Args:
        client: a Redis client (its connection pool is shared with other relays).
        task_id: the task's id: names the keys.
        prefix: the key prefix (the config's ``queue_prefix``).
        settings: buffer and batching limits.
        revoked: called on every check; True means "the task was revoked".

    Example::

        relay = StreamRelay(client, task_id)
        outcome = relay.run(lambda: pool.stream("ping_stream", {"count": 5}))
    """

    def __init__(
        self,
        client: redis.Redis,
        task_id: str,
        *,
        prefix: str = "snakepit",
        settings: RelaySettings | None = None,
        revoked: Callable[[], bool] | None = None,
    ) -> None:
        self.client = client
        self.task_id = task_id
        self.keys = StreamKeys.for_task(task_id, prefix)
        self.settings = settings or RelaySettings()
        self._revoked = revoked or (lambda: False)
        self._seq = 0
        self._first = True
        self._last_beat = 0.0
        self._started = time.time()

    # -- the run ----------------------------------------------------------------------------------

    def run(self, open_source: Callable[[], ChunkSource]) -> Outcome:
        """Open the source, relay all its chunks, write the final entry, return the outcome.

        A cancel requested before the start ends the stream at once, without
        opening the source (no bridge is borrowed); one requested while
        ``open_source`` still waits (for a bridge) ends it at once too. An
        error raised by ``open_source`` or by the source ends it with an
        ``error`` outcome (a :class:`StreamError` naming any error that is not
        the library's own); the caller (the task) decides whether to raise it.
        """
        self._started = time.time()
        reason = self._start()
        if reason is not None:
            return self._finish(Outcome("cancelled", 0, reason=reason))
        return self._relay(open_source)

    def _start(self) -> str | None:
        pipe = self.client.pipeline(transaction=False)
        pipe.lindex(self.keys.cancel, 0)
        pipe.set(self.keys.alive, b"1", ex=self.settings.heartbeat_ttl)
        cancel, _ = pipe.execute()
        self._last_beat = time.monotonic()
        return self._cancel_reason(cancel)

    def _cancel_reason(self, raw: bytes | None) -> str | None:
        if raw is not None:
            return raw.decode(errors="replace") or "cancelled by the caller"
        if self._revoked():
            return "the task was revoked"
        return None

    def _relay(self, open_source: Callable[[], ChunkSource]) -> Outcome:
        settings = self.settings
        inbox: queue.Queue[list[Any] | End] = queue.Queue(maxsize=settings.read_ahead)
        stop = threading.Event()
        source = Opening()
        reader = threading.Thread(
            target=read_source,
            args=(open_source, source, inbox, stop),
            name=f"snakepit-stream-{self.task_id[:8]}",
            daemon=True,
        )
        reader.start()
        cancel_reason: str | None = None
        cancel_deadline = 0.0
        end: End | None = None
        try:
            while end is None:
                entries, end = self._gather(inbox, settings.poll_interval)
                requested, ack = self._flush(entries, check_cancel=cancel_reason is None)
                if (
                    requested is None
                    and end is None
                    and ack is not None
                    and self._seq - ack > settings.reader_lead
                ):
                    requested = self._wait_for_reader()
                if cancel_reason is None and requested is not None:
                    cancel_reason = requested
                    cancel_deadline = time.monotonic() + settings.cancel_grace
                    logger.info("stream %s: cancelling (%s)", self.task_id, requested)
                    if not source.cancel():
                        break  # still waiting for a bridge: nothing to drain, end now
                if end is None and cancel_reason is not None and time.monotonic() > cancel_deadline:
                    logger.warning(
                        "stream %s: source ignored cancel for %.1fs", self.task_id, settings.cancel_grace
                    )
                    break
        except redis.RedisError as exc:
            # Nothing more can reach the readers; stop the bridge and tell the task.
            source.cancel()
            stop.set()
            raise StreamError(f"stream {self.task_id}: Redis failed while relaying: {exc}") from exc
        finally:
            stop.set()
        if cancel_reason is not None:
            outcome = Outcome("cancelled", self._seq, reason=cancel_reason)
        elif end is not None and end.error is not None:
            error = end.error
            if not isinstance(error, SnakepitError):
                error = StreamError(f"stream source failed: {type(error).__name__}: {error}")
            outcome = Outcome("error", self._seq, error=error)
        else:
            outcome = Outcome("ok", self._seq)
        if source.opened:
            # One that still waits for a bridge closes the source as soon as it gets it (read_source).
            reader.join(timeout=settings.cancel_grace)
        return self._finish(outcome)

    def _gather(self, inbox: queue.Queue[list[Any] | End], wait: float) -> tuple[list[_Entry], End | None]:
        """Everything the reader has ready (waiting up to ``wait`` for the first message)."""
        settings = self.settings
        entries: list[_Entry] = []
        total = 0
        first = self._seq
        try:
            item = inbox.get(timeout=wait)
        except queue.Empty:
            return entries, None
        while True:
            if isinstance(item, End):
                return entries, item
            total += self._add(entries, item)
            if total >= settings.flush_bytes or self._seq - first >= settings.flush_chunks:
                return entries, None
            try:
                item = inbox.get_nowait()
            except queue.Empty:
                return entries, None

    def _add(self, entries: list[_Entry], chunks: list[Any]) -> int:
        """Pack one message's chunks into the entries; returns the bytes added."""
        if not chunks:
            return 0
        data, blobs = wire.encode(chunks)
        body = data[1:-1]
        settings = self.settings
        current = entries[-1] if entries else None
        if (
            current is None
            or blobs
            or current.blobs
            or current.size + len(body) > settings.entry_bytes
            or current.count + len(chunks) > settings.entry_chunks
        ):
            current = _Entry(start=self._seq)
            entries.append(current)
        current.parts.append(body)
        current.blobs.extend(blobs)
        current.count += len(chunks)
        current.size += len(body) + 1
        self._seq += len(chunks)
        return len(body)

    def _wait_for_reader(self) -> str | None:
        """Pause (the bridge waits too) until the pacing reader has caught up halfway.

        Returns a cancel reason if one came meanwhile. A reader that stops
        acknowledging (its ``ack`` key expires) no longer holds the stream back.
        """
        keys = self.keys
        resume = self.settings.reader_lead // 2
        while True:
            pipe = self.client.pipeline(transaction=False)
            pipe.lindex(keys.cancel, 0)
            pipe.get(keys.ack)
            self._beat(pipe)
            cancel, ack, *_ = pipe.execute()
            reason = self._cancel_reason(cancel)
            if reason is not None or ack is None or self._seq - int(ack) <= resume:
                return reason
            time.sleep(self.settings.pace_poll)

    def _beat(self, pipe: Any) -> None:
        now = time.monotonic()
        if now - self._last_beat >= self.settings.heartbeat_every:
            pipe.expire(self.keys.data, self.settings.ttl)
            pipe.set(self.keys.alive, b"1", ex=self.settings.heartbeat_ttl)
            self._last_beat = now

    def _flush(self, entries: list[_Entry], *, check_cancel: bool) -> tuple[str | None, int | None]:
        """Write the entries, refresh the heartbeat when due, poll the cancel list and the ack.

        Returns the cancel reason if one was requested (or the task revoked),
        and the position the pacing reader acknowledged (None: no such reader).
        """
        keys = self.keys
        pipe = self.client.pipeline(transaction=False)
        for entry in entries:
            fields: dict[bytes, bytes | str | float] = {
                b"s": str(entry.start),
                b"j": b"[" + b",".join(entry.parts) + b"]",
            }
            for index, blob in enumerate(entry.blobs):
                fields[b"b%d" % index] = blob
            if self._first:
                fields[b"t"] = repr(self._started)
                self._first = False
            end = entry.start + entry.count
            pipe.xadd(
                keys.data,
                fields,  # type: ignore[arg-type]
                id=f"{end}-0",
                minid=f"{max(0, end - self.settings.buffer_chunks)}-0",
                approximate=True,
            )
        if entries and entries[0].start == 0:
            pipe.expire(keys.data, self.settings.ttl)  # the first write sets the TTL; beats refresh it
        self._beat(pipe)
        pipe.get(keys.ack)
        if check_cancel:
            pipe.lindex(keys.cancel, 0)
        results = pipe.execute()
        ack = None if results[-1 - check_cancel] is None else int(results[-1 - check_cancel])
        return (self._cancel_reason(results[-1]) if check_cancel else None), ack

    def _finish(self, outcome: Outcome) -> Outcome:
        """Write the final entry (one round trip) and drop the heartbeat.

        A stream that relayed nothing may already have been ended by the
        worker's revoke handler (see ``end_unstarted``): that earlier final
        entry stands, and this one is dropped.
        """
        keys = self.keys
        if outcome.chunks == 0:
            end_unstarted(self.client, keys, outcome, ttl=self.settings.ttl)
            self.client.delete(keys.alive)
            return outcome
        pipe = self.client.pipeline(transaction=False)
        pipe.xadd(keys.data, {b"f": outcome.to_json()}, id=f"{outcome.chunks}-1")
        pipe.expire(keys.data, self.settings.ttl)
        pipe.delete(keys.alive)
        pipe.execute()
        return outcome
