"""Await a Celery task's result on ``redis.asyncio``: no thread, one pub/sub connection per loop.

Celery's Redis result backend stores a task's state under the key
``celery-task-meta-<id>`` (behind the backend's ``global_keyprefix``, if any)
and, in the same MULTI, publishes the same bytes on the channel of that name.
So a waiter subscribes to the channel, *then* reads the key: a result stored
before the subscription took effect is found by the read, one stored after it
arrives as a message, and none falls between the two (the subscription is
confirmed by Redis before the read is sent).

Each loop has one :class:`ResultWaiter` per app: one pub/sub connection for all
its awaiting calls (subscriptions sent in batches by one writer, messages
dispatched by one reader), and a small pool of connections for the reads. A
reconnect of the pub/sub connection (Redis restarted, network) is followed by
a read of every awaited key, since messages may have been lost meanwhile.

Stored results are decoded as the sync ``AsyncResult.get()`` decodes them (the
backend's own ``decode_result``: the app's serializer, exceptions rebuilt as
the class the worker raised); big payloads by reference
(:mod:`snakepit_celery.payloads`) are fetched and deleted on the loop's own
connection to the snakepit Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from typing import Any

import redis
import redis.asyncio as aioredis
from celery import Celery, states
from celery.exceptions import TimeoutError as CeleryTimeoutError

from snakepit_celery.aio.clients import async_client, close_loop_clients, from_connparams
from snakepit_celery.appconfig import config_for, resolve_redis_url
from snakepit_celery.errors import ConfigurationError
from snakepit_celery.payloads.codec import RESULT_CONTENT_TYPE, complete_result, parse_result
from snakepit_celery.payloads.store import prefix_of

__all__ = [
    "RECONNECT_DELAY",
    "ResultWaiter",
    "aclose_clients",
    "aclose_waiters",
    "redis_backend",
    "waiter_for",
]

log = logging.getLogger(__name__)

#: Seconds the reader waits before reading the pub/sub connection again after it failed.
RECONNECT_DELAY = 0.2

_waiters: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, weakref.WeakKeyDictionary[Celery, ResultWaiter]
]
_waiters = weakref.WeakKeyDictionary()


def redis_backend(app: Celery) -> Any:
    """``app``'s result backend, which must be Celery's Redis backend.

    Raises:
        ConfigurationError: the backend is not Redis; names ``result_backend``.
    """
    from celery.backends.redis import RedisBackend, SentinelBackend

    backend = app.backend
    if not isinstance(backend, RedisBackend) or isinstance(backend, SentinelBackend):
        name = type(backend).__name__
        raise ConfigurationError(
            f"result_backend: the async callers (aexecute, aexecute_in_session) await results in "
            f"Celery's Redis result backend, but app {app.main!r} has {name} "
            f"(result_backend={app.conf.result_backend!r}); set result_backend (CELERY_RESULT_BACKEND) "
            "to a redis:// or rediss:// URL"
        )
    return backend


def waiter_for(app: Celery) -> ResultWaiter:
    """The running loop's waiter of ``app``'s results (made on first use).

    Raises:
        ConfigurationError: the app's result backend is not Redis.
    """
    loop = asyncio.get_running_loop()
    per_app = _waiters.get(loop)
    if per_app is None:
        per_app = _waiters[loop] = weakref.WeakKeyDictionary()
    waiter = per_app.get(app)
    if waiter is None:
        waiter = per_app[app] = ResultWaiter(app)
    return waiter


async def aclose_clients() -> None:
    """Close the running loop's Redis clients and result waiters (an app's shutdown, a test's end).

    The next async call of the loop opens new ones. A loop that ends without
    this leaves its connections to the garbage collector (and a ResourceWarning).

    Example::

        @asynccontextmanager
        async def lifespan(app: FastAPI):
            yield
            await aclose_clients()
    """
    await aclose_waiters()
    await close_loop_clients()


async def aclose_waiters() -> None:
    """Stop the running loop's waiters (see :func:`aclose_clients`)."""
    per_app = _waiters.pop(asyncio.get_running_loop(), None)
    for waiter in list(per_app.values()) if per_app is not None else []:
        await waiter.aclose()


