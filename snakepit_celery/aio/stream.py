"""``astream()``: a stream's chunks read on ``redis.asyncio``, for ``async with`` and ``async for``.

:class:`AsyncStream` is :class:`~snakepit_celery.streaming.client.Stream`
with its Redis reads awaited: the same entries, order, replay (``after=``,
``follow``), pacing, errors and liveness checks (a relay that died, a stream
no worker took, one revoked or failed before it started), because every rule
of the reader is the sync class's own; only the reads and writes differ. A
blocking ``XREAD`` holds one connection of the loop's client while it waits,
no thread.

Cancel: leaving the ``async with`` block early, or the awaiting task being
cancelled (``task.cancel()``, ``asyncio.timeout``, an SSE client that went
away), leaves the cancel request the relay polls, shielded so that it is
written even while the task unwinds; the bridge's generator is closed within
a fraction of a second, as with the sync ``stream()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, cast

import redis
import redis.asyncio as aioredis
from celery import Celery
from celery.utils import uuid

from snakepit_celery.aio.calls import sending_awaited
from snakepit_celery.aio.clients import async_client
from snakepit_celery.appconfig import app_or_current, config_for, resolve_redis_url
from snakepit_celery.errors import ConfigurationError, StreamError
from snakepit_celery.integration.known_pools import LIVE_POOLS, hosted_pools
from snakepit_celery.streaming.client import READ_COUNT, Stream
from snakepit_celery.streaming.pending import (
    DEFAULT_START_TIMEOUT,
    NO_WORKER_GRACE,
    HostWatch,
    outcome_of_state,
)
from snakepit_celery.streaming.protocol import ACK_TTL, DEFAULT_STREAM_TTL, Outcome

__all__ = ["AsyncStream", "astream"]

_DATA = 0  # the sync reader's kind of a data item (``streaming.reader.DATA``)


class _LivePools(HostWatch):
    """:class:`HostWatch` whose registry read is awaited (its verdict is the sync class's)."""

    def __init__(self, client: aioredis.Redis, prefix: str, pool: str) -> None:
        self.pool = pool
        self.grace = NO_WORKER_GRACE
        self.unhosted_since = None
        self.prefix = prefix
        self._script = client.register_script(LIVE_POOLS)

    async def acheck(self, task_id: str) -> StreamError | None:
        return self.judge(task_id, hosted_pools(await self._script(args=[self.prefix])))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class AsyncStream(Stream):
    """The chunks of one streaming task, as an async iterator and an async context manager.

    Made by :func:`astream` (which sends the task) or :meth:`follow` (a task
    another process started); the arguments are :class:`Stream`'s, with a
    ``redis.asyncio`` client. ``s.cancel()`` returns at once, as the sync
    one does; the request is written before the next read.
    """

    def __init__(self, client: aioredis.Redis, task_id: str, **options: Any) -> None:
        super().__init__(cast(Any, client), task_id, **options)
        self.aclient = client
        self._io: set[asyncio.Task[Any]] = set()
        self._starter: Callable[[], Any] | None = None
        self._live_pools: _LivePools | None = None

    @classmethod
    def follow(
        cls, task_id: str, *, app: Celery | None = None, redis_url: str | None = None, **options: Any
    ) -> AsyncStream:
        """Open the stream of a task that another process started (see :meth:`Stream.follow`).

        Example::

            async with AsyncStream.follow(task_id, after=last_event_id) as s:
                async for chunk in s:
                    yield sse(s.last_seq, chunk)
        """
        app = app_or_current(app)
        options.setdefault("prefix", config_for(app).queue_prefix)
        options.setdefault("app", app)
        url = redis_url or resolve_redis_url(app)
        return cls(async_client(url, blocking_reads=True), task_id, **options)

    # -- async iteration --------------------------------------------------------------------------

    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        await self._start()
        # Fill the buffer the way the sync reader needs it, then take the item with its rules:
        # a chunk marked final needs the entry behind it (its look-ahead), read here.
        while not self._ready or (
            self._ready[0][0] == _DATA and _says_final(self._ready[0][2]) and len(self._ready) < 2
        ):
            if self._done:
                break
            await self._afetch()
        try:
            return super().__next__()
        except StopIteration:
            raise StopAsyncIteration from None

    def __iter__(self) -> Any:
        raise TypeError("an AsyncStream is read with `async for`; stream() gives a sync one")

    async def wait(self) -> dict[str, Any]:  # type: ignore[override]
        """Read to the end (``on_chunk`` sees every chunk) and return the final chunk."""
        async for _ in self:
            pass
        assert self._final is not None
        return self._final

    def _fetch(self) -> None:  # pragma: no cover - the async reads fill the buffer first
        raise AssertionError("AsyncStream reads only with await")

    async def _afetch(self) -> None:
        await self._flush_io()
        try:
            await self._aread()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            backoff = self._redis_failed(exc)
            if backoff:
                await asyncio.sleep(backoff)
        else:
            self._redis_down_since = None

    async def _aread(self) -> None:
        """The sync reader's ``_read``, its reads awaited."""
        block_ms = self._block_ms()
        if block_ms is None:
            return
        streams: dict[Any, Any] = {self.keys.data: f"{self._fetched}-0"}
        if self.pace:
            async with self.aclient.pipeline(transaction=False) as pipe:
                pipe.set(self.keys.ack, self._fetched, ex=ACK_TTL)
                pipe.xread(streams, count=READ_COUNT, block=block_ms)
                reply = (await pipe.execute())[1]
        else:
            reply = await self.aclient.xread(streams, count=READ_COUNT, block=block_ms)
        if reply:
            self._took(reply)
        else:
            await self._acheck_idle()

    async def _acheck_idle(self) -> None:
        """The sync reader's ``_check_idle``, its reads awaited."""
        verdict = None if self._relay_seen else await self._abackend_verdict()
        async with self.aclient.pipeline(transaction=False) as pipe:
            pipe.exists(self.keys.alive)
            pipe.xread({self.keys.data: f"{self._fetched}-0"}, count=1)
            alive, late = await pipe.execute()
        if self._idle_settled(alive, late, verdict) or (not alive and await self._aunhosted()):
            return
        self._idle_timed_out()

    async def _abackend_verdict(self) -> Outcome | StreamError | None:
        """The task's end per its Redis result backend, read on the loop (None: not ended, or no
        Redis backend to ask: the reader relies on the stream's Redis alone)."""
        if self._backend is None:
            return None
        from snakepit_celery.aio.results import waiter_for

        try:
            waiter = waiter_for(self._backend)
            raw = await waiter.redis.get(waiter.key(self.task_id))
        except ConfigurationError:
            self._backend = None
            return None
        except redis.RedisError:
            return None  # a backend outage must not end a stream that may be fine
        if raw is None:
            return None
        meta = self._backend.backend.decode_result(raw)
        return outcome_of_state(self.task_id, meta["status"], meta["result"])

    async def _aunhosted(self) -> bool:
        if self.pool is None or self.start_timeout is None:
            return False
        if self._live_pools is None:
            self._live_pools = _LivePools(self.aclient, self._prefix, self.pool)
        error = await self._live_pools.acheck(self.task_id)
        if error is None:
            return False
        self._request_cancel(f"the reader gave up: no live worker hosts pool {self.pool!r}")
        self._ready.append((2, self._fetched, error))
        return True

    # -- control ----------------------------------------------------------------------------------

    def _request_cancel(self, reason: str) -> None:
        """Schedule the cancel request on the loop (written before the next read, and on exit)."""

        async def push() -> None:
            async with self.aclient.pipeline(transaction=False) as pipe:
                pipe.rpush(self.keys.cancel, reason.encode())
                pipe.expire(self.keys.cancel, DEFAULT_STREAM_TTL)
                await pipe.execute()

        self._schedule(push())

    def _schedule(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._io.add(task)
        task.add_done_callback(self._io.discard)

    async def _flush_io(self) -> None:
        """Await the writes scheduled so far (shielded: a cancelled reader still writes them)."""
        if self._io:
            pending = list(self._io)
            await asyncio.shield(asyncio.gather(*pending, return_exceptions=True))

    def close(self) -> None:
        """Stop reading (no cancel); the pacing position is dropped before the reader goes."""
        if self.pace and not self._done:
            self._schedule(self.aclient.delete(self.keys.ack))  # hold the relay back no longer
        self._done = True
        self._ready.clear()

    async def aclose(self) -> None:
        """:meth:`close`, and wait until what it wrote (and a cancel request) is in Redis."""
        self.close()
        with contextlib.suppress(redis.RedisError):
            await self._flush_io()

    # -- start and the async context manager --------------------------------------------------

    async def start(self) -> AsyncStream:
        """Send the stream's task now, if :func:`astream` made it and it is not sent yet.

        Entering the ``async with`` block (or awaiting the first chunk) does it
        too; a view that only starts a job (another view follows it) calls this,
        then :meth:`aclose`.

        Raises:
            PoolNotFound: no such pool.
        """
        await self._start()
        return self

    async def _start(self) -> None:
        starter, self._starter = self._starter, None
        if starter is not None:
            await starter()
            self._opened_at = self._last_activity = time.monotonic()

    def __enter__(self) -> Any:
        raise TypeError("an AsyncStream is used with `async with`; stream() gives a sync one")

    async def __aenter__(self) -> AsyncStream:
        await self._start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if not self._done and self._starter is None:
                self.cancel("the caller left the stream's block")
            await self._flush_io()
        except redis.RedisError:
            if exc is None:
                raise
        finally:
            await self.aclose()

    def __repr__(self) -> str:
        return f"<AsyncStream {self.task_id} last_seq={self.last_seq} outcome={self.outcome}>"


def _says_final(item: Any) -> bool:
    return isinstance(item, dict) and item.get("is_final") is True


def astream(
    command: str,
    args: Any = None,
    *,
    session_id: str | None = None,
    pool: str | None = None,
    timeout: float | None = None,
    on_chunk: Callable[[dict[str, Any]], object] | None = None,
    idle_timeout: float | None = None,
    start_timeout: float | None = DEFAULT_START_TIMEOUT,
    app: Celery | None = None,
) -> AsyncStream:
    """Start the stream command ``command`` on a worker and read its chunks on the loop.

    The async ``stream()``: the same arguments, chunks, final chunk, errors,
    replay and pacing. The task is sent when the ``async with`` block is
    entered (or the first chunk is awaited).

    Args:
        command: a stream command of the bridge, e.g. ``"batch_inference"``.
        args: its JSON arguments (``bytes`` travel as bytes).
        session_id: run on the bridge of this session, in turn with its other calls.
        pool: the named pool; the default pool when None.
        timeout: hard limit of the whole stream on the worker, in seconds.
        on_chunk: called with every chunk (the final one too) as it is read.
        idle_timeout: seconds without a chunk before :class:`StreamError`.
        start_timeout: seconds the task may stay queued before :class:`StreamError`
            (the stream is then cancelled); None waits as long as it takes.
        app: the Celery app; None means the current app.

    Returns:
        The :class:`AsyncStream`: ``async with`` it (leaving the block, or the
        task being cancelled, cancels an unfinished stream) and ``async for`` it.

    Raises:
        ConfigurationError: no Redis for streams is configured.
        InvalidSessionId: ``session_id`` is unfit (before anything is sent).
        PoolNotFound: (entering) no such pool.
        CommandCancelled, StreamError, SnakepitError: (iterating) as ``stream()``'s.

    Example::

        async with astream("process_large_dataset", {"total_rows": 10_000}) as s:
            async for chunk in s:
                print(chunk["progress_percent"])
    """
    from snakepit_celery.sessions.ids import validate_session_id
    from snakepit_celery.sessions.routing import session_queue_name
    from snakepit_celery.streaming import task as _registers  # noqa: F401  (the shared task)

    if session_id is not None:  # refused before anything is created or sent
        session_id = validate_session_id(session_id)
    app = app_or_current(app)
    config = config_for(app)
    client = async_client(resolve_redis_url(app, config), blocking_reads=True)
    task_id = uuid()
    reader = AsyncStream(
        client,
        task_id,
        prefix=config.queue_prefix,
        on_chunk=on_chunk,
        idle_timeout=idle_timeout,
        start_timeout=start_timeout,
        app=app,
        pace=True,
    )
    if session_id is not None:
        reader.queue = session_queue_name(config.queue_prefix, session_id)
    else:
        reader.queue = config.queue_name(pool or config.default_pool)
        reader.pool = pool or config.default_pool

    async def start() -> None:
        await client.ping()  # Redis must be reachable before a task is sent that nobody could read
        with sending_awaited(app):
            app.tasks["snakepit.execute_stream"].apply_async(
                (command, args), {"pool": pool, "session_id": session_id, "timeout": timeout}, task_id=task_id
            )

    reader._starter = start
    return reader
