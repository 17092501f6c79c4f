"""Stream commands: a producer runs the generator, a bounded queue feeds the reply.

The producer (a thread for a sync generator, a task on the bridge's loop for
an async one) encodes each chunk and puts it on a :class:`ChunkQueue`. The
gRPC thread takes *everything that is ready* at once, so a fast generator
fills each message with many chunks while a lone chunk goes out immediately.
The queue is bounded in items and bytes: a slow reader blocks the producer
(backpressure), so memory stays flat however long the stream runs.

Cancel closes the queue: a producer waiting on a full queue wakes at once,
and the generator is closed (its ``finally`` runs) at its next yield; an async
generator is cancelled at its current ``await``. ``context.cancelled`` lets a
long step between yields bail out early.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import AsyncGenerator, Callable, Generator, Iterator
from typing import Any

from snakepit_bridge import tracing
from snakepit_bridge.aio import LoopThread
from snakepit_bridge.commands import Command, Failure, failure_from
from snakepit_bridge.handler import CallContext, set_context

__all__ = ["ChunkQueue", "StreamRun"]

log = logging.getLogger(__name__)

#: Chunks the queue holds before the producer waits.
QUEUE_ITEMS = 256
#: Encoded bytes the queue holds before the producer waits.
QUEUE_BYTES = 8 * 1024 * 1024
#: Most chunks in one gRPC message.
BATCH_ITEMS = 1024

#: encode_chunk(value) -> (payload, size in bytes); raises Failure.
Encoder = Callable[[Any], tuple[Any, int]]


class ChunkQueue:
    """A bounded queue of encoded chunks between one producer and one consumer."""

    def __init__(self, max_items: int = QUEUE_ITEMS, max_bytes: int = QUEUE_BYTES) -> None:
        self._items: collections.deque[tuple[Any, int]] = collections.deque()
        self._bytes = 0
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._cond = threading.Condition(threading.Lock())
        #: The consumer is gone (cancelled or finished): puts are refused.
        self.closed = False
        self._done = False
        self._failure: Failure | None = None

    def _full(self) -> bool:
        return len(self._items) >= self._max_items or (self._bytes >= self._max_bytes and bool(self._items))

    def put(self, payload: Any, size: int) -> bool:
        """Add a chunk, waiting while the queue is full; False once closed."""
        with self._cond:
            while self._full() and not self.closed:
                self._cond.wait()
            if self.closed:
                return False
            self._items.append((payload, size))
            self._bytes += size
            self._cond.notify_all()
            return True

    def try_put(self, payload: Any, size: int) -> bool:
        """Add a chunk if there is room now (the async producer's fast path)."""
        with self._cond:
            if self._full() or self.closed:
                return False
            self._items.append((payload, size))
            self._bytes += size
            self._cond.notify_all()
            return True

    def finish(self, failure: Failure | None = None) -> None:
        """The producer is done (with ``failure`` when the generator raised)."""
        with self._cond:
            if self._done:
                return
            self._done = True
            self._failure = failure
            self._cond.notify_all()

    def close(self) -> None:
        """The consumer is gone: wake and refuse the producer."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def abort(self, failure: Failure) -> None:
        """End the stream now with ``failure``, dropping what is queued (the bridge stops)."""
        with self._cond:
            self.closed = True
            self._done = True
            self._failure = failure
            self._items.clear()
            self._bytes = 0
            self._cond.notify_all()

    def take(self, max_items: int, max_bytes: int) -> list[Any] | None:
        """Wait for chunks and take all that are ready (up to the caps).

        Returns None at the end of the stream.

        Raises:
            Failure: the generator raised (after every earlier chunk was taken).
        """
        with self._cond:
            while not self._items and not self._done and not self.closed:
                self._cond.wait()
            if not self._items:
                if self._failure is not None:
                    raise self._failure
                return None
            batch: list[Any] = []
            size = 0
            items = self._items
            while items and len(batch) < max_items:
                if batch and size + items[0][1] > max_bytes:
                    break
                payload, item_size = items.popleft()
                batch.append(payload)
                size += item_size
            self._bytes -= size
            self._cond.notify_all()
            return batch


class StreamRun:
    """One running stream command: its producer, queue and cancel."""

    def __init__(
        self,
        command: Command,
        kwargs: dict[str, Any],
        ctx: CallContext,
        encode_chunk: Encoder,
        loop: LoopThread,
        *,
        batch_bytes: int,
        on_closed: Callable[[], None] | None = None,
    ) -> None:
        self.command = command
        self.ctx = ctx
        self.queue = ChunkQueue()
        self._encode = encode_chunk
        self._loop = loop
        self._batch_bytes = batch_bytes
        self._on_closed = on_closed
        self._task: asyncio.Task[None] | None = None
        self._lock = threading.Lock()
        # Creating the generator runs none of its body; binding was checked before.
        self._gen = command.method(**kwargs)
        #: The call's tracing context (its server span), for the producer; None untraced.
        self._traced = tracing.capture()

    def start(self) -> None:
        """Start the producer."""
        if self.command.is_async:
            self._loop.submit(self._drive_async(self._gen))
        else:
            threading.Thread(
                target=self._drive_sync,
                args=(self._gen,),
                name=f"snakepit-stream-{self.command.name}",
                daemon=True,
            ).start()

    def cancel(self, failure: Failure | None = None) -> None:
        """Stop the producer and close the generator: the caller went away, or
        (with ``failure``) the bridge is stopping and the caller gets that error."""
        self.ctx.cancelled.set()
        if failure is not None:
            self.queue.abort(failure)
        self.queue.close()
        with self._lock:
            task = self._task
        if task is not None:
            self._loop.call_soon(task.cancel)

    def batches(self) -> Iterator[list[Any]]:
        """The consumer: lists of encoded chunks, one list per gRPC message."""
        try:
            while True:
                batch = self.queue.take(BATCH_ITEMS, self._batch_bytes)
                if batch is None:
                    return
                yield batch
        finally:
            # Normal end, error, or gRPC closing this iterator on cancel: in every
            # case the producer must not outlive the call.
            self.queue.close()

    def _fail(self, exc: BaseException) -> None:
        self.queue.finish(failure_from(exc, self.command.name))

    def _drive_sync(self, gen: Generator[Any, None, None]) -> None:
        set_context(self.ctx)
        tracing.activate(self._traced)
        try:
            for value in gen:
                payload, size = self._encode(value)
                if not self.queue.put(payload, size):
                    break
            else:
                self.queue.finish()
        except Exception as exc:
            self._fail(exc)
        finally:
            self._close_sync(gen)

    def _close_sync(self, gen: Generator[Any, None, None]) -> None:
        try:
            gen.close()
        except Exception:
            log.exception("closing stream command %r raised", self.command.name)
        finally:
            self.queue.finish()  # no-op when finished already; unblocks the consumer otherwise
            if self._on_closed is not None:
                self._on_closed()

    async def _drive_async(self, agen: AsyncGenerator[Any, None]) -> None:
        set_context(self.ctx)  # this task's own context: the generator's steps run in it
        tracing.activate(self._traced)
        with self._lock:
            self._task = asyncio.current_task()
        try:
            if self.queue.closed:  # cancelled before this task was known
                return
            async for value in agen:
                payload, size = self._encode(value)
                if self.queue.try_put(payload, size):
                    continue
                if self.queue.closed:
                    break
                # Full: wait for room off the loop, so other async commands run.
                loop = asyncio.get_running_loop()
                if not await loop.run_in_executor(None, self.queue.put, payload, size):
                    break
            else:
                self.queue.finish()
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            self._fail(exc)
        finally:
            try:
                await agen.aclose()
            except (Exception, asyncio.CancelledError):
                log.exception("closing stream command %r raised", self.command.name)
            self.queue.finish()
            if self._on_closed is not None:
                self._on_closed()