class _Entry:
    """The waiters of one result key."""

    __slots__ = ("done", "subscribed", "waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.subscribed: asyncio.Future[None] = loop.create_future()
        #: The raw stored result once read (from the key or a message).
        self.done: asyncio.Future[bytes] = loop.create_future()
        self.waiters = 0


class ResultWaiter:
    """Awaits the results of ``app``'s tasks in the running loop.

    Args:
        app: the caller's Celery app; its result backend must be Redis.

    Raises:
        ConfigurationError: the backend is not Redis.
    """

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.backend = redis_backend(app)
        self.loop = asyncio.get_running_loop()
        key = f"celery-backend:{id(self.backend)}:{self.backend.url}"
        self.redis: aioredis.Redis = from_connparams(key, dict(self.backend.connparams))
        self._pubsub = self.redis.pubsub()
        #: Results in snakepit's JSON (big payloads by reference), not compressed: read here.
        self._ours = self.backend.content_type == RESULT_CONTENT_TYPE and not self.backend.compression
        self._entries: dict[bytes, _Entry] = {}
        self._to_subscribe: set[bytes] = set()
        self._to_unsubscribe: set[bytes] = set()
        #: Keys subscribed again after a reconnect: read once more.
        self._reread: set[bytes] = set()
        self._writer: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None

    def key(self, task_id: str) -> bytes:
        """The key (and channel) of ``task_id``'s stored state."""
        key = self.backend.get_key_for_task(task_id)
        return key if isinstance(key, bytes) else str(key).encode()

    async def wait(self, task_id: str, timeout: float | None = None) -> Any:
        """The result of ``task_id`` once it is ready, or its error raised, as ``.get()`` does.

        Args:
            task_id: the task's id (sent already, or about to be: the wait sees either).
            timeout: seconds to wait; None waits as long as it takes.

        Raises:
            celery.exceptions.TimeoutError: not ready within ``timeout`` (as ``.get(timeout=)``).
            Exception: the task's error, rebuilt as the class the worker raised
                (``TaskRevokedError`` for a revoked task).
        """
        raw = await self.wait_raw(task_id, timeout)
        meta = await self._decode(raw)
        if meta["status"] in states.PROPAGATE_STATES:
            error = meta["result"]
            if isinstance(error, BaseException):
                raise error
            raise CeleryTimeoutError(f"task {task_id} ended {meta['status']}: {error!r}")  # pragma: no cover
        return meta["result"]

    async def wait_raw(self, task_id: str, timeout: float | None = None) -> bytes:
        """The stored bytes of ``task_id``'s result once it is ready (see :meth:`wait`)."""
        key = self.key(task_id)
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry(self.loop)
            self._request(subscribe=key)
        entry.waiters += 1
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(entry.subscribed)
                if not entry.done.done():
                    self._offer(key, await self.redis.get(key))
                return await asyncio.shield(entry.done)
        except TimeoutError:
            raise CeleryTimeoutError(f"task {task_id}: no result within {timeout}s") from None
        finally:
            entry.waiters -= 1
            if entry.waiters == 0 and self._entries.get(key) is entry:
                del self._entries[key]
                self._request(unsubscribe=key)

    # -- the pub/sub connection ----------------------------------------------------------------

    def _request(self, *, subscribe: bytes | None = None, unsubscribe: bytes | None = None) -> None:
        if subscribe is not None:
            self._to_unsubscribe.discard(subscribe)
            self._to_subscribe.add(subscribe)
        if unsubscribe is not None:
            if unsubscribe in self._to_subscribe:
                self._to_subscribe.discard(unsubscribe)  # never sent: nothing to take back
            else:
                self._to_unsubscribe.add(unsubscribe)
        if self._writer is None or self._writer.done():
            self._writer = self.loop.create_task(self._write())

    async def _write(self) -> None:
        """Send the subscriptions asked for meanwhile, many in one command (the only writer)."""
        while self._to_subscribe or self._to_unsubscribe:
            subscribe, self._to_subscribe = self._to_subscribe, set()
            unsubscribe, self._to_unsubscribe = self._to_unsubscribe, set()
            try:
                if subscribe:
                    await self._pubsub.subscribe(*subscribe)
                    if self._reader is None or self._reader.done():
                        self._reader = self.loop.create_task(self._read())
                if unsubscribe:
                    await self._pubsub.unsubscribe(*unsubscribe)
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                log.warning("snakepit: cannot subscribe to results (retrying): %s", exc)
                # redis-py re-subscribes its channels when it reconnects; the reader reads the keys.
                self._to_subscribe |= {k for k in subscribe if k in self._entries}
                await asyncio.sleep(RECONNECT_DELAY)

    async def _read(self) -> None:
        """Dispatch the pub/sub connection's messages until no key is awaited any more."""
        resync = False
        while self._entries or self._to_subscribe:
            try:
                if resync:
                    resync = False
                    self._reread.clear()
                    await self._read_all(list(self._entries))
                elif self._reread:
                    keys, self._reread = list(self._reread), set()
                    await self._read_all(keys)
                message = await self._pubsub.get_message(timeout=1.0)
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                log.warning("snakepit: the results' pub/sub connection failed (reconnecting): %s", exc)
                resync = True
                await asyncio.sleep(RECONNECT_DELAY)
                continue
            if message is None:
                continue
            try:
                self._dispatch(message)
            except Exception:  # one undecodable message must not leave every other waiter hanging
                log.exception("snakepit: a message on the results' channel %r was ignored", message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind, channel = message["type"], message["channel"]
        if kind == "subscribe":
            entry = self._entries.get(channel)
            if entry is not None and not entry.subscribed.done():
                entry.subscribed.set_result(None)
            elif entry is not None:  # subscribed again: redis-py reconnected by itself
                self._reread.add(channel)
        elif kind == "message":
            self._offer(channel, message["data"])

    async def _read_all(self, keys: list[bytes]) -> None:
        """Read awaited keys after a reconnect (their messages may be lost meanwhile)."""
        keys = [key for key in keys if key in self._entries]
        if not keys:
            return
        for key, raw in zip(keys, await self.redis.mget(keys), strict=True):
            self._offer(key, raw)
            entry = self._entries.get(key)
            if entry is not None and not entry.subscribed.done():
                entry.subscribed.set_result(None)  # subscribed again by redis-py on reconnect

    def _offer(self, key: bytes, raw: bytes | str | None) -> None:
        """Hand ``raw`` to the key's waiters if it is a ready state."""
        entry = self._entries.get(key)
        if raw is None or entry is None or entry.done.done() or not self._is_ready(raw):
            return
        entry.done.set_result(raw if isinstance(raw, bytes) else raw.encode())

    def _is_ready(self, raw: bytes | str) -> bool:
        if not self._ours:
            status = self.backend.decode(raw).get("status")
        else:
            value, refs = parse_result(_text(raw))
            if refs:
                return True  # only a result carries payloads: ready (fetched once, by its waiter)
            status = value.get("status") if isinstance(value, dict) else None
        return status in states.READY_STATES

    # -- decoding ------------------------------------------------------------------------------

    async def _decode(self, raw: bytes) -> dict[str, Any]:
        """The stored state as ``backend.decode_result`` gives it, big payloads fetched here."""
        value, refs = parse_result(_text(raw)) if self._ours else (None, [])
        if not refs:
            meta: dict[str, Any] = self.backend.decode_result(raw)
            return meta
        prefix = config_for(self.app).queue_prefix
        if any(prefix_of(ref.key) != prefix for ref in refs):  # another app's: the sync road
            meta = await asyncio.to_thread(self.backend.decode_result, raw)
            return meta
        client = async_client(resolve_redis_url(self.app))
        async with client.pipeline(transaction=False) as pipe:
            for ref in refs:
                pipe.getdel(ref.key)
            values = await pipe.execute()
        found = {ref.key: data for ref, data in zip(refs, values, strict=True)}
        decoded = complete_result(value, refs, found)
        meta = self.backend.meta_from_decoded(decoded)
        return meta

    async def aclose(self) -> None:
        """Stop the reader and writer and close the connections (a test's loop, before it ends)."""
        for task in (self._writer, self._reader):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self._pubsub.aclose()


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw
